"""The state directory (nsrun/state.py): locks, atomic JSON files, process identity. No network."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import REPO
from nsrun import state
from nsrun.state import Lock


@pytest.fixture
def statedir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "state"
    monkeypatch.setenv("NSRUN_STATE_DIR", str(d))
    return d


FORK = multiprocessing.get_context("fork")


def try_lock(path: Path) -> bool:
    """Whether a nonblocking Lock on PATH can be taken right now (then released at once)."""
    try:
        with Lock(path, blocking=False):
            return True
    except BlockingIOError:
        return False


def try_lock_elsewhere(path: Path) -> bool:
    """The same, from a fresh process (exec'd, so it inherits no locked descriptor)."""
    code = ("import sys; from pathlib import Path; from nsrun.state import Lock\n"
            "try:\n    with Lock(Path(sys.argv[1]), blocking=False): print('free')\n"
            "except BlockingIOError: print('held')\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         timeout=30, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert out.stdout.strip() in ("free", "held"), out
    return out.stdout.strip() == "free"


# -- paths -------------------------------------------------------------------------------

def test_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NSRUN_STATE_DIR", raising=False)
    assert state.root() == Path("/run/nsrun")
    monkeypatch.setenv("NSRUN_STATE_DIR", "")
    assert state.root() == Path("/run/nsrun")
    monkeypatch.setenv("NSRUN_STATE_DIR", "/tmp/x")
    assert state.root() == Path("/tmp/x")
    assert state.ns_dir() == Path("/tmp/x/ns")
    assert state.net_dir("br0") == Path("/tmp/x/net/br0")
    assert state.record_path("web") == Path("/tmp/x/ns/web.json")


def test_ensure_dir_makes_private_parents(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    old = os.umask(0)
    try:
        assert state.ensure_dir(deep) == deep
    finally:
        os.umask(old)
    for d in (tmp_path / "a", tmp_path / "a" / "b", deep):
        assert d.is_dir() and stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert state.ensure_dir(deep) == deep  # idempotent


# -- write_json / read_json ----------------------------------------------------------------

def test_write_and_read_json(statedir: Path) -> None:
    path = state.record_path("web")
    data = {"name": "web", "n": 1, "list": [1, "x"], "nested": {"a": None}}
    state.write_json(path, data)
    assert state.read_json(path) == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    state.write_json(path, {"name": "web", "n": 2})
    assert state.read_json(path) == {"name": "web", "n": 2}
    assert sorted(os.listdir(path.parent)) == ["web.json"]  # no temporary left behind


def test_write_json_replaces_rather_than_rewrites(statedir: Path) -> None:
    path = state.record_path("web")
    state.write_json(path, {"v": 1})
    before = os.stat(path).st_ino
    with open(path) as old_reader:
        state.write_json(path, {"v": 2})
        # A reader that opened the old file still reads the whole old file.
        assert json.load(old_reader) == {"v": 1}
    assert os.stat(path).st_ino != before
    assert state.read_json(path) == {"v": 2}


def test_write_json_failure_keeps_the_old_file_and_no_temporary(statedir: Path) -> None:
    path = state.record_path("web")
    state.write_json(path, {"v": 1})
    with pytest.raises(TypeError):
        state.write_json(path, {"v": object()})  # not JSON: fails half way through
    assert state.read_json(path) == {"v": 1}
    # Bug fixed: the half-written `.web.json.PID.tmp` used to stay behind.
    assert sorted(os.listdir(path.parent)) == ["web.json"]


def _writer(path: Path, stop: Any) -> None:
    big = {"pad": "x" * 200_000}
    i = 0
    while not stop.is_set():
        i += 1
        state.write_json(path, {"gen": i, **big})


def test_readers_never_see_half_a_file(statedir: Path) -> None:
    path = state.record_path("busy")
    state.write_json(path, {"gen": 0})
    stop = FORK.Event()
    writers = [FORK.Process(target=_writer, args=(path, stop)) for _ in range(2)]
    for w in writers:
        w.start()
    try:
        seen = set()
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            rec = state.read_json(path)
            assert rec is not None, "a reader saw a partial or missing file"
            assert rec["gen"] == 0 or len(rec["pad"]) == 200_000
            seen.add(rec["gen"])
    finally:
        stop.set()
        for w in writers:
            w.join(timeout=30)
    assert len(seen) > 2, "the writers did not run concurrently with the reader"
    # The writers' temporaries are named per process and all renamed away.
    assert sorted(os.listdir(path.parent)) == ["busy.json"]


@pytest.mark.parametrize("content", ["", "{", "[1, 2]", '"x"', "null", "\xff"])
def test_read_json_of_something_else_is_none(statedir: Path, content: str) -> None:
    path = statedir / "x.json"
    state.ensure_dir(statedir)
    path.write_bytes(content.encode("latin-1"))
    assert state.read_json(path) is None


def test_read_json_missing_is_none(tmp_path: Path) -> None:
    assert state.read_json(tmp_path / "none.json") is None
    (tmp_path / "file").write_text("{}")
    assert state.read_json(tmp_path / "file" / "x.json") is None  # a file where a directory is
    assert state.read_json(tmp_path) is None  # a directory


def test_remove_is_idempotent(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_text("x")
    state.remove(p)
    state.remove(p)
    assert not p.exists()


def test_records_lists_only_matching_records(statedir: Path) -> None:
    assert state.records() == []
    state.write_json(state.record_path("a"), {"name": "a"})
    state.write_json(state.record_path("b"), {"name": "b", "x": 1})
    state.write_json(state.record_path("c"), {"name": "not-c"})
    (state.ns_dir() / ".d.json.1.tmp").write_text('{"name": ".d"}')
    (state.ns_dir() / "e.json").write_text("{broken")
    (state.ns_dir() / "a.lock").write_text("")
    assert state.records() == [{"name": "a"}, {"name": "b", "x": 1}]


# -- Lock -----------------------------------------------------------------------------------

def test_lock_excludes_other_processes(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "lock"
    with Lock(path) as lock:
        assert lock.fd >= 0 and path.exists()  # its directory is made on the way
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert not try_lock_elsewhere(path)
        assert not try_lock(path)  # a second open file in the same process is excluded too
    assert lock.fd == -1
    assert try_lock_elsewhere(path)
    assert path.exists()  # kept unless discarded


def test_lock_is_released_on_an_exception(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    with pytest.raises(RuntimeError):
        with Lock(path):
            raise RuntimeError("boom")
    assert try_lock_elsewhere(path)


def _hold(path: Path, ready: Any) -> None:
    with Lock(path):
        ready.set()
        time.sleep(60)


def test_lock_of_a_killed_holder_is_free(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    ready = FORK.Event()
    p = FORK.Process(target=_hold, args=(path, ready))
    p.start()
    try:
        assert ready.wait(30)
        assert not try_lock(path)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.join(timeout=30)
    assert try_lock(path)  # never stale: no pid file to clean up


def test_entering_a_held_lock_keeps_it_and_the_with_releases_it(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    claim = Lock(path, blocking=False).__enter__()
    fd = claim.fd
    with claim as again:  # engine.up(lock=CLAIM): no second open file, which flock would exclude
        assert again is claim and claim.fd == fd
        assert not try_lock_elsewhere(path)
    assert claim.fd == -1 and try_lock_elsewhere(path) and path.exists()


def test_abandon_releases_and_removes_and_is_a_no_op_once_released(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    claim = Lock(path).__enter__()
    claim.abandon()
    assert claim.fd == -1 and not path.exists()
    with Lock(path) as lock:  # a claim used (released by its `with`) keeps its file
        pass
    lock.abandon()
    assert path.exists()


def test_hand_over_leaves_the_lock_with_a_forked_child(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    claim = Lock(path, blocking=False).__enter__()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: holds the lock through its copy until told to go
        os.close(go_w)
        os.read(go_r, 1)
        with claim:
            pass
        os._exit(0)
    os.close(go_r)
    try:
        claim.hand_over()
        assert claim.fd == -1
        assert not try_lock_elsewhere(path)  # still held: by the child
    finally:
        os.write(go_w, b"x")
        os.close(go_w)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert try_lock_elsewhere(path)


def _count(path: Path, counter: Path, times: int) -> None:
    for _ in range(times):
        with Lock(path):
            n = int(counter.read_text())
            time.sleep(0.0005)  # widen the window a lost update would need
            counter.write_text(str(n + 1))


def test_lock_serialises_read_modify_write(tmp_path: Path) -> None:
    path, counter = tmp_path / "lock", tmp_path / "counter"
    counter.write_text("0")
    procs = [FORK.Process(target=_count, args=(path, counter, 25)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert int(counter.read_text()) == 6 * 25


def _wait_then_hold(path: Path, go: Any, got: Any, release: Any) -> None:
    go.wait(30)
    with Lock(path):
        got.set()
        release.wait(30)


def test_discard_removes_the_file_and_a_waiter_moves_to_a_new_one(tmp_path: Path) -> None:
    path = tmp_path / "ns" / "web.lock"
    go, got, release = FORK.Event(), FORK.Event(), FORK.Event()
    # Forked before the lock is taken: a child forked while holding it would share the
    # locked open file (flock belongs to the open file, not the process).
    waiter = FORK.Process(target=_wait_then_hold, args=(path, go, got, release))
    waiter.start()
    with Lock(path) as lock:
        go.set()
        time.sleep(0.2)  # let the waiter block on the file about to be discarded
        assert not got.is_set()
        lock.discard()
    try:
        assert got.wait(30), "the waiter never got the lock"
        # The waiter holds a lock on the file now at the path, not on the unlinked one...
        assert path.exists()
        fd_dir = f"/proc/{waiter.pid}/fd"
        targets = [os.readlink(f"{fd_dir}/{fd}") for fd in os.listdir(fd_dir)]
        assert str(path) in targets, targets
        assert f"{path} (deleted)" not in targets, targets
        # ...so a newcomer is excluded, as it must be.
        assert not try_lock(path)
    finally:
        release.set()
        waiter.join(timeout=30)
    assert try_lock(path)


def test_discard_without_waiters(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    with Lock(path) as lock:
        lock.discard()
    assert not path.exists()


def test_nonblocking_lock_raises_blockingioerror_and_leaks_nothing(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    with Lock(path):
        fds = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            with pytest.raises(BlockingIOError):
                with Lock(path, blocking=False):
                    pass
        assert len(os.listdir("/proc/self/fd")) == fds


# -- process_start and owners --------------------------------------------------------------------

def boot_time() -> float:
    with open("/proc/stat") as fh:
        for line in fh:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise AssertionError("no btime in /proc/stat")


def test_process_start_of_this_process_is_its_start_time() -> None:
    start = state.process_start(os.getpid())
    assert isinstance(start, int)
    assert state.process_start(os.getpid()) == start  # stable
    hz = os.sysconf("SC_CLK_TCK")
    started = boot_time() + start / hz
    assert started <= time.time() + 2
    assert state.process_start(1) is not None and state.process_start(1) <= start


def _rename_and_wait(comm: str, ready: Any, release: Any) -> None:
    with open("/proc/self/comm", "w") as fh:
        fh.write(comm)
    ready.set()
    release.wait(30)


@pytest.mark.parametrize("comm", ["plain", "a) (b", "0) R 1 2 3 4 5", ") )) (", "sp ace"])
def test_process_start_of_a_child_with_a_hostile_name(comm: str) -> None:
    ready, release = FORK.Event(), FORK.Event()
    before = time.time()
    p = FORK.Process(target=_rename_and_wait, args=(comm, ready, release))
    p.start()
    try:
        assert ready.wait(30)
        with open(f"/proc/{p.pid}/comm") as fh:
            assert fh.read().rstrip("\n") == comm[:15]
        start = state.process_start(p.pid)
        assert isinstance(start, int)
        # Independent check: ticks since boot, as wall time, is when we forked it.
        started = boot_time() + start / os.sysconf("SC_CLK_TCK")
        assert before - 2 <= started <= time.time() + 2, (started, before)
        assert start >= state.process_start(os.getpid())
    finally:
        release.set()
        p.join(timeout=30)


def test_process_start_of_a_gone_process_is_none() -> None:
    p = FORK.Process(target=lambda: None)
    p.start()
    p.join(timeout=30)
    assert state.process_start(p.pid) is None
    for pid in (0, -1, 2**22 + 1):
        assert state.process_start(pid) is None


def test_owner_alive() -> None:
    me = state.me()
    assert me["owner_pid"] == os.getpid()
    assert state.owner_alive(me)
    assert not state.owner_alive({**me, "owner_start": me["owner_start"] - 1})  # the pid was reused
    assert not state.owner_alive({})
    assert not state.owner_alive({"owner_pid": None, "owner_start": None})
    assert not state.owner_alive({"owner_pid": str(os.getpid()), "owner_start": me["owner_start"]})
    assert not state.owner_alive({"owner_pid": True, "owner_start": None})


def test_a_gone_owner_is_not_alive_even_without_a_start_time() -> None:
    p = FORK.Process(target=lambda: None)
    p.start()
    p.join(timeout=30)
    # Bug fixed: a record with no start time and a dead pid compared None == None: "alive",
    # so gc never reclaimed it.
    assert not state.owner_alive({"owner_pid": p.pid, "owner_start": None})
    assert not state.owner_alive({"owner_pid": p.pid})
    assert not state.owner_alive({"owner_pid": p.pid, "owner_start": 12345})


def test_a_temporary_names_its_writer(statedir: Path) -> None:
    tmp = state.temporary(state.record_path("nsrun-0a1b2c3d"))
    assert state.temporary_writer(tmp.name) == (os.getpid(), state.process_start(os.getpid()))
    assert state.temporary_writer_alive(tmp.name) is True


@given(name=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=40),
       pid=st.integers(1, 2**22), start=st.one_of(st.none(), st.integers(0, 2**63)))
def test_temporary_writer_reads_back_what_temporary_writes(name: str, pid: int, start: int | None) -> None:
    fn = f".{name}.{pid}-{start}.tmp"
    assert state.temporary_writer(fn) == (pid, start)
    assert state.temporary_writer(f".{name}.{pid}.tmp") == (pid, None)  # the older form


@pytest.mark.parametrize("fn", ["nsrun-1.json", ".nsrun-1.json", "nsrun-1.json.12-3.tmp", ".x.12-3.tmpx",
                                ".x.ab-3.tmp", ".x.12-c.tmp", ".x.-3.tmp", ".tmp"])
def test_temporary_writer_of_other_files_is_none(fn: str) -> None:
    assert state.temporary_writer(fn) is None
    assert state.temporary_writer_alive(fn) is None


def test_a_dead_writer_is_not_alive() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    assert state.temporary_writer_alive(f".nsrun-1.json.{child.pid}-1.tmp") is False
