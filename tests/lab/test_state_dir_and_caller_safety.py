"""Issue 15: regression tests for what an adversarial trial found (one test or more per item)."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import CLIENT
from nsrun.linux import kernel


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


def _bad_state_dirs(base: str) -> list[tuple[str, str]]:
    """(NSRUN_STATE_DIR, expected fragment of the one-line refusal), each made under BASE."""
    os.makedirs(base, mode=0o755)
    link = f"{base}/dangling"
    os.symlink(f"{base}/nowhere", link)
    loop = f"{base}/loop"
    os.symlink(loop, loop)
    afile = f"{base}/file"
    open(afile, "w").close()
    theirs = f"{base}/theirs"
    os.mkdir(theirs, 0o777)
    os.chmod(theirs, 0o777)
    os.chown(theirs, 65534, 65534)  # an attacker's 0777 directory
    open_to_all = f"{base}/open"
    os.mkdir(open_to_all)
    os.chmod(open_to_all, 0o777)
    return [
        ("relative/state", "must be an absolute path"),
        (f"{base}/nonexistent/deep/x", "does not exist"),
        (link, "symbolic link"),
        (loop, "symbolic link"),
        ("/proc/self", "symbolic link"),
        (afile, "not a directory"),
        (theirs, "owned by root and writable by no one else"),
        (open_to_all, "owned by root and writable by no one else"),
    ]


def test_unsafe_state_directories_are_refused(lab, tmp_path):
    """Item 11 and the Low NSRUN_STATE_DIR cases: no RecursionError, no hang, nothing created
    deep down, and no write into a directory someone else could have planted links in."""
    base = str(tmp_path / "states")
    for value, fragment in _bad_state_dirs(base):
        for args in (["gc"], ["up", "st", "-p", "isolated"], ["--", "true"]):
            r = lab.nsrun(*args, env={"NSRUN_STATE_DIR": value}, timeout=20)
            assert r.returncode == 2, (value, args, r.returncode, r.stderr)
            assert fragment in r.stderr and len(r.stderr.splitlines()) == 1, (value, r.stderr)
    assert not os.path.exists(f"{base}/nonexistent")
    assert os.listdir(f"{base}/theirs") == [] and os.listdir(f"{base}/open") == []


def test_nsrun_refuses_to_act_on_the_hosts_state_from_inside_a_namespace(lab):
    """Item 5: gc or down run from inside a namespace would act on that namespace's network
    with the host's records; they are refused (exit 2), and the namespace is untouched."""
    assert lab.nsrun("up", "inner", "-p", "nat").returncode == 0
    try:
        before = lab.snapshot()
        for args in (["gc"], ["down", "inner"], ["up", "other", "-p", "nat"], ["--", "true"]):
            r = lab.nsrun("exec", "inner", "--", sys.executable, "-m", "nsrun", *args)
            assert r.returncode == 2, (args, r.returncode, r.stderr)
            assert "belongs to another network namespace" in r.stderr, r.stderr
        assert lab.snapshot() == before
        assert lab.nsrun("exec", "inner", "--", *CLIENT).stdout.strip()  # still wired
    finally:
        assert lab.nsrun("down", "inner").returncode == 0


def test_sudo_callers_profile_paths_are_read_with_their_rights(lab, tmp_path):
    """Item 13: under sudo, `-p /root-only/file` told the caller whether the file exists and
    showed parts of it in the error; it is opened with the caller's rights now."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    secret = private / "secret.toml"
    secret.write_text('mode = "nat"\nsubnet = "s3cr3t-value"\n')
    os.chmod(secret, 0o644)
    sudo = {"SUDO_UID": "65534", "SUDO_GID": "65534", "SUDO_USER": "nobody"}
    for spec in (str(secret), str(private / "absent.toml")):
        for args in (["profiles", "show", spec], ["-p", spec, "--", "true"], ["up", "x", "-p", spec]):
            r = lab.nsrun(*args, env=sudo)
            assert r.returncode == 2, (args, r.stderr)
            assert "Permission denied" in r.stderr and "s3cr3t" not in r.stderr, r.stderr
    # Root itself, and a file the caller may read, work as before.
    assert "s3cr3t-value" in lab.nsrun("profiles", "show", str(secret)).stderr
    import shutil
    import tempfile

    public = tempfile.mkdtemp(prefix="nsrun-test-")  # pytest's own tmp_path is 0700
    try:
        os.chmod(public, 0o755)
        shared = os.path.join(public, "shared.toml")
        with open(shared, "w") as fh:
            fh.write('mode = "isolated"\n')
        os.chmod(shared, 0o644)
        r = lab.nsrun("-p", shared, "--", "true", env=sudo)
        assert r.returncode == 0, r.stderr
    finally:
        shutil.rmtree(public)


def test_a_killed_runs_cmd_ignoring_term_does_not_delay_the_next_run(lab):
    """Low item: the next run reclaims a run whose nsrun was SIGKILLed; when that run's CMD
    ignores SIGTERM, the reclaim used to wait out its 5 s grace before KILL."""
    import signal
    import time

    p = lab.popen("--", "sh", "-c", "trap '' TERM; echo ready; exec sleep 60")
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        os.kill(p.pid, signal.SIGKILL)  # nsrun itself (nsenter execs it): a crash
        p.wait(10)
        start = time.monotonic()
        r = lab.nsrun("--", "true")
        took = time.monotonic() - start
        assert r.returncode == 0, r.stderr
        assert took < 4.5, f"the next run took {took:.1f} s"
        assert lab.nsrun("gc").stdout.strip() == "nothing to reclaim"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()
