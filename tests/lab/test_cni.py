"""Issue 22: nsrun profiles as CNI networks (type "nsrun"), judged by an outside client in the
lab: libcni itself (tests/support/cniclient.go, what podman, containerd and CRI-O call), with
Debian's reference plugins chained after nsrun's, and direct calls for what libcni 1.1.2 does
not send (spec 1.1's GC and STATUS, bad input). Everything runs inside the lab host; the lab
fixture checks after each test that the lab host is exactly as before. podman: test_cni_podman.py.
"""

from __future__ import annotations

import ipaddress
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

from conftest import CLIENT, REPO, SUPPORT, write_profile
from nsrun import lab as labmod
from nsrun import names
from nsrun.engine.resources import steps, undo_steps
from support import cnilab
from support.requirements import requires

requires(*cnilab.CLIENT_NEEDS, module=True)

GW1_RANGE = (ipaddress.IPv4Address("192.168.1.100"), ipaddress.IPv4Address("192.168.1.149"))
NAT_NET = ipaddress.IPv4Network("10.251.0.0/24")
CID = "4f3e2d1c0b0a99887766554433221100ffeeddccbbaa00112233445566778899"  # as runtimes make them


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cnilab.build_client(tmp_path_factory.mktemp("cniclient"))


@pytest.fixture
def cni(lab: Any, client: Path, tmp_path: Path) -> Iterator[cnilab.Cni]:
    world = cnilab.Cni(lab, client, tmp_path)
    try:
        yield world
    finally:
        world.close()


def cid(n: int) -> str:
    return f"{n:04d}" + CID[4:]


def nsrun_links(lab: Any) -> list[str]:
    """The lab host's links nsrun names (host veths, WireGuard interfaces, its nat bridge)."""
    return [link["ifname"] for link in lab.host_json("ip", "-j", "link", "show")
            if names.is_host_veth(link["ifname"]) or names.is_wg_ifname(link["ifname"])
            or link["ifname"] == "nsrun0"]


def records(lab: Any) -> list[str]:
    d = lab.statedir / "ns"
    return sorted(p.name for p in d.iterdir() if p.suffix == ".json") if d.exists() else []


def ifnames(cni: cnilab.Cni, nspath: str) -> list[str]:
    return sorted(link["ifname"] for link in cni.links(nspath))


def seen_from(cni: cnilab.Cni, nspath: str) -> str:
    """The address the lab's upstream server saw a connection from the container come from."""
    r = cni.inside(nspath, *CLIENT, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


# -- acceptance 1: libcni, a gw1 network chained with tuning ----------------------------------

def test_gw1_network_chained_with_tuning_through_libcni(lab, cni):
    mac = "02:42:00:22:00:01"
    cni.network("gw1net", {"type": "nsrun", "profile": "gw1"},
                cni.tuning(mac=mac, sysctl={"net.ipv4.conf.eth0.arp_notify": "1"}))
    ns = cni.container("c1")
    r = cni.client_run("add", "gw1net", CID, ns)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    # The Result, as the reference plugins shape it: the host end, then eth0 in the sandbox;
    # the address points at eth0 (index 1) with gw1 as its gateway; tuning's MAC is in it.
    assert result["cniVersion"] == "1.0.0"
    host, inner = result["interfaces"]
    assert names.is_host_veth(host["name"]) and "sandbox" not in host
    assert (inner["name"], inner["sandbox"], inner["mac"]) == ("eth0", ns, mac)
    [ip] = result["ips"]
    assert (ip["interface"], ip["gateway"]) == (1, labmod.GW1_LAN)
    addr = ipaddress.IPv4Interface(ip["address"])
    assert GW1_RANGE[0] <= addr.ip <= GW1_RANGE[1] and addr.network == ipaddress.IPv4Network(labmod.LAN)
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": labmod.GW1_LAN}]
    assert result["dns"] == {"nameservers": [labmod.GW1_LAN]}
    # The container: lo and eth0, and its traffic leaves through gw1 (the host's goes via gw2).
    assert ifnames(cni, ns) == ["eth0", "lo"]
    assert seen_from(cni, ns) == labmod.GW1_UP
    assert lab.host(*CLIENT).stdout.strip() == labmod.GW2_UP
    # ls shows the attachment: the container, the profile, the address.
    rows = json.loads(lab.nsrun("ls", "--json").stdout)
    [row] = [x for x in rows if x["kind"] == "cni"]
    assert row["cni"] == {"container": CID, "ifname": "eth0", "network": "gw1net", "netns": ns}
    assert (row["profile"], row["addresses"], row["state"]) == ("gw1", [str(addr)], "up")
    table = lab.nsrun("ls", "--wide").stdout
    assert [line.split()[:5] for line in table.splitlines() if " cni " in line] == \
        [[f"{CID[:12]}/eth0", "root", "gw1", "cni", str(addr)]], table
    # CHECK passes; after the default route is changed, it fails and says why.
    r = cni.client_run("check", "gw1net", CID, ns)
    assert r.returncode == 0, r.stderr
    cni.inside(ns, "ip", "route", "replace", "default", "via", labmod.GW2_LAN, "dev", "eth0")
    r = cni.client_run("check", "gw1net", CID, ns)
    assert r.returncode != 0 and f"not {labmod.GW1_LAN}" in r.stderr, r.stderr
    # DEL, twice: 0 both times, and nothing of it is left (the lab fixture checks the host).
    for _ in range(2):
        r = cni.client_run("del", "gw1net", CID, ns)
        assert r.returncode == 0, r.stderr
    assert ifnames(cni, ns) == ["lo"]
    assert records(lab) == [] and nsrun_links(lab) == []
    assert not list(cni.data.rglob("*")) or not [p for p in cni.data.rglob("*") if p.is_file()]


def test_two_containers_on_a_nat_network_and_a_del_after_the_namespace_went(lab, cni):
    cni.network("natnet", {"type": "nsrun", "profile": "nat"})
    ns1, ns2 = cni.container("c1"), cni.container("c2")
    results = []
    for n, ns in ((1, ns1), (2, ns2)):
        r = cni.client_run("add", "natnet", cid(n), ns)
        assert r.returncode == 0, r.stderr
        results.append(json.loads(r.stdout))
    addrs = [ipaddress.IPv4Interface(res["ips"][0]["address"]) for res in results]
    assert addrs[0] != addrs[1] and all(a.ip in NAT_NET for a in addrs)
    assert [res["ips"][0]["gateway"] for res in results] == ["10.251.0.1"] * 2
    for ns in (ns1, ns2):  # both leave through the host (NAT), whose default route is via gw2
        assert seen_from(cni, ns) == labmod.GW2_UP
    # The runtime deletes the second container's namespace, then calls DEL: 0, all cleaned.
    veth2 = results[1]["interfaces"][0]["name"]
    cni.remove_container(ns2)
    r = cni.client_run("del", "natnet", cid(2), ns2)
    assert r.returncode == 0, r.stderr
    assert veth2 not in nsrun_links(lab)
    assert records(lab) == [f"{names.cni_name(cid(1), 'eth0')}.json"]
    assert seen_from(cni, ns1) == labmod.GW2_UP  # the first is untouched
    r = cni.client_run("del", "natnet", cid(1), ns1)
    assert r.returncode == 0, r.stderr
    assert records(lab) == [] and nsrun_links(lab) == []  # the nat bridge went with the last


def test_a_container_has_one_way_out_and_more_attachments_of_its_own(lab, cni):
    """Attachments are per (container, interface): a second network with a way out (gw1 on
    net1, as Multus would add it) is refused, changing nothing, since the first one holds the
    default route; an isolated network (no interface at all) is an attachment of its own."""
    cni.network("natnet", {"type": "nsrun", "profile": "nat"})
    cni.network("gw1net", {"type": "nsrun", "profile": "gw1"})
    cni.network("nonet", {"type": "nsrun", "profile": "isolated"})
    ns = cni.container("c1")
    for net, ifname in (("natnet", "eth0"), ("nonet", "net2")):
        r = cni.client_run("add", net, CID, ns, ifname)
        assert r.returncode == 0, r.stderr
    before = (records(lab), nsrun_links(lab), ifnames(cni, ns))
    r = cni.client_run("add", "gw1net", CID, ns, "net1")
    assert r.returncode != 0 and "has a default route already (via 10.251.0.1 dev eth0)" in r.stderr, r.stderr
    cni.client_run("del", "gw1net", CID, ns, "net1")  # what a runtime does after a failed ADD
    assert (records(lab), nsrun_links(lab), ifnames(cni, ns)) == before == \
        (sorted([f"{names.cni_name(CID, 'eth0')}.json", f"{names.cni_name(CID, 'net2')}.json"]),
         before[1], ["eth0", "lo"])
    for net, ifname in (("nonet", "net2"), ("natnet", "eth0")):
        r = cni.client_run("check", net, CID, ns, ifname)
        assert r.returncode == 0, r.stderr
        r = cni.client_run("del", net, CID, ns, ifname)
        assert r.returncode == 0, r.stderr
    assert ifnames(cni, ns) == ["lo"] and records(lab) == []


def test_version_speaks_0_4_0_and_1_0_0_and_a_0_4_0_network_works(lab, cni):
    code, out, _ = cni.plugin("VERSION", {"cniVersion": "1.0.0"})
    assert (code, out) == (0, {"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
    cni.network("old", {"type": "nsrun", "profile": "nat"}, cni.tuning(), version="0.4.0")
    ns = cni.container("c1")
    r = cni.client_run("add", "old", CID, ns)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["cniVersion"] == "0.4.0" and result["ips"][0]["version"] == "4"
    assert cni.client_run("check", "old", CID, ns).returncode == 0
    assert cni.client_run("del", "old", CID, ns).returncode == 0
    assert records(lab) == []


# -- acceptance 4: a namespace gone without DEL: nsrun gc, and the GC verb -------------------------

def test_nsrun_gc_reclaims_an_attachment_whose_namespace_vanished(lab, cni):
    cni.network("gw1net", {"type": "nsrun", "profile": "gw1"})
    ns = cni.container("c1")
    r = cni.client_run("add", "gw1net", CID, ns)
    assert r.returncode == 0, r.stderr
    assert "nothing to reclaim" in lab.nsrun("gc").stdout  # a live attachment is never gc's
    cni.remove_container(ns)  # the runtime deleted it, and never called DEL
    name = names.cni_name(CID, "eth0")
    rows = json.loads(lab.nsrun("ls", "--json").stdout)
    assert [x["state"] for x in rows if x["name"] == name] == ["missing"]
    r = lab.nsrun("gc")
    assert r.returncode == 0 and f"removing namespace {name} and its pieces (its namespace is gone)" in r.stdout, \
        r.stdout + r.stderr
    assert records(lab) == [] and nsrun_links(lab) == []
    assert "nothing to reclaim" in lab.nsrun("gc").stdout


def test_the_gc_verb_collects_what_the_runtime_no_longer_lists(lab, cni):
    conf = {"cniVersion": "1.1.0", "name": "natnet", "type": "nsrun", "profile": "nat"}
    spaces = [cni.container(f"c{n}") for n in range(3)]
    for n, ns in enumerate(spaces):
        code, out, err = cni.plugin("ADD", conf, {"CNI_CONTAINERID": cid(n), "CNI_NETNS": ns, "CNI_IFNAME": "eth0"})
        assert code == 0, (out, err)
    # Container 1's namespace vanished; container 2 is no longer listed by the runtime: both
    # go. Container 0 is listed and stays, and still works.
    cni.remove_container(spaces[1])
    valid = [{"containerID": cid(0), "ifname": "eth0"}, {"containerID": cid(1), "ifname": "eth0"}]
    code, out, err = cni.plugin("GC", {**conf, "cni.dev/valid-attachments": valid})
    assert (code, out) == (0, None), (out, err)
    assert records(lab) == [f"{names.cni_name(cid(0), 'eth0')}.json"]
    assert ifnames(cni, spaces[2]) == ["lo"]
    assert seen_from(cni, spaces[0]) == labmod.GW2_UP
    # Another network's GC never touches this network's attachments.
    code, out, err = cni.plugin("GC", {**conf, "name": "other", "cni.dev/valid-attachments": []})
    assert code == 0, (out, err)
    assert records(lab) == [f"{names.cni_name(cid(0), 'eth0')}.json"]
    code, out, err = cni.plugin("DEL", conf, {"CNI_CONTAINERID": cid(0), "CNI_NETNS": spaces[0], "CNI_IFNAME": "eth0"})
    assert (code, out) == (0, None), err
    assert records(lab) == [] and nsrun_links(lab) == []


def test_status_says_whether_an_add_would_work(lab, cni, tmp_path):
    conf = {"cniVersion": "1.1.0", "name": "gw1net", "type": "nsrun", "profile": "gw1"}
    code, out, err = cni.plugin("STATUS", conf)
    assert (code, out) == (0, None), (out, err)
    nobridge = write_profile(tmp_path, "nobr", '''mode = "bridge"\nbridge = "br9"\nsubnet = "192.168.1.0/24"
gateway = "192.168.1.1"\ndns = ["192.168.1.1"]\n''')
    code, out, _ = cni.plugin("STATUS", {**conf, "profile": str(nobridge)})
    assert code == 1 and out["code"] == 50 and "bridge br9 does not exist" in out["details"], out


# -- acceptance 5: refusals change nothing; 20 at once -------------------------------------------

def _attach_env(ns: str, ifname: str = "eth0") -> dict[str, str]:
    return {"CNI_CONTAINERID": CID, "CNI_NETNS": ns, "CNI_IFNAME": ifname}


def test_refusals_are_cni_error_objects_and_change_nothing(lab, cni, tmp_path):
    ns = cni.container("c1")
    good = {"cniVersion": "1.0.0", "name": "natnet", "type": "nsrun", "profile": "nat"}
    regular = tmp_path / "not-a-namespace"
    regular.write_text("")
    cni.inside(ns, "ip", "link", "add", "taken0", "type", "bridge")
    cases: list[tuple[str, Any, dict[str, str], int, str]] = [
        ("ADD", {**good, "profile": "nosuch"}, _attach_env(ns), 7, "unknown profile 'nosuch'"),
        ("ADD", b'{"cniVersion": "1.0.0", "name": ', _attach_env(ns), 6, ""),
        ("ADD", b"\xff\xfe", _attach_env(ns), 6, ""),
        ("ADD", good, {"CNI_CONTAINERID": CID, "CNI_IFNAME": "eth0"}, 4, "CNI_NETNS"),
        ("ADD", good, {"CNI_NETNS": ns, "CNI_IFNAME": "eth0"}, 4, "CNI_CONTAINERID"),
        ("ADD", good, _attach_env(ns, "a-name-over-15-bytes"), 4, "CNI_IFNAME"),
        ("ADD", good, _attach_env(ns, "taken0"), 4, "taken0 exists"),
        ("ADD", good, _attach_env(str(regular)), 4, "not a network namespace"),
        ("ADD", good, _attach_env("/proc/self/ns/net"), 4, "the namespace the plugin runs in"),
        ("ADD", {**good, "cniVersion": "9.9.9"}, _attach_env(ns), 1, "incompatible CNI version"),
        ("ADD", {**good, "type": "bridge"}, _attach_env(ns), 7, "type"),
        ("ADD", {**good, "ipam": {"type": "host-local"}}, _attach_env(ns), 2, "ipam"),
        ("ADD", {**good, "stateDir": "relative"}, _attach_env(ns), 7, "stateDir"),
        ("CHECK", good, _attach_env(ns), 7, "prevResult"),
        ("GC", good, {}, 1, "does not allow GC"),
        ("GC", {**good, "cniVersion": "1.1.0"}, {}, 7, "valid-attachments"),
        ("NOPE", good, _attach_env(ns), 4, "CNI_COMMAND"),
    ]
    for command, conf, env, code, said in cases:
        status, out, err = cni.plugin(command, conf, env)
        assert status == 1 and isinstance(out, dict), (command, conf, env, status, out, err)
        assert out["code"] == code and set(out) <= {"cniVersion", "code", "msg", "details"}, (conf, env, out)
        assert said in out["msg"] + out.get("details", ""), (conf, env, out)
        assert "Traceback" not in err, err
    assert not lab.statedir.exists() or not [p for p in lab.statedir.rglob("*") if p.is_file()]
    assert ifnames(cni, ns) == ["lo", "taken0"]
    # DEL of something never added: 0, nothing made (not even the state directory).
    status, out, err = cni.plugin("DEL", good, _attach_env(ns))
    assert (status, out) == (0, None), err
    assert not lab.statedir.exists() or not [p for p in lab.statedir.rglob("*") if p.is_file()]


def test_a_second_add_of_the_same_attachment_is_refused_and_a_crashed_add_is_cleared(lab, cni):
    conf = {"cniVersion": "1.0.0", "name": "natnet", "type": "nsrun", "profile": "nat"}
    ns = cni.container("c1")
    env = _attach_env(ns)
    code, out, err = cni.plugin("ADD", conf, env)
    assert code == 0, err
    code, out, err = cni.plugin("ADD", conf, env)
    assert code == 1 and out["code"] == 100 and "attached already" in out["details"], out
    code, out, err = cni.plugin("DEL", conf, env)
    assert code == 0, err
    # An ADD killed half-way (after the veth): DEL clears it, and so would a new ADD.
    code, out, err = cni.plugin("ADD", conf, {**env, "NSRUN_FAULT": "veth"})
    assert code == -9 and out is None, err
    assert len(records(lab)) == 1 and nsrun_links(lab)
    code, out, err = cni.plugin("ADD", conf, env)
    assert code == 0 and out["interfaces"][1]["sandbox"] == ns, (out, err)
    assert len(records(lab)) == 1 and len(nsrun_links(lab)) == 2  # its veth and the bridge
    for _ in range(2):
        code, out, err = cni.plugin("DEL", conf, env)
        assert (code, out) == (0, None), err
    assert records(lab) == [] and nsrun_links(lab) == []


def test_a_network_whose_profile_publishes_a_port(lab, cni, tmp_path):
    """A profile's `publish` (issue 21) holds for an attachment as for a namespace of nsrun's:
    the container is reached at the host's port from the LAN (its client's own address
    seen), `ls` shows the port, a second container of the network is refused (one
    namespace holds a host port at a time) and DEL releases it."""
    prof = write_profile(tmp_path, "natpub", 'mode = "nat"\nsubnet = "10.251.0.0/24"\npublish = ["8080:9000"]\n')
    conf = {"cniVersion": "1.0.0", "name": "pubnet", "type": "nsrun", "profile": str(prof)}
    ns1, ns2 = cni.container("c1"), cni.container("c2")
    code, out, err = cni.plugin("ADD", conf, _attach_env(ns1))
    assert code == 0, err
    server = subprocess.Popen(["nsenter", f"--net={ns1}", sys.executable, "-m", "nsrun.lab", "serve",
                               "/proc/self/ns/net", "9000"], cwd=REPO, env=lab.env)
    try:
        ask = ["nsenter", f"--net=/run/netns/{lab.lab.other}", sys.executable, "-m", "nsrun.lab", "client",
               labmod.HOST_ADDR, "8080"]
        deadline = time.time() + 30
        while (seen := subprocess.run(ask, capture_output=True, text=True, timeout=30, cwd=REPO,
                                      env=lab.env).stdout.strip()) != labmod.OTHER_ADDR:
            assert time.time() < deadline, seen
            time.sleep(0.1)
        listed = json.loads(lab.nsrun("ls", "--json").stdout)
        assert [r["publish"] for r in listed if r["kind"] == "cni"] == [
            [{"host_address": None, "host_port": 8080, "port": 9000, "proto": "tcp"}]]
        code, out, err = cni.plugin("ADD", {**conf}, {**_attach_env(ns2), "CNI_CONTAINERID": cid(2)})
        assert code == 1 and "host port 8080/tcp is published already" in out["details"], out
    finally:
        server.kill()
        server.wait()
    code, out, err = cni.plugin("DEL", conf, _attach_env(ns1))
    assert (code, out) == (0, None), err
    assert records(lab) == [] and nsrun_links(lab) == []
    assert not os.listdir(lab.statedir / "publish")  # the claim released


@pytest.mark.parametrize("step", steps("nat"))
def test_an_add_killed_at_each_step_is_cleared_by_del_or_by_gc(lab, cni, step):
    conf = {"cniVersion": "1.0.0", "name": "natnet", "type": "nsrun", "profile": "nat"}
    ns = cni.container("c1")
    env = _attach_env(ns)
    code, out, err = cni.plugin("ADD", conf, {**env, "NSRUN_FAULT": step})
    assert code == -9 and out is None, err
    gc = lab.nsrun("gc")
    assert gc.returncode == 0, gc.stderr
    if step == "ready":  # the attachment was complete: never gc's
        assert "nothing to reclaim" in gc.stdout, gc.stdout
        assert len(records(lab)) == 1 and "eth0" in ifnames(cni, ns)
    code, out, err = cni.plugin("DEL", conf, env)  # what the runtime does after a failed ADD
    assert (code, out) == (0, None), err
    assert records(lab) == [] and nsrun_links(lab) == [] and ifnames(cni, ns) == ["lo"]
    assert "nothing to reclaim" in lab.nsrun("gc").stdout


@pytest.mark.parametrize("step", undo_steps("nat"))
def test_a_del_killed_at_each_step_is_finished_by_the_next_del(lab, cni, step):
    conf = {"cniVersion": "1.0.0", "name": "natnet", "type": "nsrun", "profile": "nat"}
    ns = cni.container("c1")
    env = _attach_env(ns)
    code, out, err = cni.plugin("ADD", conf, env)
    assert code == 0, err
    code, out, err = cni.plugin("DEL", conf, {**env, "NSRUN_FAULT": step})
    assert code == -9, (out, err)
    code, out, err = cni.plugin("DEL", conf, env)
    assert (code, out) == (0, None), err
    assert records(lab) == [] and nsrun_links(lab) == [] and ifnames(cni, ns) == ["lo"]


@pytest.mark.parametrize("profile", ["nat", "gw1"])
def test_twenty_parallel_adds_then_dels_share_no_address_and_leave_no_trace(lab, cni, profile):
    cni.network("net", {"type": "nsrun", "profile": profile})
    spaces = [cni.container(f"p{n}") for n in range(20)]
    adds = [subprocess.Popen(cni.lab.host_argv([str(cni.client), "add", str(cni.confdir), "net", cid(n), ns, "eth0"]),
                             env=cni.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for n, ns in enumerate(spaces)]
    outs = [p.communicate(timeout=300) for p in adds]
    assert [p.returncode for p in adds] == [0] * 20, [err for _, err in outs if err]
    addrs = [json.loads(out)["ips"][0]["address"] for out, _ in outs]
    assert len(set(addrs)) == 20, addrs
    live = []
    for ns in spaces:
        found = json.loads(cni.inside(ns, "ip", "-j", "-4", "addr", "show", "dev", "eth0").stdout)
        live += [f"{a['local']}/{a['prefixlen']}" for a in found[0]["addr_info"]]
    assert sorted(live) == sorted(addrs)
    leases = sorted(os.listdir(lab.statedir / "net" / ("nsrun0" if profile == "nat" else "br0") / "leases"))
    assert leases == sorted(a.split("/")[0] for a in addrs)
    assert seen_from(cni, spaces[7]) == (labmod.GW2_UP if profile == "nat" else labmod.GW1_UP)
    dels = [subprocess.Popen(cni.lab.host_argv([str(cni.client), "del", str(cni.confdir), "net", cid(n), ns, "eth0"]),
                             env=cni.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for n, ns in enumerate(spaces)]
    outs = [p.communicate(timeout=300) for p in dels]
    assert [p.returncode for p in dels] == [0] * 20, [err for _, err in outs if err]
    assert records(lab) == [] and nsrun_links(lab) == []
    assert all(ifnames(cni, ns) == ["lo"] for ns in spaces)
    assert not [p for p in lab.statedir.rglob("*") if p.is_file() and not p.name.endswith(".lock")]


# -- acceptance 3: a wireguard profile as a CNI network -----------------------------------------

@pytest.fixture(scope="module")
def provider(lab_session: Any) -> Iterator[Any]:
    from support.mounts import private_dir
    from support.vpnlab import Provider

    requires("wireguard-go", "wg", "tcpdump")
    with private_dir("/run/wireguard", 0o700, "nsrun-tests-wg"):
        prov = Provider(lab_session).build()
        try:
            yield prov
        finally:
            prov.destroy()


def wg_processes(lab: Any) -> list[int]:
    """The wireguard-go processes in the lab host's network namespace."""
    from nsrun.linux import netns

    inside = set(netns.pids_in(lab.lab.host))
    found = subprocess.run(["pgrep", "-x", "wireguard-go"], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found if int(pid) in inside]


def _capture(lab: Any) -> subprocess.Popen[str]:
    """Frames the lab host sends out of its uplink, whatever their source (as test_wireguard)."""
    proc = subprocess.Popen(lab.host_argv(["tcpdump", "-n", "-l", "--immediate-mode", "-i", "eth0", "-e",
                                           "-Q", "out"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen: list[str] = []
    while not seen or "listening on" not in seen[-1]:
        seen.append(proc.stderr.readline())
        assert seen[-1], "".join(seen)
    return proc


def _frames(cap: subprocess.Popen[str]) -> list[str]:
    time.sleep(0.2)
    cap.terminate()
    out, err = cap.communicate(timeout=10)
    assert re.search(r"^0 packets dropped by kernel", err, re.M), err
    return [line for line in out.splitlines() if line.strip()]


def _clear(frames: list[str]) -> list[str]:
    """Frames other than ARP, the lab host's IGMP and WireGuard's UDP to the provider."""
    endpoint = re.compile(r"ethertype IPv4 .*: 192\.168\.1\.10\.\d+ > 192\.0\.2\.1\.51820: UDP")
    igmp = re.compile(r"ethertype IPv4 .*: 192\.168\.1\.10 > 224\.0\.0\.22: igmp ")
    return [f for f in frames if "ethertype ARP" not in f and not endpoint.search(f) and not igmp.search(f)]


def test_a_wireguard_profile_as_a_cni_network_is_a_kill_switch(lab, cni, provider, tmp_path):
    from support.vpnlab import TUN_SERVER

    address = "10.77.0.3"
    private, public = provider.add_client(address)
    conf = provider.client_config(tmp_path, private, address, dns=TUN_SERVER)
    prof = write_profile(tmp_path, "wgnet", f'mode = "wireguard"\nwireguard = "{conf}"\n')
    cni.network("wgnet", {"type": "nsrun", "profile": str(prof)})
    ns = cni.container("c1")
    try:
        r = cni.client_run("add", "wgnet", CID, ns)
        assert r.returncode == 0, r.stderr
        result = json.loads(r.stdout)
        assert result["interfaces"] == [{"name": "eth0", "sandbox": ns}]
        assert result["ips"] == [{"interface": 0, "address": f"{address}/32"}]
        assert result["dns"] == {"nameservers": [TUN_SERVER]}
        # Its only interface besides lo is the tunnel, named as the runtime asked; the traffic
        # leaves through the provider.
        links = cni.links(ns)
        assert sorted(x["ifname"] for x in links) == ["eth0", "lo"]
        assert [x.get("link_type") for x in links if x["ifname"] == "eth0"] == ["none"]
        assert seen_from(cni, ns) == "192.0.2.1"
        assert len(wg_processes(lab)) == 1
        [row] = [x for x in json.loads(lab.nsrun("ls", "--json").stdout) if x["kind"] == "cni"]
        assert row["addresses"] == [f"{address}/32"] and row["wireguard"]["state"] == "up", row
        assert cni.client_run("check", "wgnet", CID, ns).returncode == 0
        # With the provider down, nothing leaves the lab host in the clear.
        provider.stop_peer()
        cap = _capture(lab)
        try:
            r = cni.inside(ns, *CLIENT, check=False)
            assert r.returncode != 0
            cni.inside(ns, sys.executable, str(SUPPORT / "vpnlab.py"), "leak", check=False)
            time.sleep(1.0)
        finally:
            frames = _frames(cap)
            provider.start_peer()
        assert [f for f in frames if "51820: UDP" in f], "no WireGuard traffic: the tunnel never tried"
        leaks = _clear(frames)
        assert not leaks, "\n".join(leaks[:10])
        r = cni.client_run("del", "wgnet", CID, ns)
        assert r.returncode == 0, r.stderr
        assert ifnames(cni, ns) == ["lo"]
        assert records(lab) == [] and nsrun_links(lab) == []
        assert wg_processes(lab) == []
    finally:
        provider.drop_client(public)
