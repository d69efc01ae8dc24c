"""The test sessions' private mounts (conftest.pytest_configure): a session that made
/run/netns or /etc/netns removes it at its end only when no other mount namespace has a
mount there, since removing it would detach that mount (another session's, with its labs);
and a session notices when its own was detached, instead of reading the machine's
directories as a leak."""

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest

import conftest
from support.mounts import mounted_elsewhere

needs_root = pytest.mark.skipif(not conftest.IS_ROOT, reason="mounts need root")


@needs_root
def test_a_mount_in_another_namespace_is_seen_and_removing_its_directory_detaches_it():
    top = tempfile.mkdtemp(prefix="nsrun-mounts-")
    d = os.path.join(top, "netns")
    os.mkdir(d)
    p = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                          f"mount -t tmpfs sessionmount {d} && touch {d}/lab && echo ready && exec sleep 60"],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        assert mounted_elsewhere(d)  # what pytest_unconfigure now asks first
        # What the old pytest_unconfigure did: its rmdir succeeds, and the other
        # namespace's mount, with what it held, is gone.
        os.rmdir(d)
        r = subprocess.run(["nsenter", "-t", str(p.pid), "-m", "ls", d], capture_output=True, text=True)
        assert r.returncode != 0, r.stdout
        assert not mounted_elsewhere(d)
    finally:
        p.kill()
        p.wait()
        if os.path.isdir(d):
            os.rmdir(d)
        os.rmdir(top)


@needs_root
def test_this_session_notices_its_mounts_detached(monkeypatch):
    top = tempfile.mkdtemp(prefix="nsrun-mounts-")
    try:
        monkeypatch.setattr(conftest, "SESSION_MOUNTS", {top: os.stat(top).st_dev})
        assert conftest.session_mounts_lost() is None
        os.rmdir(top)
        assert "detached" in (conftest.session_mounts_lost() or "")
    finally:
        if os.path.isdir(top):
            os.rmdir(top)


@needs_root
def test_a_mount_inside_an_overlay_survives_the_removal_of_the_directory_below():
    # NSRUN_TEST_OVERLAY=1: the session's /etc/netns and /run/netns are mounted on directories
    # of overlays of /etc and /run; another session removing the machine's directory does
    # not detach them.
    top = tempfile.mkdtemp(prefix="nsrun-mounts-")
    lower, base = os.path.join(top, "etc"), os.path.join(top, "base")
    os.makedirs(os.path.join(lower, "netns"))
    os.mkdir(base)
    script = (f"mount -t tmpfs b {base} && mkdir {base}/u {base}/w && "
              f"mount -t overlay o -o lowerdir={lower},upperdir={base}/u,workdir={base}/w {lower} && "
              f"mount -t tmpfs s {lower}/netns && touch {lower}/netns/lab && echo ready && "
              f"read line && ls {lower}/netns")
    p = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        os.rmdir(os.path.join(lower, "netns"))  # the machine's, as another session's end would
        out, _ = p.communicate("go\n", timeout=30)
        assert out.split() == ["lab"], out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        subprocess.run(["rm", "-rf", top])
