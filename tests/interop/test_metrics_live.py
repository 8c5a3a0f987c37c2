"""The dashboard and the alert rules of contrib/ against running daemons: a real `bgplb router`
and a real `bgplb agent` in network namespaces, each with its metrics endpoint on, scraped over
HTTP as Prometheus would. Every metric the dashboard and the alerts use must be served by the
daemon of its role (`bgplb_agent_*` by the agent, `bgplb_router_*` by the router) with every
label the queries match, group by or show.

tests/unit/test_contrib.py checks the same queries against the registries built in-process;
this one catches what only a running daemon shows (a collector not registered at start-up, a
family that never gets a sample, a label renamed on the way to the exposition).

Layout (tests/interop/agent_lab.py): router namespace `rt` (connection pinning on), server s1
(192.0.2.2) with an HTTP service checked by its agent, announcing 198.51.100.10/32 with BFD on
the session. Labelled counters only get a series with their first event, so the test causes the
events the dashboard counts: a refused BGP connection, a withdrawal (the HTTP server stopped), a
BFD teardown and session flap (s1's traffic dropped). Every scrape is kept; a series served in
any of them counts. Only `bgplb_router_internal_errors_total` (an unexpected exception) cannot
be caused: it must be declared, its labels are checked in-process only. No timing is asserted.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from agent_lab import SERVER_AS, VIP4, Server, add_servers, wait_for
from prometheus_client.parser import text_string_to_metric_families
from test_router_interop import RouterProc, hops, router_config

from contrib_queries import (
    PROMETHEUS_SERIES,
    TARGET_LABELS,
    alert_queries,
    dashboard_queries,
    selectors,
    usage_problems,
    used_metrics,
)

pytestmark = [pytest.mark.interop]

AGENT_METRICS = "127.0.0.1:9180"
ROUTER_METRICS = "127.0.0.1:9181"
ROLES = {"bgplb_agent_": "agent", "bgplb_router_": "router"}

ROUTER_CONFIG = router_config(
    f"""
[[peer_ranges]]
prefix = "192.0.2.0/24"
asn = {SERVER_AS}
accept = ["198.51.100.0/24 le 32"]
bfd = {{ interval_ms = 300, multiplier = 5 }}
""",
    "pinning = true",  # so that the router serves bgplb_router_pinned_connections{server}
).replace('metrics = "off"', f'metrics = "{ROUTER_METRICS}"')
#: BFD slow enough for a loaded host: only the session's existence matters here, not its state
AGENT_PEER = "bfd = { interval_ms = 300, multiplier = 5 }\n"

#: Metrics whose first series only comes with a failure this test cannot cause honestly
ONLY_ON_FAILURE = {"bgplb_router_internal_errors_total"}  # an unexpected exception in a task
#: A TCP connection to the router's BGP port from an address of no peer range: refused
REFUSED_CONNECTION = (
    "import socket\n"
    "s = socket.create_connection(('127.0.0.1', 179), timeout=10)\n"
    "s.settimeout(10)\n"
    "s.recv(4096)  # the router's NOTIFICATION, or the close\n"
    "s.close()\n"
)

#: Counter and histogram families expose these sample names (text format 0.0.4).
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}


def scrape(ns, address: str) -> str:
    """GET http://address/metrics from inside `ns` (the endpoint is on its loopback)."""
    code = (
        "import sys, urllib.request\n"
        f"r = urllib.request.urlopen('http://{address}/metrics', timeout=10)\n"
        "assert r.status == 200, r.status\n"
        "ctype = r.headers.get('Content-Type', '')\n"
        "assert ctype.startswith('text/plain'), ctype\n"
        "sys.stdout.write(r.read().decode())\n"
    )
    return ns.exec(sys.executable, "-c", code, timeout=20)


def exposed(text: str) -> tuple[dict[str, set[str]], set[str]]:
    """({sample name: its labels} of every sample, the sample names of families that have
    none yet) of a Prometheus text exposition; each series also gets the labels Prometheus adds
    on scraping."""
    series: dict[str, set[str]] = {}
    empty: set[str] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels, TARGET_LABELS)
        if not family.samples:
            empty.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
    return series, empty


def merged(texts: list[str]) -> tuple[dict[str, set[str]], set[str]]:
    """`exposed` over several scrapes of one daemon: a series served once counts."""
    series: dict[str, set[str]] = {}
    empty: set[str] = set()
    for text in texts:
        got, none = exposed(text)
        for name, labels in got.items():
            series.setdefault(name, set()).update(labels)
        empty |= none
    return series, empty - set(series)


def metrics_of(expr: str) -> set[str]:
    return {name for name, _ in selectors(expr)[0]}


def role_of(metric: str) -> str | None:
    return next((role for prefix, role in ROLES.items() if metric.startswith(prefix)), None)


def test_exposition_parser_sees_samples_and_empty_families() -> None:
    """The parsing above, on a known exposition (guards the live test against vacuity)."""
    text = (
        "# HELP bgplb_router_paths paths\n# TYPE bgplb_router_paths gauge\n"
        'bgplb_router_paths{vip="198.51.100.10/32"} 2.0\n'
        "# HELP bgplb_router_pauses pauses\n# TYPE bgplb_router_pauses counter\n"
    )
    series, empty = exposed(text)
    assert series == {"bgplb_router_paths": {"vip", "job", "instance"}}
    assert empty == {"bgplb_router_pauses_total"}
    assert role_of("bgplb_router_paths") == "router" and role_of("up") is None


def test_dashboard_and_alerts_metrics_are_served_by_the_running_daemons(topo) -> None:
    rt = topo.add("rt")
    rt.sysctl("net.ipv4.ip_forward", 1)
    workdir = Path(tempfile.mkdtemp(prefix="bgplb-metrics-live-"))
    router = RouterProc(rt, workdir, ROUTER_CONFIG)
    servers: list[Server] = []
    try:
        servers = add_servers(topo, rt, count=1)
        (s1,) = servers
        s1.extra_config = "graceful_restart = false"
        s1.peer_extra = AGENT_PEER
        router.start()
        s1.write_config(s1.service())
        config = s1.config_path.read_text()
        assert 'metrics = "off"' in config
        s1.config_path.write_text(config.replace('metrics = "off"', f'metrics = "{AGENT_METRICS}"'))
        s1.start_http()
        s1.start_agent()
        router.wait_established(s1.address, timeout=30)
        wait_for(lambda: hops(rt, VIP4) == [s1.address], 30, "the VIP routed to s1")

        scrapes: dict[str, list[str]] = {"agent": [], "router": []}

        def scrape_until(what: str, *needles: tuple[str, str]) -> None:
            """Scrape both daemons until every (role, text) needle is in its exposition."""

            def probe() -> bool:
                for role, ns, address in (
                    ("agent", s1.ns, AGENT_METRICS),
                    ("router", rt, ROUTER_METRICS),
                ):
                    scrapes[role].append(scrape(ns, address))
                return all(text in scrapes[role][-1] for role, text in needles)

            wait_for(probe, 30, what)

        scrape_until(
            "checks, BFD sessions and the routed VIP in the expositions",
            ("agent", "bgplb_agent_check_duration_seconds_bucket{"),
            ("agent", "bgplb_agent_bfd_state{"),
            ("router", "bgplb_router_bfd_state{"),
            # the router's snapshot is refreshed once a second: wait for one with the VIP
            ("router", "\nbgplb_router_vips_installed 1.0"),
        )
        # Labelled counters get their first series with their first event: cause the events
        # the dashboard and the alerts count (each scrape is kept: a series served once counts).
        rt.exec(sys.executable, "-c", REFUSED_CONNECTION, timeout=20)
        scrape_until("a refused connection", ("router", "bgplb_router_refused_connections_total{"))
        s1.stop_http()  # the check fails: the VIP is withdrawn
        scrape_until("a withdrawal", ("agent", "bgplb_agent_withdrawals_total{"))
        s1.ns.drop_all_traffic()  # BFD goes down: the agent closes the session
        scrape_until(
            "a BFD teardown and a session flap",
            ("agent", "bgplb_agent_bfd_teardowns_total{"),
            ("agent", "bgplb_agent_session_flaps_total{"),
        )
        s1.ns.allow_all_traffic()
        by_role = {role: merged(texts) for role, texts in scrapes.items()}

        problems = []
        for metric in sorted(used_metrics()):
            role = role_of(metric)
            if role is None:
                assert metric in PROMETHEUS_SERIES, f"{metric}: neither agent's nor router's"
                continue
            series, empty = by_role[role]
            if metric in ONLY_ON_FAILURE and metric in empty | set(series):
                continue  # declared; its labels are checked in-process (tests/unit/test_contrib)
            if metric in empty:
                problems.append(f"{metric}: the {role} declares it but serves no sample")
            elif metric not in series:
                other = "router" if role == "agent" else "agent"
                where = f" (the {other} serves it)" if metric in by_role[other][0] else ""
                problems.append(f"{metric}: not served by the {role}{where}")
        # each metric as its own daemon serves it: one must not pass thanks to the other daemon
        served = dict(PROMETHEUS_SERIES)
        for role, (series, _) in by_role.items():
            served.update((k, v) for k, v in series.items() if role_of(k) == role)
        for queries, alerts in ((dashboard_queries(), False), (alert_queries(), True)):
            checkable = [q for q in queries if not ONLY_ON_FAILURE & metrics_of(q[1])]
            problems += usage_problems(served, checkable, alerts=alerts)
        assert not problems, "\n".join(problems)

        for s in servers:
            assert "Traceback" not in s.log_path.read_text()
        assert "Traceback" not in router.log_text()
    finally:
        for s in servers:
            s.stop()
        if router.proc is not None:
            router.stop()
        for s in servers:
            shutil.rmtree(s.workdir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
