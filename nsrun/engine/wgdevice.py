"""WireGuard devices: the userspace implementation (`wireguard-go`) as a process and its UAPI
socket, and kernel WireGuard links over generic netlink. No records and no life cycle: the
engine's resource (nsrun.engine.resources.wireguard) decides what to make, records it and
takes it away again; this module only knows how to talk to the implementations.

Userspace: `wireguard-go IFNAME`, started in the caller's ("the host's") network namespace,
makes a tun there and its UAPI socket (/var/run/wireguard/IFNAME.sock), then daemonizes
itself (re-executes in the background and the first process exits) — exactly what wg-quick
relies on. nsrun runs the first process to its exit (in a session of its own, so a
terminal's signals never reach the daemon) and then finds the daemon by its command line:
so nsrun never has a child left behind, and a CMD exec'd later never inherits one. The tun
may then be moved into another namespace; the daemon keeps serving it, and exits by itself
when the tun is deleted (the namespace goes). It is configured over the UAPI socket only,
never through `wg`, and stopped by pid and start time (never another process that reused
the pid).

Kernel (`/sys/module/wireguard`, or a module the kernel can load): a `wireguard` link made
with pyroute2 and set over generic netlink. That branch is small and NOT exercised by the
tests here: the test machines' kernel has no WireGuard module.

Keys go from the parsed configuration (nsrun.wgconf) to the implementation and nowhere
else; `status` reports endpoints, handshakes and counters only.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from nsrun import names, state
from nsrun.errors import NsrunError, UsageError
from nsrun.linux import sysctl

if TYPE_CHECKING:
    from nsrun.wgconf import WgConfig

SOCKET_DIR = "/var/run/wireguard"
WG_GO = "wireguard-go"
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
START_TIMEOUT = 10.0
STOP_GRACE = 2.0


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


# -- wireguard-go processes ----------------------------------------------------------------

def alive(pid: int, start: int | None) -> bool:
    """PID is the process that started at START and has not exited (a zombie has)."""
    now = state.process_start(pid)
    if now is None or (start is not None and now != start):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        return data[data.rindex(b")") + 2:][:1] != b"Z"
    except (OSError, ValueError):
        return False


def stop(pid: int, start: int | None) -> None:
    """SIGTERM, then SIGKILL, the wireguard-go PID that started at START; NsrunError if it stays."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not alive(pid, start):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline:
            if not alive(pid, start):
                return
            time.sleep(0.01)
    if alive(pid, start):
        raise NsrunError(f"wireguard-go (pid {pid}) did not stop")


def processes(ifname: str | None = None) -> list[tuple[int, int | None, str]]:
    """(pid, start, ifname) of each wireguard-go serving an nsrun-named interface (IFNAME
    only, when given)."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[-1] == b"":
            argv.pop()
        if len(argv) >= 2 and os.path.basename(argv[0]) == WG_GO.encode():
            served = argv[-1].decode(errors="replace")
            if names.is_wg_ifname(served) and (ifname is None or served == ifname):
                pid = int(entry.name)
                out.append((pid, state.process_start(pid), served))
    return out


def in_this_namespace(pid: int) -> bool:
    """Whether PID's network namespace is the calling thread's."""
    try:
        here = os.stat(f"/proc/self/task/{threading.get_native_id()}/ns/net").st_ino
        return os.stat(f"/proc/{pid}/ns/net").st_ino == here
    except OSError:
        return False


def start_userspace(ifname: str) -> tuple[int, int | None]:
    """Start wireguard-go for IFNAME here; (pid, start time) of its daemon once its UAPI
    socket answers. The one place nsrun's engine runs a program (see the module docstring)."""
    import shutil
    import subprocess

    exe = shutil.which(WG_GO, path=SEARCH_PATH)
    if not exe:
        raise UsageError("wireguard-go is not installed (and this kernel has no WireGuard module): "
                         "install it (Debian: apt-get install wireguard-go)")
    try:
        launcher = subprocess.run(
            [exe, ifname], stdin=subprocess.DEVNULL, capture_output=True, close_fds=True,
            start_new_session=True, cwd="/", timeout=START_TIMEOUT,
            # No LOG_LEVEL: the daemon then keeps no descriptor of ours (its output goes to
            # /dev/null), so the launcher's exit is the end of its output.
            env={"PATH": SEARCH_PATH})
    except subprocess.TimeoutExpired:
        raise NsrunError(f"wireguard-go did not start {ifname} within {START_TIMEOUT:.0f} s") from None
    if launcher.returncode != 0:
        why = " ".join(launcher.stdout.decode(errors="replace").split()) or f"exit status {launcher.returncode}"
        raise NsrunError(f"wireguard-go could not start {ifname}: {why[-300:]}")
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        found = [(pid, start) for pid, start, _ in processes(ifname) if alive(pid, start)]
        if found and uapi_ready(socket_path(ifname)):
            return found[0]
        if time.monotonic() > deadline:
            raise NsrunError(f"wireguard-go started {ifname} but its daemon did not answer")
        time.sleep(0.01)


# -- the UAPI socket -----------------------------------------------------------------------

def uapi_ready(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(path)
        return True
    except OSError:
        return False


def uapi(path: str, request: str) -> list[tuple[str, str]]:
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


def configure_userspace(ifname: str, conf: WgConfig) -> None:
    uapi(socket_path(ifname), uapi_config(conf))


def remove_stale_socket(ifname: str) -> bool:
    """Remove IFNAME's UAPI socket when no wireguard-go listens on it (a killed one's)."""
    path = socket_path(ifname)
    if os.path.exists(path) and not uapi_ready(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return True
    return False


# -- kernel WireGuard (untested here: these machines' kernel has no module) -----------------

def kernel_create(ipr: Any, ifname: str, conf: WgConfig) -> None:
    import base64

    from nsrun.linux import netlink

    netlink.pyroute2()
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


# -- inside the namespace ------------------------------------------------------------------

def configure_inside(ifname: str, conf: WgConfig) -> None:
    """In the target namespace: IPv6 off on the interface unless the config has a v6
    address; addresses, up; the default routes through the tunnel."""
    from nsrun.linux import netlink

    v6 = conf.has_v6
    key = f"net/ipv6/conf/{ifname}/disable_ipv6"
    if os.path.exists(f"/proc/sys/{key}"):
        sysctl.write(key, "0" if v6 else "1")
        if v6:
            sysctl.write(f"net/ipv6/conf/{ifname}/accept_ra", "0")
    elif v6:
        raise UsageError(f"{conf.source}: Address: has an IPv6 address, but IPv6 is not available here")
    with netlink.IPRoute() as ipr:
        idx = netlink.index(ipr, ifname)
        if idx is None:
            raise NsrunError(f"the WireGuard interface {ifname} did not arrive in the namespace")
        for a in conf.addresses:
            ipr.addr("add", index=idx, address=str(a.ip), prefixlen=a.network.prefixlen)
        ipr.link("set", index=idx, state="up")
        ipr.route("add", dst="0.0.0.0/0", oif=idx)
        if v6:
            ipr.route("add", dst="::/0", oif=idx, family=socket.AF_INET6)


# -- status --------------------------------------------------------------------------------

def status(name: str, impl: str) -> dict[str, Any]:
    """For `nsrun ls`: the implementation, the interface, its state, and per peer its
    endpoint, latest handshake (unix time, None before the first) and transfer counters.
    Never a key. Standard library only for userspace (`ls` imports no netlink library)."""
    ifname = names.wg_ifname(name)
    out: dict[str, Any] = {"impl": impl, "ifname": ifname, "state": "up", "peers": []}
    if impl == "userspace":
        try:
            pairs = uapi(socket_path(ifname), "get=1\n\n")
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
        return out
    from nsrun.linux import (
        netns,  # kernel: generic netlink inside the namespace (untested here)
    )

    def read() -> list[Any]:
        from nsrun.linux import netlink

        netlink.pyroute2()
        from pyroute2.netlink.generic.wireguard import WireGuard

        with WireGuard() as wg:
            return list(wg.info(ifname))
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
