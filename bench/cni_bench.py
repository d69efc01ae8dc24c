#!/usr/bin/env python3
"""Issue 22, acceptance 6: the CNI plugin's ADD and DEL against the reference `bridge` plugin.

Each contender, once per round in a fresh random order: a fresh container namespace, the
plugin's ADD (timed), its DEL (timed), the namespace deleted; the plugin run directly as a
runtime runs it (CNI_* variables, the configuration on stdin), from the lab host:

- nsrun, profile nat, warm (another attachment on its bridge all along, so the bridge and its
  NAT rules exist), as install.sh installs it (nsrun.cli.launcher --cni: Python -I -S);
- nsrun, profile gw1 (bridge mode on the lab's LAN, warm too; its ARP probe waits 50 ms
  per address);
- the reference `bridge` plugin with `host-local` IPAM (Debian's containernetworking-plugins),
  isGateway, without ipMasq and with it (per-container iptables rules);
- VERSION of each plugin: its start-up alone.

The host-local leases go to the bench's state directory, the bridge plugin's bridge `cnibr0`
is removed at the end. Medians and p90 of --runs rounds after 2 warm-up rounds.
Run as root: python3 bench/cni_bench.py [--runs N]
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    PY,
    CommandFailed,
    Row,
    Session,
    base_parser,
    main_wrapper,
    median,
    run,
    timed,
    timing_rows,
)

REFERENCE = Path("/usr/lib/cni")
REF_BRIDGE, REF_NET = "cnibr0", "10.250.0.0/24"


class Plugin:
    """One contender: a plugin binary and its network configuration."""

    def __init__(self, name: str, network: str, path: Path, conf: dict[str, object]) -> None:
        self.name = name
        self.path = path
        self.conf = json.dumps({"cniVersion": "1.0.0", "name": network, **conf})

    def call(self, s: Session, command: str, container: str, nspath: str) -> float:
        env = dict(s.env, CNI_COMMAND=command, CNI_CONTAINERID=container, CNI_NETNS=nspath, CNI_IFNAME="eth0",
                   CNI_PATH=str(REFERENCE))
        try:
            return timed([str(self.path)], env=env, input=self.conf)
        except CommandFailed:  # a CNI error object is on stdout: say it
            r = run([str(self.path)], env=env, input=self.conf, check=False, capture=True)
            raise CommandFailed(f"{self.name} {command}: {r.stdout.strip()[:800]}") from None


def plugins(s: Session) -> list[Plugin]:
    from nsrun.cli import launcher

    assert s.statedir is not None
    mine = s.statedir / "cni" / "nsrun"
    mine.parent.mkdir()
    launcher.write(str(mine), PY, "cni")
    hostlocal = {"type": "host-local", "subnet": REF_NET, "dataDir": str(s.statedir / "host-local")}
    bridge = {"type": "bridge", "bridge": REF_BRIDGE, "isGateway": True, "ipam": hostlocal}
    return [
        Plugin("nsrun nat", "natnet", mine, {"type": "nsrun", "profile": "nat"}),
        Plugin("nsrun gw1", "gw1net", mine, {"type": "nsrun", "profile": "gw1"}),
        Plugin("bridge+host-local", "refnet", REFERENCE / "bridge", {**bridge, "ipMasq": False}),
        Plugin("bridge+host-local ipMasq", "refmasq", REFERENCE / "bridge", {**bridge, "ipMasq": True}),
    ]


def body(s: Session, runs: int) -> list[Row]:
    from nsrun.linux import netns

    contenders = plugins(s)
    seq = iter(range(1_000_000))

    def fresh() -> tuple[str, str]:
        name = s.ns(f"ctr{next(seq)}")
        netns.create(name, lambda: None)
        return f"{name}-id", netns.path(name)

    def keeper(p: Plugin) -> None:
        cid, path = fresh()
        p.call(s, "ADD", cid, path)

        def drop() -> None:
            p.call(s, "DEL", cid, path)
            netns.delete(Path(path).name)
        s.on_close(f"DEL of the {p.name} keeper", drop)

    def drop_bridge() -> None:
        s.sh(f"ip link del {REF_BRIDGE}", check=False)

    with s.scope():
        # Keepers, for the whole bench: an attachment of nsrun nat (its bridge and NAT rules
        # stay made), one of nsrun gw1 (its bridge record and rp_filter stay judged), one of the
        # bridge plugin (its bridge exists).
        s.on_close(f"ip link del {REF_BRIDGE}", drop_bridge)
        keeper(contenders[0])
        keeper(contenders[1])
        keeper(contenders[2])
        adds: dict[str, list[float]] = {p.name: [] for p in contenders}
        dels: dict[str, list[float]] = {p.name: [] for p in contenders}
        versions: dict[str, list[float]] = {"nsrun": [], "bridge": [], f"{Path(PY).name} -I -S -c pass": []}
        rng = random.Random(22)
        for rnd in range(runs + 2):
            order = contenders[:]
            rng.shuffle(order)
            for p in order:
                cid, path = fresh()
                try:
                    add = p.call(s, "ADD", cid, path)
                    time.sleep(0.02)
                    delete = p.call(s, "DEL", cid, path)
                finally:
                    netns.delete(Path(path).name)
                if rnd >= 2:
                    adds[p.name].append(add)
                    dels[p.name].append(delete)
                time.sleep(0.02)
            probes: list[tuple[str, Callable[[], float]]] = [
                ("nsrun", lambda: contenders[0].call(s, "VERSION", "", "")),
                ("bridge", lambda: contenders[2].call(s, "VERSION", "", "")),
                (f"{Path(PY).name} -I -S -c pass", lambda: timed([PY, "-I", "-S", "-c", "pass"])),
            ]
            rng.shuffle(probes)
            for what, probe in probes:
                dt = probe()
                if rnd >= 2:
                    versions[what].append(dt)
            print(f"\r  cni: round {rnd + 1}/{runs + 2}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
    rows = timing_rows("ADD", adds, ref="bridge+host-local")
    rows += timing_rows("DEL", dels, ref="bridge+host-local")
    rows += timing_rows("VERSION", versions, ref="bridge")
    for r in rows:
        if r.item in ("ADD", "DEL") and r.what == "nsrun nat":
            r.target = "(reported)"
    add_ratio = median(adds["nsrun nat"]) / median(adds["bridge+host-local"])
    del_ratio = median(dels["nsrun nat"]) / median(dels["bridge+host-local"])
    print(f"nsrun nat / bridge+host-local: ADD {add_ratio:.1f}x, DEL {del_ratio:.1f}x", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20, help="rounds; default 20")
    a = p.parse_args(argv)
    return main_wrapper("issue 22: the CNI plugin against the reference bridge plugin", lambda s: body(s, a.runs), a)


if __name__ == "__main__":
    sys.exit(main())
