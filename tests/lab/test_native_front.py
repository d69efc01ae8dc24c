"""Issue 26, item 1: the native front (native/nsrun.c) does the runs through the service
without starting an interpreter, for root and for a caller without root, and ends as the
Python CLI ends; what it does not do, it hands over.

The front here is built with NSRUN_PYTHON naming a script that notes each hand-over in a
file before it runs the Python CLI: an empty file means no Python ran on nsrun's side. The
rest of the lab tier runs through the front too (conftest's LabRunner.front), which puts
every run, signal and exit status test on it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import CLIENT, LabRunner
from nsrun import lab as labmod
from support import native
from support.policyusers import setpriv
from support.service import Service, served
from support.terminals import SYSTEM_PYTHON

HOST_KINDS = ["legacy"]

POLICY = """\
version = 1
[[allow]]
users = ["nobody"]
create = ["*"]
profiles = ["nat"]
limit = 4
"""


class Front:
    """A front whose hand-overs are noted in NOTES."""

    def __init__(self, top: Path) -> None:
        self.notes = top / "handed-over"
        self.notes.touch()
        self.notes.chmod(0o666)
        script = top / "nsrun-python"
        native.delegate_script(script, self.notes)
        self.path = native.build(str(script), str(top / "nsrun"))

    def handed_over(self) -> list[str]:
        return self.notes.read_text().splitlines()


@pytest.fixture(scope="module")
def front() -> Iterator[Front]:
    top = Path(tempfile.mkdtemp(prefix="nsrun-front-lab-"))
    top.chmod(0o755)
    try:
        yield Front(top)
    finally:
        import shutil

        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def service(lab: LabRunner, tmp_path: Path) -> Iterator[Service]:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    policy.chmod(0o644)
    svc = Service(lab, tmp_path / "daemon.log", "--policy", str(policy)).start()
    os.chmod(svc.sock, 0o666)  # as if nobody were in group nsrun
    try:
        yield svc
        assert svc.proc is not None and svc.proc.poll() is None, svc.log()
        svc.wait_idle()
        assert "Traceback" not in svc.log(), svc.log()
    finally:
        svc.stop()


def run(lab: LabRunner, argv: list[str], env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lab.host_argv(argv), env={**lab.env, **(env or {})}, capture_output=True, text=True,
                          timeout=60, cwd="/", **kw)


def python_front(lab: LabRunner, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(lab, [sys.executable, "-m", "nsrun", *args], env)


def test_a_root_run_and_exec_start_no_python_and_end_as_pythons(lab, service, front):
    before = served(service)
    r = run(lab, [front.path, "-p", "nat", "--", *CLIENT])
    assert (r.returncode, r.stdout.strip()) == (0, labmod.GW2_UP), r.stderr
    service.wait_idle()
    # what CMD sees inside (its /sys, /etc/netns files, NSRUN_* variables), exit statuses and
    # nsrun's own messages: the same through either front, in one namespace
    assert lab.nsrun("up", "web", "-p", "nat").returncode == 0
    try:
        probes: list[list[str]] = [
            ["exec", "web", "--", "sh", "-c", "ls /sys/class/net; cat /etc/resolv.conf; "
             "echo $NSRUN_NETNS $NSRUN_PROFILE $NSRUN_ADDRESS $NSRUN_HOST_ADDRESS; grep Sig /proc/self/status"],
            ["-n", "web", "--", "sh", "-c", "exit 7"],
            ["-n", "web", "--", "sh", "-c", "kill -TERM $$"],
            ["exec", "web", "--", "no-such-command"],
            ["exec", "web", "--", "/etc/hostname"],
            ["-p", "no-such-profile", "--", "true"],
            ["exec", "no-such-ns", "--", "true"],
        ]
        for args in probes:
            c = run(lab, [front.path, *args])
            py = python_front(lab, *args)
            assert (c.returncode, c.stdout, c.stderr) == (py.returncode, py.stdout, py.stderr), args
    finally:
        assert lab.nsrun("down", "web").returncode == 0
    assert front.handed_over() == []  # every one of them without Python
    assert served(service) >= before + 1 + 2 * len(probes)


def test_a_caller_without_root_starts_no_python_and_gets_cmds_end(lab, service, front, public_nsrun):
    user = [*setpriv("nobody"), front.path]
    env = {**public_nsrun, native.PYTHON_ENV: SYSTEM_PYTHON}
    r = run(lab, [*user, "-p", "nat", "--", "sh", "-c", "id -un; echo $NSRUN_PROFILE; exit 5"], env)
    assert (r.returncode, r.stdout.split()) == (5, ["nobody", "nat"]), r.stderr
    r = run(lab, [*user, "--", "sh", "-c", "kill -USR1 $$"], env)
    assert r.returncode == -signal.SIGUSR1, r.stderr
    # a TERM sent to the client reaches CMD (a `signal` message)
    p = subprocess.Popen(lab.host_argv([*user, "--", "sh", "-c", "trap 'echo got-term; exit 6' TERM; "
                                        "echo ready; sleep 30 & wait"]), env={**lab.env, **env},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
        assert (p.returncode, out.strip()) == (6, "got-term"), err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    # a refusal of the service's: its line and exit 2, as Python's client says it
    r = run(lab, [*user, "-p", "gw1", "--", "true"], env)
    py = run(lab, [*setpriv("nobody"), SYSTEM_PYTHON, "-m", "nsrun", "-p", "gw1", "--", "true"], env)
    assert (r.returncode, r.stderr) == (py.returncode, py.stderr) and r.returncode == 2, r.stderr
    assert front.handed_over() == []


def test_what_the_front_does_not_do_goes_to_python(lab, service, front):
    r = run(lab, [front.path, "-p", "nat", "--", *CLIENT], {"NSRUN_DAEMON": "0"})
    assert (r.returncode, r.stdout.strip()) == (0, labmod.GW2_UP), r.stderr
    r = run(lab, [front.path, "--help"])
    assert r.returncode == 0 and "usage" in r.stdout.lower(), r.stderr
    assert front.handed_over() == ["-p nat -- " + " ".join(CLIENT), "--help"]
