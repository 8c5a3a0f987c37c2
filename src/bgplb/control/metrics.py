"""Prometheus metrics for the daemons (prometheus-client): one registry per daemon, served in
the text format at ``http://[control].metrics/metrics`` by a small HTTP server thread.

Generic on purpose (the agent and the router both use it): a daemon makes a
:class:`MetricsServer`, defines its metric families on ``server.registry`` and calls
``start()``; ``close()`` stops the thread. Nothing here knows about BGP.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("bgplb.control")

__all__ = ["Counter", "Gauge", "Histogram", "MetricsServer"]


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
