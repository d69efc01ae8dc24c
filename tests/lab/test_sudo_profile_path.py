"""Issue 24, item 12: `sudo nsrun -p FILE` reads FILE with the sudo caller's rights, through
the service as without it. The service is root: had it read the file, a value of a root
0600 file would show in its error. Such a request goes daemonless (the client opens the
file as the caller, nsrun.process.execution.profile_reader); a profile *name*, and a plain
root caller's path, still go through the service.
"""

from __future__ import annotations

import os
import pwd

import pytest

from conftest import write_profile
from support.service import Service, served

HOST_KINDS = ["legacy"]
NOBODY = pwd.getpwnam("nobody")
SUDO = {"SUDO_UID": str(NOBODY.pw_uid), "SUDO_GID": str(NOBODY.pw_gid), "SUDO_USER": "nobody"}


@pytest.mark.parametrize("args", [("-p", "{file}", "--", "true"), ("-n", "sp", "-p", "{file}", "--", "true"),
                                  ("up", "sp", "-p", "{file}"), ("shell", "sp", "-p", "{file}", "--keep")])
def test_a_sudo_callers_profile_file_is_read_with_their_rights(lab, tmp_path, args):
    secret = write_profile(tmp_path, "secret", 'mode = "s3cr3t-value"\n', mode=0o600)
    args = tuple(a.format(file=secret) for a in args)
    svc = Service(lab, tmp_path / "daemon.log").start()
    try:
        before = served(svc)
        via = lab.nsrun(*args, env=SUDO, input="exit\n")
        daemonless = lab.nsrun(*args, env={**SUDO, "NSRUN_DAEMON": "0"}, input="exit\n")
        assert "s3cr3t" not in via.stderr, via.stderr
        assert (via.returncode, via.stderr) == (daemonless.returncode, daemonless.stderr) == \
            (2, f"nsrun: {secret}: cannot open: Permission denied\n"), (via.stderr, daemonless.stderr)
        assert served(svc) == before  # not through the service
        r = lab.nsrun(*args, input="exit\n")  # root itself (no sudo): its own file, through the service
        assert r.returncode == 2 and "'s3cr3t-value' is not" in r.stderr, r.stderr
        assert served(svc) == before + 1
        assert not os.path.exists("/run/netns/sp")
    finally:
        svc.stop()
