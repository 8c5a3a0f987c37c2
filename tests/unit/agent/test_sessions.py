"""PeerSessions on fake peers (real, pure BGP sessions; no sockets) and a fake BFD service:
every session carries every announcement, peers come and go, BFD tears a session down and it
starts again, the status rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_fakes import FakeClock, config, fake_peers, settle

from bgplb.agent.bfd_links import BFD_RESTART_DELAY
from bgplb.agent.metrics import AgentMetrics
from bgplb.agent.runtime import CurrentConfig
from bgplb.agent.sessions import PeerSessions
from bgplb.agent.status import HeldBack
from bgplb.bfd import Diag, State
from bgplb.bgp.attributes import Origin, PathAttributes
from bgplb.bgp.errors import CeaseSubcode
from bgplb.bgp.events import SessionDown, SessionEstablished
from bgplb.bgp.fsm import State as BgpState
from bgplb.bgp.prefix import Prefix
from bgplb.config import PeerConfig
from bgplb.control.metrics import MetricsServer

pytestmark = pytest.mark.anyio

P = Prefix.from_network(__import__("ipaddress").ip_network("198.51.100.10/32"))
ATTRS = PathAttributes(origin=Origin.IGP)


class FakeBfdHandle:
    def __init__(self, notify) -> None:
        self.state = State.DOWN
        self.info = None
        self.event_info = None
        self.notify = notify
        self.released = False

    def release(self) -> None:
        self.released = True


class FakeBfd:
    def __init__(self) -> None:
        self.handles: list[FakeBfdHandle] = []
        self.closed = False

    def request(self, peer, local, multihop, interval_ms, multiplier, notify, min_ttl):
        handle = FakeBfdHandle(notify)
        self.handles.append(handle)
        return handle

    def close(self) -> None:
        self.closed = True


def rig(tmp_path: Path, bfd: FakeBfd | None = None):
    path, cfg = config(tmp_path)
    peers, factory = fake_peers()
    server = MetricsServer()
    clock = FakeClock()
    sessions = PeerSessions(
        CurrentConfig(path, cfg),
        AgentMetrics(server),
        clock,
        peer_factory=factory,  # type: ignore[arg-type]
        bfd_factory=(lambda: bfd) if bfd else (lambda: FakeBfd()),  # type: ignore[arg-type,return-value]
    )
    return cfg, sessions, peers, server, clock


def peer_cfg(address: str, **kw: object) -> PeerConfig:
    return PeerConfig.model_validate({"address": address, "asn": 65000, **kw})


async def test_router_id_is_needed_before_a_peer(tmp_path: Path) -> None:
    cfg, sessions, *_ = rig(tmp_path)
    with pytest.raises(RuntimeError):
        sessions.add(cfg.peers[0])


async def test_every_session_carries_every_announcement(tmp_path: Path) -> None:
    cfg, sessions, peers, server, _ = rig(tmp_path)
    sessions.router_id = cfg.bgp.router_id
    first = sessions.add(cfg.peers[0], start=False)
    sessions.announce(P, ATTRS)
    sessions.add(peer_cfg("192.0.2.5"))  # a later peer gets what is announced
    assert [p.calls for p in peers] == [[], ["start"]]
    for p in peers:
        assert p.session.rib_out.has_pending()
    sessions.kick()
    assert all(p.calls[-1] == "kick" for p in peers)
    sessions.withdraw(P)
    assert sessions.announced == {}
    sessions.start_all()
    assert first.calls[-1] == "start"  # type: ignore[attr-defined]
    assert server.registry.get_sample_value("bgplb_agent_peer_up", {"peer": "192.0.2.5"}) == 0


async def test_flushed_waits_only_for_established_peers(tmp_path: Path) -> None:
    cfg, sessions, peers, *_ = rig(tmp_path)
    sessions.router_id = cfg.bgp.router_id
    sessions.add(cfg.peers[0], start=False)
    assert await sessions.flushed(0.5)  # not Established: nothing to wait for
    peers[0].session._state = BgpState.ESTABLISHED
    peers[0].buffered = 100  # flushed by the next kick
    assert await sessions.flushed(0.5)


async def test_remove_and_stop(tmp_path: Path) -> None:
    bfd = FakeBfd()
    cfg, sessions, peers, _server, _ = rig(tmp_path, bfd)
    sessions.router_id = cfg.bgp.router_id
    sessions.add(peer_cfg("192.0.2.5", bfd={"interval_ms": 100}), start=False)
    sessions.add(cfg.peers[0], start=False)
    await sessions.remove("192.0.2.5", "bye")
    assert peers[0].calls == [f"stop {CeaseSubcode.PEER_DECONFIGURED} bye"]
    assert bfd.handles[0].released
    assert "192.0.2.5" not in sessions.peers and "192.0.2.5" not in sessions.peer_configs
    await sessions.stop_all("shutting down")
    assert peers[1].calls == ["stop 2 shutting down"]
    assert bfd.closed
    sessions.close_silently()
    assert peers[1].calls[-1] == "close_silently"


async def test_bfd_down_tears_the_session_down_and_restarts_it(tmp_path: Path) -> None:
    bfd = FakeBfd()
    cfg, sessions, peers, server, clock = rig(tmp_path, bfd)
    sessions.router_id = cfg.bgp.router_id
    sessions.add(peer_cfg("192.0.2.5", bfd={"interval_ms": 100}), start=False)
    link = sessions.bfd.links["192.0.2.5"]
    peer = peers[0]
    # never came up: a Down is no failure (RFC 5882 §3.3)
    link._notify(State.DOWN, Diag.CONTROL_DETECTION_TIME_EXPIRED)
    assert peer.calls == []
    link._notify(State.UP, Diag.NO_DIAGNOSTIC)
    peer.session._state = BgpState.IDLE  # no connection: nothing to tear down
    link._notify(State.DOWN, Diag.CONTROL_DETECTION_TIME_EXPIRED)
    assert peer.calls == []
    link._notify(State.UP, Diag.NO_DIAGNOSTIC)
    peer.session._state = BgpState.ESTABLISHED
    link._notify(State.DOWN, Diag.CONTROL_DETECTION_TIME_EXPIRED)
    assert peer.calls == [f"stop_now {CeaseSubcode.BFD_DOWN}"]
    labels = {"peer": "192.0.2.5"}
    assert server.registry.get_sample_value("bgplb_agent_bfd_teardowns_total", labels) == 1
    clock.advance(BFD_RESTART_DELAY)
    assert peer.calls[-1] == "start"
    rows = sessions.bfd.rows()
    assert rows[0][0] == "192.0.2.5" and rows[0][1]["downs"] == 2


async def test_restart_after_bfd_skips_a_replaced_peer(tmp_path: Path) -> None:
    bfd = FakeBfd()
    cfg, sessions, peers, _server, clock = rig(tmp_path, bfd)
    sessions.router_id = cfg.bgp.router_id
    sessions.add(peer_cfg("192.0.2.5", bfd={"interval_ms": 100}), start=False)
    link = sessions.bfd.links["192.0.2.5"]
    link._notify(State.UP, Diag.NO_DIAGNOSTIC)
    peers[0].session._state = BgpState.OPEN_SENT
    link._notify(State.DOWN, Diag.PATH_DOWN)
    await sessions.remove("192.0.2.5", "gone")
    clock.advance(BFD_RESTART_DELAY)
    assert peers[0].calls[-1].startswith("stop ")  # not started again


async def test_bfd_only_change_keeps_the_session_and_the_history(tmp_path: Path) -> None:
    bfd = FakeBfd()
    cfg, sessions, peers, *_ = rig(tmp_path, bfd)
    sessions.router_id = cfg.bgp.router_id
    sessions.add(peer_cfg("192.0.2.5", bfd={"interval_ms": 100}), start=False)
    sessions.bfd.links["192.0.2.5"].downs = 3
    sessions.rerequest_bfd("192.0.2.5", peer_cfg("192.0.2.5", bfd={"interval_ms": 300}))
    assert bfd.handles[0].released and not bfd.handles[1].released
    assert sessions.bfd.links["192.0.2.5"].downs == 3
    assert sessions.bfd.links["192.0.2.5"].interval_ms == 300
    sessions.rerequest_bfd("192.0.2.5", peer_cfg("192.0.2.5"))  # BFD off
    assert bfd.handles[1].released and "192.0.2.5" not in sessions.bfd.links
    sessions.rerequest_bfd("192.0.2.5", peer_cfg("192.0.2.5"))  # nothing to release
    assert peers[0].calls == []  # the BGP session was never touched


async def test_bfd_that_cannot_start_leaves_bgp_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse() -> FakeBfd:
        raise OSError("port 3784 in use")

    path, cfg = config(tmp_path)
    peers, factory = fake_peers()
    sessions = PeerSessions(
        CurrentConfig(path, cfg),
        AgentMetrics(MetricsServer()),
        FakeClock(),
        peer_factory=factory,  # type: ignore[arg-type]
        bfd_factory=refuse,  # type: ignore[arg-type]
    )
    sessions.router_id = cfg.bgp.router_id
    sessions.add(peer_cfg("192.0.2.5", bfd={"interval_ms": 100}))
    assert "BFD not started: port 3784 in use" in caplog.text
    assert peers[0].calls == ["start"] and sessions.bfd.links == {}
    sessions.bfd.close()  # no service: nothing to close


async def test_peer_events_and_status_rows(tmp_path: Path) -> None:
    cfg, sessions, peers, server, clock = rig(tmp_path)
    sessions.router_id = cfg.bgp.router_id
    sessions.add(cfg.peers[0], start=False)
    peer = peers[0]
    labels = {"peer": "192.0.2.1"}
    sessions._on_peer_event(peer, SessionEstablished(None))  # type: ignore[arg-type]
    assert server.registry.get_sample_value("bgplb_agent_peer_up", labels) == 1
    sessions._on_peer_event(peer, SessionDown("hold timer expired", was_established=True))
    sessions._on_peer_event(peer, SessionDown("connect failed", was_established=False))
    assert server.registry.get_sample_value("bgplb_agent_peer_up", labels) == 0
    assert server.registry.get_sample_value("bgplb_agent_session_flaps_total", labels) == 1
    (row,) = sessions.statuses()
    assert row.uptime is None and row.asn == 65000 and row.bfd is None
    peer.session.established_at = clock.now() - 12.0
    peer.session.held_back = {P: "no IPV6 next hop on this session"}
    (row,) = sessions.statuses()
    assert row.uptime == 12.0
    assert row.held_back == (HeldBack("198.51.100.10/32", "no IPV6 next hop on this session"),)
    del sessions.peer_configs["192.0.2.1"]  # asn from the session's config then
    assert sessions.statuses()[0].asn == 65000
    await settle()
