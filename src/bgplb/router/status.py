"""The router's status as typed values (``bgplb status``; the JSON over the control socket).

Frozen dataclasses, one per object of the document; :meth:`RouterStatus.to_json` gives the JSON
document (the field names are the keys, in this order; a field marked :data:`OPTIONAL` is left
out while it is None). The schema is documented field by field in ``docs/status.md``
("Router"); a unit test compares that document with these classes, so neither can change
without the other. The rendering as tables is :func:`bgplb.cli_router.render_status`, from the
JSON document alone.

Nothing here reads the daemon: :mod:`bgplb.router.report` builds the value from the router's
parts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

#: A JSON object made elsewhere (``BfdLink.status()``, ``KernelFib.status()``,
#: ``LoopWatch.read()``).
JsonObject = Mapping[str, object]

#: Field metadata: the key is absent from the JSON document while the value is None.
OPTIONAL: Mapping[str, bool] = {"optional": True}


def _optional() -> Any:
    return dataclasses.field(default=None, metadata=OPTIONAL)


@dataclasses.dataclass(frozen=True, slots=True)
class BucketShares:
    """How many VIPs' bucket shares were read from the kernel (`KernelFib.buckets_shares`)."""

    shown: int
    omitted: int
    limit: int


@dataclasses.dataclass(frozen=True, slots=True)
class FibStatus:
    install: bool
    group: str  # resilient or multipath
    buckets: int
    table: int
    idle_timer: float
    unbalanced_timer: float
    reinstalls: int  # objects of ours someone else removed and we put back
    installed_vips: int  # VIPs with a usable next hop (the desired FIB)
    bucket_shares: BucketShares | None
    status: JsonObject  # the FIB's health (KernelSide.fib_status)
    bucket_shares_skipped: str | None = _optional()  # why the shares were not read


@dataclasses.dataclass(frozen=True, slots=True)
class PeerRangeStatus:
    prefix: str
    asn: int | str  # "any" or an AS number
    max_prefixes: int | None
    sessions: int
    max_sessions: int
    ttl_security: bool
    allow_default: bool
    allow_third_party_next_hop: bool
    accept: str
    password: bool
    bfd: JsonObject | None


@dataclasses.dataclass(frozen=True, slots=True)
class PeerStatus:
    """A neighbor with a connection (any BGP state)."""

    address: str
    asn: int | None
    state: str  # BGP FSM state (RFC 4271 §8.2.2)
    established: bool
    prefixes: int
    stale: int
    filtered: int
    refused: int
    bad_bandwidth: int
    pending_events: int
    paused: bool
    uptime: float | None
    range: str
    graceful_restart: int | None
    last_error: str | None
    bfd: JsonObject | None


@dataclasses.dataclass(frozen=True, slots=True)
class RestartingPeerStatus:
    """A neighbor gone whose paths are kept stale (RFC 4724 §4.2): ``state`` is "restarting"."""

    address: str
    asn: int | None
    state: str
    established: bool
    prefixes: int
    stale: int
    filtered: int
    refused: int
    uptime: float | None
    range: str | None
    graceful_restart: int | None
    stale_until: float
    last_error: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class PinnedServer:
    address: str
    ifindex: int
    slot: int
    mark: str  # hexadecimal, e.g. "0x100"
    table: int
    vips: Mapping[str, str]  # VIP -> pinned, draining, ...
    connections: int | None  # conntrack entries with its mark (None: not counted)


@dataclasses.dataclass(frozen=True, slots=True)
class PinningStatus:
    """Connection pinning; only ``enabled`` when ``[fib] pinning`` is off."""

    enabled: bool
    mark_mask: str | None = _optional()
    tables: tuple[int, ...] | None = _optional()
    drain_linger: float | None = _optional()
    servers: tuple[PinnedServer, ...] | None = _optional()
    orphan_connections: int | None = _optional()
    refused: tuple[str, ...] | None = _optional()
    errors: int | None = _optional()


@dataclasses.dataclass(frozen=True, slots=True)
class QueueStatus:
    depth: int
    peak: int
    paused_peers: int
    pauses: int
    max_pending: int


@dataclasses.dataclass(frozen=True, slots=True)
class CounterStatus:
    refused_connections: int
    refused_connections_by_reason: Mapping[str, int]
    filtered_prefixes: int
    refused_prefixes: int
    bad_bandwidth: int
    max_prefix_resets: int
    updates_received: int
    fib_applies: int
    fib_errors: int
    reloads: int
    internal_resets: int
    internal_errors: Mapping[str, int]


@dataclasses.dataclass(frozen=True, slots=True)
class UnusablePath:
    peer: str
    next_hop: str | None
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class NexthopStatus:
    address: str
    ifindex: int
    weight: int
    draining: bool
    stale: bool
    peers: tuple[str, ...]
    buckets: int | None
    share: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class ConsistentStatus:
    """One VIP's Maglev table (``[fib] group = "consistent"``)."""

    size: int
    seed: int
    fingerprint: str
    shares: Mapping[str, float]  # next-hop address -> fraction of the table's slots


@dataclasses.dataclass(frozen=True, slots=True)
class VipStatus:
    vip: str
    installed: bool
    paths: int
    unusable: tuple[UnusablePath, ...]
    nexthops: tuple[NexthopStatus, ...]
    consistent: ConsistentStatus | None = dataclasses.field(default=None, metadata=OPTIONAL)


@dataclasses.dataclass(frozen=True, slots=True)
class RouterStatus:
    asn: int
    router_id: str
    uptime: float
    fib: FibStatus
    peer_ranges: tuple[PeerRangeStatus, ...]
    peers: tuple[PeerStatus | RestartingPeerStatus, ...]
    pinning: PinningStatus
    queue: QueueStatus
    loop: JsonObject | None
    counters: CounterStatus
    vips: tuple[VipStatus, ...]
    vips_total: int
    vips_offset: int
    vips_omitted: int
    role: str = "router"

    def to_json(self) -> dict[str, Any]:
        """The JSON document (``role`` first, as ``bgplb status`` has always sent it)."""
        out: dict[str, Any] = {"role": self.role}
        for f in dataclasses.fields(self):
            if f.name != "role":
                out[f.name] = plain(getattr(self, f.name))
        return out


def plain(value: object) -> Any:
    """JSON types: dataclasses -> dicts (optional fields left out while None), tuples -> lists,
    mappings copied."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not (f.metadata.get("optional") and getattr(value, f.name) is None)
        }
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return value
