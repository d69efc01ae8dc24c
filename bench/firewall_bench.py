#!/usr/bin/env python3
"""Issue 11, acceptance 6: a run on the nftables backend against one on python-iptables.

`nsrun -p PROFILE -- true`, warm (a namespace of PROFILE is up all along, so the bridge and
its NAT rules exist) and cold (nothing of PROFILE alive: each run makes and removes the
bridge and its rules), for four profiles that differ only in `firewall` and in bridge and
subnet: natnft/natipt (warm) and natnftc/natiptc (cold). The lab host is the legacy kind
(legacy tables loaded), so both backends run in the same host. Contenders alternate run by
run; medians and p90 of --runs rounds. Run as root: python3 bench/firewall_bench.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    Contender,
    Row,
    Session,
    alternate,
    base_parser,
    main_wrapper,
    median,
    timing_rows,
)

PROFILES = {  # name: (bridge, subnet, firewall)
    "natnft": ("nsrunf0", "10.254.0.0/24", "nftables"),
    "natipt": ("nsruni0", "10.254.1.0/24", "iptables"),
    "natnftc": ("nsrunf1", "10.254.2.0/24", "nftables"),
    "natiptc": ("nsruni1", "10.254.3.0/24", "iptables"),
}


def write_profiles(s: Session) -> None:
    assert s.statedir is not None
    for name, (bridge, subnet, firewall) in PROFILES.items():
        path = s.statedir / "profiles" / f"{name}.toml"
        path.write_text(f'mode = "nat"\nbridge = "{bridge}"\nsubnet = "{subnet}"\nfirewall = "{firewall}"\n')
        os.chmod(path, 0o644)


def body(s: Session, runs: int) -> list[Row]:
    rows: list[Row] = []
    write_profiles(s)
    with s.scope():
        s.nsrun_up(s.ns("fw-warm-nft"), "natnft")
        s.nsrun_up(s.ns("fw-warm-ipt"), "natipt")
        samples = alternate([
            Contender("nftables backend (warm)", lambda _: s.nsrun_timed("-p", "natnft", "--", "true")),
            Contender("python-iptables backend (warm)", lambda _: s.nsrun_timed("-p", "natipt", "--", "true")),
            Contender("nftables backend (cold)", lambda _: s.nsrun_timed("-p", "natnftc", "--", "true")),
            Contender("python-iptables backend (cold)", lambda _: s.nsrun_timed("-p", "natiptc", "--", "true")),
        ], runs, progress="firewall")
        rows = timing_rows("6 firewall", samples, ref="python-iptables backend (warm)")
        ipt = median(samples["python-iptables backend (warm)"])
        for r in rows:
            if r.what == "nftables backend (warm)":
                r.target = "<= python-iptables (warm)"
                r.ok = r.value / 1000 <= ipt * 1.0 + 0.002  # 2 ms: the noise of one median
            elif r.what.endswith("(cold)"):
                r.target = "(reported)"
    return rows


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20, help="rounds; default 20")
    a = p.parse_args(argv)
    return main_wrapper("issue 11: firewall backends", lambda s: body(s, a.runs), a)


if __name__ == "__main__":
    sys.exit(main())
