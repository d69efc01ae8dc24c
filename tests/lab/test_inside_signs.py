"""Issue 24, item 18: signs that a program runs inside a namespace.

CMD gets NSRUN_HOST_ADDRESS, the host's address on the namespace's bridge (nat: the
gateway, the bridge's own address; bridge mode: the host's address on that bridge; empty
when there is none), beside NSRUN_NETNS, NSRUN_PROFILE and NSRUN_ADDRESS: without the
service, through it for root, and for a caller without root. `nsrun shell` into an existing
namespace says on stderr which one the shell runs in (a prompt set through the environment
does not survive the shell's rc files; NSRUN_NETNS is there for the user's own prompt).
"""

from __future__ import annotations

import pwd
from pathlib import Path
from typing import Any

import pytest

from conftest import LabRunner
from nsrun import lab as labmod
from support.policyusers import policy_service, user_run
from support.service import Service

HOST_KINDS = ["legacy"]

NAT_GATEWAY = "10.251.0.1"  # the bundled nat profile's bridge address
SHOW = 'echo "$NSRUN_NETNS|$NSRUN_PROFILE|$NSRUN_HOST_ADDRESS"'
POLICY = '[[allow]]\nusers = ["nobody"]\nprofiles = ["nat", "gw1", "isolated"]\n'


@pytest.fixture(params=["daemonless", "service"])
def via(request: pytest.FixtureRequest, lab: LabRunner, tmp_path: Path) -> Any:
    if request.param == "daemonless":
        yield {"NSRUN_DAEMON": "0"}
        return
    svc = Service(lab, tmp_path / "daemon.log").start()
    try:
        yield {}
        svc.wait_idle()
        assert "Traceback" not in svc.log(), svc.log()
    finally:
        svc.stop()


def test_cmd_gets_the_hosts_address_on_its_bridge(lab, via):
    for profile, want in (("nat", NAT_GATEWAY), ("gw1", labmod.HOST_ADDR), ("isolated", "")):
        r = lab.nsrun("-p", profile, "--", "sh", "-c", SHOW, env=via)
        assert r.returncode == 0, r.stderr
        ns, prof, host = r.stdout.strip().split("|")
        assert (prof, host) == (profile, want) and ns.startswith("nsrun-"), r.stdout
    assert lab.nsrun("up", "signs", "-p", "gw1", env=via).returncode == 0
    try:
        for args in (("exec", "signs"), ("-n", "signs")):
            r = lab.nsrun(*args, "--", "sh", "-c", SHOW, env=via)
            assert (r.returncode, r.stdout) == (0, f"signs|gw1|{labmod.HOST_ADDR}\n"), r.stderr
    finally:
        assert lab.nsrun("down", "signs", env=via).returncode == 0
    lab.settle()


def test_shell_says_which_namespace_it_enters(lab, via):
    assert lab.nsrun("up", "signs", "-p", "nat", env=via).returncode == 0
    try:
        r = lab.nsrun("shell", "signs", env={**via, "SHELL": "/bin/sh"}, input=SHOW + "\n")
        assert (r.returncode, r.stdout) == (0, f"signs|nat|{NAT_GATEWAY}\n"), r.stderr
        assert r.stderr == ("nsrun: shell in namespace signs (`exit` leaves it; NSRUN_NETNS=signs is set "
                            "for a prompt)\n"), r.stderr
    finally:
        assert lab.nsrun("down", "signs", env=via).returncode == 0


def test_a_users_cmd_and_shell_get_the_same_signs(lab, tmp_path, public_nsrun):
    svc = policy_service(lab, tmp_path, POLICY)
    try:
        for profile, want in (("nat", NAT_GATEWAY), ("gw1", labmod.HOST_ADDR), ("isolated", "")):
            r = user_run(lab, public_nsrun, "nobody", "-p", profile, "--", "sh", "-c", SHOW)
            assert r.returncode == 0, (r.stderr, svc.log())
            assert r.stdout.strip().split("|")[1:] == [profile, want], r.stdout
        r = user_run(lab, public_nsrun, "nobody", "up", "nobody-signs", "-p", "nat")
        assert r.returncode == 0, (r.stderr, svc.log())
        try:
            r = user_run(lab, public_nsrun, "nobody", "shell", "nobody-signs", env={"SHELL": "/bin/sh"},
                         input="id -u; " + SHOW + "\n")
            assert (r.returncode, r.stdout) == (0, f"{pwd.getpwnam('nobody').pw_uid}\nnobody-signs|nat|"
                                                   f"{NAT_GATEWAY}\n"), (r.stderr, svc.log())
            assert r.stderr == ("nsrun: shell in namespace nobody-signs (`exit` leaves it; "
                                "NSRUN_NETNS=nobody-signs is set for a prompt)\n"), r.stderr
        finally:
            assert user_run(lab, public_nsrun, "nobody", "down", "nobody-signs").returncode == 0
        svc.wait_idle()
        assert "Traceback" not in svc.log(), svc.log()
    finally:
        svc.stop()
