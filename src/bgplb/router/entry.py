"""The router's shared records: a compiled peer range, a dynamic neighbor, the event counters.

The lowest layer of the router daemon's parts (:mod:`bgplb.router.ranges` makes the entries,
:mod:`bgplb.router.supervisor` and :mod:`bgplb.router.kernel` count into :class:`Counters`,
:mod:`bgplb.router.bfd` attaches a BFD link to an entry); nothing here imports another part.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bgplb.config import PeerRange
from bgplb.io.bgp import BgpPeer, IPAddress
from bgplb.router.policy import IPNetwork, PrefixList

if TYPE_CHECKING:
    from bgplb.io.bgp_bfd import BfdLink

__all__ = ["Counters", "PeerEntry", "RangeState"]


@dataclass(slots=True)
class RangeState:
    """One ``[[peer_ranges]]`` entry, compiled."""

    index: int
    config: PeerRange
    accept: PrefixList

    @property
    def network(self) -> IPNetwork:
        return self.config.prefix

    def key(self) -> tuple[object, ...]:
        c = self.config
        return (
            str(c.prefix),
            c.asn,
            c.password,
            c.max_prefixes,
            str(self.accept),
            c.hold_time,
            c.ttl_security,  # the accepted socket's minimum TTL was set (or not) at accept
        )


@dataclass(slots=True)
class PeerEntry:
    """A dynamic neighbor: the connection's peer and the range it belongs to."""

    address: IPAddress
    peer: BgpPeer
    range: RangeState
    accepted_at: float
    filtered: int = 0
    over_limit: bool = False
    updates: int = 0
    last_error: str | None = None
    bfd: BfdLink | None = None  # when the range has `bfd` (router/bfd.py)
    bfd_down: bool = False  # BFD tore the session down: no Graceful Restart for its paths


@dataclass(slots=True)
class Counters:
    """The router's event counters (status and metrics read them: O(1))."""

    refused_connections: int = 0
    filtered_prefixes: int = 0
    refused_prefixes: int = 0
    bad_bandwidth: int = 0
    max_prefix_resets: int = 0
    fib_applies: int = 0
    fib_errors: int = 0
    updates_received: int = 0
    last_apply_ops: int = 0
    internal_errors: dict[str, int] = field(default_factory=dict)
    internal_resets: int = 0  # peers reset after an internal error
    pauses: int = 0  # times a peer's reading was paused (too many events pending)
    queue_peak: int = 0  # the most events ever waiting for the RIB task
    started_at: float = field(default_factory=time.time)
