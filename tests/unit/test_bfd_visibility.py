"""BFD in `bgplb status` (the BFD cell) and in Prometheus (BfdCollector), from status rows as
bgplb.io.bgp_bfd.BfdLink.status() makes them."""

from __future__ import annotations

from prometheus_client import generate_latest

from bgplb.control.agent_status import bfd_text
from bgplb.control.metrics import BfdCollector, MetricsServer

UP = {
    "configured": {"interval_ms": 100, "multiplier": 3},
    "state": "up",
    "state_code": 3,
    "downs": 1,
    "last_down_diag": "control detection time expired",
    "last_down_at": 1.0,
    "tx_interval_ms": 100.0,
    "detection_time_ms": 300.0,
    "local_diag_code": 1,
}


def test_bfd_cell() -> None:
    assert bfd_text(None).plain == "-"
    text = bfd_text(UP).plain
    assert text.startswith("up tx 100ms, detect 300ms")
    assert "last down: control detection time expired (1x)" in text
    assert bfd_text({"state": "down", "state_code": 1, "downs": 0}).plain == "down"


def test_bfd_cell_says_when_the_peer_never_answered() -> None:
    """A router without BFD: no packet ever came back, so there is no detection time to show
    ("detect 0ms" misled operators); the cell says what usually causes it."""
    silent = UP | {"state": "down", "downs": 0, "last_down_diag": None, "packets_received": 0}
    text = bfd_text(silent).plain
    assert text == "down tx 100ms, no packet from the peer yet (BFD not configured there?)"
    assert "detect" in bfd_text(UP | {"packets_received": 12}).plain


def test_bfd_metrics() -> None:
    server = MetricsServer()
    rows = [("192.0.2.1", UP), ("192.0.2.5", {"state": "down", "state_code": 1, "downs": 0})]
    BfdCollector(server, "router", lambda: rows)
    text = generate_latest(server.registry).decode()
    assert 'bgplb_router_bfd_state{peer="192.0.2.1"} 3.0' in text
    assert 'bgplb_router_bfd_state{peer="192.0.2.5"} 1.0' in text
    assert 'bgplb_router_bfd_detection_time_seconds{peer="192.0.2.1"} 0.3' in text
    assert 'bgplb_router_bfd_local_diag{peer="192.0.2.1"} 1.0' in text
    assert 'bgplb_router_bfd_downs_total{peer="192.0.2.1"} 1.0' in text


def test_bfd_metrics_survive_a_failing_snapshot() -> None:
    server = MetricsServer()

    def rows() -> list[tuple[str, dict[str, object]]]:
        raise RuntimeError("dictionary changed size during iteration")

    BfdCollector(server, "agent", rows)  # type: ignore[arg-type]
    assert "bgplb_agent_bfd_state" in generate_latest(server.registry).decode()
