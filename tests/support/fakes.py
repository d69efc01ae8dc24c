"""Fakes of product interfaces for unit tests."""

from __future__ import annotations


class MemoryStore:
    """nsrun.engine.allocator.Store in memory, for unit tests of the allocator."""

    def __init__(self) -> None:
        self.leases: dict[int, str] = {}
        self.last: int | None = None

    def taken(self) -> dict[int, str]:
        return dict(self.leases)

    def reserve(self, addr: int, owner: str) -> bool:
        if addr in self.leases:
            return False
        self.leases[addr] = owner
        return True

    def release(self, addr: int, owner: str) -> None:
        if self.leases.get(addr) == owner:
            del self.leases[addr]

    def last_reserved(self) -> int | None:
        return self.last

    def set_last_reserved(self, addr: int) -> None:
        self.last = addr
