"""The service's wire format: what `nsrun` (the client) and `nsrun daemon` say to each other
over the Unix stream socket `<state dir>/nsrun.sock`. Documented in docs/service.md.

A frame is a 4-byte big-endian length, then that many bytes of a UTF-8 JSON object:

    {"v": 1, "type": "run", ...fields}

`v` is checked on every message: a peer that speaks another version gets an `error` reply
(exit 2) and the connection ends. A frame longer than MAX_FRAME is refused before it is
read, so a hostile length cannot make the reader allocate. File descriptors travel as
SCM_RIGHTS ancillary data on the frame's bytes (at most MAX_FDS a frame); they are
received close-on-exec, and a receiver closes every descriptor a message type does not
carry (`ALLOWED_FDS`).

Standard library only, and only what the client's hot path needs (`_socket`, not `socket`;
no `typing` at run time): this module is imported by every `nsrun` that talks to the service.
"""

from __future__ import annotations

import _json
import _socket as socket  # socket.py would import selectors and enum (~5 ms on each run)
import os
import struct
from time import monotonic as _monotonic

TYPE_CHECKING = False  # typing costs ~5 ms to import: for mypy only
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

VERSION = 1
MAX_FRAME = 1 << 20  # 1 MiB: argv and environment of a run fit many times over
MAX_FDS = 3  # stdin, stdout, stderr (non-root runs); a namespace (the ready reply)
HEADER = 4
SOCKET_NAME = "nsrun.sock"

# Message types a client sends, and those the service sends back.
REQUESTS = ("run", "exec", "up", "down", "ls", "gc", "signal", "status")
REPLIES = ("ready", "output", "exit", "error", "status")
# How many descriptors each type may carry (others must carry none). run/exec carry the
# caller's stdin, stdout and stderr when the caller is not root (`stdio: true`).
ALLOWED_FDS = {"run": 3, "exec": 3, "ready": 1}

_INT = struct.calcsize("i")
_FD_SPACE = socket.CMSG_SPACE(MAX_FDS * _INT)


class ProtocolError(Exception):
    """A malformed, truncated, oversized or wrong-version message (exit 2 for the sender)."""


# JSON through the C accelerator directly: the json package imports re (and enum), ~4 ms
# on every run for the few plain objects these messages are.

def _dumps(obj: object, depth: int = 0) -> str:
    if depth > 32:
        raise ProtocolError("message nested too deeply")
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, str):
        return str(_json.encode_basestring(obj))
    if isinstance(obj, int):
        return int.__repr__(obj)
    if isinstance(obj, float):
        if obj != obj or obj in (float("inf"), float("-inf")):
            raise ProtocolError("a number in a message must be finite")
        return float.__repr__(obj)
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(_dumps(v, depth + 1) for v in obj) + "]"
    if isinstance(obj, dict):
        parts = []
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ProtocolError("message keys must be strings")
            parts.append(str(_json.encode_basestring(k)) + ":" + _dumps(v, depth + 1))
        return "{" + ",".join(parts) + "}"
    raise ProtocolError(f"cannot send a {type(obj).__name__} in a message")


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


class _Context:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_no_constant)
    memo: dict[str, object] = {}


_scan = _json.make_scanner(_Context())  # type: ignore[arg-type]
_SPACE = " \t\n\r"


def _loads(text: str) -> object:
    start = len(text) - len(text.lstrip(_SPACE))
    try:
        obj, end = _scan(text, start)
    except StopIteration:
        raise ValueError("not JSON") from None
    if text[end:].strip(_SPACE):
        raise ValueError("extra data after the JSON value")
    return obj


def encode(msg: dict[str, Any]) -> bytes:
    """MSG as one frame (the version added)."""
    try:
        body = _dumps({"v": VERSION, **msg}).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ProtocolError("a string in the message cannot be encoded") from None
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"message too large ({len(body)} bytes; the limit is {MAX_FRAME})")
    return len(body).to_bytes(HEADER, "big") + body


def send(sock: socket.socket, msg: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send MSG, with FDS (SCM_RIGHTS) on its first bytes."""
    data = encode(msg)
    if fds:
        if len(fds) > MAX_FDS:
            raise ProtocolError(f"at most {MAX_FDS} descriptors a message")
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
        sent = sock.sendmsg([data], anc)
        data = data[sent:]
    if data:
        sock.sendall(data)


CHUNK = 1 << 16  # read at most this much at a time: a stalled reader holds no 1 MiB buffer


def _recv_exact(sock: socket.socket, size: int, fds: list[int], first: bool,
                deadline: float | None) -> bytes | None:
    """SIZE bytes (None: the peer closed before the first byte of a frame), gathering the
    descriptors that arrive on them into FDS: more than MAX_FDS on one message is refused
    the moment they arrive. DEADLINE (time.monotonic): the whole read's, not one recv's."""
    buf = bytearray()
    while len(buf) < size:
        if deadline is not None:
            left = deadline - _monotonic()
            if left <= 0:
                raise TimeoutError("the request was not sent in time")
            sock.settimeout(left)
        data, anc, flags, _ = sock.recvmsg(min(CHUNK, size - len(buf)), _FD_SPACE, socket.MSG_CMSG_CLOEXEC)
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                count = len(payload) // _INT
                fds.extend(struct.unpack(f"{count}i", payload[:count * _INT]))
        if flags & socket.MSG_CTRUNC or len(fds) > MAX_FDS:
            raise ProtocolError(f"more than {MAX_FDS} descriptors sent")
        if not data:
            if first and not buf:
                return None
            raise ProtocolError("truncated message (the peer closed mid-frame)")
        buf += data
    return bytes(buf)


def recv(sock: socket.socket, deadline: float | None = None,
         admit: Callable[[int], None] | None = None) -> tuple[dict[str, Any], list[int]] | None:
    """The next message and the descriptors that came with it; None when the peer closed
    the connection between messages. ProtocolError (descriptors closed) for anything
    malformed; VersionError for a well-formed message of another version. DEADLINE: the
    monotonic time by which the whole message must be in (TimeoutError after it). ADMIT:
    called with the frame's length before its body is read (it may raise to refuse it)."""
    fds: list[int] = []
    try:
        head = _recv_exact(sock, HEADER, fds, True, deadline)
        if head is None:
            return None
        size = int.from_bytes(head, "big")
        if size > MAX_FRAME:
            raise ProtocolError(f"message too large ({size} bytes; the limit is {MAX_FRAME})")
        if admit is not None:
            admit(size)
        body = _recv_exact(sock, size, fds, False, deadline) or b""
        msg = decode(body)
        if len(fds) > ALLOWED_FDS.get(msg["type"], 0):
            raise ProtocolError(f"a {msg['type']} message carries no more than "
                                f"{ALLOWED_FDS.get(msg['type'], 0)} descriptors")
    except BaseException:
        close_all(fds)
        raise
    return msg, fds


def decode(body: bytes) -> dict[str, Any]:
    try:
        msg = _loads(body.decode("utf-8", "surrogateescape"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProtocolError("message is not JSON") from None
    if not isinstance(msg, dict):
        raise ProtocolError("message is not a JSON object")
    version = msg.get("v")
    if version != VERSION or isinstance(version, bool):
        raise VersionError(f"protocol version {version!r} is not spoken here (this side speaks {VERSION})")
    if not isinstance(msg.get("type"), str):
        raise ProtocolError("message has no type")
    return msg


class VersionError(ProtocolError):
    pass


def close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


def error(code: int, message: str, busy: bool = False) -> dict[str, Any]:
    """An `error` reply; BUSY: the service is at a limit of its own, not refusing the
    request (a root client then works without the service)."""
    return {"type": "error", "code": code, "message": message, **({"busy": True} if busy else {})}


# -- field checks (the service's side) ------------------------------------------------------

def field_str(msg: dict[str, Any], key: str, optional: bool = True) -> str | None:
    value = msg.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or "\0" in value:
        raise ProtocolError(f"field {key!r} must be a string")
    return value


def field_bool(msg: dict[str, Any], key: str) -> bool:
    value = msg.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError(f"field {key!r} must be true or false")
    return value


def field_num(msg: dict[str, Any], key: str, default: float) -> float:
    value = msg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 3600:
        raise ProtocolError(f"field {key!r} must be a number from 0 to 3600")
    return float(value)


def field_argv(msg: dict[str, Any], key: str = "argv") -> list[str]:
    value = msg.get(key)
    if not isinstance(value, list) or not all(isinstance(a, str) and "\0" not in a for a in value):
        raise ProtocolError(f"field {key!r} must be a list of strings")
    return value


def field_env(msg: dict[str, Any], key: str = "env") -> dict[str, str]:
    value = msg.get(key, {})
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
            for k, v in value.items()):
        raise ProtocolError(f"field {key!r} must be an object of strings")
    return value


def field_winsize(msg: dict[str, Any]) -> tuple[int, int] | None:
    value = msg.get("winsize")
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 65536 for n in value)):
        raise ProtocolError("field 'winsize' must be [rows, columns]")
    return value[0], value[1]
