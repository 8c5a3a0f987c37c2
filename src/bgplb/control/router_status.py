"""`bgplb status` for the router: the control socket's ``status`` answer as JSON, and the
router's Prometheus metrics (the human rendering of the JSON is in :mod:`bgplb.cli_router`).

The router produces its status as typed values (:class:`bgplb.router.status.RouterStatus`, built
by :class:`bgplb.router.report.RouterReport` from its parts: paging, bucket shares, never a walk
over every VIP on the event loop); this module only turns it into JSON
(:meth:`RouterStatus.to_json`, the schema in docs/status.md, "Router") and into metric
families. The metrics are computed once a second from counters the router maintains (O(peers))
and handed to the scrape thread as one list
(:class:`~bgplb.control.metrics.SnapshotCollector`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from bgplb.bgp.fsm import State
from bgplb.config.router import RouterControlConfig
from bgplb.control.metrics import BfdCollector, Family, MetricsServer, SnapshotCollector
from bgplb.control.socket import ControlError, ControlServer
from bgplb.router.report import (
    CHUNK,
    VIPS_LIMIT,
    VIPS_MAX,
    PageError,
    Reporting,
    RouterReport,
    report_of,
)
from bgplb.router.status import PinningStatus

__all__ = [
    "CHUNK",
    "VIPS_LIMIT",
    "VIPS_MAX",
    "RouterStatusServer",
    "build_status",
    "metric_families",
    "status_answer",
]

log = logging.getLogger("bgplb.router")

#: Reasons a connection is refused that exist whatever the configuration (bgplb.router.ranges;
#: "max_sessions RANGE" is per range).
REFUSAL_REASONS: dict[str, int] = {"rate": 0, "outside": 0, "gtsm": 0}

#: Runs a long-lived task under the router's supervision (``Supervisor._supervise``).
Supervise = Callable[[str, Callable[[], Coroutine[Any, Any, None]]], Coroutine[Any, Any, None]]


def build_status(
    router: RouterReport | Reporting, *, buckets: bool = True, shares: Any = None
) -> dict[str, Any]:
    """The whole status document, every VIP included, in one go (blocking: for tools and tests;
    the control socket answers with :func:`status_answer`)."""
    return report_of(router).build(buckets=buckets, shares=shares).to_json()


async def status_answer(
    router: RouterReport | Reporting, request: dict[str, Any]
) -> dict[str, Any]:
    """The JSON answer of the control socket's ``status`` (one page of VIPs)."""
    try:
        status = await report_of(router).answer(request)
    except PageError as exc:
        raise ControlError(str(exc)) from None
    return status.to_json()


class RouterStatusServer:
    """The router's control socket (``status``) and metrics endpoint.

    `config`: ``[control]``; `report`: the router's status; `supervise`: runs the metrics
    refresh under the router's supervision."""

    def __init__(
        self, config: RouterControlConfig, report: RouterReport, supervise: Supervise
    ) -> None:
        self.config = config
        self.report = report
        self.supervise = supervise
        self.control = ControlServer(config.socket)
        self.control.register("status", self._status)
        self.metrics: MetricsServer | None = None
        self.collector: SnapshotCollector | None = None
        self._task: asyncio.Task[None] | None = None

    async def _status(self, request: dict[str, Any]) -> dict[str, Any]:
        return await status_answer(self.report, request)

    async def start(self) -> None:
        await self.control.start()
        address = self.config.metrics
        if address is None:
            return
        try:
            self.metrics = MetricsServer()
            BfdCollector(self.metrics, "router", self._bfd_rows)
            self.collector = SnapshotCollector(self.metrics)
            self.collector.set(metric_families(self.report))
            self.metrics.start(address.host, address.port)
        except Exception as exc:  # metrics are optional: a busy port must not stop routing
            log.error("metrics on %s not started: %s", address, exc)
            self.metrics = None
            return
        self._task = asyncio.get_running_loop().create_task(
            self.supervise("metrics", self._refresh)
        )

    def _bfd_rows(self) -> list[tuple[str, dict[str, Any]]]:
        entries = list(self.report.sessions.peers.items())
        return [(str(a), e.bfd.status()) for a, e in entries if e.bfd is not None]

    async def _refresh(self) -> None:
        # O(peers) on the loop once a second; the scrape (another thread) reads the result
        assert self.collector is not None
        while True:
            self.collector.set(metric_families(self.report, await self.report.read_pins()))
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.metrics is not None:
            self.metrics.close()
        await self.control.close()


def metric_families(
    source: RouterReport | Reporting, pins: PinningStatus | None = None
) -> list[Family]:
    """The router's metrics (``bgplb_router_*``) from counters it maintains: O(peers), no VIP is
    visited."""
    report = report_of(source)
    sessions, kernel, supervisor = report.sessions, report.kernel, report.supervisor
    c = supervisor.counters
    rib = report.rib
    by_state: dict[str, int] = {}
    Samples = list[tuple[tuple[str, ...], float]]
    established: Samples = []
    prefixes: Samples = []
    filtered: Samples = []
    refused: Samples = []
    for address, entry in list(sessions.peers.items()):
        peer: tuple[str, ...] = (str(address),)
        state = entry.peer.session.state
        by_state[state.value] = by_state.get(state.value, 0) + 1
        established.append((peer, 1.0 if state is State.ESTABLISHED else 0.0))
        rib_state = rib.peers.get(peer[0])
        prefixes.append((peer, float(rib_state.prefix_count if rib_state else 0)))
        filtered.append((peer, float(entry.filtered)))
        flow = supervisor.flow_of(entry)
        refused.append((peer, float(flow.refused if flow else 0)))
    restarting = sum(
        1
        for s in rib.peers.values()
        if not s.established and s.stale_deadline is not None and s.fail_open_until is None
    )
    if restarting:
        by_state["restarting"] = restarting
    kept_peers = sum(1 for s in rib.peers.values() if s.fail_open_until is not None)
    if kept_peers:
        by_state["fail-open"] = kept_peers
    queue = supervisor.queue_status()
    watch = report.loop_watch()
    loop = watch.read() if watch is not None else None
    if pins is None:
        pins = report.pins(counts=False)
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
            # the fixed reasons are exported at 0 before their first refusal (rate() sees it)
            [
                ((k,), float(v))
                for k, v in sorted((REFUSAL_REASONS | sessions.admission.refused).items())
            ],
        ),
        ("gauge", "router_vips", "VIPs in the RIB", (), [((), float(len(rib.vips)))]),
        (
            "gauge",
            "router_fail_open_vips",
            "VIPs whose paths are kept by fail-open (all lost to failures at once)",
            (),
            [((), float(rib.fail_open_vips))],
        ),
        (
            "gauge",
            "router_vips_installed",
            "VIPs with a usable nexthop (desired FIB)",
            (),
            [((), float(len(kernel.installed)))],
        ),
        (
            "gauge",
            "router_vips_by_nexthops",
            "Installed VIPs by their number of next hops (1: one server left)",
            ("nexthops",),
            [((k,), float(v)) for k, v in sorted(list(kernel.nexthop_counts.items())) if v],
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
            [((), float(queue.depth))],
        ),
        (
            "gauge",
            "router_queue_peak_events",
            "Most session events ever waiting",
            (),
            [((), float(queue.peak))],
        ),
        (
            "gauge",
            "router_paused_peers",
            "Peers not read (too many pending events)",
            (),
            [((), float(queue.paused_peers))],
        ),
        (
            "counter",
            "router_pauses",
            "Times a peer's reading was paused",
            (),
            [((), float(queue.pauses))],
        ),
        (
            "gauge",
            "router_events",
            "Router event counters",
            ("event",),
            [((k,), float(v)) for k, v in _event_counters(report).items()],
        ),
        (
            "gauge",
            "router_pinned_connections",
            "Conntrack entries pinned to the server (connection pinning)",
            ("server",),
            [((srv.address,), float(srv.connections or 0)) for srv in pins.servers or ()],
        ),
    ]
    engine = getattr(kernel.fib, "engine", None)  # the FIB's counters, read without its lock
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


def _event_counters(report: RouterReport) -> dict[str, int]:
    c = report.supervisor.counters
    return {
        "refused_connections": c.refused_connections,
        "filtered_prefixes": c.filtered_prefixes,
        "refused_prefixes": c.refused_prefixes,
        "bad_bandwidth": c.bad_bandwidth,
        "max_prefix_resets": c.max_prefix_resets,
        "updates_received": c.updates_received,
        "fib_applies": c.fib_applies,
        "fib_errors": c.fib_errors,
        "reloads": report.sessions.reloads,
    }
