"""Issue 14: a WireGuard interface as a namespace's only way out (nsrun/wireguard.py), in the
lab with a VPN provider (tests/vpnlab.py) reached through gw2. Userspace WireGuard
(wireguard-go) only: this machine's kernel has no WireGuard module.

The module works in its caller's network namespace, so the tests drive it from inside the
lab host (`tests/vpnlab.py create|remove|status|...` under `nsenter --net`), into a named
namespace that `nsrun up NAME -p isolated` made.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import CLIENT
from nsrun import kernel, names
from nsrun import lab as labmod

pytestmark = pytest.mark.skipif(not shutil.which("wireguard-go") or not shutil.which("wg"),
                                reason="needs wireguard-go and wireguard-tools (Debian packages)")

VPNLAB = str(Path(__file__).resolve().parent / "vpnlab.py")
CLIENT_ADDR, CLIENT_ADDR6 = "10.77.0.2", "fd77::2"


@contextmanager
def _private_dir(path: str, mode: int) -> Iterator[None]:
    """PATH as a tmpfs of the session's mount namespace only; an empty directory made for
    it goes again afterwards."""
    made = not os.path.isdir(path)
    os.makedirs(path, mode=mode, exist_ok=True)
    kernel.mount("nsrun-tests-wg", path, "tmpfs", 0)
    try:
        yield
    finally:
        kernel.umount2(path, kernel.MNT_DETACH)
        if made:
            try:
                os.rmdir(path)
            except OSError:
                pass


@pytest.fixture(scope="module")
def wg_sockets() -> Iterator[None]:
    """A private /run/wireguard: the UAPI sockets of the lab's wireguard-go processes never
    appear on the machine."""
    with _private_dir("/run/wireguard", 0o700):
        yield


@pytest.fixture(scope="module")
def provider(lab_session: Any, wg_sockets: None) -> Iterator[Any]:
    from vpnlab import Provider

    prov = Provider(lab_session).build()
    try:
        yield prov
    finally:
        prov.destroy()


def drive(lab: Any, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lab.host_argv([sys.executable, VPNLAB, *args]), env=lab.env,
                          capture_output=True, text=True, timeout=timeout)


def inside(name: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net=/run/netns/{name}", *argv], capture_output=True,
                          text=True, check=check, timeout=30)


def wg_processes() -> list[str]:
    out = subprocess.run(["pgrep", "-a", "-x", "wireguard-go"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if re.search(r"\bnswg[0-9a-f]{10}\b", line)]


class Tunnel:
    def __init__(self, lab: Any, provider: Any, tmp: Path, v6: bool = False, dns: str | None = None,
                 mtu: int | None = None) -> None:
        self.lab, self.provider = lab, provider
        self.name = f"wg-{lab.lab.id}"
        self.ifname = names.wg_ifname(self.name)
        self.private, self.public = provider.add_client(CLIENT_ADDR, CLIENT_ADDR6 if v6 else None)
        self.conf = provider.client_config(tmp, self.private, CLIENT_ADDR,
                                           address6=CLIENT_ADDR6 if v6 else None, dns=dns, mtu=mtu)

    def up(self) -> dict[str, Any]:
        r = self.lab.nsrun("up", self.name, "-p", "isolated")
        assert r.returncode == 0, r.stderr
        r = drive(self.lab, "create", self.name, str(self.conf))
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def down(self) -> None:
        r = drive(self.lab, "remove", self.name)
        assert r.returncode == 0, r.stderr
        self.lab.nsrun("down", self.name)
        self.provider.drop_client(self.public)


@pytest.fixture
def tunnel(lab: Any, provider: Any, tmp_path: Path) -> Iterator[Tunnel]:
    t = Tunnel(lab, provider, tmp_path)
    try:
        yield t
    finally:
        t.down()


def assert_no_key_in(paths: list[Path], *keys: str) -> None:
    for root in paths:
        if not root.exists():
            continue
        for p in [root] if root.is_file() else [q for q in root.rglob("*") if q.is_file()]:
            data = p.read_bytes()
            for key in keys:
                raw = __import__("base64").b64decode(key)
                assert key.encode() not in data and raw.hex().encode() not in data, f"key material in {p}"


def test_client_egresses_through_the_provider_only(lab, tunnel):
    rec = tunnel.up()
    assert rec["impl"] == "userspace" and rec["ifname"] == tunnel.ifname and rec["state"] == "up"
    # The server upstream sees the provider's address: the traffic went through the tunnel.
    r = lab.nsrun("exec", tunnel.name, "--", *CLIENT)
    assert (r.returncode, r.stdout.strip()) == (0, "192.0.2.1"), r.stderr
    # Inside: lo and the WireGuard interface, nothing else; the default route is the tunnel.
    links = json.loads(inside(tunnel.name, "ip", "-j", "link", "show").stdout)
    assert sorted(link["ifname"] for link in links) == sorted(["lo", tunnel.ifname])
    routes = json.loads(inside(tunnel.name, "ip", "-j", "-4", "route", "show").stdout)
    assert [(x["dst"], x["dev"]) for x in routes if x["dst"] == "default"] == [("default", tunnel.ifname)]
    # No IPv6 in the config: no v6 route at all, and no v6 address on the interface.
    assert json.loads(inside(tunnel.name, "ip", "-j", "-6", "route", "show").stdout or "[]") == []
    assert inside(tunnel.name, "cat", f"/proc/sys/net/ipv6/conf/{tunnel.ifname}/disable_ipv6").stdout.strip() == "1"
    # The lab host holds no trace of the interface: it was moved, and its UDP stays here.
    host_links = [link["ifname"] for link in lab.host_json("ip", "-j", "link", "show")]
    assert tunnel.ifname not in host_links
    # Status: endpoint, a handshake, counters; never a key.
    r = drive(lab, "status", tunnel.name)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["impl"] == "userspace" and st["state"] == "up"
    [peer] = st["peers"]
    assert peer["endpoint"] == "192.0.2.1:51820"
    assert peer["latest_handshake"] and abs(peer["latest_handshake"] - time.time()) < 120
    assert peer["rx_bytes"] > 0 and peer["tx_bytes"] > 0
    assert tunnel.private not in r.stdout and tunnel.provider.public not in r.stdout
    assert_no_key_in([lab.statedir, Path("/etc/netns") / tunnel.name], tunnel.private)
    assert len(wg_processes()) == 1


def test_remove_leaves_the_lab_host_as_before(lab, provider, tmp_path):
    # The lab fixture compares the lab host before and after (links, routes, state files...).
    t = Tunnel(lab, provider, tmp_path, dns="10.77.0.1", mtu=1380)
    try:
        t.up()
        [wg] = [x for x in json.loads(inside(t.name, "ip", "-j", "link", "show").stdout) if x["ifname"] == t.ifname]
        assert wg["mtu"] == 1380
        resolv = Path(f"/etc/netns/{t.name}/resolv.conf").read_text()
        assert "nameserver 10.77.0.1" in resolv.splitlines()
        # Inside, resolv.conf is the config's, and a lookup reaches the provider's server
        # through the tunnel (it sees the tunnel address).
        r = lab.nsrun("exec", t.name, "--", "cat", "/etc/resolv.conf")
        assert [x for x in r.stdout.splitlines() if x.startswith("nameserver")] == ["nameserver 10.77.0.1"]
        r = lab.nsrun("exec", t.name, "--", sys.executable, VPNLAB, "resolve", "probe.example")
        assert r.returncode == 0 and "no address" in r.stdout, r.stderr
        assert f"{CLIENT_ADDR} probe.example" in Path(provider.dns_log).read_text().splitlines()
        assert_no_key_in([lab.statedir, Path("/etc/netns") / t.name], t.private)
        r = drive(lab, "remove", t.name)
        assert (r.returncode, r.stdout.strip()) == (0, "true"), r.stderr
        assert wg_processes() == []
        assert not os.path.exists(f"/run/wireguard/{t.ifname}.sock")
        assert not Path(f"/etc/netns/{t.name}").exists()
        assert inside(t.name, "ip", "-j", "link", "show").stdout.count('"ifname"') == 1  # lo alone
        r = drive(lab, "remove", t.name)  # idempotent
        assert (r.returncode, r.stdout.strip()) == (0, "false"), r.stderr
        assert_no_key_in([lab.statedir], t.private)
    finally:
        t.down()


def _capture(lab: Any) -> subprocess.Popen[str]:
    # Frames the lab host sends out of its uplink (-Q out): whatever leaves it, from any source.
    proc = subprocess.Popen(lab.host_argv(["tcpdump", "-n", "-l", "-i", "eth0", "-e", "-Q", "out"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    while not seen or "listening on" not in seen[-1]:  # printed once the capture runs
        seen.append(proc.stderr.readline())
        assert seen[-1], "".join(seen)
    return proc


@pytest.mark.skipif(not shutil.which("tcpdump"), reason="needs tcpdump (Debian package)")
@pytest.mark.parametrize("how", ["peer-removed", "provider-stopped"])
def test_kill_switch_nothing_leaves_in_the_clear(lab, tunnel, how):
    tunnel.up()
    r = lab.nsrun("exec", tunnel.name, "--", *CLIENT)
    assert r.returncode == 0, r.stderr
    if how == "peer-removed":
        tunnel.provider.drop_client(tunnel.public)  # the provider no longer answers this peer
    else:
        tunnel.provider.stop_peer()  # the provider's WireGuard is gone altogether
    cap = _capture(lab)
    try:
        r = lab.nsrun("exec", tunnel.name, "--", *CLIENT)
        assert r.returncode != 0 and "connection failed" in r.stderr
        # Also a UDP datagram upstream and a connection to the LAN's gateway: not in the clear.
        r = lab.nsrun("exec", tunnel.name, "--", sys.executable, VPNLAB, "leak")
        assert r.returncode == 0, r.stderr
        time.sleep(1.0)
    finally:
        cap.terminate()
        out, _ = cap.communicate(timeout=10)
        if how == "provider-stopped":
            tunnel.provider.start_peer()
    frames = [line for line in out.splitlines() if line.strip()]
    assert [f for f in frames if "ethertype ARP" not in f], "the capture saw nothing: the client never tried"
    leaks = _leaks(frames)
    assert not leaks, "\n".join(leaks[:10])
    # The control: the same capture and filter do see traffic in the clear when there is some.
    cap = _capture(lab)
    try:
        lab.host(sys.executable, VPNLAB, "leak")
        time.sleep(0.5)
    finally:
        cap.terminate()
        out, _ = cap.communicate(timeout=10)
    assert len(_leaks(out.splitlines())) >= 2, out


def _leaks(frames: list[str]) -> list[str]:
    """Frames leaving by the lab host's uplink other than ARP and WireGuard's UDP from the
    lab host to the provider's endpoint."""
    endpoint = re.compile(r"ethertype IPv4 .*: 192\.168\.1\.10\.\d+ > 192\.0\.2\.1\.51820: UDP")
    return [f for f in frames if f.strip() and "ethertype ARP" not in f and not endpoint.search(f)]


def test_ipv6_through_the_tunnel_when_configured(lab, provider, tmp_path):
    from vpnlab import PROVIDER6, PROVIDER6_UP, V6_PORT

    t = Tunnel(lab, provider, tmp_path, v6=True)
    try:
        t.up()
        r = lab.nsrun("exec", t.name, "--", sys.executable, VPNLAB, "client6", PROVIDER6_UP, str(V6_PORT))
        assert (r.returncode, r.stdout.strip()) == (0, PROVIDER6), r.stderr
        routes = json.loads(inside(t.name, "ip", "-j", "-6", "route", "show").stdout)
        assert ("default", t.ifname) in [(x["dst"], x["dev"]) for x in routes]
        r = lab.nsrun("exec", t.name, "--", *CLIENT)  # and v4 still
        assert (r.returncode, r.stdout.strip()) == (0, "192.0.2.1"), r.stderr
    finally:
        t.down()


def test_gc_finds_a_killed_wireguard_go_and_its_socket(lab, tunnel):
    rec = tunnel.up()
    os.kill(rec["pid"], 9)  # a crash: the socket stays, the tun goes with the process
    deadline = time.monotonic() + 5
    while wg_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.exists(f"/run/wireguard/{tunnel.ifname}.sock")
    r = drive(lab, "status", tunnel.name)
    assert json.loads(r.stdout)["state"] == "down"
    lab.nsrun("down", tunnel.name)  # the namespace goes: its record is an orphan now
    r = drive(lab, "orphans")
    assert r.returncode == 0, r.stderr
    assert [why for _, why in json.loads(r.stdout)] == ["its namespace is gone"]
    r = drive(lab, "gc")
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(f"/run/wireguard/{tunnel.ifname}.sock")
    assert json.loads(drive(lab, "orphans").stdout) == []


def test_create_into_a_missing_namespace_changes_nothing(lab, provider, tmp_path):
    t = Tunnel(lab, provider, tmp_path)
    try:
        r = drive(lab, "create", t.name, str(t.conf))
        assert r.returncode == 2 and "does not exist" in r.stderr
        assert wg_processes() == [] and not Path("/run/netns", t.name).exists()
    finally:
        provider.drop_client(t.public)


def test_refused_configs_change_nothing(lab, provider, tmp_path):
    t = Tunnel(lab, provider, tmp_path)
    try:
        r = lab.nsrun("up", t.name, "-p", "isolated")
        assert r.returncode == 0, r.stderr
        text = t.conf.read_text()
        bad = tmp_path / "bad.conf"
        cases = {
            "world": (text, 0o644, "group or others may read"),
            "key": (text.replace(t.private, t.private[:-2] + "!="), 0o600, "PrivateKey: is not a WireGuard key"),
            "peer": (text.split("[Peer]")[0], 0o600, "[Peer]: is missing"),
            "endpoint": (text.replace("192.0.2.1:51820", "no-such-host.invalid:51820"), 0o600,
                         "Endpoint: no-such-host.invalid does not resolve"),
        }
        for case, (body, mode, want) in cases.items():
            bad.write_text(body)
            os.chmod(bad, mode)
            # The lab host has no resolver; one on its refused port 53 answers at once.
            resolv = tmp_path / "resolv.conf"
            resolv.write_text("nameserver 127.0.0.1\n")
            r = subprocess.run(lab.host_argv(["unshare", "-m", "--propagation", "slave", "sh", "-c",
                                              f"mount --bind {resolv} /etc/resolv.conf && "
                                              f"exec {sys.executable} {VPNLAB} create {t.name} {bad}"]),
                               env=lab.env, capture_output=True, text=True, timeout=60)
            assert r.returncode == 2, (case, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and str(bad) in lines[0] and want in lines[0], (case, r.stderr)
            assert t.private not in r.stderr
            assert wg_processes() == []
            assert inside(t.name, "ip", "-j", "link", "show").stdout.count('"ifname"') == 1
    finally:
        lab.nsrun("down", t.name)
        provider.drop_client(t.public)


@pytest.mark.parametrize("step", ["wg-record", "wg-started", "wg-configured", "wg-moved", "wg-inside", "wg-dns"])
def test_gc_after_a_crash_at_each_setup_step(lab, provider, tmp_path, step):
    from nsrun.wireguard import WG_STEPS

    assert step in WG_STEPS
    t = Tunnel(lab, provider, tmp_path, dns="10.77.0.1")
    try:
        assert lab.nsrun("up", t.name, "-p", "isolated").returncode == 0
        r = subprocess.run(lab.host_argv([sys.executable, VPNLAB, "create", t.name, str(t.conf)]),
                           env={**lab.env, "NSRUN_FAULT": step}, capture_output=True, text=True, timeout=60)
        assert r.returncode == -9, r.stderr
        r = drive(lab, "orphans")
        assert [why for _, why in json.loads(r.stdout)] == ["its setup never finished"], r.stdout
        r = drive(lab, "gc")
        assert r.returncode == 0, r.stderr
        assert json.loads(drive(lab, "orphans").stdout) == []
        assert wg_processes() == []
        assert not os.path.exists(f"/run/wireguard/{t.ifname}.sock")
        assert not Path(f"/etc/netns/{t.name}").exists()
        assert inside(t.name, "ip", "-j", "link", "show").stdout.count('"ifname"') == 1  # lo alone
        assert not (lab.statedir / "wg" / f"{t.name}.json").exists()
    finally:
        t.down()


def test_gc_reclaims_a_wireguard_go_whose_record_was_never_written(lab, provider, tmp_path):
    """A crash between starting wireguard-go and recording its pid: the process, its tun
    (still in the host namespace) and its socket are found by name alone, once older than
    a setup could be (the grace is shortened here)."""
    t = Tunnel(lab, provider, tmp_path)
    proc = subprocess.Popen(lab.host_argv(["wireguard-go", t.ifname]), env={"WG_PROCESS_FOREGROUND": "1"},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(f"/run/wireguard/{t.ifname}.sock") and time.monotonic() < deadline:
            time.sleep(0.05)
        code = ("import json, sys; sys.path.insert(0, %r); from nsrun import wireguard; "
                "wireguard.SETUP_GRACE = float(sys.argv[1]); "
                "o = wireguard.orphans(); [wireguard.reclaim(h) for _, _, h in o if sys.argv[2] == 'gc']; "
                "print(json.dumps([w for w, _, _ in o]))") % str(Path(VPNLAB).parent.parent)
        r = subprocess.run(lab.host_argv([sys.executable, "-c", code, "60", "plan"]), env=lab.env,
                           capture_output=True, text=True, timeout=60)
        assert json.loads(r.stdout) == [], r.stderr  # young: perhaps a setup in progress
        r = subprocess.run(lab.host_argv([sys.executable, "-c", code, "0", "gc"]), env=lab.env,
                           capture_output=True, text=True, timeout=60)
        assert json.loads(r.stdout) == [f"wireguard-go {proc.pid} ({t.ifname})"], r.stderr
        assert proc.wait(10) is not None
        assert not os.path.exists(f"/run/wireguard/{t.ifname}.sock")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        provider.drop_client(t.public)
