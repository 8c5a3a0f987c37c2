"""Hand-encoded hot-path rtnetlink requests and batched transactions over one socket.

The encoders build the complete netlink message (RFC 3549 §2.3.2: nlmsghdr, then the family
header, then TLV attributes padded to 4 bytes) with `struct` from precomputed layouts, with no
pyroute2 object per message. They produce byte for byte what the pyroute2-based builders of
`bgplb.linux.nexthop_msg` produce (tests/unit/linux/test_nexthop_msg_fast.py checks it):

    nexthop   nlmsghdr | nhmsg | NHA_ID u32 | NHA_GATEWAY 4/16 | NHA_OIF u32
    group     nlmsghdr | nhmsg | NHA_ID | NHA_GROUP [id u32, weight-1 u8, 0 u8, 0 u16]...
              | NHA_GROUP_TYPE u16 | NHA_RES_GROUP (nested, resilient only: BUCKETS u16,
              IDLE_TIMER u32, UNBALANCED_TIMER u32, in 1/100 s)
    route     nlmsghdr | rtmsg | RTA_DST 4/16 | RTA_TABLE u32 | RTA_NH_ID u32 (not on delete)
    del nh    nlmsghdr | nhmsg | NHA_ID

`transact` sends many such messages in as few sendmsg calls as fit and maps each answer back to
its request by sequence number (RFC 3549 §2.3.2.2: one NLMSG_ERROR per request that asked for
an ACK or failed). rtnetlink handles the messages of one datagram one after the other, each
on its own: a failed request does not stop the ones after it (seen on Linux 6.18, see
tests/interop/test_linux_nlbatch.py). The kernel runs them inside the sendmsg call, so when it
returns every answer of that datagram is already queued on our socket.

Acknowledgements: with `ack_each=False` (the default) only the last request of a datagram asks
for an ACK; the kernel still answers every failed request with an error, so a request with no
answer before that last ACK succeeded. With `ack_each=True` every request asks for an ACK.
Either way at most `window` requests are in flight, so the receive buffer never overflows;
if it does (ENOBUFS) `NetlinkOverrun` is raised and the caller must re-read the kernel.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct
from collections.abc import Iterable, Sequence

from bgplb.linux.nexthop_msg import (
    RT_TABLE_MAIN,
    RTM_DELNEXTHOP,
    RTM_DELROUTE,
    RTM_NEWNEXTHOP,
    RTM_NEWROUTE,
    RTN_UNICAST,
    USER_HZ,
    GroupType,
    IPAddress,
    IPNetwork,
    NexthopError,
    _ext_ack_message,
)

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2

FLAGS_NEW = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
FLAGS_REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
FLAGS_DELETE = NLM_F_REQUEST | NLM_F_ACK

_NHA_ID, _NHA_GROUP, _NHA_GROUP_TYPE, _NHA_OIF, _NHA_GATEWAY, _NHA_RES_GROUP = 1, 2, 3, 5, 6, 12
_NLA_F_NESTED = 0x8000
_RTA_DST, _RTA_TABLE, _RTA_NH_ID = 1, 15, 30
_RTNH_F_ONLINK = 4

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_SEQ = struct.Struct("=HI")  # nlmsg_flags, nlmsg_seq at offset 6
_ACK = struct.Struct("=IHHI4xi")  # nlmsghdr (pid skipped) + nlmsgerr.error
_NH_HEAD = "=IHHII BBBBI HHI"  # nlmsghdr | nhmsg | NHA_ID
_NEXTHOP = {
    4: struct.Struct(_NH_HEAD + " HH4s HHI"),
    16: struct.Struct(_NH_HEAD + " HH16s HHI"),
}
_DEL_NEXTHOP = struct.Struct(_NH_HEAD)
_GROUP_HEAD = struct.Struct(_NH_HEAD + " HH")  # ... | NHA_GROUP header
_GROUP_ENTRY = struct.Struct("=IBBH")
_GROUP_TYPE = struct.Struct("=HHH2x")
_RES_GROUP = struct.Struct("=HH HHH2x HHI HHI")
_RT_HEAD = "=IHHII BBBBBBBBI"  # nlmsghdr | rtmsg
_ROUTE = {
    4: struct.Struct(_RT_HEAD + " HH4s HHI HHI"),
    16: struct.Struct(_RT_HEAD + " HH16s HHI HHI"),
}
_DEL_ROUTE = {4: struct.Struct(_RT_HEAD + " HH4s HHI"), 16: struct.Struct(_RT_HEAD + " HH16s HHI")}
_FAMILY = {4: socket.AF_INET, 16: socket.AF_INET6}


def _packed(value: IPAddress | IPNetwork | str, what: str) -> tuple[bytes, int]:
    """(address bytes, prefix length) of an address or a network; ValueError if neither."""
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value.network_address.packed, value.prefixlen
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value.packed, value.max_prefixlen
    if what == "route destination":
        net = ipaddress.ip_network(value)
        return net.network_address.packed, net.prefixlen
    addr = ipaddress.ip_address(value)
    return addr.packed, addr.max_prefixlen


def _pack(layout: struct.Struct, kind: str, ident: object, *values: object) -> bytes:
    """layout.pack(*values); the error message names `kind ident` (formatted only then)."""
    try:
        return layout.pack(*values)
    except struct.error as exc:
        raise ValueError(f"{kind} {ident}: a value is out of range ({exc})") from None


def _change_flags(replace: bool) -> int:
    return FLAGS_REPLACE if replace else FLAGS_NEW


def encode_nexthop(
    nh_id: int,
    *,
    gateway: IPAddress | str,
    oif: int,
    protocol: int,
    onlink: bool = False,
    replace: bool = False,
    seq: int = 0,
) -> bytes:
    """RTM_NEWNEXTHOP: a single gateway nexthop (create, or create-or-replace)."""
    gw, _ = _packed(gateway, "gateway")
    layout = _NEXTHOP[len(gw)]
    return _pack(
        layout,
        "nexthop",
        nh_id,
        layout.size,
        RTM_NEWNEXTHOP,
        _change_flags(replace),
        seq,
        0,
        _FAMILY[len(gw)],
        0,
        protocol,
        0,
        _RTNH_F_ONLINK if onlink else 0,
        8,
        _NHA_ID,
        nh_id,
        4 + len(gw),
        _NHA_GATEWAY,
        gw,
        8,
        _NHA_OIF,
        oif,
    )


def encode_group(
    nh_id: int,
    *,
    members: Iterable[tuple[int, int]],
    protocol: int,
    group_type: GroupType = GroupType.RES,
    buckets: int = 512,
    idle_timer: float = 120.0,
    unbalanced_timer: float = 0.0,
    replace: bool = False,
    seq: int = 0,
) -> bytes:
    """RTM_NEWNEXTHOP: a multipath or resilient group of (member id, weight 1..256)."""
    entries = []
    for member, weight in members:
        if not 1 <= weight <= 256:
            raise ValueError(f"group {nh_id}: nexthop weight {weight} outside 1..256")
        entries.append(_pack(_GROUP_ENTRY, "group", nh_id, member, weight - 1, 0, 0))
    body = b"".join(entries)
    tail = _GROUP_TYPE.pack(6, _NHA_GROUP_TYPE, int(group_type))
    if group_type == GroupType.RES:
        tail += _pack(
            _RES_GROUP,
            "group",
            nh_id,
            _RES_GROUP.size,
            _NHA_RES_GROUP | _NLA_F_NESTED,
            6,
            1,
            buckets,
            8,
            2,
            round(idle_timer * USER_HZ),
            8,
            3,
            round(unbalanced_timer * USER_HZ),
        )
    length = _GROUP_HEAD.size + len(body) + len(tail)
    head = _pack(
        _GROUP_HEAD,
        "group",
        nh_id,
        length,
        RTM_NEWNEXTHOP,
        _change_flags(replace),
        seq,
        0,
        socket.AF_UNSPEC,
        0,
        protocol,
        0,
        0,
        8,
        _NHA_ID,
        nh_id,
        4 + len(body),
        _NHA_GROUP,
    )
    return head + body + tail


def encode_del_nexthop(nh_id: int, *, seq: int = 0) -> bytes:
    """RTM_DELNEXTHOP by id (a group's routes go with it)."""
    layout = _DEL_NEXTHOP
    return _pack(
        layout, "nexthop", nh_id, layout.size, RTM_DELNEXTHOP, FLAGS_DELETE, seq, 0,
        socket.AF_UNSPEC, 0, 0, 0, 0, 8, _NHA_ID, nh_id,
    )  # fmt: skip


def encode_route(
    dst: IPNetwork | str,
    *,
    nh_id: int,
    protocol: int,
    table: int = RT_TABLE_MAIN,
    replace: bool = False,
    seq: int = 0,
) -> bytes:
    """RTM_NEWROUTE `dst nhid nh_id proto protocol table table` (v4 or v6)."""
    addr, plen = _packed(dst, "route destination")
    layout = _ROUTE[len(addr)]
    return _pack(
        layout, "route", dst, layout.size, RTM_NEWROUTE, _change_flags(replace), seq, 0,
        _FAMILY[len(addr)], plen, 0, 0, table if table < 256 else 0, protocol, 0, RTN_UNICAST, 0,
        4 + len(addr), _RTA_DST, addr, 8, _RTA_TABLE, table, 8, _RTA_NH_ID, nh_id,
    )  # fmt: skip


def encode_del_route(
    dst: IPNetwork | str, *, protocol: int, table: int = RT_TABLE_MAIN, seq: int = 0
) -> bytes:
    """RTM_DELROUTE of `dst` in `table`; the kernel only deletes it if `protocol` matches."""
    addr, plen = _packed(dst, "route destination")
    layout = _DEL_ROUTE[len(addr)]
    return _pack(
        layout, "route", dst, layout.size, RTM_DELROUTE, FLAGS_DELETE, seq, 0,
        _FAMILY[len(addr)], plen, 0, 0, table if table < 256 else 0, protocol, 0, RTN_UNICAST, 0,
        4 + len(addr), _RTA_DST, addr, 8, _RTA_TABLE, table,
    )  # fmt: skip


# --- batched transactions ------------------------------------------------------------------
class NetlinkOverrun(NexthopError):
    """The socket's receive buffer overflowed (ENOBUFS): answers were lost, so which requests
    were applied is unknown. Re-read the kernel (dump) before going on."""


DEFAULT_WINDOW = 1024  # requests in flight (= error answers that may be queued at once)
DEFAULT_CHUNK_BYTES = 256 << 10  # bytes per sendmsg
ANSWER_TIMEOUT = 30.0  # seconds without any answer before giving up (the kernel is synchronous)


def _check(messages: Sequence[bytes]) -> None:
    for i, msg in enumerate(messages):
        if len(msg) < 16 or len(msg) & 3 or _HDR.unpack_from(msg)[0] != len(msg):
            # the kernel silently drops the rest of a datagram after a bad length
            raise ValueError(f"message {i}: not one complete, 4-byte aligned netlink message")


def transact(
    sock: socket.socket,
    messages: Sequence[bytes],
    first_seq: int,
    *,
    ack_each: bool = False,
    window: int = DEFAULT_WINDOW,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> list[NexthopError | None]:
    """Send `messages` (complete netlink change requests, any sequence number) with the
    sequence numbers first_seq, first_seq + 1, ... (mod 2**32) and return, in request order,
    None for each one the kernel applied and a NexthopError (errno + extended ack text) for
    each one it refused. See the module docstring; raises NetlinkOverrun on ENOBUFS."""
    _check(messages)
    if window < 1:
        raise ValueError("window must be >= 1")
    results: list[NexthopError | None] = [None] * len(messages)
    # netlink_sendmsg refuses (EMSGSIZE) a datagram longer than the send buffer - 32
    chunk_bytes = min(chunk_bytes, sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) - 32)
    start = 0
    while start < len(messages):
        end, size = start, 0
        while end < len(messages) and end - start < window:
            if end > start and size + len(messages[end]) > chunk_bytes:
                break
            size += len(messages[end])
            end += 1
        buf = bytearray(b"".join(messages[start:end]))
        offset = 0
        for i in range(start, end):
            (flags,) = struct.unpack_from("=H", buf, offset + 6)
            if not ack_each and i != end - 1:
                flags &= ~NLM_F_ACK
            else:
                flags |= NLM_F_ACK
            _SEQ.pack_into(buf, offset + 6, flags, (first_seq + i) & 0xFFFFFFFF)
            offset += len(messages[i])
        sock.send(buf)
        _collect(sock, results, first_seq, start, end)
        start = end
    return results


def _collect(
    sock: socket.socket, results: list[NexthopError | None], first_seq: int, start: int, end: int
) -> None:
    """Read answers until the ACK of request end-1; record the errors of start..end-1."""
    last = (first_seq + end - 1) & 0xFFFFFFFF
    while True:
        try:
            data = sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            ready, _, _ = select.select([sock], [], [], ANSWER_TIMEOUT)
            if not ready:
                raise NexthopError(
                    errno.ETIMEDOUT, f"no netlink answer within {ANSWER_TIMEOUT:.0f} s"
                ) from None
            continue
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                _drain(sock)
                raise NetlinkOverrun(
                    errno.ENOBUFS, "netlink answers were lost (ENOBUFS): re-read the kernel"
                ) from None
            raise
        pos = 0
        while pos + 20 <= len(data):
            length, kind, _flags, seq, err = _ACK.unpack_from(data, pos)
            if length < 16 or pos + length > len(data):
                break
            if kind == NLMSG_ERROR:
                index = (seq - first_seq) & 0xFFFFFFFF
                if start <= index < end and err:
                    text = _ext_ack_message(data, pos, length)
                    detail = f": {text}" if text else ""
                    results[index] = NexthopError(-err, f"{os.strerror(-err)}{detail}")
                if seq == last:
                    return
            pos += (length + 3) & ~3


def _drain(sock: socket.socket) -> None:
    """Throw away every queued answer. After an overrun the kernel drops everything sent to
    the socket, without another ENOBUFS, until its receive queue has been emptied."""
    while True:
        try:
            sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
