#!/usr/bin/env python3
"""Issue 26, item 3: scale. COUNT named namespaces (`nsrun up`, profile nat over BRIDGES
bridges of a /24 each), then, with all of them up, `nsrun ls --json` and `nsrun gc
--dry-run` (alternated, --runs rounds), then `nsrun down` of all. Reports the cost of the
first and of the last `up`s (medians of the first and last 20: a per-operation scan that
grows with the count shows as a ratio), ls and gc, and the host after (the lab host's
links, as before the first `up`).

Targets (the issue's): the 1,000th `up` within 1.5x the first, `ls --json` <= 0.5 s,
`gc --dry-run` <= 3 s. Run as root: python3 bench/scale_bench.py [--count 1000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Contender, Row, Session, alternate, base_parser, each, lab_links, main_wrapper, median, p90  # noqa: E402

from nsrun.linux import netns  # noqa: E402

PER_BRIDGE = 250  # a /24 less the gateway and some slack
EDGE = 20  # the first and the last EDGE `up`s are compared
TARGETS = {"up": 1.5, "ls --json": 0.5, "gc --dry-run": 3.0}


def _profiles(s: Session, bridges: int) -> list[str]:
    """nat.toml on BRIDGES bridges of their own (nsrs0.., 10.252.N.0/24)."""
    assert s.statedir is not None
    out = []
    for b in range(bridges):
        path = s.statedir / "profiles" / f"scale{b}.toml"
        path.write_text(f'description = "bench: scale, bridge {b}"\nmode = "nat"\n'
                        f'bridge = "nsrs{b}"\nsubnet = "10.252.{b}.0/24"\n')
        os.chmod(path, 0o644)
        out.append(f"scale{b}")
    return out


def body(s: Session, count: int, runs: int) -> list[Row]:
    s.check_in_lab()
    bridges = -(-count // PER_BRIDGE)
    profiles = _profiles(s, bridges)
    before = lab_links()
    names = [s.ns(f"s{i}") for i in range(count)]
    with s.scope():
        s.on_close("nsrun down (scale)", lambda: [s.nsrun_run("down", n, check=False) for n in names
                                                  if netns.exists(n) or s.record_exists(n)])
        bridge_of = {name: profiles[i // PER_BRIDGE] for i, name in enumerate(names)}
        ups = each("item 3: nsrun up", names, lambda n: s.nsrun_timed("up", n, "-p", bridge_of[n]), every=50)
        rows_seen = {r["name"] for r in json.loads(s.nsrun_run("ls", "--json", capture=True).stdout)}
        if set(names) - rows_seen:
            raise RuntimeError(f"nsrun ls --json lists {len(set(names) & rows_seen)} of the {count} namespaces")
        samples = alternate([
            Contender("nsrun ls --json", lambda _: s.nsrun_timed("ls", "--json")),
            Contender("nsrun gc --dry-run", lambda _: s.nsrun_timed("gc", "--dry-run")),
        ], runs, warmup=1, progress=f"item 3: ls and gc with {count} namespaces")
        downs = each("item 3: nsrun down", names, lambda n: s.nsrun_timed("down", n), every=50)
    after = lab_links()
    first, last = ups[:EDGE], ups[-EDGE:]
    ratio = median(last) / median(first)
    rows = [
        Row("3 scale", f"nsrun up, the first {EDGE}", median(first) * 1000, "ms", p90(first) * 1000, len(first)),
        Row("3 scale", f"nsrun up, the last {EDGE} (of {count}, {bridges} bridges)", median(last) * 1000, "ms",
            p90(last) * 1000, len(last), f"{ratio:.2f}x the first", f"<= {TARGETS['up']}x", ratio <= TARGETS["up"]),
        Row("3 scale", f"nsrun up x{count}, all", median(ups) * 1000, "ms", p90(ups) * 1000, len(ups),
            f"total {sum(ups):.0f} s"),
    ]
    for what, key in (("nsrun ls --json", "ls --json"), ("nsrun gc --dry-run", "gc --dry-run")):
        xs = samples[what]
        rows.append(Row("3 scale", f"{what} ({count} namespaces)", median(xs) * 1000, "ms", p90(xs) * 1000, len(xs),
                        "", f"<= {TARGETS[key]:g} s", median(xs) <= TARGETS[key]))
    rows.append(Row("3 scale", f"nsrun down x{count}", median(downs) * 1000, "ms", p90(downs) * 1000, len(downs),
                    f"total {sum(downs):.0f} s"))
    gone = set(after) ^ set(before)
    rows.append(Row("3 scale", "the lab host's links after down of all", len(gone), "changed", None, 1,
                    ", ".join(sorted(gone)[:6]), "as before", not gone))
    return rows


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, default=1000, help="namespaces; default 1000")
    p.add_argument("--runs", type=int, default=5, help="rounds of ls --json / gc --dry-run; default 5")


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    add_args(p)
    a = p.parse_args(argv)
    return main_wrapper("issue 26: item 3", lambda s: body(s, a.count, a.runs), a)


if __name__ == "__main__":
    sys.exit(main())
