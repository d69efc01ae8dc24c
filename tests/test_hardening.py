"""Issue 15: regression tests for what an adversarial trial found (one test or more per item)."""

from __future__ import annotations

import os
import subprocess

from nsrun import kernel


def _mount_tmpfs(path: str, opts: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "nsrun-full", path], check=True)


def _remount(path: str, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", path], check=True)


def test_full_state_directory_fails_cleanly_and_leaks_nothing(lab):
    """Item 9: a state directory that fills up at any point of a run gives one line and exit 1
    (never an internal error), and leaves no lease without an owner to keep the bridge, the
    NAT rules and ip_forward alive: once there is room again, gc leaves the host as found."""
    statedir = str(lab.statedir)
    os.makedirs(statedir, mode=0o700)
    _mount_tmpfs(statedir, "mode=0700,nr_inodes=1000")
    try:
        failures = 0
        for limit in range(2, 16):
            _remount(statedir, f"nr_inodes={limit}")
            r = lab.nsrun("--", "true")
            _remount(statedir, "nr_inodes=1000")
            if r.returncode != 0:
                failures += 1
                assert r.returncode == 1, (limit, r.returncode, r.stderr)
                lines = r.stderr.splitlines()
                assert len(lines) == 1 and lines[0].startswith("nsrun: "), (limit, r.stderr)
                assert "internal error" not in r.stderr and "Traceback" not in r.stderr, r.stderr
            for root, _dirs, files in os.walk(statedir):
                if os.path.basename(root) == "leases":
                    for fn in files:
                        with open(os.path.join(root, fn)) as fh:
                            assert fh.read().strip(), f"a lease with no owner: {fn} (limit {limit})"
            gc = lab.nsrun("gc")
            assert gc.returncode == 0, gc.stderr
        assert failures >= 3  # the limits above did cut runs short at several points
    finally:
        kernel.umount2(statedir, kernel.MNT_DETACH)
