"""Linux nexthop objects and the routes that use them, over one rtnetlink socket.

`NexthopSocket` does blocking request/response (one thread at a time): nexthops, groups
(multipath or resilient), routes `dst nhid N proto P table T`, resilient bucket dumps.
`NexthopMonitor` is a second socket subscribed to RTNLGRP_NEXTHOP (32), RTNLGRP_IPV4_ROUTE (7)
and RTNLGRP_IPV6_ROUTE (11); it has a `fileno()` for selectors / asyncio `add_reader` and a
non-blocking `read()`. The messages themselves are in `bgplb.linux.nexthop_msg` (re-exported).

For many changes at once, `NexthopSocket.transact` sends hand-encoded requests
(`bgplb.linux.nlbatch.encode_*`, re-exported here) in batches and returns one result per request.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
from collections.abc import Iterable, Iterator, Sequence

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
    nlmsg,
)
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from bgplb.linux import nlbatch, sockfilter
from bgplb.linux.nexthop_msg import *  # noqa: F403  (re-export the codec)
from bgplb.linux.nexthop_msg import (
    NETLINK_CAP_ACK,
    RT_TABLE_MAIN,
    RTM_DELNEXTHOP,
    RTM_DELROUTE,
    RTM_GETLINK,
    RTM_GETNEXTHOP,
    RTM_GETNEXTHOPBUCKET,
    RTM_GETROUTE,
    RTM_NEWNEXTHOP,
    RTM_NEWNEXTHOPBUCKET,
    RTM_NEWROUTE,
    RTNLGRP_IPV4_ROUTE,
    RTNLGRP_IPV6_ROUTE,
    RTNLGRP_NEXTHOP,
    Bucket,
    GroupType,
    IPAddress,
    IPNetwork,
    KernelEvent,
    Nexthop,
    NexthopError,
    Route,
    decode_bucket,
    decode_event,
    decode_nexthop,
    decode_route,
    group_request,
    nexthop_request,
    nhmsg,
    parse_messages,
    route_request,
    rtmsg_nh,
)
from bgplb.linux.nlbatch import (  # re-exported
    NetlinkOverrun as NetlinkOverrun,
)
from bgplb.linux.nlbatch import (
    encode_del_nexthop as encode_del_nexthop,
)
from bgplb.linux.nlbatch import (
    encode_del_route as encode_del_route,
)
from bgplb.linux.nlbatch import (
    encode_group as encode_group,
)
from bgplb.linux.nlbatch import (
    encode_nexthop as encode_nexthop,
)
from bgplb.linux.nlbatch import (
    encode_route as encode_route,
)


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


log = logging.getLogger("bgplb.linux")

BUFFER_SIZE = 4 << 20  # SO_SNDBUF / SO_RCVBUF of a NexthopSocket (answers of big batches)
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33  # asm-generic/socket.h: above wmem/rmem_max


def _set_buffers(sock: socket.socket, size: int) -> None:
    """Send and receive buffers of `size`; beyond net.core.[rw]mem_max if allowed (root)."""
    for force, plain in ((_SO_SNDBUFFORCE, socket.SO_SNDBUF), (_SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


class NexthopSocket:
    """Blocking request/response rtnetlink socket for nexthops and nexthop routes.

    `netns` is a name under /var/run/netns (or None for the caller's namespace);
    `buffer_size` is its SO_SNDBUF and SO_RCVBUF (forced above the sysctl maximum for root).
    """

    def __init__(self, netns: str | None = None, *, buffer_size: int = BUFFER_SIZE) -> None:
        self.netns = netns
        self._sock = _open_socket(netns)
        _set_buffers(self._sock, buffer_size)
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

    @property
    def portid(self) -> int:
        """The netlink port id the kernel gave this socket: notifications of the changes made
        through it carry it as nlmsg_pid (see `NexthopMonitor.ignore_pids`)."""
        pid: int = self._sock.getsockname()[0]
        return pid

    # -- batches (hand-encoded messages, see bgplb.linux.nlbatch) -----------------------------
    def transact(
        self,
        messages: Sequence[bytes],
        *,
        ack_each: bool = False,
        window: int = nlbatch.DEFAULT_WINDOW,
    ) -> list[NexthopError | None]:
        """Apply many change requests (from the `encode_*` functions of bgplb.linux.nlbatch;
        their sequence numbers are overwritten) in as few round trips as fit. Returns, in
        request order, None for each applied request and the NexthopError of each refused one;
        one failure does not stop the others. Raises NetlinkOverrun (an OSError, ENOBUFS) if
        answers were lost: re-read the kernel then."""
        first = self._seq % 0x7FFFFFFF + 1
        if first + len(messages) > 0x7FFFFFFF:
            first = 1
        self._seq = first + len(messages) - 1 if messages else self._seq
        return nlbatch.transact(self._sock, messages, first, ack_each=ack_each, window=window)

    def request_raw(self, message: bytes) -> None:
        """Apply one hand-encoded change request in its own round trip; raise NexthopError."""
        (result,) = self.transact([message])
        if result is not None:
            raise result

    # -- low level ------------------------------------------------------------------------
    def request(self, msg: nlmsg, msg_type: int, flags: int) -> list[nlmsg]:
        """Send one request and collect its replies (until DONE or the ACK); raise on error."""
        replies: list[nlmsg] = []
        for data, offset, length in self._exchange(msg, msg_type, flags):
            replies.extend(parse_messages(data[offset : offset + length]))
        return replies

    def _exchange(self, msg: nlmsg, msg_type: int, flags: int) -> Iterator[tuple[bytes, int, int]]:
        """Send one request; yield its replies undecoded as (datagram, offset, length), until
        DONE or the ACK; raise NexthopError on an error."""
        self._seq = (self._seq % 0x7FFFFFFF) + 1
        seq = self._seq
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = seq
        msg["header"]["pid"] = 0
        msg.encode()
        self._sock.send(bytes(msg.data))
        dump = bool(flags & NLM_F_DUMP)
        while True:
            data = self._sock.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _, rseq = _HEADER.unpack_from(data, offset)
                if length < 16 or offset + length > len(data):
                    break
                here, offset = offset, offset + ((length + 3) & ~3)
                if rseq != seq:
                    continue
                if kind == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", data, here + 16)
                    if err:
                        raise _error(data[here : here + length], -err)
                    return
                if kind == NLMSG_DONE:
                    return
                yield data, here, length
                if not dump and not flags & NLM_F_ACK:
                    return

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
        """How many buckets of a resilient group each member nexthop id holds. The bucket
        messages are counted without decoding them with pyroute2 (a 512-bucket group is 512
        messages: ~1 ms here instead of ~50 ms)."""
        msg = nhmsg()
        msg["family"] = socket.AF_UNSPEC
        msg["attrs"] = [["NHA_ID", group_id]]
        share: dict[int, int] = {}
        flags = NLM_F_REQUEST | NLM_F_DUMP
        for data, offset, length in self._exchange(msg, RTM_GETNEXTHOPBUCKET, flags):
            if _HEADER.unpack_from(data, offset)[1] != RTM_NEWNEXTHOPBUCKET:
                continue
            nh_id = _bucket_nh_id(data, offset, length)
            if nh_id is not None:
                share[nh_id] = share.get(nh_id, 0) + 1
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

    def get_route(self, dst: IPNetwork, table: int = RT_TABLE_MAIN) -> Route | None:
        """The FIB entry of `table` that `dst` matches (RTM_GETROUTE with RTM_F_FIB_MATCH: the
        route itself, not a lookup result), or None. The caller compares its `dst`."""
        msg = route_request(dst, nh_id=None, protocol=0, table=table)
        msg["flags"] = RTM_F_FIB_MATCH
        msg["type"] = 0
        msg["scope"] = 0
        try:
            replies = self.request(msg, RTM_GETROUTE, NLM_F_REQUEST)
        except NexthopError as exc:
            if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENOENT, errno.ESRCH):
                return None
            raise
        found = [decode_route(m) for m in replies if m["header"]["type"] == RTM_NEWROUTE]
        return found[0] if found else None

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


_HEADER = struct.Struct("=IHHI")  # nlmsghdr: length, type, flags, sequence (pid follows)
_NOTIFY_HEADER = struct.Struct("=IHHII")  # nlmsghdr with nlmsg_pid
_EVENT_TYPES = frozenset((RTM_NEWNEXTHOP, RTM_DELNEXTHOP, RTM_NEWROUTE, RTM_DELROUTE))
_NLA = struct.Struct("=HH")
RTM_F_FIB_MATCH = 0x2000  # rtm_flags: return the matching FIB entry
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
_NHMSG_LEN = 8  # struct nhmsg
_NHA_RES_BUCKET = 13
_NHA_RES_BUCKET_NH_ID = 3


def _error(raw: bytes, code: int) -> NexthopError:
    text = None
    for reply in parse_messages(raw):
        text = reply.get("ext_ack")
    detail = f": {text}" if text else ""
    return NexthopError(code, f"{os.strerror(code)}{detail}")


def _bucket_nh_id(data: bytes, offset: int, length: int) -> int | None:
    """NHA_RES_BUCKET / NHA_RES_BUCKET_NH_ID of an RTM_NEWNEXTHOPBUCKET message, by hand."""
    pos, end = offset + 16 + _NHMSG_LEN, offset + length
    while pos + 4 <= end:
        nla_len, nla_type = _NLA.unpack_from(data, pos)
        if nla_len < 4:
            return None
        if nla_type & _NLA_TYPE_MASK == _NHA_RES_BUCKET:
            inner, inner_end = pos + 4, min(pos + nla_len, end)
            while inner + 4 <= inner_end:
                sub_len, sub_type = _NLA.unpack_from(data, inner)
                if sub_len < 4:
                    return None
                if (
                    sub_type & _NLA_TYPE_MASK == _NHA_RES_BUCKET_NH_ID
                    and min(sub_len, inner_end - inner) >= 8
                ):
                    nh_id: int = struct.unpack_from("=I", data, inner + 4)[0]
                    return nh_id
                inner += (sub_len + 3) & ~3
            return None
        pos += (nla_len + 3) & ~3
    return None


#: Notifications one `NexthopMonitor.read` takes at most (decoding one costs ~20-50 us).
READ_LIMIT = 2000


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
        self._ignore_pids: frozenset[int] = frozenset()
        self.skipped = 0  # notifications dropped undecoded (ignored pid, or not an event type)
        self._buffer = bytearray(1 << 20)  # larger than any notification

    @property
    def ignore_pids(self) -> frozenset[int]:
        """nlmsg_pid of changes not to report: the port ids of our own request sockets."""
        return self._ignore_pids

    @ignore_pids.setter
    def ignore_pids(self, pids: frozenset[int]) -> None:
        # Dropped in the kernel by a socket filter: after a big change the echo of our own
        # requests is ~100k notifications, a system call each if read only to be thrown away.
        # `read` checks the pid too (the filter is an optimisation, not the rule).
        self._ignore_pids = frozenset(pids)
        try:
            sockfilter.attach(self._sock, sockfilter.drop_netlink_pids(self._ignore_pids))
        except OSError as exc:
            log.debug("netlink monitor: no socket filter (%s): reading every notification", exc)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> NexthopMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, limit: int = READ_LIMIT) -> list[KernelEvent]:
        """What is pending, without blocking: at most `limit` notifications, so that a burst
        (the kernel re-announces every route of a group replaced in place: 100k of them) never
        holds an event loop for long; the rest stays queued in the socket, which stays readable.
        After ENOBUFS (lost events) `overruns` grows: the caller should then resynchronise by
        dumping.

        Notifications whose nlmsg_pid is in `ignore_pids` (the kernel puts the port id of the
        socket whose request caused the change there) and those of other types than
        RTM_NEW/DELNEXTHOP and RTM_NEW/DELROUTE (e.g. RTM_NEWNEXTHOPBUCKET) are counted in
        `skipped` and dropped from their 20-byte header, without decoding them."""
        events: list[KernelEvent] = []
        ignore = self.ignore_pids
        # One buffer for every recv: a fresh 1 MiB bytes object per notification cost ~10 us
        # each (100k notifications: a second of the event loop), a reused one ~1 us.
        data = self._buffer
        for _ in range(limit):  # each recv is one datagram: one notification
            try:
                size = self._sock.recv_into(data)
            except BlockingIOError:
                return events
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                raise
            offset = 0
            while offset + 20 <= size:
                length, kind, _, _, pid = _NOTIFY_HEADER.unpack_from(data, offset)
                if length < 16 or offset + length > size:
                    break
                here, offset = offset, offset + ((length + 3) & ~3)
                if kind not in _EVENT_TYPES or pid in ignore:
                    self.skipped += 1
                    continue
                for msg in parse_messages(bytes(data[here : here + length])):
                    event = decode_event(msg)
                    if event is not None:
                        events.append(event)
        return events

    def wait(self, timeout: float | None) -> list[KernelEvent]:
        """Block up to `timeout` seconds for notifications, then return all pending ones."""
        ready, _, _ = select.select([self._sock], [], [], timeout)
        return self.read() if ready else []
