#!/usr/bin/env python3
"""Issue 21, item 6: what `isolate` and `allow` add to a warm run.

`nsrun -p P -- true` with the bridge nsrun0 held up all along by a namespace of profile nat
(warm), for P = nat (the reference), natiso (nat.toml + `isolate = true`), natallow (nat.toml
+ `allow`, three entries) and natguard (both). They share the bridge, subnet and gateway, so
each run makes and removes only its namespace's own pieces: for the guarded ones, the guard's
nf_tables tables (one batch each way) and, with isolate, the veth's port isolation. Target:
each adds under 10% to the warm run.

Contenders alternate run by run (a fresh random order each round), medians and p90 of --runs
rounds after 2 warm-up rounds. Run as root: python3 bench/reach_bench.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Contender, Row, Session, alternate, base_parser, main_wrapper, median, timing_rows  # noqa: E402

TARGET = 0.10  # at most this much added to the warm run
ALLOW = '["198.51.100.254:8000/tcp", "203.0.113.0/24", "[2001:db8::/32]:53/udp"]'
PROFILES = {
    "natiso": "isolate = true\n",
    "natallow": f"allow = {ALLOW}\n",
    "natguard": f"isolate = true\nallow = {ALLOW}\n",
}


def write_profiles(s: Session) -> None:
    """nat.toml, plus the keys, under the session's private profile directory."""
    assert s.statedir is not None
    base = (Path(__file__).resolve().parent.parent / "profiles" / "nat.toml").read_text()
    for name, extra in PROFILES.items():
        path = s.statedir / "profiles" / f"{name}.toml"
        path.write_text(base + extra)
        os.chmod(path, 0o644)


def bench_guard(s: Session, runs: int) -> list[Row]:
    s.check_in_lab()
    names = ["nat", *PROFILES]
    samples = alternate([Contender(f"nsrun -p {n} -- true (warm)", lambda _, n=n: s.nsrun_timed("-p", n, "--", "true"))
                         for n in names], runs, progress="item 6")
    ref = "nsrun -p nat -- true (warm)"
    rows = timing_rows("6 isolate/allow", samples, ref=ref)
    base = median(samples[ref])
    for r in rows:
        if r.what != ref:
            added = r.value / 1000 - base
            r.ratio += f"; +{added * 1000:.1f} ms"
            r.target = f"< +{TARGET:.0%} of the warm run"
            r.ok = added < TARGET * base
    return rows


def body(s: Session, runs: int) -> list[Row]:
    rows: list[Row] = []
    with s.scope():
        write_profiles(s)
        warm = s.ns("bench-warm")
        s.nsrun_up(warm, "nat")  # holds nsrun0 up: every run below is warm
        rows += bench_guard(s, runs)
    return rows


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=30, help="rounds; default 30")


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    add_args(p)
    a = p.parse_args(argv)
    return main_wrapper("issue 21: the cost of isolate and allow", lambda s: body(s, a.runs), a)


if __name__ == "__main__":
    sys.exit(main())
