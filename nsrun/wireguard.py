"""A WireGuard interface as the only way out of a named namespace (profile mode `wireguard`).

Why it is built this way: the interface is made in the caller's ("the host's") network
namespace, so its encrypted UDP socket lives there and leaves by the host's own route,
and is then moved into the target namespace, where it is the only interface beside `lo`
and carries the default routes. When the tunnel is down nothing can leave the namespace:
a kill switch by construction, with no veth, bridge, NAT or firewall rule to get wrong.
Without a v6 address in the configuration the namespace gets no v6 route at all, and
IPv6 is disabled on the interface, so nothing (a router advertisement) can add one.

Two implementations, chosen per host:
- userspace (`wireguard-go`, what this project's test machines have): started here in the
  foreground (WG_PROCESS_FOREGROUND=1) in its own session, so a terminal's signals do not
  reach it; it makes a tun in this namespace and keeps serving it after the move. It is
  configured over its UAPI socket (/var/run/wireguard/IFNAME.sock), never through `wg`.
  Its pid and start time are recorded, so `remove` and `gc` stop that process and no
  other. Deleting the namespace deletes the tun, and wireguard-go then exits by itself.
- kernel (`/sys/module/wireguard` present): a `wireguard` link made with pyroute2 and set
  up over generic netlink. That branch is small and NOT exercised by the tests here (the
  test machines' kernel has no WireGuard module).

Keys go from the parsed configuration (nsrun.wgconf) to the implementation and nowhere
else: the record (state dir `wg/NAME.json`) holds names, pids and choices only, and
`status` reports endpoints, handshakes and counters only.

Names: the interface is `names.wg_ifname(NAME)` and carries the alias `nsrun:NAME`, so gc
can tell whose it is from the host alone.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, NamedTuple

from nsrun import fault, names, netns, state, sysctl
from nsrun.engine.resources import dns
from nsrun.errors import NsrunError, UsageError
from nsrun.wgconf import WgConfig

SOCKET_DIR = "/var/run/wireguard"
WG_GO = "wireguard-go"
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
START_TIMEOUT = 5.0
STOP_GRACE = 2.0
# A nsrun-named tun still in the host's namespace after this long is a crashed setup's.
SETUP_GRACE = 60.0
# Fault-injection points of create() (NSRUN_FAULT=STEP, see nsrun/fault.py).
WG_STEPS = ("wg-record", "wg-started", "wg-configured", "wg-moved", "wg-inside", "wg-dns")


class WgRecord(NamedTuple):
    """What `remove` and `gc` need to find the pieces again. Never a key."""

    name: str
    ifname: str
    impl: str  # "userspace" | "kernel"
    pid: int | None = None  # userspace: wireguard-go's pid and start time (clock ticks)
    start: int | None = None
    dns: bool = False
    state: str = "starting"  # "starting" | "up"

    def to_json(self) -> dict[str, Any]:
        return dict(self._asdict())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "WgRecord | None":
        try:
            rec = cls(**{k: data[k] for k in cls._fields if k in data})
        except TypeError:
            return None
        if not isinstance(rec.name, str) or rec.ifname != names.wg_ifname(rec.name):
            return None
        return rec


# -- records -----------------------------------------------------------------------------

def _dir(root: Path | None) -> Path:
    return (root or state.root()) / "wg"


def record_path(name: str, root: Path | None = None) -> Path:
    return _dir(root) / f"{name}.json"


def read_record(name: str, root: Path | None = None) -> WgRecord | None:
    data = state.read_json(record_path(name, root))
    return WgRecord.from_json(data) if data is not None else None


def _save(rec: WgRecord, root: Path | None) -> None:
    state.write_json(record_path(rec.name, root), rec.to_json())


def _lock(name: str, root: Path | None) -> state.Lock:
    return state.Lock(_dir(root) / f"{name}.lock")


def socket_path(ifname: str) -> str:
    return f"{SOCKET_DIR}/{ifname}.sock"


def kernel_available() -> bool:
    """The kernel has WireGuard: loaded or built in, or a module it can load on demand."""
    if os.path.isdir("/sys/module/wireguard"):
        return True
    try:
        with open(f"/lib/modules/{os.uname().release}/modules.dep", "rb") as fh:
            return any(line.split(b":", 1)[0].endswith((b"/wireguard.ko", b"/wireguard.ko.xz",
                                                        b"/wireguard.ko.zst", b"/wireguard.ko.gz"))
                       for line in fh)
    except OSError:
        return False


# -- processes ---------------------------------------------------------------------------

_children: dict[int, subprocess.Popen[bytes]] = {}


def _alive(pid: int, start: int | None) -> bool:
    """PID is the process that started at START and has not exited (a zombie has)."""
    child = _children.get(pid)
    if child is not None and child.poll() is not None:  # our own child: reaped now
        del _children[pid]
        return False
    now = state.process_start(pid)
    if now is None or now != start:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        return data[data.rindex(b")") + 2:][:1] != b"Z"
    except (OSError, ValueError):
        return False


def _stop(pid: int, start: int | None) -> None:
    for sig, wait in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, STOP_GRACE)):
        if not _alive(pid, start):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid, start):
                return
            time.sleep(0.01)
    if _alive(pid, start):
        raise NsrunError(f"wireguard-go (pid {pid}) did not stop")


def _wg_processes() -> list[tuple[int, int | None, str]]:
    """(pid, start, ifname) of every wireguard-go process serving an nsrun-named interface."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if len(argv) >= 2 and os.path.basename(argv[0]) == WG_GO.encode():
            ifname = argv[-2].decode(errors="replace") if argv[-1] == b"" else argv[-1].decode(errors="replace")
            if names.is_wg_ifname(ifname):
                pid = int(entry.name)
                out.append((pid, state.process_start(pid), ifname))
    return out


def _start_userspace(rec: WgRecord, root: Path | None, program: str | None) -> WgRecord:
    exe = program or shutil.which(WG_GO, path=SEARCH_PATH)
    if not exe:
        raise UsageError("wireguard-go is not installed (and this kernel has no WireGuard module): "
                         "install it (Debian: apt-get install wireguard-go)")
    log = _dir(root) / f"{rec.name}.log"
    state.remove(log)
    # O_EXCL|O_NOFOLLOW: never write through a file or link someone else put there.
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        proc = subprocess.Popen(
            [exe, rec.ifname], stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, close_fds=True,
            start_new_session=True, cwd="/",
            env={"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error", "PATH": SEARCH_PATH})
    finally:
        os.close(fd)
    rec = rec._replace(pid=proc.pid, start=state.process_start(proc.pid))
    _save(rec, root)
    _children[proc.pid] = proc  # reaped by _alive() while we live; it outlives us otherwise
    path = socket_path(rec.ifname)
    deadline = time.monotonic() + START_TIMEOUT
    while not _uapi_ready(path):
        assert rec.pid is not None
        if not _alive(rec.pid, rec.start) or time.monotonic() > deadline:
            with open(log, errors="replace") as fh:
                why = " ".join(fh.read(2000).split()) or "no message"
            raise NsrunError(f"wireguard-go did not start for {rec.name}: {why}")
        time.sleep(0.01)
    return rec


def _uapi_ready(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
        return True
    except OSError:
        return False


def _uapi(path: str, request: str) -> list[tuple[str, str]]:
    """One UAPI exchange: REQUEST ends with an empty line; the answer's key=value pairs."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        s.connect(path)
        s.sendall(request.encode())
        data = b""
        while not data.endswith(b"\n\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    pairs = []
    for line in data.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            pairs.append((key, value))
    err = dict(pairs).get("errno")
    if err != "0":
        raise NsrunError(f"wireguard-go refused its configuration (errno {err})")
    return pairs


def _endpoint_text(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def uapi_config(conf: WgConfig) -> str:
    """The UAPI `set` request for CONF (holds keys: sent to the socket, never stored)."""
    lines = ["set=1", f"private_key={conf.private_key.hex()}"]
    if conf.listen_port is not None:
        lines.append(f"listen_port={conf.listen_port}")
    lines.append("replace_peers=true")
    for peer in conf.peers:
        lines.append(f"public_key={peer.public_key.hex()}")
        if peer.preshared_key is not None:
            lines.append(f"preshared_key={peer.preshared_key.hex()}")
        if peer.endpoint is not None:
            lines.append(f"endpoint={_endpoint_text(peer.endpoint)}")
        lines.append(f"persistent_keepalive_interval={peer.keepalive}")
        lines.append("replace_allowed_ips=true")
        lines.extend(f"allowed_ip={net}" for net in peer.allowed_ips)
    return "\n".join(lines) + "\n\n"


# -- kernel WireGuard (untested here: these machines' kernel has no module) -----------------

def _kernel_create(ipr: Any, ifname: str, conf: WgConfig) -> None:
    import base64

    from pyroute2.netlink.generic.wireguard import WireGuard

    ipr.link("add", ifname=ifname, kind="wireguard")

    def b64(hexkey: str) -> str:
        return base64.b64encode(bytes.fromhex(hexkey)).decode()

    with WireGuard() as wg:
        wg.set(ifname, private_key=b64(conf.private_key.hex()), listen_port=conf.listen_port)
        for peer in conf.peers:
            spec: dict[str, Any] = {"public_key": b64(peer.public_key.hex()),
                                    "allowed_ips": [str(n) for n in peer.allowed_ips],
                                    "persistent_keepalive": peer.keepalive}
            if peer.preshared_key is not None:
                spec["preshared_key"] = b64(peer.preshared_key.hex())
            if peer.endpoint is not None:
                spec["endpoint_addr"], spec["endpoint_port"] = peer.endpoint
            wg.set(ifname, peer=spec)


# -- create ------------------------------------------------------------------------------

def create(name: str, conf: WgConfig, *, impl: str = "auto", root: Path | None = None,
           program: str | None = None) -> WgRecord:
    """Give the existing named namespace NAME a WireGuard interface per CONF as its only way
    out. Called in the host's network namespace (the encrypted UDP leaves from there).
    On failure, whatever was made is removed again before the error is raised."""
    from nsrun import netlink

    names.check_name(name)
    if impl == "auto":
        impl = "kernel" if kernel_available() else "userspace"
    if impl not in ("kernel", "userspace"):
        raise UsageError(f"unknown WireGuard implementation {impl!r}: kernel or userspace")
    try:  # opened here, never created: pyroute2 would make a missing namespace (flags=0 pitfall)
        ns_fd = os.open(netns.path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"namespace {name} does not exist") from None
    ifname = names.wg_ifname(name)
    try:
        with _lock(name, root):
            old = read_record(name, root)
            if old is not None and old.pid is not None and _alive(old.pid, old.start):
                raise UsageError(f"namespace {name} already has a WireGuard interface ({ifname})")
            if old is not None:
                _remove_unlocked(name, root)
            rec = WgRecord(name=name, ifname=ifname, impl=impl, dns=bool(conf.dns))
            _save(rec, root)  # the intent, before the first change
            fault.checkpoint("wg-record")
            try:
                with netlink.IPRoute() as ipr:
                    if netlink.index(ipr, ifname) is not None:
                        _delete_host_link(ipr, ifname)  # a crashed setup's, by its derived name
                    if impl == "userspace":
                        rec = _start_userspace(rec, root, program)
                        fault.checkpoint("wg-started")
                        _uapi(socket_path(ifname), uapi_config(conf))
                    else:
                        _kernel_create(ipr, ifname, conf)
                    fault.checkpoint("wg-configured")
                    idx = netlink.index(ipr, ifname)
                    if idx is None:
                        raise NsrunError(f"the WireGuard interface {ifname} did not appear")
                    # The MTU is set here, where wireguard-go still sees the change; it moves
                    # with the interface.
                    ipr.link("set", index=idx, ifalias=names.ifalias(name),
                             **({"mtu": conf.mtu} if conf.mtu is not None else {}))
                    ipr.link("set", index=idx, net_ns_fd=ns_fd)
                fault.checkpoint("wg-moved")
                netns.in_thread(lambda: _configure_inside(ifname, conf), enter=name)
                fault.checkpoint("wg-inside")
                if conf.dns:
                    _write_dns(name, conf)
                fault.checkpoint("wg-dns")
                rec = rec._replace(state="up")
                _save(rec, root)
                return rec
            except BaseException:
                _remove_unlocked(name, root)
                raise
    finally:
        os.close(ns_fd)


def _write_dns(name: str, conf: WgConfig) -> None:
    """/etc/netns/NAME/resolv.conf: the config's servers (and search domains), as dns.py."""
    dns.write(name, conf.dns)
    if conf.search:
        path = f"{dns.dir_for(name)}/resolv.conf"
        tmp = f"{dns.dir_for(name)}/.resolv.conf.nsrun"
        with open(path) as fh:
            body = fh.read()
        head, _, rest = body.partition("\n")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{head}\nsearch {' '.join(conf.search)}\n{rest}")
        os.replace(tmp, path)


def _configure_inside(ifname: str, conf: WgConfig) -> None:
    """In the target namespace: IPv6 off on the interface unless the config has a v6
    address; addresses, up; the default routes through the tunnel."""
    from nsrun import netlink

    v6 = conf.has_v6
    key = f"net/ipv6/conf/{ifname}/disable_ipv6"
    if os.path.exists(f"/proc/sys/{key}"):
        sysctl.write(key, "0" if v6 else "1")
        if v6:
            sysctl.write(f"net/ipv6/conf/{ifname}/accept_ra", "0")
    elif v6:
        raise UsageError(f"{conf.source}: Address: has an IPv6 address, but IPv6 is not available here")
    with netlink.IPRoute() as ipr:
        ipr.link("set", index=1, state="up")
        idx = netlink.index(ipr, ifname)
        if idx is None:
            raise NsrunError(f"the WireGuard interface {ifname} did not arrive in the namespace")
        for a in conf.addresses:
            ipr.addr("add", index=idx, address=str(a.ip), prefixlen=a.network.prefixlen)
        ipr.link("set", index=idx, state="up")
        ipr.route("add", dst="0.0.0.0/0", oif=idx)
        if v6:
            ipr.route("add", dst="::/0", oif=idx, family=socket.AF_INET6)


# -- remove ------------------------------------------------------------------------------

def remove(name: str, root: Path | None = None) -> bool:
    """Remove NAME's WireGuard pieces, from its record or (without one) its name alone:
    the wireguard-go process, its socket, the link wherever it is, the DNS file, the record.
    Idempotent; False when there was nothing to do."""
    names.check_name(name)
    with _lock(name, root) as lock:
        did = _remove_unlocked(name, root)
        lock.discard()
        return did


def _remove_unlocked(name: str, root: Path | None) -> bool:
    from nsrun import netlink

    rec = read_record(name, root)
    ifname = names.wg_ifname(name)
    did = rec is not None
    procs = [(pid, start) for pid, start, i in _wg_processes() if i == ifname]
    if rec is not None and rec.pid is not None and _alive(rec.pid, rec.start):
        procs.append((rec.pid, rec.start))
    for pid, start in set(procs):
        _stop(pid, start)
        did = True
    path = socket_path(ifname)
    if os.path.exists(path) and not _uapi_ready(path):  # left by a killed wireguard-go
        state.remove(Path(path))
        did = True
    with netlink.IPRoute() as ipr:
        if netlink.index(ipr, ifname) is not None:
            _delete_host_link(ipr, ifname)
            did = True
    if netns.exists(name):
        did = netns.in_thread(lambda: _delete_link_here(ifname), enter=name) or did
    if rec is None or rec.dns:
        if os.path.exists(f"{dns.dir_for(name)}/resolv.conf"):
            did = True
        dns.remove_files(name)
    state.remove(_dir(root) / f"{name}.log")
    state.remove(record_path(name, root))
    return did


def _delete_host_link(ipr: Any, ifname: str) -> None:
    from nsrun import netlink

    idx = netlink.index(ipr, ifname)
    if idx is None:
        return
    try:
        ipr.link("del", index=idx)
    except netlink.NetlinkError() as exc:
        if netlink.errno_of(exc) != errno.ENODEV:
            raise


def _delete_link_here(ifname: str) -> bool:
    from nsrun import netlink

    with netlink.IPRoute() as ipr:
        if netlink.index(ipr, ifname) is None:
            return False
        _delete_host_link(ipr, ifname)
        return True


# -- gc ----------------------------------------------------------------------------------

def orphans(root: Path | None = None) -> list[tuple[str, str, tuple[Any, ...]]]:
    """(what, why, handle) for WireGuard pieces whose namespace is gone; `reclaim(handle)`.

    Looked at from the caller's (host) namespace: records of this state directory; nsrun-
    named wireguard-go processes and links still in the host namespace (a setup that died
    before the move), judged by their alias; sockets no process listens on. A piece whose
    namespace exists is left alone: it may be another state directory's, or a setup in
    progress."""
    from nsrun import netlink

    out: list[tuple[str, str, tuple[Any, ...]]] = []
    recorded: set[str] = set()
    try:
        files = sorted(os.listdir(_dir(root)))
    except FileNotFoundError:
        files = []
    for fn in files:
        if fn.endswith(".json") and not fn.startswith("."):
            rec = read_record(fn[:-5], root)
            if rec is None:
                continue
            recorded.add(rec.ifname)
            if not netns.exists(rec.name):
                out.append((f"WireGuard interface {rec.ifname} of {rec.name}", "its namespace is gone",
                            ("record", rec.name)))
            elif rec.state != "up" and not _setup_running(rec.name, root):
                out.append((f"WireGuard interface {rec.ifname} of {rec.name}", "its setup never finished",
                            ("record", rec.name)))
    here = os.stat("/proc/self/ns/net").st_ino
    aliases: dict[str, str | None] = {}
    with netlink.IPRoute() as ipr:
        for link in ipr.get_links():
            ifname = netlink.link_attr(link, "IFLA_IFNAME")
            if isinstance(ifname, str) and names.is_wg_ifname(ifname):
                alias = netlink.link_attr(link, "IFLA_IFALIAS") or ""
                aliases[ifname] = alias[len(names.IFALIAS_PREFIX):] if alias.startswith(names.IFALIAS_PREFIX) else None
    owner_of = {ifname: alias for ifname, alias in aliases.items()}
    for pid, start, ifname in _wg_processes():
        if ifname in recorded:
            continue
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != here:
                continue
        except OSError:
            continue
        if ifname not in aliases:
            continue  # its tun was moved: it serves a namespace that exists (it exits with it)
        owner = owner_of[ifname]
        if (owner is None or netns.exists(owner)) and (start is None or _age(start) < SETUP_GRACE):
            continue  # perhaps another state directory's setup in progress
        out.append((f"wireguard-go {pid} ({ifname})", "a setup that died before the move",
                    ("process", pid, start, ifname)))
    for ifname, owner in aliases.items():
        if ifname in recorded or any(h[0] == "process" and h[3] == ifname for _, _, h in out):
            continue
        if owner is not None and not netns.exists(owner):
            out.append((f"link {ifname}", f"its namespace {owner} is gone", ("link", ifname)))
    try:
        socks = sorted(os.listdir(SOCKET_DIR))
    except OSError:
        socks = []
    for fn in socks:
        if fn.endswith(".sock") and names.is_wg_ifname(fn[:-5]) and fn[:-5] not in recorded:
            path = f"{SOCKET_DIR}/{fn}"
            if not _uapi_ready(path):
                out.append((path, "no wireguard-go listens on it", ("socket", path)))
    return out


def _setup_running(name: str, root: Path | None) -> bool:
    """Does a create() or remove() of NAME hold its lock now?"""
    try:
        with state.Lock(_dir(root) / f"{name}.lock", blocking=False):
            return False
    except BlockingIOError:
        return True


def _age(start_ticks: int) -> float:
    with open("/proc/uptime") as fh:
        uptime = float(fh.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def reclaim(handle: tuple[Any, ...], root: Path | None = None) -> None:
    from nsrun import netlink

    kind = handle[0]
    if kind == "record":
        remove(handle[1], root)
    elif kind == "process":
        _, pid, start, ifname = handle
        _stop(pid, start)
        path = socket_path(ifname)
        if os.path.exists(path) and not _uapi_ready(path):
            state.remove(Path(path))
        with netlink.IPRoute() as ipr:
            _delete_host_link(ipr, ifname)
    elif kind == "link":
        with netlink.IPRoute() as ipr:
            _delete_host_link(ipr, handle[1])
    elif kind == "socket":
        if not _uapi_ready(handle[1]):
            state.remove(Path(handle[1]))


# -- status ------------------------------------------------------------------------------

def status(name: str, root: Path | None = None) -> dict[str, Any] | None:
    """For `nsrun ls`: implementation, interface, and per peer its endpoint, latest handshake
    (unix time, None before the first) and transfer counters. Never a key."""
    rec = read_record(name, root)
    if rec is None:
        return None
    out: dict[str, Any] = {"impl": rec.impl, "ifname": rec.ifname, "state": rec.state, "peers": []}
    if rec.impl == "userspace":
        out["pid"] = rec.pid
        try:
            pairs = _uapi(socket_path(rec.ifname), "get=1\n\n")
        except (OSError, NsrunError):
            out["state"] = "down"
            return out
        peer: dict[str, Any] | None = None
        secs = nsecs = 0
        for key, value in pairs:
            if key == "public_key":
                peer = {"endpoint": None, "latest_handshake": None, "rx_bytes": 0, "tx_bytes": 0}
                out["peers"].append(peer)
                secs = nsecs = 0
            elif peer is None:
                continue
            elif key == "endpoint":
                peer["endpoint"] = value
            elif key in ("rx_bytes", "tx_bytes"):
                peer[key] = int(value)
            elif key == "last_handshake_time_sec":
                secs = int(value)
            elif key == "last_handshake_time_nsec":
                nsecs = int(value)
            if peer is not None and key.startswith("last_handshake_time"):
                peer["latest_handshake"] = (secs + nsecs / 1e9) if (secs or nsecs) else None
    else:  # kernel: read over generic netlink inside the namespace (untested here)
        def read() -> list[Any]:
            from pyroute2.netlink.generic.wireguard import WireGuard

            with WireGuard() as wg:
                return list(wg.info(rec.ifname))
        try:
            for msg in netns.in_thread(read, enter=name):
                for p in msg.get_attr("WGDEVICE_A_PEERS") or []:
                    ep = p.get_attr("WGPEER_A_ENDPOINT")
                    hs = p.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME") or {}
                    out["peers"].append({
                        "endpoint": f"{ep['addr']}:{ep['port']}" if ep else None,
                        "latest_handshake": (hs.get("tv_sec") or None) if isinstance(hs, dict) else None,
                        "rx_bytes": p.get_attr("WGPEER_A_RX_BYTES"),
                        "tx_bytes": p.get_attr("WGPEER_A_TX_BYTES")})
        except Exception:
            out["state"] = "down"
    return out
