"""Address leases: an allocator that knows ranges, and a store that knows disks.

After CNI's host-local IPAM: one file per leased address holding its owner's name,
reserved with O_EXCL under a per-bridge flock, so concurrent runs never share an address.
Allocation is round-robin from the last address handed out, so an address just released
is not handed out again at once (stale ARP entries on the LAN expire first).
"""

from __future__ import annotations

import bisect
import ipaddress
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from nsrun import state
from nsrun.errors import NsrunError


class Store(Protocol):
    """Where leases live: FileStore (the state directory), or a test's in-memory store."""

    def taken(self) -> dict[int, str]: ...
    def reserve(self, addr: int, owner: str) -> bool: ...
    def release(self, addr: int, owner: str) -> None: ...
    def last_reserved(self) -> int | None: ...
    def set_last_reserved(self, addr: int) -> None: ...


def candidates(pool: Sequence[int], last: int | None) -> Iterator[int]:
    """POOL (sorted) in order, starting just after LAST (or at the start) and wrapping around."""
    if not pool:
        return
    start = 0 if last is None else bisect.bisect_right(pool, last)
    yield from pool[start:]
    yield from pool[:start]


def allocate(store: Store, pool: Sequence[int], owner: str,
             usable: Callable[[int], bool] = lambda a: True) -> int:
    """Reserve the next free address of POOL for OWNER; the caller holds the store's lock.

    USABLE may veto an address (the ARP probe in bridge mode: something on the LAN has it).
    An address OWNER already holds is returned again (idempotent re-run after a crash).
    """
    taken = store.taken()
    for addr, who in taken.items():
        if who == owner and addr in pool:
            return addr
    for addr in candidates(pool, store.last_reserved()):
        if addr in taken:
            continue
        if not usable(addr):
            continue
        if store.reserve(addr, owner):
            store.set_last_reserved(addr)
            return addr
    raise NsrunError(
        f"no free address: all {len(pool)} addresses of the range are leased or answer on the LAN"
    )


class FileStore:
    """Leases of one bridge under NSRUN_STATE_DIR/net/BRIDGE/leases/ (VERSION 6: leases6/,
    the IPv6 leases, their own files under the same lock)."""

    def __init__(self, bridge: str, version: int = 4) -> None:
        self.base = state.net_dir(bridge)
        self.suffix = "6" if version == 6 else ""
        self.dir = self.base / f"leases{self.suffix}"
        self.ip = ipaddress.IPv6Address if version == 6 else ipaddress.IPv4Address

    def lock(self) -> state.Lock:
        return state.Lock(self.base / "lock")

    def _path(self, addr: int) -> Path:
        return self.dir / str(self.ip(addr))

    def taken(self) -> dict[int, str]:
        out: dict[int, str] = {}
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return out
        for fn in names:
            try:
                addr = int(self.ip(fn))
            except ValueError:
                continue
            try:
                out[addr] = (self.dir / fn).read_text().strip()
            except FileNotFoundError:
                continue
        return out

    def any_taken(self) -> bool:
        """Whether any address is leased (names only: no lease file is read)."""
        try:
            with os.scandir(self.dir) as entries:
                return any(not e.name.startswith(".") for e in entries)
        except FileNotFoundError:
            return False

    def reserve(self, addr: int, owner: str) -> bool:
        """Claim ADDR for OWNER. The lease appears whole or not at all: the owner's name is
        written to a private temporary first and then linked into place (link fails when the
        address is taken, as O_EXCL would), so a full disk cannot leave a lease with no owner."""
        state.ensure_dir(self.dir)
        # Beside leases/, named as state.write_text names its temporaries, so that gc
        # reclaims one whose writer died (the bridge lock makes the pid unique here).
        tmp = state.temporary(self.base / f"lease{self.suffix}")
        state.remove(tmp)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                state.write_all(fd, owner.encode())
            finally:
                os.close(fd)
            os.link(tmp, self._path(addr))
        except OSError as exc:
            if isinstance(exc, FileExistsError):
                return False
            raise state.write_error(self._path(addr), exc) from None
        except FileExistsError:
            return False
        finally:
            state.remove(tmp)
        return True

    def release(self, addr: int, owner: str) -> None:
        path = self._path(addr)
        try:
            if path.read_text().strip() == owner:
                path.unlink()
        except FileNotFoundError:
            pass

    def release_owner(self, owner: str) -> list[int]:
        gone = [a for a, who in self.taken().items() if who == owner]
        for a in gone:
            self.release(a, owner)
        return gone

    def last_reserved(self) -> int | None:
        try:
            return int(self.ip((self.base / f"last_reserved{self.suffix}").read_text().strip()))
        except (FileNotFoundError, ValueError):
            return None

    def set_last_reserved(self, addr: int) -> None:
        state.write_text(self.base / f"last_reserved{self.suffix}", str(self.ip(addr)))
