"""Nexthop netlink messages on pyroute2's message classes: codec only, no sockets.

pyroute2 0.9.7 knows neither the nexthop messages (RTM_NEWNEXTHOP/DELNEXTHOP/GETNEXTHOP = 104/
105/106, RTM_*NEXTHOPBUCKET = 116/117/118) nor their NHA_* attributes, nor RTA_NH_ID (30) on
routes. They are defined here as `nlmsg`/`nla` subclasses, with plain decoded dataclasses and
request builders. `bgplb.linux.nexthop` is the socket layer on top.

Numbers follow the kernel UAPI headers `linux/nexthop.h` and `linux/rtnetlink.h`:

    struct nhmsg { u8 nh_family; u8 nh_scope; u8 nh_protocol; u8 resvd; u32 nh_flags; };
    struct nexthop_grp { u32 id; u8 weight; u8 resvd1; u16 resvd2; };   weight on the wire
                                                                         is weight - 1
    NHA_ID=1 NHA_GROUP=2 NHA_GROUP_TYPE=3 (u16: 0 mpath, 1 resilient) NHA_BLACKHOLE=4 NHA_OIF=5
    NHA_GATEWAY=6 NHA_ENCAP_TYPE=7 NHA_ENCAP=8 NHA_GROUPS=9 NHA_MASTER=10 NHA_FDB=11
    NHA_RES_GROUP=12 (nested: BUCKETS u16=1, IDLE_TIMER u32=2, UNBALANCED_TIMER u32=3,
    UNBALANCED_TIME u64=4; timers in clock_t = 1/100 s) NHA_RES_BUCKET=13 (nested: INDEX u16=1,
    IDLE_TIME u64=2, NH_ID u32=3); kernel 6.9+ adds NHA_OP_FLAGS=14 .. NHA_HW_STATS_USED=17.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum

from pyroute2.netlink import (
    NLMSG_ERROR,
    nla,
    nla_base_string,
    nlmsg,
    nlmsgerr,
)
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

# --- message types and groups (linux/rtnetlink.h) -------------------------------------------
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTM_NEWNEXTHOP = 104
RTM_DELNEXTHOP = 105
RTM_GETNEXTHOP = 106
RTM_NEWNEXTHOPBUCKET = 116
RTM_DELNEXTHOPBUCKET = 117
RTM_GETNEXTHOPBUCKET = 118

RTNLGRP_IPV4_ROUTE = 7
RTNLGRP_IPV6_ROUTE = 11
RTNLGRP_NEXTHOP = 32

RTA_NH_ID = 30
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
NETLINK_CAP_ACK = 10
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200

USER_HZ = 100  # clock_t unit of the NHA_RES_GROUP timers


class GroupType(IntEnum):
    """NHA_GROUP_TYPE values."""

    MPATH = 0
    RES = 1


class NexthopError(OSError):
    """The kernel refused a request; `errno` is set, the message carries the extended ack."""


# --- message classes ---------------------------------------------------------------------------
class nexthop_grp_array(nla_base_string):  # type: ignore[misc]
    """NHA_GROUP payload: array of struct nexthop_grp; value is a tuple of (id, weight 1..256)."""

    __slots__ = ()
    _entry = struct.Struct("=IBBH")

    def encode(self) -> None:
        entries = []
        for nh_id, weight in self.value:
            if not 1 <= weight <= 256:
                raise ValueError(f"nexthop weight {weight} outside 1..256")
            entries.append(self._entry.pack(nh_id, weight - 1, 0, 0))
        self["value"] = b"".join(entries)
        nla_base_string.encode(self)

    def decode(self) -> None:
        nla_base_string.decode(self)
        raw = self["value"]
        size = self._entry.size
        self.value = tuple(  # type: ignore[misc]
            (nh_id, weight + 1)
            for nh_id, weight, _r1, _r2 in (
                self._entry.unpack_from(raw, off) for off in range(0, len(raw) - size + 1, size)
            )
        )


class nhmsg(nlmsg):  # type: ignore[misc]
    """struct nhmsg + NHA_* attributes (linux/nexthop.h)."""

    __slots__ = ()
    _nlmsg_base__compiled_nla = False
    prefix = "NHA_"
    fields = (
        ("family", "B"),
        ("scope", "B"),
        ("protocol", "B"),
        ("resvd", "B"),
        ("flags", "I"),
    )
    nla_map = (
        (0, "NHA_UNSPEC", "none"),
        (1, "NHA_ID", "uint32"),
        (2, "NHA_GROUP", "nexthop_grp_array"),
        (3, "NHA_GROUP_TYPE", "uint16"),
        (4, "NHA_BLACKHOLE", "flag"),
        (5, "NHA_OIF", "uint32"),
        (6, "NHA_GATEWAY", "ipaddr"),
        (7, "NHA_ENCAP_TYPE", "uint16"),
        (8, "NHA_ENCAP", "hex"),
        (9, "NHA_GROUPS", "flag"),
        (10, "NHA_MASTER", "uint32"),
        (11, "NHA_FDB", "flag"),
        (12, "NHA_RES_GROUP", "res_group|nested"),
        (13, "NHA_RES_BUCKET", "res_bucket|nested"),
        (14, "NHA_OP_FLAGS", "uint32"),  # newer than Debian 12's header (kernel 6.9+)
        (15, "NHA_GROUP_STATS", "hex"),
        (16, "NHA_HW_STATS_ENABLE", "uint32"),
        (17, "NHA_HW_STATS_USED", "uint32"),
    )

    nexthop_grp_array = nexthop_grp_array

    class res_group(nla):  # type: ignore[misc]
        __slots__ = ()
        prefix = "NHA_RES_GROUP_"
        nla_map = (
            (0, "NHA_RES_GROUP_PAD", "none"),
            (1, "NHA_RES_GROUP_BUCKETS", "uint16"),
            (2, "NHA_RES_GROUP_IDLE_TIMER", "uint32"),
            (3, "NHA_RES_GROUP_UNBALANCED_TIMER", "uint32"),
            (4, "NHA_RES_GROUP_UNBALANCED_TIME", "uint64"),
        )

    class res_bucket(nla):  # type: ignore[misc]
        __slots__ = ()
        prefix = "NHA_RES_BUCKET_"
        nla_map = (
            (0, "NHA_RES_BUCKET_PAD", "none"),
            (1, "NHA_RES_BUCKET_INDEX", "uint16"),
            (2, "NHA_RES_BUCKET_IDLE_TIME", "uint64"),
            (3, "NHA_RES_BUCKET_NH_ID", "uint32"),
        )


class rtmsg_nh(rtmsg):  # type: ignore[misc]
    """pyroute2's rtmsg with the attributes after RTA_EXPIRES (23), up to RTA_NH_ID (30)."""

    __slots__ = ()
    _nlmsg_base__compiled_nla = False
    nla_map = (
        *rtmsg.nla_map,
        ("RTA_PAD", "hex"),
        ("RTA_UID", "uint32"),
        ("RTA_TTL_PROPAGATE", "uint8"),
        ("RTA_IP_PROTO", "uint8"),
        ("RTA_SPORT", "uint16"),
        ("RTA_DPORT", "uint16"),
        ("RTA_NH_ID", "uint32"),
    )


_MSG_CLASSES: dict[int, type[nlmsg]] = {
    RTM_NEWLINK: ifinfmsg,
    RTM_NEWROUTE: rtmsg_nh,
    RTM_DELROUTE: rtmsg_nh,
    RTM_GETROUTE: rtmsg_nh,
    RTM_NEWNEXTHOP: nhmsg,
    RTM_DELNEXTHOP: nhmsg,
    RTM_GETNEXTHOP: nhmsg,
    RTM_NEWNEXTHOPBUCKET: nhmsg,
    RTM_DELNEXTHOPBUCKET: nhmsg,
    RTM_GETNEXTHOPBUCKET: nhmsg,
}


# --- decoded objects ---------------------------------------------------------------------------
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ResilientParams:
    """NHA_RES_GROUP of a resilient group; timers in seconds (kernel unit 1/100 s)."""

    buckets: int
    idle_timer: float
    unbalanced_timer: float
    unbalanced_time: float = 0.0  # read only: how long the group has been unbalanced


@dataclass(frozen=True, slots=True)
class Nexthop:
    """One kernel nexthop object: a single nexthop (gateway/oif) or a group (members)."""

    id: int
    protocol: int
    family: int = socket.AF_UNSPEC
    gateway: IPAddress | None = None
    oif: int | None = None
    blackhole: bool = False
    flags: int = 0
    members: tuple[tuple[int, int], ...] = ()  # (nexthop id, weight 1..256)
    group_type: GroupType | None = None
    resilient: ResilientParams | None = None

    @property
    def is_group(self) -> bool:
        return self.group_type is not None


@dataclass(frozen=True, slots=True)
class Route:
    """A route as far as bgplb cares: destination, table, protocol, nexthop id (None: inline)."""

    dst: IPNetwork
    table: int
    protocol: int
    nh_id: int | None
    type: int = RTN_UNICAST


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket of a resilient group (RTM_NEWNEXTHOPBUCKET)."""

    group_id: int
    index: int
    nh_id: int
    idle_time: float  # seconds since the bucket last carried traffic


@dataclass(frozen=True, slots=True)
class NexthopChanged:
    """A RTM_NEWNEXTHOP notification (created or replaced)."""

    nexthop: Nexthop


@dataclass(frozen=True, slots=True)
class NexthopDeleted:
    """A RTM_DELNEXTHOP notification."""

    nexthop: Nexthop


@dataclass(frozen=True, slots=True)
class RouteChanged:
    route: Route


@dataclass(frozen=True, slots=True)
class RouteDeleted:
    route: Route


KernelEvent = NexthopChanged | NexthopDeleted | RouteChanged | RouteDeleted


def _attr(msg: nlmsg, name: str, default: object = None) -> object:
    value = msg.get_attr(name)
    return default if value is None else value


def decode_nexthop(msg: nlmsg) -> Nexthop:
    """Turn a decoded nhmsg into a `Nexthop`."""
    gw = msg.get_attr("NHA_GATEWAY")
    group = msg.get_attr("NHA_GROUP")
    res = msg.get_attr("NHA_RES_GROUP")
    group_type: GroupType | None = None
    resilient: ResilientParams | None = None
    if group is not None:
        group_type = GroupType(int(_attr(msg, "NHA_GROUP_TYPE", 0)))  # type: ignore[call-overload]
    if res is not None:
        resilient = ResilientParams(
            buckets=int(res.get_attr("NHA_RES_GROUP_BUCKETS") or 0),
            idle_timer=(res.get_attr("NHA_RES_GROUP_IDLE_TIMER") or 0) / USER_HZ,
            unbalanced_timer=(res.get_attr("NHA_RES_GROUP_UNBALANCED_TIMER") or 0) / USER_HZ,
            unbalanced_time=(res.get_attr("NHA_RES_GROUP_UNBALANCED_TIME") or 0) / USER_HZ,
        )
    return Nexthop(
        id=int(msg.get_attr("NHA_ID") or 0),
        protocol=msg["protocol"],
        family=msg["family"],
        gateway=ipaddress.ip_address(gw) if gw else None,
        oif=msg.get_attr("NHA_OIF"),
        blackhole=msg.get_attr("NHA_BLACKHOLE") is not None,
        flags=msg["flags"],
        members=tuple((int(m[0]), int(m[1])) for m in group) if group is not None else (),
        group_type=group_type,
        resilient=resilient,
    )


def decode_route(msg: nlmsg) -> Route:
    """Turn a decoded rtmsg_nh into a `Route`."""
    family = msg["family"]
    dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
    table = msg.get_attr("RTA_TABLE") or msg["table"]
    return Route(
        dst=ipaddress.ip_network(f"{dst}/{msg['dst_len']}"),
        table=table,
        protocol=msg["proto"],
        nh_id=msg.get_attr("RTA_NH_ID"),
        type=msg["type"],
    )


def decode_bucket(msg: nlmsg) -> Bucket:
    b = msg.get_attr("NHA_RES_BUCKET")
    return Bucket(
        group_id=int(msg.get_attr("NHA_ID") or 0),
        index=int(b.get_attr("NHA_RES_BUCKET_INDEX") or 0),
        nh_id=int(b.get_attr("NHA_RES_BUCKET_NH_ID") or 0),
        idle_time=(b.get_attr("NHA_RES_BUCKET_IDLE_TIME") or 0) / USER_HZ,
    )


def decode_event(msg: nlmsg) -> KernelEvent | None:
    """Map a multicast notification to an event; None for anything else (or malformed)."""
    try:
        return _decode_event(msg)
    except (KeyError, TypeError, ValueError, IndexError, struct.error):
        return None


def _decode_event(msg: nlmsg) -> KernelEvent | None:
    kind = msg["header"]["type"]
    if kind == RTM_NEWNEXTHOP:
        return NexthopChanged(decode_nexthop(msg))
    if kind == RTM_DELNEXTHOP:
        return NexthopDeleted(decode_nexthop(msg))
    if kind == RTM_NEWROUTE and msg["family"] in (socket.AF_INET, socket.AF_INET6):
        return RouteChanged(decode_route(msg))
    if kind == RTM_DELROUTE and msg["family"] in (socket.AF_INET, socket.AF_INET6):
        return RouteDeleted(decode_route(msg))
    return None


def _ext_ack_message(data: bytes, offset: int, length: int) -> str | None:
    """NLMSGERR_ATTR_MSG of an NLMSG_ERROR (pyroute2's nlmsgerr does not skip the echoed
    request header): error is at +16, the echoed request at +20, TLVs after it."""
    (flags,) = struct.unpack_from("=H", data, offset + 6)
    if not flags & NLM_F_ACK_TLVS:
        return None
    echoed = 16 if flags & NLM_F_CAPPED else struct.unpack_from("=I", data, offset + 20)[0]
    pos = offset + 20 + ((echoed + 3) & ~3)
    end = offset + length
    while pos + 4 <= end:
        tlv_len, tlv_type = struct.unpack_from("=HH", data, pos)
        if tlv_len < 4:
            break
        if tlv_type & 0x3FFF == 1:  # NLMSGERR_ATTR_MSG
            return bytes(data[pos + 4 : pos + tlv_len]).split(b"\0", 1)[0].decode(errors="replace")
        pos += (tlv_len + 3) & ~3
    return None


def parse_messages(data: bytes) -> Iterator[nlmsg]:
    """Split a netlink datagram into decoded messages (nexthop, route, error, done)."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16 or offset + length > len(data):
            break
        try:
            if kind == NLMSG_ERROR:
                msg: nlmsg = nlmsgerr(data, offset=offset)
                msg.decode()
                msg["ext_ack"] = _ext_ack_message(data, offset, length)
            else:
                msg = _MSG_CLASSES.get(kind, nlmsg)(data, offset=offset)
                msg.decode()
        except Exception:  # pyroute2 raises many types on a malformed message: skip it
            msg = None
        if msg is not None:
            yield msg
        offset += (length + 3) & ~3


# --- encoding requests -------------------------------------------------------------------------
def _family_of(addr: IPAddress | IPNetwork) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


def nexthop_request(
    nh_id: int, *, gateway: IPAddress | str, oif: int, protocol: int, onlink: bool = False
) -> nlmsg:
    """RTM_NEWNEXTHOP body for a single gateway nexthop."""
    gw = ipaddress.ip_address(gateway)
    msg = nhmsg()
    msg["family"] = _family_of(gw)
    msg["scope"] = 0
    msg["protocol"] = protocol
    msg["resvd"] = 0
    msg["flags"] = 4 if onlink else 0  # RTNH_F_ONLINK
    msg["attrs"] = [["NHA_ID", nh_id], ["NHA_GATEWAY", str(gw)], ["NHA_OIF", oif]]
    return msg


def group_request(
    nh_id: int,
    *,
    members: Iterable[tuple[int, int]],
    protocol: int,
    group_type: GroupType = GroupType.RES,
    buckets: int = 512,
    idle_timer: float = 120.0,
    unbalanced_timer: float = 0.0,
) -> nlmsg:
    """RTM_NEWNEXTHOP body for a group; the resilient parameters are sent only for RES."""
    msg = nhmsg()
    msg["family"] = socket.AF_UNSPEC
    msg["scope"] = 0
    msg["protocol"] = protocol
    msg["resvd"] = 0
    msg["flags"] = 0
    attrs: list[list[object]] = [
        ["NHA_ID", nh_id],
        ["NHA_GROUP", tuple(members)],
        ["NHA_GROUP_TYPE", int(group_type)],
    ]
    if group_type == GroupType.RES:
        attrs.append(
            [
                "NHA_RES_GROUP",
                {
                    "attrs": [
                        ["NHA_RES_GROUP_BUCKETS", buckets],
                        ["NHA_RES_GROUP_IDLE_TIMER", round(idle_timer * USER_HZ)],
                        ["NHA_RES_GROUP_UNBALANCED_TIMER", round(unbalanced_timer * USER_HZ)],
                    ]
                },
            ]
        )
    msg["attrs"] = attrs
    return msg


def route_request(
    dst: IPNetwork | str, *, nh_id: int | None, protocol: int, table: int = RT_TABLE_MAIN
) -> nlmsg:
    """RTM_NEWROUTE / RTM_DELROUTE body for a route that points to a nexthop object."""
    net = ipaddress.ip_network(dst)
    msg = rtmsg_nh()
    msg["family"] = _family_of(net)
    msg["dst_len"] = net.prefixlen
    msg["src_len"] = 0
    msg["tos"] = 0
    msg["table"] = table if table < 256 else 0
    msg["proto"] = protocol
    msg["scope"] = RT_SCOPE_UNIVERSE
    msg["type"] = RTN_UNICAST
    msg["flags"] = 0
    attrs: list[list[object]] = [["RTA_DST", str(net.network_address)], ["RTA_TABLE", table]]
    if nh_id is not None:
        attrs.append(["RTA_NH_ID", nh_id])
    msg["attrs"] = attrs
    return msg
