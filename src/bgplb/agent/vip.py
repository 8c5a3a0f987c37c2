"""The VIPs on the loopback interface: :class:`Loopback`, with the kernel implementation
(pyroute2 in a thread, :mod:`bgplb.linux.addresses`) and an in-memory one for tests and dry
runs. The VIP is a /32 or /128 on ``lo`` so the server accepts the packets the routers send it
for the announced prefix (the usual direct-server-return set-up of an anycast/ECMP VIP)."""

from __future__ import annotations

import asyncio
from typing import Protocol

from bgplb.linux import addresses


class Loopback(Protocol):
    async def add(self, vip: str) -> bool:
        """Put ``vip`` on lo. True if added, False if it was already there (then it is not
        ours to remove). OSError if the kernel refuses."""
        ...

    async def remove(self, vip: str) -> None:
        """Remove ``vip`` from lo (no error if it is not there). OSError if refused."""
        ...


class KernelLoopback:
    """The real ``lo`` of this network namespace."""

    async def add(self, vip: str) -> bool:
        return await asyncio.to_thread(addresses.add_vip, vip)

    async def remove(self, vip: str) -> None:
        await asyncio.to_thread(addresses.remove_vip, vip)


class MemoryLoopback:
    """A set of addresses standing for ``lo``; ``refuse`` holds VIPs whose add fails (OSError),
    ``history`` every change in order (``("add", vip)`` / ``("remove", vip)``)."""

    def __init__(self, present: set[str] | None = None) -> None:
        self.present: set[str] = set(present or ())
        self.refuse: set[str] = set()
        self.history: list[tuple[str, str]] = []

    async def add(self, vip: str) -> bool:
        if vip in self.refuse:
            raise OSError(f"cannot add {vip}: refused")
        if vip in self.present:
            return False
        self.present.add(vip)
        self.history.append(("add", vip))
        return True

    async def remove(self, vip: str) -> None:
        if vip in self.refuse:
            raise OSError(f"cannot remove {vip}: refused")
        if vip in self.present:
            self.present.discard(vip)
            self.history.append(("remove", vip))
