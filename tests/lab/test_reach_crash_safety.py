"""Issue 21, crash safety of its pieces (v6 leases, NAT66, IPv6 forwarding and accept_ra, the
guard): nsrun killed by SIGKILL after each setup step of a profile that uses them all, and
after each teardown step, then gc; the lab host (with IPv6) as before every time."""

from __future__ import annotations

import signal

import pytest

from conftest import write_profile
from nsrun import lab as labmod
from nsrun.engine.resources import steps, undo_steps

# The two backends (legacy x_tables through python-iptables, nf_tables through libnftables):
# what a kill leaves of IPv6, the guard and NAT66 is theirs. A Docker host adds only its
# DOCKER-USER opening, IPv4's (its IPv6 firewall is off by default), which
# test_crash_safety kills at every step on that kind.
HOST_KINDS = ["legacy", "nftables"]

NAT = ('mode = "nat"\nbridge = "nsrtc"\nsubnet = "10.251.5.0/24"\nsubnet6 = "fd00:55::/64"\nisolate = true\n'
       f'allow = ["{labmod.SERVER}:{labmod.PORT}/tcp"]\n')
LAN = ('mode = "bridge"\nbridge = "br0"\nsubnet = "192.168.1.0/24"\nrange = "192.168.1.140-192.168.1.149"\n'
       'gateway = "192.168.1.1"\ndns = ["192.168.1.1"]\nsubnet6 = "2001:db8:1::/64"\n'
       'range6 = "2001:db8:1::200-2001:db8:1::2ff"\ngateway6 = "2001:db8:1::1"\nisolate = true\n'
       f'allow = ["{labmod.SERVER}:{labmod.PORT}/tcp"]\n')


def _gc_until_clean(lab) -> None:
    gc = lab.nsrun("gc")
    assert gc.returncode == 0, gc.stdout + gc.stderr
    again = lab.nsrun("gc")
    assert again.returncode == 0 and "nothing to reclaim" in again.stdout, gc.stdout + again.stdout


@pytest.mark.parametrize("mode,step", [*(("nat", s) for s in steps("nat")), *(("bridge", s) for s in steps("bridge"))])
def test_up_killed_after_each_step_then_gc_restores_the_host(lab6, tmp_path, mode, step):
    prof = write_profile(tmp_path, f"reach{mode}", NAT if mode == "nat" else LAN)
    r = lab6.nsrun("up", "crash6", "-p", str(prof), env={"NSRUN_FAULT": step})
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    if step == "ready":
        assert "nothing to reclaim" in lab6.nsrun("gc").stdout
        assert lab6.nsrun("down", "crash6").returncode == 0
        return
    _gc_until_clean(lab6)
    # The lab fixture checks the lab host: no lease, rule, table, sysctl or file left.


@pytest.mark.parametrize("step", [*undo_steps("nat"), "forwarding-restored", "forwarding6-restored"])
def test_down_killed_after_each_teardown_step_then_gc_leaks_nothing(lab6, tmp_path, step):
    prof = write_profile(tmp_path, "reachnat", NAT)
    assert lab6.nsrun("up", "undo6", "-p", str(prof)).returncode == 0
    saved = {"forwarding-restored": "forwarding.json", "forwarding6-restored": "forwarding6.json"}.get(step)
    if saved and not (lab6.statedir / saved).exists():  # on (Docker's ip_forward): nothing of nsrun's to restore
        assert lab6.nsrun("down", "undo6", env={"NSRUN_FAULT": step}).returncode == 0
        return
    r = lab6.nsrun("down", "undo6", env={"NSRUN_FAULT": step})
    assert r.returncode == -signal.SIGKILL, (step, r.returncode, r.stderr)
    if step == "undo-processes":
        assert lab6.nsrun("down", "undo6").returncode == 0
    _gc_until_clean(lab6)


def test_saved_ipv6_forwarding_left_by_a_crash_is_put_back_by_gc(lab6, tmp_path):
    """What a kill in the restore of IPv6 forwarding leaves once the last bridge is gone:
    forwarding still on, accept_ra 2, forwarding6.json. gc puts them back."""
    prof = write_profile(tmp_path, "reachnat", NAT)
    assert lab6.nsrun("up", "fwd6", "-p", str(prof)).returncode == 0
    saved = (lab6.statedir / "forwarding6.json").read_text()
    assert '"br0": "1"' in saved and '"forwarding": "0"' in saved, saved
    assert lab6.nsrun("down", "fwd6").returncode == 0
    (lab6.statedir / "forwarding6.json").write_text(saved)
    lab6.host("sysctl", "-qw", "net.ipv6.conf.br0.accept_ra=2", "net.ipv6.conf.all.forwarding=1")
    gc = lab6.nsrun("gc")
    assert gc.returncode == 0 and "forwarding6.json" in gc.stdout, gc.stdout + gc.stderr
    assert lab6.host("cat", "/proc/sys/net/ipv6/conf/all/forwarding").stdout.strip() == "0"
    assert lab6.host("cat", "/proc/sys/net/ipv6/conf/br0/accept_ra").stdout.strip() == "1"
