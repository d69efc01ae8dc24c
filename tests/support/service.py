"""`nsrun daemon` in the lab host, in the foreground, for the tests that go through the warm
service: tests/lab/test_service.py, the non-root callers' tests, and conftest's `via`
fixture (a module's tests once more through the service).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import REPO, LabRunner
from nsrun import lab as labmod
from nsrun import wire
from support.draws import drawing_argv


class Service:
    """`nsrun daemon` in the lab host, in the foreground."""

    def __init__(self, lab: LabRunner, log: Path, *args: str, env: dict[str, str] | None = None,
                 draws: list[str] | None = None, program: str | None = None) -> None:
        """DRAWS: the service's ephemeral names are drawn from these first (support.draws).
        PROGRAM: a script run in place of `python -m nsrun` (e.g. support/failing_teardowns.py)."""
        self.lab, self.log_path, self.args, self.extra_env = lab, log, args, env or {}
        self.draws, self.program = draws, program
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock = lab.statedir / wire.SOCKET_NAME

    def start(self, wait: bool = True) -> "Service":
        with open(self.log_path, "ab") as log:
            argv, env = self.lab.nsrun_argv("daemon", *self.args), self.lab.env
            if self.draws is not None:
                argv, env = drawing_argv(self.lab, self.draws, "daemon", *self.args)
            elif self.program is not None:
                argv = self.lab.host_argv([sys.executable, self.program, "daemon", *self.args])
            self.proc = subprocess.Popen(argv, env={**env, **self.extra_env}, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, cwd=REPO)
        if wait:
            deadline = time.monotonic() + 30
            while True:
                try:
                    self.status()
                    break
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"nsrun daemon did not start: {self.log()}") from None
                    time.sleep(0.05)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ask(self, msg: dict[str, Any], fds: tuple[int, ...] = ()) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(self.sock))
            wire.send(s, msg, fds)
            got = wire.recv(s)
            assert got is not None
            reply, rfds = got
            wire.close_all(rfds)
            return reply

    def status(self) -> dict[str, Any]:
        return self.ask({"type": "status"})

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.status()["runs"]:
            assert time.monotonic() < deadline, f"the service still watches runs: {self.status()}"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            labmod.stop_process(self.proc, sig=sig)
        self.proc = None


def served(svc: Service) -> int:
    return int(svc.status()["requests"])
