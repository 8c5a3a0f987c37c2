"""`bgplb agent` against BIRD: order of withdrawal and VIP removal on the wire, TCP-MD5,
Graceful Restart (restart keeping routes), bad configs refused at start."""

from __future__ import annotations

import datetime
import signal
import subprocess
from pathlib import Path

import pytest
from agent_lab import VIP4, build_lab, wait_for
from wirecapture import Capture, _tshark

pytestmark = pytest.mark.interop


def start(lab, services=None):
    lab.start(services)
    lab.wait_nexthops([s.address for s in lab.servers])


def withdrawal_times(pcap: Path, source: str) -> list[float]:
    """Arrival times (epoch) of UPDATEs from `source` withdrawing the VIP."""
    out = _tshark(
        pcap, (179,), "-Y", f"ip.src == {source} && bgp.withdrawn_prefix == 198.51.100.10",
        "-T", "fields", "-e", "frame.time_epoch",
    )  # fmt: skip
    return [float(x) for x in out.split()]


def address_deleted_at(monitor_output: str, vip: str) -> float | None:
    """The time `ip -ts monitor address` saw `vip` deleted (local time stamps)."""
    for line in monitor_output.splitlines():
        if "Deleted" in line and f"{vip.split('/')[0]}/" in line and line.startswith("["):
            stamp = line[1 : line.index("]")]
            return datetime.datetime.fromisoformat(stamp).timestamp()
    return None


def test_vip_still_on_lo_when_the_withdrawal_arrives(topo, daemons, tmp_path):
    lab = build_lab(topo, daemons)
    try:
        start(lab)
        s1, s2 = lab.servers
        monitor = s1.ns.popen(
            "ip", "-ts", "monitor", "address", stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        pcap = tmp_path / "drain.pcap"
        try:
            with Capture(lab.router, "eth-s1", pcap):
                s1.cli("drain", "--socket", str(s1.socket))
                lab.wait_nexthops([s2.address], timeout=10)
                wait_for(lambda: not s1.has_vip(VIP4), 10, "VIP removed")
        finally:
            monitor.terminate()
            output = monitor.communicate(timeout=5)[0].decode()
        withdrawn = withdrawal_times(pcap, s1.address)
        deleted = address_deleted_at(output, VIP4)
        assert withdrawn, "no withdrawal captured at the router"
        assert deleted is not None, f"no address deletion seen:\n{output}"
        assert withdrawn[0] < deleted, (withdrawn, deleted)
    finally:
        lab.close()


def test_md5_towards_the_router(topo, daemons):
    lab = build_lab(topo, daemons, password="s3cret-md5")
    try:
        start(lab)
        s1, _ = lab.servers
        assert s1.status()["peers"][0]["state"].lower() == "established"
    finally:
        lab.close()


def test_md5_wrong_password_never_establishes(topo, daemons):
    lab = build_lab(topo, daemons, password="right")
    try:
        lab.bird.start()
        s1, _ = lab.servers
        s1.peer_extra = 'password = "wrong"'
        s1.write_config(s1.service())
        s1.start_http()
        s1.start_agent()
        # bounded: several connect attempts, none gets through
        wait_for(lambda: s1.status()["peers"][0]["last_error"], 15, "a connect error")
        assert lab.bird.neighbor_state(s1.address) != "established"
        assert "MD5" in s1.status()["peers"][0]["last_error"]
    finally:
        lab.close()


@pytest.mark.serial  # the agent must be back within the 5 s restart time
def test_graceful_restart_keeps_nexthop_through_agent_restart(topo, daemons):
    lab = build_lab(topo, daemons, graceful_restart=True)
    try:
        start(lab)
        s1, s2 = lab.servers
        s1.signal(signal.SIGUSR1)  # exit keeping routes
        assert s1.wait_exit() == 0
        assert s1.has_vip(VIP4)  # left on lo
        # BIRD keeps the stale route while the agent is away
        wait_for(lambda: lab.bird.neighbor_state(s1.address) != "established", 10, "session down")
        assert lab.nexthops() == sorted([s1.address, s2.address])
        s1.start_agent()
        lab.bird.wait_established(s1.address, timeout=20)
        # re-announced (and End-of-RIB) without ever losing the nexthop
        for _ in range(10):
            assert lab.nexthops() == sorted([s1.address, s2.address])
        log = s1.log_path.read_text()
        assert "graceful restart" in log
    finally:
        lab.close()


def test_graceful_restart_route_dropped_if_agent_does_not_return(topo, daemons):
    lab = build_lab(topo, daemons, graceful_restart=True)
    try:
        start(lab)
        s1, s2 = lab.servers
        s1.signal(signal.SIGUSR1)
        assert s1.wait_exit() == 0
        # restart time is 5 s in the lab config: BIRD drops the stale path after it
        lab.wait_nexthops([s2.address], timeout=20)
    finally:
        lab.close()
