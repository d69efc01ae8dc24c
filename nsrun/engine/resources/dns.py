"""DNS inside a namespace: /etc/netns/NAME/resolv.conf, bind-mounted over /etc/resolv.conf
by whoever enters the namespace (nsrun, `ip netns exec`), as iproute2 does.

The servers are the profile's, else the host's minus loopback stubs (unreachable from
inside), else systemd-resolved's upstreams, else (nat mode, the host names only a loopback
stub such as 127.0.0.53) the bridge's own address, which nsrun forwards to the stub: see
`stub()` and nsrun.engine.resources.masquerade. The host's `search`/`domain` and `options`
lines are kept, so short names resolve inside as outside, unless the profile sets `search`
(an empty list: no search line). Bridge mode gets no forwarding (the namespace's gateway is
a LAN router, not this host): there the profile must name `dns`, and entering such a
namespace says so (nsrun.process.hostresolver).

Only nsrun's own files are touched. The file's first line is nsrun's mark, naming the
namespace and the state directory that wrote it (state.ident()): a resolv.conf without
that mark is someone else's (an admin's file or link for that namespace, another state
directory's namespace of the same name) and is left alone by `up`, `down` and gc alike.
`up` then says so and writes nothing: the namespace gets the file that is there, as
`ip netns exec` would give it (a directory or other non-file there is refused: it cannot be
bound over /etc/resolv.conf). gc's orphans are files with this state directory's mark of a
namespace that has no record and is gone.

Writes never follow a link nsrun did not make: /etc/netns and /etc/netns/NAME are opened
with O_NOFOLLOW and must be root's and writable by no one else; the file is written to a
temporary made afresh (O_EXCL|O_NOFOLLOW) under that directory's fd and renamed over
resolv.conf, so a link planted at either name is replaced, never written through.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING

from nsrun import fault, state
from nsrun.engine.context import Action, Scan, Setup
from nsrun.engine.record import NsRecord
from nsrun.errors import NsrunError, UsageError
from nsrun.linux import netns

if TYPE_CHECKING:
    from nsrun.profile import Profile

STEP = "dns"

ETC_NETNS = "/etc/netns"
STUB_FALLBACK = "/run/systemd/resolve/resolv.conf"
TMP = ".resolv.conf.nsrun"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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


def stub() -> str | None:
    """The host's loopback stub resolver (an IPv4 127.x nameserver) when the host has no
    resolver a namespace could reach: what nat mode forwards to. None otherwise."""
    real, _ = host_config()
    if real:
        return None
    servers, _ = _parse("/etc/resolv.conf")
    for server in servers:
        try:
            addr = ipaddress.ip_address(server)
        except ValueError:
            continue
        if addr.version == 4 and addr.is_loopback:
            return str(addr)
    return None


def content(servers: Iterable[str] | None, search: Iterable[str] | None = None,
            forwarder: str | None = None, host_lines: bool = True) -> tuple[list[str], list[str]]:
    """(nameservers, other lines) for a namespace: SERVERS, else the host's, else FORWARDER
    (the bridge address nsrun forwards to the host's stub); with HOST_LINES, the host's
    search/domain and options lines, its search/domain replaced by SEARCH when given."""
    real, other = host_config()
    if servers is not None:
        chosen = list(servers)
    else:
        chosen = real or ([forwarder] if forwarder else [])
    if not host_lines:
        other = []
    if search is not None:
        domains = list(search)
        other = [line for line in other if line.split()[0] not in ("search", "domain")]
        if domains:
            other.insert(0, "search " + " ".join(domains))
    return chosen, other


def dir_for(name: str) -> str:
    return f"{ETC_NETNS}/{name}"


def mark(name: str) -> str:
    """The first line of the files nsrun writes: the namespace and the state directory."""
    return f"# written by nsrun for namespace {name} (state {state.ident()})"


def _legacy_mark(name: str) -> str:
    return f"# written by nsrun for namespace {name}"  # before the state directory was named


def _open_checked(parent: int | None, name: str, create: bool) -> int:
    """A directory fd for NAME (under PARENT's fd, or absolute), never through a link: root's,
    writable by no one else, else NsrunError. /etc/netns itself may be writable by all with
    the sticky bit (as /tmp: no one but root can then rename or remove root's entries)."""
    shown = name if parent is None else f"{ETC_NETNS}/{name}"
    if create:
        try:
            os.mkdir(name, 0o755, dir_fd=parent)
        except FileExistsError:
            pass
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise NsrunError(f"{shown} is not a directory nsrun can use ({exc.strerror}); "
                         "nsrun writes DNS files only into real directories") from None
    st = os.fstat(fd)
    sticky = parent is None and st.st_mode & stat.S_ISVTX
    if st.st_uid != 0 or (st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky):
        os.close(fd)
        raise NsrunError(f"{shown} must be owned by root and writable by no one else "
                         f"(it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})")
    return fd


@contextlib.contextmanager
def _dirs(name: str, create: bool) -> Iterator[tuple[int, int]]:
    """(/etc/netns, /etc/netns/NAME) as checked directory fds; FileNotFoundError when one is
    missing and not CREATE."""
    top = _open_checked(None, ETC_NETNS, create)
    try:
        d = _open_checked(top, name, create)
        try:
            yield top, d
        finally:
            os.close(d)
    finally:
        os.close(top)


def _whose(d: int, name: str, legacy_ok: bool = False) -> str:
    """Whose resolv.conf is in D: "none", "mine" (this state directory's mark), "theirs"
    (any other file or link), or "unusable" (a directory or another non-file)."""
    try:
        st = os.stat("resolv.conf", dir_fd=d, follow_symlinks=False)
    except FileNotFoundError:
        return "none"
    if stat.S_ISLNK(st.st_mode):
        return "theirs"
    if not stat.S_ISREG(st.st_mode):
        return "unusable"
    try:
        fd = os.open("resolv.conf", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=d)
    except OSError:
        return "theirs"
    try:
        first = os.read(fd, 512).split(b"\n", 1)[0].decode(errors="replace")
    finally:
        os.close(fd)
    if first == mark(name) or (legacy_ok and first == _legacy_mark(name)):
        return "mine"
    return "theirs"


def write(name: str, servers: Iterable[str] | None, search: Iterable[str] | None = None,
          forwarder: str | None = None, host_lines: bool | None = None,
          note: Callable[[str], None] | None = None) -> bool:
    """Write NAME's resolv.conf (see content(); HOST_LINES defaults to: only with the
    host's servers, as before for callers that name their own). False: nothing written (no
    servers, or a resolv.conf that is not nsrun's is there: NOTE says so)."""
    if host_lines is None:
        host_lines = servers is None
    chosen, other = content(servers, search, forwarder, host_lines)
    if not chosen:
        return False
    path = f"{dir_for(name)}/resolv.conf"
    with _dirs(name, create=True) as (_, d):
        whose = _whose(d, name)
        if whose == "unusable":
            raise UsageError(f"{path} exists and is not a file: it cannot be bound over /etc/resolv.conf "
                             f"inside {name}; remove it, or make it the resolv.conf {name} should use")
        if whose == "theirs":
            if note:
                note(f"{path} was not written by nsrun: left as it is, and {name} uses it")
            return False
        body = f"{mark(name)}\n"
        body += "".join(f"{line}\n" for line in other)
        body += "".join(f"nameserver {s}\n" for s in chosen)
        _unlink(d, TMP)  # a crash's, or a link someone planted: never written through
        fd = os.open(TMP, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=d)
        try:
            os.fchmod(fd, 0o644)
            state.write_all(fd, body.encode())
        finally:
            os.close(fd)
        os.replace(TMP, "resolv.conf", src_dir_fd=d, dst_dir_fd=d)
    return True


def _unlink(d: int, fn: str) -> None:
    try:
        os.unlink(fn, dir_fd=d)
    except FileNotFoundError:
        pass


def _forwarder(prof: Profile) -> str | None:
    """nat mode behind a loopback stub: the bridge's address, which the firewall step
    forwards to the stub; None otherwise."""
    from nsrun.engine import record

    if prof.mode == "nat" and prof.dns is None and prof.bridge:
        net = record.read_net(prof.bridge)
        if net is not None and net.dns_forward:  # the firewall step forwards it to the stub
            return net.gateway or (str(prof.gateway) if prof.gateway else None)
    return None


def create(s: Setup) -> None:
    prof = s.prof
    if s.rec.adopted:
        return  # a CNI attachment: the runtime writes the container's resolv.conf (from settings())
    s.update(dns=True)  # before the file: a crash while it is written leaves a record of it
    if not write(s.name, prof.dns, prof.search, _forwarder(prof), host_lines=True, note=s.note):
        s.update(dns=False)


def settings(prof: Profile) -> dict[str, list[str]]:
    """What the namespace's resolv.conf would say, for a CNI Result's `dns` (the runtime
    writes the container's): nameservers, search domains, options; empty when none."""
    chosen, other = content(prof.dns, prof.search, _forwarder(prof), host_lines=True)
    out: dict[str, list[str]] = {}
    if chosen:
        out["nameservers"] = chosen
    for line in other:
        key, _, rest = line.partition(" ")
        if key in ("search", "domain"):
            out["search"] = rest.split()
        elif key == "options":
            out.setdefault("options", []).extend(rest.split())
    return out


def remove(rec: NsRecord) -> None:
    if rec.dns:
        remove_files(rec.name, legacy_ok=True)


def remove_files(name: str, legacy_ok: bool = False) -> None:
    """Remove what write() made (a resolv.conf with nsrun's mark: LEGACY_OK, the mark of
    releases before the state directory was named too), the directories only when left
    empty. Idempotent; anything else is left alone."""
    try:
        with _dirs(name, create=False) as (top, d):
            _unlink(d, TMP)
            if _whose(d, name, legacy_ok) == "mine":
                _unlink(d, "resolv.conf")
            try:
                os.rmdir(name, dir_fd=top)
            except OSError:
                return
    except FileNotFoundError:
        return
    except NsrunError:
        return  # not a directory nsrun could have written into
    try:
        os.rmdir(ETC_NETNS)
    except OSError:
        pass


def orphans(scan: Scan) -> list[Action]:
    try:
        entries = sorted(os.listdir(ETC_NETNS))
    except OSError:
        return []
    return [Action(f"{ETC_NETNS}/{ent}/resolv.conf", "its namespace is gone", partial(_remove_orphan, ent))
            for ent in entries if ent not in scan.records and _left(ent)]


def _left(name: str) -> bool:
    """A file this state directory wrote for a namespace that is gone."""
    if netns.exists(name):
        return False
    try:
        with _dirs(name, create=False) as (_, d):
            return _whose(d, name) == "mine"
    except (OSError, NsrunError):
        return False


def _remove_orphan(name: str) -> bool:
    from nsrun.engine import record

    with record.ns_lock(name) as lock:
        if record.read(name) is not None or not _left(name):
            return False
        remove_files(name)
        fault.checkpoint("dns-orphan")  # the files are gone, the name's lock file not yet
        lock.discard()
        return True
