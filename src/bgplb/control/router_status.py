"""`bgplb status` for the router: the JSON answer of the control socket, and the router's
Prometheus metrics (the human rendering is in :mod:`bgplb.cli_router`).

The answer of ``{"command": "status"}`` (optional ``vips_offset``, ``vips_limit``, ``vip``)::

    {"role": "router", "asn": 65530, "router_id": "192.0.2.1", "uptime": 12.3,
     "fib": {"install": true, "group": "resilient", "buckets": 512, "table": 254, ...,
             "status": KernelSide.fib_status()},
     "peer_ranges": [{"prefix", "sessions", "max_sessions", "ttl_security", ...}],
     "peers": [{"address", "asn", "state", "prefixes", "stale", "filtered", "refused",
                "bad_bandwidth", "pending_events", "paused", "uptime", "last_error",
                "bfd": None or {"state", "tx_interval_ms", "detection_time_ms", ...}, ...}],
     "vips": [{"vip": "198.51.100.10/32", "installed", "paths",
               "unusable": [{"peer", "next_hop", "reason"}],
               "nexthops": [{"address", "ifindex", "weight", "draining", "stale", "peers",
                             "buckets", "share"}],
               "consistent": None or {"size", "seed", "fingerprint", "shares"}}],
     "vips_total": 100000, "vips_offset": 0, "vips_omitted": 99900,
     "queue": {"depth", "peak", "paused_peers", "pauses", "max_pending"},
     "loop": LoopWatch figures, "pinning": {...},
     "counters": {..., "internal_errors": {task: n}, "internal_resets": n}}

**Never a walk over every VIP on the event loop.** Everything but ``vips`` is O(peers + ranges).
``vips`` is one page of the VIPs in sorted order (default :data:`VIPS_LIMIT`, at most
:data:`VIPS_MAX`): the keys are copied (~1 ms per 100k), the page's keys found by a chunked scan
(pages near the start) or sorted in runs and merged lazily up to the page's end, and the rows
built :data:`CHUNK` at a time, yielding to the loop in between. The page's keys are reused
while no VIP appears or leaves, and for at most :data:`PAGE_MAX_AGE` while they do.
The metrics are computed once a second from counters the router maintains (O(peers)) and handed
to the scrape thread as one list (:class:`~bgplb.control.metrics.SnapshotCollector`).

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
import contextlib
import heapq
import itertools
import logging
import time
import weakref
from typing import TYPE_CHECKING, Any

from bgplb.bgp.fsm import State
from bgplb.bgp.prefix import Prefix
from bgplb.control.metrics import BfdCollector, Family, MetricsServer, SnapshotCollector
from bgplb.control.socket import ControlError, ControlServer
from bgplb.router import pinning_runtime as router_pinning

if TYPE_CHECKING:
    from bgplb.router.daemon import Router

log = logging.getLogger("bgplb.router")


def _wants_shares(router: Router) -> bool:
    return router.fib is not None and router.config.fib.group == "resilient"


def read_shares(router: Router, vips: list[Any] | None = None) -> Any:
    """The bucket shares of the installed VIPs `vips` (all when None; a
    `KernelFib.BucketShares`), or None (no FIB, multipath, or kernel trouble: status must not
    break on it). Blocking: call it with `asyncio.to_thread` from the event loop."""
    fib = router.fib
    if fib is None or not _wants_shares(router):
        return None
    try:
        return fib.buckets_shares(vips)
    except Exception as exc:
        log.debug("bucket shares: %s", exc)
        return None


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


def peer_rows(router: Router) -> list[dict[str, Any]]:
    """One row per peer (and per peer gone but holding stale routes): O(peers)."""
    now = asyncio.get_running_loop().time()
    rows = []
    for address, entry in sorted(router.peers.items(), key=lambda kv: (kv[0].version, kv[0])):
        s = entry.peer.session
        neg = s.negotiated
        state = router.rib.peers.get(str(address))
        flow = router.flows.get(id(entry))
        if flow is not None and flow.entry is not entry:
            flow = None
        rows.append(
            {
                "address": str(address),
                "asn": neg.peer_asn if neg is not None else None,
                "state": s.state.value,
                "established": s.state is State.ESTABLISHED,
                "prefixes": state.prefix_count if state else 0,
                "stale": _stale(state),
                "filtered": entry.filtered,
                "refused": flow.refused if flow else 0,
                "bad_bandwidth": flow.bad_bandwidth if flow else 0,
                "pending_events": flow.pending if flow else 0,
                "paused": flow.paused if flow else False,
                "uptime": round(now - s.established_at, 1) if s.established_at else None,
                "range": str(entry.range.network),
                "graceful_restart": (
                    neg.peer_graceful_restart.restart_time
                    if neg is not None and neg.peer_graceful_restart is not None
                    else None
                ),
                "last_error": s.last_error or entry.last_error,
                "bfd": entry.bfd.status() if entry.bfd is not None else None,
            }
        )
    # peers gone but still holding stale routes (graceful restart)
    for key, state in router.rib.peers.items():
        if not state.established and state.stale_deadline is not None:
            rows.append(
                {
                    "address": key,
                    "asn": state.asn,
                    "state": "restarting",
                    "established": False,
                    "prefixes": state.prefix_count,
                    "stale": _stale(state),
                    "filtered": 0,
                    "refused": 0,
                    "uptime": None,
                    "range": None,
                    "graceful_restart": state.restart_time,
                    "stale_until": round(state.stale_deadline - now, 1),
                    "last_error": None,
                }
            )
    return rows


def _stale(state: Any) -> int:
    # stale paths exist only while a deadline is armed: skip the O(paths) count otherwise
    return int(state.stale_count) if state is not None and state.stale_deadline is not None else 0


def vip_row(router: Router, vip: Any, by_vip: dict[Any, dict[Any, int]]) -> dict[str, Any] | None:
    """The status row of one VIP (None if it is gone): O(its paths). ``unusable``: the paths
    not in its FIB entry, as ``{"peer", "next_hop", "reason"}``."""
    rib = router.rib
    if vip not in rib.vips:
        return None
    paths = rib.paths(vip)
    entry = rib.fib_entry(vip)
    share = by_vip.get(vip.network, {}) if entry else {}
    total = sum(share.values())
    reasons = getattr(rib, "unusable", None)
    if reasons is not None:
        why = dict(reasons(vip))
    else:  # a RIB without reasons: the next hop is not in a connected subnet
        why = {
            k: "next hop not in a connected subnet"
            for k, p in paths.items()
            if rib.resolve(p.next_hop) is None
        }
    return {
        "vip": str(vip),
        "installed": bool(entry) and router.config.fib.install,
        "paths": len(paths),
        "unusable": [
            {
                "peer": peer,
                "next_hop": str(paths[peer].next_hop) if peer in paths else None,
                "reason": reason,
            }
            for peer, reason in sorted(why.items())
        ],
        "nexthops": [
            {
                "address": str(n.address),
                "ifindex": n.ifindex,
                "weight": n.weight,
                "draining": n.draining,
                "stale": n.stale,
                "peers": list(n.peers),
                "buckets": share.get(n.address) if share else None,
                "share": round(share.get(n.address, 0) / total, 4) if total else None,
            }
            for n in entry
        ],
        "consistent": router_pinning.consistent_status(router, vip.network),
    }


def summary(router: Router, shares: Any = None, pins: Any = None) -> dict[str, Any]:
    """The status document without its VIP rows: O(peers + ranges), never O(VIPs). `pins`: the
    pinning status with its conntrack counts (:func:`read_pins`), else it is shown without."""
    c = router.config
    by_vip = shares.shares if shares is not None else {}
    counters = router.counters
    sessions: dict[Any, int] = {}
    for entry in list(router.peers.values()):
        sessions[entry.range.network] = sessions.get(entry.range.network, 0) + 1
    return {
        "role": "router",
        "asn": c.bgp.asn,
        "router_id": str(router.router_id),
        "uptime": round(time.time() - counters.started_at, 1),
        "fib": {
            "install": c.fib.install,
            "group": c.fib.group,
            "buckets": c.fib.buckets,
            "table": c.fib.table,
            "idle_timer": c.fib.idle_timer,
            "unbalanced_timer": c.fib.unbalanced_timer,
            "reinstalls": getattr(router.fib, "reinstalls", 0),
            "installed_vips": len(router.installed),
            "bucket_shares": None
            if shares is None
            else {"shown": len(by_vip), "omitted": len(shares.omitted), "limit": shares.limit},
            "status": router.fib_status(),
        },
        "peer_ranges": [
            {
                "prefix": str(r.network),
                "asn": r.config.asn,
                "max_prefixes": r.config.max_prefixes,
                "sessions": sessions.get(r.network, 0),
                "max_sessions": r.config.max_sessions,
                "ttl_security": r.config.ttl_security,
                "allow_default": r.config.allow_default,
                "allow_third_party_next_hop": r.config.allow_third_party_next_hop,
                "accept": str(r.accept),
                "password": bool(r.config.password),
                "bfd": r.config.bfd.model_dump() if r.config.bfd is not None else None,
            }
            for r in router.ranges
        ],
        "peers": peer_rows(router),
        "pinning": pins if pins is not None else router_pinning.status(router, counts=False),
        "queue": router.queue_stats(),
        "loop": router.loop_watch.read() if router.loop_watch is not None else None,
        "counters": {
            "refused_connections": counters.refused_connections,
            "refused_connections_by_reason": dict(router._admission().refused),
            "filtered_prefixes": counters.filtered_prefixes,
            "refused_prefixes": counters.refused_prefixes,
            "bad_bandwidth": counters.bad_bandwidth,
            "max_prefix_resets": counters.max_prefix_resets,
            "updates_received": counters.updates_received,
            "fib_applies": counters.fib_applies,
            "fib_errors": counters.fib_errors,
            "reloads": router.reloads,
            "internal_resets": counters.internal_resets,
            "internal_errors": dict(counters.internal_errors),
        },
    }


def build_status(router: Router, *, buckets: bool = True, shares: Any = None) -> dict[str, Any]:
    """The whole status document, every VIP included, in one go (blocking: for tools and tests;
    the control socket answers with :func:`status_answer`). `shares`: the result of
    `read_shares(router)`; None with `buckets` reads it here (one kernel dump)."""
    if buckets and shares is None:
        shares = read_shares(router)
    doc = summary(router, shares)
    by_vip = shares.shares if shares is not None else {}
    rows = [vip_row(router, vip, by_vip) for vip in sorted(router.rib.vips)]
    doc["vips"] = [r for r in rows if r is not None]
    doc.update(vips_total=len(doc["vips"]), vips_offset=0, vips_omitted=0)
    return doc


async def read_pins(router: Router) -> Any:
    """The pinning status with its connection counts: the conntrack dump (O(connections)) runs
    in a worker thread, like the pinning's own syncs."""
    if router.pinning is None:
        return router_pinning.status(router)
    try:
        return await asyncio.to_thread(router_pinning.status, router)
    except Exception as exc:  # it changed under our feet: without counts this time
        log.debug("pinning status: %s", exc)
        return router_pinning.status(router, counts=False)


def _page(request: dict[str, Any]) -> tuple[int, int, Any]:
    offset = request.get("vips_offset", 0)
    limit = request.get("vips_limit", VIPS_LIMIT)
    for name, value in (("vips_offset", offset), ("vips_limit", limit)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ControlError(f"{name} must be a non-negative integer, not {value!r}")
    if limit > VIPS_MAX:
        raise ControlError(f"vips_limit is at most {VIPS_MAX} (page with vips_offset)")
    only = request.get("vip")
    if only is not None:
        try:
            only = Prefix.parse(str(only))
        except ValueError as exc:
            raise ControlError(f"vip: {exc}") from None
    return offset, limit, only


async def status_answer(router: Router, request: dict[str, Any]) -> dict[str, Any]:
    """The answer of the control socket's ``status``: the summary and one page of VIPs (sorted;
    ``vips_offset``/``vips_limit``, or ``vip`` for one), built without stalling the event loop:
    the kernel read runs in a thread, the sort and the rows a chunk at a time."""
    offset, limit, only = _page(request)
    if only is not None:
        total = 1 if only in router.rib.vips else 0
        page = [only][offset : offset + limit] if total else []
    else:
        total = len(router.rib.vips)
        page = await _cached_page(router, offset, limit)
    shares = late = None
    if page and _wants_shares(router):  # the page's VIPs only: no dump of every route
        shares, late = await _shares_in_time(router, [v.network for v in page])
    doc = summary(router, shares, await read_pins(router))
    if late is not None:
        doc["fib"]["bucket_shares_skipped"] = late
    by_vip = shares.shares if shares is not None else {}
    rows: list[dict[str, Any]] = []
    for start in range(0, len(page), CHUNK):
        for vip in page[start : start + CHUNK]:
            row = vip_row(router, vip, by_vip)
            if row is not None:
                rows.append(row)
        await asyncio.sleep(0)
    doc["vips"] = rows
    doc.update(vips_total=total, vips_offset=offset, vips_omitted=total - len(rows))
    return doc


#: How long a status answer waits for the bucket shares (a kernel read in a worker thread).
SHARES_WAIT = 0.05
_share_reads: weakref.WeakKeyDictionary[Any, asyncio.Future[Any]] = weakref.WeakKeyDictionary()


async def _shares_in_time(router: Router, nets: list[Any]) -> tuple[Any, str | None]:
    """(the bucket shares of `nets`, None), or (None, why not) when the kernel read takes
    longer than SHARES_WAIT: while a 100k-VIP FIB sync runs in another thread, the read's
    netlink round trips each wait for the interpreter lock, and the answer must not wait for
    them. The read goes on; the next request starts a new one only once it has ended."""
    running = _share_reads.get(router)
    if running is not None and not running.done():
        return None, "the previous read of the kernel is still running (FIB busy)"
    read = asyncio.ensure_future(asyncio.to_thread(read_shares, router, nets))
    _share_reads[router] = read
    try:
        return await asyncio.wait_for(asyncio.shield(read), SHARES_WAIT), None
    except TimeoutError:
        return None, f"the kernel read took longer than {SHARES_WAIT * 1000:.0f} ms (FIB busy)"


#: A page of sorted VIPs is reused while no VIP appeared or left, and for at most this many
#: seconds while they do (a 100k-VIP load): the scan costs ~10-40 ms of the loop per request.
PAGE_MAX_AGE = 1.0
_pages: weakref.WeakKeyDictionary[Any, tuple[int, float, int, int, list[Any]]] = (
    weakref.WeakKeyDictionary()
)


async def _cached_page(router: Router, offset: int, limit: int) -> list[Any]:
    """The sorted page [offset, offset + limit) of the VIPs: from the last request when the VIP
    set is unchanged (``Rib.vips_version``) or the page is younger than PAGE_MAX_AGE (then a VIP
    added since may be missing from it, one gone since is skipped by the rows)."""
    rib = router.rib
    version = getattr(rib, "vips_version", None)
    now = time.monotonic()
    cached = _pages.get(router)
    if cached is not None and version is not None:
        c_version, c_at, c_offset, c_limit, c_page = cached
        fresh = c_version == version or now - c_at < PAGE_MAX_AGE
        if fresh and (c_offset, c_limit) == (offset, limit):
            return c_page
    keys = list(rib.vips)  # a copy of the keys: ~1 ms per 100k
    page = await _sorted_page(keys, offset, limit)
    if version is not None:
        _pages[router] = (version, now, offset, limit, page)
    return page


async def _sorted_page(keys: list[Any], offset: int, limit: int) -> list[Any]:
    """keys[offset:offset + limit] in sorted order, yielding to the loop every few ms: sorted
    runs of SORT_CHUNK keys, then a lazy merge up to the page's end."""
    if not limit or offset >= len(keys):
        return []
    end = offset + limit
    if end <= SCAN_MAX:
        # the smallest `end` of each chunk, then of those: O(n log end), a few yields
        best: list[Any] = []
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


class RouterStatusServer:
    """The router's control socket (``status``) and metrics endpoint."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.control = ControlServer(router.config.control.socket)
        self.control.register("status", self._status)
        self.metrics: Any = None
        self.collector: SnapshotCollector | None = None
        self._task: asyncio.Task[None] | None = None

    async def _status(self, request: dict[str, Any]) -> dict[str, Any]:
        return await status_answer(self.router, request)

    async def start(self) -> None:
        await self.control.start()
        address = self.router.config.control.metrics
        if address is None:
            return
        try:
            self.metrics = MetricsServer()
            BfdCollector(self.metrics, "router", self._bfd_rows)
            self.collector = SnapshotCollector(self.metrics)
            self.collector.set(metric_families(self.router))
            self.metrics.start(address.host, address.port)
        except Exception as exc:  # metrics are optional: a busy port must not stop routing
            log.error("metrics on %s not started: %s", address, exc)
            self.metrics = None
            return
        self._task = asyncio.get_running_loop().create_task(
            self.router._supervise("metrics", self._refresh)
        )

    def _bfd_rows(self) -> list[tuple[str, dict[str, Any]]]:
        entries = list(self.router.peers.items())
        return [(str(a), e.bfd.status()) for a, e in entries if e.bfd is not None]

    async def _refresh(self) -> None:
        # O(peers) on the loop once a second; the scrape (another thread) reads the result
        assert self.collector is not None
        while True:
            self.collector.set(metric_families(self.router, await read_pins(self.router)))
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.metrics is not None:
            self.metrics.close()
        await self.control.close()


def metric_families(router: Router, pins: Any = None) -> list[Family]:
    """The router's metrics (``bgplb_router_*``) from counters it maintains: O(peers), no VIP is
    visited."""
    c = router.counters
    rib = router.rib
    by_state: dict[str, int] = {}
    Samples = list[tuple[tuple[str, ...], float]]
    established: Samples = []
    prefixes: Samples = []
    filtered: Samples = []
    refused: Samples = []
    for address, entry in list(router.peers.items()):
        peer: tuple[str, ...] = (str(address),)
        state = entry.peer.session.state
        by_state[state.value] = by_state.get(state.value, 0) + 1
        established.append((peer, 1.0 if state is State.ESTABLISHED else 0.0))
        rib_state = rib.peers.get(peer[0])
        prefixes.append((peer, float(rib_state.prefix_count if rib_state else 0)))
        filtered.append((peer, float(entry.filtered)))
        flow = router.flows.get(id(entry))
        refused.append((peer, float(flow.refused if flow and flow.entry is entry else 0)))
    restarting = sum(
        1 for s in rib.peers.values() if not s.established and s.stale_deadline is not None
    )
    if restarting:
        by_state["restarting"] = restarting
    queue = router.queue_stats()
    loop = router.loop_watch.read() if router.loop_watch is not None else None
    if pins is None:
        pins = router_pinning.status(router, counts=False)
    families: list[Family] = [
        (
            "gauge",
            "router_peers",
            "Peers by BGP state",
            ("state",),
            [((k,), float(v)) for k, v in sorted(by_state.items())],
        ),
        (
            "gauge",
            "router_peer_established",
            "1 if the session is Established",
            ("peer",),
            established,
        ),
        ("gauge", "router_peer_prefixes", "Prefixes of the peer in the RIB", ("peer",), prefixes),
        (
            "counter",
            "router_peer_filtered_prefixes",
            "Prefixes filtered by accept",
            ("peer",),
            filtered,
        ),
        (
            "counter",
            "router_peer_refused_prefixes",
            "Prefixes refused by the RIB",
            ("peer",),
            refused,
        ),
        (
            "counter",
            "router_refused_connections",
            "BGP connections refused, by reason",
            ("reason",),
            [((k,), float(v)) for k, v in sorted(router._admission().refused.items())],
        ),
        ("gauge", "router_vips", "VIPs in the RIB", (), [((), float(len(rib.vips)))]),
        (
            "gauge",
            "router_vips_installed",
            "VIPs with a usable nexthop (desired FIB)",
            (),
            [((), float(len(router.installed)))],
        ),
        (
            "gauge",
            "router_vips_by_nexthops",
            "Installed VIPs by their number of next hops (1: one server left)",
            ("nexthops",),
            [((k,), float(v)) for k, v in sorted(list(router.nexthop_counts.items())) if v],
        ),
        (
            "gauge",
            "router_paths",
            "Paths in the RIB",
            (),
            [((), float(sum(s.prefix_count for s in rib.peers.values())))],
        ),
        ("counter", "router_fib_applies", "FIB applies", (), [((), float(c.fib_applies))]),
        ("counter", "router_fib_errors", "FIB errors", (), [((), float(c.fib_errors))]),
        (
            "counter",
            "router_internal_errors",
            "Unexpected exceptions, by task (logged with their traceback)",
            ("task",),
            [((k,), float(v)) for k, v in sorted(c.internal_errors.items())],
        ),
        (
            "counter",
            "router_internal_resets",
            "Peers reset after an internal error",
            (),
            [((), float(c.internal_resets))],
        ),
        (
            "gauge",
            "router_queue_events",
            "Session events waiting for the RIB task",
            (),
            [((), float(queue["depth"]))],
        ),
        (
            "gauge",
            "router_queue_peak_events",
            "Most session events ever waiting",
            (),
            [((), float(queue["peak"]))],
        ),
        (
            "gauge",
            "router_paused_peers",
            "Peers not read (too many pending events)",
            (),
            [((), float(queue["paused_peers"]))],
        ),
        (
            "counter",
            "router_pauses",
            "Times a peer's reading was paused",
            (),
            [((), float(queue["pauses"]))],
        ),
        (
            "gauge",
            "router_events",
            "Router event counters",
            ("event",),
            [((k,), float(v)) for k, v in _event_counters(router).items()],
        ),
        (
            "gauge",
            "router_pinned_connections",
            "Conntrack entries pinned to the server (connection pinning)",
            ("server",),
            [
                ((srv["address"],), float(srv["connections"] or 0))
                for srv in pins.get("servers", [])
            ],
        ),
    ]
    engine = getattr(router.fib, "engine", None)  # the FIB's counters, read without its lock
    if engine is not None:
        families += [
            (
                "counter",
                "router_fib_retries",
                "Retries of VIPs the kernel refused",
                (),
                [((), float(engine.retries))],
            ),
            (
                "gauge",
                "router_fib_failing_vips",
                "VIPs whose last kernel change failed (retried with backoff)",
                (),
                [((), float(len(engine.failed)))],
            ),
            (
                "counter",
                "router_fib_fast_drops",
                "Group-level removals of a lost server's gateway (fast path)",
                (),
                [((), float(engine.fast_drops))],
            ),
        ]
    if loop is not None:
        families += [
            (
                "gauge",
                "router_loop_lateness_seconds",
                "How late the event loop wakes a timer",
                ("stat",),
                [(("max",), loop["max_ms"] / 1000), (("p99",), loop["p99_ms"] / 1000)],
            ),
            (
                "gauge",
                "router_gc_pause_max_seconds",
                "Longest garbage collection since start (it stops every thread)",
                (),
                [((), loop["gc_max_ms"] / 1000)],
            ),
            (
                "counter",
                "router_gc_full_collections",
                "Full (generation 2) garbage collections",
                (),
                [((), float(loop["gc_full"]))],
            ),
        ]
    return families


def _event_counters(router: Router) -> dict[str, int]:
    c = router.counters
    return {
        "refused_connections": c.refused_connections,
        "filtered_prefixes": c.filtered_prefixes,
        "refused_prefixes": c.refused_prefixes,
        "bad_bandwidth": c.bad_bandwidth,
        "max_prefix_resets": c.max_prefix_resets,
        "updates_received": c.updates_received,
        "fib_applies": c.fib_applies,
        "fib_errors": c.fib_errors,
        "reloads": router.reloads,
    }


from bgplb.cli_router import render_status  # noqa: E402  (moved; still importable from here)

__all__ = [
    "CHUNK",
    "VIPS_LIMIT",
    "VIPS_MAX",
    "RouterStatusServer",
    "build_status",
    "metric_families",
    "peer_rows",
    "read_shares",
    "render_status",
    "status_answer",
    "summary",
    "vip_row",
]
