"""Issue 24, item 7: where the program the service starts for a caller without root is put
before it runs (nsrun.process.spawn's SCOPE, nsrun.process.scope).

A real systemd cannot be started here (it is not this machine's init system), so the
scope's D-Bus call goes to a stand-in manager: a dbus-daemon of the test's own with the
system bus's policy (/usr/share/dbus-1/system.d: who may own org.freedesktop.systemd1 and
call it), and a small program that owns org.freedesktop.systemd1, records the
StartTransientUnit call, and does what systemd does with its PIDs (moves them into the
unit's cgroup: here under this test's own cgroup instead of user.slice). CMD must be in
that cgroup when it runs (the child waits until it is), or, when the manager refuses, in
the run's cgroup as without systemd. What was not run: systemd itself, the real
user-UID.slice and its TasksMax=/MemoryMax=.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.requirements import requires

from nsrun.linux import cgroup
from nsrun.process import scope, spawn

NOBODY = 65534
STAND_IN = r"""
import json, os, sys
from jeepney import MessageType, new_error, new_method_return
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection
from jeepney.low_level import HeaderFields

bus, base, log, refuse = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "refuse"
conn = open_dbus_connection(bus=bus)
conn.send_and_get_reply(message_bus.RequestName("org.freedesktop.systemd1"))
print("ready", flush=True)
while True:
    msg = conn.receive()
    f = msg.header.fields
    if msg.header.message_type != MessageType.method_call or f.get(HeaderFields.member) != "StartTransientUnit":
        continue
    unit, mode, props, aux = msg.body
    with open(log, "a") as fh:
        fh.write(json.dumps({"signature": f.get(HeaderFields.signature), "unit": unit, "mode": mode,
                             "props": props, "aux": aux}) + "\n")
    if refuse:
        conn.send(new_error(msg, "org.freedesktop.systemd1.UnitExists", "s", ("Unit " + unit + " exists",)))
        continue
    where = os.path.join(base, unit)
    os.mkdir(where)
    for pid in dict(props)["PIDs"][1]:
        with open(os.path.join(where, "cgroup.procs"), "w") as fh:
            fh.write(str(pid))
    conn.send(new_method_return(msg, "o", ("/org/freedesktop/systemd1/job/7",)))
"""


@pytest.fixture
def ns(lab: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"spp-{lab.lab.id}"
    assert lab.nsrun("up", name, "-p", "isolated").returncode == 0
    monkeypatch.setenv("NSRUN_STATE_DIR", str(lab.statedir))
    try:
        yield name
    finally:
        assert lab.nsrun("down", name).returncode == 0


@pytest.fixture
def base() -> Iterator[str]:
    """A cgroup under this process's own, where the stand-in puts its scopes."""
    requires("writable cgroup v2")
    group = cgroup.create(f"scope-test-{os.getpid()}")
    assert group is not None
    try:
        yield group
    finally:
        for entry in os.scandir(group):
            if entry.is_dir():
                cgroup.kill(entry.path)
                cgroup.remove(entry.path)
        cgroup.remove(group)


def manager(tmp: Path, base: str, refuse: bool) -> tuple[str, list[subprocess.Popen[str]]]:
    """A private system-like bus and the stand-in manager on it: the bus's address."""
    requires("dbus-daemon", "systemd's D-Bus policy")
    conf = "/usr/share/dbus-1/system.d/org.freedesktop.systemd1.conf"
    sock = tmp / "bus"
    (tmp / "bus.conf").write_text(f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
  </policy>
  <include>{conf}</include>
</busconfig>
""")
    procs = [subprocess.Popen(["dbus-daemon", f"--config-file={tmp / 'bus.conf'}", "--nofork", "--nopidfile"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    address = f"unix:path={sock}"
    for _ in range(200):
        if sock.exists():
            break
        __import__("time").sleep(0.01)
    stand_in = subprocess.Popen([sys.executable, "-c", STAND_IN, address, base, str(tmp / "calls"),
                                 "refuse" if refuse else "accept"], stdout=subprocess.PIPE, text=True)
    procs.append(stand_in)
    assert stand_in.stdout is not None and stand_in.stdout.readline().strip() == "ready"
    return address, procs


def run(ns: str, argv: list[str], **kw: Any) -> tuple[spawn.Started, str, Any]:
    out_r, out_w = os.pipe()
    null = os.open(os.devnull, os.O_RDWR)
    try:
        started = spawn.start(ns, argv, {"PATH": "/usr/bin:/bin"}, "/", NOBODY, NOBODY, (NOBODY,),
                              stdio=(null, out_w, out_w), **kw)
    finally:
        os.close(out_w)
        os.close(null)
    out = b""
    while chunk := os.read(out_r, 65536):
        out += chunk
    os.close(out_r)
    return started, out.decode(), spawn.wait_status(started)


@pytest.mark.parametrize("refuse", [False, True])
def test_cmd_runs_in_the_scope_the_manager_made_or_where_it_went_before(lab, ns, base, tmp_path, refuse):
    tmp = Path(tempfile.mkdtemp(prefix="nsrun-bus-"))
    address, procs = manager(tmp, base, refuse)
    run_group = cgroup.create(f"run-test-{os.getpid()}")
    assert run_group is not None
    try:
        said: list[str | None] = []

        def place(pid: int, pidfd: int) -> str | None:
            where, why = scope.start(pid, pidfd, NOBODY, ns, bus=address)
            said.append(why)
            return where

        started, out, status = run(ns, ["sh", "-c", "cat /proc/self/cgroup; sleep 0.2 & wait"], scope=place,
                                   cgroup=run_group)
        assert status == (0, None), out
        [call] = [json.loads(line) for line in (tmp / "calls").read_text().splitlines()]
        assert call["signature"] == "ssa(sv)a(sa(sv))" and call["mode"] == "fail" and call["aux"] == []
        props = dict(call["props"])
        assert props["Slice"] == ["s", f"user-{NOBODY}.slice"] and props["PIDs"] == ["au", [started.pid]]
        mnt = cgroup.mountpoint()
        assert mnt is not None
        inside = [line[3:] for line in out.splitlines() if line.startswith("0::")][0]
        if refuse:
            assert started.scope is None and said[0] is not None and "UnitExists" in said[0]
            assert inside == "/" + os.path.relpath(run_group, mnt), out  # as without systemd
        else:
            assert said == [None] and started.scope == os.path.join(base, call["unit"])
            assert inside == "/" + os.path.relpath(started.scope, mnt), out  # there before it ran
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
        cgroup.kill(run_group)
        cgroup.remove(run_group)
