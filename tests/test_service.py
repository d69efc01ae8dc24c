"""Issue 13: the warm service (`nsrun daemon`) and the client path through it, in the lab host.

A fixture starts `nsrun daemon` in the foreground inside the lab host, on the lab's own
state directory (so the `nsrun` the tests run finds its socket), and stops it after
waiting until every namespace it watches is down (a root caller's CMD is the client
process itself: the namespace goes *after* it exits, not before). The lab fixture then
compares the lab host with how it was, as for every lab test.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import test_run
from conftest import CLIENT, REPO, LabRunner, write_profile
from nsrun import lab as labmod
from nsrun import wire

HOST_KINDS = ["legacy"]


class Service:
    """`nsrun daemon` in the lab host, in the foreground."""

    def __init__(self, lab: LabRunner, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.lab, self.log_path, self.args, self.extra_env = lab, log, args, env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock = lab.statedir / wire.SOCKET_NAME

    def start(self, wait: bool = True) -> "Service":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.lab.nsrun_argv("daemon", *self.args),
                                         env={**self.lab.env, **self.extra_env}, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, cwd=REPO)
        if wait:
            deadline = time.monotonic() + 30
            while True:
                try:
                    self.status()
                    break
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"nsrun daemon did not start: {self.log()}") from None
                    time.sleep(0.05)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ask(self, msg: dict[str, Any], fds: tuple[int, ...] = ()) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(self.sock))
            wire.send(s, msg, fds)
            got = wire.recv(s)
            assert got is not None
            reply, rfds = got
            wire.close_all(rfds)
            return reply

    def status(self) -> dict[str, Any]:
        return self.ask({"type": "status"})

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.status()["runs"]:
            assert time.monotonic() < deadline, f"the service still watches runs: {self.status()}"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def service(lab: LabRunner, tmp_path: Path) -> Any:
    svc = Service(lab, tmp_path / "daemon.log").start()
    try:
        yield svc
        assert svc.proc is not None and svc.proc.poll() is None, f"the service died: {svc.log()}"
        svc.wait_idle()
        assert "Traceback" not in svc.log(), svc.log()
    finally:
        svc.stop()


def served(svc: Service) -> int:
    return int(svc.status()["requests"])


# -- runs through the service -------------------------------------------------------------

def test_nat_and_gw1_reach_upstream_through_the_service(lab, service):
    before = served(service)
    r = lab.nsrun("-p", "nat", "--", *CLIENT)
    assert (r.returncode, r.stdout.strip()) == (0, labmod.GW2_UP), r.stderr
    r = lab.nsrun("-p", "gw1", "--", *CLIENT)
    assert (r.returncode, r.stdout.strip()) == (0, labmod.GW1_UP), r.stderr
    assert served(service) == before + 2  # both went through the service


def test_no_nsrun_process_resident_beside_cmd(lab, service, tmp_path):
    mark = tmp_path / "ready"
    p = lab.popen("--", "sh", "-c", f"echo $$ > {mark}; exec sleep 30")
    try:
        deadline = time.monotonic() + 20
        while not mark.exists() or not mark.read_text().strip():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        pid = int(mark.read_text())
        # The client became CMD (nsenter execs it, or forks it once): no nsrun process
        # stays beside it, in its tree or in its namespace.
        tree = [q for q in [p.pid, *_descendants(p.pid)]
                if not Path(f"/proc/{q}/cmdline").read_bytes().startswith(b"nsenter")]
        assert tree == [pid], tree
        ino = os.stat(f"/proc/{pid}/ns/net").st_ino
        assert _in_netns(ino) == [pid]
        assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x0030\x00"
        assert service.status()["runs"] == 1
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=10)
    assert p.returncode == -signal.SIGTERM  # native: nsenter's child sleep died of it


def _in_netns(ino: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}/ns/net").st_ino == ino:
                out.append(int(entry))
        except OSError:
            continue
    return out


def _descendants(top: int) -> list[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, frontier = [], [top]
    while frontier:
        kids = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += kids
        frontier = kids
    return sorted(found)


def test_background_children_stopped_when_cmd_ends(lab, service, tmp_path):
    pidfile = tmp_path / "pid"
    r = lab.nsrun("--", "sh", "-c", f"sleep 300 & echo $! > {pidfile}")
    assert r.returncode == 0, r.stderr
    service.wait_idle(30)
    pid = int(pidfile.read_text())
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        status = "gone"
    assert status in ("gone", "Z"), status


def test_exec_up_down_ls_gc_through_the_service(lab, service):
    before = served(service)
    r = lab.nsrun("up", "svc1", "-p", "gw1")
    assert r.returncode == 0 and r.stdout.startswith("svc1 is up: profile gw1"), r.stdout + r.stderr
    r = lab.nsrun("up", "svc1", "-p", "gw1")
    assert r.returncode == 0 and "already up" in r.stdout, r.stdout + r.stderr
    r = lab.nsrun("exec", "svc1", "--", *CLIENT)
    assert (r.returncode, r.stdout.strip()) == (0, labmod.GW1_UP), r.stderr
    r = lab.nsrun("exec", "svc1", "--", "sh", "-c", "echo $NSRUN_NETNS $NSRUN_PROFILE; exit 3")
    assert (r.returncode, r.stdout.strip()) == (3, "svc1 gw1"), r.stderr
    r = lab.nsrun("ls", "--json")
    assert r.returncode == 0 and any(row["name"] == "svc1" for row in __import__("json").loads(r.stdout))
    r = lab.nsrun("-n", "svc1", "--", "sh", "-c", "echo $NSRUN_ADDRESS")
    assert r.returncode == 0 and r.stdout.startswith("192.168.1."), r.stderr
    r = lab.nsrun("gc", "--dry-run")
    assert (r.returncode, r.stdout) == (0, "nothing to reclaim\n"), r.stdout + r.stderr
    r = lab.nsrun("down", "svc1")
    assert (r.returncode, r.stdout) == (0, "svc1 is down\n"), r.stderr
    r = lab.nsrun("down", "svc1")
    assert (r.returncode, r.stdout) == (0, ""), r.stderr
    r = lab.nsrun("exec", "svc1", "--", "true")
    assert r.returncode == 2 and r.stderr == ("nsrun: no namespace svc1 (`nsrun ls` lists them; "
                                              "`nsrun up svc1` makes one)\n")
    assert served(service) == before + 10


def test_errors_match_daemonless(lab, service, tmp_path):
    bad = write_profile(tmp_path, "bad", 'mode = "nat"\nsubnet = "10.251.0.0/24\n')
    cases = [("-p", "nope", "--", "true"), ("-p", str(bad), "--", "true"), ("-n", "bad/name", "--", "true"),
             ("-u", "no-such-user-xyz", "--", "true"), ("up", "x", "-p", "nope"), ("down", "bad/name"),
             ("exec", "nope-ns", "--", "true")]
    for args in cases:
        via = lab.nsrun(*args)
        alone = lab.nsrun(*args, env={"NSRUN_DAEMON": "0"})
        assert (via.returncode, via.stdout, via.stderr) == (alone.returncode, alone.stdout, alone.stderr), args
        assert via.returncode == 2


def test_daemonless_when_no_service_or_disabled(lab, service):
    before = served(service)
    r = lab.nsrun("--", "true", env={"NSRUN_DAEMON": "0"})
    assert r.returncode == 0, r.stderr
    assert served(service) == before


def test_per_user_limit(lab, tmp_path):
    svc = Service(lab, tmp_path / "limited.log", "--root-limit", "1").start()
    try:
        p = lab.popen("--", "sleep", "30")
        deadline = time.monotonic() + 20
        while svc.status()["runs"] < 1:
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.02)
        r = lab.nsrun("--", "true")
        assert r.returncode == 2 and "limit" in r.stderr, r.stderr
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=10)
        svc.wait_idle()
        r = lab.nsrun("--", "true")
        assert r.returncode == 0, r.stderr
        svc.wait_idle()
    finally:
        svc.stop()
