"""Linux nexthop objects and routes that use them, over rtnetlink.

pyroute2 0.9.7 knows neither the nexthop messages (RTM_NEWNEXTHOP/DELNEXTHOP/GETNEXTHOP = 104/
105/106, RTM_*NEXTHOPBUCKET = 116/117/118) nor their NHA_* attributes, nor RTA_NH_ID (30) on
routes. This module defines them on pyroute2's netlink message classes (`nlmsg`, `nla`) and
talks to the kernel over one plain NETLINK_ROUTE socket opened in the target namespace.

Numbers follow the kernel UAPI headers `linux/nexthop.h` and `linux/rtnetlink.h`:

    struct nhmsg { u8 nh_family; u8 nh_scope; u8 nh_protocol; u8 resvd; u32 nh_flags; };
    struct nexthop_grp { u32 id; u8 weight; u8 resvd1; u16 resvd2; };   weight on the wire
                                                                         is weight - 1
    NHA_ID=1 NHA_GROUP=2 NHA_GROUP_TYPE=3 (u16: 0 mpath, 1 resilient) NHA_BLACKHOLE=4 NHA_OIF=5
    NHA_GATEWAY=6 NHA_ENCAP_TYPE=7 NHA_ENCAP=8 NHA_GROUPS=9 NHA_MASTER=10 NHA_FDB=11
    NHA_RES_GROUP=12 (nested: BUCKETS u16=1, IDLE_TIMER u32=2, UNBALANCED_TIMER u32=3,
    UNBALANCED_TIME u64=4; timers in clock_t = 1/100 s) NHA_RES_BUCKET=13 (nested: INDEX u16=1,
    IDLE_TIME u64=2, NH_ID u32=3).

Everything here is blocking; one `NexthopSocket` must be used by one thread at a time.
`NexthopMonitor` is a second socket subscribed to the multicast groups (RTNLGRP_NEXTHOP = 32,
RTNLGRP_IPV4_ROUTE = 7, RTNLGRP_IPV6_ROUTE = 11); it has a `fileno()` for selectors/asyncio
`add_reader` and a non-blocking `read()`.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum

from pyroute2.netlink import (
    NETLINK_ADD_MEMBERSHIP,
    NETLINK_EXT_ACK,
    NETLINK_ROUTE,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    SOL_NETLINK,
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
    """Map a multicast notification to an event; None for anything else."""
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
        if kind == NLMSG_ERROR:
            msg: nlmsg = nlmsgerr(data, offset=offset)
            msg.decode()
            msg["ext_ack"] = _ext_ack_message(data, offset, length)
        else:
            msg = _MSG_CLASSES.get(kind, nlmsg)(data, offset=offset)
            msg.decode()
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


def _open_socket(netns: str | None) -> socket.socket:
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    from pyroute2.netns import create_socket

    if not os.path.exists(netns if "/" in netns else f"/var/run/netns/{netns}"):
        raise FileNotFoundError(errno.ENOENT, f"no network namespace {netns!r}")

    # flags=0: never create the namespace as a side effect (pyroute2's default is O_CREAT)
    sock: socket.socket = create_socket(
        netns=netns,
        family=socket.AF_NETLINK,
        socket_type=socket.SOCK_RAW,
        proto=NETLINK_ROUTE,
        flags=0,
    )
    return sock


class NexthopSocket:
    """Blocking request/response rtnetlink socket for nexthops and nexthop routes.

    `netns` is a name under /var/run/netns (or None for the caller's namespace).
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._sock = _open_socket(netns)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self._sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> NexthopSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- low level ------------------------------------------------------------------------
    def request(self, msg: nlmsg, msg_type: int, flags: int) -> list[nlmsg]:
        """Send one request and collect its replies (until DONE or the ACK); raise on error."""
        self._seq = (self._seq % 0x7FFFFFFF) + 1
        seq = self._seq
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = seq
        msg["header"]["pid"] = 0
        msg.encode()
        self._sock.send(bytes(msg.data))
        replies: list[nlmsg] = []
        dump = bool(flags & NLM_F_DUMP)
        while True:
            data = self._sock.recv(1 << 20)
            for reply in parse_messages(data):
                header = reply["header"]
                if header["sequence_number"] != seq:
                    continue
                if header["type"] == NLMSG_ERROR:
                    code = -reply["error"]
                    if code:
                        text = reply.get("ext_ack")
                        detail = f": {text}" if text else ""
                        raise NexthopError(code, f"{os.strerror(code)}{detail}")
                    return replies
                if header["type"] == NLMSG_DONE:
                    return replies
                replies.append(reply)
                if not dump and not flags & NLM_F_ACK:
                    return replies

    def _change(self, msg: nlmsg, msg_type: int, replace: bool) -> None:
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
        flags |= NLM_F_REPLACE if replace else NLM_F_EXCL
        self.request(msg, msg_type, flags)

    def link_index(self, ifname: str) -> int:
        """Interface index of `ifname` in this socket's namespace (ENODEV if none)."""
        msg = ifinfmsg()
        msg["index"] = 0
        msg["attrs"] = [["IFLA_IFNAME", ifname]]
        replies = self.request(msg, RTM_GETLINK, NLM_F_REQUEST)
        if not replies:
            raise NexthopError(errno.ENODEV, f"no interface {ifname!r}")
        return int(replies[0]["index"])

    # -- nexthops -------------------------------------------------------------------------
    def add_nexthop(
        self,
        nh_id: int,
        *,
        gateway: IPAddress | str,
        oif: int,
        protocol: int,
        replace: bool = False,
    ) -> None:
        """Create (or with replace=True create-or-replace) a single gateway nexthop."""
        msg = nexthop_request(nh_id, gateway=gateway, oif=oif, protocol=protocol)
        self._change(msg, RTM_NEWNEXTHOP, replace)

    def add_group(
        self,
        nh_id: int,
        *,
        members: Iterable[tuple[int, int]],
        protocol: int,
        group_type: GroupType = GroupType.RES,
        buckets: int = 512,
        idle_timer: float = 120.0,
        unbalanced_timer: float = 0.0,
        replace: bool = False,
    ) -> None:
        """Create or replace a group. The kernel refuses a replace that changes the group type
        or the bucket count (EINVAL); membership, weights and timers can change in place."""
        msg = group_request(
            nh_id,
            members=members,
            protocol=protocol,
            group_type=group_type,
            buckets=buckets,
            idle_timer=idle_timer,
            unbalanced_timer=unbalanced_timer,
        )
        self._change(msg, RTM_NEWNEXTHOP, replace)

    def del_nexthop(self, nh_id: int) -> None:
        """Delete a nexthop or group by id. Deleting a group also deletes routes using it."""
        msg = nhmsg()
        msg["family"] = socket.AF_UNSPEC
        msg["attrs"] = [["NHA_ID", nh_id]]
        self.request(msg, RTM_DELNEXTHOP, NLM_F_REQUEST | NLM_F_ACK)

    def get_nexthop(self, nh_id: int) -> Nexthop | None:
        msg = nhmsg()
        msg["family"] = socket.AF_UNSPEC
        msg["attrs"] = [["NHA_ID", nh_id]]
        try:
            replies = self.request(msg, RTM_GETNEXTHOP, NLM_F_REQUEST)
        except NexthopError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return decode_nexthop(replies[0]) if replies else None

    def dump_nexthops(self, protocol: int | None = None) -> list[Nexthop]:
        """All nexthop objects of the namespace (filtered by protocol here, not in the kernel)."""
        msg = nhmsg()
        msg["family"] = socket.AF_UNSPEC
        replies = self.request(msg, RTM_GETNEXTHOP, NLM_F_REQUEST | NLM_F_DUMP)
        found = [decode_nexthop(m) for m in replies if m["header"]["type"] == RTM_NEWNEXTHOP]
        return [n for n in found if protocol is None or n.protocol == protocol]

    def dump_buckets(self, group_id: int) -> list[Bucket]:
        """RTM_GETNEXTHOPBUCKET dump of one resilient group."""
        msg = nhmsg()
        msg["family"] = socket.AF_UNSPEC
        msg["attrs"] = [["NHA_ID", group_id]]
        replies = self.request(msg, RTM_GETNEXTHOPBUCKET, NLM_F_REQUEST | NLM_F_DUMP)
        return [decode_bucket(m) for m in replies if m["header"]["type"] == RTM_NEWNEXTHOPBUCKET]

    def bucket_share(self, group_id: int) -> dict[int, int]:
        """How many buckets of a resilient group each member nexthop id holds."""
        share: dict[int, int] = {}
        for bucket in self.dump_buckets(group_id):
            share[bucket.nh_id] = share.get(bucket.nh_id, 0) + 1
        return share

    # -- routes ---------------------------------------------------------------------------
    def add_route(
        self,
        dst: IPNetwork | str,
        *,
        nh_id: int,
        protocol: int,
        table: int = RT_TABLE_MAIN,
        replace: bool = False,
    ) -> None:
        """Create (or replace) a unicast route `dst nhid nh_id proto protocol table table`."""
        msg = route_request(dst, nh_id=nh_id, protocol=protocol, table=table)
        self._change(msg, RTM_NEWROUTE, replace)

    def del_route(self, dst: IPNetwork | str, *, protocol: int, table: int = RT_TABLE_MAIN) -> None:
        """Delete the route to `dst` owned by `protocol` (the kernel matches the protocol)."""
        msg = route_request(dst, nh_id=None, protocol=protocol, table=table)
        self.request(msg, RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK)

    def dump_routes(self, protocol: int | None = None, table: int | None = None) -> list[Route]:
        """IPv4 and IPv6 unicast routes (filtered here by protocol and table)."""
        routes: list[Route] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            msg = rtmsg_nh()
            msg["family"] = family
            replies = self.request(msg, RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP)
            for m in replies:
                if m["header"]["type"] != RTM_NEWROUTE:
                    continue
                route = decode_route(m)
                if protocol is not None and route.protocol != protocol:
                    continue
                if table is not None and route.table != table:
                    continue
                routes.append(route)
        return routes


class NexthopMonitor:
    """Multicast listener for nexthop and route notifications (blocking or non-blocking)."""

    GROUPS = (RTNLGRP_NEXTHOP, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE)

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._sock = _open_socket(netns)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.bind((0, 0))
        for group in self.GROUPS:
            self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        self._sock.setblocking(False)
        self.overruns = 0  # times the socket buffer overflowed (ENOBUFS): events were lost

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> NexthopMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self) -> list[KernelEvent]:
        """Everything pending, without blocking. After ENOBUFS (lost events) `overruns` grows:
        the caller should then resynchronise by dumping."""
        events: list[KernelEvent] = []
        while True:
            try:
                data = self._sock.recv(1 << 20)
            except BlockingIOError:
                return events
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                raise
            for msg in parse_messages(data):
                event = decode_event(msg)
                if event is not None:
                    events.append(event)

    def wait(self, timeout: float | None) -> list[KernelEvent]:
        """Block up to `timeout` seconds for notifications, then return all pending ones."""
        ready, _, _ = select.select([self._sock], [], [], timeout)
        return self.read() if ready else []
