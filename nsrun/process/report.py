"""The pipe from the setup child to the supervisor: its messages, written and read here.

The child (which brings the namespace up, enters it and becomes CMD) cannot return
anything to the supervisor but through a close-on-exec pipe. One line per message:

    up {"address": ...}     the namespace is ready; CMD is about to be executed
    exec STATUS MESSAGE     CMD could not be executed (STATUS 126 or 127)
    error CODE MESSAGE      setup or entering failed (CODE 2: a usage error, else 1)

End of file after `up` and no other line means the exec succeeded (the pipe closed with
it). Standard library only: both sides are on the hot path.
"""

from __future__ import annotations

import os


def _send(fd: int, line: str) -> None:
    os.write(fd, (line.replace("\n", " ") + "\n").encode(errors="replace"))


def up(fd: int, address: str | None) -> None:
    import json  # here: the exec path (nsrun.process.execution) imports this module, and json costs ~4 ms

    _send(fd, f"up {json.dumps({'address': address})}")


def exec_failed(fd: int, status: int, message: str) -> None:
    _send(fd, f"exec {status} {message}")


def error(fd: int, code: int, message: str) -> None:
    _send(fd, f"error {code} {message}")


class Report:
    """What the child said: `started` (the namespace was up and CMD about to run),
    `failure` (code, message) of setup, `exec_failure` (status, message) of CMD's exec."""

    __slots__ = ("started", "address", "failure", "exec_failure")

    def __init__(self) -> None:
        self.started = False
        self.address: str | None = None
        self.failure: tuple[int, str] | None = None
        self.exec_failure: tuple[int, str] | None = None

    @property
    def cmd_ran(self) -> bool:
        """CMD was executed: its wait status is CMD's own, not the setup child's."""
        return self.started and self.failure is None and self.exec_failure is None


def parse(data: bytes) -> Report:
    rep = Report()
    for line in data.decode(errors="replace").splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "up":
            rep.started = True
            try:
                import json

                rep.address = json.loads(rest).get("address")
            except (ValueError, AttributeError):
                pass
        elif kind in ("error", "exec"):
            num, _, msg = rest.partition(" ")
            value = (int(num) if num.isdigit() else 1, msg)
            if kind == "error":
                rep.failure = value
            else:
                rep.exec_failure = value
    return rep
