"""`nsrun ls`: every namespace in /run/netns, nsrun's and others', with what is inside.

Built for hundreds of namespaces: one pass over /proc for the processes, one read of
/proc/net/dev for the traffic, and the addresses read with ioctls from a single thread
that steps through the namespaces. No netlink library is imported.
"""

from __future__ import annotations

import array
import fcntl
import ipaddress
import os
import socket
import struct
import time
from typing import Any, TextIO

from nsrun import state
from nsrun.engine import record
from nsrun.linux import kernel, netns

SIOCGIFCONF = 0x8912
SIOCGIFNETMASK = 0x891B


def _ipv4_addresses() -> list[str]:
    """The IPv4 addresses (CIDR) of the current thread's namespace, loopback excluded."""
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        buf = array.array("B", b"\0" * 40 * 64)
        addr, _ = buf.buffer_info()
        req = struct.pack("iL", len(buf), addr)
        size = struct.unpack("iL", fcntl.ioctl(s.fileno(), SIOCGIFCONF, req))[0]
        data = buf.tobytes()[:size]
        for off in range(0, size, 40):
            ifname = data[off:off + 16].split(b"\0", 1)[0]
            ip = socket.inet_ntoa(data[off + 20:off + 24])
            if ip.startswith("127."):
                continue
            try:
                mask = fcntl.ioctl(s.fileno(), SIOCGIFNETMASK, struct.pack("16s24x", ifname))
                prefix = ipaddress.IPv4Network(f"0.0.0.0/{socket.inet_ntoa(mask[20:24])}").prefixlen
            except OSError:
                prefix = 32
            out.append(f"{ip}/{prefix}")
    return out


def _addresses_of(nsnames: list[str], paths: dict[str, str] | None = None) -> dict[str, list[str]]:
    """The addresses in each of NSNAMES (at /run/netns/NAME, or at PATHS[NAME])."""
    def walk() -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for name in nsnames:
            try:
                fd = os.open((paths or {}).get(name) or netns.path(name), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                kernel.setns(fd, kernel.CLONE_NEWNET)
                found[name] = _ipv4_addresses()
            except OSError:
                found[name] = []
            finally:
                os.close(fd)
        return found

    return netns.in_thread(walk) if nsnames else {}


def _host_counters() -> dict[str, tuple[int, int]]:
    """ifname -> (rx_bytes, tx_bytes) as the host sees it."""
    out = {}
    try:
        with open("/proc/self/net/dev") as fh:
            for line in fh.readlines()[2:]:
                ifname, _, rest = line.partition(":")
                fields = rest.split()
                out[ifname.strip()] = (int(fields[0]), int(fields[8]))
    except OSError:
        pass
    return out


def _processes(pids: list[int]) -> list[dict[str, Any]]:
    """pid, command line and user of each of PIDS, read from /proc (no psutil: `ls` runs
    on the standard library alone, for any user); those gone meanwhile are left out."""
    import pwd

    procs = []
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
            if argv and argv[-1] == b"":
                argv.pop()
            if argv:
                command = " ".join(a.decode(errors="replace") for a in argv)
            else:  # a kernel thread, or a zombie
                with open(f"/proc/{pid}/comm", "rb") as fh:
                    command = f"[{fh.read().decode(errors='replace').strip()}]"
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue
        try:
            user: str | None = pwd.getpwuid(uid).pw_name
        except KeyError:  # a uid with no name
            user = None
        procs.append({"pid": pid, "command": command, "user": user})
    return procs


def collect() -> list[dict[str, Any]]:
    """One row per namespace. Without read access to the state directory (not root), the
    rows have no records: kind, profile and "managed" are unknown (None)."""
    try:
        recs, known = record.all_ns(), True
    except PermissionError:
        recs, known = {}, False
    present = netns.names()
    allnames = sorted(set(present) | {n for n, r in recs.items() if r.state == "up"})
    by_inode = netns.pids_by_inode()
    counters = _host_counters()
    unmanaged = [n for n in present if n not in recs] if known else list(present)
    # Addresses read live: namespaces nsrun did not make, and WireGuard ones (the tunnel's
    # addresses are the configuration's, which nsrun does not record: it holds a key).
    tunnelled = [n for n in present if n in recs and recs[n].wireguard is not None]
    cni_tunnels = {n: r.netns for n, r in recs.items() if r.netns and r.wireguard is not None and record.ns_alive(r)}
    live_addrs = _addresses_of(unmanaged + tunnelled + list(cni_tunnels), cni_tunnels)
    rows = []
    for name in allnames:
        rec = recs.get(name)
        ino = netns.inode(name) if name in present else None
        if rec is not None and rec.adopted:  # a CNI attachment: the runtime's namespace
            ino = int(rec.netns_id.split(":")[1]) if rec.netns_id and record.ns_alive(rec) else None
        row: dict[str, Any] = {
            "name": name,
            "profile": rec.profile if rec else None,
            "managed": rec is not None if known else None,
            "persistent": rec.persistent if rec else (True if known else None),
            "kind": (("persistent" if rec.persistent else "ephemeral") if rec else
                     "unmanaged" if known else None),
            "state": (rec.state if name in present else "missing") if rec else "up",
            "addresses": [],
            "gateway": rec.gateway if rec else None,
            "bridge": rec.bridge if rec else None,
            "processes": _processes(by_inode.get(ino, [])) if ino else [],
            "rx_bytes": None,
            "tx_bytes": None,
            "created": rec.created if rec else None,
            "wireguard": None,  # a WireGuard namespace's tunnel: nsrun.engine.wgdevice.status
            "cni": None,  # a CNI attachment: its container, interface, network, namespace
        }
        if rec is not None and rec.adopted:
            row["kind"] = "cni"
            row["state"] = rec.state if ino is not None else "missing"
            row["cni"] = {"container": rec.container, "ifname": rec.ifname, "network": rec.network,
                          "netns": rec.netns}
        if rec and rec.address:
            row["addresses"] = [f"{rec.address}/{rec.prefixlen}"]
        else:
            row["addresses"] = live_addrs.get(name, [])
        if rec and rec.wireguard is not None:
            from nsrun.engine import wgdevice

            wg = wgdevice.status(name, rec.wireguard) if name in present or name in cni_tunnels else None
            row["wireguard"] = wg
            if wg is not None and wg["peers"]:
                row["rx_bytes"] = sum(p["rx_bytes"] or 0 for p in wg["peers"])
                row["tx_bytes"] = sum(p["tx_bytes"] or 0 for p in wg["peers"])
        veth = rec.veth if rec else None
        if veth and veth in counters:
            host_rx, host_tx = counters[veth]
            row["rx_bytes"], row["tx_bytes"] = host_tx, host_rx  # as the namespace sees it
        rows.append(row)
    return rows


def _age(created: float | None) -> str:
    if created is None:
        return "-"
    s = max(0, int(time.time() - created))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("", "K", "M", "G"):
        if n < 1024:
            return f"{n}{unit}"
        n //= 1024
    return f"{n}T"


def cell(value: object) -> str:
    """VALUE for one table cell, on one line: control characters (a newline in a command
    line, an escape sequence) are shown escaped, as \\n or \\x1b."""
    text = str(value)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ch in "\n\t\r":
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}[ch])
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def _tunnel(wg: dict[str, Any]) -> str:
    """The GATEWAY cell of a WireGuard namespace: its peers' endpoints, the implementation and
    the latest handshake, e.g. `wg 192.0.2.1:51820 (userspace, handshake 12s ago)`."""
    impl = wg["impl"]
    if wg["state"] != "up":
        return f"wg ({impl}, down)"
    peers = wg["peers"]
    endpoints = ",".join(p["endpoint"] or "?" for p in peers) or "-"
    latest = max((p["latest_handshake"] or 0 for p in peers), default=0)
    seen = f"handshake {_age(latest)} ago" if latest else "no handshake yet"
    return f"wg {endpoints} ({impl}, {seen})"


def readable() -> bool:
    """Whether this process may read nsrun's records (root may; others see names only)."""
    try:
        state.records()
        return True
    except PermissionError:
        return False


def table(rows: list[dict[str, Any]]) -> str:
    """ROWS as the text table of `nsrun ls`, one line per row whatever the cells hold."""
    head = ("NAME", "PROFILE", "KIND", "ADDRESS", "GATEWAY", "BRIDGE", "RX", "TX", "AGE", "PROCESSES")
    cells = [head]
    for r in rows:
        procs = ", ".join(f"{p['pid']} {p['command'][:30]}" for p in r["processes"][:3])
        if len(r["processes"]) > 3:
            procs += f" (+{len(r['processes']) - 3})"
        cni = r.get("cni")
        shown = f"{cni['container'][:12]}/{cni['ifname']}" if cni else r["name"]  # a CNI attachment
        cells.append((shown, r["profile"] or "-", r["kind"] or "?", ",".join(r["addresses"]) or "-",
                      _tunnel(r["wireguard"]) if r.get("wireguard") else r["gateway"] or "-",
                      r["bridge"] or "-", _bytes(r["rx_bytes"]),
                      _bytes(r["tx_bytes"]), _age(r["created"]), procs or "-"))
    shown = [tuple(cell(c) for c in row) for row in cells]
    widths = [max(len(row[i]) for row in shown) for i in range(len(head) - 1)]
    return "\n".join("  ".join(f"{c:<{w}}" for c, w in zip(row[:-1], widths)) + "  " + row[-1]
                     for row in shown)


def ls(as_json: bool, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`nsrun ls [--json]`, printed to OUT (a note to ERR when the records are unreadable)."""
    import json
    import sys

    out = out or sys.stdout
    rows = collect()
    if rows and rows[0]["managed"] is None or not rows and not readable():
        (err or sys.stderr).write("nsrun: note: not root: nsrun's records are not readable, so only the names in "
                         f"{netns.NETNS_DIR} are shown, without profiles or other users' processes "
                         "(sudo nsrun ls shows all)\n")
    if as_json:
        print(json.dumps(rows, indent=1), file=out)
    elif not rows:
        print("no namespaces", file=out)
    else:
        print(table(rows), file=out)
    return 0
