"""What a backend is handed for a namespace's published ports (nsrun.engine.resources.publish),
and the tag its rules carry (standard library only: the backends import it)."""

from __future__ import annotations

from typing import NamedTuple

from nsrun.ports import Spec

LOOPBACK = "127.0.0.0/8"


class Forward(NamedTuple):
    """One published port of one address family, as the backends write it: connections to
    HOST:HOST_PORT (HOST None: any address of the host's, of FAMILY) go to TO:PORT, from
    anywhere (prerouting) and from the host itself (output); those from SOURCES (the
    bridge's subnet: a sibling's hairpin; 127.0.0.0/8: the host's loopback) get the
    bridge's address as their source, so that the replies come back the way they went."""

    family: str  # "ip" | "ip6"
    host: str | None
    host_port: int
    proto: str  # "tcp" | "udp"
    to: str
    port: int
    sources: tuple[str, ...]


def publish_tag(bridge: str, name: str) -> str:
    """The comment on every rule made for namespace NAME's published ports (on BRIDGE):
    `nsrun:BRIDGE:publish:NAME`, four fields where a bridge's own rules have three
    (`nsrun:BRIDGE:PROFILE`), so the bridge's removal takes them too and gc finds them by NAME."""
    return f"nsrun:{bridge}:publish:{name}"


def publish_owner(comment: str) -> str | None:
    """NAME of a comment publish_tag made, else None."""
    parts = comment.split(":")
    return parts[3] if len(parts) == 4 and parts[0] == "nsrun" and parts[2] == "publish" else None


def forwards_for(subnet: str, specs: tuple[Spec, ...] | list[Spec], address: str,
                 subnet6: str | None = None, address6: str | None = None) -> list[Forward]:
    """The Forwards of a namespace at ADDRESS (and ADDRESS6, where it has IPv6: each family
    its own rules) on a bridge of SUBNET (SUBNET6) publishing SPECS: the bridge's subnet
    masqueraded (a sibling's hairpin) and, for a port reached at the host's loopback,
    127.0.0.0/8 (IPv4 only: IPv6 has no route_localnet, ::1 cannot be forwarded)."""
    out: list[Forward] = []
    for p in specs:
        host = None if p.every else p.host
        if p.family in (None, 4):
            sources = (subnet, LOOPBACK) if p.loopback else (subnet,)
            out.append(Forward("ip", host, p.host_port, p.proto, address, p.port, sources))
        if p.family in (None, 6) and address6 is not None and subnet6 is not None:
            out.append(Forward("ip6", host, p.host_port, p.proto, address6, p.port, (subnet6,)))
    return out
