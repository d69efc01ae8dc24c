"""Address leases (nsrun/lease.py): the allocator, the in-memory store and the file store.

No network: FileStore works in a temporary NSRUN_STATE_DIR.
"""

from __future__ import annotations

import inspect
import ipaddress
import multiprocessing
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, precondition, rule

from nsrun.engine import allocator
from nsrun import state
from nsrun.errors import NsrunError
from nsrun.engine.allocator import FileStore, allocate, candidates
from support.fakes import MemoryStore

PROPS = settings(max_examples=200, deadline=None)


def ip(a: int) -> str:
    return str(ipaddress.IPv4Address(a))


def addr(s: str) -> int:
    return int(ipaddress.IPv4Address(s))


BASE = addr("10.0.0.0")
POOL = [BASE + i for i in range(2, 10)]  # 10.0.0.2 .. 10.0.0.9


@pytest.fixture
def statedir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "state"
    monkeypatch.setenv("NSRUN_STATE_DIR", str(d))
    return d


# -- candidates ------------------------------------------------------------------------

def test_candidates_examples() -> None:
    pool = [1, 2, 3, 5, 8]
    assert list(candidates(pool, None)) == [1, 2, 3, 5, 8]
    assert list(candidates(pool, 1)) == [2, 3, 5, 8, 1]
    assert list(candidates(pool, 4)) == [5, 8, 1, 2, 3]  # LAST need not be in the pool
    assert list(candidates(pool, 8)) == [1, 2, 3, 5, 8]
    assert list(candidates(pool, 100)) == [1, 2, 3, 5, 8]
    assert list(candidates(pool, 0)) == [1, 2, 3, 5, 8]
    assert list(candidates([], 3)) == []
    assert list(candidates([7], 7)) == [7]


@PROPS
@given(st.lists(st.integers(0, 2**32 - 1), unique=True, max_size=40).map(sorted),
       st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_candidates_is_the_pool_rotated_past_last(pool: list[int], last: int | None) -> None:
    out = list(candidates(pool, last))
    assert sorted(out) == pool  # every address once
    if not pool:
        return
    after = [a for a in pool if last is not None and a > last]
    assert out[0] == (after[0] if after else pool[0])
    i = pool.index(out[0])
    assert out == pool[i:] + pool[:i]  # the order is kept, wrapping around


# -- allocate with MemoryStore -------------------------------------------------------------

def test_allocate_round_robin_and_idempotent() -> None:
    store = MemoryStore()
    a = allocate(store, POOL, "a")
    b = allocate(store, POOL, "b")
    assert (ip(a), ip(b)) == ("10.0.0.2", "10.0.0.3")
    assert allocate(store, POOL, "a") == a  # a re-run after a crash gets its address again
    assert store.last_reserved() == b
    store.release(a, "a")
    # The address just released is not handed out again at once.
    c = allocate(store, POOL, "c")
    assert ip(c) == "10.0.0.4"
    assert store.taken() == {b: "b", c: "c"}


def test_allocate_wraps_around_to_released_addresses() -> None:
    store = MemoryStore()
    got = [allocate(store, POOL, f"o{i}") for i in range(len(POOL))]
    assert got == POOL
    with pytest.raises(NsrunError) as info:
        allocate(store, POOL, "late")
    assert f"all {len(POOL)} addresses" in str(info.value)
    assert "\n" not in str(info.value)
    store.release(POOL[3], "o3")
    assert allocate(store, POOL, "late") == POOL[3]


def test_release_needs_the_owner() -> None:
    store = MemoryStore()
    a = allocate(store, POOL, "a")
    store.release(a, "b")
    assert store.taken() == {a: "a"}
    store.release(a, "a")
    store.release(a, "a")  # idempotent
    assert store.taken() == {}


def test_usable_vetoes_addresses() -> None:
    store = MemoryStore()
    asked: list[int] = []

    def usable(a: int) -> bool:
        asked.append(a)
        return a not in (POOL[0], POOL[1])

    a = allocate(store, POOL, "a", usable)
    assert a == POOL[2] and asked == POOL[:3]
    assert store.taken() == {a: "a"}  # the vetoed addresses were not reserved
    with pytest.raises(NsrunError):
        allocate(MemoryStore(), POOL, "x", lambda _: False)


def test_taken_addresses_are_not_probed() -> None:
    store = MemoryStore()
    allocate(store, POOL, "a")
    asked: list[int] = []
    allocate(store, POOL, "b", lambda a: asked.append(a) is None)
    assert POOL[0] not in asked


def test_an_owners_lease_outside_the_pool_does_not_count() -> None:
    store = MemoryStore()
    store.reserve(addr("10.9.9.9"), "a")
    a = allocate(store, POOL, "a")
    assert a in POOL


def test_a_lost_reserve_race_moves_on() -> None:
    class Racy(MemoryStore):
        def reserve(self, a: int, owner: str) -> bool:
            if a == POOL[0] and POOL[0] not in self.leases:
                self.leases[a] = "intruder"  # someone got it between taken() and reserve()
                return False
            return super().reserve(a, owner)

    store = Racy()
    assert allocate(store, POOL, "a") == POOL[1]
    assert store.taken() == {POOL[0]: "intruder", POOL[1]: "a"}


def test_empty_pool() -> None:
    with pytest.raises(NsrunError):
        allocate(MemoryStore(), [], "a")


class AllocatorMachine(RuleBasedStateMachine):
    """Any sequence of allocations, releases and vetoes, checked against a simple model."""

    owners = Bundle("owners")

    @initialize(size=st.integers(1, 12), start=st.integers(1, 2**32 - 40))
    def setup(self, size: int, start: int) -> None:
        self.pool = list(range(start, start + size))
        self.store = MemoryStore()
        self.model: dict[str, int] = {}  # owner -> address
        self.next_owner = 0

    @rule(target=owners)
    def new_owner(self) -> str:
        self.next_owner += 1
        return f"ns{self.next_owner}"

    @rule(owner=owners, veto=st.sets(st.integers(0, 11), max_size=4))
    def allocate(self, owner: str, veto: set[int]) -> None:
        vetoed = {self.pool[i] for i in veto if i < len(self.pool)}
        taken_before = self.store.taken()
        last = self.store.last_reserved()
        try:
            got = allocate(self.store, self.pool, owner, lambda a: a not in vetoed)
        except NsrunError:
            assert owner not in self.model
            free = [a for a in self.pool if a not in taken_before and a not in vetoed]
            assert not free, "refused although an address was free"
            return
        if owner in self.model:
            assert got == self.model[owner]  # idempotent
            return
        assert got in self.pool
        assert got not in taken_before, "handed out a taken address"
        assert got not in vetoed
        assert got not in self.model.values(), "two owners share an address"
        # Round robin: the first free, usable address after the last one handed out.
        order = list(candidates(self.pool, last))
        assert got == next(a for a in order if a not in taken_before and a not in vetoed)
        self.model[owner] = got

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        owner = data.draw(st.sampled_from(sorted(self.model)))
        self.store.release(self.model.pop(owner), owner)

    @rule(owner=owners, other=owners)
    def release_by_another(self, owner: str, other: str) -> None:
        if owner in self.model and owner != other:
            self.store.release(self.model[owner], other)  # must not free owner's address

    @invariant()
    def store_matches_model(self) -> None:
        if hasattr(self, "model"):
            assert self.store.taken() == {a: o for o, a in self.model.items()}


AllocatorMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)
TestAllocator = AllocatorMachine.TestCase


# -- FileStore ---------------------------------------------------------------------------

def test_filestore_layout_and_modes(statedir: Path) -> None:
    store = FileStore("br0")
    assert store.base == statedir / "net" / "br0"
    assert store.taken() == {} and store.last_reserved() is None  # nothing on disk yet
    with store.lock():
        a = allocate(store, POOL, "web")
    leasefile = statedir / "net" / "br0" / "leases" / ip(a)
    assert leasefile.read_text() == "web"
    assert stat.S_IMODE(leasefile.stat().st_mode) == 0o600
    for d in (statedir, statedir / "net", store.base, store.dir):
        assert stat.S_IMODE(d.stat().st_mode) & 0o077 == 0, d
    assert (store.base / "last_reserved").read_text() == ip(a)
    assert (store.base / "lock").exists()
    assert not list(store.base.glob(".*tmp"))


def test_filestore_roundtrip(statedir: Path) -> None:
    store = FileStore("br0")
    with store.lock():
        a = allocate(store, POOL, "a")
        b = allocate(store, POOL, "b")
        assert allocate(store, POOL, "a") == a
    again = FileStore("br0")  # another process, later: the state is on disk
    assert again.taken() == {a: "a", b: "b"}
    assert again.last_reserved() == b
    again.release(a, "b")  # not b's
    assert again.taken() == {a: "a", b: "b"}
    again.release(a, "a")
    again.release(a, "a")
    assert again.taken() == {b: "b"}
    with again.lock():
        assert allocate(again, POOL, "c") == POOL[2]  # round robin survives restarts
    assert again.release_owner("b") == [b]
    assert again.release_owner("b") == []
    assert again.taken() == {POOL[2]: "c"}


def test_filestore_bridges_are_separate(statedir: Path) -> None:
    one, two = FileStore("br0"), FileStore("nsrun0")
    assert allocate(one, POOL, "a") == allocate(two, POOL, "a") == POOL[0]
    assert allocate(two, POOL, "b") == POOL[1]
    assert one.taken() == {POOL[0]: "a"}


def test_filestore_ignores_what_is_not_a_lease(statedir: Path) -> None:
    store = FileStore("br0")
    allocate(store, POOL, "a")
    for junk in ("README", ".10.0.0.5.tmp", "10.0.0.256", "010.0.0.5", "10.0.0"):
        (store.dir / junk).write_text("x")
    (store.base / "last_reserved").write_text("garbage")
    assert store.taken() == {POOL[0]: "a"}
    assert store.last_reserved() is None
    assert allocate(store, POOL, "b") == POOL[1]


def test_filestore_reserve_is_exclusive(statedir: Path) -> None:
    store = FileStore("br0")
    assert store.reserve(POOL[0], "a")
    assert not store.reserve(POOL[0], "b")
    assert store.taken() == {POOL[0]: "a"}


def test_filestore_follows_nsrun_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for sub in ("x", "y"):
        monkeypatch.setenv("NSRUN_STATE_DIR", str(tmp_path / sub))
        assert allocate(FileStore("br0"), POOL, "a") == POOL[0]
    assert (tmp_path / "x" / "net" / "br0" / "leases" / ip(POOL[0])).is_file()
    assert (tmp_path / "y" / "net" / "br0" / "leases" / ip(POOL[0])).is_file()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alloc", "release"]), st.integers(0, 5)), max_size=25))
def test_filestore_behaves_like_memorystore(ops: list[tuple[str, int]]) -> None:
    old = os.environ.get("NSRUN_STATE_DIR")
    with tempfile.TemporaryDirectory() as d:
        os.environ["NSRUN_STATE_DIR"] = d
        try:
            files, mem = FileStore("br0"), MemoryStore()
            for op, n in ops:
                owner = f"ns{n}"
                if op == "alloc":
                    results = []
                    for store in (files, mem):
                        try:
                            results.append(allocate(store, POOL[:4], owner))
                        except NsrunError:
                            results.append(None)
                    assert results[0] == results[1]
                else:
                    for store in (files, mem):
                        for a in store.taken():
                            store.release(a, owner)
                assert files.taken() == mem.taken()
                assert files.last_reserved() == mem.last_reserved()
        finally:
            if old is None:
                os.environ.pop("NSRUN_STATE_DIR", None)
            else:
                os.environ["NSRUN_STATE_DIR"] = old


# -- FileStore under concurrency ----------------------------------------------------------------

WORKERS, PER_WORKER = 12, 4


def _allocating_worker(bridge: str, pool: list[int], worker: int, barrier: Any, out: Any) -> None:
    store = FileStore(bridge)
    results: list[tuple[str, Any]] = []
    barrier.wait()
    for j in range(PER_WORKER):
        owner = f"w{worker}-{j}"
        try:
            with store.lock():
                results.append((owner, allocate(store, pool, owner)))
        except NsrunError:
            results.append((owner, None))
        except Exception as exc:  # reported, so the parent fails with the reason
            results.append((owner, f"{type(exc).__name__}: {exc}"))
    out.put(results)


def _run_workers(pool: list[int]) -> list[tuple[str, Any]]:
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(WORKERS), ctx.Queue()
    procs = [ctx.Process(target=_allocating_worker, args=("br0", pool, i, barrier, out))
             for i in range(WORKERS)]
    for p in procs:
        p.start()
    results = [r for _ in procs for r in out.get(timeout=60)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def test_concurrent_allocations_are_distinct(statedir: Path) -> None:
    pool = [BASE + i for i in range(1, 101)]
    results = _run_workers(pool)
    errors = [r for r in results if not isinstance(r[1], int)]
    assert not errors, errors
    got = [a for _, a in results]
    assert len(got) == WORKERS * PER_WORKER
    assert len(set(got)) == len(got), "two owners got the same address"
    assert set(got) <= set(pool)
    # What is on disk says the same: one file per address, naming its owner.
    assert FileStore("br0").taken() == {a: o for o, a in results}


def test_concurrent_allocations_exhaust_the_pool_exactly(statedir: Path) -> None:
    pool = [BASE + i for i in range(1, 41)]  # 40 addresses for 48 requests
    results = _run_workers(pool)
    odd = [r for r in results if r[1] is not None and not isinstance(r[1], int)]
    assert not odd, odd
    granted = [a for _, a in results if a is not None]
    assert sorted(granted) == pool  # every address handed out, each exactly once
    assert sum(1 for _, a in results if a is None) == WORKERS * PER_WORKER - len(pool)
    assert FileStore("br0").taken() == {a: o for o, a in results if a is not None}


def test_state_module_is_what_filestore_uses(statedir: Path) -> None:
    assert FileStore("br0").base == state.net_dir("br0") == statedir / "net" / "br0"
    assert isinstance(FileStore("br0").lock(), state.Lock)


def test_both_stores_implement_the_store_protocol() -> None:
    """FileStore and the tests' MemoryStore have every method of allocator.Store, with its
    parameters and return type (a store that drifted would make the stateful tests of the
    memory store prove nothing of the file store). (`assert allocator.Store` could not fail.)"""
    protocol = {name: inspect.signature(f) for name, f in vars(allocator.Store).items()
                if inspect.isfunction(f) and not name.startswith("_")}
    assert set(protocol) == {"taken", "reserve", "release", "last_reserved", "set_last_reserved"}
    for store in (FileStore, MemoryStore):
        for name, want in protocol.items():
            got = getattr(store, name, None)
            assert callable(got), f"{store.__name__} has no {name}"
            assert str(inspect.signature(got)) == str(want), (store.__name__, name)
