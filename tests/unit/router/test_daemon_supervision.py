"""The router survives its own bugs: the Router runs in-process on loopback (``[fib] install =
false``, no root needed) with hand-driven BGP clients; an exception while handling one peer's
event resets that peer only, the others' announcements and withdrawals keep being processed,
the error is counted and status still answers; what cannot be recovered exits with status 1.

The harness (:class:`Lab`, :class:`Client`) is shared by the other test_daemon_* modules."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bgplb.bgp.attributes import ExtendedCommunity, PathAttributes
from bgplb.bgp.errors import CeaseSubcode, ErrorCode
from bgplb.bgp.fsm import State
from bgplb.bgp.prefix import Prefix
from bgplb.bgp.session import Session, SessionConfig, SessionDown, SessionEstablished
from bgplb.config import load_router_config
from bgplb.control.socket import request
from bgplb.io.bgp import BgpPeer, Transport
from bgplb.router import daemon, kernel
from bgplb.router.daemon import Router
from bgplb.router.rib import Connected
from bgplb.router.supervisor import LogLimiter, Supervision

ROUTER_AS = 65530
LOOP = ipaddress.IPv4Address("127.0.0.1")
VIP = "198.51.100.10/32"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def router_toml(
    sock: Path,
    port: int,
    *,
    max_prefixes: int = 1000,
    range_extra: str = "allow_third_party_next_hop = true",
    accept: str = '"198.51.100.0/24 le 32", "198.18.0.0/15 le 32"',
) -> str:
    return f"""
[bgp]
asn = {ROUTER_AS}
router_id = "192.0.2.1"
listen = ["127.0.0.1:{port}"]
hold_time = 30

[[peer_ranges]]
prefix = "127.0.0.0/8"
asn = "any"
accept = [{accept}]
max_prefixes = {max_prefixes}
{range_extra}

[fib]
install = false

[control]
socket = "{sock}"
metrics = "off"
"""


class Client:
    """An active BGP speaker from 127.0.0.<n>, announcing next hop 192.0.2.<n> (a loopback
    address is no gateway: the range allows third-party next hops)."""

    def __init__(self, n: int, port: int, asn: int | None = None) -> None:
        self.address = ipaddress.IPv4Address(f"127.0.0.{n}")
        self.next_hop = ipaddress.IPv4Address(f"192.0.2.{n}")
        self.established = asyncio.Event()
        self.down = asyncio.Event()
        self.down_event: SessionDown | None = None
        config = SessionConfig(
            local_asn=asn or 65000 + n,
            router_id=ipaddress.IPv4Address(f"192.0.2.{n}"),
            peer_asn=ROUTER_AS,
            hold_time=30,
            automatic_restart=False,
            connect_retry_time=0.2,
        )
        self.peer = BgpPeer(
            Session(config),
            Transport(remote=LOOP, port=port, local=self.address),
            self._on_event,
            name=f"client {self.address}",
        )

    def _on_event(self, peer: BgpPeer, event: object) -> None:
        if isinstance(event, SessionEstablished):
            self.established.set()
        elif isinstance(event, SessionDown):
            self.down_event = event
            self.down.set()

    async def start(self) -> None:
        self.peer.start()
        await asyncio.wait_for(self.established.wait(), 10)

    def announce(self, *prefixes: str, **attrs: Any) -> None:
        attributes = PathAttributes(next_hop=self.next_hop, **attrs)
        for p in prefixes:
            self.peer.session.announce(Prefix.parse(p), attributes)
        self.peer.kick()

    def withdraw(self, *prefixes: str) -> None:
        for p in prefixes:
            self.peer.session.withdraw(Prefix.parse(p))
        self.peer.kick()

    async def stop(self) -> None:
        if self.peer.session.state is not State.IDLE:
            await self.peer.stop("test done")


class Lab:
    """A Router running in this event loop, on a free loopback port."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **toml: Any) -> None:
        connected = [
            Connected(ipaddress.ip_network("192.0.2.0/24"), 1, ipaddress.ip_address("192.0.2.1"))
        ]
        monkeypatch.setattr(daemon, "read_connected", lambda: list(connected))
        monkeypatch.setattr(kernel, "read_connected", lambda: list(connected))
        self.port = free_port()
        self.sock = tmp_path / "router.sock"
        conf = tmp_path / "router.toml"
        conf.write_text(router_toml(self.sock, self.port, **toml))
        self.router = Router(load_router_config(conf), conf)
        self.task: asyncio.Task[int] | None = None
        self.clients: list[Client] = []

    async def __aenter__(self) -> Lab:
        self.task = asyncio.get_running_loop().create_task(self.router.run())
        await until(lambda: self.sock.exists() and bool(self.router.listeners), "router up")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for c in self.clients:
            await c.stop()
        self.router.stop_event.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 15)

    async def client(self, n: int, **kw: Any) -> Client:
        c = Client(n, self.port, **kw)
        self.clients.append(c)
        await c.start()
        await until(lambda: str(c.address) in self.router.rib.peers, f"{c.address} in the RIB")
        return c

    def hops(self, vip: str = VIP) -> list[str]:
        return [str(n.address) for n in self.router.rib.fib_entry(Prefix.parse(vip))]

    async def status(self, **args: Any) -> dict[str, Any]:
        result: dict[str, Any] = await asyncio.to_thread(request, self.sock, "status", 10.0, **args)
        return result


async def until(
    probe: Callable[[], object] | Callable[[], Awaitable[object]], what: str, timeout: float = 15
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = probe()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# -- pure helpers ---------------------------------------------------------------------------------


def test_log_limiter_one_line_per_interval_with_the_suppressed_count() -> None:
    lim = LogLimiter(interval=10.0)
    assert lim.allow(("p", "filtered"), 0.0) == 0
    assert [lim.allow(("p", "filtered"), t) for t in (1.0, 2.0, 9.9)] == [None, None, None]
    assert lim.allow(("p", "refused"), 3.0) == 0  # another kind: its own budget
    assert lim.allow(("q", "filtered"), 3.0) == 0  # another peer too
    assert lim.allow(("p", "filtered"), 10.0) == 3  # "3 more suppressed"
    assert lim.allow(("p", "filtered"), 25.0) == 0


def test_log_limiter_memory_is_bounded() -> None:
    lim = LogLimiter(interval=10.0, max_keys=100)
    for i in range(10_000):
        lim.allow((f"peer{i}", "filtered"), float(i) / 1000)
    assert len(lim._last) <= 100 and len(lim._suppressed) <= 100


def test_supervision_gives_up_after_too_many_distinct_failures() -> None:
    sup = Supervision(max_failures=5, window=60.0)
    # one peer failing again and again: reset each time, never a reason to give up
    assert all(sup.failed("rib", float(t), "192.0.2.10") is None for t in range(50))
    # distinct peers: the sixth within 60 s gives up (the first peer is one of them)
    verdicts = [sup.failed("rib", 50.0 + i, f"192.0.2.{20 + i}") for i in range(4)]
    assert verdicts == [None] * 4
    assert sup.failed("rib", 55.0, "192.0.2.30") == "failed 6 times within 60 s"


def test_supervision_window_slides() -> None:
    sup = Supervision(max_failures=5, window=60.0)
    for i in range(5):
        assert sup.failed("connected", float(i)) is None
    assert sup.failed("connected", 70.0) is None  # the first five are older than 60 s
    for i in range(4):
        assert sup.failed("connected", 71.0 + i) is None
    assert "6 times" in (sup.failed("connected", 80.0) or "")


# -- the router in-process ---------------------------------------------------------------


def test_an_exception_on_one_peers_event_resets_only_that_peer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def main() -> None:
        async with Lab(tmp_path, monkeypatch) as lab:
            router = lab.router
            good, other, bad = [await lab.client(n) for n in (2, 3, 4)]
            good.announce(VIP)
            other.announce(VIP)
            bad.announce("198.51.100.20/32")
            await until(lambda: lab.hops() == ["192.0.2.2", "192.0.2.3"], "two nexthops")
            await until(lambda: lab.hops("198.51.100.20/32") == ["192.0.2.4"], "bad's route")

            real_update = router.rib.update

            def update(peer: str, *args: Any, **kw: Any) -> Any:
                if peer == "127.0.0.4":
                    raise RuntimeError("fault injected for 127.0.0.4")
                return real_update(peer, *args, **kw)

            monkeypatch.setattr(router.rib, "update", update)
            bad.announce(VIP)
            # the bad peer is reset with Cease/Administrative Reset, its routes purged
            await asyncio.wait_for(bad.down.wait(), 10)
            assert bad.down_event is not None and bad.down_event.notification is not None
            n = bad.down_event.notification
            assert (n.code, n.subcode) == (ErrorCode.CEASE, CeaseSubcode.ADMINISTRATIVE_RESET)
            await until(lambda: "127.0.0.4" not in router.rib.peers, "bad peer purged")
            assert lab.hops("198.51.100.20/32") == []
            assert router.counters.internal_errors == {"rib": 1}
            # the others' withdrawals and announcements are still processed
            good.withdraw(VIP)
            await until(lambda: lab.hops() == ["192.0.2.3"], "good's withdrawal")
            other.announce("198.51.100.30/32")
            await until(lambda: lab.hops("198.51.100.30/32") == ["192.0.2.3"], "a new route")
            st = await lab.status()
            assert st["counters"]["internal_errors"] == {"rib": 1}
            assert st["counters"]["internal_resets"] == 1
            assert {p["address"] for p in st["peers"] if p["established"]} == {
                "127.0.0.2",
                "127.0.0.3",
            }
            assert router.fatal is None
        assert lab.task is not None and lab.task.result() == 0

    asyncio.run(main())
    text = caplog.text
    assert "internal error in rib handling an event of 127.0.0.4" in text
    assert "RuntimeError: fault injected for 127.0.0.4" in text
    assert "Traceback" in text  # logged with its traceback


def test_poisonous_link_bandwidth_does_not_stop_the_rib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A path with a +inf link bandwidth: either the RIB takes it (equal weight) or the peer is
    reset as an internal error; in both cases the other peers' changes keep being applied."""

    async def main() -> None:
        async with Lab(tmp_path, monkeypatch) as lab:
            router = lab.router
            good, bad = [await lab.client(n) for n in (2, 3)]
            good.announce(VIP)
            await until(lambda: lab.hops() == ["192.0.2.2"], "good's nexthop")
            inf = ExtendedCommunity.link_bandwidth(65003, float("inf"))
            bad.announce(VIP, extended_communities=(inf,))
            await until(
                lambda: bad.down.is_set() or len(lab.hops()) == 2, "the poisonous path handled"
            )
            good.announce("198.51.100.11/32")
            await until(lambda: lab.hops("198.51.100.11/32") == ["192.0.2.2"], "good's new route")
            good.withdraw(VIP)
            await until(lambda: "192.0.2.2" not in lab.hops(), "good's withdrawal")
            st = await lab.status()
            assert st["role"] == "router"
            assert router.fatal is None

    asyncio.run(main())


def test_an_error_outside_any_peers_event_exits_with_status_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> int:
        lab = Lab(tmp_path, monkeypatch)
        broken = False
        real_sync = lab.router.kernel._sync_fib

        async def sync() -> None:
            if broken:
                raise RuntimeError("the FIB sync is broken")
            await real_sync()

        monkeypatch.setattr(lab.router.kernel, "_sync_fib", sync)
        async with lab:
            client = await lab.client(2)
            broken = True
            client.announce(VIP)
            await asyncio.wait_for(lab.task, 15)  # type: ignore[arg-type]
            # the peers are told (Cease) before the exit
            await asyncio.wait_for(client.down.wait(), 5)
        assert lab.task is not None
        return lab.task.result()

    assert asyncio.run(main()) == 1
    assert "internal error not recoverable (rib: an error outside any peer's event)" in caplog.text


def test_a_task_failing_repeatedly_exits_with_status_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The connected-subnets poll is restarted after an error; failing 6 times in 60 s is
    given up."""
    calls = 0

    def broken_read() -> list[Connected]:
        nonlocal calls
        calls += 1
        raise RuntimeError("netlink is broken")

    async def main() -> int:
        lab = Lab(tmp_path, monkeypatch)
        monkeypatch.setattr(kernel, "CONNECTED_POLL", 0.01)
        monkeypatch.setattr("bgplb.router.supervisor.RESTART_DELAY", 0.01)

        async def broken_task() -> None:
            await asyncio.sleep(0.01)
            broken_read()

        monkeypatch.setattr(lab.router.kernel, "_connected_task", broken_task)
        async with lab:
            await asyncio.wait_for(lab.task, 15)  # type: ignore[arg-type]
        assert lab.task is not None
        return lab.task.result()

    assert asyncio.run(main()) == 1
    assert calls == 6
    assert "connected: failed 6 times within 60 s" in caplog.text


def test_a_session_internal_error_purges_the_peer_and_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The session ends itself on a bug (InternalSessionError, not a transport loss): the peer's
    routes go at once even with Graceful Restart, the traceback is logged, the count moves."""

    async def main() -> None:
        async with Lab(tmp_path, monkeypatch) as lab:
            router = lab.router
            good, bad = await lab.client(2), await lab.client(3)
            for c in (good, bad):
                c.announce(VIP)
            await until(lambda: lab.hops() == ["192.0.2.2", "192.0.2.3"], "two nexthops")
            session = router.peers[bad.address].peer.session

            def broken(*args: Any, **kw: Any) -> None:
                raise RuntimeError("session bug injected")

            monkeypatch.setattr(session, "_fire", broken)  # the next input raises inside
            bad.announce("198.51.100.11/32")
            await until(lambda: lab.hops() == ["192.0.2.2"], "the bad peer's path purged")
            assert router.counters.internal_errors == {"session": 1}
            good.withdraw(VIP)
            await until(lambda: lab.hops() == [], "good's withdrawal")

    asyncio.run(main())
    assert "internal error: RuntimeError: session bug injected" in caplog.text
    assert "Traceback" in caplog.text


def test_a_path_the_weight_arithmetic_chokes_on_is_blamed_on_its_peer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each UPDATE's path is first evaluated alone: an error computing its FIB entry resets the
    peer that sent it, before the path reaches the RIB (found later, in the FIB sync, nobody
    could be blamed and the router would have to exit)."""

    async def main() -> None:
        async with Lab(tmp_path, monkeypatch) as lab:
            router = lab.router
            good, bad = await lab.client(2), await lab.client(3)
            good.announce(VIP)
            await until(lambda: lab.hops() == ["192.0.2.2"], "good's VIP")
            probe = router.rib_task.probe_rib
            real = probe.fib_entry

            def fib_entry(vip: Prefix) -> Any:
                if any(str(p.next_hop) == "192.0.2.3" for p in probe.paths(vip).values()):
                    raise ValueError("cannot convert float NaN to integer")
                return real(vip)

            monkeypatch.setattr(probe, "fib_entry", fib_entry)
            bad.announce(VIP, med=7)
            await asyncio.wait_for(bad.down.wait(), 10)
            assert "127.0.0.3" not in router.rib.peers
            assert lab.hops() == ["192.0.2.2"]
            assert router.counters.internal_errors == {"rib": 1}
            good.announce("198.51.100.11/32")
            await until(lambda: lab.hops("198.51.100.11/32") == ["192.0.2.2"], "good's new VIP")
            assert router.fatal is None

    asyncio.run(main())
