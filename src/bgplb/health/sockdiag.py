"""sock_diag netlink messages for the ``listen`` check: encoding and decoding only. Pure.

The kernel's socket monitoring interface (``NETLINK_SOCK_DIAG``, linux/sock_diag.h and
linux/inet_diag.h; ss(8) uses it):

- a dump request is an ``nlmsghdr`` (type ``SOCK_DIAG_BY_FAMILY``, flags REQUEST|DUMP) and an
  ``inet_diag_req_v2`` (family, protocol, extensions, pad, the bitmask of TCP states wanted, an
  ``inet_diag_sockid`` ignored by a dump without a bytecode filter);
- each answer is an ``inet_diag_msg`` (family, state, timer, retrans, the sockid — source and
  destination port in network order, addresses, interface, cookie — expires, queues, uid,
  inode) followed by attributes (``INET_DIAG_SKV6ONLY``: whether an IPv6 socket is v6-only);
- a socket in the multicast groups ``SKNLGRP_INET{,6}_{TCP,UDP}_DESTROY`` (joining them needs
  CAP_NET_ADMIN) receives one such message for every socket of that kind freed in the network
  namespace. A listener's message keeps its source port and has destination port 0, which the
  classic BPF program of :func:`destroy_filter` selects in the kernel, so a busy server's
  connection teardowns never reach us.

A TCP listener is in state LISTEN; a UDP "listener" is a bound socket that is not connected
(state CLOSE, destination port 0).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLMSG_ERROR = 2
NLMSG_DONE = 3

AF_INET = 2
AF_INET6 = 10
IPPROTO_TCP = 6
IPPROTO_UDP = 17
PROTOCOLS = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}

TCP_ESTABLISHED = 1
TCP_CLOSE = 7
TCP_LISTEN = 10

INET_DIAG_SKV6ONLY = 11

# linux/sock_diag.h enum sknetlink_groups
SKNLGRP_INET_TCP_DESTROY = 1
SKNLGRP_INET_UDP_DESTROY = 2
SKNLGRP_INET6_TCP_DESTROY = 3
SKNLGRP_INET6_UDP_DESTROY = 4

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_REQ_V2 = struct.Struct("=BBBxI")  # family, protocol, ext, pad, states
_SOCKID_LEN = 48  # sport, dport (be16), src[4], dst[4] (be32), if, cookie[2]
_MSG_HEAD = struct.Struct("=BBBB")  # family, state, timer, retrans
_PORTS = struct.Struct("!HH")
_MSG_TAIL = struct.Struct("=IIIII")  # expires, rqueue, wqueue, uid, inode
_MSG_LEN = _MSG_HEAD.size + _SOCKID_LEN + _MSG_TAIL.size  # 72
_RTA = struct.Struct("=HH")


def _align(n: int) -> int:
    return (n + 3) & ~3


def listen_states(protocol: int) -> int:
    """The ``idiag_states`` bitmask of listening sockets of ``protocol``."""
    return 1 << (TCP_LISTEN if protocol == IPPROTO_TCP else TCP_CLOSE)


def dump_request(family: int, protocol: int, states: int, seq: int) -> bytes:
    """A SOCK_DIAG_BY_FAMILY dump request for every socket of family/protocol in ``states``."""
    body = _REQ_V2.pack(family, protocol, 0, states) + bytes(_SOCKID_LEN)
    header = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return header + body


@dataclass(frozen=True, slots=True)
class DiagSocket:
    """One socket of a dump or a destroy notification."""

    family: int
    state: int
    sport: int
    dport: int
    src: IPAddress
    inode: int
    v6only: bool | None  # IPv6 sockets: from INET_DIAG_SKV6ONLY; None when not reported


@dataclass(slots=True)
class Batch:
    """What one read of netlink data held."""

    sockets: list[DiagSocket]
    done: bool = False  # NLMSG_DONE seen: the dump is complete
    error: int = 0  # errno of an NLMSG_ERROR (0: none)


class DiagError(ValueError):
    """A malformed sock_diag message."""


def parse(data: bytes, seq: int | None = None) -> Batch:
    """Decode the netlink messages in ``data`` (answers with another ``seq`` are skipped when
    ``seq`` is given; multicast notifications have seq 0 and are read with ``seq=None``)."""
    batch = Batch([])
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _, msg_seq, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise DiagError(f"netlink message of length {length} at offset {offset}")
        body = offset + _NLMSGHDR.size
        end = offset + length
        offset += _align(length)
        if seq is not None and msg_seq != seq:
            continue
        if kind == NLMSG_DONE:
            batch.done = True
        elif kind == NLMSG_ERROR:
            if end - body < 4:
                raise DiagError("short NLMSG_ERROR")
            (errno,) = struct.unpack_from("=i", data, body)
            if errno:
                batch.error = -errno
                batch.done = True
        elif kind == SOCK_DIAG_BY_FAMILY:
            batch.sockets.append(_socket(data, body, end))
    return batch


def _socket(data: bytes, start: int, end: int) -> DiagSocket:
    if end - start < _MSG_LEN:
        raise DiagError(f"inet_diag_msg of {end - start} bytes, expected {_MSG_LEN}")
    family, state, _, _ = _MSG_HEAD.unpack_from(data, start)
    sport, dport = _PORTS.unpack_from(data, start + 4)
    raw = data[start + 8 : start + 24]
    src: IPAddress
    if family == AF_INET:
        src = ipaddress.IPv4Address(raw[:4])
    elif family == AF_INET6:
        src = ipaddress.IPv6Address(raw)
    else:
        raise DiagError(f"inet_diag_msg of family {family}")
    inode = _MSG_TAIL.unpack_from(data, start + _MSG_HEAD.size + _SOCKID_LEN)[4]
    v6only = None
    for kind, value in _attributes(data, start + _MSG_LEN, end):
        if kind == INET_DIAG_SKV6ONLY and value:
            v6only = bool(value[0])
    return DiagSocket(family, state, sport, dport, src, inode, v6only)


def _attributes(data: bytes, offset: int, end: int) -> Iterator[tuple[int, bytes]]:
    while offset + _RTA.size <= end:
        length, kind = _RTA.unpack_from(data, offset)
        if length < _RTA.size or offset + length > end:
            return
        yield kind & 0x3FFF, data[offset + _RTA.size : offset + length]
        offset += _align(length)


def is_listener(s: DiagSocket, protocol: int) -> bool:
    if protocol == IPPROTO_TCP:
        return s.state == TCP_LISTEN
    return s.state == TCP_CLOSE and s.dport == 0 and s.sport != 0


def serves(s: DiagSocket, port: int, address: IPAddress | None) -> bool:
    """Whether listening socket ``s`` accepts traffic for ``address:port`` (any address when
    None): bound to that address or to the wildcard of its family; an IPv6 wildcard socket
    that is not v6-only also takes IPv4 (and ``::ffff:a.b.c.d`` is that IPv4 address)."""
    if s.sport != port:
        return False
    if address is None:
        return True
    if s.src == address or (s.src.is_unspecified and s.src.version == address.version):
        return True
    if address.version == 4 and isinstance(s.src, ipaddress.IPv6Address):
        if s.src.ipv4_mapped == address:
            return True
        return s.src.is_unspecified and s.v6only is False
    return False


def destroy_groups(protocol: int, families: tuple[int, ...]) -> int:
    """The netlink multicast group mask (``bind`` nl_groups) of the destroy notifications."""
    groups = {
        (AF_INET, IPPROTO_TCP): SKNLGRP_INET_TCP_DESTROY,
        (AF_INET6, IPPROTO_TCP): SKNLGRP_INET6_TCP_DESTROY,
        (AF_INET, IPPROTO_UDP): SKNLGRP_INET_UDP_DESTROY,
        (AF_INET6, IPPROTO_UDP): SKNLGRP_INET6_UDP_DESTROY,
    }
    mask = 0
    for family in families:
        mask |= 1 << (groups[(family, protocol)] - 1)
    return mask


# classic BPF (linux/filter.h)
_BPF_LDH_ABS = 0x28  # BPF_LD | BPF_H | BPF_ABS: A = be16 at offset k
_BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_BPF_RET_K = 0x06  # BPF_RET | BPF_K
_INSN = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k


def destroy_filter(port: int) -> tuple[int, bytes]:
    """A socket filter keeping only destroy notifications of sockets with source port
    ``port`` and destination port 0 (listeners, unconnected UDP): (instruction count, code)."""
    sport_at = _NLMSGHDR.size + _MSG_HEAD.size  # 20
    program = [
        (_BPF_LDH_ABS, 0, 0, sport_at),
        (_BPF_JEQ_K, 0, 3, port),  # sport != port: drop
        (_BPF_LDH_ABS, 0, 0, sport_at + 2),
        (_BPF_JEQ_K, 0, 1, 0),  # dport != 0: drop
        (_BPF_RET_K, 0, 0, 0xFFFFFFFF),  # keep the whole message
        (_BPF_RET_K, 0, 0, 0),  # drop
    ]
    return len(program), b"".join(_INSN.pack(*insn) for insn in program)
