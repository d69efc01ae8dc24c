"""Drives the engine from a plain Python process (not the CLI): run inside a lab host by
tests/lab/test_engine.py, with NSRUN_STATE_DIR and NSRUN_PROFILE_PATH set. Writes what it saw,
as JSON, to the file named by argv[1]; it must print nothing.

argv[2] == "extra": the test-only resource (extra_resource) is added to nat mode's list.
"""

from __future__ import annotations

import json
import os
import socket
import sys

from nsrun import engine, profile
from nsrun.linux import netns
from nsrun.engine import gc, record, resources
from nsrun.errors import NsrunError


def exists(ifname: str) -> bool:
    try:
        socket.if_nametoindex(ifname)
        return True
    except OSError:
        return False


def main() -> None:
    out: dict[str, object] = {}
    prof = profile.load("nat")
    if sys.argv[2] in ("interleaved", "failing"):
        {"interleaved": interleaved, "failing": failing}[sys.argv[2]](prof, out)
    else:
        plain(prof, out)
    with open(sys.argv[1], "w") as fh:
        json.dump(out, fh)


def plain(prof: profile.Profile, out: dict[str, object]) -> None:
    extra = None
    if sys.argv[2] == "extra":
        sys.path.insert(0, os.path.dirname(__file__))
        import extra_resource as extra

        resources.MODES["nat"].append(extra)  # the one list entry
    rec, already = engine.up("drv", prof, persistent=True)
    out["up"] = {"address": rec.address, "already": already, "state": rec.state,
                 "netns": netns.exists("drv"), "veth": exists(rec.veth or "")}
    _, out["again_already"] = engine.up("drv", prof, persistent=True)
    out["plan_while_up"] = [a.what for a in gc.plan()]
    if extra is not None:
        out["extra_made"] = exists(extra.ifname("drv"))
    out["down"] = engine.down("drv")
    out["after_down"] = {"netns": netns.exists("drv"), "record": record.read("drv") is not None,
                         "veth": exists(rec.veth or "")}
    if extra is not None:
        out["extra_after_down"] = exists(extra.ifname("drv"))
        # A record lost after the resources were made (a crash between a step and its
        # record, a wiped state directory): gc finds the extra bridge from its name alone.
        engine.up("drv", prof, persistent=True)
        netns.delete("drv")
        record.remove("drv")
        out["orphans"] = [a.what for a in gc.plan()]
        seen: list[str] = []
        failed: list[str] = []
        gc.run(False, lambda a: seen.append(a.what), lambda a, e: failed.append(f"{a.what}: {e}"))
        out["gc_applied"] = seen
        out["gc_failed"] = failed
        out["extra_after_gc"] = exists(extra.ifname("drv"))
        out["plan_after_gc"] = [a.what for a in gc.plan()]
    with open(sys.argv[1], "w") as fh:
        json.dump(out, fh)


def interleaved(prof: profile.Profile, out: dict[str, object]) -> None:
    """The last two namespaces of a bridge leave at once, their teardown steps interleaved:
    A's firewall step runs while B still holds a lease, then A's bridge step after B's
    lease went, before B's firewall step."""
    from nsrun.engine.firewall import iptables
    from nsrun.engine.resources import bridge, masquerade, lease, veth

    a, _ = engine.up("drv-a", prof, persistent=True)
    b, _ = engine.up("drv-b", prof, persistent=True)
    for rec in (a, b):
        netns.delete(rec.name)
        veth.remove(rec)
    lease.remove(a)
    masquerade.remove(a)  # B holds a lease: nothing to do yet
    lease.remove(b)
    bridge.remove(a)  # the bridge is unused now
    out["rules_after_a"] = sorted(iptables.bridges())
    masquerade.remove(b)
    bridge.remove(b)
    for rec in (a, b):
        engine.teardown(rec)  # the rest (dns, veth, the records)
    out["net_bridges"] = record.net_bridges()
    out["rules"] = sorted(iptables.bridges())


def failing(prof: profile.Profile, out: dict[str, object]) -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    import failing_resource

    resources.MODES["nat"].append(failing_resource)
    rec, _ = engine.up("drv", prof, persistent=True)
    try:
        engine.down("drv")
        out["down_error"] = None
    except NsrunError as exc:
        out["down_error"] = str(exc)
    out["after_down"] = {"netns": netns.exists("drv"), "record": record.read("drv") is not None,
                         "veth": exists(rec.veth or ""), "dns": os.path.exists("/etc/netns/drv")}
    seen: list[str] = []
    failed: list[str] = []
    gc.run(False, lambda a: seen.append(a.what), lambda a, e: failed.append(f"{a.what}: {e}"))
    out["gc_applied"] = seen
    out["gc_failed"] = failed
    out["record_after_gc"] = record.read("drv") is not None
    out["plan_after_gc"] = [a.what for a in gc.plan()]


if __name__ == "__main__":
    main()
