"""The command layer between the CLI parsers (nsrun.cli's fast path, nsrun.app's typer)
and the engine: root checks, printing and exit codes live here, so that the engine and the
domain modules can be driven from any Python process without a word on stdout.

One function per command that prints; the run/exec/shell paths are nsrun.run's.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

_ENV = "env"  # firewall=_ENV: read NSRUN_FIREWALL (the service passes its caller's instead)


def up(name: str, profile_spec: str | None, *, firewall: str | None = _ENV,
       out: TextIO | None = None, err: TextIO | None = None, owner_uid: int | None = None) -> int:
    """OUT and ERR (default: this process's stdout and stderr) take what is printed: the
    service (nsrun.service) hands writers that send it to its client. OWNER_UID: the caller
    without root the service makes NAME for (its policy's "own" namespaces)."""
    from nsrun import engine
    from nsrun.process import privilege
    from nsrun import profile as profiles
    from nsrun.names import check_name

    out = out or sys.stdout
    err = err or sys.stderr
    privilege.require_root()
    check_name(name)
    prof = profiles.load(profile_spec)
    notices: list[str] = []
    rec, already = engine.up(name, prof, persistent=True,
                             owner={"owner_uid": owner_uid} if owner_uid is not None else None,
                             firewall=requested_firewall() if firewall == _ENV else firewall,
                             notices=notices, bus=system_bus())
    say_notices(notices, err)
    where = f" {rec.address}/{rec.prefixlen} via {rec.gateway}" if rec.address else ""
    if rec.wireguard:
        where = f" through WireGuard ({rec.wireguard})"
    if already:
        print(f"{name} is already up (profile {rec.profile}{',' + where if where else ''})", file=out)
    else:
        print(f"{name} is up: profile {rec.profile}{where}", file=out)
    from nsrun.process import hostresolver

    missing = hostresolver.no_resolver(rec)
    if missing:
        err.write(f"nsrun: warning: {missing}\n")
    return 0


def requested_firewall() -> str | None:
    """NSRUN_FIREWALL=nftables|iptables: the firewall backend asked for (the engine reads no
    environment; it is handed this). A profile's own `firewall` key wins over it."""
    import os

    from nsrun.errors import UsageError

    value = os.environ.get("NSRUN_FIREWALL") or None
    if value is not None and value not in ("nftables", "iptables"):
        raise UsageError(f"NSRUN_FIREWALL: {value!r} is not one of nftables, iptables")
    return value


def system_bus() -> str:
    """The system bus's address, where firewalld is asked to let a nat bridge through:
    DBUS_SYSTEM_BUS_ADDRESS, else the standard socket (read here: the engine reads no
    environment)."""
    import os

    from nsrun.engine.firewall.firewalld import DEFAULT_BUS

    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or DEFAULT_BUS


def say_notices(notices: list[str], err: TextIO | None = None) -> None:
    """What a setup opened in the host's firewall (the engine's notices), one line each."""
    for line in notices:
        (err or sys.stderr).write(line + "\n")


def doctor(as_json: bool) -> int:
    """Would each profile work on this host? Changes nothing; exit 0 only when all would."""
    from nsrun.commands import doctor as doctor_mod
    from nsrun.process import privilege

    privilege.require_root(state_dir=False)  # reading the firewall needs CAP_NET_ADMIN
    findings = doctor_mod.run(requested_firewall(), system_bus())
    problems = [f for f in findings if f["level"] == "problem"]
    if as_json:
        print(json.dumps({"ok": not problems, "findings": findings}, indent=1))
    else:
        for f in findings:
            fix = f" (fix: {f['fix']})" if f["fix"] else ""
            print(f"{f['profile']}: {f['level']}: {f['what']}{fix}")
        if problems:
            print(f"{len(problems)} problem(s): the profiles named above would not work")
        else:
            print("all clear: every profile would work on this host")
    return 1 if problems else 0


def down(name: str, grace: float, refuse_busy: bool, out: TextIO | None = None) -> int:
    from nsrun import engine
    from nsrun.process import privilege

    privilege.require_root()
    if engine.down(name, grace=grace, refuse_busy=refuse_busy):
        print(f"{name} is down", file=out or sys.stdout)
    return 0


def gc(dry_run: bool, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print each action before it is applied, and after it when its re-check under its
    lock found it no longer left over (so it was kept); a failing one is reported and gc
    goes on (exit 1 at the end)."""
    from nsrun.process import privilege
    from nsrun.engine import gc as engine_gc
    from nsrun.engine.context import Action

    out = out or sys.stdout
    err = err or sys.stderr
    privilege.require_root()
    verb = "would remove" if dry_run else "removing"
    failed: list[str] = []

    def on_action(action: Action) -> None:
        print(f"{verb} {action.what} ({action.why})", file=out, flush=True)

    def on_kept(action: Action) -> None:
        print(f"kept {action.what} after all (re-checked: no longer left over)", file=out, flush=True)

    def on_error(action: Action, exc: Exception) -> None:
        failed.append(action.what)
        err.write(f"nsrun: removing {action.what} failed: {exc}\n")

    if not engine_gc.run(dry_run, on_action, on_error, on_kept):
        print("nothing to reclaim", file=out)
    return 1 if failed else 0


def ls(as_json: bool, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from nsrun.commands import listing
    from nsrun.linux import netns

    out = out or sys.stdout
    rows = listing.collect()
    if rows and rows[0]["managed"] is None or not rows and not listing.readable():
        (err or sys.stderr).write("nsrun: note: not root: nsrun's records are not readable, so only the names in "
                         f"{netns.NETNS_DIR} are shown, without profiles or other users' processes "
                         "(sudo nsrun ls shows all)\n")
    if as_json:
        print(json.dumps(rows, indent=1), file=out)
    elif not rows:
        print("no namespaces", file=out)
    else:
        print(listing.table(rows), file=out)
    return 0


def profiles_list() -> int:
    from nsrun import profile as profiles
    from nsrun.errors import UsageError

    rows = []
    for name, path in profiles.available():
        try:
            prof = profiles.parse(profiles.read_checked(path), str(path), name)
            rows.append((name, prof.mode, prof.description, str(path)))
        except UsageError as exc:
            rows.append((name, "INVALID", str(exc), str(path)))
    if not rows:
        print(f"no profiles found (searched {', '.join(str(d) for d in profiles.search_path())})")
        return 0
    w = max(len(r[0]) for r in rows)
    for name, mode, desc, where in rows:
        print(f"{name:<{w}}  {mode:<8}  {desc}  [{where}]")
    return 0


def profiles_show(spec: str) -> int:
    from nsrun import profile as profiles

    prof = profiles.load(spec)
    for key, value in prof.resolved().items():
        if value is None:
            continue
        if isinstance(value, list):
            shown = f"[{', '.join(repr(v) for v in value)}]"
        elif isinstance(value, bool):
            shown = "true" if value else "false"  # as TOML has it
        else:
            shown = repr(value) if isinstance(value, str) else str(value)
        print(f"{key} = {shown}")
    if prof.mode == "wireguard" and prof.wireguard:
        _print_wireguard(prof.wireguard)
    return 0


def _print_wireguard(path: str) -> None:
    """The wg file's checked contents, without keys, as comments; endpoints as written (not
    looked up: showing a profile sends nothing anywhere)."""
    from nsrun import wgconf
    from nsrun.errors import UsageError

    try:
        conf = wgconf.parse(wgconf.read_checked(path), path, lambda host, port: (host, port))
    except UsageError as exc:
        print(f"# wireguard file INVALID: {exc}")
        return
    print(f"# wireguard address = {', '.join(str(a) for a in conf.addresses)}")
    if conf.dns:
        print(f"# wireguard dns = {', '.join(conf.dns + conf.search)}")
    if conf.mtu:
        print(f"# wireguard mtu = {conf.mtu}")
    for peer in conf.peers:
        allowed = ", ".join(str(n) for n in peer.allowed_ips) or "none"
        print(f"# wireguard peer: endpoint {peer.endpoint_text or 'none'}, allowed {allowed}"
              f"{', keepalive ' + str(peer.keepalive) if peer.keepalive else ''}"
              f"{', preshared key' if peer.preshared_key else ''}")

