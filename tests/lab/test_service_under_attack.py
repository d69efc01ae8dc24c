"""Issue 24, part A: the warm service under attack by one member of its socket's group.

The service runs in the lab host with a policy of the test's own that lets nobody and
daemon use profiles nat and gw1; daemon attacks (tests/support/attacks.py, run as daemon
with setpriv): many slow connections, descriptors on every byte of a frame it never
finishes, half-sent 1 MiB frames. While each attack lasts, root's run and nobody's run must
succeed within a few seconds, and the service's descriptors and memory stay bounded. Then
the holes that were not attacks: a teardown that fails is retried by the service alone; the
policy's limit and `--user-limit` hold against racing requests and count named namespaces;
`ls` shows a caller without root no one's command line; such a caller cannot pick the
firewall backend; a service killed by SIGABRT mid-run loses no run. Figures go to stderr
(`pytest -s` shows them).
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import LabRunner
from support import attacks
from support.service import Service
from support.terminals import SYSTEM_PYTHON

HOST_KINDS = ["legacy"]

POLICY = """\
version = 1
[[allow]]
users = ["nobody", "daemon"]
profiles = ["gw1", "nat"]
limit = {limit}
"""
QUICK = 5.0  # seconds: what "within a few seconds" means for a run during an attack
SUPPORT = Path(attacks.__file__).parent


def policy_service(lab: LabRunner, tmp_path: Path, *args: str, limit: int = 4, **kw: object) -> Service:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.format(limit=limit))
    policy.chmod(0o644)
    svc = Service(lab, tmp_path / "daemon.log", "--policy", str(policy), *args, **kw).start()  # type: ignore[arg-type]
    os.chmod(svc.sock, 0o666)  # the test's socket is root's (no group nsrun here)
    return svc


def as_user(lab: LabRunner, user: str, argv: list[str]) -> list[str]:
    who = pwd.getpwnam(user)
    return lab.host_argv(["setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", "--init-groups",
                          "--inh-caps=-all", *argv])


def user_nsrun(lab: LabRunner, public: dict[str, str], user: str, *args: str,
               env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(as_user(lab, user, lab.nsrun_argv(*args)[2:]), env={**lab.env, **public, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, cwd="/")


def stats(svc: Service) -> tuple[int, int]:
    """The service's resident memory (KiB) and open descriptors."""
    assert svc.proc is not None
    status = Path(f"/proc/{svc.proc.pid}/status").read_text()
    rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    return rss, len(os.listdir(f"/proc/{svc.proc.pid}/fd"))


@contextmanager
def attack(lab: LabRunner, svc: Service, kind: str, count: int) -> Iterator[subprocess.Popen[str]]:
    """COUNT connections of KIND held on the service by daemon, until the block ends."""
    argv = as_user(lab, "daemon", [SYSTEM_PYTHON, "-c", Path(attacks.__file__).read_text(), kind, str(count),
                                   str(svc.sock)])
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.communicate()
        time.sleep(1)  # the connections reach the service and are read from
        yield p
    finally:
        p.kill()
        p.communicate()


def timed(run: object) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.monotonic()
    r = run()  # type: ignore[operator]
    return time.monotonic() - t0, r


def served_during(lab: LabRunner, public: dict[str, str], svc: Service, what: str,
                  root_env: dict[str, str] | None = None) -> dict[str, float]:
    """Root's run and nobody's run, each timed; the service's memory and descriptors."""
    root_s, r = timed(lambda: lab.nsrun("--", "true", env=root_env))
    assert r.returncode == 0, (what, r.stderr, svc.log()[-3000:])
    user_s, u = timed(lambda: user_nsrun(lab, public, "nobody", "--", "true"))
    assert u.returncode == 0, (what, u.stderr, svc.log()[-3000:])
    rss, fds = stats(svc)
    figures = {"root_s": root_s, "user_s": user_s, "rss_mib": rss / 1024, "fds": fds}
    sys.stderr.write(f"\n{what}: root's run {root_s:.2f} s, nobody's run {user_s:.2f} s; "
                     f"the service: {rss / 1024:.0f} MiB resident, {fds} descriptors\n")
    return figures


# -- attacks -----------------------------------------------------------------------------------

def test_slowloris_of_one_user_locks_out_no_one(lab, tmp_path, public_nsrun):
    """600 connections that send a byte a second: the whole-request deadline drops each
    after 10 s, and daemon holds no more than its share of the slots."""
    svc = policy_service(lab, tmp_path)
    try:
        with attack(lab, svc, "slow", 600):
            figures = served_during(lab, public_nsrun, svc, "600 slow connections")
            time.sleep(10)  # past the request deadline: dropped, opened again
            later = served_during(lab, public_nsrun, svc, "600 slow connections, 10 s on")
        for f in (figures, later):
            assert f["root_s"] < QUICK and f["user_s"] < QUICK, f
            assert f["fds"] < 256, f
        assert svc.proc is not None and svc.proc.poll() is None, svc.log()
        assert "Traceback" not in svc.log(), svc.log()[-3000:]
    finally:
        svc.stop()


def test_descriptor_flood_never_crashes_the_service(lab, tmp_path, public_nsrun):
    """Three descriptors on every byte of frames never finished: refused as they arrive, so
    the service stays far below FD_SETSIZE, and root's run that has libnftables (select())
    change the firewall in the service succeeds."""
    svc = policy_service(lab, tmp_path)
    try:
        with attack(lab, svc, "fds", 100):
            figures = served_during(lab, public_nsrun, svc, "descriptor flood (100 connections)",
                                    root_env={"NSRUN_FIREWALL": "nftables"})
            time.sleep(2)
            later = served_during(lab, public_nsrun, svc, "descriptor flood, 2 s on",
                                  root_env={"NSRUN_FIREWALL": "nftables"})
        for f in (figures, later):
            assert f["root_s"] < QUICK and f["user_s"] < QUICK, f
            assert f["fds"] < 512, f
        assert svc.proc is not None and svc.proc.poll() is None, svc.log()[-3000:]
        assert "more than 3 descriptors" in svc.log()
    finally:
        svc.stop()


def test_half_sent_big_frames_stay_bounded(lab, tmp_path, public_nsrun):
    """300 frames of 1 MiB, all but their last byte sent: daemon's request bytes in flight
    are bounded (4 MiB), so the service's memory barely grows."""
    svc = policy_service(lab, tmp_path)
    try:
        before, _ = stats(svc)
        with attack(lab, svc, "big", 300):
            time.sleep(2)
            figures = served_during(lab, public_nsrun, svc, "300 half-sent 1 MiB frames")
        growth = figures["rss_mib"] - before / 1024
        sys.stderr.write(f"memory: {before / 1024:.0f} MiB before, +{growth:.0f} MiB during the attack\n")
        assert figures["root_s"] < QUICK and figures["user_s"] < QUICK, figures
        assert growth < 48, figures
        assert svc.proc is not None and svc.proc.poll() is None, svc.log()[-3000:]
    finally:
        svc.stop()


# -- a failed teardown ----------------------------------------------------------------------------

def test_a_failed_teardown_is_retried_by_the_service(lab, tmp_path, public_nsrun):
    """The first teardowns of nat namespaces fail (support/failing_teardowns.py): the service
    tries again until they go, no gc needed; meanwhile nobody's namespace whose program has
    ended does not count against nobody's policy limit (1): nobody runs again at once."""
    svc = policy_service(lab, tmp_path, limit=1, program=str(SUPPORT / "failing_teardowns.py"),
                         env={"NSRUN_TEST_FAILING": "2"})
    try:
        r = lab.nsrun("--", "true")  # its teardown fails twice: tried again after 1 s, then 2 s
        assert r.returncode == 0, r.stderr
        gone_within(lab, svc, 20)
        assert svc.log().count("trying again") == 2, svc.log()
        svc.wait_idle(30)
        svc.stop()  # nobody's next: the teardown after its CMD, the watcher's and its first retry fail
        svc = policy_service(lab, tmp_path, limit=1, program=str(SUPPORT / "failing_teardowns.py"),
                             env={"NSRUN_TEST_FAILING": "3"})
        r = user_nsrun(lab, public_nsrun, "nobody", "--", "true")
        assert r.returncode == 0, (r.stderr, svc.log()[-3000:])
        r = user_nsrun(lab, public_nsrun, "nobody", "--", "true")
        assert r.returncode == 0, (r.stderr, svc.log()[-3000:])  # the first's namespace is not nobody's now
        gone_within(lab, svc, 20)
        svc.wait_idle(30)
        assert "Traceback" not in svc.log(), svc.log()[-3000:]
    finally:
        svc.stop()


def gone_within(lab: LabRunner, svc: Service, seconds: float) -> None:
    """Every record of the lab's state directory gone within SECONDS (no gc run)."""
    deadline = time.monotonic() + seconds
    while (lab.statedir / "ns").exists() and os.listdir(lab.statedir / "ns"):
        assert time.monotonic() < deadline, (os.listdir(lab.statedir / "ns"), svc.log()[-3000:])
        time.sleep(0.1)


# -- limits against racing requests --------------------------------------------------------------

def test_policy_limit_holds_against_racing_requests(lab, tmp_path, public_nsrun):
    """12 runs and 12 `up`s of nobody at once, limit 2: never more than 2 live. (Names of
    nobody's own: the policy's `create` default is `{user}-*`.)"""
    svc = policy_service(lab, tmp_path, limit=2)
    env = {**lab.env, **public_nsrun}
    try:
        procs = [subprocess.Popen(as_user(lab, "nobody", lab.nsrun_argv("--", "sleep", "4")[2:]), env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
                 for _ in range(12)]
        results = [(p.wait(60), p.communicate()[1]) for p in procs]
        ok = [err for code, err in results if code == 0]
        refused = [err for code, err in results if code == 2 and "limit" in err]
        assert len(ok) <= 2 and len(ok) + len(refused) == 12, results
        svc.wait_idle(30)
        procs = [subprocess.Popen(as_user(lab, "nobody", lab.nsrun_argv("up", f"nobody-race{i}")[2:]), env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
                 for i in range(12)]
        codes = [p.wait(60) for p in procs]
        for p in procs:
            p.communicate()
        made = [n for n in os.listdir("/run/netns") if n.startswith("nobody-race")]
        assert len(made) == 2 and codes.count(0) == 2, (codes, made, svc.log()[-3000:])
    finally:
        for n in os.listdir("/run/netns"):
            if n.startswith("nobody-race"):
                lab.nsrun("down", n)
        svc.stop()


def test_named_namespaces_count_against_the_user_limit(lab, tmp_path, public_nsrun):
    """`nsrun daemon --user-limit 1`: a named namespace nobody made is one."""
    svc = policy_service(lab, tmp_path, "--user-limit", "1")
    try:
        r = user_nsrun(lab, public_nsrun, "nobody", "up", "nobody-mine")
        assert r.returncode == 0, r.stderr
        r = user_nsrun(lab, public_nsrun, "nobody", "--", "true")
        assert r.returncode == 2 and "--user-limit" in r.stderr, (r.returncode, r.stderr)
        r = user_nsrun(lab, public_nsrun, "nobody", "up", "nobody-second")
        assert r.returncode == 2 and "--user-limit" in r.stderr, (r.returncode, r.stderr)
        assert user_nsrun(lab, public_nsrun, "nobody", "down", "nobody-mine").returncode == 0
        r = user_nsrun(lab, public_nsrun, "nobody", "--", "true")
        assert r.returncode == 0, r.stderr
        svc.wait_idle()
    finally:
        svc.stop()


# -- what a caller without root may see and choose ----------------------------------------------

LS_SCRIPT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
body = json.dumps({"v": 1, "type": "ls", "json": True}).encode()
s.sendall(len(body).to_bytes(4, "big") + body)
out = b""
while chunk := s.recv(65536):
    out += chunk
sys.stdout.write(repr(out))
"""


def test_raw_ls_of_a_user_shows_no_command_lines(lab, tmp_path, public_nsrun):
    svc = policy_service(lab, tmp_path)
    p = lab.popen("--", "sh", "-c", "echo $NSRUN_NETNS; sleep 30; : root-secret-4711")
    try:
        assert p.stdout is not None
        name = p.stdout.readline().strip()
        r = subprocess.run(as_user(lab, "nobody", [SYSTEM_PYTHON, "-c", LS_SCRIPT, str(svc.sock)]),
                           capture_output=True, text=True, timeout=30, cwd="/")
        assert r.returncode == 0, r.stderr
        assert "root-secret-4711" not in r.stdout and "sleep" not in r.stdout, r.stdout
        assert name in r.stdout, r.stdout  # the names, as `nsrun ls` without root shows them
        r = user_nsrun(lab, public_nsrun, "nobody", "ls")  # daemonless: the same names
        assert r.returncode == 0 and name in r.stdout and "root-secret" not in r.stdout, r.stdout
    finally:
        p.kill()
        p.communicate()
        svc.wait_idle()
        svc.stop()


def test_user_cannot_choose_the_firewall_backend(lab, tmp_path, public_nsrun):
    """NSRUN_FIREWALL=nftables from nobody on a host whose choice is iptables: ignored (on an
    nftables host, iptables would load legacy tables for good)."""
    svc = policy_service(lab, tmp_path)
    p = subprocess.Popen(as_user(lab, "nobody", lab.nsrun_argv("--", "sh", "-c", "echo ready; sleep 20")[2:]),
                         env={**lab.env, **public_nsrun, "NSRUN_FIREWALL": "nftables"}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", (p.communicate(), svc.log())
        tables = lab.host("nft", "list", "tables").stdout
        assert "nsrun-nat-" not in tables, tables
        assert "MASQUERADE" in lab.host("iptables-legacy-save", "-t", "nat").stdout
        assert "asked for firewall backend nftables: ignored" in svc.log()
    finally:
        p.kill()
        p.communicate()
        svc.wait_idle()
        svc.stop()


# -- a crash of the service ------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGABRT, signal.SIGKILL])
def test_service_crash_mid_run_loses_no_run(lab, tmp_path, public_nsrun, sig):
    """The service dies (as glibc's abort would kill it) while root's and nobody's programs
    run: nobody's client says so, root's program runs on; the next service adopts root's run
    and takes down nobody's namespace, whose client is gone."""
    first = policy_service(lab, tmp_path)
    root = lab.popen("--", "sh", "-c", "echo $NSRUN_NETNS; exec sleep 60")
    user = subprocess.Popen(as_user(lab, "nobody", lab.nsrun_argv("--", "sh", "-c", "echo $NSRUN_NETNS; exec sleep 60")[2:]),
                            env={**lab.env, **public_nsrun}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd="/")
    second = None
    try:
        assert root.stdout is not None and user.stdout is not None
        mine, theirs = root.stdout.readline().strip(), user.stdout.readline().strip()
        assert mine.startswith("nsrun-") and theirs.startswith("nsrun-"), (mine, theirs, first.log())
        first.stop(sig)
        assert user.wait(30) == 1  # told; its CMD runs on, as root's does, until the next service
        assert root.poll() is None and os.path.exists(f"/run/netns/{mine}")
        second = Service(lab, tmp_path / "second.log").start()  # systemd: Restart=, or the socket
        assert "adopted 1 running namespace(s), took down 1" in second.log(), second.log()
        assert not os.path.exists(f"/run/netns/{theirs}")
        _, err = user.communicate(timeout=30)  # CMD (holding its stdout) was stopped with its namespace
        assert "closed the connection" in err, err
        root.send_signal(signal.SIGTERM)
        root.communicate(timeout=10)
        second.wait_idle(30)
        assert not os.path.exists(f"/run/netns/{mine}")
    finally:
        for p in (root, user):
            if p.poll() is None:
                p.kill()
                p.communicate()
        if second is not None:
            second.stop()
        first.stop()
