"""Issues 12 and 15: the supervisor's signals (as sudo does), its exit by CMD's signal, CMD's
signal dispositions, and teardown that no forking process escapes.

Terminal cases run nsrun under a pty made here (tests/support/terminals.py): a small "shell"
is the session leader of the pty, and nsrun runs as its foreground job, as from an interactive
shell. The supervisor's report pipe, without the lab: tests/unit/test_report.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from support.terminals import SYSTEM_PYTHON, Term
from support.requirements import requires

COUNTER = r"""
import signal, sys, time
n = 0
def h(s, f):
    global n
    n += 1
signal.signal(signal.SIGINT, h)
print("ready", flush=True)
while not n:
    time.sleep(0.005)
time.sleep(0.5)  # cleaning up: a second SIGINT would arrive now
print("count", n, flush=True)
"""


def _count_sigints(lab, how: str, user: list[str]) -> int:
    term = Term(lab.nsrun_argv(*user, "-p", "isolated", "--", SYSTEM_PYTHON, "-c", COUNTER), lab.env)
    try:
        nsrun = int(term.line_after("nsrun"))
        term.expect("ready")
        if how == "ctrl-c":
            term.type(b"\x03")
        else:
            os.kill(nsrun, signal.SIGINT)
        count = int(term.line_after("count"))
        assert term.line_after("rc") == "0"
        return count
    finally:
        term.close()


@pytest.mark.parametrize("user", [[], ["-u", "nobody"]], ids=["root", "nobody-pty"])
def test_one_ctrl_c_gives_cmd_one_sigint(lab, user):
    """Issue 12 acceptance 2: the terminal signals CMD's process group; nsrun must not
    deliver the same ^C again (20 of 20 runs)."""
    runs = 20 if not user else 5  # the pty case: ^C is a byte for CMD's own terminal
    counts = [_count_sigints(lab, "ctrl-c", user) for _ in range(runs)]
    assert counts == [1] * runs, counts


@pytest.mark.parametrize("user", [[], ["-u", "nobody"]], ids=["root", "nobody-pty"])
def test_kill_int_to_nsrun_still_reaches_cmd_once(lab, user):
    counts = [_count_sigints(lab, "kill", user) for _ in range(3)]
    assert counts == [1] * 3, counts


# -- nsrun ends as CMD ended -----------------------------------------------------------------

def test_shell_sees_128_plus_n_when_cmd_dies_of_a_signal(lab):
    """Issue 12 acceptance 3 (the shell's side): `sh -c 'nsrun -- sh -c "kill -TERM \\$\\$"';
    echo $?` prints 143, because nsrun itself ends by SIGTERM (systemd's clean stop)."""
    nsrun = " ".join(lab.nsrun_argv())
    r = subprocess.run(["sh", "-c", f"{nsrun} -p isolated -- sh -c 'kill -TERM $$'; echo $?"],
                       env=lab.env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.stdout.strip() == "143", r.stderr
    direct = lab.nsrun("-p", "isolated", "--", "sh", "-c", "kill -TERM $$")
    assert direct.returncode == -signal.SIGTERM, direct.stderr


def test_killed_by_sigterm_from_outside_nsrun_ends_by_sigterm(lab):
    """What systemd does with KillMode=mixed: SIGTERM to nsrun alone; CMD dies of it, and
    so does nsrun after the namespace is down (systemd counts that as success)."""
    p = lab.popen("--", "sh", "-c", "echo $NSRUN_NETNS; exec sleep 60")
    netns_name = p.stdout.readline().strip()
    time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=30)
    assert p.returncode == -signal.SIGTERM
    assert not os.path.exists(f"/run/netns/{netns_name}")


def test_no_core_file_from_nsrun(lab, tmp_path):
    """CMD dies of SIGQUIT (which dumps core by default): nsrun ends by SIGQUIT too, but
    leaves no core file of its own even where cores are allowed."""
    import resource

    def unlimited_cores() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    r = subprocess.run(lab.nsrun_argv("-p", "isolated", "--", "sh", "-c", "ulimit -c 0; kill -QUIT $$"),
                       env=lab.env, capture_output=True, timeout=60, cwd=tmp_path,
                       preexec_fn=unlimited_cores)
    assert r.returncode == -signal.SIGQUIT, r.stderr
    assert os.listdir(tmp_path) == []


# -- what CMD starts with --------------------------------------------------------------------

def test_cmd_starts_with_default_dispositions_and_empty_mask(lab):
    """Issue 15 item 4: Python ignores SIGPIPE and SIGXFSZ; CMD must not inherit that."""
    r = lab.nsrun("-p", "isolated", "--", "sh", "-c",
                  "grep -E '^Sig(Blk|Ign)' /proc/self/status; yes | head -1")
    assert r.returncode == 0, r.stderr
    assert "Broken pipe" not in r.stderr, r.stderr
    lines = r.stdout.split("\n")
    assert lines[:3] == ["SigBlk:\t0000000000000000", "SigIgn:\t0000000000000000", "y"], r.stdout


@pytest.mark.parametrize("sig", [signal.SIGPIPE, signal.SIGXFSZ])
def test_cmd_killed_by_pipe_or_xfsz_is_reported(lab, sig):
    nsrun = " ".join(lab.nsrun_argv())
    r = subprocess.run(["sh", "-c", f"{nsrun} -p isolated -- sh -c 'kill -{int(sig)} $$'; echo $?"],
                       env=lab.env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.stdout.strip() == str(128 + sig), r.stderr


def test_signals_ignored_by_the_caller_stay_ignored(lab):
    """`nohup nsrun -- CMD`: CMD keeps SIGHUP ignored, as it would without nsrun."""
    r = subprocess.run(["nohup", *lab.nsrun_argv("-p", "isolated", "--", "grep", "^SigIgn", "/proc/self/status")],
                       env=lab.env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.stdout.strip() == f"SigIgn:\t{1 << (signal.SIGHUP - 1):016x}", (r.stdout, r.stderr)


# -- every catchable signal is passed on ---------------------------------------------------

PASSED = [signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGWINCH, signal.SIGPWR,
          signal.SIGURG, signal.SIGVTALRM, signal.SIGRTMIN + 3, signal.SIGHUP, signal.SIGINT]

RECEIVER = r"""
import os, signal, sys
want = [int(s) for s in sys.argv[1:]]
for s in want:
    signal.signal(s, lambda n, f: print("got", n, flush=True))
print("ready", os.environ["NSRUN_NETNS"], flush=True)
while True:
    signal.pause()
"""


def test_every_catchable_signal_reaches_cmd_and_nsrun_survives(lab):
    """Issue 15 (Low): USR1, USR2, ALRM... killed the supervisor, leaving the namespace."""
    p = lab.popen("--", "python3", "-u", "-c", RECEIVER, *map(str, map(int, PASSED)))
    try:
        ready, netns_name = p.stdout.readline().split()
        assert ready == "ready"
        for sig in PASSED:
            p.send_signal(sig)
            line = p.stdout.readline().strip()
            assert line == f"got {int(sig)}", (sig, line)
            assert p.poll() is None
        p.send_signal(signal.SIGTERM)  # the receiver dies of it
        p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == -signal.SIGTERM
    assert not os.path.exists(f"/run/netns/{netns_name}")


# -- teardown kills every process of the namespace -------------------------------------------

FORKER = r"""
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
print(os.environ["NSRUN_NETNS"], os.getpgrp(), flush=True)
os.close(1)
end = time.monotonic() + 60  # a bound, should it escape
while time.monotonic() < end:  # the parent exits as soon as its child exists: the pid changes
    try:
        if os.fork():
            os._exit(0)
    except OSError:
        pass
    time.sleep(0.001)
"""

# Runs ARGV as a child subreaper: every process that ARGV's processes orphan becomes its
# child, so "did anything survive" is a question waitpid answers without racing a forking
# process through /proc. Prints ARGV's first line and status, then, after a line on
# stdin, whether any descendant is still alive; then kills and reaps them all.
REAPER = r"""
import ctypes, json, os, signal, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True, start_new_session=True)
first = p.stdout.readline()
print(json.dumps({"first": first}), flush=True)
rest = p.stdout.read()
print(json.dumps({"rc": p.wait()}), flush=True)
import select
while not select.select([0], [], [], 0.01)[0]:  # reap orphans as they end, as an init does
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
sys.stdin.readline()
survived = True
deadline = time.monotonic() + 2  # a killed process may need a moment to be reapable
while survived and time.monotonic() < deadline:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
        time.sleep(0.01)
    except ChildProcessError:
        survived = False
info = []
if survived:
    for t in os.listdir(f"/proc/{os.getpid()}/task"):
        for c in open(f"/proc/{os.getpid()}/task/{t}/children").read().split():
            try:
                info.append([c, open(f"/proc/{c}/stat").read()[:60], os.readlink(f"/proc/{c}/ns/net")])
            except OSError as e:
                info.append([c, str(e)])
print(json.dumps({"survived": info if survived else False}), flush=True)
if survived:
    for group in {p.pid, int(first.split()[1])} - {os.getpgrp()}:  # never the test's own
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
"""


class Reaped:
    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.p = subprocess.Popen([sys.executable, "-c", REAPER, *argv], env=env, cwd=REPO, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def read(self, key: str) -> object:
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        assert line, "the reaper ended early"
        return json.loads(line)[key]

    def survived(self) -> bool:
        assert self.p.stdin is not None
        self.p.stdin.write("check\n")
        self.p.stdin.flush()
        found = self.read("survived")
        self.p.wait(30)
        return bool(found)

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def test_a_forking_process_does_not_escape_teardown(lab):
    """Issue 15 acceptance 4: a process that keeps forking while its parent exits, and
    ignores SIGTERM: after the run, no process of CMD's survives (all CMD's processes
    are nobody's here) and no namespace is orphaned."""
    run = Reaped(lab.nsrun_argv("-u", "nobody", "--", SYSTEM_PYTHON, "-c", FORKER), lab.env)
    try:
        netns_name = str(run.read("first")).split()[0]
        assert netns_name.startswith("nsrun-"), netns_name
        assert run.read("rc") == 0
        assert not run.survived(), "the forking process survived the run"
        assert not os.path.exists(f"/run/netns/{netns_name}")
    finally:
        run.close()


def test_stop_processes_without_cgroup_loops_until_none(lab, monkeypatch):
    """Where there is no cgroup v2 (netns.stop_processes alone): it keeps killing what it
    finds until a scan finds nothing."""
    from nsrun.linux import cgroup, netns

    monkeypatch.setattr(cgroup, "of_namespace", lambda name, pids: set())
    name = f"nsrun-t{os.getpid() % 100000:05d}"
    subprocess.run(["ip", "netns", "add", name], check=True)  # the session's private /run/netns
    run = Reaped(["ip", "netns", "exec", name, "setpriv", "--reuid=65534", "--regid=65534",
                  "--clear-groups", SYSTEM_PYTHON, "-c", FORKER], {**lab.env, "NSRUN_NETNS": name})
    try:
        assert str(run.read("first")).split()[0] == name
        run.read("rc")
        assert netns.stop_processes(name, grace=0.3)
        assert not run.survived(), "the forking process survived stop_processes"
    finally:
        run.close()
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_run_cgroup_is_removed(lab):
    """The run's cgroup (where cgroup v2 is writable) is gone after the run."""
    from nsrun.linux import cgroup

    requires("writable cgroup v2")
    r = lab.nsrun("-p", "isolated", "--", "sh", "-c", "echo $NSRUN_NETNS; cat /proc/self/cgroup")
    assert r.returncode == 0, r.stderr
    netns_name = r.stdout.split()[0]
    mnt = cgroup.mountpoint()
    assert mnt is not None
    lines = [line for line in r.stdout.splitlines() if line.startswith("0::")]
    assert lines and lines[0].endswith(f"/{cgroup.PREFIX}{netns_name}"), r.stdout
    assert not os.path.exists(os.path.join(mnt, lines[0][3:].lstrip("/")))


def test_cgroup_of_a_killed_supervisor_is_reclaimed(lab):
    """The supervisor is SIGKILLed; CMD ignores the parent-death SIGTERM. The next run's
    quick reclaim kills CMD through the run's cgroup and removes the cgroup."""
    from nsrun.linux import cgroup

    requires("writable cgroup v2")
    prog = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print(os.environ['NSRUN_NETNS'], open('/proc/self/cgroup').read().split('::')[-1].strip(), "
            "os.getpid(), flush=True); time.sleep(120)")
    p = subprocess.Popen(lab.nsrun_argv("-p", "isolated", "--", "python3", "-c", prog), env=lab.env,
                         stdout=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True)
    try:
        netns_name, group, pid = p.stdout.readline().split()
        path = os.path.join(cgroup.mountpoint(), group.lstrip("/"))
        assert group.endswith(f"/{cgroup.PREFIX}{netns_name}") and os.path.isdir(path)
        p.kill()  # the supervisor alone
        p.wait()
        time.sleep(0.3)
        assert os.path.exists(f"/proc/{pid}")  # CMD ignored its parent-death signal
        assert lab.nsrun("-p", "isolated", "--", "true").returncode == 0  # reclaims the dead run
        assert not os.path.exists(path)
        assert not os.path.exists(f"/run/netns/{netns_name}")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_cgroup_leftovers_are_listed_for_gc(lab):
    """A run cgroup whose namespace is gone and that holds no process (its supervisor
    crashed and CMD ended) is what gc removes (cgroup.leftovers)."""
    from nsrun.linux import cgroup

    requires("writable cgroup v2")
    path = cgroup.create("nsrun-deadbeef")
    assert path is not None
    try:
        assert path in cgroup.leftovers(set())
        assert path not in cgroup.leftovers({"nsrun-deadbeef"})
    finally:
        assert cgroup.remove(path)
