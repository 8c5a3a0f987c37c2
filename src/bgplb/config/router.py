"""The router's configuration (``bgplb router -c FILE``): ``[bgp]``, ``[[peer_ranges]]``,
``[fib]``, ``[control]``, ``[logging]``. docs/config.md lists every key.

Safe by default: a peer range must say which prefixes it may announce (``accept`` has no
default: a range that could announce anything is a configuration mistake, and refusing to start
says so at once, where "accept nothing" would only show up as missing routes), holds at most
``max_prefixes`` (1000) prefixes, may not announce the default route (``allow_default``) and
must use its own address as next hop (``allow_third_party_next_hop``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator, field_validator

from bgplb.config.agent import (
    BfdConfig,
    BfdProcessConfig,
    HoldTime,
    LoggingConfig,
    Section,
    _hold_time,
)
from bgplb.config.types import (
    ASN,
    AcceptEntry,
    Duration,
    FilePath,
    HostPort,
    ListenAddress,
    MetricsAddress,
    PositiveDuration,
    Prefix,
    RouterId,
    int_in,
    parse_asn,
)
from bgplb.router.maglev import DEFAULT_SEED, DEFAULT_SIZE, check_seed, check_size


class RouterBgp(Section):
    asn: ASN
    router_id: RouterId | None = None
    listen: list[ListenAddress] = [HostPort("0.0.0.0", 179), HostPort("::", 179)]
    hold_time: HoldTime = 9
    # Graceful Restart helper (RFC 4724): keep a restarting peer's routes for its restart time.
    graceful_restart: bool = True
    # Local cap on how long a restarting peer's stale paths are kept, whatever restart time
    # (up to 4095 s) it advertised.
    max_stale_time: Duration = 120.0
    # A connection that has not sent a valid OPEN within this time is closed (half-open
    # connections and collisions, RFC 4271 §6.8, must not hold resources).
    open_timeout: PositiveDuration = 5.0

    @field_validator("listen", mode="before")
    @classmethod
    def _listen(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("hold_time")
    @classmethod
    def _check_hold(cls, value: int) -> int:
        return _hold_time(value)


def _asn_or_any(value: Any) -> int | Literal["any"]:
    if isinstance(value, str) and value.strip().lower() == "any":
        return "any"
    return parse_asn(value)


DEFAULT_MAX_PREFIXES = 1000
DEFAULT_MAX_SESSIONS = 1024


class PeerRange(Section):
    """Dynamic neighbours: sessions are accepted from any source inside ``prefix``."""

    prefix: Prefix
    asn: Annotated[int | Literal["any"], PlainValidator(_asn_or_any)]
    password: str | None = None
    max_prefixes: Annotated[int, int_in(1, 10_000_000)] = DEFAULT_MAX_PREFIXES
    # required: the prefixes (VIPs) this range may announce; everything else is filtered
    accept: list[AcceptEntry] = Field(min_length=1)
    bfd: BfdConfig | None = None
    hold_time: HoldTime | None = None
    ttl_security: bool = False  # GTSM (RFC 5082): only directly connected peers (TTL 255)
    max_sessions: Annotated[int, int_in(1, 1_000_000)] = DEFAULT_MAX_SESSIONS
    allow_third_party_next_hop: bool = False  # next hop must be the session's source otherwise
    allow_default: bool = False  # accept 0.0.0.0/0 and ::/0 if `accept` matches them

    @field_validator("password")
    @classmethod
    def _password(cls, value: str | None) -> str | None:
        if value is not None and not 1 <= len(value.encode()) <= 80:
            raise ValueError("TCP-MD5 password must be 1..80 bytes")
        return value

    @field_validator("hold_time")
    @classmethod
    def _check_hold(cls, value: int | None) -> int | None:
        return None if value is None else _hold_time(value)


def _mark_mask(value: Any) -> int:
    if isinstance(value, str):
        try:
            value = int(value, 0)
        except ValueError:
            raise ValueError(f"expected an integer mask like 0x00ff0000, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 0xFFFFFFFF:
        raise ValueError(f"mark_mask must be a non-zero 32-bit integer, got {value!r}")
    if bin(value).count("1") < 2:
        raise ValueError(f"mark_mask {value:#x} leaves room for only one server")
    return value


def _table_range(value: Any) -> tuple[int, int]:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"expected [first, last] table numbers, got {value!r}")
    lo, hi = value
    if not 1 <= lo <= hi <= 0xFFFFFFFF:
        raise ValueError(f"table range {lo}..{hi}: need 1 <= first <= last <= 4294967295")
    if lo <= 255 and hi >= 253:
        raise ValueError(
            f"table range {lo}..{hi} contains a reserved table (253 default, 254 main, 255 local)"
        )
    return (lo, hi)


def _nft_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,31}", value):
        raise ValueError(f"nftables table name must be letters, digits, _ : got {value!r}")
    return value


def _consistent_seed(value: Any) -> int:
    if isinstance(value, str):
        try:
            value = int(value, 0)
        except ValueError:
            raise ValueError(f"expected an integer seed, got {value!r}") from None
    return check_seed(value)


def _consistent_size(value: Any) -> int:
    return check_size(value)


class FibConfig(Section):
    """Kernel installation: one route per VIP via a nexthop group (``ip nexthop``)."""

    install: bool = True
    table: Annotated[int, int_in(1, 0xFFFFFFFF)] = 254
    # "consistent": Maglev table in nftables, same flow -> server on every router (docs/kernel.md)
    group: Literal["resilient", "multipath", "consistent"] = "resilient"
    consistent_seed: Annotated[int, PlainValidator(_consistent_seed)] = DEFAULT_SEED
    consistent_table_size: Annotated[int, PlainValidator(_consistent_size)] = DEFAULT_SIZE
    # Resilient groups (Linux >= 5.13): NHA_RES_GROUP_BUCKETS is a u16.
    buckets: Annotated[int, int_in(1, 65535)] = 512
    idle_timer: Duration = 10.0
    unbalanced_timer: Duration = 60.0  # 0: never force-migrate busy buckets
    keep_on_exit: bool = False  # leave our routes in the kernel on exit (graceful restart)
    # Connection pinning (docs/pinning.md): conntrack mark per server, ip rule + table per server.
    pinning: bool = False  # opt-in: turns conntrack on in the forwarding path (docs/pinning.md)
    mark_mask: Annotated[int, PlainValidator(_mark_mask)] = 0x00FF0000
    pin_tables: Annotated[tuple[int, int], PlainValidator(_table_range)] = (20000, 20254)
    pin_rule_priority: Annotated[int, int_in(1, 32765)] = 1000
    drain_linger: Duration = 60.0  # pins of a drained, then withdrawn server stay this long
    nft_table: Annotated[str, PlainValidator(_nft_name)] = "bgplb"
    # With objects of a previous run in the kernel (keep_on_exit, kill -9): keep them until
    # every peer of that run has sent End-of-RIB, at most this long (RFC 4724 §4.1 deferral).
    startup_defer: Duration = 60.0

    @field_validator("idle_timer", "unbalanced_timer")
    @classmethod
    def _clock_t(cls, value: float) -> float:
        # The kernel keeps these timers in clock_t (1/100 s) in a u32.
        if value > 0xFFFFFFFF / 100:
            raise ValueError(f"{value:g}s is too long for the kernel")
        return value


class RouterControlConfig(Section):
    socket: FilePath = Path("/run/bgplb/router.sock")
    metrics: MetricsAddress | None = HostPort("127.0.0.1", 9181)

    @field_validator("metrics", mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        return None if value in ("", False, "off") else value


class RouterConfig(Section):
    """Everything ``bgplb router`` reads from its TOML file."""

    bgp: RouterBgp
    peer_ranges: list[PeerRange] = Field(min_length=1)
    fib: FibConfig = FibConfig()
    bfd: BfdProcessConfig = BfdProcessConfig()
    control: RouterControlConfig = RouterControlConfig()
    logging: LoggingConfig = LoggingConfig()
