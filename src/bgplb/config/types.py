"""Value types shared by the agent and router config: durations, ASNs, addresses, communities.

Every parser takes what TOML produced (str, int, float, bool, list, dict) and returns a typed
value or raises ``ValueError`` whose text is the user-facing message (the loader prefixes it
with the file and the key path). They are wired into pydantic with ``PlainValidator`` so no
pydantic coercion rule sneaks in between TOML and our checks.

Communities follow RFC 1997 (``"A:B"``, well-known names from the IANA registry, RFC 8326's
GRACEFUL_SHUTDOWN and RFC 7999's BLACKHOLE); large communities RFC 8092 (``"A:B:C"``).
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import PlainValidator

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# -- durations ---------------------------------------------------------------------------------

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(value: Any) -> float:
    """Parse ``"500ms"``, ``"1s"``, ``"2m"``, ``"1h"``, ``"1m30s"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r} (use e.g. 500ms, 1s, 2m)")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            pos = match.end()
        if not text or pos != len(text):
            try:
                seconds = float(text)  # "1.5" as a string: seconds
            except ValueError:
                raise ValueError(f"invalid duration {value!r} (use e.g. 500ms, 1s, 2m)") from None
    else:
        raise ValueError(f"invalid duration {value!r} (use e.g. 500ms, 1s, 2m)")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r}: must be zero or positive")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds the way a user would write them (``0.5`` → ``"500ms"``)."""
    if seconds < 1 and seconds != 0:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds == 0:
        raise ValueError(f"must be greater than zero, got {value!r}")
    return seconds


Duration = Annotated[float, PlainValidator(parse_duration)]
PositiveDuration = Annotated[float, PlainValidator(_positive_duration)]

# -- integers ----------------------------------------------------------------------------------


def int_in(lo: int, hi: int, what: str = "") -> Any:
    """A validator for a TOML integer in ``lo..hi`` (booleans and strings refused)."""

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer{what}, got {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"{value} is out of range {lo}..{hi}{what}")
        return value

    return PlainValidator(check)


AS_TRANS = 23456  # RFC 6793 §9: never a real AS


def parse_asn(value: Any) -> int:
    """A 2- or 4-octet AS number: an integer or asdot (``"1.10"``), 1..4294967295."""
    if isinstance(value, str) and re.fullmatch(r"\d+\.\d+", value.strip()):
        high, low = (int(x) for x in value.strip().split("."))
        if high > 0xFFFF or low > 0xFFFF:
            raise ValueError(f"invalid AS number {value!r}")
        value = high << 16 | low
    elif isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"invalid AS number {value!r} (an integer 1..4294967295)")
    if not 1 <= value <= 0xFFFFFFFF:
        raise ValueError(f"AS number {value} is out of range 1..4294967295")
    if value == AS_TRANS:
        raise ValueError("AS 23456 is AS_TRANS (RFC 6793) and cannot be configured")
    return value


ASN = Annotated[int, PlainValidator(parse_asn)]
Port = Annotated[int, int_in(1, 65535)]

# -- addresses ---------------------------------------------------------------------------------


def parse_ip(value: Any) -> IPAddress:
    if not isinstance(value, str):
        raise ValueError(f"expected an IP address as a string, got {value!r}")
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValueError(f"invalid IP address {value!r}") from None


def parse_ipv4(value: Any) -> ipaddress.IPv4Address:
    address = parse_ip(value)
    if not isinstance(address, ipaddress.IPv4Address):
        raise ValueError(f"{value!r} is not an IPv4 address")
    return address


def parse_router_id(value: Any) -> ipaddress.IPv4Address:
    address = parse_ipv4(value)
    if int(address) == 0:
        raise ValueError("router_id 0.0.0.0 is not allowed (RFC 6286: non-zero)")
    return address


def parse_prefix(value: Any) -> IPNetwork:
    """A prefix such as ``"192.0.2.0/24"``; host bits must be zero."""
    if not isinstance(value, str):
        raise ValueError(f"expected a prefix as a string, got {value!r}")
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as e:
        if "host bits set" in str(e):
            loose = ipaddress.ip_network(value.strip(), strict=False)
            raise ValueError(f"{value!r} has host bits set (did you mean {loose}?)") from None
        raise ValueError(f"invalid prefix {value!r}") from None


def parse_vip(value: Any) -> IPNetwork:
    """A VIP: one address, written ``"198.51.100.10/32"``, ``"2001:db8::10/128"`` or bare.

    VIPs are host routes by design: each server announces exactly the address it answers on,
    so the router's per-VIP ECMP set never mixes a VIP with a covering prefix.
    """
    if isinstance(value, str) and "/" not in value:
        return ipaddress.ip_network(parse_ip(value))
    network = parse_prefix(value)
    if network.prefixlen != network.max_prefixlen:
        raise ValueError(
            f"a VIP must be a single address (/{network.max_prefixlen}), got {value!r}"
        )
    return network


IP = Annotated[IPAddress, PlainValidator(parse_ip)]
IPv4 = Annotated[ipaddress.IPv4Address, PlainValidator(parse_ipv4)]
RouterId = Annotated[ipaddress.IPv4Address, PlainValidator(parse_router_id)]
Prefix = Annotated[IPNetwork, PlainValidator(parse_prefix)]
VIP = Annotated[IPNetwork, PlainValidator(parse_vip)]


@dataclass(frozen=True, slots=True)
class HostPort:
    """``host:port``; IPv6 hosts are written in brackets (``"[::1]:9180"``)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(value: Any, default_port: int | None = None, ip_only: bool = False) -> HostPort:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected 'host:port' as a string, got {value!r}")
    text = value.strip()
    port_text: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"invalid address {value!r} (use e.g. [2001:db8::1]:179)")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text  # a bare IPv4/IPv6 address or name
    if port_text is None:
        if default_port is None:
            raise ValueError(f"missing port in {value!r} (use e.g. 127.0.0.1:9180)")
        port = default_port
    elif not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"invalid port in {value!r}")
    else:
        port = int(port_text)
    if ip_only or ":" in host:
        host = str(parse_ip(host))
    elif not re.fullmatch(r"[A-Za-z0-9.-]+", host):
        raise ValueError(f"invalid host in {value!r}")
    return HostPort(host, port)


def _listen_address(value: Any) -> HostPort:
    return parse_host_port(value, default_port=179, ip_only=True)


def _metrics_address(value: Any) -> HostPort:
    return parse_host_port(value)


ListenAddress = Annotated[HostPort, PlainValidator(_listen_address)]
MetricsAddress = Annotated[HostPort, PlainValidator(_metrics_address)]


def _path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a path as a string, got {value!r}")
    return Path(value)


FilePath = Annotated[Path, PlainValidator(_path)]

# -- communities -------------------------------------------------------------------------------

WELL_KNOWN_COMMUNITIES = {
    "graceful-shutdown": 0xFFFF0000,  # RFC 8326
    "accept-own": 0xFFFF0001,  # RFC 7611
    "blackhole": 0xFFFF029A,  # RFC 7999
    "no-export": 0xFFFFFF01,  # RFC 1997
    "no-advertise": 0xFFFFFF02,  # RFC 1997
    "no-export-subconfed": 0xFFFFFF03,  # RFC 1997
    "no-peer": 0xFFFFFF04,  # RFC 3765
}


def parse_community(value: Any) -> int:
    """An RFC 1997 community: ``"65000:100"`` or a well-known name → its 32-bit value."""
    if isinstance(value, str):
        text = value.strip().lower().replace("_", "-")
        if text in WELL_KNOWN_COMMUNITIES:
            return WELL_KNOWN_COMMUNITIES[text]
        parts = text.split(":")
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            high, low = int(parts[0]), int(parts[1])
            if high <= 0xFFFF and low <= 0xFFFF:
                return high << 16 | low
    names = ", ".join(WELL_KNOWN_COMMUNITIES)
    raise ValueError(f"invalid community {value!r} (use 'A:B' with 0..65535 each, or {names})")


def format_community(value: int) -> str:
    return f"{value >> 16}:{value & 0xFFFF}"


def parse_large_community(value: Any) -> tuple[int, int, int]:
    """An RFC 8092 large community ``"A:B:C"`` (three 32-bit numbers)."""
    if isinstance(value, str):
        parts = value.strip().split(":")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            a, b, c = (int(p) for p in parts)
            if max(a, b, c) <= 0xFFFFFFFF:
                return a, b, c
    raise ValueError(f"invalid large community {value!r} (use 'A:B:C' with 0..4294967295 each)")


Community = Annotated[int, PlainValidator(parse_community)]
LargeCommunity = Annotated[tuple[int, int, int], PlainValidator(parse_large_community)]

# -- prefix filters (router) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrefixFilter:
    """One ``accept`` entry: ``prefix [ge N] [le M]`` as in BIRD/Cisco prefix lists.

    A route matches when it lies inside ``prefix`` and its length is in ``ge..le``. Without
    ``ge``/``le`` only the exact prefix matches; ``le`` alone means ``ge = len(prefix)``;
    ``ge`` alone means ``le = max length``.
    """

    prefix: IPNetwork
    ge: int
    le: int

    def matches(self, network: IPNetwork) -> bool:
        return (
            network.version == self.prefix.version
            and self.ge <= network.prefixlen <= self.le
            and network.subnet_of(self.prefix)  # type: ignore[arg-type]
        )

    def __str__(self) -> str:
        text = str(self.prefix)
        if self.ge == self.le == self.prefix.prefixlen:
            return text
        if self.ge != self.prefix.prefixlen:
            text += f" ge {self.ge}"
        return text + f" le {self.le}"


def parse_prefix_filter(value: Any) -> PrefixFilter:
    if not isinstance(value, str) or not value.split():
        raise ValueError(f"expected e.g. '198.51.100.0/24 le 32', got {value!r}")
    words = value.split()
    prefix = parse_prefix(words[0])
    bounds: dict[str, int] = {}
    rest = words[1:]
    if len(rest) % 2:
        raise ValueError(f"invalid prefix filter {value!r} (use 'PREFIX [ge N] [le M]')")
    for keyword, number in zip(rest[::2], rest[1::2], strict=True):
        if keyword not in ("ge", "le") or keyword in bounds or not number.isdigit():
            raise ValueError(f"invalid prefix filter {value!r} (use 'PREFIX [ge N] [le M]')")
        bounds[keyword] = int(number)
    length, top = prefix.prefixlen, prefix.max_prefixlen
    ge = bounds.get("ge", length)
    le = bounds.get("le", top if "ge" in bounds else length)
    if not length <= ge <= le <= top:
        raise ValueError(f"invalid prefix filter {value!r}: need {length} <= ge <= le <= {top}")
    return PrefixFilter(prefix, ge, le)


AcceptEntry = Annotated[PrefixFilter, PlainValidator(parse_prefix_filter)]
