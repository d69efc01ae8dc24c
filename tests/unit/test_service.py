"""Issue 13, without the lab: the service's per-name locks, and its systemd units (they keep
the host's mount namespace, and verify). The service itself: tests/lab/test_service.py.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from conftest import REPO
from support.requirements import requires


def test_units_verify_and_keep_the_host_mount_namespace(tmp_path):
    units = REPO / "systemd"
    service_text = (units / "nsrun.service").read_text()
    settings = {line.split("=", 1)[0] for line in service_text.splitlines() if "=" in line and not line.startswith("#")}
    # Any of these gives the service its own mount namespace: /run/netns/NAME would not reach the host.
    assert not settings & {"ProtectSystem", "ProtectHome", "PrivateTmp", "ReadWritePaths", "ReadOnlyPaths",
                           "ProtectKernelTunables", "ProtectControlGroups", "PrivateDevices", "PrivateMounts",
                           "TemporaryFileSystem", "BindPaths", "ProtectKernelModules", "ProtectKernelLogs",
                           "ProtectProc", "InaccessiblePaths"}
    assert "CapabilityBoundingSet=CAP_NET_ADMIN CAP_SYS_ADMIN" in service_text
    requires("systemd-analyze")
    # verify insists that ExecStart's program exists: the units name /usr/local/bin/nsrun
    # (`install.sh --venv`; the Debian package's copies name /usr/bin/nsrun), which a machine
    # need not have, so the copies verified name a stand-in (nothing else differs)
    stand_in = tmp_path / "bin" / "nsrun"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    for unit in ("nsrun.socket", "nsrun.service"):
        text = (units / unit).read_text()
        (tmp_path / unit).write_text("".join(
            line.replace("/usr/local/bin/nsrun", str(stand_in)) if line.startswith("Exec") else line
            for line in text.splitlines(keepends=True)))
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "nsrun.socket"), str(tmp_path / "nsrun.service")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_name_locks_serialise_one_name_and_are_kept_only_while_used():
    """Every ephemeral run has a name of its own: a lock kept per name ever seen would grow
    for as long as the service runs."""
    import threading

    from nsrun.service.handlers import Context

    ctx = Context()
    events: list[str] = []

    def second() -> None:
        with ctx.name_lock("web"):
            events.append("second")

    with ctx.name_lock("web"):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.1)
        events.append("first")  # the second waits for it
        assert ctx.names_locked() == 1
        with ctx.name_lock("db"):  # other names do not wait
            assert ctx.names_locked() == 2
    t.join(10)
    assert events == ["first", "second"]
    for i in range(1000):
        with ctx.name_lock(f"nsrun-{i:08x}"):
            pass
    with pytest.raises(RuntimeError):
        with ctx.name_lock("web"):
            raise RuntimeError("a failed request")
    assert ctx.names_locked() == 0


def test_the_heap_goes_back_to_the_kernel_when_the_service_idles(monkeypatch):
    """Issue 26, item 3: glibc keeps what the service's threads freed (bench/README.md, "The
    service over many runs"); once nothing is live or being taken down, it is trimmed."""
    import contextlib

    from nsrun.linux import kernel
    from nsrun.service.runs import Runs

    trims: list[int] = []
    monkeypatch.setattr(kernel, "trim_heap", lambda: trims.append(1))
    runs = Runs(lambda name: contextlib.nullcontext())
    runs.reserve(1000)
    runs.reserve(0)
    runs.release(1000)
    assert trims == []  # root's run is still live
    runs.release(0)
    assert trims == [1]
    with runs._lock:
        runs._ending, runs._pending = 1, {"x"}
    runs._ended("x")
    assert trims == [1, 1]
