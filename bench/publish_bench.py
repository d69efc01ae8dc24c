#!/usr/bin/env python3
"""Issue 21, acceptance 6: the added cost of publishing a port on a warm run.

`nsrun -p PROFILE -- true` against `nsrun -p PROFILE -P 8080:80 -- true`, warm (a namespace
of PROFILE is up all along, so its bridge, NAT rules and openings exist), daemonless for the
nftables backend (natnft) and the python-iptables one (natipt), and through the service
(`nsrun daemon`, natnft: the client's time, and until the run is torn down), on the lab host (the legacy kind:
legacy tables loaded, so both backends run in the same host). `-P 8080:80` publishes at
every address of the host, 127.0.0.1 included: each run claims the port, writes its DNAT
and masquerade rules, looks for chains to open, and removes them all at its end. Also
timed in process: the look every setup takes now for a chain that drops and appeared since
its bridge was opened (the late firewall, `foreign.unopened`), with the lab host's ruleset
as it is and with a Docker-sized one beside it. Contenders alternate run by run; medians
and p90 of --runs rounds. Run as root: python3 bench/publish_bench.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
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

PROFILES = {  # name: (bridge, subnet, firewall)
    "natnft": ("nsrunp0", "10.254.8.0/24", "nftables"),
    "natipt": ("nsrunp1", "10.254.9.0/24", "iptables"),
}
TARGET = 1.10  # a publishing warm run: at most 10% over a plain one

# About what Docker (20.10) and ufw leave in the ruleset, as tables of their own: the look's
# cost grows with the ruleset it lists.
BIG = "table ip benchbig {\n" + "".join(
    f"  chain c{i} {{\n" + "".join(f"    ip saddr 10.{i}.{j}.0/24 tcp dport {1000 + j} accept\n" for j in range(20))
    + "  }\n" for i in range(12)) + "  chain f1 { type filter hook forward priority 10; policy accept; }\n}\n"


def write_profiles(s: Session) -> None:
    assert s.statedir is not None
    for name, (bridge, subnet, firewall) in PROFILES.items():
        path = s.statedir / "profiles" / f"{name}.toml"
        path.write_text(f'mode = "nat"\nbridge = "{bridge}"\nsubnet = "{subnet}"\nfirewall = "{firewall}"\n')
        os.chmod(path, 0o644)


def _look(bridge: str, backend: str, runs: int) -> list[float]:
    """Seconds of each `foreign.unopened` call, as opening.prepare makes it."""
    from nsrun.engine.firewall import foreign

    out = []
    for _ in range(runs):
        t = time.perf_counter()
        foreign.unopened(bridge, "nat", backend)
        out.append(time.perf_counter() - t)
    return out


def body(s: Session, runs: int, before: str | None = None) -> list[Row]:
    rows: list[Row] = []
    write_profiles(s)
    with s.scope():
        s.nsrun_up(s.ns("pub-warm-nft"), "natnft")
        s.nsrun_up(s.ns("pub-warm-ipt"), "natipt")
        samples = alternate([
            Contender("nftables, plain (warm)", lambda _: s.nsrun_timed("-p", "natnft", "--", "true")),
            Contender("nftables, -P 8080:80 (warm)",
                      lambda _: s.nsrun_timed("-p", "natnft", "-P", "8080:80", "--", "true")),
            Contender("python-iptables, plain (warm)", lambda _: s.nsrun_timed("-p", "natipt", "--", "true")),
            Contender("python-iptables, -P 8081:80 (warm)",
                      lambda _: s.nsrun_timed("-p", "natipt", "-P", "8081:80", "--", "true")),
            *([Contender("nftables, plain (warm), the code before",
                         lambda _: timed([before, "-p", "natnft", "--", "true"], env=s.env))] if before else []),
        ], runs, progress="publish")
        # Through the service (its engine warm), the client's time; the run is taken down
        # by the service after the client ends, waited for before the next round.
        from service_bench import Daemon

        d = Daemon(s)
        d.start()
        served = {**s.env}
        down: dict[str, list[float]] = {"service, plain": [], "service, -P 8082:80": []}

        def service(label: str, *args: str) -> Callable[[int], float]:
            def one(_: int) -> float:
                t0 = time.perf_counter()
                dt = timed(s.nsrun_argv(*args), env=served)
                d.wait_idle()
                down[label].append(time.perf_counter() - t0)
                return dt
            return one

        samples.update(alternate([
            Contender("service, plain", service("service, plain", "-p", "natnft", "--", "true")),
            Contender("service, -P 8082:80", service("service, -P 8082:80", "-p", "natnft", "-P", "8082:80", "--",
                                                     "true")),
        ], runs, progress="publish, service"))
        d.stop()
        samples["service, plain, until torn down"] = down["service, plain"][-runs:]
        samples["service, -P 8082:80, until torn down"] = down["service, -P 8082:80"][-runs:]
        rows = timing_rows("21 publish", samples)
        for r in rows:
            if "-P" in r.what:
                base = r.what.split(", -P")[0] + ", plain" + r.what.partition(":80")[2]
                plain = median(samples[base if base in samples else r.what.split(",")[0] + ", plain (warm)"])
                r.ratio = f"{r.value / 1000 / plain:.2f}x plain (+{r.value - plain * 1000:.1f} ms)"
                if "service" not in r.what:
                    r.target = f"<= {TARGET:.2f}x plain"
                    r.ok = r.value / 1000 <= TARGET * plain
        # The late firewall's look, in this process (which is in the lab host).
        from nsrun.engine.firewall import nftables

        for what, backend in (("nftables", "nftables"), ("python-iptables", "iptables")):
            bridge = PROFILES["natnft" if backend == "nftables" else "natipt"][0]
            _look(bridge, backend, 3)  # imports, warm caches
            looks = _look(bridge, backend, runs * 5)
            rows.append(Row("21 publish", f"late-firewall look, {what} bridge", median(looks) * 1000, "ms",
                            p90(looks) * 1000, len(looks), f"mean {statistics.mean(looks) * 1000:.2f} ms"))
        nftables.run(BIG)
        s.on_close("nft delete table ip benchbig", lambda: nftables.run("delete table ip benchbig"))
        looks = _look(PROFILES["natnft"][0], "nftables", runs * 5)
        rows.append(Row("21 publish", "late-firewall look, + 240 rules in the ruleset", median(looks) * 1000,
                        "ms", p90(looks) * 1000, len(looks), f"mean {statistics.mean(looks) * 1000:.2f} ms"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20, help="rounds; default 20")
    p.add_argument("--before", metavar="NSRUN", help="an nsrun of the code before (a launcher of another "
                   "checkout): its plain warm run beside this one's (what the late firewall's look costs)")
    a = p.parse_args(argv)
    return main_wrapper("issue 21: published ports", lambda s: body(s, a.runs, a.before), a)


if __name__ == "__main__":
    sys.exit(main())
