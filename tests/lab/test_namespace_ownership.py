"""Issue 24, items 1 and 16: who owns a named namespace, and what root does with one that is
not its own.

A namespace a caller without root made through the service's policy path is theirs (its
record keeps their uid). Root's `up NAME`, `-n NAME` and `shell NAME` refuse such a NAME
(exit 2, naming the owner, nothing changed): root's programs must never start inside a
namespace a user controls. `exec` enters it (root may enter anything, as `ip netns exec`
does) with a note naming the owner; `ls` shows owners. A policy rule without `create` lets
its users create `{user}-*` only. `down` of a name that does not exist says so and exits 0.
Each root command is checked without the service and through it.
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path
from typing import Any

import pytest

from conftest import LabRunner
from support.policyusers import policy_service, user_run

HOST_KINDS = ["legacy"]

NOBODY = pwd.getpwnam("nobody")
OWNER = f"user nobody (uid {NOBODY.pw_uid})"
DEFAULT_POLICY = '[[allow]]\nusers = ["nobody"]\nprofiles = ["nat"]\n'
ANY_NAME_POLICY = DEFAULT_POLICY + 'create = ["*"]\n'


@pytest.fixture
def any_name_service(lab: LabRunner, tmp_path: Path) -> Any:
    svc = policy_service(lab, tmp_path, ANY_NAME_POLICY)
    try:
        yield svc
        assert svc.proc is not None and svc.proc.poll() is None, f"the service died: {svc.log()}"
        svc.wait_idle()
        assert "Traceback" not in svc.log(), svc.log()
    finally:
        svc.stop()


def root_env(via: str) -> dict[str, str]:
    return {"NSRUN_DAEMON": "0"} if via == "daemonless" else {}


def test_create_defaults_to_the_users_own_names(lab, tmp_path, public_nsrun):
    svc = policy_service(lab, tmp_path, DEFAULT_POLICY)
    try:
        r = user_run(lab, public_nsrun, "nobody", "up", "vpn", "-p", "nat")
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (r.stderr, svc.log())
        assert "may not create namespace 'vpn'" in r.stderr
        assert not os.path.exists("/run/netns/vpn")
        r = user_run(lab, public_nsrun, "nobody", "up", "nobody-vpn", "-p", "nat")
        assert r.returncode == 0, (r.stderr, svc.log())
        r = user_run(lab, public_nsrun, "nobody", "down", "nobody-vpn")
        assert r.returncode == 0, (r.stderr, svc.log())
        assert "Traceback" not in svc.log(), svc.log()
    finally:
        svc.stop()


@pytest.mark.parametrize("via", ["daemonless", "service"])
def test_root_refuses_to_join_a_namespace_another_uid_owns(lab, any_name_service, public_nsrun, via):
    """nobody makes `vpn` before root does (a policy that lets them name it). Root's `up
    vpn`, `-n vpn -- CMD` and `shell vpn` are refused, naming the owner, and change
    nothing; `exec vpn` enters it with a note; `ls` shows the owner."""
    r = user_run(lab, public_nsrun, "nobody", "up", "vpn", "-p", "nat")
    assert r.returncode == 0, (r.stderr, any_name_service.log())
    record = lab.statedir / "ns" / "vpn.json"
    try:
        before = record.read_bytes()
        assert json.loads(before)["owner_uid"] == NOBODY.pw_uid
        env = root_env(via)
        for args in (("up", "vpn", "-p", "nat"), ("up", "vpn"), ("-n", "vpn", "--", "true"),
                     ("-n", "vpn", "-p", "nat", "--", "true"), ("shell", "vpn", "--keep")):
            r = lab.nsrun(*args, env=env, input="echo inside\n")
            assert r.returncode == 2, (args, r.stdout, r.stderr)
            assert r.stderr.count("\n") == 1 and OWNER in r.stderr and "namespace vpn" in r.stderr, (args, r.stderr)
            assert r.stdout == "", (args, r.stdout)
            assert record.read_bytes() == before  # nothing changed
        r = lab.nsrun("exec", "vpn", "--", "sh", "-c", "echo $NSRUN_NETNS", env=env)
        assert (r.returncode, r.stdout) == (0, "vpn\n"), r.stderr
        assert r.stderr == f"nsrun: note: namespace vpn belongs to {OWNER}\n"
        r = lab.nsrun("ls", env=env)
        head, *rows = r.stdout.splitlines()
        assert head.split()[:2] == ["NAME", "OWNER"], head
        assert [row.split()[:2] for row in rows if row.startswith("vpn ")] == [["vpn", "nobody"]], r.stdout
        rows = json.loads(lab.nsrun("ls", "--json", env=env).stdout)
        mine = [row for row in rows if row["name"] == "vpn"]
        assert [(row["owner"], row["owner_uid"]) for row in mine] == [("nobody", NOBODY.pw_uid)]
    finally:
        r = user_run(lab, public_nsrun, "nobody", "down", "vpn")
        assert r.returncode == 0, (r.stderr, any_name_service.log())


@pytest.mark.parametrize("via", ["daemonless", "service"])
def test_root_owns_what_root_makes(lab, any_name_service, via):
    """Root's own namespaces are unchanged by the ownership check: up again, -n, and ls."""
    env = root_env(via)
    assert lab.nsrun("up", "rootvpn", "-p", "isolated", env=env).returncode == 0
    try:
        r = lab.nsrun("up", "rootvpn", "-p", "isolated", env=env)
        assert r.returncode == 0 and "already up" in r.stdout, r.stderr
        r = lab.nsrun("-n", "rootvpn", "--", "true", env=env)
        assert (r.returncode, r.stderr) == (0, ""), r.stderr
        r = lab.nsrun("exec", "rootvpn", "--", "true", env=env)
        assert (r.returncode, r.stderr) == (0, ""), r.stderr
        rows = json.loads(lab.nsrun("ls", "--json", env=env).stdout)
        assert [(row["owner"], row["owner_uid"]) for row in rows if row["name"] == "rootvpn"] == [("root", 0)]
    finally:
        assert lab.nsrun("down", "rootvpn", env=env).returncode == 0


@pytest.mark.parametrize("via", ["daemonless", "service"])
def test_down_of_a_missing_namespace_says_so(lab, any_name_service, public_nsrun, via):
    """Issue 24, item 16: `nsrun down TYPO` stays idempotent (exit 0, for units) but says
    there was no such namespace; through the service for root and for a user too."""
    r = lab.nsrun("down", "typo", env=root_env(via))
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "nsrun: no namespace typo\n")
    if via == "service":
        r = user_run(lab, public_nsrun, "nobody", "down", "nobody-typo")
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "nsrun: no namespace nobody-typo\n"), \
            any_name_service.log()
    assert not (lab.statedir / "ns" / "typo.lock").exists()
