"""The router's kernel side: the FIB it installs, and the connected subnets it resolves with.

Part of :class:`~bgplb.router.daemon.Router`. After each batch of events the desired state of
the RIB is pushed to :class:`~bgplb.linux.fib.KernelFib` (through connection pinning,
:mod:`bgplb.router.pinning_runtime`); the kernel's nexthop/route notifications are watched and
whatever of ours someone deletes is re-installed; on start our stale objects are removed
(reconcile), on exit ours are removed (unless ``[fib] keep_on_exit``). Interface addresses are
polled so next hops resolve against the current connected subnets (RFC 4271 §5.1.3, §9.1.2.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from bgplb.bgp.prefix import Prefix
from bgplb.bgp.session import Event
from bgplb.config import RouterConfig
from bgplb.router import pinning_runtime as router_pinning
from bgplb.router.rib import Connected, Rib

if TYPE_CHECKING:
    from bgplb.router.daemon import Counters, Router
    from bgplb.router.ranges import PeerEntry

log = logging.getLogger("bgplb.router")

CONNECTED_POLL = 2.0


def read_connected(netns: str | None = None) -> list[Connected]:
    """Directly connected subnets of this namespace: every interface address except loopback,
    host routes (/32, /128) and IPv6 link-local ones."""
    from pyroute2 import IPRoute, NetNS

    out: list[Connected] = []
    ipr = NetNS(netns) if netns else IPRoute()
    try:
        loopbacks = {link["index"] for link in ipr.get_links() if link["flags"] & 0x8}
        for msg in ipr.get_addr():
            if msg["index"] in loopbacks:
                continue
            address = msg.get_attr("IFA_ADDRESS")
            if address is None:
                continue
            iface = ipaddress.ip_interface(f"{address}/{msg['prefixlen']}")
            if iface.network.prefixlen == iface.max_prefixlen or iface.ip.is_link_local:
                continue
            out.append(Connected(iface.network, msg["index"], iface.ip))
    finally:
        ipr.close()
    return out


def default_router_id(connected: Iterable[Connected]) -> ipaddress.IPv4Address:
    for c in connected:
        if isinstance(c.local, ipaddress.IPv4Address):
            return c.local
    return ipaddress.IPv4Address("192.0.2.255")


class KernelSide:
    """Opens, watches, syncs and closes the FIB; polls the connected subnets."""

    config: RouterConfig
    fib: Any
    rib: Rib
    counters: Counters
    installed: dict[Prefix, tuple[Any, ...]]
    queue: asyncio.Queue[tuple[PeerEntry | None, Event | str]]
    _connected: list[Connected]

    def _open_fib(self) -> None:
        from bgplb.linux.fib import KernelFib

        f = self.config.fib
        self.fib = KernelFib(
            table=f.table,
            group=f.group,
            buckets=f.buckets,
            idle_timer=f.idle_timer,
            unbalanced_timer=f.unbalanced_timer,
        )
        self.fib.start_watching()
        if not f.keep_on_exit:
            ops = self.fib.reconcile()
            if ops:
                log.info("fib: removed %d stale kernel object(s) of ours", len(ops))
        loop = asyncio.get_running_loop()
        loop.add_reader(self.fib.watch_fileno(), self._kernel_events)
        router_pinning.open(cast("Router", self))

    def _kernel_events(self) -> None:
        try:
            ops = self.fib.process_events()
        except Exception as exc:
            self.counters.fib_errors += 1
            log.error("fib: re-install failed: %s", exc)
            return
        if ops:
            log.warning("fib: re-installed %d object(s) someone else removed", len(ops))

    def _close_fib(self) -> None:
        if self.fib is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.fib.watch_fileno())
        # waits for a sync still running in its thread, then cleans up
        router_pinning.close(cast("Router", self))
        try:
            if self.config.fib.keep_on_exit:
                log.info("fib: keeping our routes in the kernel (keep_on_exit)")
            else:
                self.fib.cleanup()
        except Exception as exc:
            log.error("fib: cleanup failed: %s", exc)
        finally:
            self.fib.close()
            self.fib = None

    async def _sync_fib(self) -> None:
        dirty = self.rib.take_dirty()
        due = router_pinning.due(cast("Router", self))  # a drained server's pins: drain_linger
        if not dirty and not due:
            return
        changed = due
        for vip in dirty:
            entry = self.rib.fib_entry(vip)
            if entry:
                if self.installed.get(vip) != entry:
                    self.installed[vip] = entry
                    changed = True
            elif self.installed.pop(vip, None) is not None:
                changed = True
        if not changed or self.fib is None:
            return
        desired = {
            vip.network: [(n.address, n.ifindex, n.weight) for n in entry]
            for vip, entry in self.installed.items()
        }
        try:
            ops = await router_pinning.sync(cast("Router", self), desired)
            self.counters.fib_applies += 1
            self.counters.last_apply_ops = len(ops)
            log.debug("fib: %d operation(s)", len(ops))
        except Exception as exc:
            self.counters.fib_errors += 1
            log.error("fib: apply failed: %s", exc)

    async def _connected_task(self) -> None:
        while True:
            await asyncio.sleep(CONNECTED_POLL)
            try:
                connected = await asyncio.to_thread(read_connected)
            except Exception as exc:  # netlink trouble: keep the last view
                log.debug("reading interface addresses failed: %s", exc)
                continue
            if connected != self._connected:
                self._connected = connected
                self.rib.set_connected(connected)
                self.queue.put_nowait((None, "connected"))
