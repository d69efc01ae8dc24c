"""The warm pool: namespaces wired before they are asked for, so a run is little more than
entering one.

`/etc/nsrun/service.toml` (`nsrun daemon --config`; root-owned and writable by no one
else, as profiles are) names how many to keep per profile:

    [pool]
    nat = 4

A member is an ordinary ephemeral namespace of that profile whose record names the
*service* as its owner: `nsrun ls` shows it, `nsrun down` removes it, and when the service
is gone (its pid and start time no longer match) gc and the next service take it down
like any run whose owner died. A run of a pooled profile takes a member instead of
setting one up: under the namespace's locks, the record's owner becomes the client (then
watched as any run, nsrun.service.runs), and a background thread makes a new member.
A member made from another profile file than the one the run's profile name now resolves
to is not handed out; it is replaced. (Edits inside a pooled profile's file are not seen:
restart the service after editing one.)
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from nsrun import state
from nsrun.errors import UsageError
from nsrun.service.runs import log

DEFAULT_CONFIG = "/etc/nsrun/service.toml"
MAX_POOL = 64


def read_config(path: str | None) -> dict[str, int]:
    """{profile: size} from the service's config file; {} when the default file is absent."""
    from nsrun import profile

    explicit = path is not None
    file = Path(path or DEFAULT_CONFIG)
    if not explicit and not file.exists():
        return {}
    text = profile.read_checked(file)
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{file}: {exc}") from None
    unknown = set(data) - {"pool"}
    if unknown:
        raise UsageError(f"{file}: unknown key {sorted(unknown)[0]!r} (known: pool)")
    pool = data.get("pool", {})
    if not isinstance(pool, dict):
        raise UsageError(f"{file}: pool: must be a table of profile = size")
    out: dict[str, int] = {}
    for name, size in pool.items():
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_POOL:
            raise UsageError(f"{file}: pool.{name}: must be a whole number from 0 to {MAX_POOL}")
        if profile.is_path_spec(name):
            raise UsageError(f"{file}: pool.{name}: a profile name, not a path")
        if profile.load(name).publish and size:  # one that cannot be used is refused now, not at each refill
            raise UsageError(f"{file}: pool.{name}: profile {name} publishes ports, which one namespace "
                             "holds at a time: it cannot be pooled")
        if size:
            out[name] = size
    return out


class Pool:
    def __init__(self, sizes: dict[str, int], firewall: str | None = None, bus: str | None = None) -> None:
        self.sizes = sizes
        self.firewall = firewall
        self.bus = bus
        self.members: dict[str, list[str]] = {p: [] for p in sizes}
        self.lock = threading.Condition()
        self.stopping = False
        self.owner = state.me()
        self.thread: threading.Thread | None = None
        if sizes:
            self.thread = threading.Thread(target=self._refill, name="nsrun-pool", daemon=True)
            self.thread.start()

    def take(self, spec: str | None, prof: Any, owner: dict[str, Any], name_lock: Any) -> Any:
        """A member of PROF's pool, made the run of OWNER: its record, or None (no pool for
        SPEC, or none ready)."""
        from nsrun.engine import record

        key = spec or "nat"
        if key not in self.sizes:
            return None
        while True:
            with self.lock:
                if not self.members[key]:
                    return None
                name = self.members[key].pop(0)
                # no refill yet: the handler asks for it once the client has its reply
                # (`refill`); making a member now would hold the GIL while it answers
            with name_lock(name), record.ns_lock(name) as lock:
                rec = record.read(name)
                if (rec is None or rec.state != "up" or rec.owner_pid != self.owner["owner_pid"]
                        or rec.owner_start != self.owner["owner_start"]):
                    continue  # taken down meanwhile (`nsrun down`)
                if rec.profile_source != prof.source:
                    if self._drop(name, rec):
                        lock.discard()
                    continue
                rec = rec._replace(owner_pid=owner["owner_pid"], owner_start=owner["owner_start"])
                record.save(rec)
                return rec

    def refill(self) -> None:
        """Make new members for those taken (in the background thread)."""
        with self.lock:
            self.lock.notify_all()

    def _drop(self, name: str, rec: Any) -> bool:
        from nsrun import engine

        try:
            engine.teardown(rec)
            return True
        except Exception as exc:
            log(f"pool: taking {name} down failed: {exc}")
            return False

    def _refill(self) -> None:
        from nsrun import engine
        from nsrun import profile as profiles

        while True:
            with self.lock:
                self.lock.wait_for(lambda: self.stopping or any(
                    len(self.members[p]) < n for p, n in self.sizes.items()))
                if self.stopping:
                    return
                wanted = [p for p, n in self.sizes.items() if len(self.members[p]) < n]
            for key in wanted:
                try:
                    prof = profiles.load(key)
                    name = engine.up(None, prof, persistent=False, owner=self.owner, firewall=self.firewall,
                                     bus=self.bus)[0].name
                except Exception as exc:
                    log(f"pool: making a namespace of profile {key} failed: {exc}; retrying in 5 s")
                    with self.lock:
                        self.lock.wait(5)
                    continue
                with self.lock:
                    stopping = self.stopping
                    if not stopping:
                        self.members[key].append(name)
                if stopping:
                    engine.down(name, grace=0)
                    return

    def ready(self) -> int:
        with self.lock:
            return sum(len(m) for m in self.members.values())

    def stop(self) -> None:
        """Take the members down (a stopped service's would be gc's otherwise)."""
        from nsrun import engine

        with self.lock:
            self.stopping = True
            self.lock.notify_all()
            left = [n for m in self.members.values() for n in m]
            for m in self.members.values():
                m.clear()
        for name in left:
            try:
                engine.down(name, grace=0)
            except Exception as exc:
                log(f"pool: taking {name} down failed: {exc}")
        if self.thread is not None:
            self.thread.join(60)  # a member being made is taken down by the thread itself
