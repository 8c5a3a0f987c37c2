"""VIP addresses on the loopback, with pyroute2's IPRoute.

A VIP is a host prefix (/32 or /128) put on `lo` so the server answers for it; IPv6 VIPs are
added with IFA_F_NODAD (duplicate address detection makes no sense for an anycast address and
would keep it "tentative", unusable as a source, for a second or more).

All functions are blocking (pyroute2's sync API runs its own event loop): from asyncio, call them
with `asyncio.to_thread`. `netns` is a name under /var/run/netns or None for our namespace; a
missing namespace raises FileNotFoundError and is never created.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

IFA_F_NODAD = 0x02

Prefix = (
    str
    | ipaddress.IPv4Address
    | ipaddress.IPv6Address
    | ipaddress.IPv4Network
    | ipaddress.IPv6Network
    | ipaddress.IPv4Interface
    | ipaddress.IPv6Interface
)


class AddressError(OSError):
    """The kernel refused an address change."""


def _interface(prefix: Prefix) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """'198.51.100.10' -> 198.51.100.10/32; '2001:db8::10/128' -> itself."""
    return ipaddress.ip_interface(str(prefix))


@contextmanager
def _ipr(netns: str | None) -> Iterator[IPRoute]:
    if netns and not os.path.exists(netns if "/" in netns else f"/var/run/netns/{netns}"):
        # checked here: pyroute2 leaks its socket and event loop when the namespace is missing
        raise FileNotFoundError(errno.ENOENT, f"no network namespace {netns!r}")
    ipr = IPRoute(netns=netns, flags=0) if netns else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise AddressError(errno.ENODEV, f"no interface {ifname!r}")
    return int(found[0])


def _present(
    ipr: IPRoute, index: int, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
) -> Any:
    for msg in ipr.addr("dump", index=index):
        addr = msg.get("IFA_ADDRESS") or msg.get("IFA_LOCAL")
        if addr and ipaddress.ip_address(addr) == iface.ip:
            return msg
    return None


def has_vip(prefix: Prefix, netns: str | None = None, ifname: str = "lo") -> bool:
    """True if the address of `prefix` is on `ifname` (whatever its prefix length)."""
    iface = _interface(prefix)
    with _ipr(netns) as ipr:
        return _present(ipr, _index(ipr, ifname), iface) is not None


def add_vip(prefix: Prefix, netns: str | None = None, ifname: str = "lo") -> bool:
    """Put the VIP on `ifname`. True if we added it, False if it was already there (then it is
    left exactly as found: the caller did not add it and should not remove it)."""
    iface = _interface(prefix)
    with _ipr(netns) as ipr:
        index = _index(ipr, ifname)
        if _present(ipr, index, iface) is not None:
            return False
        kwargs: dict[str, object] = {}
        if iface.version == 6:
            kwargs["flags"] = IFA_F_NODAD
        try:
            ipr.addr(
                "add",
                index=index,
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
                **kwargs,
            )
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:  # raced with someone else
                return False
            raise AddressError(exc.code, f"adding {iface} to {ifname}: {exc}") from exc
        return True


def remove_vip(prefix: Prefix, netns: str | None = None, ifname: str = "lo") -> bool:
    """Remove the VIP's address from `ifname`. True if removed, False if it was not there."""
    iface = _interface(prefix)
    with _ipr(netns) as ipr:
        index = _index(ipr, ifname)
        msg = _present(ipr, index, iface)
        if msg is None:
            return False
        try:
            ipr.addr("del", index=index, address=str(iface.ip), prefixlen=msg["prefixlen"])
        except NetlinkError as exc:
            if exc.code == errno.EADDRNOTAVAIL:
                return False
            raise AddressError(exc.code, f"removing {iface} from {ifname}: {exc}") from exc
        return True
