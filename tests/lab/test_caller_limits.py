"""Issue 24, item 7: a program the service starts for a caller without root starts with the
caller's own resource limits, umask and supplementary groups, as the caller's process holds
them (the kernel's word: /proc of the client while it waits), not the service's.

nobody's `nsrun` runs behind setpriv (groups) and prlimit (limits) and a shell's `umask`,
through a service with a policy in the lab host whose own limits differ (its hard limit
of open files is not the caller's). CMD reports what
it holds; the same wrapper running `cat` instead of nsrun says what the caller held.
Groups are those the caller holds that the user database still gives them: one dropped
stays dropped, one the database does not give is not kept.

The systemd scope (CMD in the caller's slice) cannot be made here: the lab host has no
systemd (no /run/systemd/system), so this also checks the fallback, CMD in the run's
cgroup under the service's, as before; the D-Bus call itself: tests/unit/test_scope.py.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from conftest import LabRunner
from nsrun.linux import cgroup, inherited
from support.policyusers import policy_service, setpriv, user_run

HOST_KINDS = ["legacy"]
NOBODY = pwd.getpwnam("nobody")
POLICY = '[[allow]]\nusers = ["nobody"]\nprofiles = ["nat", "isolated"]\n'
LIMITS = ["--nofile=123:1536", "--nproc=777:888", "--core=0:4096", "--stack=4194304:16777216", "--as=4294967296:"]
NOFILE = 7  # RLIMIT_NOFILE
SHOW = "cat /proc/self/limits; grep -E '^(Umask|Groups):' /proc/self/status; cat /proc/self/cgroup"


@pytest.fixture
def service(lab: LabRunner, tmp_path: Path) -> Any:
    svc = policy_service(lab, tmp_path, POLICY)
    try:
        assert svc.proc is not None
        # The service's own limits are not the callers': open files 1024:2048.
        subprocess.run(["prlimit", f"--pid={svc.proc.pid}", "--nofile=1024:2048"], check=True)
        yield svc
        svc.wait_idle()
        assert "Traceback" not in svc.log(), svc.log()
    finally:
        svc.stop()


def wrapper(*groups: str, umask: str = "077", limits: list[str] = LIMITS) -> list[str]:
    return [*setpriv("nobody", *groups), "prlimit", *limits, "--", "sh", "-c", f'umask {umask}; exec "$@"', "sh"]


def held(text: str) -> tuple[Any, int, tuple[int, ...]]:
    limits = inherited.parse_limits(text)
    umask, groups = inherited.parse_status(text)
    return limits, umask, groups


@pytest.mark.parametrize("groups, umask, want", [
    (("--clear-groups",), "077", ()),  # dropped: stays dropped (the database would give 65534)
    ((f"--groups={NOBODY.pw_gid},100",), "027", (NOBODY.pw_gid,)),  # 100 is not nobody's in the database
    (("--init-groups",), "002", (NOBODY.pw_gid,)),
])
def test_cmd_starts_with_the_callers_limits_umask_and_groups(lab, service, public_nsrun, groups, umask, want):
    wrap = wrapper(*groups, umask=umask)
    caller = subprocess.run(lab.host_argv([*wrap, "sh", "-c", SHOW]), capture_output=True, text=True, check=True,
                            timeout=30, cwd="/")
    for profile in ("nat", "isolated"):
        r = user_run(lab, public_nsrun, "nobody", "-p", profile, "--", "sh", "-c", SHOW, wrap=wrap)
        assert r.returncode == 0, (r.stderr, service.log())
        limits, got_umask, got_groups = held(r.stdout)
        assert limits == held(caller.stdout)[0]  # every limit, as the caller held it
        assert dict((res, (soft, hard)) for res, soft, hard in limits)[NOFILE] == (123, 1536)  # not the service's
        assert (got_umask, got_groups) == (int(umask, 8), want), r.stdout
        assert held(caller.stdout)[1] == int(umask, 8)
        # No systemd here: CMD is in the run's cgroup under the service's, as before.
        assert service.proc is not None
        own = cgroup.of_pid(service.proc.pid)
        mine = [line[3:] for line in r.stdout.splitlines() if line.startswith("0::")]
        assert own is not None and mine and mine[0].startswith(own.rstrip("/") + "/nsrun."), (own, mine)


def test_exec_into_a_users_namespace_gets_the_same(lab, service, public_nsrun):
    r = user_run(lab, public_nsrun, "nobody", "up", "nobody-lim", "-p", "isolated")
    assert r.returncode == 0, (r.stderr, service.log())
    try:
        r = user_run(lab, public_nsrun, "nobody", "exec", "nobody-lim", "--", "sh", "-c", SHOW,
                     wrap=wrapper("--clear-groups"))
        assert r.returncode == 0, (r.stderr, service.log())
        limits, umask, groups = held(r.stdout)
        assert dict((res, (soft, hard)) for res, soft, hard in limits)[NOFILE] == (123, 1536)
        assert (umask, groups) == (0o077, ())
    finally:
        assert user_run(lab, public_nsrun, "nobody", "down", "nobody-lim").returncode == 0


def test_files_cmd_makes_keep_the_callers_umask(lab, service, public_nsrun):
    out = Path(tempfile.mkdtemp(prefix="nsrun-umask-"))  # nobody's: pytest's tmp_path is root's 0700
    try:
        os.chown(out, NOBODY.pw_uid, NOBODY.pw_gid)
        r = user_run(lab, public_nsrun, "nobody", "-p", "isolated", "--", "sh", "-c", f"echo x > {out}/f",
                     wrap=wrapper("--init-groups", umask="077"))
        assert r.returncode == 0, (r.stderr, service.log())
        assert (out / "f").stat().st_mode & 0o777 == 0o600  # the service's umask 022 made it 0644
    finally:
        shutil.rmtree(out)


def _may_raise_limits() -> bool:
    """Whether this process (and so the service it starts) has CAP_SYS_RESOURCE."""
    with open("/proc/self/status") as fh:
        eff = next(line for line in fh if line.startswith("CapEff:"))
    return bool(int(eff.split()[1], 16) >> 24 & 1)


def test_a_hard_limit_above_the_services_is_raised_or_said(lab, service, public_nsrun):
    """A caller whose hard limit is above the service's: where the service may raise hard
    limits (CAP_SYS_RESOURCE) CMD gets the caller's; where not (the shipped unit's bounding
    set, and this machine's, have none), the service's, and CMD is told on stderr. Never
    more than the caller's."""
    wrap = wrapper("--init-groups", limits=["--nofile=100:4321"])
    r = user_run(lab, public_nsrun, "nobody", "-p", "isolated", "--", "sh", "-c", SHOW, wrap=wrap)
    assert r.returncode == 0, (r.stderr, service.log())
    got = dict((res, (soft, hard)) for res, soft, hard in held(r.stdout)[0])[NOFILE]
    if _may_raise_limits():
        assert (got, r.stderr) == ((100, 4321), ""), r.stderr
    else:
        assert got == (100, 2048)
        assert r.stderr == ("nsrun: warning: hard resource limits above the nsrun service's stay at its own: "
                            "open files 2048 (yours 4321) (it may not raise them: raise its unit's Limit*= "
                            "settings)\n"), r.stderr
