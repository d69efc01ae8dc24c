"""Issue 12, point 1: a profile never takes the host's uplink from its master (the README's
own set-up: eth0 enslaved to br0, which carries the address), and an uplink nsrun did
enslave is put back as found (no master, its state)."""

from __future__ import annotations

import pytest

from conftest import CLIENT, write_profile
from nsrun import lab as labmod


def test_an_uplink_with_a_master_is_refused_naming_it_and_the_host_keeps_its_lan(lab, tmp_path):
    prof = write_profile(tmp_path, "typo", 'mode = "bridge"\nbridge = "br9"\nuplink = "eth0"\n'
                         'subnet = "192.168.1.0/24"\ngateway = "192.168.1.1"\n')
    eth0 = lab.host_json("ip", "-j", "link", "show", "eth0")[0]
    assert eth0.get("master") == "br0"  # the lab host as the README sets a host up
    r = lab.nsrun("up", "ncblue", "-p", str(prof))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "uplink: eth0 is a port of br0 (a bridge)" in r.stderr
    assert lab.host_json("ip", "-j", "link", "show", "eth0")[0].get("master") == "br0"
    assert lab.host("ip", "link", "show", "br9", check=False).returncode != 0
    assert lab.host("ip", "netns", "list").stdout.find("ncblue") < 0
    # The host still reaches the lab server through its own gateway (gw2), over br0/eth0.
    assert lab.host(*CLIENT).stdout.strip() == labmod.GW2_UP
    # The same for a run (and the lab fixture checks links, addresses and routes unchanged).
    r = lab.nsrun("-p", str(prof), "--", "true")
    assert r.returncode == 2 and "is a port of br0" in r.stderr


@pytest.mark.parametrize("kind", ["bond", "vrf"])
def test_a_port_of_another_kind_of_master_is_not_taken_either(lab, tmp_path, kind):
    extra = ["table", "77"] if kind == "vrf" else []
    if lab.host("ip", "link", "add", "nsrmaster0", "type", kind, *extra, check=False).returncode != 0:
        pytest.skip(f"this kernel has no {kind} links")
    try:
        lab.host("ip", "link", "add", "nsrport0", "type", "veth", "peer", "name", "nsrport1")
        lab.host("ip", "link", "set", "nsrport0", "master", "nsrmaster0")
        prof = write_profile(tmp_path, "port", 'mode = "bridge"\nbridge = "nsrtest4"\nuplink = "nsrport0"\n'
                             'subnet = "10.77.0.0/24"\ngateway = "10.77.0.1"\nprobe_ms = 0\n')
        r = lab.nsrun("-p", str(prof), "--", "true")
        assert r.returncode == 2 and f"uplink: nsrport0 is a port of nsrmaster0 (a {kind})" in r.stderr, r.stderr
        assert lab.host_json("ip", "-j", "link", "show", "nsrport0")[0].get("master") == "nsrmaster0"
        assert lab.host("ip", "link", "show", "nsrtest4", check=False).returncode != 0
    finally:
        lab.host("ip", "link", "del", "nsrport0", check=False)
        lab.host("ip", "link", "del", "nsrmaster0", check=False)


def _flags(lab, ifname):
    link = lab.host_json("ip", "-j", "link", "show", ifname)[0]
    return link.get("master"), "UP" in link["flags"]


def test_down_puts_an_uplink_back_as_found_down_or_up(lab, tmp_path):
    lab.host("ip", "link", "add", "nsrdummy0", "type", "veth", "peer", "name", "nsrdummy1")
    try:
        prof = write_profile(tmp_path, "up", 'mode = "bridge"\nbridge = "nsrtest3"\nuplink = "nsrdummy0"\n'
                             'subnet = "10.77.0.0/24"\ngateway = "10.77.0.1"\nprobe_ms = 0\n')
        for admin_up in (False, True):
            lab.host("ip", "link", "set", "nsrdummy0", "up" if admin_up else "down")
            assert _flags(lab, "nsrdummy0") == (None, admin_up)
            r = lab.nsrun("up", "nsrupl", "-p", str(prof))
            assert r.returncode == 0, r.stderr
            assert _flags(lab, "nsrdummy0") == ("nsrtest3", True)
            r = lab.nsrun("down", "nsrupl")
            assert r.returncode == 0, r.stderr
            assert _flags(lab, "nsrdummy0") == (None, admin_up)
            assert lab.host("ip", "link", "show", "nsrtest3", check=False).returncode != 0
    finally:
        lab.host("ip", "link", "del", "nsrdummy0", check=False)


def test_gc_puts_a_crashed_runs_uplink_back_down(lab, tmp_path):
    lab.host("ip", "link", "add", "nsrdummy0", "type", "veth", "peer", "name", "nsrdummy1")
    try:
        prof = write_profile(tmp_path, "up", 'mode = "bridge"\nbridge = "nsrtest3"\nuplink = "nsrdummy0"\n'
                             'subnet = "10.77.0.0/24"\ngateway = "10.77.0.1"\nprobe_ms = 0\n')
        r = lab.nsrun("up", "nsrcrash", "-p", str(prof), env={"NSRUN_FAULT": "address"})
        assert r.returncode == -9
        assert _flags(lab, "nsrdummy0") == ("nsrtest3", True)
        g = lab.nsrun("gc")
        assert g.returncode == 0, g.stderr
        assert _flags(lab, "nsrdummy0") == (None, False)
        assert lab.host("ip", "link", "show", "nsrtest3", check=False).returncode != 0
    finally:
        lab.host("ip", "link", "del", "nsrdummy0", check=False)
