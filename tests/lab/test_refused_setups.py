"""Issue 24, item 10: a setup refused before its record is written leaves no file at all in
the state directory, its lock file included: a caller allowed a broken WireGuard profile
(root, or a user through the service's policy) could otherwise fill the state directory
with `ns/NAME.lock` files, one a try. (The lab fixture's snapshot leaves lock files out, so
this looks at the state directory itself.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from conftest import PROFILES, LabRunner, write_profile
from support.policyusers import user_run
from support.service import Service

HOST_KINDS = ["legacy"]
TRIES = 5


def state_files(lab: LabRunner) -> list[str]:
    return sorted(str(p.relative_to(lab.statedir)) for p in lab.statedir.rglob("*")
                  if not p.is_dir() and p.name != "nsrun.sock") if lab.statedir.exists() else []


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    """A profile directory with `broken`: a wireguard profile whose configuration is
    refused (others may read it: it would hold a private key)."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    conf = tmp_path / "wg.conf"
    conf.write_text("[Interface]\n")
    os.chmod(conf, 0o644)
    write_profile(profiles, "broken", f'mode = "wireguard"\nwireguard = "{conf}"\n')
    return profiles


@pytest.mark.parametrize("via", ["daemonless", "service"])
def test_a_refused_wireguard_config_leaves_no_file(lab, tmp_path, broken, via):
    env = {"NSRUN_PROFILE_PATH": f"{broken}:{PROFILES}"}
    svc = None
    if via == "service":
        svc = Service(lab, tmp_path / "daemon.log", env=env).start()
    else:
        env["NSRUN_DAEMON"] = "0"
    try:
        for i in range(TRIES):
            for args in (("-p", "broken", "--", "true"), ("up", f"w{i}", "-p", "broken"),
                         ("-n", f"n{i}", "-p", "broken", "--", "true")):
                r = lab.nsrun(*args, env=env)
                assert r.returncode == 2 and "wg.conf: refused" in r.stderr, (args, r.stderr)
        assert state_files(lab) == []
        if svc is not None:
            assert "Traceback" not in svc.log()
    finally:
        if svc is not None:
            svc.stop()


def test_a_users_refused_wireguard_config_leaves_no_file(lab, tmp_path, broken, public_nsrun):
    policy = tmp_path / "policy.toml"
    policy.write_text('[[allow]]\nusers = ["nobody"]\nprofiles = ["broken"]\ncreate = ["nobody-*"]\n')
    svc: Any = Service(lab, tmp_path / "daemon.log", "--policy", str(policy),
                       env={"NSRUN_PROFILE_PATH": f"{broken}:{PROFILES}"}).start()
    try:
        os.chmod(svc.sock, 0o666)
        for i in range(TRIES):
            for args in (("-p", "broken", "--", "true"), ("up", f"nobody-w{i}", "-p", "broken"),
                         ("shell", f"nobody-s{i}", "-p", "broken")):
                r = user_run(lab, public_nsrun, "nobody", *args, env={"SHELL": "/bin/sh"}, input="exit\n")
                assert r.returncode == 2 and "wg.conf: refused" in r.stderr, (args, r.stderr, svc.log())
        assert state_files(lab) == []
        assert "Traceback" not in svc.log()
    finally:
        svc.stop()
