"""`bgplb demo --routers 2` end to end, as a user runs it (the CLI in a subprocess, `--json`
parsed): two routers behind an upstream's ECMP, one dies under 60 long-lived connections.

With `[fib] group = "consistent"` (the default of `--routers 2`) router2 sends every connection
router A carried to the same server: none breaks. The control, `--group resilient`: each router's
group has its own history and hash seed, so connections do break — the demo can tell the two
apart. Nothing is left behind either way.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from test_demo import _prerequisites, assert_nothing_left, run_cli

pytestmark = [pytest.mark.netns, pytest.mark.serial]


def run_demo(*args: str) -> dict[str, Any]:
    proc = run_cli("demo", "--routers", "2", "--servers", "3", "--json", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures: dict[str, Any] = json.loads(proc.stdout)
    return figures


def check_common(figures: dict[str, Any]) -> dict[str, Any]:
    assert figures["routers"] == 2
    fresh = figures["fresh_requests"]
    assert fresh["failed"] == 0, fresh
    assert all(n > 0 for n in fresh["answers"].values()), fresh  # all three servers answer
    rd: dict[str, Any] = figures["router_dies"]
    assert rd["connections"] == 60 and rd["failed_to_open"] == 0, rd
    assert rd["broken_before_death"] == 0, rd
    assert rd["fresh_after_death"]["failed"] == 0, rd  # router2 alone serves new connections
    assert_nothing_left(figures["cleanup"], 3)
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in figures["cleanup"]["namespaces"] if n in netns]
    return rd


def test_demo_two_routers_consistent_router_dies_nothing_breaks() -> None:
    _prerequisites()
    figures = run_demo()
    assert figures["group"] == "consistent"
    rd = check_common(figures)
    assert rd["broken"] == 0, rd
    assert rd["requests_after_death"] > 0, rd


def test_demo_two_routers_resilient_router_dies_connections_break() -> None:
    _prerequisites()
    figures = run_demo("--group", "resilient")
    assert figures["group"] == "resilient"
    rd = check_common(figures)
    # about half the connections came through the dead router; router2 maps most of them
    # (2 in 3 with 3 servers) to another server, which resets them
    assert rd["broken"] > 0, rd
    assert set(rd["reasons"]) <= {"connection reset", "another server answered"}, rd
