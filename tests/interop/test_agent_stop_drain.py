"""Stop drain against BIRD 2 in namespaces: s1's agent has a ``systemd`` check on a fake
systemd (private dbus-daemon, driven from this test); the unit entering ``deactivating`` makes
BIRD receive s1's route with GRACEFUL_SHUTDOWN (65535:0) before the withdrawal that
``inactive`` causes; ``active`` again brings s1 back into the kernel's multipath route."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from agent_lab import VIP4, build_lab, wait_for
from fake_systemd import ThreadedSystemd, private_bus

from prerequisites import require_binary

pytestmark = pytest.mark.interop


@pytest.fixture
def systemd() -> Iterator[ThreadedSystemd]:
    if shutil.which("dbus-daemon") is None:
        require_binary("dbus-daemon")
    with private_bus() as address:
        fake = ThreadedSystemd(address)
        try:
            yield fake
        finally:
            fake.close()


@pytest.fixture
def lab(topo, daemons):
    lab = build_lab(topo, daemons)
    try:
        yield lab
    finally:
        lab.close()


def _systemd_check(address: str) -> str:
    return f"""
[[services.checks]]
type = "systemd"
unit = "nginx.service"
bus = "{address}"
damping = false
"""


def test_deactivating_drains_with_graceful_shutdown_before_the_withdrawal(lab, systemd):
    s1, s2 = lab.servers
    lab.bird.start()
    for s in lab.servers:
        text = s.service(rise=1)
        if s is s1:  # a long drain_time: only the unit going inactive ends this drain
            text = text.replace('drain_time = "2s"', 'drain_time = "30s"')
            text += _systemd_check(systemd.address)
        s.write_config(text)
        s.start_http()
        s.start_agent()
    for s in lab.servers:
        lab.bird.wait_established(s.address, timeout=20)
    lab.wait_nexthops([s1.address, s2.address])

    def from_s1(routes: list[Any]) -> list[Any]:
        return [r for r in routes if r.prefix == VIP4 and r.next_hop == s1.address]

    assert all("65535:0" not in r.communities for r in from_s1(lab.bird.received_routes()))
    systemd.set("deactivating")  # systemctl stop nginx: systemd has not run ExecStop= yet
    lab.bird.wait_routes(
        lambda rs: any("65535:0" in r.communities for r in from_s1(rs)),
        timeout=5,
        what="GRACEFUL_SHUTDOWN from s1",
    )
    web = s1.status()["services"][0]
    assert web["status"] == "draining" and "unit deactivating" in web["reason"], web
    assert s1.has_vip(VIP4)  # still serving while it drains
    assert s1.status()["services"][0]["drained"] is False  # not the operator's drain
    systemd.set("inactive")  # the unit stopped: withdrawn at once (drain_time is 30 s)
    lab.wait_nexthops([s2.address], timeout=5)
    assert from_s1(lab.bird.received_routes()) == []
    wait_for(lambda: not s1.has_vip(VIP4), 10, "VIP removed from s1's lo")
    systemd.set("activating")
    systemd.set("active")  # the start is over: announced again, without 65535:0
    lab.wait_nexthops([s1.address, s2.address], timeout=10)
    routes = from_s1(lab.bird.received_routes())
    assert routes and all("65535:0" not in r.communities for r in routes)
