"""`nsrun demo`: two programs, two gateways, end to end, in a throwaway lab of namespaces.

Builds the lab (nsrun.lab), then, inside the lab host and with the bundled profiles:
the host's own connection, a nat run, and two runs at once through gw1 and gw2. Each
line says which gateway the upstream server saw. The lab and its state go afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from nsrun import lab as labmod
from nsrun import profile

WHO = {labmod.GW1_UP: "gw1", labmod.GW2_UP: "gw2"}


def _line(label: str, proc: subprocess.Popen[str]) -> bool:
    out, err = proc.communicate(timeout=60)
    seen = out.strip()
    if proc.returncode == 0 and seen:
        print(f"  {label:<44} server saw {seen:<14} -> {WHO.get(seen, '?')}")
        return True
    print(f"  {label:<44} FAILED (exit {proc.returncode}): {err.strip()}")
    return False


def demo() -> int:
    """Build the lab, show each run's gateway, remove the lab; NsrunError when a step failed."""
    from nsrun.process import privilege

    privilege.require_root(state_dir=False)  # the lab has a state directory of its own
    lab = labmod.Lab()
    statedir = f"/run/nsrun-demo-{lab.id}"
    env = dict(os.environ, NSRUN_STATE_DIR=statedir, NSRUN_PROFILE_PATH=str(profile.bundled_dir()))
    env.pop("SUDO_UID", None)
    env.pop("SUDO_GID", None)
    client = [sys.executable, "-m", "nsrun.lab", "client"]
    nsrun = [sys.executable, "-m", "nsrun"]

    def start(argv: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(argv, env=env, preexec_fn=lab.enter_host, text=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    print(f"Building lab {lab.id}: a host on LAN 192.168.1.0/24 (br0 .10, default via gw2),")
    print("gateways gw1 (.1) and gw2 (.2) that masquerade to an upstream server.")
    print("Nothing outside the lab's namespaces is touched.\n")
    ok = True
    with lab:
        try:
            print("Inside the lab host:")
            ok &= _line("the host itself (default route via gw2)", start(client))
            ok &= _line("nsrun -p nat -- CLIENT (host NAT, then gw2)", start(nsrun + ["-p", "nat", "--"] + client))
            p1 = start(nsrun + ["-p", "gw1", "--"] + client)
            p2 = start(nsrun + ["-p", "gw2", "--"] + client)
            print("Two programs at once, each with its own gateway, no `ip rule`:")
            ok &= _line("P1: nsrun -p gw1 -- CLIENT", p1)
            ok &= _line("P2: nsrun -p gw2 -- CLIENT", p2)
            ok &= _line("the host again (unchanged: gw2)", start(client))
        finally:
            shutil.rmtree(statedir, ignore_errors=True)
    print("\nLab removed." if ok else "\nLab removed; some steps failed.")
    if not ok:
        from nsrun.errors import NsrunError

        raise NsrunError("the demo did not complete")
    return 0
