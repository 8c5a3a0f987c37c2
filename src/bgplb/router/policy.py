"""Router policy, pure: prefix lists for ``accept``, source ranges for dynamic neighbors, and
the prefixes and next hops refused whatever the configuration says.

Prefix list entries follow BIRD's and Cisco's prefix-list syntax:

* ``"198.51.100.10/32"`` matches exactly that prefix;
* ``"198.51.100.0/24 le 32"`` matches every prefix inside 198.51.100.0/24 whose length is
  between 24 and 32;
* ``"0.0.0.0/0 ge 32"`` matches every prefix of length 32 (``ge`` alone: up to the maximum);
* ``"198.51.100.0/24 ge 28 le 30"`` both bounds.

:func:`special_purpose` says why a prefix can never be a VIP (the IANA special-purpose address
registries of RFC 6890 §2.2 and their later entries, plus the classic martians; documentation,
benchmarking and private ranges stay allowed) and :func:`gateway_refusal` why an address can
never be a gateway: the router applies both whatever ``accept`` says.

Matching works on :class:`bgplb.bgp.prefix.Prefix` (``(afi, address as int, length)``) with
integer masks, so filtering a 100k-prefix UPDATE stream costs a few operations per prefix. No
I/O, no clock: checked with ``mypy --strict``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from bgplb.bgp.families import AFI
from bgplb.bgp.prefix import Prefix

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_BITS = {AFI.IPV4: 32, AFI.IPV6: 128}


def _mask(afi: AFI, length: int) -> int:
    bits = _BITS[afi]
    return ((1 << bits) - 1) ^ ((1 << (bits - length)) - 1)


@dataclass(frozen=True, slots=True)
class PrefixListEntry:
    """``prefix [ge N] [le M]``: routes inside ``prefix`` with ``ge <= length <= le``."""

    prefix: Prefix
    ge: int
    le: int

    def __post_init__(self) -> None:
        top = _BITS[self.prefix.afi]
        if not self.prefix.length <= self.ge <= self.le <= top:
            raise ValueError(
                f"invalid prefix list entry {self}: need {self.prefix.length} <= ge <= le <= {top}"
            )

    @classmethod
    def parse(cls, text: str) -> PrefixListEntry:
        """Parse ``"198.51.100.0/24 le 32"``, ``"::/0 ge 128"``, ``"198.51.100.10/32"``."""
        words = text.split()
        if not words or len(words) % 2 == 0:
            raise ValueError(f"invalid prefix list entry {text!r} (use 'PREFIX [ge N] [le M]')")
        prefix = Prefix.parse(words[0])
        bounds: dict[str, int] = {}
        for keyword, number in zip(words[1::2], words[2::2], strict=True):
            if keyword not in ("ge", "le") or keyword in bounds or not number.isdigit():
                raise ValueError(f"invalid prefix list entry {text!r} (use 'PREFIX [ge N] [le M]')")
            bounds[keyword] = int(number)
        top = _BITS[prefix.afi]
        ge = bounds.get("ge", prefix.length)
        le = bounds.get("le", top if "ge" in bounds else prefix.length)
        return cls(prefix, ge, le)

    def matches(self, prefix: Prefix) -> bool:
        afi, address, length = prefix
        mine = self.prefix
        return (
            afi == mine[0]
            and self.ge <= length <= self.le
            and (address & _mask(afi, mine[2])) == mine[1]
        )

    def __str__(self) -> str:
        text = str(self.prefix)
        if self.ge == self.le == self.prefix.length:
            return text
        if self.ge != self.prefix.length:
            text += f" ge {self.ge}"
            if self.le == _BITS[self.prefix.afi]:
                return text
        return text + f" le {self.le}"


class _FilterLike(Protocol):
    """What `bgplb.config` gives for an ``accept`` entry (prefix network, ge, le)."""

    @property
    def prefix(self) -> IPNetwork: ...
    @property
    def ge(self) -> int: ...
    @property
    def le(self) -> int: ...


@dataclass(frozen=True, slots=True)
class PrefixList:
    """An ordered list of entries; a prefix is accepted when any entry matches (no deny)."""

    entries: tuple[PrefixListEntry, ...]
    # per entry (afi, mask, network address, ge, le): what `split` compares, precomputed
    _compiled: tuple[tuple[AFI, int, int, int, int], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        compiled = tuple(
            (e.prefix[0], _mask(e.prefix[0], e.prefix[2]), e.prefix[1], e.ge, e.le)
            for e in self.entries
        )
        object.__setattr__(self, "_compiled", compiled)

    @classmethod
    def parse(cls, texts: Iterable[str]) -> PrefixList:
        return cls(tuple(PrefixListEntry.parse(t) for t in texts))

    @classmethod
    def from_filters(cls, filters: Iterable[_FilterLike | str]) -> PrefixList:
        """Build from config `PrefixFilter` objects (``prefix``, ``ge``, ``le``) or strings."""
        entries = []
        for f in filters:
            if isinstance(f, str):
                entries.append(PrefixListEntry.parse(f))
            else:
                entries.append(PrefixListEntry(Prefix.from_network(f.prefix), f.ge, f.le))
        return cls(tuple(entries))

    def matches(self, prefix: Prefix) -> bool:
        return any(entry.matches(prefix) for entry in self.entries)

    def split(self, prefixes: Iterable[Prefix]) -> tuple[list[Prefix], list[Prefix]]:
        """(accepted, rejected), each in input order."""
        accepted: list[Prefix] = []
        rejected: list[Prefix] = []
        compiled = self._compiled
        if len(compiled) == 1:  # the common case, ~4x faster than matches() per prefix
            afi0, mask, net, ge, le = compiled[0]
            for p in prefixes:
                afi, address, length = p
                if afi == afi0 and ge <= length <= le and address & mask == net:
                    accepted.append(p)
                else:
                    rejected.append(p)
            return accepted, rejected
        for p in prefixes:
            afi, address, length = p
            for afi0, mask, net, ge, le in compiled:
                if afi == afi0 and ge <= length <= le and address & mask == net:
                    accepted.append(p)
                    break
            else:
                rejected.append(p)
        return accepted, rejected

    def __str__(self) -> str:
        return ", ".join(str(e) for e in self.entries) or "(nothing)"


T = TypeVar("T")


def network_contains(network: IPNetwork, address: IPAddress) -> bool:
    """True if `address` lies inside `network` (an IPv4-mapped IPv6 address counts as IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return network.version == address.version and address in network


def match_range(
    ranges: Sequence[tuple[IPNetwork, T]], address: IPAddress
) -> tuple[IPNetwork, T] | None:
    """The range holding `address`: the most specific one (longest prefix), ties to the first.

    Dynamic neighbors: a connection from `address` belongs to that range's settings; None means
    the source is outside every range and the connection is refused.
    """
    best: tuple[IPNetwork, T] | None = None
    for network, value in ranges:
        if network_contains(network, address) and (
            best is None or network.prefixlen > best[0].prefixlen
        ):
            best = (network, value)
    return best


# -- special-purpose prefixes (RFC 6890) -----------------------------------------------------------
#
# One row per range of the IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890 §2.2,
# with their later additions) and the classic martians, with the verdict for a VIP announced by a
# server: a reason (never installed, whatever `accept` says) or None (a VIP may live there). The
# most specific row holding a prefix decides, so an allowed row can carve a hole in a refused
# one. A prefix that covers a refused row (e.g. 0.0.0.0/1 covers 127.0.0.0/8) is refused too;
# the default route (length 0) is left to the caller (``allow_default``).
_SPECIAL: tuple[tuple[str, str | None], ...] = (
    # --- IPv4 ---
    # "This network" (RFC 791 §3.2, RFC 1122 §3.2.1.3): a source-only address, never forwarded.
    ("0.0.0.0/8", "'this network' (RFC 1122), not forwardable"),
    # Private-use (RFC 1918): the usual home of internal VIPs.
    ("10.0.0.0/8", None),
    # Shared address space (RFC 6598): forwardable inside a provider, used for internal services.
    ("100.64.0.0/10", None),
    # Loopback (RFC 1122 §3.2.1.3): never leaves a host.
    ("127.0.0.0/8", "loopback (RFC 1122)"),
    # Link-local (RFC 3927): not forwardable by definition.
    ("169.254.0.0/16", "link-local (RFC 3927), not forwardable"),
    # Private-use (RFC 1918).
    ("172.16.0.0/12", None),
    # IETF protocol assignments (RFC 6890 §2.2.2): DS-Lite, NAT64 discovery, ...: not services.
    ("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
    # ... except the global anycast service addresses in it: PCP (RFC 7723), TURN (RFC 8155).
    ("192.0.0.9/32", None),
    ("192.0.0.10/32", None),
    # Documentation TEST-NET-1/2/3 (RFC 5737): used by the tests and the lab.
    ("192.0.2.0/24", None),
    ("198.51.100.0/24", None),
    ("203.0.113.0/24", None),
    # 6to4 relay anycast (RFC 3068), deprecated by RFC 7526: nobody serves it any more.
    ("192.88.99.0/24", "deprecated 6to4 relay anycast (RFC 7526)"),
    # Private-use (RFC 1918).
    ("192.168.0.0/16", None),
    # Benchmarking (RFC 2544): used by the tests and the lab.
    ("198.18.0.0/15", None),
    # Multicast (RFC 5771): a unicast route to a group address is meaningless.
    ("224.0.0.0/4", "multicast (RFC 5771)"),
    # Reserved, formerly class E (RFC 1112 §4): not routed by hosts or routers.
    ("240.0.0.0/4", "reserved (RFC 1112)"),
    # Limited broadcast (RFC 919, RFC 8190).
    ("255.255.255.255/32", "limited broadcast (RFC 919)"),
    # --- IPv6 ---
    # IPv4-compatible addresses (deprecated, RFC 4291 §2.5.5.1), holding :: and ::1 below.
    ("::/96", "deprecated IPv4-compatible addresses (RFC 4291)"),
    # Unspecified address (RFC 4291 §2.5.2).
    ("::/128", "unspecified address (RFC 4291)"),
    # Loopback (RFC 4291 §2.5.3).
    ("::1/128", "loopback (RFC 4291)"),
    # IPv4-mapped (RFC 4291 §2.5.5.2): an IPv4 socket address, never on the wire.
    ("::ffff:0:0/96", "IPv4-mapped addresses (RFC 4291)"),
    # NAT64 well-known and local-use prefixes (RFC 6052, RFC 8215): a NAT64 gateway can sit
    # behind a load balancer.
    ("64:ff9b::/96", None),
    ("64:ff9b:1::/48", None),
    # Discard-only (RFC 6666): a blackhole by definition.
    ("100::/64", "discard-only (RFC 6666)"),
    # IETF protocol assignments (RFC 2928): Teredo, ORCHID, ...: not services ...
    ("2001::/23", "IETF protocol assignments (RFC 2928)"),
    # ... except the global anycast services and the ranges meant for real use in it:
    # PCP and TURN anycast (RFC 7723, RFC 8155), benchmarking (RFC 5180), AMT (RFC 7450),
    # AS112 (RFC 7535).
    ("2001:1::1/128", None),
    ("2001:1::2/128", None),
    ("2001:2::/48", None),
    ("2001:3::/32", None),
    ("2001:4:112::/48", None),
    # Documentation (RFC 3849): used by the tests and the lab.
    ("2001:db8::/32", None),
    # 6to4 (RFC 3056): addresses derived from IPv4 ones, relays deprecated (RFC 7526).
    ("2002::/16", "6to4 (RFC 3056), deprecated"),
    # Documentation (RFC 9637).
    ("3fff::/20", None),
    # SRv6 segment identifiers (RFC 9602): not host addresses.
    ("5f00::/16", "SRv6 SIDs (RFC 9602)"),
    # Unique local addresses (RFC 4193): the IPv6 private range, internal VIPs.
    ("fc00::/7", None),
    # Link-local (RFC 4291 §2.5.6): not forwardable.
    ("fe80::/10", "link-local (RFC 4291), not forwardable"),
    # Site-local, deprecated (RFC 3879).
    ("fec0::/10", "deprecated site-local (RFC 3879)"),
    # Multicast (RFC 4291 §2.7).
    ("ff00::/8", "multicast (RFC 4291)"),
)

_SPECIAL_TABLE: tuple[tuple[Prefix, str | None], ...] = tuple(
    sorted(
        ((Prefix.parse(text), reason) for text, reason in _SPECIAL),
        key=lambda row: -row[0].length,  # most specific first
    )
)
# Lookup index: per family and per value of the prefix's first _TOP bits (8 for IPv4, 16 for
# IPv6), the rows that can hold such a prefix, as [(shift, {address >> shift: (row, reason)})]
# most specific first: a /32 or /128 costs one probe per distinct row length in its bucket
# (none at all for most global unicast).
_TOP = {AFI.IPV4: 8, AFI.IPV6: 16}
_Levels = list[tuple[int, dict[int, tuple[Prefix, str | None]]]]
_SPECIAL_INDEX: dict[tuple[AFI, int], _Levels] = {}


def _index_row(row: Prefix, reason: str | None) -> None:
    afi, address, length = row
    bits, top = _BITS[afi], _TOP[afi]
    first = address >> (bits - top)
    span = 1 << max(0, top - length)  # a row shorter than _TOP bits fills several buckets
    for bucket in range(first, first + span):
        levels = _SPECIAL_INDEX.setdefault((afi, bucket), [])
        shift = bits - length
        if not levels or levels[-1][0] != shift:
            levels.append((shift, {}))
        levels[-1][1][address >> shift] = (row, reason)


for _row, _reason in _SPECIAL_TABLE:
    _index_row(_row, _reason)


def _inside(inner: Prefix, outer: Prefix) -> bool:
    """True if `inner` is equal to or more specific than `outer` (same family)."""
    return (
        inner[0] == outer[0]
        and inner[2] >= outer[2]
        and (inner[1] & _mask(inner[0], outer[2])) == outer[1]
    )


def special_purpose(prefix: Prefix) -> str | None:
    """Why `prefix` can never be a VIP (RFC 6890 special-purpose or martian), or None.

    The default route (length 0) gives None: whether it is accepted is ``allow_default``'s call.
    """
    afi, address, length = prefix
    if length == 0:
        return None
    bits, top = _BITS[afi], _TOP[afi]
    if length >= top:
        for shift, level in _SPECIAL_INDEX.get((afi, address >> (bits - top)), ()):
            if bits - shift <= length:
                found = level.get(address >> shift)
                if found is not None:
                    row, reason = found
                    return None if reason is None else f"{row} {reason}"
    else:  # short prefixes are rare: scan the table (most specific row first)
        for row, reason in _SPECIAL_TABLE:
            if _inside(prefix, row):
                return None if reason is None else f"{row} {reason}"
    for row, reason in _SPECIAL_TABLE:
        if row[2] <= length:
            break  # the rest are no more specific than `prefix`: none can be inside it
        if reason is not None and _inside(row, prefix):
            return f"covers {row} {reason}"
    return None


def gateway_refusal(address: IPAddress) -> str | None:
    """Why the kernel (or sense) refuses `address` as a gateway whatever the subnets, or None:
    unspecified, loopback, multicast, limited broadcast, link-local, IPv4-mapped, 'this
    network', reserved."""
    if address.is_unspecified:
        return "unspecified address"
    if address.is_loopback:
        return "loopback address"
    if address.is_multicast:
        return "multicast address"
    if address.is_link_local:
        return "link-local address"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return "IPv4-mapped address"
        return None
    first = int(address) >> 24
    if first == 0:
        return "'this network' address (0.0.0.0/8)"
    if first >= 240:
        return "limited broadcast" if int(address) == 0xFFFFFFFF else "reserved address (240/4)"
    return None
