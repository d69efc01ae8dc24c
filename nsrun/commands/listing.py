"""`nsrun ls`: every namespace in /run/netns, nsrun's and others', with what is inside.

Built for hundreds of namespaces: one pass over /proc for the processes, one read of
/proc/net/dev for the traffic, and the addresses read with ioctls from a single thread
that steps through the namespaces. No netlink library is imported.
"""

from __future__ import annotations

import os
import time
from typing import Any, TextIO

from nsrun import state
from nsrun.engine import record
from nsrun.linux import ifaddr, kernel, netns

COMPACT_WIDTH = 80  # lines of the table when stdout is no terminal and COLUMNS is unset
MIN_PROCESSES = 12  # narrower than this, the PROCESSES column goes
# Columns dropped, in this order, when a line would not fit the width (NAME never is):
# what matters least for acting on a namespace goes first.
DROPPED = ("BRIDGE", "TX", "RX", "AGE", "KIND", "GATEWAY", "PROFILE", "PROCESSES", "PORTS", "ADDRESS", "OWNER")


def _ipv4_addresses() -> list[str]:
    """The IPv4 addresses (CIDR) of the current thread's namespace, loopback excluded."""
    return [f"{ip}/{prefix}" for _, ip, prefix in ifaddr.ipv4() if not ip.startswith("127.")]


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
        owner = _owner_uid(rec) if rec else None
        row: dict[str, Any] = {
            "name": name,
            # whose it is: a caller without root's (made through the service's policy),
            # root's (nsrun's own), None for a namespace nsrun did not make
            "owner": _user_name(owner) if owner is not None else None,
            "owner_uid": owner,
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
            # isolate and allow (issue 21), as its profile said when it was made
            "isolate": rec.isolate if rec else None,
            "allow": list(rec.allow) if rec else None,
            "publish": published(rec.publish) if rec else [],
            "cni": None,  # a CNI attachment: its container, interface, network, namespace
        }
        if rec is not None and rec.adopted:
            row["kind"] = "cni"
            row["state"] = rec.state if ino is not None else "missing"
            row["cni"] = {"container": rec.container, "ifname": rec.ifname, "network": rec.network,
                          "netns": rec.netns}
        if rec and rec.address:
            row["addresses"] = [f"{rec.address}/{rec.prefixlen}"]
            if rec.address6:
                row["addresses"].append(f"{rec.address6}/{rec.prefixlen6}")
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


def published(specs: tuple[str, ...]) -> list[dict[str, Any]]:
    """A record's published ports (canonical specs) as `ls --json` shows them: host_address
    (None: every address of the host), host_port, port, proto."""
    from nsrun import ports
    from nsrun.errors import UsageError

    out = []
    for text in specs:
        try:
            p = ports.parse(text)
        except UsageError:
            continue  # a record of a later nsrun's, say
        out.append({"host_address": p.host, "host_port": p.host_port, "port": p.port, "proto": p.proto})
    return out


def _ports(row: dict[str, Any]) -> str:
    """The PORTS cell: `8080->80/tcp`, `127.0.0.1:8443->443/tcp`, as docker ps shows them."""
    return ",".join(("" if p["host_address"] is None else
                     f"[{p['host_address']}]:" if ":" in p["host_address"] else f"{p['host_address']}:")
                    + f"{p['host_port']}->{p['port']}/{p['proto']}" for p in row.get("publish") or [])


def _owner_uid(rec: record.NsRecord) -> int:
    from nsrun import engine

    return engine.owner_uid(rec)


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return str(uid)


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


def _profile(r: dict[str, Any]) -> str:
    """The PROFILE cell: the profile's name, and what guards the namespace (isolate, allow)."""
    flags = (["isolate"] if r.get("isolate") else []) + ([f"allow {len(r['allow'])}"] if r.get("allow") else [])
    name = r["profile"] or "-"
    return f"{name} ({', '.join(flags)})" if flags else name


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


def table(rows: list[dict[str, Any]], width: int | None = None) -> str:
    """ROWS as the text table of `nsrun ls`, one line per row whatever the cells hold. WIDTH:
    the longest a line may be (a namespace's first address alone, with how many more; the
    PROCESSES cells cut, then columns dropped in the order of DROPPED: never NAME); None:
    every column, whole (`--wide`)."""
    head: tuple[str, ...] = ("NAME", "OWNER", "PROFILE", "KIND", "ADDRESS", "GATEWAY", "BRIDGE", "RX", "TX", "AGE",
                             "PROCESSES")
    ports = any(r.get("publish") for r in rows)  # the PORTS column only where a namespace publishes
    if ports:
        head = (*head[:5], "PORTS", *head[5:])
    cells = [head]
    for r in rows:
        procs = ", ".join(f"{p['pid']} {p['command'][:30]}" for p in r["processes"][:3])
        if len(r["processes"]) > 3:
            procs += f" (+{len(r['processes']) - 3})"
        cni = r.get("cni")
        label = f"{cni['container'][:12]}/{cni['ifname']}" if cni else r["name"]  # a CNI attachment
        addresses = r["addresses"]
        if width is not None and len(addresses) > 1:  # the first, and how many more (--wide: all)
            addresses = [f"{addresses[0]} (+{len(addresses) - 1})"]
        cells.append((label, r.get("owner") or "-", _profile(r), r["kind"] or "?",
                      ",".join(addresses) or "-", *([_ports(r) or "-"] if ports else []),
                      _tunnel(r["wireguard"]) if r.get("wireguard") else r["gateway"] or "-",
                      r["bridge"] or "-", _bytes(r["rx_bytes"]),
                      _bytes(r["tx_bytes"]), _age(r["created"]), procs or "-"))
    shown = [tuple(cell(c) for c in row) for row in cells]
    keep = list(range(len(head)))
    last = len(head) - 1  # PROCESSES: the one column cut to fit
    room = 0
    if width is not None:
        for column in (None, *(c for c in DROPPED if c in head)):
            if column is not None:
                keep.remove(head.index(column))
            fixed = [i for i in keep if i != last]
            used = sum(max(len(row[i]) for row in shown) for i in fixed) + 2 * len(fixed)
            room = width - used
            if last not in keep:
                room = 0
                if used - 2 <= width:
                    break
            elif room >= min(MIN_PROCESSES, max(len(row[last]) for row in shown)):
                break
    lines = []
    for row in shown:
        cut = [row[i] for i in keep]
        if width is not None and last in keep and len(cut[-1]) > room:
            cut[-1] = cut[-1][:max(room - 1, 0)] + "…"
        lines.append(cut)
    widths = [max(len(line[i]) for line in lines) for i in range(len(keep) - 1)]
    return "\n".join(("  ".join(f"{c:<{w}}" for c, w in zip(line[:-1], widths)) + "  " + line[-1]).rstrip()
                     if len(line) > 1 else line[0] for line in lines)


def width_of_output(fd: int = 1) -> int:
    """How wide `nsrun ls` may print: COLUMNS when set, else the terminal's width when FD
    is a terminal, else COMPACT_WIDTH (a pipe or a file gets a compact table too: `--wide`
    or `--json` have everything)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(fd).columns or COMPACT_WIDTH
    except OSError:
        return COMPACT_WIDTH


def ls(as_json: bool, out: TextIO | None = None, err: TextIO | None = None, width: int | None = None) -> int:
    """`nsrun ls [--json]`, printed to OUT (a note to ERR when the records are unreadable);
    the table at most WIDTH columns wide (None: whole, `--wide`)."""
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
        print(table(rows, width), file=out)
    return 0
