#!/usr/bin/env python3
"""Issue 26, item 3, the service's part: its memory over many runs, and many runs at once.

A. `nsrun -p wide -- true` through `nsrun daemon` (root callers, --jobs at a time), RUNS in
   all: the service's VmRSS, idle, after 1,000 and after all of them. Target: within 5 MiB
   (no growth with the number of runs served).
B. CONCURRENT runs at once, each `nsrun -p wide -- sh -c 'echo $NSRUN_ADDRESS; read _ || :'`
   (CMD waits on its stdin): all must come up, with distinct addresses; then every stdin is
   closed, every run must end 0, and the lab host's links must be as before.

The profile `wide` is nat.toml on a bridge of its own with a /21 (2,045 addresses). nsrun is
the native front (native/nsrun.c, built here, as install.sh installs it): 500 Python clients
at once would measure the machine's memory, not the service. Run as root:
python3 bench/service_scale_bench.py [--runs 20000] [--concurrent 500] [--jobs 4]
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PY, Row, Session, base_parser, lab_links, launcher_and_front, main_wrapper  # noqa: E402
from service_bench import Daemon  # noqa: E402

TARGET_GROWTH_MIB = 5.0
FIRST = 1000


def _idle_rss(d: Daemon) -> float:
    d.wait_idle(120)
    time.sleep(1.0)
    return d.rss_mib()


def body(s: Session, front: str, runs: int, concurrent: int, jobs: int) -> list[Row]:
    s.check_in_lab()
    assert s.statedir is not None
    wide = s.statedir / "profiles" / "wide.toml"
    wide.write_text('description = "bench: nat on a /21"\nmode = "nat"\nbridge = "nsrw0"\n'
                    'subnet = "10.248.0.0/21"\n')
    os.chmod(wide, 0o644)
    rows: list[Row] = []
    before = lab_links()
    with s.scope():
        d = Daemon(s)
        d.start()
        keep = s.ns("wide-keep")
        s.nsrun_up(keep, "wide")  # the bridge stays up: every run below is a warm one
        argv = [front, "-p", "wide", "--", "true"]
        done = 0
        failures: list[str] = []
        lock = threading.Lock()

        def worker(count: int) -> None:
            nonlocal done
            for _ in range(count):
                r = subprocess.run(argv, env=s.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, timeout=120)
                with lock:
                    done += 1
                    if r.returncode != 0:
                        failures.append(r.stderr.strip()[:300])

        def batch(count: int) -> float:
            threads = [threading.Thread(target=worker, args=(count // jobs + (i < count % jobs),))
                       for i in range(jobs)]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                time.sleep(5)
                print(f"\r  A runs: {done}/{runs}", end="", file=sys.stderr, flush=True)
            for t in threads:
                t.join()
            return time.monotonic() - t0

        rss0 = _idle_rss(d)
        t_first = batch(FIRST)
        rss1 = _idle_rss(d)
        t_rest = batch(runs - FIRST)
        rss2 = _idle_rss(d)
        print(file=sys.stderr)
        assert not failures, failures[:5]
        rate = runs / (t_first + t_rest)
        rows.append(Row("A memory", "idle service VmRSS, before any run", rss0, "MiB"))
        rows.append(Row("A memory", f"idle service VmRSS, after {FIRST:,} runs", rss1, "MiB"))
        rows.append(Row("A memory", f"idle service VmRSS, after {runs:,} runs", rss2, "MiB",
                        ratio=f"{rss2 - rss1:+.1f} MiB after {FIRST:,}; {rate:.0f} runs/s, {jobs} at a time",
                        target=f"within {TARGET_GROWTH_MIB:g} MiB", ok=abs(rss2 - rss1) <= TARGET_GROWTH_MIB))

        # B: CONCURRENT runs at once
        procs = []
        t0 = time.monotonic()
        for _ in range(concurrent):
            procs.append(subprocess.Popen([front, "-p", "wide", "--", "sh", "-c", 'echo "$NSRUN_ADDRESS"; read _ || :'],
                                          env=s.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        addresses = []
        for p in procs:
            assert p.stdout is not None
            addresses.append(p.stdout.readline().strip())
        t_up = time.monotonic() - t0
        live = d.status()["runs"]
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
        codes = [p.wait(timeout=300) for p in procs]
        errors = [p.stderr.read().strip()[:300] for p in procs if p.stderr is not None and p.returncode]
        for p in procs:
            for fh in (p.stdout, p.stderr):
                if fh is not None:
                    fh.close()
        d.wait_idle(300)
        # every one through the service (a busy service would send root's to Python, daemonless)
        ok = (codes.count(0) == concurrent and len(set(addresses)) == concurrent and "" not in addresses
              and live == concurrent)
        rows.append(Row("B at once", f"{concurrent} runs at once, all up (CMD waiting)", t_up, "s",
                        ratio=f"{live} live runs at the service; {len(set(addresses))} distinct addresses; "
                              f"{codes.count(0)} ended 0",
                        target="all succeed, distinct addresses", ok=ok))
        if errors:
            print("errors:", errors[:5], file=sys.stderr)
        rows.append(Row("B at once", "idle service VmRSS after them", _idle_rss(d), "MiB"))
    after = lab_links()
    rows.append(Row("B at once", "the lab host's links after", 0.0, "", ratio="as before" if after == before
                    else f"changed: {sorted(set(after) ^ set(before))}", target="as before", ok=after == before))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20000, help="runs in all for A (default 20000)")
    p.add_argument("--concurrent", type=int, default=500, help="runs at once for B (default 500)")
    p.add_argument("--jobs", type=int, default=4, help="A's runs at a time (default 4)")
    a = p.parse_args(argv)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # three pipes for each run of B
    if soft < 4 * a.concurrent + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * a.concurrent + 64), hard))
    with launcher_and_front(a.nsrun, PY) as (a.nsrun, front):
        assert front is not None
        return main_wrapper("issue 26: the service over many runs, and many at once",
                            lambda s: body(s, front, max(a.runs, FIRST), a.concurrent, a.jobs), a)

if __name__ == "__main__":
    sys.exit(main())
