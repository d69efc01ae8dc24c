"""`nsrun up` and `nsrun down`: persistent namespaces, printed for a person (the engine
does the work; the service hands its own writers for OUT and ERR)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from nsrun.profile import Reader


def up(name: str, profile_spec: str | None, *, firewall: str | None = None, bus: str | None = None,
       reader: Reader | None = None, out: TextIO | None = None, err: TextIO | None = None,
       owner_uid: int | None = None, publish: tuple[str, ...] | list[str] = ()) -> int:
    """`nsrun up NAME [-p PROFILE]`. FIREWALL, BUS: as engine.up takes them; READER: whom a
    profile path is opened as (profile.load). OUT and ERR (default: this process's stdout
    and stderr) take what is printed: the service hands writers that send it to its
    client. OWNER_UID: the caller without root the service makes NAME for (its policy has
    decided whether an existing NAME is theirs to use); without it, the caller is root, and
    a NAME another uid owns is refused (engine.not_theirs). PUBLISH: -P's specs, as given."""
    from nsrun import engine
    from nsrun import profile as profiles
    from nsrun.names import check_name
    from nsrun.process import hostresolver, privilege

    out = out or sys.stdout
    err = err or sys.stderr
    privilege.require_root()
    check_name(name)
    prof = profiles.with_publish(profiles.load(profile_spec, reader), publish)
    notices: list[str] = []
    rec, already = engine.up(name, prof, persistent=True,
                             owner={"owner_uid": owner_uid} if owner_uid is not None else None,
                             firewall=firewall, notices=notices, bus=bus,
                             for_uid=None if owner_uid is not None else 0)
    for line in notices:
        err.write(line + "\n")
    where = f" {rec.address}/{rec.prefixlen} via {rec.gateway}" if rec.address else ""
    if rec.address6:
        where += f", {rec.address6}/{rec.prefixlen6} via {rec.gateway6}"
    if rec.publish:
        where += f", publishing {', '.join(rec.publish)}"
    if rec.wireguard:
        where = f" through WireGuard ({rec.wireguard})"
    if already:
        print(f"{name} is already up (profile {rec.profile}{',' + where if where else ''})", file=out)
    else:
        print(f"{name} is up: profile {rec.profile}{where}", file=out)
    missing = hostresolver.no_resolver(rec)
    if missing:
        err.write(f"nsrun: warning: {missing}\n")
    return 0


def down(name: str, grace: float, refuse_busy: bool, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """`nsrun down NAME`: 0 also when there is nothing to take down (a unit's ExecStop= of a
    namespace gone already must not fail), saying so on ERR (a typo must not pass unseen)."""
    from nsrun import engine
    from nsrun.process import privilege

    privilege.require_root()
    if engine.down(name, grace=grace, refuse_busy=refuse_busy):
        print(f"{name} is down", file=out or sys.stdout)
    else:
        (err or sys.stderr).write(f"nsrun: no namespace {name}\n")
    return 0
