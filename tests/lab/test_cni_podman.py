"""Issue 22, acceptance 2: podman 4.3 with its CNI backend runs a container on an nsrun
network (type "nsrun", profile gw1) and the container leaves through gw1; afterwards nothing
of it is left, also after a `kill -9` of the container's conmon and a `podman rm -f`.

podman runs inside the lab host with all its state in a temporary directory (tests/support/
cnilab.Podman: storage, run root, libpod's tmpdir and file locks, containers.conf, HOME), the
containers' cgroups under a parent of the test's own, libcni's /var/lib/cni a private tmpfs of
the test session's, and a static busybox as the root file system (no image, no registry).
podman's cleanup (`podman container cleanup`, run by conmon) gets no environment of nsrun's,
so the network configuration names the state directory and profile path itself.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from nsrun import lab as labmod
from nsrun import names
from support import cnilab
from support.mounts import private_dir
from support.requirements import requires

requires(*cnilab.PODMAN_NEEDS, module=True)

NC = "nc 198.51.100.254 8000 </dev/null"  # the lab's upstream server answers with who it saw


@pytest.fixture
def podman(lab: Any, tmp_path: Any) -> Iterator[cnilab.Podman]:
    with private_dir("/var/lib/cni", 0o755, "nsrun-tests-cni"):
        cni = cnilab.Cni(lab, None, tmp_path)
        pm = cnilab.Podman(cni)
        cni.network("gw1net", {"type": "nsrun", "profile": "gw1", "stateDir": str(lab.statedir),
                               "profilePath": [lab.env["NSRUN_PROFILE_PATH"]]})
        try:
            yield pm
        finally:
            pm("rm", "-af", "-t", "0")  # whatever a failing test left
            pm.close()
            cni.close()


def left_over(pm: cnilab.Podman) -> dict[str, Any]:
    """What podman and nsrun could have left: containers, their namespaces under /run/netns,
    processes in their cgroups, nsrun's records and links, conmon processes of this podman."""
    lab = pm.cni.lab
    ns_dir = lab.statedir / "ns"
    conmons = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().decode(errors="replace")
        except OSError:
            continue
        if argv.startswith("/usr/bin/conmon") and str(pm.base) in argv:
            conmons.append(int(pid))
    return {
        "containers": pm("ps", "-aq").stdout.split(),
        "netns": [n for n in os.listdir("/run/netns") if n.startswith("cni-")],
        "cgroup processes": [pid for path in pm.cgroups() for d, _, _ in os.walk(path)
                             for pid in _procs(f"{d}/cgroup.procs")],
        "records": sorted(p.name for p in ns_dir.glob("*.json")) if ns_dir.exists() else [],
        "links": [x["ifname"] for x in lab.host_json("ip", "-j", "link", "show") if names.is_host_veth(x["ifname"])],
        "conmon": conmons,
    }


def _procs(path: str) -> list[str]:
    try:
        with open(path) as fh:
            return fh.read().split()
    except OSError:
        return []


# (After conmon's death runc leaves the container's cgroup directories, empty: podman's, not
# nsrun's; the fixture removes them with the parent.)
NOTHING = {"containers": [], "netns": [], "cgroup processes": [], "records": [], "links": [], "conmon": []}


def settled(pm: cnilab.Podman, timeout: float = 10.0) -> dict[str, Any]:
    """left_over() once it is NOTHING, or after TIMEOUT: conmon may outlive `podman run --rm`
    by a moment (it exits after the cleanup it starts)."""
    deadline = time.monotonic() + timeout
    while (found := left_over(pm)) != NOTHING and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_podman_runs_a_container_on_an_nsrun_network_through_gw1(lab, podman):
    assert "gw1net" in podman("network", "ls", "--format", "{{.Name}}").stdout.split()
    r = podman.run("gw1net", "sh", "-c", f"ip -o -4 addr show dev eth0; ip route; {NC}")
    assert r.returncode == 0, r.stderr
    addr, route, seen = r.stdout.splitlines()[0], r.stdout.splitlines()[1], r.stdout.splitlines()[-1]
    assert " 192.168.1.1" in addr and "eth0" in addr
    assert route.startswith(f"default via {labmod.GW1_LAN} dev eth0")
    assert seen == labmod.GW1_UP  # it left through the profile's gateway, not the host's (gw2)
    assert settled(podman) == NOTHING


def logged(pm: cnilab.Podman, cid: str, timeout: float = 10.0) -> Any:
    """`podman logs CID` once the container has printed a line, or after TIMEOUT."""
    deadline = time.monotonic() + timeout
    while not (r := pm("logs", cid)).stdout.endswith("\n") and time.monotonic() < deadline:
        time.sleep(0.1)
    return r


def test_kill_9_of_conmon_then_podman_rm_f_leaves_nothing(lab, podman):
    # The detached container's own process asks the upstream server, then sleeps (not `podman
    # exec`, which runs outside the container's root file system in a chroot: cnilab.Podman).
    r = podman.run("gw1net", "sh", "-c", f"{NC}; exec sleep 1000", detach=True)
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    during = left_over(podman)
    assert during["containers"] == [cid[:12]] and len(during["records"]) == 1 and len(during["links"]) == 1
    r = logged(podman, cid)
    assert (r.returncode, r.stdout.strip()) == (0, labmod.GW1_UP), r.stderr  # through gw1
    conmon = int(podman("inspect", "--format", "{{.State.ConmonPid}}", cid).stdout)
    assert conmon in during["conmon"]
    os.kill(conmon, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while conmon in left_over(podman)["conmon"] and time.monotonic() < deadline:
        time.sleep(0.05)
    r = podman("rm", "-f", "-t", "0", cid)
    assert r.returncode == 0, r.stderr
    assert settled(podman) == NOTHING
