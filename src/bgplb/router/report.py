"""The router's status (:class:`~bgplb.router.status.RouterStatus`) built from its parts.

:class:`RouterReport` reads the neighbors and ranges (:class:`~bgplb.router.ranges.PeerRanges`),
the RIB and the FIB (:class:`~bgplb.router.kernel.KernelSide`), the queue and flows
(:class:`~bgplb.router.supervisor.Supervisor`) and the event loop watcher; the control socket
(:mod:`bgplb.control.router_status`) only turns the value into JSON.

The answer of ``{"command": "status"}`` has optional ``vips_offset``, ``vips_limit`` and ``vip``.
**Never a walk over every VIP on the event loop.** Everything but ``vips`` is O(peers + ranges).
``vips`` is one page of the VIPs in sorted order (default :data:`VIPS_LIMIT`, at most
:data:`VIPS_MAX`): the keys are copied (~1 ms per 100k), the page's keys found by a chunked scan
(pages near the start) or sorted in runs and merged lazily up to the page's end, and the rows
built :data:`CHUNK` at a time, yielding to the loop in between. The page's keys are reused
while no VIP appears or leaves, and for at most :data:`PAGE_MAX_AGE` while they do.

``share`` is the fraction of the resilient group's buckets the nexthop holds now (None for
multipath groups or when not installed). The shares come from one kernel read per request
(`KernelFib.buckets_shares`), done in a worker thread, and at most `KernelFib`'s bucket limit is
read: ``fib.bucket_shares`` = ``{"shown", "omitted", "limit"}`` says how many VIPs' shares were
left out (their ``buckets``/``share`` are None). The answer waits at most :data:`SHARES_WAIT`
for that read: when it is late (a big FIB sync holds the interpreter), the VIPs are shown
without shares and ``fib.bucket_shares_skipped`` says why.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from bgplb.bgp.fsm import State
from bgplb.bgp.prefix import Prefix
from bgplb.io.loopwatch import LoopWatch
from bgplb.linux.fibapi import BucketShares as KernelShares
from bgplb.router import pinning_runtime as router_pinning
from bgplb.router.kernel import KernelSide
from bgplb.router.ranges import PeerRanges
from bgplb.router.rib import PeerState, Rib
from bgplb.router.status import (
    BucketShares,
    CounterStatus,
    FibStatus,
    NexthopStatus,
    PeerRangeStatus,
    PeerStatus,
    PinningStatus,
    RestartingPeerStatus,
    RouterStatus,
    UnusablePath,
    VipStatus,
)
from bgplb.router.supervisor import Supervisor

__all__ = [
    "CHUNK",
    "PAGE_MAX_AGE",
    "SHARES_WAIT",
    "VIPS_LIMIT",
    "VIPS_MAX",
    "PageError",
    "Reporting",
    "RouterReport",
    "report_of",
]

log = logging.getLogger("bgplb.router")

#: VIPs listed in one status answer unless the request asks otherwise (``vips_limit``), and the
#: most it may ask; the rest is counted in ``vips_omitted``.
VIPS_LIMIT = 100
VIPS_MAX = 1000
#: VIP rows built between two yields to the event loop.
CHUNK = 100
#: VIPs sorted at a time (a sort holds the interpreter: a thread would not help).
SORT_CHUNK = 1024
#: VIPs scanned at a time for the smallest ones of a page near the start (heapq.nsmallest,
#: ~2-5 ms per chunk): a 100k-VIP table is read in 7 chunks, not sorted.
SCAN_CHUNK = 16384
#: Pages ending before this use the scan; further pages the chunked sort.
SCAN_MAX = 4096
#: How long a status answer waits for the bucket shares (a kernel read in a worker thread).
SHARES_WAIT = 0.05
#: A page of sorted VIPs is reused while no VIP appeared or left, and for at most this many
#: seconds while they do (a 100k-VIP load): the scan costs ~10-40 ms of the loop per request.
PAGE_MAX_AGE = 1.0

#: By VIP network, by gateway: buckets of its resilient group (``KernelShares.shares``).
ByVip = Mapping[Any, Mapping[Any, int]]


class PageError(ValueError):
    """A bad ``vips_offset``, ``vips_limit`` or ``vip`` in a status request."""


class Reporting(Protocol):
    """Something that has a report (the router daemon)."""

    @property
    def report(self) -> RouterReport: ...


def report_of(source: RouterReport | Reporting) -> RouterReport:
    return source if isinstance(source, RouterReport) else source.report


class RouterReport:
    """Builds :class:`RouterStatus` from the router's parts (read only, on the event loop)."""

    def __init__(
        self,
        sessions: PeerRanges,
        kernel: KernelSide,
        supervisor: Supervisor,
        loop_watch: Callable[[], LoopWatch | None] = lambda: None,
    ) -> None:
        self.sessions = sessions
        self.kernel = kernel
        self.supervisor = supervisor
        self.loop_watch = loop_watch
        self._share_read: asyncio.Future[KernelShares | None] | None = None
        self._page: tuple[int, float, int, int, list[Prefix]] | None = None

    @property
    def rib(self) -> Rib:
        return self.kernel.rib

    # -- the bucket shares (a kernel read) ------------------------------------------------------

    def wants_shares(self) -> bool:
        return self.kernel.fib is not None and self.kernel.fib_config.group == "resilient"

    def read_shares(self, vips: list[Any] | None = None) -> KernelShares | None:
        """The bucket shares of the installed VIPs `vips` (all when None), or None (no FIB,
        multipath, or kernel trouble: status must not break on it). Blocking: call it with
        `asyncio.to_thread` from the event loop."""
        fib = self.kernel.fib
        if fib is None or not self.wants_shares():
            return None
        try:
            return fib.buckets_shares(vips)
        except Exception as exc:
            log.debug("bucket shares: %s", exc)
            return None

    async def shares_in_time(self, nets: list[Any]) -> tuple[KernelShares | None, str | None]:
        """(the bucket shares of `nets`, None), or (None, why not) when the kernel read takes
        longer than SHARES_WAIT: while a 100k-VIP FIB sync runs in another thread, the read's
        netlink round trips each wait for the interpreter lock, and the answer must not wait
        for them. The read goes on; the next request starts a new one only once it has ended."""
        running = self._share_read
        if running is not None and not running.done():
            return None, "the previous read of the kernel is still running (FIB busy)"
        read = asyncio.ensure_future(asyncio.to_thread(self.read_shares, nets))
        self._share_read = read
        try:
            return await asyncio.wait_for(asyncio.shield(read), SHARES_WAIT), None
        except TimeoutError:
            return None, f"the kernel read took longer than {SHARES_WAIT * 1000:.0f} ms (FIB busy)"

    # -- pinning ---------------------------------------------------------------------------------

    def pins(self, counts: bool = False) -> PinningStatus:
        return router_pinning.status(self.kernel.pinning, counts=counts)

    async def read_pins(self) -> PinningStatus:
        """The pinning status with its connection counts: the conntrack dump (O(connections))
        runs in a worker thread, like the pinning's own syncs."""
        pinning = self.kernel.pinning
        if pinning is None:
            return router_pinning.status(None)
        try:
            return await asyncio.to_thread(router_pinning.status, pinning)
        except Exception as exc:  # it changed under our feet: without counts this time
            log.debug("pinning status: %s", exc)
            return router_pinning.status(pinning, counts=False)

    # -- rows ------------------------------------------------------------------------------------

    def peer_rows(self) -> tuple[PeerStatus | RestartingPeerStatus, ...]:
        """One row per peer (and per peer gone but holding stale routes): O(peers)."""
        now = asyncio.get_running_loop().time()
        rib = self.rib
        rows: list[PeerStatus | RestartingPeerStatus] = []
        peers = sorted(self.sessions.peers.items(), key=lambda kv: (kv[0].version, kv[0]))
        for address, entry in peers:
            s = entry.peer.session
            neg = s.negotiated
            state = rib.peers.get(str(address))
            flow = self.supervisor.flow_of(entry)
            gr = neg.peer_graceful_restart if neg is not None else None
            rows.append(
                PeerStatus(
                    address=str(address),
                    asn=neg.peer_asn if neg is not None else None,
                    state=s.state.value,
                    established=s.state is State.ESTABLISHED,
                    prefixes=state.prefix_count if state else 0,
                    stale=_stale(state),
                    filtered=entry.filtered,
                    refused=flow.refused if flow else 0,
                    bad_bandwidth=flow.bad_bandwidth if flow else 0,
                    pending_events=flow.pending if flow else 0,
                    paused=flow.paused if flow else False,
                    uptime=round(now - s.established_at, 1) if s.established_at else None,
                    range=str(entry.range.network),
                    graceful_restart=gr.restart_time if gr is not None else None,
                    last_error=s.last_error or entry.last_error,
                    bfd=entry.bfd.status() if entry.bfd is not None else None,
                )
            )
        # peers gone but still holding stale routes (graceful restart)
        for key, st in rib.peers.items():
            if not st.established and st.stale_deadline is not None:
                rows.append(
                    RestartingPeerStatus(
                        address=key,
                        asn=st.asn,
                        state="restarting",
                        established=False,
                        prefixes=st.prefix_count,
                        stale=_stale(st),
                        filtered=0,
                        refused=0,
                        uptime=None,
                        range=None,
                        graceful_restart=st.restart_time,
                        stale_until=round(st.stale_deadline - now, 1),
                        last_error=None,
                    )
                )
        return tuple(rows)

    def vip_row(self, vip: Prefix, by_vip: ByVip) -> VipStatus | None:
        """The status row of one VIP (None if it is gone): O(its paths). ``unusable``: the
        paths not in its FIB entry."""
        rib = self.rib
        if vip not in rib.vips:
            return None
        paths = rib.paths(vip)
        entry = rib.fib_entry(vip)
        share = by_vip.get(vip.network, {}) if entry else {}
        total = sum(share.values())
        why = dict(rib.unusable(vip))
        return VipStatus(
            vip=str(vip),
            installed=bool(entry) and self.kernel.fib_config.install,
            paths=len(paths),
            unusable=tuple(
                UnusablePath(
                    peer=peer,
                    next_hop=str(paths[peer].next_hop) if peer in paths else None,
                    reason=reason,
                )
                for peer, reason in sorted(why.items())
            ),
            nexthops=tuple(
                NexthopStatus(
                    address=str(n.address),
                    ifindex=n.ifindex,
                    weight=n.weight,
                    draining=n.draining,
                    stale=n.stale,
                    peers=tuple(n.peers),
                    buckets=share.get(n.address) if share else None,
                    share=round(share.get(n.address, 0) / total, 4) if total else None,
                )
                for n in entry
            ),
            consistent=router_pinning.consistent_status(self.kernel.pinning, vip.network),
        )

    # -- the document ----------------------------------------------------------------------------

    def status(
        self,
        shares: KernelShares | None = None,
        pins: PinningStatus | None = None,
        vips: tuple[VipStatus, ...] = (),
        total: int = 0,
        offset: int = 0,
        skipped: str | None = None,
    ) -> RouterStatus:
        """The document with the rows `vips` (a page starting at `offset` of `total` VIPs):
        O(peers + ranges + rows), never O(VIPs). `pins`: the pinning status with its conntrack
        counts (:meth:`read_pins`), else it is shown without."""
        sessions, kernel, counters = self.sessions, self.kernel, self.supervisor.counters
        c = sessions.config
        f = kernel.fib_config
        by_range: dict[Any, int] = {}
        for entry in list(sessions.peers.values()):
            by_range[entry.range.network] = by_range.get(entry.range.network, 0) + 1
        watch = self.loop_watch()
        return RouterStatus(
            asn=c.bgp.asn,
            router_id=str(sessions.router_id),
            uptime=round(time.time() - counters.started_at, 1),
            fib=FibStatus(
                install=f.install,
                group=f.group,
                buckets=f.buckets,
                table=f.table,
                idle_timer=f.idle_timer,
                unbalanced_timer=f.unbalanced_timer,
                reinstalls=getattr(kernel.fib, "reinstalls", 0),
                installed_vips=len(kernel.installed),
                bucket_shares=None
                if shares is None
                else BucketShares(len(shares.shares), len(shares.omitted), shares.limit),
                status=kernel.fib_status(),
                bucket_shares_skipped=skipped,
            ),
            peer_ranges=tuple(
                PeerRangeStatus(
                    prefix=str(r.network),
                    asn=r.config.asn,
                    max_prefixes=r.config.max_prefixes,
                    sessions=by_range.get(r.network, 0),
                    max_sessions=r.config.max_sessions,
                    ttl_security=r.config.ttl_security,
                    allow_default=r.config.allow_default,
                    allow_third_party_next_hop=r.config.allow_third_party_next_hop,
                    accept=str(r.accept),
                    password=bool(r.config.password),
                    bfd=r.config.bfd.model_dump() if r.config.bfd is not None else None,
                )
                for r in sessions.ranges
            ),
            peers=self.peer_rows(),
            pinning=pins if pins is not None else self.pins(),
            queue=self.supervisor.queue_status(),
            loop=dict(watch.read()) if watch is not None else None,
            counters=CounterStatus(
                refused_connections=counters.refused_connections,
                refused_connections_by_reason=dict(sessions.admission.refused),
                filtered_prefixes=counters.filtered_prefixes,
                refused_prefixes=counters.refused_prefixes,
                bad_bandwidth=counters.bad_bandwidth,
                max_prefix_resets=counters.max_prefix_resets,
                updates_received=counters.updates_received,
                fib_applies=counters.fib_applies,
                fib_errors=counters.fib_errors,
                reloads=sessions.reloads,
                internal_resets=counters.internal_resets,
                internal_errors=dict(counters.internal_errors),
            ),
            vips=vips,
            vips_total=total,
            vips_offset=offset,
            vips_omitted=total - len(vips),
        )

    def build(self, *, buckets: bool = True, shares: KernelShares | None = None) -> RouterStatus:
        """The whole document, every VIP included, in one go (blocking: for tools and tests; the
        control socket answers with :meth:`answer`). `shares`: the result of
        :meth:`read_shares`; None with `buckets` reads it here (one kernel dump)."""
        if buckets and shares is None:
            shares = self.read_shares()
        by_vip = shares.shares if shares is not None else {}
        rows = [self.vip_row(vip, by_vip) for vip in sorted(self.rib.vips)]
        vips = tuple(r for r in rows if r is not None)
        return self.status(shares, None, vips, len(vips), 0)

    async def answer(self, request: Mapping[str, Any]) -> RouterStatus:
        """The answer of the control socket's ``status``: the summary and one page of VIPs
        (sorted; ``vips_offset``/``vips_limit``, or ``vip`` for one), built without stalling the
        event loop: the kernel read runs in a thread, the sort and the rows a chunk at a time.
        Raises :class:`PageError` on a bad request."""
        offset, limit, only = page_request(request)
        rib = self.rib
        if only is not None:
            total = 1 if only in rib.vips else 0
            page = [only][offset : offset + limit] if total else []
        else:
            total = len(rib.vips)
            page = await self.cached_page(offset, limit)
        shares: KernelShares | None = None
        late: str | None = None
        if page and self.wants_shares():  # the page's VIPs only: no dump of every route
            shares, late = await self.shares_in_time([v.network for v in page])
        pins = await self.read_pins()
        by_vip = shares.shares if shares is not None else {}
        rows: list[VipStatus] = []
        for start in range(0, len(page), CHUNK):
            for vip in page[start : start + CHUNK]:
                row = self.vip_row(vip, by_vip)
                if row is not None:
                    rows.append(row)
            await asyncio.sleep(0)
        return self.status(shares, pins, tuple(rows), total, offset, late)

    async def cached_page(self, offset: int, limit: int) -> list[Prefix]:
        """The sorted page [offset, offset + limit) of the VIPs: from the last request when the
        VIP set is unchanged (``Rib.vips_version``) or the page is younger than PAGE_MAX_AGE
        (then a VIP added since may be missing from it, one gone since is skipped by the
        rows)."""
        rib = self.rib
        version = rib.vips_version
        now = time.monotonic()
        cached = self._page
        if cached is not None:
            c_version, c_at, c_offset, c_limit, c_page = cached
            fresh = c_version == version or now - c_at < PAGE_MAX_AGE
            if fresh and (c_offset, c_limit) == (offset, limit):
                return c_page
        keys = list(rib.vips)  # a copy of the keys: ~1 ms per 100k
        page = await sorted_page(keys, offset, limit)
        self._page = (version, now, offset, limit, page)
        return page


def page_request(request: Mapping[str, Any]) -> tuple[int, int, Prefix | None]:
    """(vips_offset, vips_limit, vip) of a status request."""
    offset = request.get("vips_offset", 0)
    limit = request.get("vips_limit", VIPS_LIMIT)
    for name, value in (("vips_offset", offset), ("vips_limit", limit)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise PageError(f"{name} must be a non-negative integer, not {value!r}")
    if limit > VIPS_MAX:
        raise PageError(f"vips_limit is at most {VIPS_MAX} (page with vips_offset)")
    only = request.get("vip")
    if only is None:
        return offset, limit, None
    try:
        return offset, limit, Prefix.parse(str(only))
    except ValueError as exc:
        raise PageError(f"vip: {exc}") from None


async def sorted_page(keys: list[Prefix], offset: int, limit: int) -> list[Prefix]:
    """keys[offset:offset + limit] in sorted order, yielding to the loop every few ms: sorted
    runs of SORT_CHUNK keys, then a lazy merge up to the page's end."""
    if not limit or offset >= len(keys):
        return []
    end = offset + limit
    if end <= SCAN_MAX:
        # the smallest `end` of each chunk, then of those: O(n log end), a few yields
        best: list[Prefix] = []
        for start in range(0, len(keys), SCAN_CHUNK):
            best = heapq.nsmallest(end, itertools.chain(best, keys[start : start + SCAN_CHUNK]))
            await asyncio.sleep(0)
        return best[offset:end]
    runs = []
    for start in range(0, len(keys), SORT_CHUNK):
        runs.append(sorted(keys[start : start + SORT_CHUNK]))
        await asyncio.sleep(0)
    page = []
    for n, key in enumerate(heapq.merge(*runs)):
        if n >= offset + limit:
            break
        if n >= offset:
            page.append(key)
        if n % SORT_CHUNK == SORT_CHUNK - 1:
            await asyncio.sleep(0)
    return page


def _stale(state: PeerState | None) -> int:
    # stale paths exist only while a deadline is armed: skip the O(paths) count otherwise
    return int(state.stale_count) if state is not None and state.stale_deadline is not None else 0
