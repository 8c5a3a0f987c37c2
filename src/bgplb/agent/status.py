"""The agent's status as typed values (``bgplb status``; the JSON over the control socket).

Frozen dataclasses, one per object of the document; :meth:`AgentStatus.to_json` gives the JSON
document (``dataclasses.asdict``: the field names are the keys, in this order). The schema is
documented field by field in ``docs/status.md`` ("Agent"); a unit test compares that document
with these classes, so neither can change without the other. The rendering as tables is
:mod:`bgplb.control.agent_status`, from the JSON document alone.

Nothing here reads the daemon: :mod:`bgplb.agent.report` builds the value from the agent's parts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

#: A JSON object made elsewhere (``bgplb.io.bgp_bfd.BfdLink.status()``, documented in docs/bfd.md).
JsonObject = Mapping[str, object]


@dataclasses.dataclass(frozen=True, slots=True)
class HeldBack:
    """A prefix the session cannot carry (family not negotiated, or no next hop of its family)."""

    prefix: str
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class PeerStatus:
    name: str
    address: str
    asn: int | None
    state: str  # the BGP FSM state (RFC 4271 §8.2.2), e.g. "Established"
    uptime: float | None  # seconds since Established, None when not Established
    local_address: str | None
    routes_sent: int
    updates_sent: int
    last_error: str | None
    bfd: JsonObject | None
    held_back: tuple[HeldBack, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class VipStatus:
    vip: str
    phase: str  # idle, adding, announced, draining, withdrawing
    lingering: float | None  # seconds left on lo after the withdrawal, else None


@dataclasses.dataclass(frozen=True, slots=True)
class CheckStatus:
    check: str
    state: str  # up, down (bgplb.health.state.Health)
    suppressed: bool  # held down by flap damping
    last_ok: bool | None
    latency_ms: float | None
    output: str | None
    probes: int


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceStatus:
    name: str
    healthy: bool
    status: str  # withdrawn, announced, draining, drained (bgplb.agent.state.ServiceStatus)
    drained: bool
    reason: str | None
    vips: tuple[VipStatus, ...]
    checks: tuple[CheckStatus, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class AgentStatus:
    asn: int
    router_id: str
    uptime: float
    graceful_restart: bool
    peers: tuple[PeerStatus, ...]
    services: tuple[ServiceStatus, ...]
    role: str = "agent"

    def to_json(self) -> dict[str, object]:
        """The JSON document (``role`` first, as ``bgplb status`` has always sent it)."""
        out: dict[str, object] = {"role": self.role}
        for f in dataclasses.fields(self):
            if f.name != "role":
                out[f.name] = _plain(getattr(self, f.name))
        return out


def _plain(value: object) -> object:
    """JSON types: dataclasses -> dicts, tuples -> lists, mappings copied."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
