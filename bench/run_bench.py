#!/usr/bin/env python3
"""Issue 7, items 1, 2 and 4: the cost of a run, of exec, and the supervisor's memory.

1. `nsrun -p nat -- true`, warm (namespace bench-warm of profile nat is up all along) and
   cold (profile natcold = nat.toml on its own bridge and subnet, nothing of it alive: the
   bridge and NAT rules are made and removed by each run), against the same work typed by
   hand with `ip` (a `sh -e` script; the bridge exists already, made with ip), against that
   work with `ip -batch` and the veth peer created inside the namespace, and `unshare -n true`.
2. `nsrun exec bench-warm -- true` against `ip netns exec bench-warm true`, and
   `python -c pass` (sys.executable) as the floor of any Python program.
4. VmRSS of the supervising nsrun process (not its child) while `sleep` runs under it,
   next to a bare `python -c 'import time; time.sleep(60)'`.

Contenders alternate run by run (a fresh random order each round), medians and p90 of
--runs rounds after 2 warm-up rounds. Run as root: python3 bench/run_bench.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    COLD_BRIDGE,
    HAND_BRIDGE,
    HAND_NET,
    PY,
    Contender,
    Row,
    Session,
    alternate,
    base_parser,
    main_wrapper,
    median,
    p90,
    timed,
    timing_rows,
)

TARGET_NAT = 4.0
TARGET_EXEC = 25.0
TARGET_RSS_MIB = 20.0


# -- the hand-typed sequences ------------------------------------------------------------------

def hand_script(ns: str, veth: str, peer: str, addr: str) -> str:
    """The work nsrun does, typed with ip: netns, veth, move the peer, bridge, address,
    route, exec, delete. `ip -n` (no mount namespace) rather than `ip netns exec ... ip`."""
    return (f"ip netns add {ns}\n"
            f"ip link add {veth} type veth peer name {peer}\n"
            f"ip link set {peer} netns {ns}\n"
            f"ip link set {veth} master {HAND_BRIDGE} up\n"
            f"ip -n {ns} link set lo up\n"
            f"ip -n {ns} addr add {addr}/24 dev {peer}\n"
            f"ip -n {ns} link set {peer} up\n"
            f"ip -n {ns} route add default via {HAND_NET}.1\n"
            f"ip netns exec {ns} true\n"
            f"ip netns del {ns}\n")


def batch_script(ns: str, veth: str, addr: str) -> str:
    """The same with the peer created inside the namespace, in two `ip -batch` calls."""
    return (f"ip -batch - <<EOF\n"
            f"netns add {ns}\n"
            f"link add {veth} type veth peer name eth0 netns {ns}\n"
            f"link set {veth} master {HAND_BRIDGE} up\n"
            f"EOF\n"
            f"ip -n {ns} -batch - <<EOF\n"
            f"link set lo up\n"
            f"addr add {addr}/24 dev eth0\n"
            f"link set eth0 up\n"
            f"route add default via {HAND_NET}.1\n"
            f"EOF\n"
            f"ip netns exec {ns} true\n"
            f"ip netns del {ns}\n")


# -- item 1 ----------------------------------------------------------------------------------------

def bench_run(s: Session, runs: int, warm: str) -> list[Row]:
    def nsrun_warm(_: int) -> float:
        return s.nsrun_timed("-p", "nat", "--", "true")

    def nsrun_cold(_: int) -> float:
        return s.nsrun_timed("-p", "natcold", "--", "true")

    def by_hand(i: int) -> float:
        ns = s.ns(f"h{i}")
        return timed(["sh", "-ec", hand_script(ns, f"vh{i}", f"vp{i}", f"{HAND_NET}.{2 + i % 250}")])

    def batch(i: int) -> float:
        ns = s.ns(f"b{i}")
        return timed(["sh", "-ec", batch_script(ns, f"vb{i}", f"{HAND_NET}.{2 + i % 250}")])

    def unshare(_: int) -> float:
        return timed(["unshare", "-n", "true"])

    s.check_in_lab()
    samples = alternate([Contender("nsrun -p nat -- true (warm)", nsrun_warm),
                         Contender("nsrun -p nat -- true (cold)", nsrun_cold),
                         Contender("ip, typed by hand", by_hand),
                         Contender("ip -batch, peer made inside", batch),
                         Contender("unshare -n true", unshare)], runs, progress="item 1")
    # The cold runs must have left nothing of their profile: no bridge, no record.
    left = s.sh(f"ip -o link show {COLD_BRIDGE} 2>/dev/null || true").stdout.strip()
    if left:
        raise RuntimeError(f"a cold run left its bridge {COLD_BRIDGE} behind")
    rows = timing_rows("1 run", samples, ref="ip, typed by hand")
    hand = median(samples["ip, typed by hand"])
    for r in rows:
        if r.what.endswith("(warm)"):
            r.target = f"<= {TARGET_NAT:g}x by hand"
            r.ok = r.value / 1000 <= TARGET_NAT * hand
        elif r.what.endswith("(cold)"):
            r.target = "(reported)"
    return rows


# -- item 2 ----------------------------------------------------------------------------------------

def bench_exec(s: Session, runs: int, warm: str) -> list[Row]:
    samples = alternate([
        Contender("nsrun exec NAME -- true", lambda _: s.nsrun_timed("exec", warm, "--", "true")),
        Contender("ip netns exec NAME true", lambda _: timed(["ip", "netns", "exec", warm, "true"])),
        Contender("python -c pass", lambda _: timed([PY, "-c", "pass"])),
    ], runs, progress="item 2")
    rows = timing_rows("2 exec", samples, ref="ip netns exec NAME true")
    ip_m = median(samples["ip netns exec NAME true"])
    py_m = median(samples["python -c pass"])
    for r in rows:
        if r.what.startswith("nsrun exec"):
            r.ratio += f"; {r.value / 1000 / py_m:.2f}x python -c pass"
            r.target = f"<= {TARGET_EXEC:g}x ip netns exec"
            r.ok = r.value / 1000 <= TARGET_EXEC * ip_m
    return rows


# -- item 4 ----------------------------------------------------------------------------------------

def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0])  # kB
    return out


def _children(pid: int) -> list[tuple[int, str]]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid:
            kids.append((int(entry), comm))
    return kids


def _rss_while(argv: list[str], env: dict[str, str], child_comm: str | None) -> dict[str, int]:
    """Start ARGV; once its child CHILD_COMM runs (or at once, for None), read its status."""
    p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            if p.poll() is not None:
                raise RuntimeError(f"{argv} exited {p.returncode}: {p.stderr.read().decode()[:500] if p.stderr else ''}")
            if child_comm is None or any(c == child_comm for _, c in _children(p.pid)):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv}: no {child_comm} child after 20 s")
            time.sleep(0.01)
        time.sleep(0.2)  # let the supervisor settle in waitpid
        return _status(p.pid)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)  # nsrun forwards it to CMD, then takes the namespace down
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.stderr:
            p.stderr.close()


def bench_rss(s: Session, runs: int) -> list[Row]:
    s.check_in_lab()
    sup: list[dict[str, int]] = []
    bare: list[dict[str, int]] = []
    for i in range(runs):
        sup.append(_rss_while(s.nsrun_argv("-p", "nat", "--", "sleep", "60"), s.env, "sleep"))
        bare.append(_rss_while([PY, "-c", "import time; time.sleep(60)"], s.env, None))
        print(f"\r  item 4: sample {i + 1}/{runs}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    def mib(xs: list[dict[str, int]], key: str) -> list[float]:
        return [x[key] / 1024 for x in xs]

    rss = mib(sup, "VmRSS")
    rows = [
        Row("4 memory", "nsrun supervisor VmRSS (CMD=sleep)", median(rss), "MiB", p90(rss), len(rss),
            f"{median(rss) / median(mib(bare, 'VmRSS')):.2f}x bare python",
            f"< {TARGET_RSS_MIB:g} MiB", median(rss) < TARGET_RSS_MIB),
        Row("4 memory", "  of which RssAnon / RssFile", median(mib(sup, "RssAnon")), "MiB",
            None, None, f"RssFile {median(mib(sup, 'RssFile')):.1f} MiB"),
        Row("4 memory", "  VmHWM (peak) of the supervisor", median(mib(sup, "VmHWM")), "MiB",
            p90(mib(sup, "VmHWM")), len(sup)),
        Row("4 memory", "bare python sleeping (VmRSS)", median(mib(bare, "VmRSS")), "MiB",
            p90(mib(bare, "VmRSS")), len(bare), f"RssAnon {median(mib(bare, 'RssAnon')):.1f} MiB"),
    ]
    return rows


# -- entry points ------------------------------------------------------------------------------

def body(s: Session, runs: int, rss_runs: int, only: frozenset[str] = frozenset("124")) -> list[Row]:
    rows: list[Row] = []
    with s.scope():
        warm = s.ns("bench-warm")
        s.nsrun_up(warm, "nat")          # `nsrun down` when the scope ends
        s.hand_bridge()
        if "1" in only:
            rows += bench_run(s, runs, warm)
        if "2" in only:
            rows += bench_exec(s, runs * 2, warm)
        if "4" in only:
            rows += bench_rss(s, rss_runs)
    return rows


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=30,
                   help="rounds for item 1 (item 2 does twice as many); default 30")
    p.add_argument("--rss-runs", type=int, default=5, help="samples for item 4; default 5")


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    add_args(p)
    a = p.parse_args(argv)
    return main_wrapper("issue 7: items 1, 2, 4", lambda s: body(s, a.runs, a.rss_runs), a)


if __name__ == "__main__":
    sys.exit(main())
