"""The demo's summary table, rendered from hand-made figures (no namespaces, no daemons)."""

from __future__ import annotations

import io

from rich.console import Console

from bgplb.lab.demo import Options, Run, _summary


def _figures(web_failed: int, host_failed: int) -> dict[str, object]:
    def window(failed: int, ms: int) -> dict[str, object]:
        return {
            "requests": 66,
            "failed": failed,
            "error_window_ms": ms if failed else 0,
            "errors_outside_window": 0,
        }

    return {
        "fresh_requests": {"requests": 20, "answers": {"srv1": 10, "srv2": 10}, "failed": 0},
        "web_stop": {**window(web_failed, 412), "route_drop_ms": 300, "route_back_ms": 250},
        "host_down": {**window(host_failed, 987), "route_drop_ms": 900, "detection": "bfd"},
        "drain": {
            "server": "srv1",
            "broken": 3,
            "broken_before_withdrawal": 1,
            "broken_after_withdrawal": 2,
            "open_at_withdrawal": 19,
            "connections": 20,
            "new_during_drain": {"srv1": 0, "srv2": 0},
            "new_since_drain": {"srv1": 7, "srv2": 3},
            "new_after_withdrawal": {"srv1": 0, "srv2": 12},
            "withdrawal_ms": 6000,
            "agent_withdrawal_ms": 6010,
        },
        "duration_s": 42.0,
    }


def _render(figures: dict[str, object]) -> str:
    out = io.StringIO()
    run = Run(Options(), Console(file=out, width=200, color_system=None))
    run.figures = figures
    _summary(run)
    return out.getvalue()


def test_no_client_errors_shows_no_window() -> None:
    text = _render(_figures(web_failed=0, host_failed=0))
    rows = [line for line in text.splitlines() if "client errors" in line]
    assert len(rows) == 2
    for row in rows:
        assert row.rstrip(" │|").endswith("0/66"), row
        assert "within" not in row


def test_client_errors_show_their_window() -> None:
    text = _render(_figures(web_failed=3, host_failed=0))
    rows = [line for line in text.splitlines() if "client errors" in line]
    assert "3/66 within 412 ms" in rows[0]
    assert "within" not in rows[1] and "0/66" in rows[1]


def test_drain_rows_split_at_the_withdrawal() -> None:
    text = _render(_figures(web_failed=0, host_failed=0))
    lines = text.splitlines()

    def row(label: str) -> str:
        found = [line for line in lines if label in line]
        assert len(found) == 1, (label, text)
        return found[0].rstrip(" │|")

    assert row("broken before the withdrawal").endswith("1/20")
    assert row("after it (open then").endswith("2/19")
    assert row("srv1 since the drain began").endswith("7/10")  # the drained server's share
    assert row("srv1 once out of the route").endswith("0/12")
    assert row("withdrawn by its agent").endswith("6.01 s")


def test_a_reset_when_a_server_rejoins_a_plain_multipath_route_is_counted_apart() -> None:
    """With a plain multipath route (BIRD) the kernel re-hashes every flow when a server
    re-joins: a request in flight then may be reset. It is counted as such, not excused
    silently, and only near that moment; with resilient groups (no `rejoined`) it is unexplained."""
    from bgplb.lab.demo import _client_text, _window
    from bgplb.lab.probes import Answer

    answers = [
        Answer(10.00, 1, 2.0),
        Answer(10.05, None, 1.0, error="refused"),  # the stop: in the window
        Answer(12.01, None, 3.0, error="reset"),  # 10 ms after srv1 re-joined at 12.00
        Answer(13.50, None, 3.0, error="reset"),  # unexplained
        Answer(14.00, 2, 2.0),
    ]
    figs, outside = _window(answers, 10.0, 10.2, rejoined=12.0)
    assert figs["failed"] == 3 and figs["errors_at_rejoin"] == 1
    assert figs["errors_outside_window"] == 1 and [a.t for a in outside] == [13.5]
    figs, outside = _window(answers[:3] + answers[4:], 10.0, 10.2, rejoined=12.0)
    assert figs["errors_outside_window"] == 0 and figs["error_window_ms"] == 50
    assert "1 in flight when srv1 re-joined" in _client_text(figs, outside, "the stop")
    figs, _ = _window(answers[:3] + answers[4:], 10.0, 10.2)  # resilient: nothing excused
    assert figs["errors_outside_window"] == 1 and figs["errors_at_rejoin"] == 0
