"""The agent's configuration (``bgplb agent -c FILE``): ``[bgp]``, ``[[peers]]``,
``[[services]]`` with ``[[services.checks]]``, ``[control]``, ``[logging]``.

docs/config.md documents every key and default.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import typing
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from bgplb.config.types import (
    ASN,
    IP,
    VIP,
    Community,
    Duration,
    FilePath,
    HostPort,
    LargeCommunity,
    MetricsAddress,
    Port,
    PositiveDuration,
    RouterId,
    int_in,
    parse_duration,
)


class Section(BaseModel):
    """Base of every config table: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# -- shared sections ---------------------------------------------------------------------------


class BfdConfig(Section):
    """RFC 5880 timers: ``interval_ms`` (desired min TX = required min RX) x ``multiplier``."""

    interval_ms: Annotated[int, int_in(10, 60_000, " milliseconds")] = 300
    multiplier: Annotated[int, int_in(1, 255)] = 3
    # multihop sessions (RFC 5883) only: packets received with a lower TTL/hop limit are
    # dropped, so an off-path sender cannot take the session down (GTSM-style, RFC 5082)
    min_ttl: Annotated[int, int_in(1, 255)] = 254


class BfdProcessConfig(Section):
    """``[bfd]``: how this process runs BFD, for all its sessions (read at start)."""

    # SCHED_FIFO priority of the BFD timing thread (1..99); None: normal scheduling. Only that
    # thread gets it; it needs CAP_SYS_NICE (or root). See docs/bfd.md.
    realtime_priority: Annotated[int, int_in(1, 99)] | None = None


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    json_: bool = Field(default=False, alias="json")

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


def _hold_time(value: int) -> int:
    if value in (1, 2):
        raise ValueError(f"hold_time {value} is not allowed: use 0 (no keepalives) or >= 3 seconds")
    return value


HoldTime = Annotated[int, int_in(0, 65535, " seconds")]


class ControlConfig(Section):
    socket: FilePath = Path("/run/bgplb/agent.sock")
    metrics: MetricsAddress | None = HostPort("127.0.0.1", 9180)
    # Drain state and the VIPs the agent added. None: $BGPLB_STATE_FILE, else
    # /var/lib/bgplb/agent-state.json; `--state-file` overrides all (read at start only).
    state_file: FilePath | None = None

    @field_validator("metrics", mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        return None if value in ("", False, "off") else value


# -- agent -------------------------------------------------------------------------------------


class AgentBgp(Section):
    asn: ASN
    router_id: RouterId | None = None
    hold_time: HoldTime = 9
    # Graceful Restart (RFC 4724) restart time advertised to routers; 12 bits on the wire.
    graceful_restart: bool = True
    graceful_restart_time: Annotated[int, int_in(1, 4095, " seconds")] = 15
    # SIGTERM drains every service for at most this long before withdrawing.
    shutdown_drain_time: Duration = 30.0

    @field_validator("hold_time")
    @classmethod
    def _check_hold(cls, value: int) -> int:
        return _hold_time(value)

    @field_validator("graceful_restart_time", mode="before")
    @classmethod
    def _gr_duration(cls, value: Any) -> Any:
        if isinstance(value, str):  # "15s" is accepted; the wire unit is whole seconds
            seconds = parse_duration(value)
            if seconds != int(seconds):
                raise ValueError(f"graceful_restart_time must be whole seconds, got {value!r}")
            return int(seconds)
        return value


class PeerConfig(Section):
    address: IP
    asn: ASN
    password: str | None = None
    port: Port = 179
    multihop: Annotated[int, int_in(1, 255)] | None = None
    ttl_security: bool = False
    bfd: BfdConfig | None = None
    local_address: IP | None = None
    passive: bool = False
    hold_time: HoldTime | None = None  # per-peer override of [bgp] hold_time

    @field_validator("hold_time")
    @classmethod
    def _check_hold(cls, value: int | None) -> int | None:
        return None if value is None else _hold_time(value)

    @field_validator("password")
    @classmethod
    def _password(cls, value: str | None) -> str | None:
        # Linux TCP_MD5SIG_MAXKEYLEN is 80 bytes.
        if value is not None and not 1 <= len(value.encode()) <= 80:
            raise ValueError("TCP-MD5 password must be 1..80 bytes")
        return value

    @field_validator("local_address")
    @classmethod
    def _same_family(cls, value: Any, info: ValidationInfo) -> Any:
        address = info.data.get("address")
        if value is not None and address is not None and value.version != address.version:
            raise ValueError(
                f"local_address {value} is not the same address family as address {address}"
            )
        return value


# -- checks ------------------------------------------------------------------------------------


class DampingConfig(Section):
    """Flap damping of a check (RFC 2439-like penalty, see bgplb.health.state)."""

    half_life: PositiveDuration = 30.0
    suppress: Annotated[int, int_in(1, 1_000_000)] = 3000
    reuse: Annotated[int, int_in(1, 1_000_000)] = 750
    max_suppress: PositiveDuration = 120.0

    @model_validator(mode="after")
    def _order(self) -> DampingConfig:
        if self.reuse >= self.suppress:
            raise ValueError(f"reuse ({self.reuse}) must be below suppress ({self.suppress})")
        return self


class CheckBase(Section):
    interval: PositiveDuration = 1.0
    # Default: 500ms, or half the interval when the interval is 1s or less (see _default_timeout).
    # A timeout longer than the interval is allowed: probes of one check never overlap, the next
    # one starts at the later of its interval and the end of the previous one.
    timeout: PositiveDuration = 0.5
    rise: Annotated[int, int_in(1, 1000)] = 2
    fall: Annotated[int, int_in(1, 1000)] = 2
    damping: DampingConfig | None = DampingConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_timeout(cls, data: Any) -> Any:
        if isinstance(data, dict) and "timeout" not in data:
            try:
                interval = parse_duration(
                    data.get("interval", cls.model_fields["interval"].default)
                )
            except ValueError:
                return data  # the interval's own error is reported
            if interval > 0:
                data = {**data, "timeout": min(0.5, interval / 2)}
        if isinstance(data, dict) and data.get("damping") is False:
            data = {**data, "damping": None}
        return data

    def describe(self) -> str:
        """A short label for status and logs, e.g. ``http http://127.0.0.1/healthz``."""
        raise NotImplementedError


class HttpCheck(CheckBase):
    type: Literal["http", "https"]
    url: str
    expect_status: Annotated[int, int_in(100, 599)] = 200
    expect_body: str | None = None
    host: str | None = None  # Host header
    verify_tls: bool = True
    method: Literal["GET", "HEAD", "POST", "PUT", "OPTIONS"] = "GET"

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        parsed = urllib.parse.urlsplit(value)
        scheme = info.data.get("type", "http")
        if parsed.scheme != scheme or not parsed.hostname:
            raise ValueError(f"expected a {scheme}:// URL, got {value!r}")
        return value

    def describe(self) -> str:
        return f"{self.type} {self.url}"


class TcpCheck(CheckBase):
    type: Literal["tcp"]
    host: str = "127.0.0.1"
    port: Port

    def describe(self) -> str:
        return (
            f"tcp {self.host}:{self.port}"
            if ":" not in self.host
            else f"tcp [{self.host}]:{self.port}"
        )


class ExecCheck(CheckBase):
    """``command`` is a list (run directly) or a string (run with ``/bin/sh -c``)."""

    type: Literal["exec"]
    command: list[str]
    env: dict[str, str] | None = None  # added to the minimal environment (PATH, LANG) of the check

    @field_validator("command", mode="before")
    @classmethod
    def _argv(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("command is empty")
            return ["/bin/sh", "-c", value]
        if isinstance(value, list) and not value:
            raise ValueError("command is empty")
        return value

    def describe(self) -> str:
        return "exec " + (
            self.command[2] if self.command[:2] == ["/bin/sh", "-c"] else shlex.join(self.command)
        )


class DnsCheck(CheckBase):
    type: Literal["dns"]
    server: IP = ipaddress.IPv4Address("127.0.0.1")
    port: Port = 53
    name: str  # the query name
    rtype: Literal["A", "AAAA"] = "A"

    @field_validator("rtype", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    def describe(self) -> str:
        return f"dns {self.name} {self.rtype} @{self.server}"


# -- event-driven checks: the kernel or systemd tells us of a failure ------------------------


class EventCheck(CheckBase):
    """A check that learns of a failure from an event (see bgplb.health.process, .listen,
    .systemd): one event is a failure at once, so ``fall`` is 1; ``interval`` is how often the
    state is verified between events (which is also what counts for ``rise``)."""

    fall: Annotated[int, int_in(1, 1000)] = 1

    @field_validator("fall")
    @classmethod
    def _fall_is_one(cls, value: int, info: ValidationInfo) -> int:
        if value != 1:
            kind = cls.model_fields["type"].annotation
            name = typing.get_args(kind)[0] if typing.get_args(kind) else "this type"
            raise ValueError(
                f"fall must be 1 for type {name}: a failure event is down at once "
                "(rise still applies on the way back up)"
            )
        return value


class ProcessCheck(EventCheck):
    """Up while the process named by ``pidfile`` runs (pidfd exit notification)."""

    type: Literal["process"]
    pidfile: FilePath
    interval: PositiveDuration = 0.1  # how often the pidfile is re-read (a restart writes it)

    @field_validator("pidfile")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"pidfile must be an absolute path, got {str(value)!r}")
        return value

    def describe(self) -> str:
        return f"process {self.pidfile}"


class ListenCheck(EventCheck):
    """Up while a socket listens on ``port`` (sock_diag dumps + destroy notifications)."""

    type: Literal["listen"]
    port: Port
    address: IP | None = None  # None: any address; else that address or the wildcard
    protocol: Literal["tcp", "udp"] = "tcp"
    interval: PositiveDuration = 0.1  # how often the listening sockets are dumped (~0.1 ms each)

    @field_validator("protocol", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    def describe(self) -> str:
        if self.address is None:
            return f"listen {self.protocol} port {self.port}"
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"listen {self.protocol} {host}:{self.port}"


_UNIT_SUFFIXES = (
    "service",
    "socket",
    "target",
    "mount",
    "automount",
    "swap",
    "path",
    "timer",
    "slice",
    "scope",
    "device",
)
_UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\@-]+\.(" + "|".join(_UNIT_SUFFIXES) + ")")


class SystemdCheck(EventCheck):
    """Up while the unit's ActiveState is ``active`` (or ``reloading``), from D-Bus
    PropertiesChanged signals; ``deactivating`` is reported as such (detail)."""

    type: Literal["systemd"]
    unit: str
    # "system" (default), "session", or a D-Bus address such as "unix:path=/run/x/bus"
    bus: str = "system"
    interval: PositiveDuration = 1.0  # how often ActiveState is re-read between signals

    @field_validator("unit")
    @classmethod
    def _unit(cls, value: str) -> str:
        if len(value) > 255 or not _UNIT_NAME.fullmatch(value):
            raise ValueError(
                f"invalid unit name {value!r} (e.g. nginx.service; a suffix among "
                f"{', '.join(_UNIT_SUFFIXES)})"
            )
        return value

    @field_validator("bus")
    @classmethod
    def _bus(cls, value: str) -> str:
        if value not in ("system", "session") and not re.fullmatch(r"[a-z]+:\S+", value):
            raise ValueError(
                f"invalid bus {value!r} (use system, session or a D-Bus address such as "
                "unix:path=/run/dbus/system_bus_socket)"
            )
        return value

    def describe(self) -> str:
        return f"systemd {self.unit}" + ("" if self.bus == "system" else f" on {self.bus}")


CheckConfig = Annotated[
    HttpCheck | TcpCheck | ExecCheck | DnsCheck | ProcessCheck | ListenCheck | SystemdCheck,
    Field(discriminator="type"),
]
CHECK_TYPES = ("http", "https", "tcp", "exec", "dns", "process", "listen", "systemd")

# -- services ----------------------------------------------------------------------------------


class ServiceConfig(Section):
    name: str
    vips: list[VIP] = Field(min_length=1)
    communities: list[Community] = []
    large_communities: list[LargeCommunity] = []
    med: Annotated[int, int_in(0, 0xFFFFFFFF)] | None = None
    as_path_prepend: Annotated[int, int_in(0, 16, " (times our AS is prepended)")] = 0
    manage_vip: bool = True
    drain_time: Duration = 10.0
    # after a `bgplb drain`'s withdrawal the VIP stays on lo this long (a router with connection
    # pinning keeps sending the drained server's connections: bgplb router's drain_linger)
    drain_vip_linger: Duration = 60.0
    checks: list[CheckConfig] = []

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", value):
            raise ValueError(
                f"invalid service name {value!r} (letters, digits, '_', '.', '-'; max 63)"
            )
        return value


class AgentConfig(Section):
    """Everything ``bgplb agent`` reads from its TOML file."""

    bgp: AgentBgp
    peers: list[PeerConfig] = Field(min_length=1)
    services: list[ServiceConfig] = []
    bfd: BfdProcessConfig = BfdProcessConfig()
    control: ControlConfig = ControlConfig()
    logging: LoggingConfig = LoggingConfig()
