#!/usr/bin/env python3
"""Issue 7, item 3: many namespaces. `nsrun up` x COUNT (profile nat), then `nsrun ls` and
`nsrun ls --json` with COUNT namespaces up (alternated with `ip netns list`, --runs
rounds), then `nsrun down` x COUNT; against the ip loop: `ip netns add` x COUNT,
`ip netns list`, `ip netns del` x COUNT. Each command is timed on its own; the table
gives the median per command and the total of each loop.

The ip loop runs first and is gone before nsrun's namespaces come up, so `ls` sees
exactly COUNT namespaces (an unmanaged one costs ls more: its addresses are read live).
Run as root: python3 bench/ls_bench.py [--count 200] [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    Contender,
    Row,
    Session,
    alternate,
    base_parser,
    each,
    main_wrapper,
    median,
    p90,
    run,
    timed,
    timing_rows,
)

from nsrun.linux import netns  # noqa: E402

TARGET_LS_JSON = 0.5  # seconds, with 200 namespaces


def _loop_row(what: str, xs: list[float], ref: list[float] | None, ref_name: str) -> Row:
    ratio = f"total {sum(xs):.1f} s"
    if ref:
        ratio += f"; {median(xs) / median(ref):.1f}x {ref_name}"
    return Row("3 many", what, median(xs) * 1000, "ms", p90(xs) * 1000, len(xs), ratio)


def body(s: Session, count: int, runs: int) -> list[Row]:
    s.check_in_lab()
    with s.scope():
        # The ip loop.
        ipnames = [s.ns(f"i{i}") for i in range(count)]
        s.on_close("ip netns del (ip loop)",
                   lambda: [run(["ip", "netns", "del", n], check=False) for n in ipnames if netns.exists(n)])
        ip_add = each("item 3: ip netns add", ipnames, lambda n: timed(["ip", "netns", "add", n]))
        ip_list = [timed(["ip", "netns", "list"]) for _ in range(runs)]
        ip_del = each("item 3: ip netns del", ipnames, lambda n: timed(["ip", "netns", "del", n]))

        # nsrun's.
        names = [s.ns(f"n{i}") for i in range(count)]
        s.on_close("nsrun down (nsrun loop)",
                   lambda: [s.nsrun_run("down", n, check=False) for n in names
                            if netns.exists(n) or s.record_exists(n)])
        ns_up = each("item 3: nsrun up", names, lambda n: s.nsrun_timed("up", n, "-p", "nat"))
        listing = s.nsrun_run("ls", "--json", capture=True).stdout
        rows_seen = {r["name"] for r in json.loads(listing)}
        missing = set(names) - rows_seen
        if missing:
            raise RuntimeError(f"nsrun ls --json does not list {len(missing)} of the {count} namespaces")
        samples = alternate([
            Contender("nsrun ls", lambda _: s.nsrun_timed("ls")),
            Contender("nsrun ls --json", lambda _: s.nsrun_timed("ls", "--json")),
            Contender("ip netns list", lambda _: timed(["ip", "netns", "list"])),
        ], runs, warmup=1, progress=f"item 3: ls with {count} namespaces")
        ns_down = each("item 3: nsrun down", names, lambda n: s.nsrun_timed("down", n))

    rows = [
        _loop_row(f"nsrun up x{count} (per command)", ns_up, ip_add, "ip netns add"),
        _loop_row(f"ip netns add x{count}", ip_add, None, ""),
        _loop_row(f"nsrun down x{count} (per command)", ns_down, ip_del, "ip netns del"),
        _loop_row(f"ip netns del x{count}", ip_del, None, ""),
    ]
    ls_rows = timing_rows("3 many", samples, ref="ip netns list",
                          labels={"nsrun ls": f"nsrun ls ({count} namespaces)",
                                  "nsrun ls --json": f"nsrun ls --json ({count} namespaces)",
                                  "ip netns list": f"ip netns list ({count} namespaces)"})
    for r in ls_rows:
        if "--json" in r.what:
            r.target = f"< {TARGET_LS_JSON:g} s" + ("" if count == 200 else " (at 200)")
            r.ok = r.value / 1000 < TARGET_LS_JSON
    rows += ls_rows
    rows.append(Row("3 many", f"ip netns list ({count} ip namespaces, for reference)",
                    median(ip_list) * 1000, "ms", p90(ip_list) * 1000, len(ip_list)))
    return rows


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, default=200, help="namespaces; default 200")
    p.add_argument("--ls-runs", "--runs", dest="ls_runs", type=int, default=10,
                   help="rounds of ls / ls --json / ip netns list; default 10")


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    add_args(p)
    a = p.parse_args(argv)
    return main_wrapper("issue 7: item 3", lambda s: body(s, a.count, a.ls_runs), a)


if __name__ == "__main__":
    sys.exit(main())
