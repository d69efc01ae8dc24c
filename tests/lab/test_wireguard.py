"""Issue 14: `mode = "wireguard"` profiles, a WireGuard interface as a namespace's only way
out, through the CLI (`nsrun -p WG -- CMD`, `up`, `ls`, `down`, `gc`) in the lab with a VPN
provider (tests/support/vpnlab.py) reached through gw2. Userspace WireGuard (wireguard-go) only:
this machine's kernel has no WireGuard module, so the kernel branch is not exercised here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import CLIENT, SUPPORT
from nsrun import names
from nsrun.linux import netns
from support.mounts import private_dir
from nsrun.engine.resources import steps

pytestmark = pytest.mark.requires("wireguard-go", "wg")

VPNLAB = str(SUPPORT / "vpnlab.py")
CLIENT_ADDR, CLIENT_ADDR6 = "10.77.0.2", "fd77::2"


@pytest.fixture(scope="module")
def wg_sockets() -> Iterator[None]:
    """A private /run/wireguard: the UAPI sockets of the lab's wireguard-go processes never
    appear on the machine."""
    with private_dir("/run/wireguard", 0o700, "nsrun-tests-wg"):
        yield


@pytest.fixture(scope="module")
def provider(lab_session: Any, wg_sockets: None) -> Iterator[Any]:
    from support.vpnlab import Provider

    prov = Provider(lab_session).build()
    try:
        yield prov
    finally:
        prov.destroy()


def inside(name: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net=/run/netns/{name}", *argv], capture_output=True,
                          text=True, check=check, timeout=30)


def wg_processes(lab: Any) -> list[int]:
    """The wireguard-go processes in the lab host's network namespace (whatever they serve)."""
    inside = set(netns.pids_in(lab.lab.host))
    found = subprocess.run(["pgrep", "-x", "wireguard-go"], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found if int(pid) in inside]


def wg_profile(directory: Path, conf: Path, name: str = "wg") -> Path:
    path = directory / f"{name}.toml"
    path.write_text(f'description = "through the lab\'s VPN provider"\nmode = "wireguard"\nwireguard = "{conf}"\n')
    os.chmod(path, 0o644)
    return path


def record_of(lab: Any, name: str) -> dict[str, Any]:
    return json.loads((lab.statedir / "ns" / f"{name}.json").read_text())  # type: ignore[no-any-return]


class Tunnel:
    def __init__(self, lab: Any, provider: Any, tmp: Path, v6: bool = False, dns: str | None = None,
                 mtu: int | None = None) -> None:
        self.lab, self.provider = lab, provider
        self.name = f"wg-{lab.lab.id}"
        self.ifname = names.wg_ifname(self.name)
        self.private, self.public = provider.add_client(CLIENT_ADDR, CLIENT_ADDR6 if v6 else None)
        self.conf = provider.client_config(tmp, self.private, CLIENT_ADDR,
                                           address6=CLIENT_ADDR6 if v6 else None, dns=dns, mtu=mtu)
        self.profile = wg_profile(tmp, self.conf)

    def up(self, **env: str) -> subprocess.CompletedProcess[str]:
        return self.lab.nsrun("up", self.name, "-p", str(self.profile), env=env)  # type: ignore[no-any-return]

    def down(self) -> None:
        r = self.lab.nsrun("down", self.name)
        assert r.returncode == 0, r.stderr
        self.provider.drop_client(self.public)


@pytest.fixture
def tunnel(lab: Any, provider: Any, tmp_path: Path) -> Iterator[Tunnel]:
    t = Tunnel(lab, provider, tmp_path)
    try:
        yield t
    finally:
        t.down()


def assert_no_key_in(paths: list[Path], *keys: str) -> None:
    import base64

    for root in paths:
        if not root.exists():
            continue
        for p in [root] if root.is_file() else [q for q in root.rglob("*") if q.is_file()]:
            data = p.read_bytes()
            for key in keys:
                raw = base64.b64decode(key)
                assert key.encode() not in data and raw.hex().encode() not in data and raw not in data, \
                    f"key material in {p}"


def _capture(lab: Any) -> subprocess.Popen[str]:
    # Frames the lab host sends out of its uplink (-Q out): whatever leaves it, from any source.
    # --immediate-mode: each frame is handed over as it comes; without it libpcap's TPACKET_V3
    # ring holds frames up to a second, and those still held when the capture stops are lost.
    proc = subprocess.Popen(lab.host_argv(["tcpdump", "-n", "-l", "--immediate-mode", "-i", "eth0", "-e",
                                           "-Q", "out"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    while not seen or "listening on" not in seen[-1]:  # printed once the capture runs
        seen.append(proc.stderr.readline())
        assert seen[-1], "".join(seen)
    return proc


def _stop_capture(cap: subprocess.Popen[str]) -> list[str]:
    """Every frame captured: a moment for the last ones to be printed, then the capture
    stops; one the kernel dropped fails the test (a leak could hide among them)."""
    time.sleep(0.2)
    cap.terminate()
    out, err = cap.communicate(timeout=10)
    dropped = re.search(r"(\d+) packets? dropped by kernel", err)
    assert dropped is not None and dropped.group(1) == "0", err
    return [line for line in out.splitlines() if line.strip()]


def _leaks(frames: list[str]) -> list[str]:
    """Frames leaving by the lab host's uplink other than ARP, the lab host's own IGMP
    membership reports (its bridge's, not a program's), and WireGuard's UDP from the lab host
    to the provider's endpoint."""
    endpoint = re.compile(r"ethertype IPv4 .*: 192\.168\.1\.10\.\d+ > 192\.0\.2\.1\.51820: UDP")
    igmp = re.compile(r"ethertype IPv4 .*: 192\.168\.1\.10 > 224\.0\.0\.22: igmp ")
    return [f for f in frames if f.strip() and "ethertype ARP" not in f and not endpoint.search(f)
            and not igmp.search(f)]


needs_tcpdump = pytest.mark.requires("tcpdump")


# -- acceptance 1 and 4: a run through the tunnel, and nothing left after it ------------------

@needs_tcpdump
def test_a_run_egresses_through_the_provider_only_and_leaves_nothing(lab, provider, tmp_path):
    private, public = provider.add_client(CLIENT_ADDR)
    conf = provider.client_config(tmp_path, private, CLIENT_ADDR, dns="10.77.0.1")
    prof = wg_profile(tmp_path, conf)
    script = ("ip -j link show; echo ---; cat /etc/resolv.conf; echo ---; "
              f"{' '.join(CLIENT)}; echo ---; {sys.executable} {VPNLAB} resolve probe.example")
    log_before = Path(provider.dns_log).read_text().splitlines() if os.path.exists(provider.dns_log) else []
    cap = _capture(lab)
    try:
        r = lab.nsrun("-p", str(prof), "--", "sh", "-c", script)
    finally:
        frames = _stop_capture(cap)
        provider.drop_client(public)
    assert r.returncode == 0, r.stderr
    links, resolv, seen, lookup = r.stdout.split("---\n")
    # Inside: lo and the WireGuard interface, nothing else.
    ifnames = sorted(link["ifname"] for link in json.loads(links))
    assert len(ifnames) == 2 and ifnames[0] == "lo" and names.is_wg_ifname(ifnames[1]), ifnames
    # resolv.conf is the config's; the lookup reached the provider's server through the tunnel
    # (it saw the tunnel address), and nothing but WireGuard's UDP left the lab host.
    assert [x for x in resolv.splitlines() if x.startswith("nameserver")] == ["nameserver 10.77.0.1"]
    assert "no address" in lookup
    new = Path(provider.dns_log).read_text().splitlines()[len(log_before):]
    assert new and all(line == f"{CLIENT_ADDR} probe.example" for line in new), new
    # The server upstream sees the provider's address: the traffic went through the tunnel.
    assert seen.strip() == "192.0.2.1"
    assert [f for f in frames if "51820: UDP" in f], "no WireGuard traffic seen"
    leaks = _leaks(frames)
    assert not leaks, "\n".join(leaks[:10])
    # After the run: no daemon, no socket, no record, no key anywhere nsrun writes.
    assert wg_processes(lab) == []
    assert not [f for f in os.listdir("/run/wireguard") if f.startswith(names.WG_PREFIX)]
    assert not list((lab.statedir / "ns").glob("*.json"))
    assert_no_key_in([lab.statedir, Path("/etc/netns")], private)
    # The lab fixture checks the lab host is exactly as before (links, routes, rules...).


def test_up_ls_down_through_the_cli(lab, provider, tmp_path):
    t = Tunnel(lab, provider, tmp_path, dns="10.77.0.1", mtu=1380)
    try:
        r = t.up()
        assert r.returncode == 0 and "through WireGuard (userspace)" in r.stdout, r.stdout + r.stderr
        rec = record_of(lab, t.name)
        assert rec["wireguard"] == "userspace" and rec["wg_pid"] in wg_processes(lab)
        assert wg_processes(lab) == [rec["wg_pid"]]
        r = lab.nsrun("exec", t.name, "--", *CLIENT)
        assert (r.returncode, r.stdout.strip()) == (0, "192.0.2.1"), r.stderr
        # Inside: lo and the tunnel; the default route is the tunnel; no v6 at all.
        links = json.loads(inside(t.name, "ip", "-j", "link", "show").stdout)
        assert sorted(link["ifname"] for link in links) == sorted(["lo", t.ifname])
        assert [x["mtu"] for x in links if x["ifname"] == t.ifname] == [1380]
        routes = json.loads(inside(t.name, "ip", "-j", "-4", "route", "show").stdout)
        assert [(x["dst"], x["dev"]) for x in routes if x["dst"] == "default"] == [("default", t.ifname)]
        assert json.loads(inside(t.name, "ip", "-j", "-6", "route", "show").stdout or "[]") == []
        assert inside(t.name, "cat", f"/proc/sys/net/ipv6/conf/{t.ifname}/disable_ipv6").stdout.strip() == "1"
        # The lab host holds no trace of the interface: it was moved, and its UDP stays here.
        assert t.ifname not in [link["ifname"] for link in lab.host_json("ip", "-j", "link", "show")]
        # ls: the endpoint, a recent handshake, counters, the implementation; never a key.
        r = lab.nsrun("ls", "--json")
        assert r.returncode == 0, r.stderr
        [row] = [x for x in json.loads(r.stdout) if x["name"] == t.name]
        wg = row["wireguard"]
        assert (wg["impl"], wg["ifname"], wg["state"]) == ("userspace", t.ifname, "up")
        [peer] = wg["peers"]
        assert peer["endpoint"] == "192.0.2.1:51820"
        assert peer["latest_handshake"] and abs(peer["latest_handshake"] - time.time()) < 120
        assert peer["rx_bytes"] > 0 and peer["tx_bytes"] > 0
        assert (row["rx_bytes"], row["tx_bytes"]) == (peer["rx_bytes"], peer["tx_bytes"])
        assert row["addresses"] == [f"{CLIENT_ADDR}/32"] and row["profile"] == "wg"
        r2 = lab.nsrun("ls", "--wide")
        [line] = [x for x in r2.stdout.splitlines() if x.startswith(t.name)]
        assert "wg 192.0.2.1:51820 (userspace, handshake " in line, line
        for out in (r.stdout, r2.stdout):
            assert t.private not in out and provider.public not in out
        assert_no_key_in([lab.statedir, Path("/etc/netns") / t.name], t.private)
        assert lab.nsrun("up", t.name, "-p", str(t.profile)).stdout.startswith(f"{t.name} is already up")
    finally:
        t.down()
    assert wg_processes(lab) == []
    assert not os.path.exists(f"/run/wireguard/{t.ifname}.sock")
    assert not Path(f"/etc/netns/{t.name}").exists()
    r = lab.nsrun("down", t.name)  # idempotent
    assert (r.returncode, r.stdout) == (0, ""), r.stderr


# -- acceptance 2: the kill switch --------------------------------------------------------------

@needs_tcpdump
@pytest.mark.parametrize("how", ["peer-removed", "provider-stopped"])
def test_kill_switch_nothing_leaves_in_the_clear(lab, tunnel, how):
    assert tunnel.up().returncode == 0
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
        # Also a UDP datagram upstream (v4 and v6) and a connection to the LAN's gateway.
        r = lab.nsrun("exec", tunnel.name, "--", sys.executable, VPNLAB, "leak")
        assert r.returncode == 0, r.stderr
        time.sleep(1.0)
    finally:
        frames = _stop_capture(cap)
        if how == "provider-stopped":
            tunnel.provider.start_peer()
    assert [f for f in frames if "ethertype ARP" not in f], "the capture saw nothing: the client never tried"
    leaks = _leaks(frames)
    assert not leaks, "\n".join(leaks[:10])
    # The control: the same capture and filter do see traffic in the clear when there is some.
    cap = _capture(lab)
    try:
        lab.host(sys.executable, VPNLAB, "leak")
        time.sleep(0.5)
    finally:
        frames = _stop_capture(cap)
    assert len(_leaks(frames)) >= 2, frames


# -- acceptance 3: IPv6 -------------------------------------------------------------------------

def test_ipv6_through_the_tunnel_when_configured(lab, provider, tmp_path):
    from support.vpnlab import PROVIDER6, PROVIDER6_UP, V6_PORT

    t = Tunnel(lab, provider, tmp_path, v6=True)
    try:
        assert t.up().returncode == 0
        r = lab.nsrun("exec", t.name, "--", sys.executable, VPNLAB, "client6", PROVIDER6_UP, str(V6_PORT))
        assert (r.returncode, r.stdout.strip()) == (0, PROVIDER6), r.stderr
        routes = json.loads(inside(t.name, "ip", "-j", "-6", "route", "show").stdout)
        assert ("default", t.ifname) in [(x["dst"], x["dev"]) for x in routes]
        r = lab.nsrun("exec", t.name, "--", *CLIENT)  # and v4 still
        assert (r.returncode, r.stdout.strip()) == (0, "192.0.2.1"), r.stderr
    finally:
        t.down()


# -- acceptance 4: crashes, then gc -------------------------------------------------------------

@pytest.mark.parametrize("step", steps("wireguard"))
def test_up_killed_at_each_setup_step_then_gc_restores_the_host(lab, provider, tmp_path, step):
    t = Tunnel(lab, provider, tmp_path, dns="10.77.0.1")
    try:
        r = t.up(NSRUN_FAULT=step)
        assert r.returncode == -9, r.stderr
        if step == "ready":  # the setup had finished: up, and it stays until `down`
            gc = lab.nsrun("gc")
            assert "nothing to reclaim" in gc.stdout, gc.stdout
            r = lab.nsrun("exec", t.name, "--", *CLIENT)
            assert (r.returncode, r.stdout.strip()) == (0, "192.0.2.1"), r.stderr
            return
        if step in ("wg-started", "wg-configured"):
            assert len(wg_processes(lab)) == 1  # the daemon outlived nsrun, its tun still here
        gc = lab.nsrun("gc")
        assert gc.returncode == 0 and f"removing namespace {t.name}" in gc.stdout, gc.stdout + gc.stderr
        assert wg_processes(lab) == []
        assert not os.path.exists(f"/run/wireguard/{t.ifname}.sock")
        assert not Path(f"/etc/netns/{t.name}").exists() and not Path(f"/run/netns/{t.name}").exists()
        assert t.ifname not in [link["ifname"] for link in lab.host_json("ip", "-j", "link", "show")]
        again = lab.nsrun("gc")
        assert "nothing to reclaim" in again.stdout, again.stdout
        assert_no_key_in([lab.statedir], t.private)
    finally:
        t.down()


@pytest.mark.parametrize("step", ["wg-started", "wg-moved", "wireguard"])
def test_a_run_whose_setup_is_killed_is_cleaned_up_by_its_supervisor(lab, provider, tmp_path, step):
    t = Tunnel(lab, provider, tmp_path)
    try:
        r = lab.nsrun("-p", str(t.profile), "--", "true", env={"NSRUN_FAULT": step})
        assert r.returncode == 128 + 9, r.stderr
        assert wg_processes(lab) == []
        gc = lab.nsrun("gc")
        assert "nothing to reclaim" in gc.stdout, gc.stdout
    finally:
        t.provider.drop_client(t.public)


def test_down_after_the_daemon_was_killed_removes_its_socket(lab, tunnel):
    assert tunnel.up().returncode == 0
    pid = record_of(lab, tunnel.name)["wg_pid"]
    os.kill(pid, 9)  # a crash of wireguard-go: its socket stays, its tun goes with it
    deadline = time.monotonic() + 5
    while wg_processes(lab) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.exists(f"/run/wireguard/{tunnel.ifname}.sock")
    [row] = [x for x in json.loads(lab.nsrun("ls", "--json").stdout) if x["name"] == tunnel.name]
    assert row["wireguard"]["state"] == "down"
    assert "wg (userspace, down)" in lab.nsrun("ls", "--wide").stdout
    r = lab.nsrun("exec", tunnel.name, "--", *CLIENT)
    assert r.returncode != 0  # no way out at all
    assert lab.nsrun("down", tunnel.name).returncode == 0
    assert not os.path.exists(f"/run/wireguard/{tunnel.ifname}.sock")


def test_gc_reclaims_a_wireguard_go_no_record_accounts_for(lab, provider, tmp_path):
    """A daemon serving an nsrun-named tun still in the lab host, with no record (what a
    setup of another state directory in progress looks like, or a crash before the record
    of a lost state directory): left alone while young, reclaimed once older than a setup
    could be (the grace is shortened here); its socket too."""
    ifname = names.wg_ifname(f"lost-{lab.lab.id}")
    r = subprocess.run(lab.host_argv(["wireguard-go", ifname]), env={"PATH": os.environ["PATH"]},
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    [pid] = wg_processes(lab)
    try:
        gc = lab.nsrun("gc")
        assert "nothing to reclaim" in gc.stdout, gc.stdout  # young: perhaps a setup in progress
        r = subprocess.run(lab.host_argv([sys.executable, VPNLAB, "gc", "0"]), env=lab.env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.splitlines() == [f"wireguard-go {pid} ({ifname})"], r.stdout + r.stderr
        assert wg_processes(lab) == []
        assert not os.path.exists(f"/run/wireguard/{ifname}.sock")
        assert ifname not in [link["ifname"] for link in lab.host_json("ip", "-j", "link", "show")]
    finally:
        if wg_processes(lab):
            os.kill(pid, 9)


# -- acceptance 6: refused configurations change nothing ----------------------------------------

def test_refused_configs_exit_2_naming_file_and_key_before_any_change(lab, provider, tmp_path):
    t = Tunnel(lab, provider, tmp_path)
    try:
        text = t.conf.read_text()
        bad = tmp_path / "bad.conf"
        prof = wg_profile(tmp_path, bad, "bad")
        cases = {
            "world": (text, 0o644, "group or others may read"),
            "key": (text.replace(t.private, t.private[:-2] + "!="), 0o600, "PrivateKey: is not a WireGuard key"),
            "peer": (text.split("[Peer]")[0], 0o600, "[Peer]: is missing"),
            "endpoint": (text.replace("192.0.2.1:51820", "no-such-host.invalid:51820"), 0o600,
                         "Endpoint: no-such-host.invalid does not resolve"),
        }
        # The lab host has no resolver; one on its refused port 53 answers at once.
        resolv = tmp_path / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.1\n")
        for case, (body, mode, want) in cases.items():
            bad.write_text(body)
            os.chmod(bad, mode)
            for args in (["up", t.name, "-p", str(prof)], ["-p", str(prof), "--", "true"]):
                nsrun = " ".join(lab.nsrun_argv(*args)[2:])  # inside the lab host already
                r = subprocess.run(lab.host_argv(["unshare", "-m", "--propagation", "slave", "sh", "-c",
                                                  f"mount --bind {resolv} /etc/resolv.conf && exec {nsrun}"]),
                                   env=lab.env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
                assert r.returncode == 2, (case, args, r.stderr)
                lines = r.stderr.strip().splitlines()
                assert len(lines) == 1 and str(bad) in lines[0] and want in lines[0], (case, r.stderr)
                assert t.private not in r.stderr
                assert wg_processes(lab) == []
                assert not Path(f"/run/netns/{t.name}").exists()
                assert not list((lab.statedir / "ns").glob("*.json")) if (lab.statedir / "ns").exists() else True
    finally:
        provider.drop_client(t.public)
