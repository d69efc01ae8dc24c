"""DNS inside a namespace: /etc/netns/NAME/resolv.conf, bind-mounted over /etc/resolv.conf
by whoever enters the namespace (nsrun, `ip netns exec`), as iproute2 does.

The servers are the profile's, else the host's minus loopback stubs (unreachable from
inside), else systemd-resolved's upstreams. The file's first line says nsrun wrote it: gc's
orphans are such files of a namespace that has no record and is gone (one that exists may
be another state directory's).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from functools import partial

from nsrun import netns
from nsrun.engine.context import Action, Scan, Setup
from nsrun.engine.record import NsRecord

STEP = "dns"

ETC_NETNS = "/etc/netns"
STUB_FALLBACK = "/run/systemd/resolve/resolv.conf"


def _parse(path: str) -> tuple[list[str], list[str]]:
    servers: list[str] = []
    other: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                words = line.split()
                if not words or words[0].startswith(("#", ";")):
                    continue
                if words[0] == "nameserver" and len(words) > 1:
                    servers.append(words[1])
                elif words[0] in ("search", "domain", "options"):
                    other.append(" ".join(words))
    except OSError:
        pass
    return servers, other


def _reachable(server: str) -> bool:
    try:
        return not ipaddress.ip_address(server.split("%")[0]).is_loopback
    except ValueError:
        return False


def host_config() -> tuple[list[str], list[str]]:
    """The host's resolvers, minus loopback stubs (unreachable from inside a namespace);
    when only a stub is configured, systemd-resolved's list of real upstreams."""
    servers, other = _parse("/etc/resolv.conf")
    real = [s for s in servers if _reachable(s)]
    if not real:
        fallback, other2 = _parse(STUB_FALLBACK)
        real = [s for s in fallback if _reachable(s)]
        other = other or other2
    return real, other


def dir_for(name: str) -> str:
    return f"{ETC_NETNS}/{name}"


def write(name: str, servers: Iterable[str] | None, search: Iterable[str] = ()) -> bool:
    """Write NAME's resolv.conf (SERVERS and SEARCH domains, or the host's when SERVERS is
    None). False: nothing to write."""
    other: list[str] = []
    if servers is None:
        chosen, other = host_config()
    else:
        chosen = list(servers)
        domains = " ".join(search)
        other = [f"search {domains}"] if domains else []
    if not chosen:
        return False
    d = dir_for(name)
    os.makedirs(d, mode=0o755, exist_ok=True)
    body = f"# written by nsrun for namespace {name}\n"
    body += "".join(f"{line}\n" for line in other)
    body += "".join(f"nameserver {s}\n" for s in chosen)
    tmp = f"{d}/.resolv.conf.nsrun"
    with open(tmp, "w") as fh:
        fh.write(body)
    os.chmod(tmp, 0o644)
    os.replace(tmp, f"{d}/resolv.conf")
    return True


def create(s: Setup) -> None:
    s.update(dns=True)  # before the file: a crash while it is written leaves a record of it
    if not write(s.name, s.prof.dns):
        s.update(dns=False)


def remove(rec: NsRecord) -> None:
    if rec.dns:
        remove_files(rec.name)


def remove_files(name: str) -> None:
    """Remove what write() made; the directories only when left empty. Idempotent."""
    d = dir_for(name)
    for fn in ("resolv.conf", ".resolv.conf.nsrun"):
        try:
            os.unlink(f"{d}/{fn}")
        except FileNotFoundError:
            pass
    for path in (d, ETC_NETNS):
        try:
            os.rmdir(path)
        except OSError:
            break


def orphans(scan: Scan) -> list[Action]:
    try:
        entries = sorted(os.listdir(ETC_NETNS))
    except OSError:
        return []
    return [Action(f"{ETC_NETNS}/{ent}/resolv.conf", "its namespace is gone", partial(_remove_orphan, ent))
            for ent in entries if ent not in scan.records and _left(ent)]


def _left(name: str) -> bool:
    """A file nsrun wrote for a namespace that is gone."""
    if netns.exists(name):
        return False
    try:
        with open(f"{dir_for(name)}/resolv.conf") as fh:
            return fh.readline().startswith("# written by nsrun")
    except OSError:
        return False


def _remove_orphan(name: str) -> None:
    from nsrun.engine import record

    with record.ns_lock(name) as lock:
        if record.read(name) is None:
            if _left(name):
                remove_files(name)
            lock.discard()
