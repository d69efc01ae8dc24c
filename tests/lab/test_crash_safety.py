"""Issue 6: crash safety (fault injection, SIGKILL at random moments), gc, concurrency."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest

from nsrun.engine.resources import steps
from support import faultsweep

HOST_KINDS = ["legacy", "nftables", "docker"]


@pytest.mark.parametrize("step", steps("nat"))
def test_up_killed_after_each_step_then_gc_restores_the_host(lab, step):
    # Publishing a port (reached at the host's loopback too): every step of a nat setup
    # then makes something (the publish step's claims, route_localnet, rules, openings).
    name = f"crash-{step}"
    r = lab.nsrun("up", name, "-p", "nat", "-P", "8080:9000", env={"NSRUN_FAULT": step})
    assert r.returncode == -signal.SIGKILL  # nsrun died right after STEP, as in a crash
    if step not in ("record",):
        # Something of the half-made namespace is left for gc to find.
        assert os.path.exists(lab.statedir / "ns" / f"{name}.json")
    if step == "ready":
        # The setup had finished: the namespace is up and stays until `down`.
        gc = lab.nsrun("gc")
        assert "nothing to reclaim" in gc.stdout, gc.stdout
        assert lab.nsrun("down", name).returncode == 0
        return
    dry = lab.nsrun("gc", "--dry-run")
    assert dry.returncode == 0 and "would remove" in dry.stdout, dry.stdout + dry.stderr
    gc = lab.nsrun("gc")
    assert gc.returncode == 0, gc.stderr
    assert "removing namespace" in gc.stdout, gc.stdout
    again = lab.nsrun("gc")
    assert "nothing to reclaim" in again.stdout, again.stdout
    # The lab fixture checks the lab host is exactly as before.


@pytest.mark.parametrize("step", ["lease", "veth", "address"])
def test_bridge_mode_up_killed_then_gc(lab, step):
    r = lab.nsrun("up", f"crashb-{step}", "-p", "gw1", env={"NSRUN_FAULT": step})
    assert r.returncode == -signal.SIGKILL
    assert lab.nsrun("gc").returncode == 0


@pytest.mark.parametrize("step", ["state-write", "bridge", "firewall", "netns", "veth", "address", "dns"])
def test_ephemeral_setup_killed_supervisor_cleans_up(lab, step):
    # The setup child dies; the supervisor reports it and removes what was made (at
    # state-write, in the middle of writing the run's record: its temporary too).
    r = lab.nsrun("--", "true", env={"NSRUN_FAULT": step})
    assert r.returncode == 128 + signal.SIGKILL
    gc = lab.nsrun("gc")
    assert "nothing to reclaim" in gc.stdout, gc.stdout


def test_gc_dry_run_changes_nothing(lab):
    name = "crash-dry"
    assert lab.nsrun("up", name, "-p", "nat", env={"NSRUN_FAULT": "address"}).returncode == -9
    snap = lab.snapshot()
    assert lab.nsrun("gc", "--dry-run").returncode == 0
    assert lab.snapshot() == snap
    assert lab.nsrun("gc").returncode == 0


def test_gc_leaves_live_runs_and_persistent_namespaces_alone(lab):
    keep = "gc-keep"
    assert lab.nsrun("up", keep, "-p", "nat").returncode == 0
    p = lab.popen("--", "sh", "-c", "echo $NSRUN_NETNS; sleep 3")
    try:
        live = p.stdout.readline().strip()
        gc = lab.nsrun("gc")
        assert gc.returncode == 0 and "nothing to reclaim" in gc.stdout, gc.stdout
        assert os.path.exists(f"/run/netns/{keep}") and os.path.exists(f"/run/netns/{live}")
    finally:
        p.communicate(timeout=30)
        assert p.returncode == 0
        assert lab.nsrun("down", keep).returncode == 0


def test_gc_never_touches_foreign_namespaces(lab):
    subprocess.run(["ip", "netns", "add", "foreign-gc"], check=True)
    # nsrun's own name pattern, no record, but a process lives in it: not gc's to take.
    subprocess.run(["ip", "netns", "add", "nsrun-deadbeef"], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", "nsrun-deadbeef", "sleep", "30"])
    try:
        time.sleep(0.2)
        gc = lab.nsrun("gc")
        assert gc.returncode == 0 and "nothing to reclaim" in gc.stdout, gc.stdout
        assert os.path.exists("/run/netns/foreign-gc") and os.path.exists("/run/netns/nsrun-deadbeef")
    finally:
        sleeper.kill()
        sleeper.wait()
        subprocess.run(["ip", "netns", "del", "foreign-gc"], check=True)
        subprocess.run(["ip", "netns", "del", "nsrun-deadbeef"], check=True)


def test_sigkill_at_random_moments_then_gc(lab):
    rng = random.Random(6)
    delays = sorted(rng.uniform(0.0, 0.6) for _ in range(12))
    for delay in delays:
        p = subprocess.Popen(lab.nsrun_argv("-p", "nat", "--", "sleep", "0.3"), env=lab.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(delay)
        try:
            os.killpg(p.pid, signal.SIGKILL)  # nsrun, its setup child or CMD: all at once
        except ProcessLookupError:
            pass
        p.wait()
    time.sleep(0.3)  # CMDs orphaned by the kill get their parent-death signal
    gc = lab.nsrun("gc")
    assert gc.returncode == 0, gc.stderr
    # The lab fixture checks the lab host is exactly as before.


def test_sigterm_at_random_moments_leaves_nothing_without_gc(lab):
    """`systemctl stop` (SIGTERM to nsrun) at any moment of a run: nsrun passes it on, and
    what the setup had made, or was writing, is gone when nsrun has ended; no gc needed."""
    rng = random.Random(15)
    before = lab.snapshot()
    ended: dict[int, int] = {}
    for i in range(40):
        p = lab.popen("--", "true")
        time.sleep(rng.uniform(0.0, 0.25))
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
        ended[p.returncode] = ended.get(p.returncode, 0) + 1
        changed = faultsweep.diff(before, lab.snapshot())
        assert not changed, (i, changed)
    assert ended.get(-signal.SIGTERM), ended  # some were stopped, not all over before the signal


def test_next_run_reclaims_a_killed_ephemeral_run(lab):
    p = subprocess.Popen(lab.nsrun_argv("--", "sleep", "30"), env=lab.env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline and not _records(lab):
        time.sleep(0.02)
    assert _records(lab)
    time.sleep(0.5)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    time.sleep(0.2)
    assert lab.nsrun("--", "true").returncode == 0  # its start reclaims the dead run
    assert not _records(lab)


def _records(lab) -> list[str]:
    d = lab.statedir / "ns"
    return [f for f in os.listdir(d) if f.endswith(".json")] if d.exists() else []


def test_fifty_concurrent_runs_distinct_addresses(lab, tmp_path):
    go = tmp_path / "go"
    cmd = f"echo $NSRUN_ADDRESS; while [ ! -e {go} ]; do sleep 0.05; done"
    procs = [lab.popen("-p", "nat", "--", "sh", "-c", cmd) for _ in range(50)]
    try:
        addrs = [p.stdout.readline().strip() for p in procs]  # all 50 are alive at once
    finally:
        go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 50, [r[1] for r in results if r[1]][:3]
    assert all(a.startswith("10.251.0.") for a in addrs), addrs
    assert len(set(addrs)) == 50


def test_two_ups_of_one_name_race_safely(lab):
    name = "race"
    procs = [lab.popen("up", name, "-p", "nat") for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    try:
        assert [p.returncode for p in procs] == [0, 0], outs
        assert sum(o[0].startswith(f"{name} is up:") for o in outs) == 1, outs
        assert sum(o[0].startswith(f"{name} is already up") for o in outs) == 1, outs
    finally:
        assert lab.nsrun("down", name).returncode == 0


def test_gc_of_another_state_dir_leaves_this_ones_live_pieces_alone(lab):
    import shutil

    from conftest import CLIENT

    name = "gc-mine"
    assert lab.nsrun("up", name, "-p", "nat").returncode == 0
    other = f"{lab.statedir}-other"
    try:
        gc = lab.nsrun("gc", env={"NSRUN_STATE_DIR": other})
        assert gc.returncode == 0 and "nothing to reclaim" in gc.stdout, gc.stdout
        assert os.path.exists(f"/etc/netns/{name}/resolv.conf")
        assert "nsrun:nsrun0:nat" in lab.nat_rules()
        veth = [link for link in lab.host_json("ip", "-j", "link", "show", "master", "nsrun0")]
        assert len(veth) == 1
        r = lab.nsrun("exec", name, "--", *CLIENT)
        assert r.returncode == 0, r.stderr
    finally:
        shutil.rmtree(other, ignore_errors=True)
        assert lab.nsrun("down", name).returncode == 0


def test_gc_removes_a_temporary_left_by_a_dead_writer(lab):
    # What a SIGKILL between writing a record's temporary and renaming it leaves.
    dead = subprocess.Popen(["true"])
    dead.wait()
    (lab.statedir / "ns").mkdir(parents=True, exist_ok=True)
    tmp = lab.statedir / "ns" / f".nsrun-0badf00d.json.{dead.pid}.tmp"
    tmp.write_text("{")
    live = lab.statedir / "ns" / f".nsrun-0badf00d.json.{os.getpid()}.tmp"
    live.write_text("{")  # a writer that is alive: not gc's to take
    try:
        gc = lab.nsrun("gc")
        assert gc.returncode == 0 and str(tmp) in gc.stdout, gc.stdout
        assert not tmp.exists() and live.exists()
    finally:
        live.unlink()
