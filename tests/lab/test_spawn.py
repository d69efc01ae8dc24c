"""nsrun.spawn: the service starts CMD inside a namespace as a caller without root.

Each test makes a namespace in the lab host (`nsrun up`, so a record exists as the service
would have it) and calls spawn.start from this (root) process as the service would, with
pipes (or a pty) as CMD's standard descriptors, as nobody with extra groups; CMD reports
what it sees from inside.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nsrun.process import spawn
from nsrun.errors import UsageError
from support.requirements import requires

SYSTEM_PYTHON = "/usr/bin/python3"  # executable by nobody
requires(SYSTEM_PYTHON, module=True)

NOBODY, NOGROUP = 65534, 65534
EXTRA = (NOGROUP, 4242, 4343)  # supplementary groups need no /etc/group entry
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "WAYLAND_DISPLAY": "wayland-7", "LANG": "C.UTF-8"}

REPORT = r"""
import json, os
status = {}
with open("/proc/self/status") as fh:
    for line in fh:
        key, _, value = line.partition(":")
        status[key] = value.strip()
fds = {}
for entry in os.listdir("/proc/self/fd"):
    try:
        fds[entry] = os.readlink(f"/proc/self/fd/{entry}")
    except OSError:
        pass
print(json.dumps({
    "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
    "caps": {k: status[k] for k in ("CapPrm", "CapEff", "CapAmb", "CapInh")},
    "nnp": status["NoNewPrivs"], "net": os.stat("/proc/self/ns/net").st_ino,
    "mnt": os.stat("/proc/self/ns/mnt").st_ino, "cwd": os.getcwd(), "env": dict(os.environ),
    "fds": fds, "sid": os.getsid(0) == os.getpid(), "pgrp": os.getpgrp() == os.getpid(),
}))
"""


class Run:
    """One spawn.start with pipes for 0, 1, 2: what CMD wrote, how it ended."""

    def __init__(self, ns: str, argv: list[str], env: dict[str, str] | None = None, cwd: str = "/",
                 groups: tuple[int, ...] = EXTRA, stdin: bytes = b"", **kw: Any) -> None:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.pipes = {0: os.fstat(in_r).st_ino, 1: os.fstat(out_w).st_ino, 2: os.fstat(err_w).st_ino}
        try:
            self.started = spawn.start(ns, argv, ENV if env is None else env, cwd, NOBODY, NOGROUP, groups,
                                       stdio=(in_r, out_w, err_w), **kw)
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        os.write(in_w, stdin)
        os.close(in_w)
        got = collect([out_r, err_r])
        self.out, self.err = got[out_r].decode(), got[err_r].decode()
        self.status = spawn.wait_status(self.started)

    def report(self) -> dict[str, Any]:
        assert self.status == (0, None), (self.status, self.err)
        return dict(json.loads(self.out))


def collect(fds: list[int], timeout: float = 60) -> dict[int, bytes]:
    """Everything written into the pipes FDS until each is closed; closes them."""
    out = {fd: b"" for fd in fds}
    open_fds = list(fds)
    deadline = time.monotonic() + timeout
    while open_fds:
        left = deadline - time.monotonic()
        assert left > 0, f"the pipes never closed: {out}"
        ready, _, _ = select.select(open_fds, [], [], left)
        for fd in ready:
            data = os.read(fd, 65536)
            if data:
                out[fd] += data
            else:
                os.close(fd)
                open_fds.remove(fd)
    return out


@pytest.fixture
def ns(lab: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"sp-{lab.lab.id}"
    r = lab.nsrun("up", name, "-p", "isolated")
    assert r.returncode == 0, r.stderr
    monkeypatch.setenv("NSRUN_STATE_DIR", str(lab.statedir))  # the service's view of the records
    try:
        yield name
    finally:
        assert lab.nsrun("down", name).returncode == 0


@pytest.fixture
def public_dir() -> Iterator[str]:
    """A directory nobody may enter (tmp_path's parents are root's, mode 0700)."""
    d = tempfile.mkdtemp(prefix="nsrun-spawn-", dir="/tmp")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_cmd_runs_as_the_caller_inside_without_capabilities(ns: str, public_dir: str) -> None:
    """Acceptance 5's inside view: uid, gid and groups are the caller's, no capability is
    left (permitted, effective, ambient), no_new_privs is set, the network namespace is
    NAME's (not the service's), the environment and the working directory are the ones
    given, 0/1/2 are the descriptors given and nothing else is open, in a session of its own."""
    run = Run(ns, [SYSTEM_PYTHON, "-c", REPORT], cwd=public_dir)
    got = run.report()
    assert run.started.failure is None and run.err == ""
    assert (got["uid"], got["euid"], got["gid"]) == (NOBODY, NOBODY, NOGROUP)
    assert got["groups"] == sorted(EXTRA)
    assert got["caps"]["CapPrm"] == got["caps"]["CapEff"] == got["caps"]["CapAmb"] == "0000000000000000"
    assert got["nnp"] == "1"
    assert got["net"] == os.stat(f"/run/netns/{ns}").st_ino != os.stat("/proc/self/ns/net").st_ino
    assert got["mnt"] != os.stat("/proc/self/ns/mnt").st_ino  # a private mount namespace
    assert got["env"] == ENV
    assert got["cwd"] == public_dir
    pipes = {int(fd): target for fd, target in got["fds"].items() if target.startswith("pipe:")}
    assert pipes == {fd: f"pipe:[{ino}]" for fd, ino in run.pipes.items()}
    assert set(got["fds"]) == {"0", "1", "2"}, got["fds"]  # (the listing's own is closed by now)
    assert got["sid"] and got["pgrp"]


@pytest.mark.parametrize("thread", [False, True], ids=["main-thread", "worker-thread"])
def test_signals_are_cmds_defaults(ns: str, thread: bool) -> None:
    """The service's ignored and blocked signals are not CMD's, whichever of the service's
    threads starts it (the mask is the thread's; after the fork the child's one thread is
    Python's main thread)."""
    runs: list[Run] = []

    def go() -> None:
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
        try:
            runs.append(Run(ns, ["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"]))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    old_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        if thread:
            th = threading.Thread(target=go)
            th.start()
            th.join(60)
        else:
            go()
    finally:
        signal.signal(signal.SIGHUP, old_hup)
    run, = runs
    assert run.status == (0, None), run.err
    assert run.out.split() == ["SigBlk:", "0000000000000000", "SigIgn:", "0000000000000000"], run.out


def test_stdin_reaches_cmd(ns: str) -> None:
    run = Run(ns, ["sh", "-c", "read line; echo \"got $line\"; echo oops >&2"], stdin=b"hello\n")
    assert run.status == (0, None) and run.out == "got hello\n" and run.err == "oops\n"


@pytest.mark.parametrize("argv, code, sig, message", [
    (["true"], 0, None, None),
    (["sh", "-c", "exit 7"], 7, None, None),
    (["no-such-command-here"], 127, None, "nsrun: no-such-command-here: not found"),
    (["/no/such/path"], 127, None, "nsrun: /no/such/path: not found"),
    (["/etc/passwd"], 126, None, "nsrun: /etc/passwd: cannot execute: Permission denied"),
    (["/etc"], 126, None, "nsrun: /etc: cannot execute: Permission denied"),
    (["sh", "-c", "kill -TERM $$"], 128 + signal.SIGTERM, signal.SIGTERM, None),
    (["sh", "-c", "kill -KILL $$"], 128 + signal.SIGKILL, signal.SIGKILL, None),
])
def test_exit_codes(ns: str, argv: list[str], code: int, sig: int | None, message: str | None) -> None:
    run = Run(ns, argv)
    assert run.status == (code, sig), (run.status, run.err)
    if message is None:
        assert run.started.failure is None and run.err == ""
    else:
        assert run.err == message + "\n"  # one line, on CMD's stderr, as `nsrun -- CMD` says it
        assert run.started.failure == (code, message[len("nsrun: "):])


def test_path_lookup_uses_the_given_environment(ns: str, public_dir: str) -> None:
    """CMD is looked up on the PATH of the environment sent, not the service's."""
    tool = os.path.join(public_dir, "only-here")
    with open(tool, "w") as fh:
        fh.write("#!/bin/sh\necho found me\n")
    os.chmod(tool, 0o755)
    assert Run(ns, ["only-here"], env={"PATH": f"/nowhere:{public_dir}"}).out == "found me\n"
    assert Run(ns, ["only-here"]).status == (127, None)
    os.chmod(tool, 0o644)  # found but not executable: 126, as execvp says
    run = Run(ns, ["only-here"], env={"PATH": f"{public_dir}:/nowhere"})
    assert run.status == (126, None), run.err


def test_cwd_is_entered_as_the_caller_with_a_fallback(ns: str, public_dir: str, tmp_path: Any) -> None:
    """A directory the caller may not enter stays closed (the change is made after the
    switch); CMD then starts in the home given, else /, and says so on its stderr."""
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    run = Run(ns, ["pwd"], cwd=str(closed))
    assert run.status == (0, None) and run.out == "/\n"
    assert run.err == f"nsrun: cannot change to directory {closed}: Permission denied; running in /\n"
    run = Run(ns, ["pwd"], cwd="/no/such/dir", home=public_dir)
    assert run.out == f"{public_dir}\n" and "No such file or directory; running in " + public_dir in run.err


def test_controlling_terminal(ns: str) -> None:
    """With controlling_tty, fd 0 (a pty slave) is CMD's controlling terminal and CMD's
    process group its foreground; without, CMD has no terminal at all."""
    master, slave = os.openpty()
    probe = ("import fcntl, os, struct; os.open('/dev/tty', os.O_RDWR); "
             "sid = struct.unpack('i', fcntl.ioctl(0, 0x5429, b'0000'))[0]; "  # TIOCGSID
             "print(sid == os.getsid(0) == os.getpid(), os.tcgetpgrp(0) == os.getpgrp())")
    try:
        started = spawn.start(ns, [SYSTEM_PYTHON, "-c", probe], ENV, "/", NOBODY, NOGROUP, EXTRA,
                              stdio=(slave, slave, slave), controlling_tty=True)
        os.close(slave)
        out = b""
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            assert ready, out
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: CMD closed the slave
                break
            if not data:
                break
            out += data
        assert spawn.wait_status(started) == (0, None), out
        assert out.decode().split() == ["True", "True"], out
    finally:
        os.close(master)
    run = Run(ns, [SYSTEM_PYTHON, "-c", "import os; os.open('/dev/tty', os.O_RDWR)"])
    assert run.status == (1, None) and "No such device or address" in run.err
    # stdin a pipe, stdout and stderr a terminal (`... | nsrun -- CMD`): the terminal is fd 1.
    master, slave = os.openpty()
    in_r, in_w = os.pipe()
    try:
        probe_out = "import os; os.open('/dev/tty', os.O_RDWR); print(os.ttyname(1) == os.ttyname(2))"
        started = spawn.start(ns, [SYSTEM_PYTHON, "-c", probe_out], ENV, "/", NOBODY, NOGROUP, EXTRA,
                              stdio=(in_r, slave, slave), controlling_tty=True)
        for fd in (slave, in_r, in_w):
            os.close(fd)
        assert spawn.wait_status(started) == (0, None)
        assert os.read(master, 4096).split() == [b"True"]
    finally:
        os.close(master)


def _children() -> set[str]:
    out: set[str] = set()
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as fh:
            out |= set(fh.read().split())
    return out


def test_refusals_fork_nothing(ns: str) -> None:
    before = _children()
    null = os.open("/dev/null", os.O_RDWR)
    for args, kw in [((ns, [], ENV, "/", NOBODY, NOGROUP, EXTRA), {}),
                     (("no-such-ns", ["true"], ENV, "/", NOBODY, NOGROUP, EXTRA), {}),
                     (("../x", ["true"], ENV, "/", NOBODY, NOGROUP, EXTRA), {}),
                     ((ns, ["true"], ENV, "/", 0, 0, (0,)), {}),
                     ((ns, ["true"], ENV, "relative", NOBODY, NOGROUP, EXTRA), {}),
                     ((ns, ["true"], {"A=B": "c"}, "/", NOBODY, NOGROUP, EXTRA), {}),
                     ((ns, ["tr\0ue"], ENV, "/", NOBODY, NOGROUP, EXTRA), {}),
                     ((ns, ["true"], ENV, "/", NOBODY, NOGROUP, EXTRA), {"controlling_tty": True,
                                                                         "stdio": (null, null, null)})]:
        with pytest.raises(UsageError):
            spawn.start(*args, **kw)  # type: ignore[arg-type]
    os.close(null)
    assert _children() == before  # no child was made


def test_wait_status_without_blocking(ns: str) -> None:
    started = spawn.start(ns, ["sleep", "30"], ENV, "/", NOBODY, NOGROUP, EXTRA,
                          stdio=(os.open("/dev/null", os.O_RDONLY),) * 3)
    assert spawn.wait_status(started, block=False) is None
    ready, _, _ = select.select([started.pidfd], [], [], 0)
    assert not ready  # the pidfd becomes readable when CMD ends: the service waits on it
    signal.pidfd_send_signal(started.pidfd, signal.SIGINT)
    ready, _, _ = select.select([started.pidfd], [], [], 30)
    assert ready
    assert spawn.wait_status(started, block=False) == (128 + signal.SIGINT, signal.SIGINT)


class Guard:
    """A meta-path finder that reports, into FD, each import made in a forked child."""

    def __init__(self, fd: int, pid: int) -> None:
        self.fd, self.pid = fd, pid

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if os.getpid() != self.pid:
            os.write(self.fd, f"import of {name} after the fork\n".encode())


def test_the_child_imports_nothing_and_threads_may_start_at_once(ns: str) -> None:
    """The service is multithreaded: a module being imported by another thread at the fork
    would hang a child that imports it. Between fork and exec the child imports nothing
    (a meta-path finder that reports any import made in a forked child); and starts from
    several threads at once all succeed. The finder does see an import in a forked child
    (checked first), so the test can fail."""
    import sys

    r, w = os.pipe()
    guard = Guard(w, os.getpid())
    sys.meta_path.insert(0, guard)  # type: ignore[arg-type]
    try:
        pid = os.fork()
        if pid == 0:
            try:
                import colorsys  # noqa: F401  (not imported anywhere yet)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert "colorsys" not in sys.modules
        results: list[Any] = []

        def one(argv: list[str]) -> None:
            results.append(Run(ns, argv).status)

        threads = [threading.Thread(target=one, args=(argv,))
                   for argv in (["true"], ["sh", "-c", "exit 3"], ["no-such-command-here"], ["/etc/passwd"])]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
    finally:
        sys.meta_path.remove(guard)  # type: ignore[arg-type]
        os.close(w)
    reported = collect([r])[r].decode()
    assert reported == "import of colorsys after the fork\n"
    assert sorted(results) == sorted([(0, None), (3, None), (127, None), (126, None)])


# What CMD sees of the host's resolver, from inside: resolv.conf, /sys, whether nscd's and
# resolved's sockets answer a connect, and resolved's stub file.
RESOLVER_VIEW = ("cat /etc/resolv.conf; echo '#'; ls /sys/class/net; echo '#'; "
                 f"{SYSTEM_PYTHON} -c \"import socket\n"
                 "for p in ('/run/nscd/socket', '/var/run/nscd/socket', '/run/systemd/resolve/io.systemd.Resolve'):\n"
                 "    print(p, socket.socket(socket.AF_UNIX).connect_ex(p) == 0)\"; echo '#'; "
                 "cat /run/systemd/resolve/stub-resolv.conf")
# spawn.start as the service calls it, from a process of its own (run inside dnslab's /run)
SPAWN = f"""
import sys
from nsrun.process import spawn
started = spawn.start(sys.argv[1], ["sh", "-c", sys.argv[2]], {ENV!r}, "/", {NOBODY}, {NOGROUP}, {EXTRA!r})
raise SystemExit(spawn.wait_status(started).code)
"""


def test_like_nsrun_exec_in_a_wired_namespace(lab: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Private mounts as `nsrun exec` makes them: the namespace's /sys, its /etc/netns files
    (resolv.conf) bound over /etc, and the host's resolver hidden. The host's resolver is
    real here: each run is inside the DNS lab's private /run (tests/support/dnslab.py), with
    listeners at nscd's and resolved's sockets and resolved's stub files. Neither listener
    may see a connection from CMD (nobody; root's user lookups on the host's side may ask
    nscd), and the stub file shows the namespace's resolv.conf. (Issue 27: with no nscd or
    resolved on the machine, this test compared two empty outputs and could not fail.)"""
    from conftest import SUPPORT

    name = f"spn-{lab.lab.id}"
    r = lab.nsrun("up", name, "-p", "nat")
    assert r.returncode == 0, r.stderr
    monkeypatch.setenv("NSRUN_STATE_DIR", str(lab.statedir))

    def in_dnslab(log: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
        log.touch()
        return subprocess.run([sys.executable, str(SUPPORT / "dnslab.py"), "sockets", str(log), "--", *argv],
                              env=lab.env, capture_output=True, text=True, timeout=60)

    try:
        spawned = in_dnslab(tmp_path / "spawn.log", [sys.executable, "-c", SPAWN, name, RESOLVER_VIEW])
        assert spawned.returncode == 0, spawned.stderr
        ref = in_dnslab(tmp_path / "exec.log",
                        lab.nsrun_argv("exec", name, "-u", "nobody", "--", "sh", "-c", RESOLVER_VIEW))
        assert ref.returncode == 0, ref.stderr
        resolv, links, connects, stub = spawned.stdout.split("#\n")
        assert connects.split()[1::2] == ["False", "False", "False"], connects
        assert "eth0" in links.split() and "nameserver" in resolv
        with open(f"/etc/netns/{name}/resolv.conf") as fh:
            assert resolv == fh.read()
        assert stub == resolv  # resolved's stub file shows the namespace's own
        assert (spawned.stdout, spawned.stderr) == (ref.stdout, ref.stderr)  # and `nsrun exec` sees the same
        for log in ("spawn.log", "exec.log"):  # root's user lookups on the host's side may ask nscd
            assert f" {NOBODY}\n" not in (tmp_path / log).read_text(), (log, (tmp_path / log).read_text())
    finally:
        assert lab.nsrun("down", name).returncode == 0
    # The control: the listeners answer nobody where nothing hides them (the host's side).
    control = in_dnslab(tmp_path / "host.log", ["setpriv", f"--reuid={NOBODY}", f"--regid={NOGROUP}", "--clear-groups",
                                                "sh", "-c", RESOLVER_VIEW])
    assert control.stdout.split("#\n")[2].split()[1::2] == ["True", "True", "True"], control.stdout
    seen = [line for line in (tmp_path / "host.log").read_text().splitlines() if line.endswith(f" {NOBODY}")]
    # (in whichever order the listeners' threads logged them: seen in either on Debian 12)
    assert sorted(seen) == [f"nscd {NOBODY}", f"nscd {NOBODY}", f"resolved {NOBODY}"], seen


def test_umask_and_cgroup(ns: str) -> None:
    """CMD gets the caller's umask, and starts in the run's cgroup when one is given."""
    from nsrun.linux import cgroup

    assert Run(ns, ["sh", "-c", "umask"], umask=0o027).out == "0027\n"
    requires("writable cgroup v2")
    group = cgroup.create(f"spawn-test-{os.getpid()}")
    assert group is not None
    try:
        run = Run(ns, ["cat", "/proc/self/cgroup"], cgroup=group)
        mnt = cgroup.mountpoint()
        assert mnt is not None
        assert f"\n0::/{os.path.relpath(group, mnt)}\n" in "\n" + run.out, run.out
        assert f"0::/{os.path.relpath(group, mnt)}\n" not in Run(ns, ["cat", "/proc/self/cgroup"]).out
    finally:
        cgroup.remove(group)
