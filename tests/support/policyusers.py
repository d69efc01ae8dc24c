"""Callers without root through a service with a policy of the test's own: the service in
the lab host (support.service), its socket opened to everyone (as if they were all in group
nsrun), and `nsrun` run as another user with setpriv (no sudo anywhere). Used by the issue
24 tests (tests/lab/test_namespace_ownership.py, tests/lab/test_caller_limits.py).
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

from conftest import LabRunner
from support.service import Service

SYSTEM_PYTHON = "/usr/bin/python3"  # the client behind a wrapper: USER must be able to execute it


def policy_service(lab: LabRunner, tmp_path: Path, policy: str, *args: str) -> Service:
    """`nsrun daemon --policy FILE` (FILE: POLICY, root's 0644) in the lab host, socket 0666."""
    path = tmp_path / "policy.toml"
    path.write_text(policy)
    path.chmod(0o644)
    svc = Service(lab, tmp_path / "daemon.log", "--policy", str(path), *args).start()
    os.chmod(svc.sock, 0o666)  # the test's socket is root's (no group nsrun here)
    return svc


def setpriv(user: str, *opts: str) -> list[str]:
    """setpriv to USER (its groups from the user database unless OPTS say otherwise)."""
    who = pwd.getpwnam(user)
    groups = [] if any(o.startswith("--groups") or o in ("--clear-groups", "--init-groups") for o in opts) \
        else ["--init-groups"]
    return ["setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", *groups, "--inh-caps=-all", *opts]


def as_user(lab: LabRunner, user: str, *args: str, wrap: list[str] | None = None) -> list[str]:
    """`nsrun ARGS` as USER in the lab host; WRAP: a command line that runs it (setpriv's
    by default), e.g. with other groups, or behind prlimit and `sh -c 'umask ...; exec "$@"'`:
    the client is then the system's Python, which USER may execute from any process (the
    suite's own may sit under /root: only setpriv's direct exec of it was seen to work)."""
    argv = lab.nsrun_argv(*args)[2:]
    if wrap is not None:
        if lab.front == "native":  # the front is USER's to execute; what it hands over runs the system's
            from support import native

            argv = ["env", f"{native.PYTHON_ENV}={SYSTEM_PYTHON}", *argv]
        else:
            argv[0] = SYSTEM_PYTHON
    return lab.host_argv([*(wrap or setpriv(user)), *argv])


def user_run(lab: LabRunner, public: dict[str, str], user: str, *args: str, env: dict[str, str] | None = None,
             wrap: list[str] | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(as_user(lab, user, *args, wrap=wrap), env={**lab.env, **public, **(env or {})},
                          capture_output=True, text=True, timeout=60, cwd="/", input=input)
