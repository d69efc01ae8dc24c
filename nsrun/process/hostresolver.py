"""The host's resolver endpoints, hidden from CMD: lookups inside a namespace go through the
namespace's resolv.conf, by the namespace's route, and nowhere else.

glibc asks nscd's socket (/var/run/nscd/socket, /run/nscd/socket) before any DNS, and
nss-resolve asks systemd-resolved over varlink (/run/systemd/resolve/io.systemd.Resolve).
Both are path sockets on the file system a namespace shares with the host: a program inside
reaching them has its lookups made by the host, through the host's route and resolvers (the
leak users of such tools report first). So, in CMD's private mount namespace (made by
nsrun.process.execution.private_mounts, never the host's), each of those that exists is covered by
a read-only bind of /dev/null: connecting to it fails (it is no socket), glibc marks nscd
absent and nss-resolve reports itself unavailable, and both fall back to plain DNS through
resolv.conf. The resolved stub files there (stub-resolv.conf, resolv.conf: what programs
that read them directly see, and often what /etc/resolv.conf links to) show the namespace's
own resolv.conf when it has one, else nothing. Only namespaces nsrun made and wired (a
record says so) are masked; a profile's `host_resolver = true` keeps the host's resolver
(for split DNS through resolved, for instance).

Left open: resolved's D-Bus API (org.freedesktop.resolve1 on the system bus, which cannot
be hidden without hiding the bus); programs that use it directly still reach the host.

Also says (one line on stderr) when a wired namespace has no resolver of its own: bridge
mode with a host whose resolv.conf names only loopback stubs needs `dns` in the profile.
Standard library only: this runs on the exec path, after setns, before the user switch.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # typing costs ~5 ms to import: the exec path goes without it

from nsrun.linux import kernel

if TYPE_CHECKING:
    from nsrun.engine.record import NsRecord

SOCKETS = ("/var/run/nscd/socket", "/run/nscd/socket", "/run/systemd/resolve/io.systemd.Resolve")
STUB_FILES = ("/run/systemd/resolve/stub-resolv.conf", "/run/systemd/resolve/resolv.conf")
MASK = "/dev/null"
WIRED = ("nat", "bridge")


def _warn(msg: str) -> None:
    os.write(2, f"nsrun: warning: {msg}\n".encode())


class Wiring:
    """What `hide` reads of a namespace's record, handed over instead (the service sends it
    with the namespace: the exec path then never imports the engine's record module, ~10 ms)."""

    __slots__ = ("name", "profile", "mode", "dns", "host_resolver")

    def __init__(self, name: str, profile: str | None, mode: str, dns: bool, host_resolver: bool) -> None:
        self.name, self.profile, self.mode, self.dns, self.host_resolver = name, profile, mode, dns, host_resolver

    @classmethod
    def of(cls, rec: NsRecord | None) -> dict[str, object] | None:
        """REC's wiring as the service sends it (nsrun.wire's `ready`), None without a record."""
        if rec is None:
            return None
        return {"mode": rec.mode, "dns": rec.dns, "host_resolver": rec.host_resolver}

    @classmethod
    def from_record(cls, rec: NsRecord) -> Wiring:
        """What REC says, as `hide` reads it (a record just written: not read again)."""
        return cls(rec.name, rec.profile, rec.mode, rec.dns, rec.host_resolver)

    @classmethod
    def parse(cls, name: str, profile: str | None, data: object) -> Wiring | None:
        if not isinstance(data, dict):
            return None
        mode, dns, keep = data.get("mode"), data.get("dns"), data.get("host_resolver")
        if not isinstance(mode, str) or not isinstance(dns, bool) or not isinstance(keep, bool):
            return None
        return cls(name, profile, mode, dns, keep)


def no_resolver(rec: NsRecord | Wiring) -> str | None:
    """What to say when REC, a wired namespace, got no resolv.conf: the host names no
    resolver reachable from inside (only a loopback stub, in bridge mode), none at all."""
    if rec.mode not in WIRED or rec.dns:
        return None
    return (f"{rec.name} has no resolver of its own: the host's resolv.conf names none reachable "
            f"from inside (only a loopback stub, or none); set `dns` in profile {rec.profile}")


def hide(name: str, rec: NsRecord | Wiring | None) -> None:
    """In CMD's private mount namespace, inside NAME: mask the host's resolver endpoints
    (unless NAME's profile keeps them), and say when NAME has no resolver of its own. REC:
    what NAME's record says (None: no record, nothing nsrun wired), as its caller read it
    (the supervisor wrote it, spawn read it before it forked, the service sent it)."""
    if rec is None or rec.mode not in WIRED:
        return
    missing = no_resolver(rec)
    if missing:
        _warn(missing)
    if rec.host_resolver:
        return
    own = f"/etc/netns/{name}/resolv.conf"
    try:
        has_own = stat.S_ISREG(os.lstat(own).st_mode)
    except OSError:
        has_own = False
    done: set[str] = set()
    for path, want, source in ([(p, stat.S_ISSOCK, MASK) for p in SOCKETS]
                               + [(p, stat.S_ISREG, own if has_own else MASK) for p in STUB_FILES]):
        real = os.path.realpath(path)
        try:
            st = os.lstat(real)
        except OSError:
            continue  # only where they exist
        if real in done or not want(st.st_mode):
            continue
        done.add(real)
        try:
            kernel.mount(source, real, None, kernel.MS_BIND)
            kernel.mount(None, real, None, kernel.MS_REMOUNT | kernel.MS_BIND | kernel.MS_RDONLY)
        except OSError as exc:
            _warn(f"cannot hide the host's resolver at {path}: {exc.strerror}")
