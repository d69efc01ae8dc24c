"""Shared pieces of the benchmarks: the lab session, timing by alternation, the table.

Every benchmark runs inside a throwaway lab of network namespaces (`nsrun.lab.Lab`):
the bench process builds the lab, then moves its *main thread's network namespace only*
into the lab host (setns, what `nsenter --net=/run/netns/HOST` does), so every command
it starts (nsrun, ip, unshare, iperf3) acts on the lab host and never on this machine's
own network. The bench has a mount namespace of its own (slave to the machine's) with
private tmpfs mounts on /run/netns and /etc/netns (tests/support/mounts.py): the lab's
namespaces and nsrun's DNS files are mounted there only, and nothing of them stays on the
machine, not even the /run/netns mount `ip netns add` makes. Moving the bench process itself (instead of prefixing each command with nsenter) keeps nsenter's
~1 ms exec out of every measurement.

nsrun runs with a private NSRUN_STATE_DIR (/run/nsrun-bench-LABID) and NSRUN_PROFILE_PATH
= the repo's profiles/ plus a private directory with `natcold` (nat.toml on its own bridge
and subnet, so that a "cold" run finds no namespace of its profile alive).

Python is always sys.executable (the real interpreter), never `python3` from PATH: here
that is a pyenv shim costing ~50 ms per call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for where in (REPO, REPO / "tests"):  # nsrun, and the tests' harness (support.mounts)
    if str(where) not in sys.path:
        sys.path.insert(0, str(where))

from support.mounts import mounted_elsewhere, private_dir  # noqa: E402

from nsrun.lab import Lab  # noqa: E402
from nsrun.linux import kernel, netns  # noqa: E402

PY = sys.executable
BUSY_AT_START: float | None = None
HAND_BRIDGE = "benchbr"           # the hand-made bridge in the lab host
HAND_NET = "10.252.0"             # its /24; nat.toml uses 10.251.0.0/24
COLD_BRIDGE = "nsrunc0"           # natcold: nat.toml on its own bridge...
COLD_NET = "10.253.0"             # ...and subnet


def lab_links() -> list[str]:
    """The lab host's links (this thread is in its namespace; /sys/class/net would show the
    namespace sysfs was mounted in)."""
    out = run(["ip", "-o", "link", "show"], capture=True).stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line)


@contextlib.contextmanager
def launcher_and_front(nsrun: str | None, python: str, front: bool = True) -> Iterator[tuple[str, str | None]]:
    """(NSRUN, the native front handing over to it): NSRUN, else install.sh's launcher of this
    checkout for PYTHON; the front (native/nsrun.c) built as the tests build it
    (support.native), unless not FRONT. What was written here is removed afterwards."""
    from support import native

    made: list[Path] = []
    try:
        if not nsrun:
            shim = Path(f"/run/nsrun-bench-shim-{os.getpid()}")
            from nsrun.cli import launcher

            launcher.write(str(shim), python)  # as install.sh writes it, of this checkout
            made.append(shim)
            os.environ["PYTHONPATH"] = str(REPO)
            nsrun = str(shim)
        built = None
        if front:
            built = native.build(nsrun.split()[0], f"/run/nsrun-bench-front-{os.getpid()}")
            made.append(Path(built))
        yield nsrun, built
    finally:
        for path in made:
            path.unlink(missing_ok=True)


# -- statistics ---------------------------------------------------------------------------

def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def p90(xs: Sequence[float]) -> float:
    """Nearest-rank 90th percentile."""
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[max(0, math.ceil(0.9 * len(s)) - 1)]


@dataclass
class Row:
    """One line of the table. VALUE is the median, in UNIT."""
    item: str
    what: str
    value: float
    unit: str = "ms"
    p90: float | None = None
    n: int | None = None
    ratio: str = ""
    target: str = ""
    ok: bool | None = None

    def cells(self) -> list[str]:
        def num(v: float | None) -> str:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return "-"
            if self.unit == "ms":
                return f"{v:.1f}" if v < 100 else f"{v:.0f}"
            if self.unit in ("s", "Gbit/s"):
                return f"{v:.2f}"
            return f"{v:.1f}" if v < 1000 else f"{v:.0f}"
        verdict = "" if self.ok is None else ("PASS" if self.ok else "FAIL")
        return [self.item, self.what, f"{num(self.value)} {self.unit}",
                f"{num(self.p90)}" if self.p90 is not None else "-",
                str(self.n) if self.n is not None else "-", self.ratio, self.target, verdict]


def print_table(rows: list[Row], title: str = "") -> None:
    head = ["item", "what", "median", "p90", "n", "ratio", "target", ""]
    table = [head] + [r.cells() for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    if title:
        print(f"\n{title}")
    sep = "  ".join("-" * w for w in widths)
    print(sep)
    for i, row in enumerate(table):
        print("  ".join(c.rjust(w) if j in (2, 3, 4) else c.ljust(w)
                        for j, (c, w) in enumerate(zip(row, widths))).rstrip())
        if i == 0:
            print(sep)
    print(sep)


def timing_rows(item: str, samples: dict[str, list[float]], ref: str | None = None,
                labels: dict[str, str] | None = None) -> list[Row]:
    """Rows for timing SAMPLES (seconds), with the ratio of each median to REF's."""
    rows = []
    base = median(samples[ref]) if ref else None
    for name, xs in samples.items():
        m = median(xs)
        ratio = ""
        if base and name != ref:
            ratio = f"{m / base:.2f}x {ref}"
        rows.append(Row(item, (labels or {}).get(name, name), m * 1000, "ms", p90(xs) * 1000,
                        len(xs), ratio))
    return rows


# -- alternation ---------------------------------------------------------------------------

@dataclass
class Contender:
    name: str
    run: Callable[[int], float]   # run number -> seconds taken (the contender times itself)


def each(progress: str, items: Sequence[str], step: Callable[[str], float], every: int = 20) -> list[float]:
    """STEP(item) for each of ITEMS in turn: what each returned (its time). The count so
    far goes to stderr as `PROGRESS i/n`, every EVERY items and at the end."""
    out = []
    for i, item in enumerate(items):
        out.append(step(item))
        if (i + 1) % every == 0 or i + 1 == len(items):
            print(f"\r  {progress} {i + 1}/{len(items)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return out


def alternate(contenders: list[Contender], runs: int, warmup: int = 2, settle: float = 0.02,
              seed: int = 7, progress: str = "") -> dict[str, list[float]]:
    """Run every contender once per round, in a fresh random order each round, WARMUP
    rounds discarded; SETTLE seconds between runs let the kernel finish asynchronous
    cleanup (namespace destruction) before the next measurement. Seconds per contender."""
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {c.name: [] for c in contenders}
    total = warmup + runs
    for rnd in range(total):
        order = contenders[:]
        rng.shuffle(order)
        for c in order:
            dt = c.run(rnd)
            if rnd >= warmup:
                samples[c.name].append(dt)
            time.sleep(settle)
        if progress:
            print(f"\r  {progress}: round {rnd + 1}/{total}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return samples


# -- commands -------------------------------------------------------------------------------

class CommandFailed(RuntimeError):
    pass


_LAB_INO = 0  # the lab host's namespace, once a Session has entered it


def _guard() -> None:
    """Refuse to start a command anywhere but in the lab host (once the bench is there)."""
    if _LAB_INO and _thread_netns() != _LAB_INO:
        raise RuntimeError("bench: not inside the lab host namespace; refusing to run commands")


def run(argv: Sequence[str], env: dict[str, str] | None = None, check: bool = True,
        input: str | None = None, capture: bool = False, timeout: float = 120,
        **kw: Any) -> subprocess.CompletedProcess[str]:
    _guard()
    proc = subprocess.run(list(argv), env=env, input=input, text=True, timeout=timeout,
                          stdin=None if input is not None else subprocess.DEVNULL,
                          stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                          stderr=subprocess.PIPE, **kw)
    if check and proc.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)!r} exited {proc.returncode}: {proc.stderr.strip()[:800]}")
    return proc


def timed(argv: Sequence[str], env: dict[str, str] | None = None, input: str | None = None) -> float:
    """Seconds from spawn to exit of ARGV (stdout discarded); CommandFailed on failure."""
    _guard()
    t0 = time.perf_counter()
    proc = subprocess.run(list(argv), env=env, input=input, text=True, timeout=120,
                          stdin=None if input is not None else subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)!r} exited {proc.returncode}: {proc.stderr.strip()[:800]}")
    return dt


def _thread_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


# -- the session: lab, state dir, nsrun, cleanup ----------------------------------------------

def find_nsrun(explicit: str | None, scratch: Path) -> tuple[list[str], str]:
    """The nsrun users run: --nsrun, else the console script beside sys.executable or on
    PATH. If nsrun is not installed, the launcher install.sh writes (nsrun.cli.launcher) is
    written into SCRATCH, for this checkout. Returns (argv prefix, description)."""
    if explicit:
        return [explicit], explicit
    for cand in (str(Path(PY).parent / "nsrun"), shutil.which("nsrun")):
        if cand and os.access(cand, os.X_OK):
            return [cand], cand
    from nsrun.cli import launcher

    shim = scratch / "nsrun"
    launcher.write(str(shim), PY)
    return [str(shim)], f"{shim} (nsrun is not installed: install.sh's launcher of {REPO})"


class Session:
    """A lab, the bench process inside its host, a private nsrun state dir; `close()`
    (also on SIGINT/SIGTERM/SIGHUP, through the finally of `main`) removes everything."""

    def __init__(self, nsrun_path: str | None = None) -> None:
        self.nsrun_path = nsrun_path
        self.lab: Lab | None = None
        self.statedir: Path | None = None
        self.cleanups: list[tuple[str, Callable[[], None]]] = []
        self.root_fd: int | None = None
        self.nsrun: list[str] = []
        self.nsrun_desc = ""
        self.env: dict[str, str] = {}
        self.lab_ino = 0
        self.base_etc_netns = os.path.isdir("/etc/netns")
        self.base_run_netns = set(netns.names())
        self.base_links = _root_links()
        self.names: set[str] = set()   # every /run/netns name the bench made or asked for
        self.closed = False
        self.mounts = contextlib.ExitStack()

    def _private_mounts(self) -> None:
        """This process (single-threaded still) into a mount namespace of its own, slave to
        the machine's, with /run/netns and /etc/netns its private tmpfs mounts."""
        kernel.unshare(kernel.CLONE_NEWNS)
        kernel.mount("", "/", "none", kernel.MS_SLAVE | kernel.MS_REC)
        self.mounts.enter_context(private_dir("/run/netns", 0o755, "nsrun-bench"))
        self.mounts.enter_context(private_dir("/etc/netns", 0o755, "nsrun-bench"))

    # setup
    def open(self) -> "Session":
        _install_signals()
        self._private_mounts()
        self.root_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        print("building the lab of namespaces...", file=sys.stderr)
        self.lab = Lab()
        # The lab's upstream server is `python -m nsrun.lab`: make the repo importable for it
        # whatever the current directory (only for the build; nsrun itself runs as installed).
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(REPO) + (":" + saved if saved else "")
        try:
            self.lab.build()
        finally:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved
        self.names.update(self.lab.namespaces)
        self.statedir = Path(f"/run/nsrun-bench-{self.lab.id}")
        self.statedir.mkdir(mode=0o700)
        profiles = self.statedir / "profiles"
        profiles.mkdir(mode=0o755)
        cold = profiles / "natcold.toml"
        cold.write_text(
            "# nat.toml on its own bridge and subnet: nothing of it is alive between runs\n"
            'description = "bench: nat, cold"\nmode = "nat"\n'
            f'bridge = "{COLD_BRIDGE}"\nsubnet = "{COLD_NET}.0/24"\n')
        os.chmod(cold, 0o644)
        self.nsrun, self.nsrun_desc = find_nsrun(self.nsrun_path, self.statedir)
        env = dict(os.environ, NSRUN_STATE_DIR=str(self.statedir),
                   NSRUN_PROFILE_PATH=f"{REPO / 'profiles'}:{profiles}")
        for key in ("SUDO_UID", "SUDO_GID", "SUDO_USER", "NSRUN_FAULT", "NOTIFY_SOCKET", "NSRUN_DEBUG"):
            env.pop(key, None)
        if "install.sh's launcher of" in self.nsrun_desc:
            env["PYTHONPATH"] = str(REPO) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.env = env
        # From here on, this thread (and every child it starts) is in the lab host.
        netns.enter(self.lab.host)
        self.lab_ino = os.stat(netns.path(self.lab.host)).st_ino
        self.check_in_lab()
        global _LAB_INO
        _LAB_INO = self.lab_ino
        return self

    def check_in_lab(self) -> None:
        if _thread_netns() != self.lab_ino:
            raise RuntimeError("bench: not inside the lab host namespace; refusing to run commands")

    def ns(self, suffix: str) -> str:
        """A /run/netns name unique to this lab (namespace names are global)."""
        assert self.lab is not None
        name = f"{self.lab.id}-{suffix}"
        self.names.add(name)
        return name

    def on_close(self, what: str, fn: Callable[[], None]) -> None:
        self.cleanups.append((what, fn))

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Cleanups registered inside run when the block ends (one at a time, so what an
        interruption leaves is still run by close())."""
        mark = len(self.cleanups)
        try:
            yield
        finally:
            while len(self.cleanups) > mark:
                what, fn = self.cleanups.pop()
                _quietly(what, fn)

    def record_exists(self, name: str) -> bool:
        return self.statedir is not None and (self.statedir / "ns" / f"{name}.json").exists()

    # commands inside the lab host
    def nsrun_argv(self, *args: str) -> list[str]:
        return [*self.nsrun, *args]

    def nsrun_run(self, *args: str, check: bool = True, capture: bool = False,
                  timeout: float = 120) -> subprocess.CompletedProcess[str]:
        self.check_in_lab()
        return run(self.nsrun_argv(*args), env=self.env, check=check, capture=capture, timeout=timeout)

    def nsrun_timed(self, *args: str) -> float:
        return timed(self.nsrun_argv(*args), env=self.env)

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        self.check_in_lab()
        return run(["sh", "-ec", script], check=check, capture=True)

    def nsrun_up(self, name: str, profile: str = "nat") -> None:
        self.names.add(name)
        self.nsrun_run("up", name, "-p", profile)
        self.on_close(f"nsrun down {name}", lambda: self.nsrun_run("down", name, check=False,
                                                                   timeout=60))

    def hand_bridge(self) -> None:
        """The bridge the hand-typed sequences use, made with ip in the lab host."""
        self.sh(f"ip link add {HAND_BRIDGE} type bridge\n"
                f"ip addr add {HAND_NET}.1/24 dev {HAND_BRIDGE}\n"
                f"ip link set {HAND_BRIDGE} up")
        self.on_close(f"ip link del {HAND_BRIDGE}",
                      lambda: self.sh(f"ip link del {HAND_BRIDGE}", check=False))

    # teardown
    def close(self) -> list[str]:
        """Undo everything, whatever state it is in. Returns what was left behind."""
        if self.closed:
            return []
        self.closed = True
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            print("cleaning up...", file=sys.stderr)
            in_lab = self.lab is not None and self.lab_ino and _thread_netns() == self.lab_ino
            if in_lab:
                for what, fn in reversed(self.cleanups):
                    _quietly(what, fn)
                self._nsrun_sweep()
            for name in sorted(self.names):
                if self.lab is not None and name not in self.lab.namespaces and netns.exists(name):
                    _quietly(f"ip netns del {name}", lambda n=name: run(["ip", "netns", "del", n], check=False))
            if self.root_fd is not None:
                global _LAB_INO
                _LAB_INO = 0  # back home: only removal of what the bench made follows
                kernel.setns(self.root_fd, kernel.CLONE_NEWNET)
                os.close(self.root_fd)
                self.root_fd = None
            if self.lab is not None:
                _quietly("lab.destroy()", self.lab.destroy)
            if self.statedir is not None:
                shutil.rmtree(self.statedir, ignore_errors=True)
            for name in sorted(self.names):
                d = f"/etc/netns/{name}"
                if os.path.isdir(d):
                    shutil.rmtree(d, ignore_errors=True)
            self.mounts.close()  # the private /run/netns and /etc/netns (and the directories, if made)
            left = self.leftovers()
            if left:
                print("bench: LEFT BEHIND: " + "; ".join(left), file=sys.stderr)
            else:
                print("cleanup: nothing left behind (/run/netns, /etc/netns, state dir, host links)",
                      file=sys.stderr)
            return left
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _nsrun_sweep(self) -> None:
        """nsrun down whatever record is left in the private state dir (an interrupted run).
        Not `nsrun gc`: its /etc/netns sweep is not limited to its own state dir and would
        remove the resolv.conf of namespaces another nsrun (say, a test run) has up."""
        if self.statedir is None or not self.statedir.exists():
            return
        nsd = self.statedir / "ns"
        names = sorted(p.stem for p in nsd.glob("*.json")) if nsd.exists() else []
        for name in names:
            self.names.add(name)
            _quietly(f"nsrun down {name}", lambda n=name: self.nsrun_run("down", n, check=False, timeout=60))

    def leftovers(self) -> list[str]:
        left = []
        now = set(netns.names())
        mine = sorted(n for n in now - self.base_run_netns
                      if n in self.names or (self.lab and n.startswith(self.lab.id)))
        if mine:
            left.append(f"/run/netns: {', '.join(mine)}")
        if os.path.isdir("/etc/netns"):
            ours = [n for n in os.listdir("/etc/netns") if n in self.names]
            if ours:
                left.append(f"/etc/netns: {', '.join(ours)}")
            elif not self.base_etc_netns and not os.listdir("/etc/netns") and not mounted_elsewhere("/etc/netns"):
                left.append("/etc/netns (empty directory)")
        if self.statedir is not None and self.statedir.exists():
            left.append(str(self.statedir))
        extra = _root_links() - self.base_links
        if extra:
            left.append(f"links in this machine's namespace: {', '.join(sorted(extra))}")
        return left


def _root_links() -> set[str]:
    """Link names of this machine's own namespace (the one /sys was mounted in; read only)."""
    try:
        return set(os.listdir("/sys/class/net"))
    except OSError:
        return set()


def _quietly(what: str, fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception as exc:  # cleanup goes on
        print(f"bench: cleanup step {what!r} failed: {exc}", file=sys.stderr)


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _install_signals() -> None:
    # Even when started with SIGINT ignored (a background job of a script), Ctrl-C and
    # kill -INT interrupt the bench, and it cleans up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)


# -- machine info and the entry-point wrapper ---------------------------------------------------

def machine_info(s: Session | None = None) -> list[tuple[str, str]]:
    def out(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return "?"
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = [
        ("date", time.strftime("%Y-%m-%d %H:%M:%S %z")),
        ("nproc", f"{os.cpu_count()} ({cpu})"),
        ("kernel", platform.release()),
        ("python", f"{platform.python_version()} {PY}"),
        ("python3 on PATH", _python3_on_path()),
        ("iproute2", out(["ip", "-V"])),
        ("load average at start", " ".join(open("/proc/loadavg").read().split()[:3])),
    ]
    if BUSY_AT_START is not None:
        info.append(("CPU busy before start", f"{BUSY_AT_START:.0%} (other work on the machine skews timings)"))
    if s is not None:
        info.append(("nsrun", s.nsrun_desc))
        info.append(("lab", f"{s.lab.id if s.lab else '?'} (bench runs in its host namespace "
                            f"{s.lab.host if s.lab else '?'}; state dir {s.statedir})"))
    return info


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    return sum(f), f[3] + f[4]  # total, idle + iowait


def cpu_busy(interval: float = 1.0) -> float:
    """Share of CPU time used by anything over INTERVAL seconds (0..1)."""
    t0, i0 = _cpu_times()
    time.sleep(interval)
    t1, i1 = _cpu_times()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def wait_idle(max_wait: float, threshold: float = 0.15) -> float:
    """Wait up to MAX_WAIT seconds for the machine to be (nearly) idle; the last reading."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        print(f"  waiting for an idle machine: CPU {busy:.0%} busy", file=sys.stderr)
        busy = cpu_busy(2.0)
    return busy


def _python3_on_path() -> str:
    found = shutil.which("python3")
    if not found:
        return "none"
    try:
        with open(found, "rb") as fh:
            shim = not fh.read(4).startswith(b"\x7fELF")
    except OSError:
        shim = False
    return f"{found}" + (" (a script, not the interpreter: the bench uses sys.executable)" if shim else "")


def print_info(info: list[tuple[str, str]]) -> None:
    w = max(len(k) for k, _ in info)
    for k, v in info:
        print(f"{k:<{w}}  {v}")


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--nsrun", help="nsrun executable (default: the console script beside "
                                   "sys.executable or on PATH)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    p.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                   help="first wait up to SECONDS for the CPU to be under 15%% busy")
    return p


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("bench: run as root (it builds network namespaces)")


def compile_package() -> None:
    """Byte-compile nsrun as an installed package is (pip writes .pyc at install time). An
    editable install under PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module
    from source on every run (~20 ms), which no user of a real install pays."""
    import compileall

    import nsrun

    compileall.compile_dir(str(Path(nsrun.__file__).parent), quiet=1)


def main_wrapper(title: str, body: Callable[[Session], list[Row]], args: argparse.Namespace) -> int:
    """Open a session, run BODY, print machine info and the table; always clean up."""
    global BUSY_AT_START
    require_root()
    compile_package()
    BUSY_AT_START = wait_idle(args.wait_idle)
    started = time.monotonic()
    json_out = args.json
    s = Session(args.nsrun)
    rows: list[Row] = []
    code = 0
    try:
        s.open()
        info = machine_info(s)
        rows = body(s)
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr)
        code = 130
    except Exception as exc:
        print(f"\nbench: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    finally:
        left = s.close()
    if left:
        code = code or 1
    if rows:
        info.append(("load average at end", " ".join(open("/proc/loadavg").read().split()[:3])
                     + f" (bench took {time.monotonic() - started:.0f} s)"))
        print()
        print_info(info)
        print_table(rows, title)
        report_acceptance(rows)
        if json_out:
            Path(json_out).write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    return code


def report_acceptance(rows: list[Row]) -> None:
    checks = [r for r in rows if r.ok is not None]
    if not checks:
        return
    failed = [r for r in checks if not r.ok]
    print(f"acceptance: {len(checks) - len(failed)}/{len(checks)} targets met"
          + (": missed " + "; ".join(f"{r.what} ({r.target})" for r in failed) if failed else ""))
