"""The router's parts alone, with fakes for what they are handed: PeerRanges (reload, §6.8
collisions, GTSM refusals, passwords), RouterBfd (requests, reload, BFD Down) and the rate
limiter's memory bounds. No sockets, no kernel."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bgplb.bgp.errors import CeaseSubcode
from bgplb.bgp.fsm import State
from bgplb.config import load_router_config
from bgplb.router import bfd as router_bfd
from bgplb.router import ranges as ranges_module
from bgplb.router.bfd import RouterBfd
from bgplb.router.entry import Counters, PeerEntry
from bgplb.router.ranges import Candidate, ConnectRate, LogThrottle, PeerRanges
from bgplb.router.rib import Connected

ROUTER_ID = ipaddress.IPv4Address("192.0.2.1")
A = ipaddress.IPv4Address("192.0.2.10")  # stays in its range
B = ipaddress.IPv4Address("192.0.2.20")  # its range changes
C = ipaddress.IPv4Address("198.18.0.5")  # its range goes away


def toml(ranges: str) -> str:
    return f"""
[bgp]
asn = 65530
router_id = "{ROUTER_ID}"
listen = ["127.0.0.1:1179"]

{ranges}

[fib]
install = false
"""


RANGES = """
[[peer_ranges]]
prefix = "192.0.2.0/28"
asn = 65001
accept = ["198.51.100.0/24 le 32"]
password = "secret"

[[peer_ranges]]
prefix = "192.0.2.16/28"
asn = 65002
accept = ["198.51.100.0/24 le 32"]

[[peer_ranges]]
prefix = "198.18.0.0/24"
asn = 65003
accept = ["198.51.100.0/24 le 32"]
"""

RELOADED = """
[[peer_ranges]]
prefix = "192.0.2.0/28"
asn = 65001
accept = ["198.51.100.0/24 le 32"]
password = "secret"
bfd = { interval_ms = 300, multiplier = 3 }

[[peer_ranges]]
prefix = "192.0.2.16/28"
asn = 65009
accept = ["198.51.100.0/24 le 32"]
ttl_security = true
"""


class FakeSession:
    def __init__(self, state: State = State.ESTABLISHED, remote_open: Any = None) -> None:
        self.state = state
        self.remote_open = remote_open
        self.stopped: list[Any] = []

    def stop(self, now: float, subcode: CeaseSubcode, **kw: Any) -> None:
        self.stopped.append(subcode)


class FakePeer:
    def __init__(self, state: State = State.ESTABLISHED, remote_open: Any = None) -> None:
        self.session = FakeSession(state, remote_open)
        self.on_event: Any = "set"
        self.kicked = self.aborted = 0
        self.stopped_now: list[Any] = []
        self.local_address = ipaddress.IPv4Address("192.0.2.1")

    def kick(self) -> None:
        self.kicked += 1

    def abort(self) -> None:
        self.aborted += 1

    def stop_now(self, subcode: CeaseSubcode, message: str = "") -> None:
        self.stopped_now.append(subcode)


class FakeListener:
    def __init__(self) -> None:
        self.passwords: list[tuple[str, str | None]] = []
        self.ttl: dict[int, int | None] = {}
        self.gtsm: dict[int, int | None] = {}

    def set_password(self, prefix: str, password: str | None) -> None:
        self.passwords.append((prefix, password))

    def set_ttl(self, version: int, ttl: int | None) -> None:
        self.ttl[version] = ttl

    def set_gtsm(self, version: int, hops: int | None) -> None:
        self.gtsm[version] = hops


class FakeBfd:
    def __init__(self) -> None:
        self.reconfigured: list[PeerEntry] = []
        self.attached: list[tuple[PeerEntry, PeerEntry | None]] = []

    def reconfigure(self, entry: PeerEntry, transport: Any = None) -> None:
        self.reconfigured.append(entry)

    def attach(self, entry: PeerEntry, transport: Any, replaces: PeerEntry | None = None) -> None:
        self.attached.append((entry, replaces))


def sessions(tmp_path: Path, ranges: str = RANGES) -> tuple[PeerRanges, Path, FakeBfd]:
    path = tmp_path / "router.toml"
    path.write_text(toml(ranges))
    bfd = FakeBfd()
    part = PeerRanges(
        load_router_config(path),
        path,
        {},
        Counters(),
        asyncio.Queue(),
        bfd,  # type: ignore[arg-type]
    )
    part.listeners.append(FakeListener())  # type: ignore[arg-type]
    return part, path, bfd


def entry_for(part: PeerRanges, address: ipaddress.IPv4Address, **peer: Any) -> PeerEntry:
    rng = next(r for r in part.ranges if address in r.network)
    entry = PeerEntry(address, FakePeer(**peer), rng, 0.0)  # type: ignore[arg-type]
    part.peers[address] = entry
    return entry


def test_reload_resets_only_the_sessions_whose_range_changed_or_went(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    part, path, bfd = sessions(tmp_path)
    a, b, c = (entry_for(part, x) for x in (A, B, C))
    listener = part.listeners[0]

    async def go() -> None:
        part.reload()  # the same file: nothing changes
        assert part.reloads == 1 and not any(e.peer.session.stopped for e in (a, b, c))
        path.write_text(toml(RELOADED))
        part.reload()
        path.write_text("not [toml")
        with caplog.at_level(logging.ERROR, "bgplb.router"):
            part.reload()

    asyncio.run(go())
    assert part.reloads == 2  # the broken file was not taken
    assert "reload failed, keeping the running configuration" in caplog.text
    assert a.peer.session.stopped == []
    assert a.range.config.bfd is not None and bfd.reconfigured[-1] is a  # BFD follows
    assert b.peer.session.stopped == [CeaseSubcode.OTHER_CONFIGURATION_CHANGE]
    assert c.peer.session.stopped == [CeaseSubcode.PEER_DECONFIGURED]
    assert b.peer.kicked == c.peer.kicked == 1  # type: ignore[attr-defined]
    assert [r.config.asn for r in part.ranges] == [65001, 65009]
    # the password of the range is set again on the listener (removed, then set)
    assert listener.passwords[-2:] == [("192.0.2.0/28", None), ("192.0.2.0/28", "secret")]  # type: ignore[attr-defined]
    # one IPv4 range of two asks for GTSM: TTL 255 on the SYN-ACKs, no minimum TTL
    assert listener.ttl[4] == 255 and listener.gtsm[4] is None  # type: ignore[attr-defined]


def test_reload_without_a_file_does_nothing(tmp_path: Path) -> None:
    part, _, _ = sessions(tmp_path)
    part.config_path = None
    part.reload()
    assert part.reloads == 0


def test_collision_rules(tmp_path: Path) -> None:
    """RFC 4271 §6.8 for a second connection that sent a valid OPEN."""
    part, _, bfd = sessions(tmp_path)

    async def go() -> None:
        rng = part.ranges[0]
        # the previous connection is gone meanwhile: the new one is admitted
        new = PeerEntry(A, FakePeer(), rng, 0.0)  # type: ignore[arg-type]
        part._resolve_collision(Candidate(new, None))
        assert part.peers[A] is new and bfd.attached[-1] == (new, None)
        # existing in OpenConfirm, its identifier higher than ours: it stays
        high = SimpleNamespace(router_id=ipaddress.IPv4Address("192.0.2.200"))
        old = entry_for(part, A, state=State.OPEN_CONFIRM, remote_open=high)
        new = PeerEntry(A, FakePeer(), rng, 0.0)  # type: ignore[arg-type]
        part._resolve_collision(Candidate(new, None))
        await asyncio.sleep(0)
        assert part.peers[A] is old and new.peer.on_event is None
        assert new.peer.stopped_now == [CeaseSubcode.CONNECTION_COLLISION_RESOLUTION]  # type: ignore[attr-defined]
        # existing in OpenConfirm, its identifier lower: the new connection replaces it
        low = SimpleNamespace(router_id=ipaddress.IPv4Address("192.0.2.0"))
        old = entry_for(part, A, state=State.OPEN_CONFIRM, remote_open=low)
        new = PeerEntry(A, FakePeer(), rng, 0.0)  # type: ignore[arg-type]
        part._resolve_collision(Candidate(new, None))
        assert part.peers[A] is new and bfd.attached[-1] == (new, old)
        assert old.peer.stopped_now == [CeaseSubcode.CONNECTION_COLLISION_RESOLUTION]  # type: ignore[attr-defined]
        # existing Established: the neighbor restarted, the old session is "replaced"
        old = entry_for(part, A)
        new = PeerEntry(A, FakePeer(), rng, 0.0)  # type: ignore[arg-type]
        part._resolve_collision(Candidate(new, None))
        assert part.queue.get_nowait() == (old, "replaced") and old.peer.aborted == 1  # type: ignore[attr-defined]
        # candidates still waiting at shutdown are aborted
        waiting = PeerEntry(B, FakePeer(), rng, 0.0)  # type: ignore[arg-type]
        part.admission.candidates[B] = Candidate(waiting, None)
        part.abort_candidates()
        assert waiting.peer.aborted == 1 and not part.admission.candidates  # type: ignore[attr-defined]
        part._on_sighup()
        assert part.queue.get_nowait() == (None, "reload")

    asyncio.run(go())


def test_gtsm_refusals_are_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    part, _, _ = sessions(tmp_path)
    transport = SimpleNamespace(get_extra_info=lambda name: None)

    def broken(*args: Any) -> None:
        raise OSError("no IP_MINTTL here")

    async def go() -> None:
        assert not part._gtsm_ok(transport, SimpleNamespace(syn_ttl=254), A)
        monkeypatch.setattr(ranges_module.sockopt, "set_gtsm", broken)
        assert not part._gtsm_ok(transport, SimpleNamespace(), A)
        monkeypatch.setattr(ranges_module.sockopt, "set_gtsm", lambda *a: None)
        assert part._gtsm_ok(transport, SimpleNamespace(syn_ttl=255), A)

    asyncio.run(go())
    assert part.admission.refused == {"gtsm": 2} and part.counters.refused_connections == 2


def test_the_rate_limiter_and_the_throttle_forget_what_they_can() -> None:
    rate = ConnectRate(rate=1.0, burst=2, sources=3)
    for n in range(4):
        assert rate.allow(n, 0.0)
    assert len(rate._buckets) <= 3  # all busy: the oldest went
    assert rate.allow(99, 100.0) and len(rate._buckets) <= 3  # full buckets are forgotten first
    throttle = LogThrottle(interval=10.0)
    for n in range(1100):
        throttle.log(n * 0.02, f"kind {n}", logging.DEBUG, "line %d", n)
    assert "kind 0" not in throttle._last and len(throttle._last) < 1000  # old kinds forgotten
    assert not throttle.log(22.0, "kind 1099", logging.DEBUG, "again")  # within the interval


# -- RouterBfd ----------------------------------------------------------------------------------


class FakeLink:
    made: list[FakeLink] = []

    def __init__(self, service: Any, peer: str, **kw: Any) -> None:
        self.peer, self.kw = peer, kw
        self.interval_ms, self.multiplier = kw["interval_ms"], kw["multiplier"]
        self.handle = SimpleNamespace(key=SimpleNamespace(local=kw["local"]))
        self.released = False
        FakeLink.made.append(self)

    def release(self) -> None:
        self.released = True


class FakeService:
    def __init__(self, realtime_priority: int | None = None) -> None:
        self.realtime_priority = realtime_priority
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_router_bfd_requests_follows_reloads_and_tears_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    FakeLink.made = []
    monkeypatch.setattr(router_bfd, "BfdLink", FakeLink)
    monkeypatch.setattr(router_bfd, "BfdService", FakeService)
    torn: list[Any] = []
    monkeypatch.setattr(router_bfd, "tear_down", lambda peer: torn.append(peer) or True)
    part, path, _ = sessions(tmp_path)
    subnet = Connected(ipaddress.ip_network("192.0.2.0/28"), 1, ipaddress.ip_address("192.0.2.1"))
    errors: list[tuple[str, BaseException, PeerEntry]] = []
    bfd = RouterBfd(part.peers, lambda: [subnet], lambda *e: errors.append(e), 5)
    a = entry_for(part, A)  # its range has no bfd yet
    bfd.established(a)
    assert a.bfd is None and bfd.service is None
    path.write_text(toml(RELOADED))
    part.bfd = bfd
    asyncio.run(_reload(part))  # the range now asks for BFD: requested without touching BGP
    (link,) = FakeLink.made
    assert a.bfd is link and link.kw["multihop"] is False and link.kw["local"] == "192.0.2.1"
    assert bfd.service is not None and bfd.service.realtime_priority == 5
    bfd.established(a)  # already has one: nothing new
    assert len(FakeLink.made) == 1
    # another interval: the new request first, then the old one released
    rng = a.range.config.model_copy(
        update={"bfd": a.range.config.bfd.model_copy(update={"interval_ms": 500})}
    )  # type: ignore[union-attr]
    a.range = type(a.range)(a.range.index, rng, a.range.accept)
    bfd.reconfigure(a)
    assert (
        link.released and a.bfd is FakeLink.made[1] and FakeLink.made[1].kw["local"] == "192.0.2.1"
    )
    # BFD Down: the session is torn down (not an older connection of the neighbor)
    FakeLink.made[1].kw["on_down"](3)
    assert torn == [a.peer] and a.bfd_down
    stale = PeerEntry(A, FakePeer(), a.range, 0.0)  # type: ignore[arg-type]
    bfd._on_down(stale, 3)
    assert torn == [a.peer]
    # an exception in the callback is the router's internal error
    monkeypatch.setattr(router_bfd, "tear_down", lambda peer: 1 / 0)
    FakeLink.made[1].kw["on_down"](3)
    assert errors and errors[0][0] == "bfd" and errors[0][2] is a
    # a range without BFD any more: released; a session not Established: left alone
    a.range = type(a.range)(a.range.index, rng.model_copy(update={"bfd": None}), a.range.accept)
    bfd.reconfigure(a)
    assert a.bfd is None and FakeLink.made[1].released
    a.peer.session.state = State.OPEN_SENT  # type: ignore[attr-defined]
    bfd.reconfigure(a)
    # a port taken by another BFD daemon: logged, BGP runs without BFD
    a.peer.session.state = State.ESTABLISHED  # type: ignore[attr-defined]
    a.range = type(a.range)(a.range.index, rng, a.range.accept)

    def taken(*args: Any, **kw: Any) -> None:
        raise OSError("port 3784 in use")

    monkeypatch.setattr(router_bfd, "BfdLink", taken)
    with caplog.at_level(logging.ERROR, "bgplb.router"):
        bfd.reconfigure(a, SimpleNamespace(get_extra_info=lambda n: ("::ffff:192.0.2.1", 179)))
    assert "BFD not started" in caplog.text and a.bfd is None
    bfd.close()
    assert bfd.service.closed  # type: ignore[union-attr]


async def _reload(part: PeerRanges) -> None:
    part.reload()


def test_local_address_of_a_transport() -> None:
    def transport(name: Any) -> Any:
        return SimpleNamespace(get_extra_info=lambda n: name)

    assert router_bfd._local_of(transport(("192.0.2.1", 179))) == "192.0.2.1"
    assert router_bfd._local_of(transport(("::ffff:192.0.2.1", 179, 0, 0))) == "192.0.2.1"
    assert router_bfd._local_of(transport(("fe80::1%eth0", 179, 0, 2))) == "fe80::1"
    assert router_bfd._local_of(transport(None)) is None
