"""BFD's UDP sockets (RFC 5881 single hop, RFC 5883 multihop): opening them, the TTL and
destination address of a received packet (ancillary data).

* Sending: one socket per session, bound to the session's local address and a random source
  port in 49152-65535 kept for the session's life (RFC 5881 §4); TTL / Hop Limit 255 and IP
  precedence 6 (TOS 0xC0, as BIRD and FRR).
* Listening: one socket per (family, port) with IP_RECVTTL / IPV6_RECVHOPLIMIT and
  IP_PKTINFO / IPV6_RECVPKTINFO (the TTL checks of RFC 5881 §5 / RFC 5883 §2, demultiplexing
  by address, RFC 5880 §6.3), and a large receive buffer (:data:`RECEIVE_BUFFER`).
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct

__all__ = [
    "IP_PKTINFO",
    "IP_RECVTTL",
    "RECEIVE_BUFFER",
    "SO_RCVBUFFORCE",
    "large_receive_buffer",
    "open_listener",
    "open_sender",
    "parse_ancillary",
]

SOURCE_PORT_MIN, SOURCE_PORT_MAX = 49152, 65535
TTL_MAX = 255
TOS_CS6 = 0xC0
# Linux values Python's socket module lacks.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
CMSG_SPACE = socket.CMSG_SPACE(4) + socket.CMSG_SPACE(20)

#: Receive buffer of a listening socket. One socket receives every session's packets: 1,000
#: sessions at 300 ms are ~3,300 packets/s, and the kernel's default (~200 KiB, ~200 packets)
#: overflows after ~60 ms of stall; 8 MiB rides out stalls up to a detection time.
RECEIVE_BUFFER = 8 << 20

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def open_sender(family: int, host: str, rng: random.Random) -> socket.socket:
    """A non-blocking sending socket bound to `host` and a random free port in 49152-65535."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, TTL_MAX)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, TOS_CS6)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, TTL_MAX)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, TOS_CS6)
        for _ in range(64):
            try:
                sock.bind((host, rng.randint(SOURCE_PORT_MIN, SOURCE_PORT_MAX)))
                return sock
            except OSError as exc:
                if exc.errno != 98:  # EADDRINUSE: try another port
                    raise
        raise OSError("no free BFD source port in 49152-65535")
    except BaseException:
        sock.close()
        raise


def open_listener(family: int, host: str, port: int) -> socket.socket:
    """A non-blocking listening socket on (host, port) that reports TTL and destination."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        large_receive_buffer(sock)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def parse_ancillary(
    ancdata: list[tuple[int, int, bytes]], family: int
) -> tuple[int | None, IPAddress | None]:
    """(TTL or hop limit, destination address) from `recvmsg` ancillary data, None if absent."""
    ttl: int | None = None
    dst: IPAddress | None = None
    for level, kind, raw in ancdata:
        if family == socket.AF_INET and level == socket.IPPROTO_IP:
            if kind == socket.IP_TTL and len(raw) >= 4:
                ttl = struct.unpack("=i", raw[:4])[0]
            elif kind == IP_PKTINFO and len(raw) >= 12:
                dst = ipaddress.IPv4Address(raw[8:12])  # in_pktinfo.ipi_addr: header dst
        elif family == socket.AF_INET6 and level == socket.IPPROTO_IPV6:
            if kind == socket.IPV6_HOPLIMIT and len(raw) >= 4:
                ttl = struct.unpack("=i", raw[:4])[0]
            elif kind == socket.IPV6_PKTINFO and len(raw) >= 16:
                dst = ipaddress.IPv6Address(raw[:16])
    return ttl, dst


def large_receive_buffer(sock: socket.socket) -> None:
    """SO_RCVBUFFORCE (root: above net.core.rmem_max), else SO_RCVBUF up to rmem_max."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
