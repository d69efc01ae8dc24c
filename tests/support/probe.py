"""Reachability probes for the isolation and allow-list tests (issue 21), run as programs:

    python3 probe.py listen PORT
        a TCP server on PORT of every address, IPv4 and IPv6 (one dual-stack socket): replies
        to each connection with the address it came from. Prints "ready".
    python3 probe.py connect HOST PORT [SOURCE]
        one TCP connection to HOST:PORT (from SOURCE when given), within TIMEOUT: prints
        what the server said and exits 0, or prints "unreachable: WHY" and exits 1.
    python3 probe.py connect-all HOST,PORT[,SOURCE]...
        as connect, to every target at once (a test's unreachable targets then cost one
        TIMEOUT together, not one each): one line per target, in their order; exits 0.
"""

from __future__ import annotations

import signal
import socket
import socketserver
import sys

TIMEOUT = 1.5


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        peer = self.client_address[0]
        self.request.sendall(f"{peer.removeprefix('::ffff:')}\n".encode())


class _Server(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def listen(port: int) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with _Server(("::", port), _Handler) as srv:
        print("ready", flush=True)
        srv.serve_forever()


def _connect(host: str, port: int, source: str | None = None) -> str:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(TIMEOUT)
            if source:
                s.bind((source, 0))
            s.connect((host, port))
            return s.recv(128).decode().strip()
    except OSError as exc:
        return f"unreachable: {exc}"


def connect(host: str, port: int, source: str | None = None) -> int:
    said = _connect(host, port, source)
    print(said)
    return 1 if said.startswith("unreachable") else 0


def connect_all(targets: list[str]) -> int:
    from concurrent.futures import ThreadPoolExecutor

    args = []
    for target in targets:
        host, port, *source = target.split(",")
        args.append((host, int(port), source[0] if source else None))
    with ThreadPoolExecutor(max_workers=len(args)) as pool:
        for said in pool.map(lambda a: _connect(*a), args):
            print(said)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["listen"] and len(argv) == 2:
        listen(int(argv[1]))
        return 0
    if argv[:1] == ["connect"] and len(argv) in (3, 4):
        return connect(argv[1], int(argv[2]), argv[3] if len(argv) == 4 else None)
    if argv[:1] == ["connect-all"] and len(argv) > 1:
        return connect_all(argv[1:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
