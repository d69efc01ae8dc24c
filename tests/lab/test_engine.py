"""Issue 10: the engine as resources, in the lab. The engine driven from a plain Python
process (tests/support/drive.py), a resource added by one module and one list entry
(tests/support/extra_resource.py), and gc's race with `down`/`up`. The typed records and the
claiming of ephemeral names, without the lab: tests/unit/test_engine.py."""

from __future__ import annotations

import fcntl
import json
import os
import select
import subprocess
import sys
import time

from conftest import CLIENT, REPO, SUPPORT
from nsrun import lab as labmod


def _drive(lab, tmp_path, variant: str) -> dict:
    out = tmp_path / "out.json"
    r = subprocess.run(lab.host_argv([sys.executable, str(SUPPORT / "drive.py"), str(out), variant]),
                       env=lab.env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert (r.stdout, r.stderr) == ("", ""), "the engine printed"
    return json.loads(out.read_text())


def test_the_engine_is_driven_from_plain_python_and_prints_nothing(lab, tmp_path):
    seen = _drive(lab, tmp_path, "plain")
    assert seen["up"]["address"].startswith("10.251.0.")
    assert seen["up"] == {**seen["up"], "already": False, "state": "up", "netns": True, "veth": True}
    assert seen["again_already"] is True
    assert seen["plan_while_up"] == []  # a namespace that is up is nothing to reclaim
    assert seen["down"] is True
    assert seen["after_down"] == {"netns": False, "record": False, "veth": False}
    # The lab fixture checks that the lab host is exactly as before.


def test_a_new_resource_is_one_module_and_one_list_entry_and_gc_finds_its_orphans(lab, tmp_path):
    seen = _drive(lab, tmp_path, "extra")
    assert seen["extra_made"] is True and seen["extra_after_down"] is False
    from support.extra_resource import ifname

    what = f"extra bridge {ifname('drv')}"
    assert what in seen["orphans"], seen["orphans"]
    assert what in seen["gc_applied"] and seen["gc_failed"] == []
    assert seen["extra_after_gc"] is False
    assert seen["plan_after_gc"] == []


def test_teardown_goes_on_past_a_failing_step_and_keeps_the_record_gc_past_a_failing_action(lab, tmp_path):
    seen = _drive(lab, tmp_path, "failing")
    assert "failing: injected failure" in seen["down_error"], seen["down_error"]
    # Every other step ran (the lab fixture checks the host), and the record stays for gc.
    assert seen["after_down"] == {"netns": False, "record": True, "veth": False, "dns": False}
    assert seen["gc_applied"][0] == "namespace drv and its pieces", seen["gc_applied"]
    assert seen["gc_failed"] == ["something that cannot go: injected failure"]
    assert seen["record_after_gc"] is False
    assert seen["plan_after_gc"] == ["something that cannot go"]


def test_the_last_two_teardowns_interleaved_leave_no_rules(lab, tmp_path):
    seen = _drive(lab, tmp_path, "interleaved")
    assert seen["rules_after_a"] == [] and seen["rules"] == [] and seen["net_bridges"] == []
    # The lab fixture checks ip_forward and the rest of the host.


def _wait_line(stream, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    got = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.1)
        if ready:
            line = stream.readline()
            got += line
            if needle in line or not line:
                return got
    return got


def _blocked_on(ino: int) -> bool:
    with open("/proc/locks") as fh:
        return any("->" in line and line.split()[6].endswith(f":{ino}") for line in fh)


def test_gc_never_takes_down_a_namespace_recreated_while_it_waited(lab):
    # gc judges a persistent namespace stale when its mount is gone, as it is while `down`
    # is half-way; `down` then finishes and `up` re-creates NAME before gc gets NAME's lock.
    # gc must re-judge under the lock, not tear down the new namespace.
    name = "racy"
    assert lab.nsrun("up", name, "-p", "nat").returncode == 0
    from nsrun.linux import netns

    netns.delete(name)  # the first thing `down` does after stopping processes
    lock_path = lab.statedir / "ns" / f"{name}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    gc = None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # `down` holds the lock
        gc = lab.popen("gc", env={"PYTHONUNBUFFERED": "1"})
        line = _wait_line(gc.stdout, f"namespace {name}", 30)
        assert f"removing namespace {name}" in line, line
        ino = os.fstat(fd).st_ino
        deadline = time.monotonic() + 30
        while not _blocked_on(ino) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _blocked_on(ino), "gc did not wait for the lock"
        # `down` finishes (and discards its lock file); then `up` makes NAME anew.
        os.unlink(lock_path)
        assert lab.nsrun("down", name).returncode == 0
        r = lab.nsrun("up", name, "-p", "nat")
        assert r.returncode == 0 and "is up" in r.stdout, r.stdout + r.stderr
    finally:
        os.close(fd)  # gc gets the lock
        if gc is not None:
            out, err = gc.communicate(timeout=60)
    try:
        assert gc.returncode == 0, err
        assert f"kept namespace {name} and its pieces after all (re-checked" in out, out  # not "removing" alone
        assert os.path.exists(f"/run/netns/{name}"), "gc took down the re-created namespace"
        assert (lab.statedir / "ns" / f"{name}.json").exists()
        r = lab.nsrun("exec", name, "--", *CLIENT)
        assert (r.returncode, r.stdout.strip()) == (0, labmod.GW2_UP), r.stderr
    finally:
        assert lab.nsrun("down", name).returncode == 0
