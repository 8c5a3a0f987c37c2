"""Socket options for BGP transports: TCP-MD5 (RFC 2385), GTSM (RFC 5082), TTL, saved SYN.

Python's socket module has no constants for these; the numbers are the Linux UAPI ones
(include/uapi/linux/tcp.h, in.h, in6.h). A wrong or missing MD5 key makes the kernel drop the
segment silently: the peer only sees a connect timeout. `nstat -az TcpExtTCPMD5*` tells why.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

TCP_MD5SIG = 14
TCP_MD5SIG_EXT = 32
TCP_MD5SIG_FLAG_PREFIX = 0x1
TCP_MD5SIG_MAXKEYLEN = 80
IP_MINTTL = 21
IPV6_MINHOPCOUNT = 73
TCP_SAVE_SYN = 27  # Linux >= 4.2: keep the headers of the SYN of each accepted connection
TCP_SAVED_SYN = 28

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _sockaddr_storage(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    if address.version == 4:
        raw = struct.pack("=H", socket.AF_INET) + b"\x00\x00" + address.packed
    else:
        raw = struct.pack("=H", socket.AF_INET6) + b"\x00\x00" + b"\x00" * 4 + address.packed
        raw += b"\x00" * 4  # scope id
    return raw.ljust(128, b"\x00")


def md5sig(network: IPNetwork, key: str | None) -> bytes:
    """struct tcp_md5sig for `network` (a host or a prefix); an empty key deletes it."""
    raw_key = (key or "").encode()
    if len(raw_key) > TCP_MD5SIG_MAXKEYLEN:
        raise ValueError(f"TCP-MD5 key longer than {TCP_MD5SIG_MAXKEYLEN} bytes")
    host = network.prefixlen == network.max_prefixlen
    flags = 0 if host else TCP_MD5SIG_FLAG_PREFIX
    prefixlen = 0 if host else network.prefixlen
    return (
        _sockaddr_storage(network.network_address)
        + struct.pack("=BBHI", flags, prefixlen, len(raw_key), 0)
        + raw_key.ljust(TCP_MD5SIG_MAXKEYLEN, b"\x00")
    )


def set_md5(sock: socket.socket, peer: IPNetwork | str, key: str | None) -> None:
    """Install (or with key None remove) the TCP-MD5 key for a peer address or prefix."""
    network = ipaddress.ip_network(peer, strict=False) if isinstance(peer, str) else peer
    host = network.prefixlen == network.max_prefixlen
    option = TCP_MD5SIG if host else TCP_MD5SIG_EXT
    sock.setsockopt(socket.IPPROTO_TCP, option, md5sig(network, key))


def set_ttl(sock: socket.socket, family: int, ttl: int) -> None:
    """Outgoing TTL / hop limit (eBGP multihop, or 255 for GTSM)."""
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)


def set_gtsm(sock: socket.socket, family: int, hops: int = 1) -> None:
    """RFC 5082: send with TTL 255 and accept only TTL >= 256 - hops."""
    set_ttl(sock, family, 255)
    minimum = 256 - max(1, hops)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MINHOPCOUNT, minimum)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_MINTTL, minimum)


def set_min_ttl(sock: socket.socket, family: int, minimum: int) -> None:
    """Drop every received segment with a lower TTL / hop limit (0 disables the check)."""
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MINHOPCOUNT, minimum)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_MINTTL, minimum)


def save_syn(sock: socket.socket) -> None:
    """On a listening socket: keep the SYN of every accepted connection (`syn_ttl`)."""
    sock.setsockopt(socket.IPPROTO_TCP, TCP_SAVE_SYN, 1)


def syn_ttl(sock: socket.socket) -> int | None:
    """TTL (IPv4) or hop limit (IPv6) of the SYN that opened this accepted connection, read
    from the IP header saved with `save_syn` on its listener; None when not available. The
    kernel hands the saved SYN out once."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_SAVED_SYN, 512)
    except OSError:
        return None
    if len(raw) >= 20 and raw[0] >> 4 == 4:
        return int(raw[8])
    if len(raw) >= 40 and raw[0] >> 4 == 6:
        return int(raw[7])
    return None
