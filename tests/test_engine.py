"""Issue 10: the engine as resources. The engine driven from a plain Python process, a
resource added by one module and one list entry, the typed records, and gc's race with
`down`/`up`."""

from __future__ import annotations

import fcntl
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CLIENT, REPO
from nsrun import lab as labmod
from nsrun.engine import record
from nsrun.engine.record import SCHEMA, NetRecord, NsRecord

SUPPORT = Path(__file__).resolve().parent / "engine_support"


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
    from engine_support.extra_resource import ifname

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


# -- the records (no network) -------------------------------------------------------------

def _ns(**changes) -> NsRecord:
    rec = NsRecord(name="web", profile="nat", profile_source="/p/nat.toml", mode="nat", bridge="nsrun0",
                   veth="nsr0123456789", persistent=True, created=1.5, state="up", address="10.251.0.2",
                   prefixlen=24, gateway="10.251.0.1", dns=True, owner_pid=None, owner_start=None)
    return rec._replace(**changes)


def test_records_round_trip_through_json(tmp_path, monkeypatch):
    monkeypatch.setenv("NSRUN_STATE_DIR", str(tmp_path))
    rec = _ns()
    assert rec.to_json()["schema"] == SCHEMA
    record.save(rec)
    assert record.read("web") == rec
    assert record.all_ns() == {"web": rec}
    net = NetRecord(mode="bridge", profile="gw1", subnet="192.168.1.0/24", rp_filter_set=True, rp_filter="1")
    record.save_net("br0", net)
    assert record.read_net("br0") == net
    assert record.net_bridges() == ["br0"]


def test_records_of_schema_0_are_read():
    old = {"name": "web", "profile": "nat", "profile_source": "/p/nat.toml", "mode": "nat",
           "bridge": "nsrun0", "veth": "nsr0123456789", "persistent": True, "created": 1.5,
           "state": "up", "address": "10.251.0.2", "prefixlen": 24, "gateway": "10.251.0.1",
           "dns": True, "owner_pid": None, "owner_start": None}
    assert NsRecord.from_json(old) == _ns()
    net = NetRecord.from_json({"mode": "nat", "profile": "nat", "subnet": "10.251.0.0/24",
                               "gateway": "10.251.0.1", "created_bridge": True, "firewall": True})
    assert net is not None and net.firewall == "iptables" and not net.rp_filter_set
    assert NetRecord.from_json({"mode": "nat", "firewall": False}).firewall is None  # type: ignore[union-attr]
    # rp_filter judged as "leave it" (null) stays judged; an absent key is "not judged yet".
    lan = NetRecord.from_json({"mode": "bridge", "rp_filter": None})
    assert lan is not None and lan.rp_filter_set and lan.rp_filter is None
    assert "rp_filter" in lan.to_json() and "rp_filter" not in NetRecord("bridge", None, None).to_json()


def test_a_record_of_a_newer_schema_or_no_name_is_not_read():
    assert NsRecord.from_json({**_ns().to_json(), "schema": SCHEMA + 1}) is None
    assert NsRecord.from_json({"profile": "nat"}) is None
    assert NetRecord.from_json({"mode": "nat", "schema": SCHEMA + 1}) is None


@pytest.mark.parametrize("module", ["nsrun.cli.main", "nsrun.process.supervise", "nsrun.engine", "nsrun.engine.record",
                                    "nsrun.engine.resources", "nsrun.engine.gc"])
def test_the_engine_imports_no_heavy_library_until_it_acts(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in ('pyroute2', 'iptc', 'typer', 'psutil') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


# -- ephemeral names: claimed, not trusted to the odds -------------------------------------

def _draws(monkeypatch, *drawn: str) -> list[str]:
    """names.ephemeral_name returns DRAWN in order (and fails past it); what is left."""
    from nsrun import names

    left = list(drawn)
    monkeypatch.setattr(names, "ephemeral_name", lambda: left.pop(0))
    return left


@pytest.fixture
def claims(tmp_path, monkeypatch):
    """A state directory of its own, and no namespaces but those the test names."""
    from nsrun.linux import netns

    monkeypatch.setenv("NSRUN_STATE_DIR", str(tmp_path))
    foreign: set[str] = set()
    monkeypatch.setattr(netns, "exists", lambda name: name in foreign)
    return foreign


def test_a_name_being_claimed_or_up_is_drawn_again(claims, monkeypatch, tmp_path):
    from nsrun import engine

    _draws(monkeypatch, "nsrun-0000000a", "nsrun-0000000a", "nsrun-0000000b")
    first, held = engine.claim_ephemeral()
    assert first == "nsrun-0000000a" and held.fd >= 0
    second, other = engine.claim_ephemeral()  # a's lock is held: b, not a shared namespace
    assert second == "nsrun-0000000b"
    other.abandon()
    held.abandon()
    assert not list(tmp_path.rglob("*.lock"))  # claims not used leave no lock file


def test_a_name_with_a_record_or_a_namespace_is_drawn_again_and_left_alone(claims, monkeypatch, tmp_path):
    from nsrun import engine

    record.save(_ns(name="nsrun-0000000a", persistent=False))  # a crashed run's, gc's to reclaim
    claims.add("nsrun-0000000b")  # a namespace nsrun did not make
    left = _draws(monkeypatch, "nsrun-0000000a", "nsrun-0000000b", "nsrun-0000000c", "nsrun-0000000d")
    name, lock = engine.claim_ephemeral()
    assert name == "nsrun-0000000c" and left == ["nsrun-0000000d"]
    lock.abandon()
    assert record.read("nsrun-0000000a") is not None  # untouched
    assert not record.lock_path("nsrun-0000000b").exists()  # nothing of ours beside a foreign one


def test_claiming_gives_up_after_its_draws_with_a_clear_error(claims, monkeypatch):
    from nsrun import engine
    from nsrun.errors import NsrunError

    held = record.ns_lock("nsrun-0000000a").__enter__()
    try:
        _draws(monkeypatch, *["nsrun-0000000a"] * engine.EPHEMERAL_DRAWS)
        with pytest.raises(NsrunError, match="no free ephemeral namespace name"):
            engine.claim_ephemeral()
    finally:
        held.abandon()


def test_up_takes_a_claim_and_refuses_another_names_lock(claims, monkeypatch):
    from nsrun import engine, profile

    _draws(monkeypatch, "nsrun-0000000a")
    name, claim = engine.claim_ephemeral()
    other = record.ns_lock("nsrun-0000000f")
    with pytest.raises(ValueError, match="is not the lock of"):
        engine.up(name, profile.load("nat"), persistent=False, lock=other)
    assert other.fd == -1  # not taken
    claim.abandon()
