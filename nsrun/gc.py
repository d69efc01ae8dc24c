"""`nsrun gc`: reclaim what crashed runs left behind, from names and records alone.

What counts as left behind:
- a record whose run is over: an ephemeral namespace whose supervisor is dead, a setup
  that died half-way (no one holds its lock), a persistent namespace whose mount is gone;
- a host veth with nsrun's alias whose namespace has no record and is gone;
- leases whose owner has no record;
- a bridge, firewall rules and ip_forward that nsrun set up for a bridge no namespace uses;
- a /etc/netns/NAME/resolv.conf nsrun wrote for a namespace that is gone;
- a temporary file of the state directory whose writer died.
Never touched: live runs (their supervisor lives or their lock is held), persistent
namespaces that are up, anything without nsrun's names, alias, comment or record, and
anything that may belong to another state directory (NSRUN_STATE_DIR): a namespace that
exists, its DNS file and veth, the rules of a bridge that exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nsrun import dns, lease, names, netns, network, state


def _stale(rec: dict[str, Any]) -> str | None:
    """Why REC's run is over, or None when it is live (or may be)."""
    name = rec["name"]
    if rec.get("state") == "up" and rec.get("persistent"):
        return None if netns.exists(name) else "its namespace is gone"
    if not rec.get("persistent") and rec.get("owner_pid") is not None:
        if state.owner_alive(rec):
            return None
        return f"its nsrun process {rec.get('owner_pid')} is gone"
    # A setup in progress holds the namespace's lock.
    try:
        with state.Lock(state.ns_dir() / f"{name}.lock", blocking=False):
            pass
    except BlockingIOError:
        return None
    return "its setup never finished"


def plan() -> list[tuple[str, str, Any]]:
    """(what, why, handle) for everything gc would remove."""
    actions: list[tuple[str, str, Any]] = []
    recs = {r["name"]: r for r in state.records()}
    for name, rec in recs.items():
        why = _stale(rec)
        if why:
            actions.append((f"namespace {name} and its pieces", why, ("teardown", name)))
    for bridge in network.net_bridges():
        store = lease.FileStore(bridge)
        for addr, owner in store.taken().items():
            if owner not in recs:  # a stale record's leases go with its teardown
                actions.append((f"lease {bridge}/{_ip(addr)}", f"owner {owner} is gone", ("lease", bridge, addr, owner)))
    # A namespace that exists may belong to another state directory (or be another's
    # run in progress): only pieces whose namespace is gone are orphans for sure.
    for ent in _etc_netns():
        if ent not in recs and not netns.exists(ent) and _ours_dns(ent):
            actions.append((f"/etc/netns/{ent}/resolv.conf", "its namespace is gone", ("dns", ent)))
    actions.extend(_host_links(set(recs)))
    for path in _stale_temporaries():
        actions.append((f"{path}", "a write cut short by a crash", ("tmp", path)))
    return actions


def _stale_temporaries() -> list[str]:
    """Files state.write_json was writing when its process died (`.NAME.PID.tmp`)."""
    out = []
    for d in [state.ns_dir(), *(state.net_dir(b) for b in network.net_bridges())]:
        try:
            entries = os.listdir(d)
        except OSError:
            continue
        for fn in entries:
            parts = fn.rsplit(".", 2)
            if fn.startswith(".") and len(parts) == 3 and parts[2] == "tmp" and parts[1].isdigit():
                if state.process_start(int(parts[1])) is None:
                    out.append(str(d / fn))
    return out


def _ip(addr: int) -> str:
    import ipaddress

    return str(ipaddress.IPv4Address(addr))


def _etc_netns() -> list[str]:
    try:
        return sorted(os.listdir(dns.ETC_NETNS))
    except OSError:
        return []


def _ours_dns(name: str) -> bool:
    try:
        with open(f"{dns.dir_for(name)}/resolv.conf") as fh:
            return fh.readline().startswith("# written by nsrun")
    except OSError:
        return False


def _host_links(recs: set[str]) -> list[tuple[str, str, Any]]:
    """Host veths carrying nsrun's alias for a namespace with no record that is gone (one
    kept alive by a process after its mount was removed)."""
    from nsrun import netlink

    out: list[tuple[str, str, Any]] = []
    with netlink.IPRoute() as ipr:
        for link in ipr.get_links():
            ifname = link.get_attr("IFLA_IFNAME")
            alias = link.get_attr("IFLA_IFALIAS") or ""
            if names.is_host_veth(ifname) and alias.startswith(names.IFALIAS_PREFIX):
                owner = alias[len(names.IFALIAS_PREFIX):]
                if (owner not in recs and names.host_veth(owner) == ifname
                        and not netns.exists(owner)):
                    out.append((f"link {ifname}", f"veth of {owner}, which is gone", ("link", ifname)))
    return out


def _shared_actions() -> list[tuple[str, str, Any]]:
    """Bridges nsrun set up that no lease uses, and orphan NAT rules (after the rest)."""
    out: list[tuple[str, str, Any]] = []
    known = network.net_bridges()
    for bridge in known:
        if not lease.FileStore(bridge).any_taken():
            out.append((f"bridge {bridge}'s shared pieces", "no namespace uses it", ("shared", bridge)))
    from nsrun import firewall, netlink

    orphans = firewall.bridges_with_rules() - set(known)
    if orphans:
        with netlink.IPRoute() as ipr:
            # Rules for a bridge that exists may be another state directory's: keep them.
            orphans = {b for b in orphans if netlink.index(ipr, b) is None}
    for bridge in sorted(orphans):
        out.append((f"firewall rules for {bridge}", "their bridge is gone", ("rules", bridge)))
    return out


def apply(action: Any) -> None:
    kind = action[0]
    if kind == "teardown":
        _reclaim(action[1], blocking=True)
    elif kind == "lease":
        _, bridge, addr, owner = action
        store = lease.FileStore(bridge)
        with store.lock():
            store.release(addr, owner)
    elif kind == "tmp":
        state.remove(Path(action[1]))
    elif kind == "dns":
        dns.remove(action[1])
    elif kind == "link":
        network.delete_link(action[1])
    elif kind == "shared":
        network.release(action[1], "")
    elif kind == "rules":
        from nsrun import firewall

        firewall.remove(action[1])


def main(dry_run: bool) -> int:
    verb = "would remove" if dry_run else "removing"
    listed = 0
    # Shared pieces (bridges, rules) are judged after the rest is gone.
    for batch in (plan, _shared_actions):
        for what, why, handle in batch():
            print(f"{verb} {what} ({why})")
            listed += 1
            if not dry_run:
                apply(handle)
    if not listed:
        print("nothing to reclaim")
    return 0


def quick() -> None:
    """The cheap part of gc, run at the start of each run: ephemeral namespaces whose
    nsrun process died. Only records are read; nothing is imported."""
    try:
        files = os.listdir(state.ns_dir())
    except FileNotFoundError:
        return
    for fn in files:
        if not (fn.endswith(".json") and names.is_ephemeral(fn[:-5])):
            continue
        rec = state.read_json(state.ns_dir() / fn)
        if rec is None or rec.get("persistent") or rec.get("owner_pid") is None or state.owner_alive(rec):
            continue
        try:
            _reclaim(rec["name"], blocking=False)
        except BlockingIOError:  # someone is at it already
            continue


def _reclaim(name: str, blocking: bool) -> None:
    """Tear down whatever is left of NAME's record, under NAME's lock."""
    with state.Lock(state.ns_dir() / f"{name}.lock", blocking=blocking) as lock:
        rec = network.read_record(name)
        if rec is not None:
            network.teardown(name, rec)
        lock.discard()
