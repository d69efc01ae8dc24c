#!/usr/bin/env python3
"""Issue 7: every benchmark in one lab, one table: run cost (1), exec (2), many namespaces
(3), supervisor memory (4), TCP throughput (5), with the machine they ran on.
Run as root from anywhere: python3 bench/all.py   (about 4 minutes with the defaults)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ls_bench  # noqa: E402
import run_bench  # noqa: E402
import throughput  # noqa: E402
from common import Row, Session, base_parser, main_wrapper  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    run_bench.add_args(p)
    # ls_bench and throughput name their own --runs; here they are told apart.
    p.add_argument("--count", type=int, default=200, help="item 3: namespaces; default 200")
    p.add_argument("--ls-runs", type=int, default=10, help="item 3: rounds of ls; default 10")
    p.add_argument("--tp-runs", type=int, default=5, help="item 5: rounds of iperf3; default 5")
    p.add_argument("--seconds", type=int, default=5, help="item 5: iperf3 -t; default 5")
    p.add_argument("--target", choices=sorted(throughput.TARGETS), default="gw2",
                   help="item 5: where the iperf3 server listens; default gw2")
    p.add_argument("--only", default="1,2,3,4,5", help="items to run, e.g. 1,2,4; default all")
    a = p.parse_args(argv)
    only = {x.strip() for x in a.only.split(",")}

    def body(s: Session) -> list[Row]:
        rows: list[Row] = []
        if only & {"1", "2", "4"}:
            rows += run_bench.body(s, a.runs, a.rss_runs, frozenset(only))
        if "3" in only:
            rows += ls_bench.body(s, a.count, a.ls_runs)
        if "5" in only:
            rows += throughput.body(s, a.tp_runs, a.seconds, a.target)
        return rows

    return main_wrapper("issue 7: nsrun benchmarks", body, a)


if __name__ == "__main__":
    sys.exit(main())
