"""`bgplb status` for the router: the JSON answer of the control socket, its human rendering,
and the router's Prometheus metrics.

The answer of ``{"command": "status"}`` is::

    {"role": "router", "asn": 65530, "router_id": "192.0.2.1", "uptime": 12.3,
     "fib": {"install": true, "group": "resilient", "buckets": 512, "table": 254, ...},
     "peers": [{"address", "asn", "state", "prefixes", "stale", "filtered", "uptime",
                "bfd": None or {"state", "tx_interval_ms", "detection_time_ms", "local_diag",
                                "remote_diag", "last_down_diag", "downs", ...}, ...}],
     "vips": [{"vip": "198.51.100.10/32",
               "nexthops": [{"address", "ifindex", "weight", "draining", "stale", "peers",
                             "buckets", "share"}]}],
     "counters": {...}}

``share`` is the fraction of the resilient group's buckets the nexthop holds now (None for
multipath groups or when not installed). The shares come from one kernel read per request
(`KernelFib.buckets_shares`), done in a worker thread by the control socket, and at most
`KernelFib`'s bucket limit is read: ``fib.bucket_shares`` = ``{"shown", "omitted", "limit"}``
says how many VIPs' shares were left out (their ``buckets``/``share`` are None).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from bgplb.control.socket import ControlServer
from bgplb.router import pinning_runtime as router_pinning

if TYPE_CHECKING:
    from rich.console import Console

    from bgplb.router.daemon import Router

log = logging.getLogger("bgplb.router")


def _wants_shares(router: Router) -> bool:
    return router.fib is not None and router.config.fib.group == "resilient"


def read_shares(router: Router) -> Any:
    """The bucket shares of every installed VIP (a `KernelFib.BucketShares`) in one kernel
    read, or None (no FIB, multipath, or kernel trouble: status must not break on it).
    Blocking: call it with `asyncio.to_thread` from the event loop."""
    fib = router.fib
    if fib is None or not _wants_shares(router):
        return None
    try:
        return fib.buckets_shares()
    except Exception as exc:
        log.debug("bucket shares: %s", exc)
        return None


def build_status(router: Router, *, buckets: bool = True, shares: Any = None) -> dict[str, Any]:
    """The status document (see the module docstring). `shares`: the result of
    `read_shares(router)`; None with `buckets` reads it here (blocking: one kernel dump)."""
    c = router.config
    if buckets and shares is None:
        shares = read_shares(router)
    by_vip: dict[Any, dict[Any, int]] = shares.shares if shares is not None else {}
    vips = []
    for vip in sorted(router.rib.vips):
        entry = router.rib.fib_entry(vip)
        share = by_vip.get(vip.network, {}) if entry else {}
        total = sum(share.values())
        nexthops = [
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
        ]
        paths = router.rib.paths(vip)
        vips.append(
            {
                "vip": str(vip),
                "installed": bool(entry) and c.fib.install,
                "paths": len(paths),
                "unusable": sorted(
                    str(p.next_hop)
                    for p in paths.values()
                    if router.rib.resolve(p.next_hop) is None
                ),
                "nexthops": nexthops,
            }
        )
    return {
        "role": "router",
        "asn": c.bgp.asn,
        "router_id": str(router.router_id),
        "uptime": round(time.time() - router.counters.started_at, 1),
        "fib": {
            "install": c.fib.install,
            "group": c.fib.group,
            "buckets": c.fib.buckets,
            "table": c.fib.table,
            "idle_timer": c.fib.idle_timer,
            "unbalanced_timer": c.fib.unbalanced_timer,
            "reinstalls": getattr(router.fib, "reinstalls", 0),
            "bucket_shares": None
            if shares is None
            else {"shown": len(by_vip), "omitted": len(shares.omitted), "limit": shares.limit},
        },
        "peer_ranges": [
            {
                "prefix": str(r.network),
                "asn": r.config.asn,
                "max_prefixes": r.config.max_prefixes,
                "accept": str(r.accept),
                "password": bool(r.config.password),
                "bfd": r.config.bfd.model_dump() if r.config.bfd is not None else None,
            }
            for r in router.ranges
        ],
        "peers": router.peer_rows(),
        "vips": vips,
        "pinning": router_pinning.status(router),
        "counters": {
            "refused_connections": router.counters.refused_connections,
            "filtered_prefixes": router.counters.filtered_prefixes,
            "max_prefix_resets": router.counters.max_prefix_resets,
            "updates_received": router.counters.updates_received,
            "fib_applies": router.counters.fib_applies,
            "fib_errors": router.counters.fib_errors,
            "reloads": router.reloads,
        },
    }


class RouterStatusServer:
    """The router's control socket (``status``) and metrics endpoint."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.control = ControlServer(router.config.control.socket)
        self.control.register("status", self._status)
        self.metrics: Any = None
        self._task: asyncio.Task[None] | None = None

    async def _status(self, request: dict[str, Any]) -> dict[str, Any]:
        # the kernel read (one dump, then one bucket dump per group) runs off the event loop;
        # KernelFib reads through its own socket, so an apply in another thread is unaffected
        shares = await asyncio.to_thread(read_shares, self.router)
        return build_status(self.router, buckets=shares is not None, shares=shares)

    async def start(self) -> None:
        await self.control.start()
        address = self.router.config.control.metrics
        if address is None:
            return
        try:
            from bgplb.control.metrics import BfdCollector, MetricsServer

            self.metrics = _RouterMetrics(MetricsServer())
            BfdCollector(self.metrics.server, "router", self._bfd_rows)
            self.metrics.server.start(address.host, address.port)
        except Exception as exc:  # metrics are optional: a busy port must not stop routing
            log.error("metrics on %s not started: %s", address, exc)
            self.metrics = None
            return
        self._task = asyncio.get_running_loop().create_task(self._refresh())

    def _bfd_rows(self) -> list[tuple[str, dict[str, Any]]]:
        entries = list(self.router.peers.items())
        return [(str(a), e.bfd.status()) for a, e in entries if e.bfd is not None]

    async def _refresh(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self.metrics.update(build_status(self.router, buckets=False))
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.metrics is not None:
            self.metrics.server.close()
        await self.control.close()


class _RouterMetrics:
    def __init__(self, server: Any) -> None:
        self.server = server
        s = server
        self.peer_up = s.gauge(
            "router_peer_established", "1 if the session is Established", ("peer",)
        )
        self.peer_prefixes = s.gauge("router_peer_prefixes", "Prefixes in the RIB", ("peer",))
        self.vip_nexthops = s.gauge("router_vip_nexthops", "Nexthops in the VIP's group", ("vip",))
        self.vip_draining = s.gauge("router_vip_draining_nexthops", "Draining nexthops", ("vip",))
        self.counters = s.gauge("router_events", "Router event counters", ("event",))
        self.pinned = s.gauge(
            "router_pinned_connections",
            "Conntrack entries pinned to the server (connection pinning)",
            ("server",),
        )

    def update(self, status: dict[str, Any]) -> None:
        for gauge in (self.peer_up, self.peer_prefixes, self.vip_nexthops, self.vip_draining):
            gauge.clear()
        for p in status["peers"]:
            self.peer_up.labels(p["address"]).set(1 if p["established"] else 0)
            self.peer_prefixes.labels(p["address"]).set(p["prefixes"])
        for v in status["vips"]:
            self.vip_nexthops.labels(v["vip"]).set(len(v["nexthops"]))
            self.vip_draining.labels(v["vip"]).set(sum(n["draining"] for n in v["nexthops"]))
        for name, value in status["counters"].items():
            self.counters.labels(name).set(value)
        self.pinned.clear()
        for srv in status.get("pinning", {}).get("servers", []):
            self.pinned.labels(srv["address"]).set(srv["connections"] or 0)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def render_status(status: dict[str, Any], console: Console | None = None) -> None:
    """Print the router status as tables (rich)."""
    from rich.console import Console
    from rich.table import Table

    from bgplb.control.agent_status import bfd_text

    console = console or Console()
    fib = status["fib"]
    console.print(
        f"[bold]bgplb router[/bold] AS {status['asn']} id {status['router_id']}  "
        f"fib: {fib['group'] if fib['install'] else 'not installed'}"
        + (f" ({fib['buckets']} buckets)" if fib["group"] == "resilient" else "")
    )
    peers = Table(title="Peers")
    for col in ("address", "AS", "state", "prefixes", "filtered", "uptime", "BFD", "last error"):
        peers.add_column(col)
    for p in status["peers"]:
        state = p["state"] + (f" ({p['stale']} stale)" if p.get("stale") else "")
        peers.add_row(
            p["address"],
            str(p["asn"] or "-"),
            state,
            str(p["prefixes"]),
            str(p["filtered"]),
            _duration(p["uptime"]),
            bfd_text(p.get("bfd")),
            "" if p["established"] else (p.get("last_error") or ""),
        )
    console.print(peers)
    vips = Table(title="VIPs")
    for col in ("VIP", "nexthop", "weight", "state", "buckets", "share"):
        vips.add_column(col)
    for v in status["vips"]:
        if not v["nexthops"]:
            vips.add_row(v["vip"], "(no usable nexthop)", "", "", "", "")
        for i, n in enumerate(v["nexthops"]):
            state = "draining" if n["draining"] else "stale" if n["stale"] else "active"
            vips.add_row(
                v["vip"] if i == 0 else "",
                n["address"],
                str(n["weight"]),
                state,
                "-" if n["buckets"] is None else str(n["buckets"]),
                "-" if n["share"] is None else f"{100 * n['share']:.1f}%",
            )
    console.print(vips)
    counted = fib.get("bucket_shares") or {}
    if counted.get("omitted"):
        console.print(
            f"[yellow]bucket shares of {counted['omitted']} VIP(s) not read[/yellow]: "
            f"over {counted['limit']} buckets per status request"
        )
    pinning = status.get("pinning") or {}
    if pinning.get("enabled"):
        pins = Table(title=f"Connection pinning (mark mask {pinning['mark_mask']})")
        for col in ("server", "mark", "table", "VIPs", "connections"):
            pins.add_column(col)
        for srv in pinning["servers"]:
            pins.add_row(
                srv["address"],
                srv["mark"],
                str(srv["table"]),
                ", ".join(f"{v} ({st})" for v, st in srv["vips"].items()),
                "-" if srv["connections"] is None else str(srv["connections"]),
            )
        console.print(pins)
        for reason in pinning.get("refused", []):
            console.print(f"[yellow]not pinned:[/yellow] {reason}")
