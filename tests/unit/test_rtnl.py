"""nsrun.linux.rtnl, nsrun's own rtnetlink: its encoding and decoding alone, then every request
nsrun makes, asked of the real kernel in a throwaway network namespace and checked with
iproute2's own view (`ip -j`)."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsrun.linux import rtnl

REPO = Path(__file__).resolve().parents[2]

ifnames = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=15)
macs = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))


@settings(max_examples=200, deadline=None)
@given(ifname=ifnames, mtu=st.integers(68, 65535), master=st.integers(1, 2**31 - 1),
       alias=st.text(max_size=60).filter(lambda t: "\0" not in t), address=macs,
       state=st.sampled_from(["up", "down"]))
def test_link_attributes_read_back_as_they_were_written(ifname, mtu, master, alias, address, state):
    attrs, flags, change = rtnl._link_attrs({"ifname": ifname, "mtu": mtu, "master": master,
                                             "ifalias": alias, "address": address, "state": state})
    assert len(attrs) % 4 == 0 and change == rtnl.IFF_UP and flags == (1 if state == "up" else 0)
    body = rtnl._IFINFOMSG.pack(0, 1, 7, flags, change) + attrs
    msg = rtnl._decode(rtnl.RTM_NEWLINK, body)
    assert (msg["index"], msg["flags"]) == (7, flags)
    assert [msg.get_attr(n) for n in ("IFLA_IFNAME", "IFLA_MTU", "IFLA_MASTER", "IFLA_IFALIAS", "IFLA_ADDRESS")] \
        == [ifname, mtu, master, alias, address]


def test_a_link_keyword_nsrun_does_not_know_is_refused_not_dropped():
    with pytest.raises(TypeError, match="txqlen"):
        rtnl._link_attrs({"ifname": "x", "txqlen": 5})
    with pytest.raises(ValueError):
        rtnl._link_attrs({"state": "UP"})


@given(v4=st.ip_addresses(v=4), v6=st.ip_addresses(v=6), dst_len=st.integers(0, 32), table=st.integers(0, 255))
def test_route_and_address_messages_decode_by_their_family(v4, v6, dst_len, table):
    route = rtnl._RTMSG.pack(socket.AF_INET, dst_len, 0, 0, table, 4, 0, 1, 0) \
        + rtnl._attr(1, v4.packed) + rtnl._attr(4, struct.pack("=I", 3)) + rtnl._attr(15, struct.pack("=I", table))
    msg = rtnl._decode(rtnl.RTM_NEWROUTE, route)
    assert (msg.get_attr("RTA_DST"), msg["dst_len"], msg.get_attr("RTA_OIF"), msg.get_attr("RTA_TABLE"),
            msg["proto"], msg.get_attr("RTA_GATEWAY")) == (str(v4), dst_len, 3, table, 4, None)
    addr = rtnl._IFADDRMSG.pack(socket.AF_INET6, 64, 0x80, 0, 9) + rtnl._attr(1, v6.packed) \
        + rtnl._attr(8, struct.pack("=I", 0x82))
    msg = rtnl._decode(rtnl.RTM_NEWADDR, addr)
    # The text is inet_ntop's, as iproute2's (::ffff:0.0.0.0 where Python writes ::ffff:0:0).
    assert (ipaddress.ip_address(msg.get_attr("IFA_ADDRESS")), msg["prefixlen"], msg["index"],
            msg.get_attr("IFA_FLAGS")) == (v6, 64, 9, 0x82)


def test_a_nested_table_is_there_even_without_header_fields():
    # `info = link.get_attr("IFLA_LINKINFO"); if info: ...`: an empty dict would be falsy.
    body = rtnl._IFINFOMSG.pack(0, 1, 2, 0, 0) + rtnl._linkinfo("bridge", None)
    info = rtnl._decode(rtnl.RTM_NEWLINK, body).get_attr("IFLA_LINKINFO")
    assert info and info.get_attr("IFLA_INFO_KIND") == "bridge"


def test_the_kernels_extended_ack_text_is_read():
    text = b"Unknown device type\0"
    tlv = rtnl._attr(rtnl.NLMSGERR_ATTR_MSG, text)
    request = rtnl._NLMSGHDR.pack(16, rtnl.RTM_NEWLINK, 5, 1, 0)
    body = struct.pack("=i", -95) + request + tlv
    buf = rtnl._NLMSGHDR.pack(16 + len(body), rtnl.NLMSG_ERROR, rtnl.NLM_F_ACK_TLVS, 1, 0) + body
    assert rtnl._error_text(buf, 0, len(buf), rtnl.NLM_F_ACK_TLVS) == "Unknown device type"
    assert rtnl._error_text(buf, 0, len(buf), 0) == ""


KERNEL_PROBE = r"""
import errno, json, os, socket, subprocess, sys
from nsrun.linux import kernel, netlink, rtnl
import nsrun.engine.resources, nsrun.engine.attachment, nsrun.linux.ndp  # what a run imports

def ip(*args, fd=None):
    pre = ["nsenter", f"--net=/proc/{os.getpid()}/fd/{fd}"] if fd is not None else []
    out = subprocess.run(pre + ["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")

out = {}
home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
kernel.unshare(kernel.CLONE_NEWNET)
other = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
kernel.setns(home, kernel.CLONE_NEWNET)
with netlink.IPRoute() as r:
    r.link("set", index=1, state="up")
    r.link("add", ifname="br-t", kind="bridge")
    br = netlink.present(r, "br-t")
    r.link("set", index=br, mtu=1400, ifalias="nsrun:x", address="02:00:00:00:00:01", state="up")
    try:
        r.link("add", ifname="br-t", kind="bridge")
    except netlink.NetlinkError as exc:
        out["again"] = netlink.errno_of(exc)
    r.link("add", ifname="v-in", kind="veth", peer={"ifname": "v-out", "net_ns_fd": other, "mtu": 1300}, mtu=1300)
    v = netlink.present(r, "v-in")
    r.link("set", index=v, master=br, state="up")
    r.brport("set", index=v, isolated=1)
    out["isolated"] = ip("-d", "link", "show", "v-in")[0]["linkinfo"]["info_slave_data"]["isolated"]
    out["other"] = sorted((l["ifname"], l["mtu"]) for l in ip("link", fd=other))
    link = r.get_links(br)[0]
    out["bridge"] = [link.get_attr(n) for n in ("IFLA_IFNAME", "IFLA_MTU", "IFLA_IFALIAS", "IFLA_ADDRESS")] \
        + [link["flags"] & 1, link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND")]
    shown = ip("-d", "link", "show", "br-t")[0]
    out["bridge_ip"] = [shown["ifname"], shown["mtu"], shown["ifalias"], shown["address"], int("UP" in shown["flags"]),
                        shown["linkinfo"]["info_kind"]]
    out["master"] = r.get_links(v)[0].get_attr("IFLA_MASTER") == br
    out["dump"] = sorted(l.get_attr("IFLA_IFNAME") for l in r.get_links())
    r.addr("add", index=br, address="10.9.0.1", prefixlen=24)
    r.addr("add", index=br, address="fd00:9::1", prefixlen=64, flags=0x02)
    out["addrs"] = sorted(netlink.addresses(r, br))
    out["addrs_ip"] = sorted(f"{a['local']}/{a['prefixlen']}" + (" nodad" if a.get("nodad") else "")
                             for a in ip("addr", "show", "br-t")[0]["addr_info"])
    r.route("add", dst="10.77.0.0/16", gateway="10.9.0.2", proto=0x99)
    r.route("add", dst="0.0.0.0/0", gateway="10.9.0.254", oif=br)
    r.route("add", dst="::/0", gateway="fd00:9::fe", oif=br)
    r.route("add", dst="10.88.0.0/16", oif=br)
    out["routes_ip"] = sorted(f"{x['dst']} {x.get('gateway')} {x['protocol']} {x.get('scope', 'global')}"
                              for x in ip("route") + ip("-6", "route"))
    out["main"] = sorted(f"{x.get_attr('RTA_DST')}/{x['dst_len']} {x.get_attr('RTA_GATEWAY')} {x['proto']}"
                         for x in r.get_routes(family=socket.AF_INET, table=254))
    out["by_proto"] = [x.get_attr("RTA_DST") for x in r.get_routes(family=socket.AF_INET, proto=0x99)]
    local6 = r.get_routes(family=socket.AF_INET6, table=255)
    out["local6"] = [sorted({x.get_attr("RTA_TABLE") for x in local6}),
                     sorted(x.get_attr("RTA_DST") for x in local6 if x["type"] == 2)]
    r.route("del", dst="10.77.0.0/16", gateway="10.9.0.2", proto=0x99, table=254)
    try:
        r.route("del", dst="10.77.0.0/16", gateway="10.9.0.2", proto=0x99, table=254)
    except netlink.NetlinkError as exc:
        out["del_again"] = netlink.errno_of(exc)
    r.addr("del", index=br, address="fd00:9::1", prefixlen=64)
    out["after_del"] = sorted(netlink.addresses(r, br))
    out["missing"] = [r.link_lookup(ifname="nope"), r.link_lookup(ifname="x" * 16), netlink.index(r, "lo")]
    try:
        r.get_links(99999)
    except netlink.NetlinkError as exc:
        out["no_index"] = netlink.errno_of(exc)
    out["by_name"] = [r.set_down("v-in"), "UP" in ip("link", "show", "v-in")[0]["flags"],
                      r.get_link("v-in")["index"] == v, r.get_link("nope"), r.set_down("nope"), r.del_link("nope")]
    out["deleted"] = r.del_link("v-in")
    out["gone"] = [r.link_lookup(ifname="v-in"), [l["ifname"] for l in ip("link", fd=other)]]
out["imported"] = sorted(m for m in ("pyroute2", "asyncio") if m in sys.modules)
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="makes links in a throwaway network namespace")
def test_every_request_nsrun_makes_does_what_iproute2_sees() -> None:
    r = subprocess.run(["unshare", "-n", sys.executable, "-c", KERNEL_PROBE], capture_output=True, text=True,
                       timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["again"] == 17                                   # EEXIST, as a NetlinkError
    assert out["isolated"] is True
    assert out["other"] == [["lo", 65536], ["v-out", 1300]]     # the peer made in the other namespace
    assert out["bridge"] == out["bridge_ip"] == ["br-t", 1400, "nsrun:x", "02:00:00:00:00:01", 1, "bridge"]
    assert out["master"] is True
    assert out["dump"] == ["br-t", "lo", "v-in"]
    assert out["addrs"] == ["10.9.0.1/24", "fd00:9::1/64"]
    assert out["addrs_ip"] == ["10.9.0.1/24", "fd00:9::1/64 nodad"]
    assert out["routes_ip"] == sorted(["default 10.9.0.254 static global", "10.9.0.0/24 None kernel link",
                                       "10.77.0.0/16 10.9.0.2 153 global", "10.88.0.0/16 None static link",
                                       "fd00:9::/64 None kernel global", "default fd00:9::fe static global"])
    assert out["main"] == sorted(["None/0 10.9.0.254 4", "10.9.0.0/24 None 2", "10.77.0.0/16 10.9.0.2 153",
                                  "10.88.0.0/16 None 4"])
    assert out["by_proto"] == ["10.77.0.0"]
    assert out["local6"] == [[255], ["::1", "fd00:9::1"]]        # table=: the local table alone
    assert out["del_again"] == 3                                # ESRCH: gone already
    assert out["after_del"] == ["10.9.0.1/24"]
    assert out["missing"] == [[], [], 1]
    assert out["no_index"] == 19                                # ENODEV
    assert out["by_name"] == [True, False, True, None, False, False]
    assert out["deleted"] is True
    assert out["gone"] == [[], ["lo"]]                          # the peer went with it
    # The point of the module: a run's netlink work loads neither pyroute2 nor asyncio (~60-90 ms).
    assert out["imported"] == []
