"""Prometheus metrics for the daemons (prometheus-client): one registry per daemon, served in
the text format at ``http://[control].metrics/metrics`` by a small HTTP server thread.

Generic on purpose (the agent and the router both use it): a daemon makes a
:class:`MetricsServer`, defines its metric families on ``server.registry`` and calls
``start()``; ``close()`` stops the thread. Nothing here knows about BGP.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("bgplb.control")

__all__ = [
    "BfdCollector",
    "Counter",
    "Family",
    "Gauge",
    "Histogram",
    "MetricsServer",
    "SnapshotCollector",
]


class MetricsServer:
    """A per-daemon registry and the HTTP server exposing it."""

    def __init__(self, namespace: str = "bgplb") -> None:
        self.namespace = namespace
        self.registry = CollectorRegistry(auto_describe=True)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, namespace=self.namespace, registry=self.registry)

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, namespace=self.namespace, registry=self.registry)

    def histogram(
        self,
        name: str,
        doc: str,
        labels: tuple[str, ...] = (),
        buckets: tuple[float, ...] = Histogram.DEFAULT_BUCKETS,
    ) -> Histogram:
        return Histogram(
            name, doc, labels, namespace=self.namespace, registry=self.registry, buckets=buckets
        )

    def start(self, host: str, port: int) -> None:
        """Serve ``/metrics`` on host:port (port 0: any free port, see ``address``)."""
        self.close()
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.address = (host, int(self._server.server_port))
        log.info("metrics on http://%s:%d/metrics", host, self.address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        self.address = None


class BfdCollector:
    """BFD sessions as Prometheus metrics, read at scrape time (in the HTTP server's thread).

    ``rows()`` returns ``(peer, status)`` pairs, ``status`` being
    :meth:`bgplb.io.bgp_bfd.BfdLink.status`. Metrics (``<namespace>_<role>_bfd_...``, label
    ``peer``): ``state`` (0 AdminDown, 1 Down, 2 Init, 3 Up), ``tx_interval_seconds``,
    ``detection_time_seconds`` (negotiated), ``local_diag`` (RFC 5880 code of the last local
    diagnostic), ``downs_total`` (Up -> Down transitions that tore the BGP session down).
    """

    def __init__(
        self, server: MetricsServer, role: str, rows: Callable[[], list[tuple[str, dict[str, Any]]]]
    ) -> None:
        self.prefix = f"{server.namespace}_{role}_bfd"
        self.rows = rows
        server.registry.register(self)

    def describe(self) -> list[Any]:
        return []  # unchecked collector: the families depend on the sessions

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        p = self.prefix
        state = GaugeMetricFamily(
            f"{p}_state", "BFD state (0 AdminDown, 1 Down, 2 Init, 3 Up)", labels=["peer"]
        )
        tx = GaugeMetricFamily(
            f"{p}_tx_interval_seconds", "Negotiated BFD transmit interval", labels=["peer"]
        )
        detect = GaugeMetricFamily(
            f"{p}_detection_time_seconds", "Negotiated BFD detection time", labels=["peer"]
        )
        diag = GaugeMetricFamily(
            f"{p}_local_diag", "Last local BFD diagnostic code (RFC 5880 4.1)", labels=["peer"]
        )
        downs = CounterMetricFamily(
            f"{p}_downs", "BFD Up->Down transitions that tore the BGP session down", labels=["peer"]
        )
        try:
            rows = self.rows()
        except Exception as exc:  # the daemon changed its tables meanwhile: skip this scrape
            log.debug("BFD metrics: %s", exc)
            rows = []
        for peer, st in rows:
            state.add_metric([peer], st["state_code"])
            downs.add_metric([peer], st["downs"])
            if "tx_interval_ms" in st:
                tx.add_metric([peer], st["tx_interval_ms"] / 1000)
                detect.add_metric([peer], st["detection_time_ms"] / 1000)
                diag.add_metric([peer], st["local_diag_code"])
        yield from (state, tx, detect, diag, downs)


#: One metric family: kind ("gauge" or "counter"), name (without the namespace; a counter gets
#: ``_total``), help text, label names, samples as (label values, value).
Family = tuple[str, str, str, tuple[str, ...], list[tuple[tuple[str, ...], float]]]


class SnapshotCollector:
    """Metric families the daemon computes on its own thread (its event loop) and hands over
    with `set`; a scrape (in the HTTP server's thread) only reads the last list handed over, so
    it never walks the daemon's tables while they change."""

    def __init__(self, server: MetricsServer) -> None:
        self.namespace = server.namespace
        self._families: list[Family] = []
        server.registry.register(self)

    def set(self, families: list[Family]) -> None:
        self._families = families  # one reference swap: atomic for the reading thread

    def describe(self) -> list[Any]:
        return []  # unchecked collector: the families are whatever was last set

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for kind, name, doc, labels, samples in self._families:
            full = f"{self.namespace}_{name}"
            family: Any = (
                CounterMetricFamily(full, doc, labels=list(labels))
                if kind == "counter"
                else GaugeMetricFamily(full, doc, labels=list(labels))
            )
            for values, value in samples:
                family.add_metric(list(values), value)
            yield family
