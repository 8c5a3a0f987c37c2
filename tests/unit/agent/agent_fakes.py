"""Fakes for the agent's parts: a clock advanced by hand, BGP routes/peers and probes that do
no I/O, and a config built from TOML text. Used by the tests of the daemon's glue (no root,
no network)."""

from __future__ import annotations

import asyncio
import heapq
import ipaddress
import itertools
from collections.abc import Callable
from pathlib import Path

from bgplb.agent.state import AddVip, AgentState, Announce, RemoveVip, Withdraw
from bgplb.bgp.attributes import PathAttributes
from bgplb.bgp.fsm import State
from bgplb.bgp.prefix import Prefix
from bgplb.bgp.session import Session
from bgplb.config import AgentConfig, PeerConfig, load_agent_config
from bgplb.health.checks import ProbeResult

START = 1000.0
WALL = 1_800_000_000.0


class FakeHandle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """`now()` moves only by `advance()` (or `sleep()`, which also lets other tasks run)."""

    def __init__(self, start: float = START) -> None:
        self.t = start
        self.start = start
        self._timers: list[tuple[float, int, Callable[[], None], FakeHandle]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return WALL + (self.t - self.start)

    def call_at(self, when: float, callback: Callable[[], None]) -> FakeHandle:
        handle = FakeHandle()
        heapq.heappush(self._timers, (when, next(self._seq), callback, handle))
        return handle

    @property
    def pending(self) -> list[float]:
        return sorted(when for when, _, _, h in self._timers if not h.cancelled)

    def advance(self, seconds: float) -> None:
        end = self.t + seconds
        while self._timers and self._timers[0][0] <= end:
            when, _, callback, handle = heapq.heappop(self._timers)
            self.t = max(self.t, when)
            if not handle.cancelled:
                callback()
        self.t = end

    async def sleep(self, seconds: float) -> None:
        await settle()
        self.advance(seconds)
        await settle()


async def settle(rounds: int = 10) -> None:
    """Let the ready tasks run (the VIP worker, confirmations)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeRoutes:
    """The steps' Routes: records every call in `log`; `flushed` may wait for `gate`."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.attrs: dict[str, PathAttributes] = {}
        self.kicks = 0
        self.flush_timeouts: list[float] = []
        self.gate: asyncio.Event | None = None

    def announce(self, prefix: Prefix, attrs: PathAttributes) -> None:
        self.log.append(("announce", str(prefix)))
        self.attrs[str(prefix)] = attrs

    def withdraw(self, prefix: Prefix) -> None:
        self.log.append(("withdraw", str(prefix)))
        self.attrs.pop(str(prefix), None)

    def kick(self) -> None:
        self.kicks += 1

    async def flushed(self, timeout: float) -> bool:
        self.flush_timeouts.append(timeout)
        if self.gate is not None:
            await self.gate.wait()
        return True


class FakeTransport:
    def __init__(self, remote: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        self.remote = remote


class FakePeer:
    """Stands for a BgpPeer: a real (pure) Session, no socket; records what was done to it."""

    def __init__(self, session: Session, peer_cfg: PeerConfig, on_event: object) -> None:
        self.session = session
        self.transport = FakeTransport(peer_cfg.address)
        self.name = str(peer_cfg.address)
        self.on_event = on_event
        self.local_address: ipaddress.IPv4Address | None = None
        self.calls: list[str] = []
        self.buffered = 0

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def start(self) -> None:
        self.calls.append("start")

    async def stop(self, message: str = "", subcode: int = 2) -> None:
        self.calls.append(f"stop {subcode} {message}")

    def stop_now(self, subcode: int, message: str = "") -> None:
        self.calls.append(f"stop_now {subcode}")
        self.session._state = State.IDLE

    def close_silently(self) -> None:
        self.calls.append("close_silently")

    def kick(self) -> None:
        self.calls.append("kick")
        self.buffered = 0

    def write_buffer_size(self) -> int:
        return self.buffered


def fake_peers() -> tuple[list[FakePeer], Callable[[Session, PeerConfig, object], FakePeer]]:
    made: list[FakePeer] = []

    def factory(session: Session, peer_cfg: PeerConfig, on_event: object) -> FakePeer:
        peer = FakePeer(session, peer_cfg, on_event)
        made.append(peer)
        return peer

    return made, factory


class FakeProbe:
    """A probe answering `ok` (settable), no I/O."""

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.calls = 0

    async def __call__(self) -> ProbeResult:
        self.calls += 1
        return ProbeResult(self.ok, 0.001, "fine" if self.ok else "refused")

    async def aclose(self) -> None:
        pass


BASE = """
[bgp]
asn = 65001
router_id = "192.0.2.11"
shutdown_drain_time = "{drain}"
[control]
socket = "{sock}"
metrics = "off"
[[peers]]
address = "192.0.2.1"
asn = 65000
[[services]]
name = "web"
vips = ["198.51.100.10/32", "2001:db8::10/128"]
drain_time = "2s"
drain_vip_linger = "5s"
[[services.checks]]
type = "tcp"
port = 80
interval = "1s"
rise = 1
fall = 1
[[services]]
name = "dns"
vips = ["198.51.100.53/32"]
"""


def config(
    tmp: Path, text: str = BASE, drain: str = "0s", **extra: str
) -> tuple[Path, AgentConfig]:
    """Write the agent config to tmp/agent.toml and load it."""
    path = tmp / "agent.toml"
    body = text.replace("{drain}", drain).replace("{sock}", str(tmp / "agent.sock"))
    for key, value in extra.items():
        body = body.replace(key, value)
    path.write_text(body)
    return path, load_agent_config(path)


class StateWorld:
    """What the agent's glue does with :class:`AgentState`'s actions, in memory, for the
    property tests: VIPs on lo, routes announced (VIP → graceful_shutdown), withdrawals waiting
    for their confirmation. :meth:`run` checks what every sequence must keep (announce only a
    healthy service's VIP that is on lo; remove a VIP only after its withdrawal was confirmed);
    ``on_action`` sees each action first, for a test's own checks."""

    def __init__(
        self, state: AgentState, on_action: Callable[[object], None] | None = None
    ) -> None:
        self.state = state
        self.on_action = on_action
        self.on_lo: set[object] = set()
        self.announced: dict[object, bool] = {}
        self.pending: set[object] = set()
        self.healthy = False
        self.now = 0.0

    def run(self) -> None:
        for a in self.state.actions():
            if self.on_action is not None:
                self.on_action(a)
            if isinstance(a, AddVip):
                self.on_lo.add(a.vip)
                self.state.vip_added(a.vip, self.now)
                self.run()
            elif isinstance(a, Announce):
                assert a.vip in self.on_lo, "announced before the VIP was on lo"
                assert self.healthy, "announced an unhealthy service"
                self.announced[a.vip] = a.graceful_shutdown
            elif isinstance(a, Withdraw):
                self.announced.pop(a.vip, None)
                self.pending.add(a.vip)
            elif isinstance(a, RemoveVip):
                assert a.vip not in self.announced and a.vip not in self.pending
                self.on_lo.discard(a.vip)

    def confirm(self) -> set[object]:
        """Every pending withdrawal is on the wire: tell the state; returns those VIPs."""
        done = set(self.pending)
        self.pending.clear()
        self.state.withdrawn(done, self.now)  # type: ignore[arg-type]
        self.run()
        return done

    def shut_down(self) -> None:
        """The agent stops (drain time 1 s): it must end idle, nothing announced or on lo."""
        self.state.shutdown(self.now, drain_time=1.0)
        self.run()
        for _ in range(4):
            self.now += 1.0
            self.state.handle_timer(self.now)
            self.run()
            self.confirm()
        assert self.state.idle and not self.announced and not self.on_lo
