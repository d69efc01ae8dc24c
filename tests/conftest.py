"""Shared fixtures: the lab of namespaces, nsrun run inside the lab host, and snapshots.

Two tiers. tests/unit/ needs no lab: `pytest -m "not lab"` (well under a minute). tests/lab/
needs root and a real kernel, each test on a lab of namespaces of its own: `pytest -m lab`.
A test is `lab` when it sits in tests/lab/ or uses the `lab` fixture (or `lab_session`, or
`via`); one in tests/unit/ that does is a collection error. CI runs everything: plain
`pytest` as root (.ci/run). tests/support/ is the harness; tests/stress/ is run by hand.

Host kinds: each lab module runs on the kinds of lab host its HOST_KINDS names (default
legacy; every kind: HOST_KINDS in tests/support/hostkinds.py). NSRUN_TEST_HOST_KINDS
(comma-separated, e.g. `legacy,nftables`) narrows every module's list to those kinds.

The machine's own network is never touched: nsrun runs inside the lab host (`nsenter --net`)
and every address lives in the lab's namespaces. The `lab` fixture snapshots the lab host
(links, addresses, routes, rules, firewall, sysctls, /run/netns, /etc/netns, state files)
before and after each test and fails it on any difference: that snapshot is what asserts
cleanup, and no refactor may drop it.

A test that needs a tool or a kernel feature says so through tests/support/requirements.py
(`requires(...)`, `@pytest.mark.requires(...)`): skipped without it, failed under CI (the CI
variable set, as .ci/run sets it), where the summary also lists the skips (`-rs`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The harness's plain asserts report like a test's own (the run suite's checks, the service).
pytest.register_assert_rewrite("support")

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "profiles"
SUPPORT = REPO / "tests" / "support"  # the harness; dnslab, vpnlab, drive and draws run as programs
CLIENT = [sys.executable, "-m", "nsrun.lab", "client"]
IS_ROOT = os.geteuid() == 0

MACHINE_NETNS_FD = -1
OVERLAY_BASE = ""  # NSRUN_TEST_OVERLAY=1: the session's own upper layers for /etc and /run
CREATED_RUN_NETNS = False
CREATED_ETC_NETNS = False
lab_only = pytest.mark.skipif(not IS_ROOT, reason="integration tests need root")


def pytest_configure(config: pytest.Config) -> None:
    """Under CI, the skip summary (`-rs`). Give the test session its own mount namespace with
    a private /run/netns (and /etc/netns when the machine has one): the labs' namespaces and
    nsrun's are then mounted only there, invisible to the machine and gone with the session
    even if it is killed."""
    from support.requirements import under_ci

    if under_ci():
        _report_skips(config)
    if not IS_ROOT or os.environ.get("NSRUN_TEST_SHARED_MOUNTS"):
        return
    from nsrun.linux import kernel

    global MACHINE_NETNS_FD, CREATED_RUN_NETNS, CREATED_ETC_NETNS, OVERLAY_BASE
    CREATED_RUN_NETNS = not os.path.isdir("/run/netns")
    CREATED_ETC_NETNS = not os.path.isdir("/etc/netns")
    if not CREATED_RUN_NETNS:  # the machine's view (not made for it: with an overlay, made
        MACHINE_NETNS_FD = os.open("/run/netns", os.O_RDONLY | os.O_DIRECTORY)  # there only)
    kernel.unshare(kernel.CLONE_NEWNS)
    kernel.mount("", "/", "none", kernel.MS_SLAVE | kernel.MS_REC)
    if os.environ.get("NSRUN_TEST_OVERLAY") == "1":
        # /etc and /run as overlays whose upper layers are the session's own: its /run/netns
        # and /etc/netns are then directories no other session can remove (SESSION_MOUNTS),
        # and nothing the session writes there reaches the machine's.
        import tempfile

        OVERLAY_BASE = tempfile.mkdtemp(prefix="nsrun-session-")
        kernel.mount("nsrun-tests", OVERLAY_BASE, "tmpfs", 0)
        for top in ("/etc", "/run"):
            upper, work = f"{OVERLAY_BASE}{top}/upper", f"{OVERLAY_BASE}{top}/work"
            os.makedirs(upper)
            os.makedirs(work)
            subprocess.run(["mount", "-t", "overlay", "nsrun-tests", "-o",
                            f"lowerdir={top},upperdir={upper},workdir={work}", top], check=True)
        CREATED_RUN_NETNS = CREATED_ETC_NETNS = False  # made, if at all, in the overlays
    os.makedirs("/run/netns", mode=0o755, exist_ok=True)
    kernel.mount("nsrun-tests", "/run/netns", "tmpfs", 0)
    # A private /etc/netns too, made for the session when the machine has none: then no other
    # test session's DNS files (nor the machine's) show in this one's snapshots.
    os.makedirs("/etc/netns", mode=0o755, exist_ok=True)
    kernel.mount("nsrun-tests", "/etc/netns", "tmpfs", 0)
    for path in ("/run/netns", "/etc/netns"):
        SESSION_MOUNTS[path] = os.stat(path).st_dev


def _report_skips(config: pytest.Config) -> None:
    """`-rs` for a CI run: the summary lists every skipped test with its reason, so a reader
    sees what did not run and why. Here rather than in .ci/run (PYTEST_ADDOPTS) so that any
    CI that sets CI gets it, and the README's test command stays the one CI runs."""
    chars = config.option.reportchars or ""
    if "s" not in chars and "a" not in chars and "A" not in chars:
        config.option.reportchars = chars + "s"
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:  # already made: it read the option when it was
            reporter.reportchars += "s"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """`@pytest.mark.requires(WHAT, ...)`: support.requirements.requires, before the test's
    fixtures are made (skip where WHAT is missing; under CI, fail naming it)."""
    from support.requirements import requires

    needed = [what for mark in item.iter_markers("requires") for what in mark.args]
    if needed:
        requires(*needed)  # one message naming all that is missing


# The session's private tmpfs mounts, by path: their device numbers. A directory that is a
# mount point in another mount namespace can still be removed (Linux >= 3.18), which detaches
# every mount on it in every namespace: another test session that made /run/netns or
# /etc/netns, and removes it at its end, would take this session's mounts away, and with them
# the labs' namespaces, and show the machine's directories in their place.
SESSION_MOUNTS: dict[str, int] = {}


def session_mounts_lost() -> str | None:
    """Which of the session's private mounts is gone (None: all are there)."""
    for path, dev in SESSION_MOUNTS.items():
        try:
            if os.stat(path).st_dev == dev:
                continue
        except OSError:
            pass
        return (f"{path}, this test session's private mount, was detached (another test session "
                "removed the directory under it)")
    return None


def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave the machine's /run/netns and /etc/netns as found: empty directories made for the
    session go, unless another test session has its own mount there still (removing the
    directory would detach that, see SESSION_MOUNTS; the last session to end removes it)."""
    from nsrun.linux import kernel
    from support.mounts import mounted_elsewhere

    for made, path in ((CREATED_RUN_NETNS, "/run/netns"), (CREATED_ETC_NETNS, "/etc/netns")):
        if made:
            try:
                kernel.umount2(path, kernel.MNT_DETACH)
                if not mounted_elsewhere(path):
                    os.rmdir(path)
            except OSError:
                pass
    if OVERLAY_BASE:
        try:
            kernel.umount2(OVERLAY_BASE, kernel.MNT_DETACH)
            os.rmdir(OVERLAY_BASE)
        except OSError:
            pass


# Test modules that run against several kinds of host name them in HOST_KINDS; the rest run
# on the legacy lab. NSRUN_TEST_HOST_KINDS (comma-separated) narrows every module's list.
DEFAULT_HOST_KINDS = ["legacy"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "host_kind" in metafunc.fixturenames:
        kinds = list(getattr(metafunc.module, "HOST_KINDS", DEFAULT_HOST_KINDS))
        only = os.environ.get("NSRUN_TEST_HOST_KINDS")
        if only:
            kinds = [k for k in kinds if k in only.split(",")] or kinds[:1]
        metafunc.parametrize("host_kind", kinds, indirect=True, scope="session")
    if getattr(metafunc.module, "VIA_SERVICE", False) and "via" in metafunc.fixturenames:
        # issue 13: the module's tests once more through `nsrun daemon` (legacy host only:
        # pytest_collection_modifyitems drops the other kinds' service variants)
        metafunc.parametrize("via", ["daemonless", "service"], indirect=True)


LAB_DIR = REPO / "tests" / "lab"
UNIT_DIR = REPO / "tests" / "unit"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The `lab` marker, by fixture and by directory (the two must agree: a test in tests/unit/
    that uses the lab is an error); drop the service variants of other kinds than legacy."""
    keep, drop, misplaced = [], [], []
    for item in items:
        path = Path(str(item.path)).resolve()
        uses_lab = bool({"lab", "lab_session", "lab6", "lab6_session"} & set(item.fixturenames))
        if uses_lab and UNIT_DIR in path.parents:
            misplaced.append(item.nodeid)
        if uses_lab or LAB_DIR in path.parents:
            item.add_marker(pytest.mark.lab)
            item.add_marker(lab_only)
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("via") == "service" and params.get("host_kind", "legacy") != "legacy":
            drop.append(item)
        else:
            keep.append(item)
    if misplaced:
        raise pytest.UsageError("these tests use the lab (the `lab` or `lab_session` fixture) but sit in "
                                "tests/unit/; move them to tests/lab/:\n  " + "\n  ".join(misplaced))
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def via(request: pytest.FixtureRequest, lab: LabRunner, tmp_path: Path) -> Iterator[str]:
    """`service`: an `nsrun daemon` in the lab host for the test (the nsrun it runs finds its
    socket in the lab's state directory and goes through it); stopped after the test, once
    every namespace it watches is down, before the lab host is compared. `daemonless`: none."""
    how = str(getattr(request, "param", "daemonless"))
    if how != "service":
        yield how
        return
    from support.service import Service

    svc = Service(lab, tmp_path / "daemon.log").start()
    lab.service = svc
    lab.front = "python"  # the Python client through the service; the rest of the suite runs the C front
    try:
        yield how
        assert svc.proc is not None and svc.proc.poll() is None, f"the service died: {svc.log()}"
        svc.wait_idle()
        assert "Traceback" not in svc.log(), svc.log()
    finally:
        lab.service = None
        svc.stop()


def machine_network() -> dict[str, Any]:
    """What the tests must never change in the network namespace this session runs in (the
    machine's own): its links, its legacy xtables tables and the rules of those it already has
    (a listing of a missing one, `iptables-legacy -S`, instantiates it for good: built-in
    tables go only with their namespace, so only tables already there are listed), its
    nf_tables tables and its forwarding."""
    def read(path: str) -> str:
        try:
            with open(path) as fh:
                return fh.read()
        except OSError:
            return ""

    def legacy_rules(kind: str, tool: str) -> dict[str, str]:
        tables = read(f"/proc/net/{kind}_tables_names").split()
        if not tables or not shutil.which(tool):
            return {}
        return {table: subprocess.run([tool, "-w", "-t", table, "-S"], capture_output=True,
                                      text=True).stdout for table in sorted(tables)}

    nft = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True) \
        if shutil.which("nft") else None
    return {
        "ip legacy rules": legacy_rules("ip", "iptables-legacy"),
        "ip6 legacy rules": legacy_rules("ip6", "ip6tables-legacy"),
        "links": sorted(os.listdir("/sys/class/net")),
        **{f"{kind}_tables_names": read(f"/proc/net/{kind}_tables_names") for kind in ("ip", "ip6", "arp")},
        "nft tables": nft.stdout if nft is not None else "",
        "ip_forward": read("/proc/sys/net/ipv4/ip_forward"),
        "ipv6 forwarding": read("/proc/sys/net/ipv6/conf/all/forwarding"),
    }


@pytest.fixture(scope="session")
def machine_before() -> dict[str, Any]:
    """The machine's own network namespace as the session found it (machine_network): what a
    test that must leave it alone compares with, since a machine may already hold a table."""
    return machine_network() if IS_ROOT else {}


@pytest.fixture(scope="session", autouse=True)
def machine_untouched(machine_before: dict[str, Any]) -> Iterator[None]:
    """The session leaves the machine's own network namespace as it found it (each lab test
    checks its lab host; this checks the namespace the labs are built from)."""
    if not IS_ROOT:
        yield
        return
    before = machine_before
    yield
    after = machine_network()
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, f"the session changed the machine's own network namespace (before, after): {changed}"


@pytest.fixture(scope="session")
def host_kind(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "legacy"))


# What each kind of lab host runs (the checks of every kind use iptables, nft, ip: install.sh's)
KIND_TOOLS = {"docker": ("dockerd",), "ufw": ("ufw",), "iptables-nft": ("iptables-nft",),
              "firewalld": ("firewalld", "firewall-cmd", "dbus-daemon")}


@pytest.fixture(scope="session")
def lab_session(host_kind: str) -> Iterator[Any]:
    from support.hostkinds import HostLab
    from support.requirements import requires

    requires(*KIND_TOOLS.get(host_kind, ()))  # under CI a missing one fails every test of the kind

    lab = HostLab(kind=host_kind).build()
    try:
        yield lab
    finally:
        lab.destroy()


@pytest.fixture(scope="session")
def lab6_session(host_kind: str) -> Iterator[Any]:
    """The lab with its IPv6 (tests/support/lab6.py): a LAN prefix, gateways that NAT66, an
    upstream server on IPv6 too, the lab host's default route by SLAAC."""
    from support.hostkinds import HostLab
    from support.requirements import requires

    requires(*KIND_TOOLS.get(host_kind, ()))

    lab = HostLab(kind=host_kind, ipv6=True).build()
    try:
        yield lab
    finally:
        lab.destroy()


class LabRunner:
    """Runs nsrun (and other commands) inside the lab host, with a private state dir."""

    def __init__(self, lab: Any, statedir: Path) -> None:
        self.lab = lab
        self.statedir = statedir
        self.env = dict(os.environ, NSRUN_STATE_DIR=str(statedir), NSRUN_PROFILE_PATH=str(PROFILES),
                        PYTHONPATH=str(REPO))
        for key in ("SUDO_UID", "SUDO_GID", "SUDO_USER", "NSRUN_FAULT", "NOTIFY_SOCKET", "DBUS_SYSTEM_BUS_ADDRESS"):
            self.env.pop(key, None)
        if getattr(lab, "firewalld", None) is not None:  # the lab's own system bus, firewalld on it
            self.env["DBUS_SYSTEM_BUS_ADDRESS"] = lab.firewalld.bus
        self.service: Any = None  # the `via` fixture's `nsrun daemon`, when the test goes through one
        # How `nsrun` is started: `native`, the C front the package installs (native/nsrun.c,
        # support.native), which hands what it does not do itself to `python -m nsrun`;
        # `python`, that directly (NSRUN_TEST_FRONT=python; the `via` fixture's `service`).
        self.front = os.environ.get("NSRUN_TEST_FRONT", "native")

    def settle(self) -> None:
        """After an ephemeral run returned: through the service, a root caller's CMD is the
        client itself, so its namespace goes just *after* it exits (the service's watcher);
        wait for that. Without the service, nothing is left by then: no wait."""
        if self.service is not None:
            self.service.wait_idle()

    def host_argv(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.lab.host}", *argv]

    def nsrun_argv(self, *args: str) -> list[str]:
        if self.front == "native":
            from support import native

            return self.host_argv([native.front(), *args])
        return self.host_argv([sys.executable, "-m", "nsrun", *args])

    def nsrun(self, *args: str, env: dict[str, str] | None = None, input: str | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.nsrun_argv(*args), env={**self.env, **(env or {})}, input=input,
                              capture_output=True, text=True, timeout=timeout, cwd=REPO)

    def popen(self, *args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(self.nsrun_argv(*args), env={**self.env, **(env or {})}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, **kw)

    def host(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """An independent tool (ip, iptables-legacy-save, nft...) run in the lab host."""
        return subprocess.run(self.host_argv(list(argv)), capture_output=True, text=True,
                              check=check, timeout=30)

    def host_json(self, *argv: str) -> Any:
        # `ip` fails a dump the kernel marks interrupted (links changed meanwhile: a namespace
        # just deleted takes its veths with it a moment later, in the kernel's own time).
        for _ in range(20):
            r = self.host(*argv, check=False)
            if r.returncode == 0 or "Dump was interrupted" not in r.stderr:
                break
            time.sleep(0.05)
        assert r.returncode == 0, (argv, r.returncode, r.stderr)
        return json.loads(r.stdout or "null")

    def snapshot(self) -> dict[str, Any]:
        return snapshot(self)

    @property
    def kind(self) -> str:
        return str(self.lab.kind)

    def nat_rules(self) -> str:
        """nsrun's NAT rules as the backend this kind of host gets writes them."""
        if self.kind == "legacy":
            return self.host("iptables-legacy-save").stdout
        return self.host("nft", "list", "ruleset").stdout


def _changes(diff: dict[str, tuple[Any, Any]]) -> str:
    """DIFF (key: (before, after)) for a reader: of a list, the entries gone and those new."""
    out = {}
    for key, (before, after) in diff.items():
        if isinstance(before, list) and isinstance(after, list):
            out[key] = {"gone": [b for b in before if b not in after], "new": [a for a in after if a not in before]}
        else:
            out[key] = {"before": before, "after": after}
    return json.dumps(out, indent=1)


def _legacy_rules(text: str) -> list[str]:
    # Rules and non-default policies; an instantiated-but-empty table equals an absent one.
    out = []
    for line in text.splitlines():
        if line.startswith("-A"):
            out.append(line)
        elif line.startswith(":") and "ACCEPT" not in line.split()[1:2]:
            out.append(re.sub(r"\[\d+:\d+\]", "", line))
    return sorted(out)


def _etc_netns() -> list[str]:
    """/etc/netns entries, less those of namespaces that exist outside this session (other
    users of the machine; the session's own /run/netns is private, see pytest_configure)."""
    if not os.path.isdir("/etc/netns"):
        return []
    elsewhere = set(os.listdir(MACHINE_NETNS_FD)) if MACHINE_NETNS_FD >= 0 else set()
    return sorted(set(os.listdir("/etc/netns")) - elsewhere)


# What changes by itself in `ip -j` output: an address's lifetimes and a route's expiry
# (SLAAC's, counting down between router advertisements), a link's operstate (carrier).
TIMERS = ("valid_life_time", "preferred_life_time", "expires")


def _untimed(entries: Any) -> Any:
    """`ip -j` entries with the TIMERS keys taken out, at any depth."""
    if isinstance(entries, list):
        return [_untimed(e) for e in entries]
    if isinstance(entries, dict):
        return {k: _untimed(v) for k, v in entries.items() if k not in TIMERS and k != "operstate"}
    return entries


# What snapshot() reads in the lab host, in one run of a shell there (a run of a tool from
# here costs ~4 ms more than within one shell, and every lab test takes two snapshots): each
# section after a line "@@@ KEY"; an `ip` dump that failed says "@@@FAILED" (the kernel marks
# a dump interrupted when links change meanwhile: a namespace just deleted takes its veths
# with it a moment later, in the kernel's own time) and the whole snapshot is read again.
SYSCTL_KEYS = ("net/ipv4/ip_forward", "net/ipv4/conf/all/rp_filter", "net/ipv4/conf/br0/rp_filter",
               "net/ipv6/conf/all/forwarding",
               "net/ipv4/conf/all/route_localnet", "net/ipv4/conf/default/route_localnet",
               "net/ipv4/conf/br0/route_localnet", "net/ipv4/conf/nsrun0/route_localnet")
SNAPSHOT_READS = {
    "links": "ip -j link show",
    "addrs": "ip -j addr show",
    "routes": "ip -j route show table all",
    "routes6": "ip -j -6 route show table all",
    "rules": "ip -j rule show",
    "iptables_legacy": "iptables-legacy-save",
    "iptables_nft": "iptables-nft-save",
    "ip6tables_legacy": "ip6tables-legacy-save",
    "ip6tables_nft": "ip6tables-nft-save",
    "nft": "nft -s list ruleset",  # -s: no counters
    "ip_tables_names": "cat /proc/net/ip_tables_names",
    "ip6_tables_names": "cat /proc/net/ip6_tables_names",
    # route_localnet: the DNS forward and published ports turn it on for nsrun's bridge only;
    # accept_ra and forwarding of every interface: nsrun sets accept_ra 2 while IPv6
    # forwarding is on.
    "sysctl": "; ".join([*(f"echo \"{k}=$(cat /proc/sys/{k} 2>/dev/null)\"" for k in SYSCTL_KEYS),
                         "grep -H . /proc/sys/net/ipv6/conf/*/accept_ra /proc/sys/net/ipv6/conf/*/forwarding"]),
}
SNAPSHOT_SCRIPT = "; ".join(
    f"echo '@@@ {key}'; " + (f"{cmd} 2>/dev/null || echo '@@@FAILED'" if cmd.startswith("ip ") else f"{{ {cmd}; }} 2>/dev/null")
    for key, cmd in SNAPSHOT_READS.items())


def _read_host(r: LabRunner) -> dict[str, str]:
    """SNAPSHOT_READS' outputs, by key."""
    for _ in range(20):
        out = r.host("sh", "-c", SNAPSHOT_SCRIPT, check=False).stdout
        sections: dict[str, list[str]] = {}
        key = None
        for line in out.splitlines(keepends=True):
            if line.startswith("@@@ ") and line[4:].strip() in SNAPSHOT_READS:
                key = line[4:].strip()
                sections[key] = []
            elif key is not None:
                sections[key].append(line)
        text = {k: "".join(v) for k, v in sections.items()}
        if set(text) == set(SNAPSHOT_READS) and "@@@FAILED" not in out:
            return text
        time.sleep(0.05)
    raise AssertionError(f"the lab host could not be read: {out[-2000:]}")


def snapshot(r: LabRunner) -> dict[str, Any]:
    text = _read_host(r)
    sysctls: dict[str, Any] = {}
    per_interface = []
    for line in text["sysctl"].splitlines():
        key, sep, value = line.partition("=")
        if sep and key in SYSCTL_KEYS:
            sysctls[key] = value.strip()
        else:
            per_interface.append(line)
    sysctls["ipv6 per interface"] = sorted(per_interface)
    state_files = sorted(str(p.relative_to(r.statedir)) for p in r.statedir.rglob("*")
                         if p.is_file() and not p.name.endswith(".lock")) if r.statedir.exists() else []
    ipj = {k: json.loads(text[k] or "null") for k in ("links", "addrs", "routes", "routes6", "rules")}
    return {
        # operstate follows carrier with a delay; the rest of a link's description is state.
        "links": [{k: v for k, v in link.items() if k != "operstate"} for link in ipj["links"]],
        "addrs": _untimed(ipj["addrs"]),
        "routes": _untimed(ipj["routes"]),
        "routes6": _untimed(ipj["routes6"]),
        "rules": ipj["rules"],
        **{k: _legacy_rules(text[k]) for k in ("iptables_legacy", "iptables_nft", "ip6tables_legacy", "ip6tables_nft")},
        "nft": text["nft"],
        "ip_tables_names": text["ip_tables_names"],
        "ip6_tables_names": text["ip6_tables_names"],
        "sysctl": sysctls,
        "run_netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
        "etc_netns": _etc_netns(),
        "state": state_files,
    }


@pytest.fixture(scope="session")
def public_nsrun() -> Iterator[dict[str, str]]:
    """Environment for running this checkout's nsrun as another user: a world-readable copy
    of the package on PYTHONPATH. The checkout itself may be unreadable to that user (a
    clone under /root, mode 0700), and an installed nsrun may be another version."""
    import tempfile

    top = tempfile.mkdtemp(prefix="nsrun-public-")
    try:
        os.chmod(top, 0o755)
        shutil.copytree(REPO / "nsrun", Path(top) / "nsrun", ignore=shutil.ignore_patterns("__pycache__"))
        for dirpath, dirnames, filenames in os.walk(top):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755)
            for f in filenames:
                os.chmod(os.path.join(dirpath, f), 0o644)
        yield {"PYTHONPATH": top, "PYTHONDONTWRITEBYTECODE": "1"}
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def lab(lab_session: Any) -> Iterator[LabRunner]:
    """The lab, with a fresh nsrun state dir; fails the test if the lab host changed."""
    yield from _runner(lab_session)


@pytest.fixture
def lab6(lab6_session: Any) -> Iterator[LabRunner]:
    """As `lab`, on the lab with IPv6 (lab6_session)."""
    yield from _runner(lab6_session)


def _runner(lab_session: Any) -> Iterator[LabRunner]:
    """A LabRunner on LAB_SESSION, with a fresh nsrun state dir; fails the test if the lab
    host changed."""
    statedir = Path(f"/run/nsrun-test-{lab_session.id}-{os.getpid()}")
    runner = LabRunner(lab_session, statedir)
    lost = session_mounts_lost()
    if lost:
        pytest.fail(lost, pytrace=False)
    before = runner.snapshot()
    clean = False
    try:
        yield runner
        after = runner.snapshot()
        diff = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
        assert not diff or not session_mounts_lost(), session_mounts_lost()
        assert not diff, f"the lab host changed: {_changes(diff)[:4000]}"
        if lab_session.kind != "legacy":
            # An nf_tables host: no legacy table may ever appear, and iptables-nft says nothing.
            assert after["ip_tables_names"] == after["ip6_tables_names"] == "", after["ip_tables_names"]
            for tool in ("iptables-nft", "ip6tables-nft"):
                warn = runner.host(tool, "-S", check=False).stderr
                assert "legacy" not in warn, warn
        clean = True  # the lab host, /run/netns, /etc/netns and the state files are as before
    finally:
        # Whatever a failing test left: reclaim it so the next test starts clean. (After a
        # clean test there is nothing to reclaim: an `nsrun gc` would cost ~0.25 s a test.)
        if statedir.exists() and not clean:
            subprocess.run(runner.nsrun_argv("gc"), env=runner.env, capture_output=True, timeout=60)
            for name in os.listdir(statedir / "ns") if (statedir / "ns").exists() else []:
                if name.endswith(".json"):
                    subprocess.run(runner.nsrun_argv("down", name[:-5]), env=runner.env,
                                   capture_output=True, timeout=60)
        shutil.rmtree(statedir, ignore_errors=True)


def write_profile(directory: Path, name: str, text: str, mode: int = 0o644) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(text)
    os.chmod(path, mode)
    return path
