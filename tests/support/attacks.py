"""Attacks on the warm service by one member of its socket's group, for
tests/lab/test_service_under_attack.py: `python3 attacks.py KIND COUNT SOCKET` keeps COUNT
connections of KIND open on SOCKET (each one the service drops is opened again, after a
short pause) until it is killed, printing "ready" once COUNT were opened. Standard library
only: the test hands the source to a Python run as the attacking user (`-c`), so the file
need not be readable by that user.

- slow: a 4 KiB frame's header, then one byte every second, never the whole frame (slowloris);
- fds: a 1 MiB frame's header, then its body one byte at a time, each byte with three
  descriptors (of /dev/null) on it;
- big: a 1 MiB frame's header and all of its body but the last byte.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

FRAME = 1 << 20


def attack(kind: str, path: str, opened: threading.Semaphore) -> None:
    null = os.open("/dev/null", os.O_RDONLY)
    while True:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(path)
                opened.release()
                s.sendall((4096 if kind == "slow" else FRAME).to_bytes(4, "big"))
                if kind == "big":
                    s.sendall(b" " * (FRAME - 1))
                    s.settimeout(None)
                    s.recv(1)  # held open until the service drops it
                    continue
                while True:
                    if kind == "fds":
                        socket.send_fds(s, [b" "], [null, null, null])
                        time.sleep(0.001)
                    else:
                        s.sendall(b" ")
                        time.sleep(1)
        except OSError:
            time.sleep(0.05)  # dropped (or refused): again, as an attacker would


def main() -> None:
    kind, count, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * count + 64)), hard))
    opened = threading.Semaphore(0)
    for _ in range(count):
        threading.Thread(target=attack, args=(kind, path, opened), daemon=True).start()
    for _ in range(count):
        opened.acquire()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
