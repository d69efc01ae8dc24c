"""The engine: bring a namespace up per its profile, take it down again, and (in `gc`)
find what crashed runs left behind. Callable from any Python process, not only the CLI: it
never prints, never forks, and reads the environment only through nsrun.state (where the
state directory is) and nsrun.fault (the crash tests' injection). Two contained exceptions
to "never forks", each a child that ends within the call: where the kernel has no WireGuard,
the wireguard resource runs `wireguard-go` (nsrun.engine.wgdevice.start_userspace) until it
has daemonized itself; the legacy firewall backend writes and reads IPv6 rules in a fresh
interpreter of nsrun's own (python-iptables takes one address family per process:
nsrun.engine.firewall.iptables._v6).

    nsrun/engine/__init__.py     up, down, teardown (this module)
    nsrun/engine/record.py       the typed records: NsRecord (ns/NAME.json), NetRecord (net.json)
    nsrun/engine/context.py      what resources are handed: Setup, Scan, Action
    nsrun/engine/resources/      one module per kernel resource, and the list per mode
    nsrun/engine/firewall/       the firewall seam and its backends
    nsrun/engine/gc.py           gc: plan actions from the resources, act under the locks

`up()` lets the resources that read something the profile names check it (`prepare`: a
WireGuard file, the host's routes), writes the record (intent) before the first host
change, then walks the profile mode's resources in order, each recording its slice of the record before it acts; on any
failure what was made is taken down again. `teardown()` walks the same list in reverse,
after stopping what runs inside and unmounting the namespace (its links go with it), goes
on past a step that fails, and keeps the record when one did, so that gc retries.

Only what a step needs is imported: taking down a namespace whose bridge other namespaces
still use is plain file and mount work (no pyroute2, no python-iptables).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from nsrun import fault, names, state
from nsrun.engine import record
from nsrun.engine.record import NsRecord
from nsrun.errors import NsrunError, UsageError
from nsrun.linux import netns

if TYPE_CHECKING:
    from nsrun.profile import Profile


class Busy(NsrunError):
    pass


class Adopt(NamedTuple):
    """A namespace nsrun wires but did not make: a CNI attachment's (nsrun.engine.attachment).
    NETNS: the runtime's namespace file; IFNAME: the interface to make in it."""

    netns: str
    ifname: str
    container: str
    network: str


class Attached(NsrunError):
    """The attachment is up in that namespace already (a second ADD without a DEL)."""


def mismatch(name: str, rec: NsRecord | None, wanted: Profile) -> UsageError | None:
    """The error for asking NAME, up per its record REC, to be of another profile (or to
    publish a port it does not)."""
    if rec is None:
        return None
    if rec.profile_source != wanted.source:
        return UsageError(f"namespace {name} is up with profile {rec.profile}, not {wanted.name}; "
                          f"`nsrun down {name}` first")
    return publish_mismatch(name, rec, [p.text() for p in wanted.publish])


def publish_mismatch(name: str, rec: NsRecord | None, wanted: list[str]) -> UsageError | None:
    """The error for asking NAME, up per its record REC (None: not nsrun's), to publish the
    ports WANTED (canonical, nsrun.ports) when it does not publish each of them already:
    ports are published when a namespace is made."""
    have = rec.publish if rec is not None else ()
    missing = [p for p in wanted if p not in have]
    if not missing:
        return None
    now = f"publishing {', '.join(have)}" if have else "publishing no port"
    return UsageError(f"namespace {name} is up already, {now}: ports are published when a namespace is "
                      f"made (not {', '.join(missing)}); `nsrun down {name}` first")


def describe_uid(uid: int) -> str:
    """`user NAME (uid N)`, or `uid N` when the user database has no name for it."""
    import pwd

    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, OverflowError):
        return f"uid {uid}"


def owner_uid(rec: NsRecord) -> int:
    """Whose REC's namespace is: the caller without root it was made for, else root's."""
    return rec.owner_uid if rec.owner_uid is not None else 0


def not_theirs(name: str, rec: NsRecord | None, for_uid: int | None) -> UsageError | None:
    """The refusal for FOR_UID (root: 0) to bring NAME up or run a program in it when its
    record REC says another uid owns it (None: not checked; no record: not nsrun's, as
    `ip netns add` makes them). Root's programs must never start in a namespace a user
    controls (the user could read what they listen on, or take them down): `exec` still
    enters it, as `ip netns exec` would."""
    if for_uid is None or rec is None or owner_uid(rec) == for_uid:
        return None
    return UsageError(f"namespace {name} belongs to {describe_uid(owner_uid(rec))}, not to "
                      f"{'root' if for_uid == 0 else describe_uid(for_uid)}: refused (`nsrun exec {name} -- CMD` "
                      f"enters it; its owner's `nsrun down {name}` removes it)")


def profile_for(name: str | None, spec: str | None, load: Callable[[str | None], Profile],
                for_uid: int | None = 0, publish: tuple[str, ...] | list[str] = ()) -> Profile | None:
    """The profile to make NAME with when it is missing (or ephemeral: NAME None), loaded
    by LOAD(SPEC), publishing the ports PUBLISH (-P, as given) too; None when NAME exists,
    after checking that it is FOR_UID's (not_theirs), that SPEC, if given, is the profile
    it is up with, and that it publishes PUBLISH already. (LOAD is the caller's: the
    engine reads no profile path.)"""
    from nsrun import profile

    if name is None or not netns.exists(name):
        return profile.with_publish(load(spec), publish)
    rec = record.read(name)
    error = not_theirs(name, rec, for_uid)
    if error is None and spec is not None:
        error = mismatch(name, rec, load(spec))
    if error is None and publish:
        from nsrun import ports

        error = publish_mismatch(name, rec, [ports.parse(p).text() for p in publish])
    if error:
        raise error
    return None


EPHEMERAL_DRAWS = 16
MADE_FOR = -1  # up's FOR_UID by default: the uid NAME would be made for (no uid is negative)


def claim_ephemeral() -> tuple[str, state.Lock]:
    """A name for an ephemeral namespace that is no one else's, and its lock, held: under
    it, NAME has no record and no namespace. Hand the lock to `up` (LOCK=), which releases
    it; a claim not used is released with `abandon()` (its lock file goes). `up(None, ...)`
    claims for its caller.

    Ephemeral names are drawn at random (names.ephemeral_name: 32 bits), so two runs may
    draw one name; this claim, not the odds, is what keeps them apart: the second draws
    again. (A run that took a live namespace of its name for its own would share it, and
    take it down under the other run at its end.)"""
    for _ in range(EPHEMERAL_DRAWS):
        name = names.ephemeral_name()
        lock = record.ns_lock(name, blocking=False)
        try:
            lock.__enter__()
        except BlockingIOError:
            continue  # being brought up or down, by someone else
        try:
            taken = os.path.lexists(state.record_path(name))  # any record, even one unreadable
            if not taken and not netns.exists(name):
                return name, lock
        except BaseException:
            lock.__exit__()
            raise
        if not taken:
            lock.discard()  # a namespace not nsrun's: no lock file of ours stays beside it
        lock.__exit__()  # (a record: a crashed run's, gc's to reclaim, its lock file with it)
    raise NsrunError(f"no free ephemeral namespace name in {EPHEMERAL_DRAWS} draws")


def up(name: str | None, prof: Profile, *, persistent: bool,
       owner: dict[str, Any] | None = None, firewall: str | None = None,
       notices: list[str] | None = None, bus: str | None = None,
       lock: state.Lock | None = None, for_uid: int | None = MADE_FOR,
       adopt: Adopt | None = None) -> tuple[NsRecord, bool]:
    """Bring NAME up per PROF: (its record, whether it was up already). The one way every
    caller (a run, `up`, the service, its policy path and its pool) brings a namespace up.

    Idempotent for a live NAME of PROF. NAME None: an ephemeral namespace under a name
    claimed for it (claim_ephemeral; the record's `.name`). OWNER (state.me()) marks an
    ephemeral run's supervisor; its `owner_uid`, a namespace made for a caller without root.
    FIREWALL: the backend the caller asks for (a profile's `firewall` wins). BUS: the system
    bus's address, where firewalld is asked to let a nat bridge through (None: not asked).
    NOTICES, when given, gets what this setup opened in the host's own firewall (once per
    bridge) and what it left as found (a resolv.conf that is not nsrun's), one line each,
    for the caller to say. LOCK: NAME's lock, held already (a claim); up releases it.
    FOR_UID: who asks (root: 0; by default the uid NAME would be made for, OWNER's
    `owner_uid`, else root); a NAME of another uid's is refused (not_theirs), unchanged;
    None: not checked (the service's policy path has decided).
    ADOPT: wire the runtime's namespace ADOPT.netns instead of making /run/netns/NAME (a CNI
    attachment: persistent, never idempotent, see nsrun.engine.attachment)."""
    if for_uid == MADE_FOR:
        for_uid = (owner or {}).get("owner_uid") or 0
    if name is None:  # ephemeral: a name claimed for it (claim_ephemeral), its lock held
        if persistent or lock is not None:
            raise ValueError("an ephemeral namespace is neither persistent nor locked beforehand")
        name, lock = claim_ephemeral()
        try:
            return up(name, prof, persistent=False, owner=owner, firewall=firewall, notices=notices, bus=bus,
                      lock=lock, for_uid=for_uid)
        finally:
            lock.abandon()  # when up did not take it
    from nsrun.engine import resources
    from nsrun.engine.context import Setup

    names.check_name(name)
    if lock is None:
        lock = record.ns_lock(name)
    elif lock.path != record.lock_path(name):
        raise ValueError(f"{lock.path} is not the lock of {name}")
    with lock:
        try:
            found = _before_record(name, prof, for_uid, adopt)
        except BaseException:
            _discard_unrecorded(name, lock)
            raise
        if found is not None:
            return found, True
        owner = owner or {}
        rec = NsRecord(
            name=name, profile=prof.name, profile_source=prof.source, mode=prof.mode,
            bridge=prof.bridge, veth=names.host_veth(name) if prof.wired else None,
            persistent=persistent, created=state.now(), state="creating", address=None,
            prefixlen=prof.subnet.prefixlen if prof.subnet else None,
            gateway=str(prof.gateway) if prof.gateway else None, dns=False,
            owner_pid=owner.get("owner_pid"), owner_start=owner.get("owner_start"),
            host_resolver=prof.host_resolver, owner_uid=owner.get("owner_uid"),
        )
        if adopt is not None:
            rec = rec._replace(persistent=True, netns=adopt.netns, netns_id=netns.ident(adopt.netns),
                               ifname=adopt.ifname, container=adopt.container, network=adopt.network)
        steps = resources.for_mode(prof.mode)
        s = Setup(rec, prof, firewall, bus)
        try:
            for res in steps:  # checks that read files or the host: a refusal changes nothing
                if (prepare := getattr(res, "prepare", None)) is not None:
                    prepare(s)
        except BaseException:
            s.close()
            _discard_unrecorded(name, lock)
            raise
        record.save(s.rec)  # with what the prepares recorded (the ports published)
        fault.checkpoint("record")
        s.inside = [functools.partial(f, s) for r in steps if (f := getattr(r, "inside", None))]
        try:
            try:
                for res in steps:
                    res.create(s)
                    fault.checkpoint(res.STEP)
            finally:
                s.close()
            s.update(state="up")
            if notices is not None:
                notices.extend(s.notices)
            fault.checkpoint("ready")
        except BaseException:
            try:
                teardown(s.rec)
                lock.discard()  # nothing of NAME is left: nor its lock file
            except NsrunError:
                pass  # the record stays for gc; the first failure is the one to report
            raise
        return s.rec, False


def _adoptable(name: str, rec: NsRecord | None, adopt: Adopt | None) -> None:
    """Refuse to bring NAME up when its record REC is a CNI attachment's and ADOPT is not
    that attachment (None: a namespace of nsrun's own), or when ADOPT is up in its namespace
    already. (REC of a namespace that is gone, or of a crashed ADD, is `up`'s to clear.)"""
    if rec is None or adopt is None and not rec.adopted:
        return
    if adopt is None:
        raise UsageError(f"{name} is the CNI attachment of container {rec.container} ({rec.ifname}); "
                         "its runtime removes it, or `nsrun down` does")
    if not rec.adopted or (rec.container, rec.ifname) != (adopt.container, adopt.ifname):
        raise UsageError(f"{name} is recorded for {'another attachment' if rec.adopted else 'a namespace of nsrun'}; "
                         f"container {adopt.container} ({adopt.ifname}) cannot be attached under it")
    if rec.state == "up" and record.ns_alive(rec):
        raise Attached(f"container {adopt.container} has {adopt.ifname} attached already "
                       f"(in {rec.netns}); DEL it first")


def _before_record(name: str, prof: Profile, for_uid: int | None, adopt: Adopt | None = None) -> NsRecord | None:
    """What `up` decides under NAME's lock before it writes a record: NAME's record when it
    is up already (of PROF, and FOR_UID's), else None once a crashed earlier attempt's
    pieces are gone; a refusal raised."""
    rec = record.read(name)
    refusal = not_theirs(name, rec, for_uid)
    if refusal is not None:
        raise refusal
    _adoptable(name, rec, adopt)  # a CNI attachment is adopted only as one, and only once
    if netns.exists(name):
        if rec is None:
            raise UsageError(f"namespace {name} exists and was not made by nsrun (use `nsrun exec {name}`)")
        if rec.state == "up":
            error = mismatch(name, rec, prof)
            if error:
                raise error
            return rec
    if rec is not None:  # a crashed earlier attempt: clear what it left
        teardown(rec)
    return None


def _discard_unrecorded(name: str, lock: state.Lock) -> None:
    """A refusal before NAME's record was written: no file of NAME's stays, its lock file
    included (a caller allowed a broken profile would otherwise fill the state directory, a
    lock file a try). A record there (another's, or one a failed teardown kept) keeps it."""
    if not os.path.lexists(state.record_path(name)):  # any record, even one unreadable
        lock.discard()


def down(name: str, *, grace: float = 5.0, refuse_busy: bool = False) -> bool:
    """Take NAME down with all nsrun made for it. False when there was nothing to do."""
    names.check_name(name)
    if record.read(name) is None and not netns.exists(name) and not os.path.lexists(record.lock_path(name)):
        return False  # nothing to take down (and no lock file to write, on a full disk too)
    with record.ns_lock(name) as lock:
        rec = record.read(name)
        if rec is None:
            if netns.exists(name):
                raise UsageError(f"namespace {name} was not made by nsrun; `ip netns del {name}` removes it")
            lock.discard()
            return False
        if refuse_busy:
            pids = netns.pids_in(name)
            if pids:
                raise Busy(f"namespace {name} still holds processes {', '.join(map(str, pids[:8]))}")
        teardown(rec, grace=grace)
        lock.discard()
        return True


def teardown(rec: NsRecord, grace: float = 5.0) -> None:
    """Remove whatever exists of REC's pieces, in reverse order (NAME's lock held).

    Every step is tried; when one fails, the record stays (gc retries) and NsrunError says
    which failed."""
    from nsrun.engine import resources

    errors: list[str] = []
    # What runs inside stops first, and the namespace goes before the rest is undone:
    # its links go with it (see resources.veth). A CNI attachment's namespace is the
    # runtime's: nothing in it is stopped, only what nsrun made in it goes (its interface).
    if not rec.adopted:
        netns.stop_processes(rec.name, grace)
    fault.checkpoint("undo-processes")
    for res in resources.for_mode(rec.mode):
        first = getattr(res, "withdraw", None)  # what must go while the namespace is still there
        if first is not None:
            try:
                first(rec)
            except Exception:  # noqa: BLE001 - its remove() below does it again, and says why it fails
                pass
    try:
        if rec.adopted:
            from nsrun.engine.resources import namespace

            namespace.release(rec)
        else:
            netns.delete(rec.name)
    except OSError as exc:
        errors.append(f"netns: {exc}")
    for res in reversed(resources.for_mode(rec.mode)):
        try:
            res.remove(rec)
        except Exception as exc:
            errors.append(f"{res.STEP}: {exc}")
        fault.checkpoint(f"undo-{res.STEP}")
    if errors:
        raise NsrunError(f"taking {rec.name} down was incomplete ({'; '.join(errors)}); "
                         "`nsrun gc` tries again")
    record.remove(rec.name)
