#!/usr/bin/env python3
"""Issue 13: the warm path. A run and an exec through the service (`nsrun daemon`), side by
side with the same work typed by hand, and the idle service's memory.

A. `nsrun -p nat -- true` through the service (a root caller: the service brings the
   namespace up and hands its descriptor back; the client enters it and execs CMD), timed
   as the caller sees it (spawn to exit), and also until the service has taken the
   namespace down again (its status reports no live run; the teardown runs after CMD
   ended); the same run daemonless and warm (NSRUN_DAEMON=0); the hand-typed `ip`
   sequence and its `ip -batch` variant (bench/run_bench.py's, delete included);
   `unshare -n true`. Target: through the service <= 1.0x by hand.
B. `nsrun exec NAME -- true` through the service and daemonless, `ip netns exec NAME true`,
   `python3 -I -S -c pass` (sys.executable). Target: through the service <= 6x ip netns exec.
C. VmRSS of the idle service, after the runs above. Target: < 60 MiB.
D. `nsrun -p nat -- true` through a service with a warm pool of 4 nat namespaces, against
   the hand-typed sequence. Target: <= 0.5x by hand.

E. `nsrun -p nat -- true` by a caller without root (nobody, as a policy grants: the service
   starts CMD as nobody and the client waits for its end), through the native front and
   through the launcher (Python run directly by setpriv), against the hand-typed sequence.

A, B, D and E also time the native front (native/nsrun.c, what install.sh and the package put
at `nsrun`: the Python CLI only for what it hands over), built here with cc and handing over
to the launcher. Targets (issue 26): a pooled run <= 0.25x by hand, exec <= 2x ip netns exec.

Contenders alternate run by run (bench/common.py). nsrun is this checkout, run as
install.sh's launcher runs it (nsrun.cli.launcher: `python -I -S`), by --python's interpreter.
Run as root: `python3 bench/service_bench.py [--python /opt/nsrun/bin/python] [--only D]`.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    HAND_NET,
    PY,
    Contender,
    Row,
    Session,
    alternate,
    base_parser,
    launcher_and_front,
    main_wrapper,
    median,
    p90,
    timed,
    timing_rows,
)
from run_bench import batch_script, hand_script  # noqa: E402

from nsrun import wire  # noqa: E402
from nsrun.lab import stop_process  # noqa: E402

TARGET_RUN = 1.0
TARGET_EXEC = 6.0
TARGET_RSS_MIB = 60.0
TARGET_POOL = 0.5
TARGET_POOL_NATIVE = 0.25
TARGET_EXEC_NATIVE = 2.0


class Daemon:
    def __init__(self, s: Session) -> None:
        self.s = s
        assert s.statedir is not None
        self.sock = s.statedir / wire.SOCKET_NAME
        self.log = s.statedir.parent / f"{s.statedir.name}.daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.s.nsrun_argv("daemon", *args), env=self.s.env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.s.on_close("stop nsrun daemon", self.stop)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.status()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nsrun daemon did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.05)

    def restart_with(self, option: str, name: str, text: str) -> None:
        """Stop, then start again with OPTION naming a file NAME of the state directory
        holding TEXT (root's, 0644, as the service wants its configuration)."""
        self.stop()
        assert self.s.statedir is not None
        path = self.s.statedir / name
        path.write_text(text)
        path.chmod(0o644)
        self.start(option, str(path))

    def status(self) -> dict[str, int]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(30)
            c.connect(str(self.sock))
            wire.send(c, {"type": "status"})
            got = wire.recv(c)
            assert got is not None
            return got[0]  # type: ignore[return-value]

    def wait_idle(self, timeout: float = 60, pool: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while self.status()["runs"] or self.status().get("pool", 0) < pool:
            if time.monotonic() > deadline:
                raise RuntimeError("the service still has live runs")
            time.sleep(0.001)

    def rss_mib(self) -> float:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.wait_idle(60)
            except (OSError, RuntimeError):
                pass
            stop_process(self.proc)
        self.proc = None
        if self.log.exists():
            self.log.unlink()


def body(s: Session, runs: int, only: str = "ABCDE", front: str | None = None) -> list[Row]:
    """FRONT: the native front's path (None: not timed)."""
    rows: list[Row] = []
    native = [front] if front else []
    alone = {**s.env, "NSRUN_DAEMON": "0"}
    with s.scope():
        d = Daemon(s)
        d.start()
        warm = s.ns("bench-warm")
        s.nsrun_up(warm, "nat")  # through the service; `nsrun down` when the scope ends
        s.hand_bridge()
        teardown: list[float] = []

        def service_run(_: int) -> float:
            t0 = time.perf_counter()
            dt = timed(s.nsrun_argv("-p", "nat", "--", "true"), env=s.env)
            d.wait_idle()
            teardown.append(time.perf_counter() - t0)
            return dt

        def settled(argv: list[str], pool: int = 0) -> Callable[[int], float]:
            """A contender: `ARGV -p nat -- true`, timed, then the service idle again (its
            run taken down, its POOL refilled) before the next contender starts."""
            def one(_: int) -> float:
                dt = timed([*argv, "-p", "nat", "--", "true"], env=s.env)
                d.wait_idle(120, pool=pool)
                return dt
            return one

        def by_hand(i: int) -> float:
            ns = s.ns(f"h{i}")
            return timed(["sh", "-ec", hand_script(ns, f"vh{i}", f"vp{i}", f"{HAND_NET}.{2 + i % 250}")])

        def batch(i: int) -> float:
            ns = s.ns(f"b{i}")
            return timed(["sh", "-ec", batch_script(ns, f"vb{i}", f"{HAND_NET}.{2 + i % 250}")])

        if "A" in only:
            s.check_in_lab()
            samples = alternate([
                Contender("nsrun -p nat -- true, service", service_run),
                *([Contender("nsrun -p nat -- true, service, native front", settled(native))] if native else []),
                Contender("nsrun -p nat -- true, daemonless warm", lambda _: timed(s.nsrun_argv("-p", "nat", "--", "true"), env=alone)),
                Contender("ip, typed by hand", by_hand),
                Contender("ip -batch, peer made inside", batch),
                Contender("unshare -n true", lambda _: timed(["unshare", "-n", "true"])),
            ], runs, progress="A run")
            hand = median(samples["ip, typed by hand"])
            samples["  service, until torn down"] = teardown[-len(samples["ip, typed by hand"]):]
            got = timing_rows("A run", samples, ref="ip, typed by hand")
            for r in got:
                if r.what == "nsrun -p nat -- true, service":
                    r.target = f"<= {TARGET_RUN:g}x by hand"
                    r.ok = r.value / 1000 <= TARGET_RUN * hand
            rows += got

        if "B" in only:
            samples = alternate([
                Contender("nsrun exec NAME -- true, service", lambda _: timed(s.nsrun_argv("exec", warm, "--", "true"), env=s.env)),
                *([Contender("nsrun exec NAME -- true, service, native front",
                             lambda _: timed([*native, "exec", warm, "--", "true"], env=s.env))] if native else []),
                Contender("nsrun exec NAME -- true, daemonless", lambda _: timed(s.nsrun_argv("exec", warm, "--", "true"), env=alone)),
                Contender("ip netns exec NAME true", lambda _: timed(["ip", "netns", "exec", warm, "true"])),
                Contender("python3 -I -S -c pass", lambda _: timed([PY, "-I", "-S", "-c", "pass"])),
            ], runs * 2, progress="B exec")
            ip_m = median(samples["ip netns exec NAME true"])
            py_m = median(samples["python3 -I -S -c pass"])
            got = timing_rows("B exec", samples, ref="ip netns exec NAME true")
            for r in got:
                if r.what.startswith("nsrun exec"):
                    r.ratio += f"; {r.value / 1000 / py_m:.2f}x python -I -S"
                if r.what == "nsrun exec NAME -- true, service":
                    r.target = f"<= {TARGET_EXEC:g}x ip netns exec"
                    r.ok = r.value / 1000 <= TARGET_EXEC * ip_m
                if r.what.endswith("native front"):
                    r.target = f"<= {TARGET_EXEC_NATIVE:g}x ip netns exec"
                    r.ok = r.value / 1000 <= TARGET_EXEC_NATIVE * ip_m
            rows += got

        if "C" in only:
            d.wait_idle()
            time.sleep(1.0)
            rss = [d.rss_mib()]
            for _ in range(4):
                time.sleep(0.25)
                rss.append(d.rss_mib())
            rows.append(Row("C memory", "idle service VmRSS (engine imported)", median(rss), "MiB", p90(rss),
                            len(rss), "", f"< {TARGET_RSS_MIB:g} MiB", median(rss) < TARGET_RSS_MIB))

        if "D" in only:
            # D: the same service with a warm pool of 4 nat namespaces (nsrun.service.pool).
            d.restart_with("--config", "service.toml", "[pool]\nnat = 4\n")
            d.wait_idle(120, pool=4)

            samples = alternate([
                Contender("nsrun -p nat -- true, service, pool of 4", settled(s.nsrun_argv(), pool=4)),
                *([Contender("nsrun -p nat -- true, service, pool of 4, native front", settled(native, pool=4))]
                  if native else []),
                Contender("ip, typed by hand", by_hand),
            ], runs, progress="D pool")
            hand = median(samples["ip, typed by hand"])
            got = timing_rows("D pool", samples, ref="ip, typed by hand")
            for r in got:
                if r.what.endswith("pool of 4"):
                    r.target = f"<= {TARGET_POOL:g}x by hand"
                    r.ok = r.value / 1000 <= TARGET_POOL * hand
                if r.what.endswith("pool of 4, native front"):
                    r.target = f"<= {TARGET_POOL_NATIVE:g}x by hand"
                    r.ok = r.value / 1000 <= TARGET_POOL_NATIVE * hand
            rows += got

        if "E" in only:
            # E: a caller without root, as a policy grants (the socket opened to everyone here,
            # as group nsrun would)
            d.restart_with("--policy", "policy.toml",
                           'version = 1\n[[allow]]\nusers = ["nobody"]\nprofiles = ["nat"]\nlimit = 8\n')
            d.sock.chmod(0o666)
            nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
            launcher = s.nsrun[0]

            samples = alternate([
                Contender("nsrun -p nat -- true, caller without root", settled([*nobody, PY, "-I", "-S", launcher])),
                *([Contender("nsrun -p nat -- true, caller without root, native front", settled([*nobody, *native]))]
                  if native else []),
                Contender("ip, typed by hand", by_hand),
            ], runs, progress="E user")
            rows += timing_rows("E user", samples, ref="ip, typed by hand")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=30, help="rounds for A (B does twice as many); default 30")
    p.add_argument("--only", default="ABCDE", metavar="PARTS", help="the parts to run (default: ABCDE)")
    p.add_argument("--python", default=PY, help="the interpreter of nsrun's console script (default: "
                                               "this one; install.sh's is /opt/nsrun/bin/python)")
    p.add_argument("--no-native", action="store_true", help="do not build and time the native front")
    a = p.parse_args(argv)
    with launcher_and_front(a.nsrun, a.python, front=not a.no_native) as (a.nsrun, front):
        return main_wrapper("issue 13: the warm path (A run, B exec, C memory)",
                            lambda s: body(s, a.runs, a.only.upper(), front), a)

if __name__ == "__main__":
    sys.exit(main())
