"""`nsrun profiles` and `nsrun profiles show NAME`: the profiles found, validated."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nsrun.profile import Reader


def profiles() -> int:
    """Every profile on the path: name, mode, description, file (or why it is invalid)."""
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


def show(spec: str, reader: Reader | None = None) -> int:
    """Profile SPEC as it will be applied (defaults filled in); READER: as profile.load."""
    from nsrun import profile as profiles

    prof = profiles.load(spec, reader)
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
    if prof.mode in ("nat", "bridge") and prof.subnet6 is None:
        example = ("subnet6 = 'fd00:78::/64'" if prof.mode == "nat"
                   else "subnet6 = '2001:db8:1::/64' with gateway6 = '2001:db8:1::1'")
        print(f"# subnet6 unset: IPv6 is off inside (to have it: {example})")
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
