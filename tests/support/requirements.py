"""What the suite needs beyond install.sh: tools and kernel features, and the one way a test
says so.

`requires(WHAT, ...)` (in a test or fixture), or the marker `@pytest.mark.requires(WHAT, ...)`
(on a test, a class, or a module's `pytestmark`; conftest's pytest_runtest_setup calls
`requires` before the test's fixtures are made): where one is missing, the test is skipped
with the reason, except under CI, where it fails naming what is missing. CI (.ci/run, which
sets CI=true) installs every tool the suite uses and runs on a kernel with every feature in
FEATURES: there a skip would hide a whole feature (a host kind, WireGuard mode, OpenVPN)
behind an `s`. `requires(..., module=True)` at a module's top skips it as a whole.

WHAT is a command looked up on PATH, an absolute path to an executable, or a name in
FEATURES. Not requirements, so plain skips with their reason also under CI: limits of a
kernel that CI's may share (bond and vrf links, tests/lab/test_uplink.py; TIOCSTI disabled
by dev.tty.legacy_tiocsti, tests/lab/test_terminal_isolation.py; no WireGuard module, so
userspace wireguard-go is what the suite runs), tests that need root run without it, and
tests that apply to some host kinds only.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

# Debian packages of the tools (.ci/run installs them), for the reason a test gives.
PACKAGES = {
    "dockerd": "docker.io", "ufw": "ufw", "firewalld": "firewalld", "firewall-cmd": "firewalld",
    "dbus-daemon": "dbus-daemon", "iptables-nft": "iptables", "nft": "nftables",
    "wireguard-go": "wireguard-go", "wg": "wireguard-tools", "tcpdump": "tcpdump", "openvpn": "openvpn",
    "zsh": "zsh", "fish": "fish", "systemd-analyze": "systemd", "script": "bsdutils", "groff": "groff-base",
    "dpkg-deb": "dpkg", "lintian": "lintian",
    "/usr/bin/python3": "python3",
    # the CNI plugin's judges (tests/lab/test_cni.py, test_cni_podman.py)
    "go": "golang-go", "podman": "podman", "runc": "runc", "conmon": "conmon",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
}


def under_ci() -> bool:
    """Whether this is a CI run (CI set, as .ci/run and CI services set it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _cgroup2() -> str | None:
    from nsrun.linux import cgroup

    return None if cgroup.mountpoint() is not None else "no cgroup v2 mounted here"


def _cgroup2_writable() -> str | None:
    from nsrun.linux import cgroup

    problem = _cgroup2()
    if problem:
        return problem
    probe = cgroup.create(f"nsrun-test-probe-{os.getpid()}")
    if probe is None:
        return "cgroup v2 is not writable here"
    cgroup.remove(probe)
    return None


def _libnftables() -> str | None:
    from nsrun.engine.firewall import nftables

    return None if nftables.available() else "libnftables is not installed (Debian package libnftables1)"


def _systemd_bus_policy() -> str | None:
    conf = "/usr/share/dbus-1/system.d/org.freedesktop.systemd1.conf"
    return None if os.path.exists(conf) else f"{conf} is missing (Debian package systemd)"


def built_package() -> Path | None:
    """dist/nsrun_VERSION_ARCH.deb (the changelog's VERSION), when it was built after every
    file of this checkout that goes into it (`sh install.sh --test` builds it)."""
    repo = Path(__file__).resolve().parents[2]
    version = (repo / "debian" / "changelog").read_text().split("(", 1)[1].split(")", 1)[0]
    found = sorted((repo / "dist").glob(f"nsrun_{version}_*.deb"))
    if not found:
        return None
    built = found[-1].stat().st_mtime
    sources = [repo / "pyproject.toml", repo / "docs" / "nsrun.1"]
    for top in ("nsrun", "profiles", "completions", "systemd", "debian"):
        sources += [p for p in (repo / top).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return found[-1] if all(p.stat().st_mtime <= built for p in sources) else None


def _built_package() -> str | None:
    return None if built_package() else ("no Debian package built from this checkout's files in dist/ "
                                         "(sh install.sh --test builds it)")


LIBCNI = "/usr/share/gocode/src/github.com/containernetworking/cni/libcni/api.go"


def _libcni_source() -> str | None:
    return None if os.path.exists(LIBCNI) else f"{LIBCNI} is missing (Debian package golang-github-appc-cni-dev)"


def _static_busybox() -> str | None:
    """/bin/busybox, linked statically: a container's whole root file system (podman's tests)."""
    import struct

    try:
        with open("/bin/busybox", "rb") as fh:
            data = fh.read()
    except OSError:
        return "/bin/busybox is missing (Debian package busybox-static)"
    dynamic = data[:5] != b"\x7fELF\x02"
    if not dynamic:  # a program header PT_INTERP (3): it needs a dynamic loader
        phoff, = struct.unpack_from("<Q", data, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
        dynamic = any(struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 3 for i in range(phnum))
    return "/bin/busybox is linked dynamically (Debian package busybox-static)" if dynamic else None


def _module(name: str, package: str) -> Callable[[], str | None]:
    return lambda: None if importlib.util.find_spec(name) else f"Python module {name} is missing ({package})"


FEATURES: dict[str, Callable[[], str | None]] = {
    "cgroup v2": _cgroup2,
    "writable cgroup v2": _cgroup2_writable,
    "libnftables": _libnftables,
    "systemd's D-Bus policy": _systemd_bus_policy,
    "mypy": _module("mypy", "the test extras: sh install.sh --test"),
    "the built package": _built_package,
    "libcni's source": _libcni_source,
    "a static busybox": _static_busybox,
}


def missing(what: str) -> str | None:
    """Why WHAT is not available here, or None when it is."""
    if what in FEATURES:
        return FEATURES[what]()
    if what.startswith("/"):
        return None if os.access(what, os.X_OK) else f"{what} is missing (Debian package {PACKAGES.get(what, '?')})"
    if shutil.which(what):
        return None
    return f"{what} is not installed (Debian package {PACKAGES.get(what, what)})"


def requires(*what: str, module: bool = False) -> None:
    """Skip the test (MODULE: the whole module, at import) unless every one of WHAT is here;
    under CI, fail instead, naming what is missing."""
    reasons = [why for w in what if (why := missing(w))]
    if not reasons:
        return
    if under_ci():
        pytest.fail(f"required under CI: {'; '.join(reasons)} (.ci/run installs every tool the suite uses)",
                    pytrace=False)
    pytest.skip("; ".join(reasons), allow_module_level=module)
