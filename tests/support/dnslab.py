"""Test helpers for DNS (issue 12, points 4 and 5), run as programs by the tests:

    python3 dnslab.py serve NETNS_PATH|- ADDR LOG [--loopback-only] NAME=IP...
        a tiny DNS responder on ADDR:53/udp (in NETNS_PATH's network namespace, or where it
        runs): answers A queries for the NAMEs, NXDOMAIN for the rest, logs "SENDER QNAME" a
        line per query; with --loopback-only it ignores senders outside 127.0.0.0/8, as
        systemd-resolved's stub and unbound's default access control do. Prints "ready".
    python3 dnslab.py sockets LOG -- CMD...
        in a mount namespace of its own (nothing reaches the host), gives /run a private
        copy in which nscd's socket and systemd-resolved's varlink socket and stub files
        exist, listens at both sockets (logging "nscd UID" / "resolved UID" per connection to
        LOG, UID the connecting process's), and runs CMD there. Its exit status is CMD's.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the checkout

from nsrun.linux import kernel  # noqa: E402


def _qname(data: bytes) -> tuple[str, int, int]:
    labels, i = [], 12
    while data[i]:
        n = data[i]
        labels.append(data[i + 1:i + 1 + n].decode(errors="replace"))
        i += 1 + n
    qtype = struct.unpack("!H", data[i + 1:i + 3])[0]
    return ".".join(labels), qtype, i + 5


def _answer(data: bytes, answers: dict[str, str]) -> bytes:
    name, qtype, end = _qname(data)
    ident = data[:2]
    question = data[12:end]
    ip = answers.get(name.lower())
    flags = 0x8180 if ip else 0x8183  # response, RD+RA; NOERROR or NXDOMAIN
    if ip and qtype == 1:
        rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(ip)
        return ident + struct.pack("!HHHHH", flags, 1, 1, 0, 0) + question + rr
    return ident + struct.pack("!HHHHH", flags, 1, 0, 0, 0) + question


def serve(ns_path: str, addr: str, log: str, loopback_only: bool, answers: dict[str, str]) -> None:
    if ns_path != "-":
        fd = os.open(ns_path, os.O_RDONLY)
        kernel.setns(fd, kernel.CLONE_NEWNET)
        os.close(fd)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 53))
    print("ready", flush=True)
    with open(log, "a", buffering=1) as out:
        while True:
            data, sender = s.recvfrom(4096)
            try:
                name, _, _ = _qname(data)
            except (IndexError, struct.error):
                continue
            out.write(f"{sender[0]} {name}\n")
            if loopback_only and not ipaddress.ip_address(sender[0]).is_loopback:
                continue
            s.sendto(_answer(data, answers), sender)


def _private_run() -> None:
    """/run replaced, in this mount namespace, by a tmpfs holding binds of every entry of
    the real one but nscd and systemd, which are made afresh (nothing is written to the
    machine's /run)."""
    kernel.unshare(kernel.CLONE_NEWNS)
    kernel.mount("", "/", "none", kernel.MS_SLAVE | kernel.MS_REC)
    old = tempfile.mkdtemp(prefix="dnslab-run-")
    kernel.mount("/run", old, "none", kernel.MS_BIND | kernel.MS_REC)
    kernel.mount("dnslab", "/run", "tmpfs", 0)
    for ent in os.listdir(old):
        if ent in ("nscd", "systemd"):
            continue
        src, dst = f"{old}/{ent}", f"/run/{ent}"
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif os.path.isdir(src):
            os.mkdir(dst)
            kernel.mount(src, dst, "none", kernel.MS_BIND | kernel.MS_REC)
        else:
            open(dst, "w").close()
            kernel.mount(src, dst, "none", kernel.MS_BIND)
    kernel.umount2(old, kernel.MNT_DETACH)
    os.rmdir(old)
    os.makedirs("/run/nscd")
    os.makedirs("/run/systemd/resolve")
    for fn in ("stub-resolv.conf", "resolv.conf"):
        with open(f"/run/systemd/resolve/{fn}", "w") as fh:
            fh.write("# the host's resolved stub file\nnameserver 127.0.0.53\n")


def _listen(path: str, what: str, log: str) -> None:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chmod(path, 0o666)
    srv.listen(16)

    def loop() -> None:
        with open(log, "a", buffering=1) as out:
            while True:
                conn, _ = srv.accept()
                # who connected: the host's side looking a user up, or a program inside
                cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                out.write(f"{what} {struct.unpack('3i', cred)[1]}\n")
                conn.close()

    threading.Thread(target=loop, daemon=True).start()


def sockets(log: str, argv: list[str]) -> int:
    _private_run()
    _listen("/run/nscd/socket", "nscd", log)
    _listen("/run/systemd/resolve/io.systemd.Resolve", "resolved", log)
    return subprocess.run(argv).returncode


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        flags = [a for a in argv[4:] if a.startswith("--")]
        answers = dict(a.split("=", 1) for a in argv[4:] if not a.startswith("--"))
        serve(argv[1], argv[2], argv[3], "--loopback-only" in flags, answers)
        return 0
    if argv[:1] == ["sockets"] and argv[2:3] == ["--"]:
        return sockets(argv[1], argv[3:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
