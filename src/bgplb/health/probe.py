"""What every health probe is: an async callable giving a :class:`ProbeResult`.

Its own module, below :mod:`bgplb.health.checks` (the polled probes and the runner) and the
event probes (:mod:`~bgplb.health.process`, :mod:`~bgplb.health.listen`,
:mod:`~bgplb.health.systemd`), so that neither side imports the other.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

__all__ = ["DEACTIVATING", "EventProbe", "Probe", "ProbeResult"]

# The detail of a systemd check whose unit began to stop (ActiveState "deactivating"): the unit
# still serves what it has in flight. Here, not in bgplb.health.systemd, so that the agent can
# test for it without loading dbus-fast.
DEACTIVATING = "deactivating"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    latency: float  # seconds
    detail: str


class Probe(Protocol):
    async def __call__(self) -> ProbeResult: ...

    async def aclose(self) -> None: ...


class EventProbe(Probe, Protocol):
    """A probe that learns of changes by itself: it sets ``changed`` (from an event loop
    callback: pidfd readable, netlink notification, D-Bus signal) and the runner calls it at
    once. Calling it is cheap (it verifies the state, or returns what the event said)."""

    changed: asyncio.Event
