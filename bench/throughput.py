#!/usr/bin/env python3
"""Issue 7, item 5: TCP throughput (iperf3) through an nsrun nat namespace against the
same path built by hand, --seconds each, alternated, --runs rounds.

  nsrun:  namespace (nsrun up -p nat) -veth- nsrun0 bridge -[FORWARD, MASQUERADE]- br0 ...
  hand:   namespace (ip netns add, veth, address, route) -veth- benchbr bridge (ip) -[FORWARD,
          MASQUERADE by iptables-legacy]- br0 ...
  ... then on to the iperf3 server, by --target:
  gw2   (default) the server listens in the lab's gateway namespace gw2 on its LAN address
        192.168.1.2: one hop past the lab host, so both paths cross what nsrun builds
        (veth, bridge, forwarding, NAT) and nothing else but the LAN switch.
  up    the server in the upstream namespace at 198.51.100.254, through the lab host's
        default route via gw2, which forwards and masquerades a second time: the same
        extra work on both paths, which dilutes a difference.
  host  the server on the lab host's br0 address 192.168.1.10: no gateway hop, but also no
        forwarding and no NAT (traffic to a local address never reaches FORWARD or
        POSTROUTING), so it measures only veth + bridge.
The lab host itself as a client (no namespace, no NAT) is measured too, as the ceiling.
Run as root: python3 bench/throughput.py [--runs 5] [--seconds 5] [--target gw2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    HAND_BRIDGE,
    HAND_NET,
    Contender,
    Row,
    Session,
    alternate,
    base_parser,
    main_wrapper,
    median,
    run,
)

from nsrun import lab as labmod  # noqa: E402

TARGET_RATIO = 0.95
PORT = 5201
TARGETS = {"gw2": labmod.GW2_LAN, "up": labmod.SERVER, "host": labmod.HOST_ADDR}


def _iperf3() -> str:
    found = shutil.which("iperf3")
    if not found:
        sys.exit("bench: iperf3 is missing: apt-get install -y iperf3")
    return found


def _gbits(out: str) -> float:
    data = json.loads(out)
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9


def _masq_packets(s: Session, comment_or_src: str) -> int:
    """Packets counted by the lab host's MASQUERADE rules matching COMMENT_OR_SRC."""
    out = s.sh("iptables-legacy -t nat -L POSTROUTING -v -n -x").stdout
    return sum(int(line.split()[0]) for line in out.splitlines()[2:]
               if "MASQUERADE" in line and comment_or_src in line)


def body(s: Session, runs: int, seconds: int, target: str) -> list[Row]:
    iperf3 = _iperf3()
    assert s.lab is not None
    server_ip = TARGETS[target]
    server_ns = {"gw2": s.lab.gw2, "up": s.lab.up, "host": None}[target]
    with s.scope():
        # nsrun's namespace.
        tp = s.ns("tp")
        s.nsrun_up(tp, "nat")
        # The hand-built one: the bridge, a namespace wired with ip, MASQUERADE by iptables-legacy.
        s.hand_bridge()
        hand = s.ns("tph")
        s.sh(f"ip netns add {hand}\n"
             f"ip link add vtph type veth peer name vtpp\n"
             f"ip link set vtpp netns {hand}\n"
             f"ip link set vtph master {HAND_BRIDGE} up\n"
             f"ip -n {hand} link set lo up\n"
             f"ip -n {hand} addr add {HAND_NET}.250/24 dev vtpp\n"
             f"ip -n {hand} link set vtpp up\n"
             f"ip -n {hand} route add default via {HAND_NET}.1\n")
        s.on_close(f"ip netns del {hand}", lambda: run(["ip", "netns", "del", hand], check=False))
        masq = f"-s {HAND_NET}.0/24 ! -o {HAND_BRIDGE} -j MASQUERADE"
        s.sh(f"iptables-legacy -t nat -A POSTROUTING {masq}")
        s.on_close("iptables-legacy -D (hand MASQUERADE)",
                   lambda: s.sh(f"iptables-legacy -t nat -D POSTROUTING {masq}", check=False))
        fwd = s.sh("cat /proc/sys/net/ipv4/ip_forward").stdout.strip()
        if fwd != "1":
            s.sh("echo 1 > /proc/sys/net/ipv4/ip_forward")
            s.on_close("ip_forward back", lambda: s.sh(f"echo {fwd} > /proc/sys/net/ipv4/ip_forward", check=False))

        # The server.
        where = ["ip", "netns", "exec", server_ns] if server_ns else []
        server = subprocess.Popen([*where, iperf3, "-s", "-p", str(PORT)], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def stop_server() -> None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        s.on_close("stop the iperf3 server", stop_server)
        ss = ["ss", "-N", server_ns] if server_ns else ["ss"]
        deadline = time.monotonic() + 10
        while f":{PORT}" not in run([*ss, "-Hltn", f"sport = :{PORT}"], capture=True, check=False).stdout:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the iperf3 server did not start")
            time.sleep(0.05)

        client = [iperf3, "-c", server_ip, "-p", str(PORT), "-t", str(seconds), "-J"]

        def through_nsrun(_: int) -> float:
            return _gbits(s.nsrun_run("exec", tp, "--", *client, capture=True, timeout=seconds + 60).stdout)

        def through_hand(_: int) -> float:
            return _gbits(run(["ip", "netns", "exec", hand, *client], capture=True, timeout=seconds + 60).stdout)

        def lab_host(_: int) -> float:
            return _gbits(run(client, capture=True, timeout=seconds + 60).stdout)

        before = {"nsrun": _masq_packets(s, "nsrun:"), "hand": _masq_packets(s, f"{HAND_NET}.0/24")}
        samples = alternate([Contender("nsrun", through_nsrun), Contender("hand", through_hand),
                             Contender("lab host", lab_host)], runs, warmup=0, settle=0.5,
                            progress=f"item 5: iperf3 {seconds} s each")
        after = {"nsrun": _masq_packets(s, "nsrun:"), "hand": _masq_packets(s, f"{HAND_NET}.0/24")}
    if target != "host":
        for k in ("nsrun", "hand"):
            if after[k] <= before[k]:
                raise RuntimeError(f"the {k} path did not go through its MASQUERADE rule")

    def row(what: str, xs: list[float], ratio: str = "", tgt: str = "", ok: bool | None = None) -> Row:
        spread = f"runs {min(xs):.2f}-{max(xs):.2f}"
        return Row("5 tcp", what, median(xs), "Gbit/s", None, len(xs),
                    f"{ratio}; {spread}" if ratio else spread, tgt, ok)

    r = median(samples["nsrun"]) / median(samples["hand"])
    # Each round ran both paths back to back: the median of the per-round ratios is less
    # sensitive to load that drifts over the whole series.
    paired = median([a / b for a, b in zip(samples["nsrun"], samples["hand"])])
    via = {"gw2": f"server in gw2 {server_ip}", "up": f"server upstream {server_ip} via gw2",
           "host": f"server on lab host br0 {server_ip}"}[target]
    return [
        row(f"iperf3 through nsrun nat ({via})", samples["nsrun"],
            f"{r:.3f}x hand-built (per round: {paired:.3f}x)",
            f">= {TARGET_RATIO:g}x hand-built", r >= TARGET_RATIO),
        row("iperf3 through the hand-built path", samples["hand"]),
        row("iperf3 from the lab host itself (ceiling)", samples["lab host"]),
    ]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tp-runs", "--runs", dest="tp_runs", type=int, default=5,
                   help="rounds of iperf3 (each path once per round); default 5")
    p.add_argument("--seconds", type=int, default=5, help="iperf3 -t; default 5")
    p.add_argument("--target", choices=sorted(TARGETS), default="gw2",
                   help="where the iperf3 server listens (see the module doc); default gw2")


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    add_args(p)
    a = p.parse_args(argv)
    return main_wrapper("issue 7: item 5", lambda s: body(s, a.tp_runs, a.seconds, a.target), a)


if __name__ == "__main__":
    sys.exit(main())
