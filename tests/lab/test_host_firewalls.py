"""Issue 11: real host firewalls. nat and bridge mode beside nftables, iptables-nft, Docker,
ufw, firewalld (a real one, driven over D-Bus) and br_netfilter; the backend each host gets; openings made and undone; refusal; doctor.
The lab fixture checks after every test that the lab host's firewall (nft ruleset, both
iptables saves, legacy tables loaded) is exactly as before, and on nf_tables kinds that no
legacy table appeared and iptables-nft prints no legacy warning."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CLIENT, REPO, LabRunner, machine_network
from nsrun import lab as labmod
from support.hostkinds import HostLab

HOST_KINDS = ["legacy", "nftables", "iptables-nft", "brnf", "docker", "ufw", "firewalld", "firewalld-ruleset"]
OPENED = "nsrun: opened forwarding for "


def _wait_for(lab, needle: str, *argv: str, timeout: float = 30) -> str:
    """ARGV's output in the lab host once it holds NEEDLE (setup may be slow on a busy box)."""
    deadline = time.time() + timeout
    while True:
        out = lab.host(*argv, check=False).stdout
        if needle in out or time.time() > deadline:
            return out
        time.sleep(0.1)


def _concurrently(lab, *profiles: str, hold: float = 1.5):
    procs = [lab.popen("-p", p, "--", "sh", "-c", " ".join(CLIENT) + f"; sleep {hold}") for p in profiles]
    return [p.communicate(timeout=90) + (p.returncode,) for p in procs]


def test_nat_gw1_gw2_at_once_each_leaves_its_way(lab):
    (out_nat, err_nat, rc_nat), (out1, err1, rc1), (out2, err2, rc2) = _concurrently(lab, "nat", "gw1", "gw2")
    assert (rc_nat, rc1, rc2) == (0, 0, 0), (err_nat, err1, err2)
    # nat leaves through the host's own default route (gw2), masqueraded by the host.
    assert out_nat.strip() == labmod.GW2_UP
    assert out1.strip() == labmod.GW1_UP
    assert out2.strip() == labmod.GW2_UP


def test_backend_chosen_for_the_kind_and_rules_where_it_writes_them(lab):
    p = lab.popen("-p", "nat", "--", "sleep", "3")
    try:
        _wait_for(lab, "nsrun:nsrun0:nat", *(["iptables-legacy-save"] if lab.kind == "legacy"
                                              else ["nft", "list", "ruleset"]))
        net = json.loads((lab.statedir / "net" / "nsrun0" / "net.json").read_text())
        legacy = lab.host("iptables-legacy-save").stdout
        nft = lab.host("nft", "list", "ruleset").stdout
        names = lab.host("cat", "/proc/net/ip_tables_names").stdout
    finally:
        p.communicate(timeout=30)
    assert p.returncode == 0
    if lab.kind == "legacy":
        assert net["firewall"] == "iptables"
        assert "nsrun:nsrun0:nat" in legacy and "nsrun-nat-" not in nft
    else:
        assert net["firewall"] == "nftables"
        assert "nsrun:nsrun0:nat" not in legacy and names == ""
        assert 'table inet nsrun-nat-nsrun0' in nft and 'comment "nsrun:nsrun0:nat"' in nft


def test_opening_said_once_and_readable_by_iptables_nft(lab):
    hold = "; sleep 2"
    p1 = lab.popen("-p", "nat", "--", "sh", "-c", " ".join(CLIENT) + hold)
    _wait_for(lab, "nsrun:nsrun0:nat", *(["iptables-legacy-save"] if lab.kind == "legacy"
                                          else ["nft", "list", "ruleset"]))
    p2 = lab.popen("-p", "nat", "--", "sh", "-c", " ".join(CLIENT) + hold)
    time.sleep(0.5)
    save = lab.host("iptables-nft-save", check=False)
    out1, err1 = p1.communicate(timeout=60)
    out2, err2 = p2.communicate(timeout=60)
    assert p1.returncode == 0 and p2.returncode == 0, (err1, err2)
    opened = [line for line in (err1 + err2).splitlines() if line.startswith(OPENED)]
    zoned = [line for line in (err1 + err2).splitlines() if "firewalld zone" in line]
    assert zoned == (["nsrun: put nsrun0 in firewalld zone trusted (runtime only, over D-Bus)"]
                     if lab.kind == "firewalld" else [])
    expected = {
        "legacy": [],  # the legacy backend's own FORWARD accepts; the host drops nothing
        "nftables": ["nsrun: opened forwarding for nsrun0 in table inet filter chain forward (policy drop)"],
        "brnf": ["nsrun: opened forwarding for nsrun0 in table inet filter chain forward (policy drop)"],
        "iptables-nft": ["nsrun: opened forwarding for nsrun0 in table ip filter chain FORWARD (policy drop)"],
        "docker": ["nsrun: opened forwarding for nsrun0 in table ip filter chain DOCKER-USER "
                   "(chain FORWARD: policy drop)"],
        "ufw": ["nsrun: opened forwarding for nsrun0 in table ip filter chain ufw-user-forward "
                "(chain FORWARD: policy drop)"],
        "firewalld": [],  # nsrun0 goes into a zone: nothing in firewalld's chains
        "firewalld-ruleset": ["nsrun: opened forwarding for nsrun0 in table inet firewalld chain "
                              "filter_FORWARD (final rule drop)"],
    }[lab.kind]
    assert opened == expected  # once per bridge: only the run that opened it says so
    # Docker's and iptables-nft's tables stay readable by iptables-nft (on the legacy host,
    # iptables-nft rightly warns of the legacy tables the host itself uses).
    if lab.kind != "legacy":
        assert "incompatible" not in save.stderr + save.stdout and "Warning" not in save.stderr, \
            save.stderr
    if lab.kind == "docker":
        assert '-A DOCKER-USER -i nsrun0 -m comment --comment "nsrun:nsrun0:nat" -j ACCEPT' in save.stdout
    if lab.kind == "iptables-nft":
        assert '-A FORWARD -i nsrun0 -m comment --comment "nsrun:nsrun0:nat" -j ACCEPT' in save.stdout


def test_bridge_mode_opening_for_bridged_frames(lab):
    if lab.kind == "legacy":
        pytest.skip("the legacy lab host drops nothing")
    p = lab.popen("-p", "gw1", "--", "sh", "-c", " ".join(CLIENT) + "; sleep 2")
    nft = _wait_for(lab, "nsrun:br0:gw1", "nft", "list", "ruleset")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert out.strip() == labmod.GW1_UP
    assert 'iifname "br0" oifname "br0" accept comment "nsrun:br0:gw1"' in nft
    if lab.kind == "brnf":
        assert 'iifname "nsr*" accept comment "nsrun:br0:gw1"' in nft
        assert 'oifname "nsr*" accept comment "nsrun:br0:gw1"' in nft
        assert "table bridge filter chain forward (policy drop)" in err


def test_docker_keeps_working_and_stays_in_the_lab_host(lab, machine_before):
    if lab.kind != "docker":
        pytest.skip("the docker lab host only")
    docker = ["docker", "-H", f"unix://{lab.lab.docker.socket}"]
    p = lab.popen("-p", "nat", "--", "sleep", "2")
    _wait_for(lab, "nsrun:nsrun0:nat", "nft", "list", "ruleset")
    during = subprocess.run(docker + ["network", "ls"], capture_output=True, text=True, timeout=30)
    p.communicate(timeout=30)
    assert during.returncode == 0 and "bridge" in during.stdout, during.stderr
    after = subprocess.run(docker + ["network", "ls"], capture_output=True, text=True, timeout=30)
    assert after.returncode == 0, after.stderr
    # Nothing of it in the machine's own namespace (this test process is in it).
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout)
    assert not [link["ifname"] for link in links if link["ifname"].startswith(("docker", "veth", "br-"))]
    assert not os.path.exists("/run/docker") and not os.path.exists("/etc/docker/key.json")
    # Its tables and rules neither: as the session found them (a machine may hold an empty
    # legacy filter table already, which only its namespace's end takes away).
    now = machine_network()
    for key in ("ip_tables_names", "ip6_tables_names", "ip legacy rules", "ip6 legacy rules", "nft tables"):
        assert now[key] == machine_before[key], (key, machine_before[key], now[key])


def test_doctor_names_the_chain_changes_nothing_and_is_clear_after(lab):
    snap = lab.snapshot()
    before = lab.nsrun("doctor", "--json")
    assert lab.snapshot() == snap
    assert before.returncode == 0, before.stdout + before.stderr
    findings = json.loads(before.stdout)["findings"]
    nat = " ".join(f["what"] for f in findings if f["profile"] == "nat")
    where = {
        "legacy": None,
        "nftables": "table inet filter chain forward (policy drop)",
        "brnf": "table inet filter chain forward (policy drop)",
        "iptables-nft": "table ip filter chain FORWARD (policy drop)",
        "docker": "table ip filter chain FORWARD (policy drop); nsrun opens it in chain DOCKER-USER",
        "ufw": "table ip filter chain FORWARD (policy drop); nsrun opens it in chain ufw-user-forward",
        "firewalld": "nsrun puts nsrun0 in its zone trusted (runtime only, over D-Bus)",
        "firewalld-ruleset": "table inet firewalld chain filter_FORWARD (final rule drop)",
    }[lab.kind]
    if where:
        assert where in nat, nat
    else:
        assert "dropped" not in nat
    r = lab.nsrun("-p", "nat", "--", *CLIENT)
    assert r.returncode == 0, r.stderr
    after = lab.nsrun("doctor")
    assert after.returncode == 0 and "all clear" in after.stdout, after.stdout
    assert lab.snapshot() == snap


def test_doctor_and_run_refuse_where_the_way_cannot_be_opened(tmp_path):
    """A legacy FORWARD DROP beside nf_tables: nsrun will not write legacy tables there.
    A lab of its own: the legacy table loaded here stays for the lab's lifetime."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with HostLab(kind="nftables") as own:
        r = LabRunner(own, Path(f"/run/nsrun-test-{own.id}-{os.getpid()}"))
        r.host("iptables-legacy", "-P", "FORWARD", "DROP")
        snap = r.snapshot()
        doc = r.nsrun("doctor")
        assert doc.returncode == 1, doc.stdout
        assert "table ip filter chain FORWARD (policy drop)" in doc.stdout
        run = r.nsrun("-p", "nat", "--", "true")
        assert run.returncode == 1, run.stderr
        assert run.stderr.count("\n") == 1
        assert "table ip filter chain FORWARD" in run.stderr and "policy drop" in run.stderr
        up = r.nsrun("up", "refused", "-p", "nat")
        assert up.returncode == 1 and "table ip filter chain FORWARD" in up.stderr
        assert r.snapshot() == snap  # nothing left behind: no bridge, rule, table or record
        import shutil

        shutil.rmtree(r.statedir, ignore_errors=True)


def test_legacy_forward_drop_is_opened_on_a_legacy_host(lab):
    """A legacy host whose FORWARD drops (br_netfilter on): nat passes through the legacy
    backend's own accepts, bridge mode through a tagged `-i br0 -o br0` accept."""
    if lab.kind != "legacy":
        pytest.skip("the legacy lab host only")
    lab.host("iptables-legacy", "-P", "FORWARD", "DROP")
    try:
        (out_nat, err_nat, rc_nat), (out1, err1, rc1) = _concurrently(lab, "nat", "gw1")
        assert (rc_nat, rc1) == (0, 0), (err_nat, err1)
        assert out_nat.strip() == labmod.GW2_UP and out1.strip() == labmod.GW1_UP
        assert ("nsrun: opened forwarding for br0 in table ip filter chain FORWARD "
                "(policy drop, iptables-legacy)") in err1
        assert "nsrun" not in lab.host("iptables-legacy-save").stdout
    finally:
        lab.host("iptables-legacy", "-P", "FORWARD", "ACCEPT")


def test_a_drop_chain_that_appears_while_a_bridge_is_in_use(lab):
    """Issue 21, the late firewall: a forward chain that drops appears after a bridge is in
    use. Its namespaces are cut off (that is the host's firewall); `doctor` names the chain
    (it said all was well); the next setup on the bridge opens it, says so, and its run
    gets out, and so does the namespace that was up before. (Before: every new run on the
    bridge timed out with no message.)"""
    assert lab.nsrun("up", "latefw", "-p", "nat").returncode == 0
    try:
        assert lab.nsrun("exec", "latefw", "--", *CLIENT).stdout.strip() == labmod.GW2_UP
        lab.host("nft", "add table inet late; add chain inet late fw1 { type filter hook forward priority 5; "
                 "policy drop; }; add rule inet late fw1 ct state established,related accept")
        assert lab.nsrun("exec", "latefw", "--", *CLIENT).returncode != 0  # cut off, as the host asked
        doc = lab.nsrun("doctor")
        assert doc.returncode == 1, doc.stdout
        assert ("nat: problem: forwarding for nsrun0 is dropped by table inet late chain fw1 (policy drop), "
                "which nsrun has not opened: nsrun0 is in use") in doc.stdout, doc.stdout
        nxt = lab.nsrun("-p", "nat", "--", *CLIENT)
        assert nxt.returncode == 0, nxt.stderr
        assert nxt.stdout.strip() == labmod.GW2_UP
        assert "nsrun: opened forwarding for nsrun0 in table inet late chain fw1 (policy drop)" in nxt.stderr
        assert lab.nsrun("exec", "latefw", "--", *CLIENT).stdout.strip() == labmod.GW2_UP
        assert "which nsrun has not opened" not in lab.nsrun("doctor").stdout
    finally:
        assert lab.nsrun("down", "latefw").returncode == 0
        late = lab.host("nft", "list", "table", "inet", "late", check=False).stdout
        lab.host("nft", "delete", "table", "inet", "late", check=False)
    assert "nsrun" not in late  # the opening went with the bridge's last namespace


# -- firewalld, a real one (the lab host kind `firewalld`) ----------------------------------

def _zone_of(lab, iface: str) -> str:
    """firewalld's runtime zone of IFACE, asked over D-Bus (firewall-cmd: the independent
    tool); "" when it is in none."""
    r = lab.lab.firewalld.cmd(f"--get-zone-of-interface={iface}")
    return r.stdout.strip() if r.returncode == 0 else ""


def _firewalld_only(lab) -> None:
    if lab.kind != "firewalld":
        pytest.skip("the firewalld lab host only")


def test_firewalld_zone_while_in_use_nothing_in_its_chains_and_back_after(lab):
    _firewalld_only(lab)
    assert _zone_of(lab, "nsrun0") == ""
    p = lab.popen("-p", "nat", "--", "sh", "-c", " ".join(CLIENT) + "; sleep 3")
    deadline = time.time() + 30
    while _zone_of(lab, "nsrun0") != "trusted" and time.time() < deadline:
        time.sleep(0.2)
    zone = _zone_of(lab, "nsrun0")
    fwtable = lab.host("nft", "list", "table", "inet", "firewalld").stdout
    net = json.loads((lab.statedir / "net" / "nsrun0" / "net.json").read_text())
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert out.strip() == labmod.GW2_UP
    assert zone == "trusted"
    assert "nsrun:" not in fwtable and "goto filter_FWD_trusted" in fwtable  # firewalld's chains are firewalld's: nothing inserted there
    assert (net["fw_zone"], net["fw_zone_was"], net["fw_bus"]) == ("trusted", "", lab.lab.firewalld.bus)
    assert net["opened"] == ["firewalld zone trusted"]
    assert _zone_of(lab, "nsrun0") == ""  # back out (the fixture compares the ruleset)


def test_firewalld_not_reachable_falls_back_to_its_chains(lab):
    """The same host, nsrun given a bus where no firewalld answers: firewalld's chain is
    opened directly, as on the firewalld-ruleset kind."""
    _firewalld_only(lab)
    r = lab.nsrun("-p", "nat", "--", *CLIENT, env={"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/bus"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == labmod.GW2_UP
    assert ("nsrun: opened forwarding for nsrun0 in table inet firewalld chain filter_FORWARD "
            "(final rule drop)") in r.stderr
    assert "zone" not in r.stderr
    assert _zone_of(lab, "nsrun0") == ""


def test_firewalld_reload_drops_the_binding_and_the_next_setup_puts_it_back(lab):
    """firewalld's reload (FlushAllOnReload=yes, Debian's default) forgets runtime interface
    bindings: a running namespace loses its way out until the next setup on the bridge,
    which binds it again (and says so)."""
    _firewalld_only(lab)
    assert lab.nsrun("up", "fwreload", "-p", "nat").returncode == 0
    try:
        assert _zone_of(lab, "nsrun0") == "trusted"
        assert lab.nsrun("exec", "fwreload", "--", *CLIENT).stdout.strip() == labmod.GW2_UP
        r = lab.lab.firewalld.cmd("--reload")
        assert r.returncode == 0, r.stderr
        assert _zone_of(lab, "nsrun0") == ""  # what firewalld does: the binding is gone
        lost = lab.nsrun("exec", "fwreload", "--", *CLIENT)
        assert lost.returncode != 0  # and with it the way out (firewalld's reject)
        doc = lab.nsrun("doctor")
        assert "nsrun0 is in use but no longer in firewalld zone trusted (firewalld was reloaded)" in doc.stdout, \
            doc.stdout
        again = lab.nsrun("-p", "nat", "--", *CLIENT)
        assert again.returncode == 0, again.stderr
        assert "nsrun: put nsrun0 back in firewalld zone trusted" in again.stderr
        assert _zone_of(lab, "nsrun0") == "trusted"
        assert lab.nsrun("exec", "fwreload", "--", *CLIENT).stdout.strip() == labmod.GW2_UP
    finally:
        assert lab.nsrun("down", "fwreload").returncode == 0
    assert _zone_of(lab, "nsrun0") == ""
    # The reload took the trusted zone's (empty) chains away; put them back as the lab
    # had them, so that the fixture compares like with like.
    lab.lab.firewalld._apply_trusted()


def test_firewalld_first_use_leaves_only_its_empty_zone_chains(lab):
    """On a firewalld that has not used zone `trusted` since its last reload, the binding
    makes firewalld lay out that zone's chains, and firewalld keeps them (empty, reached by no
    interface) after the interface leaves: the one difference nsrun leaves, and firewalld's."""
    _firewalld_only(lab)
    assert lab.lab.firewalld.cmd("--reload").returncode == 0
    try:
        before = lab.host("nft", "-s", "list", "ruleset").stdout
        assert "filter_FWD_trusted" not in before
        r = lab.nsrun("-p", "nat", "--", *CLIENT)
        assert r.returncode == 0, r.stderr
        after = lab.host("nft", "-s", "list", "ruleset").stdout
        assert _zone_of(lab, "nsrun0") == ""
        added = set(_chains(after)) - set(_chains(before))
        assert added and all("_trusted" in c for c in added), added
        assert {c: b for c, b in _chains(after).items() if c not in added} == _chains(before)
    finally:
        lab.lab.firewalld._apply_trusted()


def _chains(text: str) -> dict[str, str]:
    """The chains of an `nft list ruleset` text, by table and name, with their bodies."""
    out: dict[str, str] = {}
    table, name, body = "", "", []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("table "):
            table = s
        elif s.startswith("chain "):
            name, body = f"{table} {s}", []
        elif s == "}" and name:
            out[name] = "\n".join(body)
            name = ""
        elif name:
            body.append(s)
    return out


def test_firewalld_killed_at_each_setup_step_then_gc_leaves_nothing(lab):
    """SIGKILL after each step of a nat `up`, then gc: firewalld's zones and the whole
    ruleset as before (the fixture), the zone binding undone through the record."""
    _firewalld_only(lab)
    from nsrun.engine import resources

    for step in resources.steps("nat"):
        r = lab.nsrun("up", "fwkill", "-p", "nat", env={"NSRUN_FAULT": step})
        assert r.returncode == -9, (step, r.stderr)
        if step == "ready":  # the setup had finished: up until `down`
            assert _zone_of(lab, "nsrun0") == "trusted"
            assert lab.nsrun("down", "fwkill").returncode == 0
        g = lab.nsrun("gc")
        assert g.returncode == 0, (step, g.stdout, g.stderr)
        assert _zone_of(lab, "nsrun0") == "", step
        assert not (lab.statedir / "net" / "nsrun0").exists() or \
            "fw_zone" not in (lab.statedir / "net" / "nsrun0" / "net.json").read_text(), step


# -- doctor: ip_forward managed by someone else ------------------------------------------

def _doctor_nat(lab, *, script: str = "") -> str:
    """doctor's findings for the nat profile, one per line; SCRIPT (shell, run first) in a
    private mount namespace of the lab host, where it may mount over /etc."""
    if not script:
        r = lab.nsrun("doctor", "--json")
    else:
        argv = lab.host_argv(["unshare", "-m", "--propagation", "slave", "sh", "-c",
                              f'set -e; {script}; exec "$@"', "sh", *lab.nsrun_argv("doctor", "--json")[2:]])
        r = subprocess.run(argv, env=lab.env, capture_output=True, text=True, timeout=60,
                           cwd=REPO)
    assert r.returncode in (0, 1), r.stderr
    return "\n".join(f["what"] + " | " + f["fix"] for f in json.loads(r.stdout)["findings"]
                     if f["profile"] == "nat")


def test_doctor_ip_forward_on_by_someone_else(lab):
    if lab.kind != "legacy":
        pytest.skip("the legacy lab host only: the finding does not depend on the firewall")
    was = lab.host("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip()
    assert was == "0"
    assert "ip_forward is on" not in _doctor_nat(lab)
    lab.host("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
    try:
        snap = lab.snapshot()
        nat = _doctor_nat(lab)
        assert "ip_forward is on and nsrun did not turn it on (something else set it): nsrun leaves it on " \
               "when its last NAT bridge goes" in nat, nat
        assert lab.snapshot() == snap
        # A NAT run on a host whose forwarding was on leaves it on.
        assert lab.nsrun("-p", "nat", "--", "true").returncode == 0
        assert lab.host("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    finally:
        lab.host("sh", "-c", f"echo {was} > /proc/sys/net/ipv4/ip_forward")


def test_doctor_ip_forward_set_by_sysctl_files_and_networkd(lab):
    if lab.kind != "legacy":
        pytest.skip("the legacy lab host only: the finding does not depend on the firewall")
    # systemd-networkd's directory only where it exists (a minimal Debian has none: the test
    # must not make it in the machine's /etc)
    networkd = os.path.isdir("/etc/systemd/network")
    script = ("mount -t tmpfs nsrun-test /etc/sysctl.d; "
              "echo 'net.ipv4.ip_forward = 0' > /etc/sysctl.d/90-noforward.conf; "
              "echo '# net.ipv4.ip_forward = 1' > /etc/sysctl.d/91-comment.conf")
    if networkd:
        script += ("; mount -t tmpfs nsrun-test /etc/systemd/network; "
                   "printf '[Match]\\nName=eth9\\n[Network]\\nIPForward=yes\\n' > /etc/systemd/network/eth9.network")
    snap = lab.snapshot()
    nat = _doctor_nat(lab, script=script)
    assert lab.snapshot() == snap
    assert ("/etc/sysctl.d/90-noforward.conf sets net.ipv4.ip_forward = 0: `sysctl --system` (systemd-sysctl, "
            "procps) turns forwarding off under a running NAT bridge") in nat, nat
    assert "set it to 1 in /etc/sysctl.d/90-noforward.conf" in nat
    assert "91-comment" not in nat
    if networkd:
        assert "systemd-networkd: /etc/systemd/network/eth9.network sets IPForward=yes" in nat, nat


def test_firewalld_bridge_bound_before_goes_back_to_its_zone(lab):
    """A bridge the admin had bound to a zone (public here, at runtime) goes into trusted
    while in use and back into that zone after, not out of every zone."""
    _firewalld_only(lab)
    fw = lab.lab.firewalld
    assert fw.cmd("--zone=public", "--add-interface=nsrun0").returncode == 0
    try:
        p = lab.popen("-p", "nat", "--", "sh", "-c", " ".join(CLIENT) + "; sleep 2")
        deadline = time.time() + 30
        while _zone_of(lab, "nsrun0") != "trusted" and time.time() < deadline:
            time.sleep(0.2)
        during = _zone_of(lab, "nsrun0")
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert out.strip() == labmod.GW2_UP
        assert during == "trusted"
        assert "nsrun: put nsrun0 in firewalld zone trusted (runtime only, over D-Bus, out of zone public)" in err
        assert _zone_of(lab, "nsrun0") == "public"
    finally:
        fw.cmd("--zone=public", "--remove-interface=nsrun0")
