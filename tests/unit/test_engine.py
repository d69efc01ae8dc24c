"""Issue 10: the engine as resources, without the lab: the typed records, the engine's
imports, and ephemeral names claimed under their lock. The engine driven on the real kernel:
tests/lab/test_engine.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO
from nsrun.engine import record
from nsrun.engine.record import SCHEMA, NetRecord, NsRecord


# -- the records -------------------------------------------------------------------------

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
