"""A planned restart of srv1's nginx under client load fails no request: ``bgplb drain web
--wait``, nginx stopped (SIGQUIT) and started, ``bgplb undrain web`` (BIRD 2 and ``bgplb
router``); and the stop drain of a ``systemd`` check (fake systemd on a private D-Bus). The
same restart without telling the agent fails requests (so the count can fail).

1,500 fresh requests at 250/s from the client namespace to the VIP, each bounded by 1 s
(tests/interop/restart_lab.py)."""

from __future__ import annotations

import shutil

import pytest
from restart_lab import planned_restart

from bgplb.lab.netns import can_use_netns
from prerequisites import require_binary, unavailable

pytestmark = [pytest.mark.interop, pytest.mark.serial]

REQUESTS = 1500


@pytest.fixture(autouse=True)
def _prerequisites() -> None:
    reason = can_use_netns()
    if reason:
        unavailable(reason)
    require_binary("nginx")
    require_binary("curl")


@pytest.mark.parametrize(
    ("mode", "router"), [("drain", "bird"), ("drain", "bgplb"), ("systemd", "bgplb")]
)
def test_planned_restart_fails_no_request(mode: str, router: str) -> None:
    if router == "bird":
        require_binary("bird")
    if mode == "systemd" and shutil.which("dbus-daemon") is None:
        require_binary("dbus-daemon")
    result = planned_restart(mode, router, requests=REQUESTS)
    assert len(result.answers) >= 1000
    assert result.failed == [], result.line()
    by_server = result.by_server()
    assert by_server.get(1, 0) > 100 and by_server.get(2, 0) > 100, result.line()  # spread
    restarted = next(t for t, what in result.events if what.startswith("nginx started"))
    back = [a for a in result.answers if a.server == 1 and a.t - result.t0 > restarted]
    assert back, "srv1 answered nothing after its restart"


def test_the_same_restart_without_the_agent_fails_requests() -> None:
    require_binary("bird")
    result = planned_restart("naive", "bird", requests=REQUESTS, down_time=0.5)
    assert len(result.failed) > 0, result.line()
