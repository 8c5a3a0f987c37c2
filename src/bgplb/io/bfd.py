"""BFD over UDP, and the BFD service other protocols request sessions from.

Transport (RFC 5881 single hop, RFC 5883 multihop):

* Control packets go to UDP port 3784 (single hop) or 4784 (multihop) from a source port in
  49152-65535 that stays the same for the life of the session (RFC 5881 §4): each session has
  its own sending socket, bound to the requested local address and a random free port.
* Packets are sent with TTL / Hop Limit 255 and IP precedence 6 (TOS 0xC0, as BIRD and FRR).
  On receipt the TTL comes from ancillary data (IP_RECVTTL / IPV6_RECVHOPLIMIT, `recvmsg`):
  single hop drops anything whose TTL is not 255 (RFC 5881 §5); multihop drops packets whose
  TTL is below the session's minimum (RFC 5883 §2 allows it, GTSM as in RFC 5082; default 254:
  at most one router between the peers), so an off-path sender cannot reach the session.
  Every drop is counted in `BfdService.dropped` by reason.
* One listening socket per (address family, port), created on first need, demultiplexes by
  Your Discriminator, or by (source, destination) address when it is zero (RFC 5880 §6.3).
  The destination comes from IP_PKTINFO / IPV6_RECVPKTINFO. The session's core discards a
  zero Your Discriminator once the peer knows ours (Init, Up), so a forged Down from the peer's
  address cannot take the session down (see bgplb.bfd.session).
* Each session has one timer, re-armed from `Session.get_timer()` after every input. By
  default the timers and the socket reads run in a thread of their own, off the asyncio loop
  (`timing="thread"`, see bgplb.io.bfd_timing: state changes reach the requesters on the loop
  through `call_soon_threadsafe`); `timing="loop"` runs them on the loop (`call_at`,
  `add_reader`). `now` is `time.monotonic()` (the default loop's `loop.time()`).

Service (as BIRD's `bfd_request_session`): `BfdService.request(peer, local, multihop, ...)`
returns a `BfdHandle`. There is one session per (peer address, local address, multihop) shared
by every requester; it runs with the most demanding request's timers (smallest
interval x multiplier) and the highest `min_ttl`, and is taken AdminDown and removed when the
last handle is released.
`notify(state, diag)` is called on every state change of the session. See docs/bfd.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from bgplb.bfd import BfdError, ControlPacket, Diag, Session, State, StateChanged, decode_packet
from bgplb.io.bfd_sockets import (
    CMSG_SPACE,
    IP_PKTINFO,
    RECEIVE_BUFFER,
    TTL_MAX,
    large_receive_buffer,
    open_listener,
    open_sender,
    parse_ancillary,
)
from bgplb.io.bfd_timing import LoopDriver, ThreadDriver, freeze_gc, gc_pauses

__all__ = [
    "MULTIHOP_PORT",
    "SINGLE_HOP_PORT",
    "BfdHandle",
    "BfdService",
    "BfdSessionInfo",
    "IP_PKTINFO",
    "RECEIVE_BUFFER",
    "Notify",
    "Timing",
]

log = logging.getLogger(__name__)

SINGLE_HOP_PORT = 3784
MULTIHOP_PORT = 4784
_MAX_READS_PER_WAKEUP = 64
#: A timer this late (seconds) means the event loop stalled: read the sockets before acting.
LATE_TIMER = 0.005
#: Most packets one drain reads (1,000 sessions at 300 ms send ~3,300 per second).
DRAIN_LIMIT = 16384

Notify = Callable[[State, Diag], None]
Timing = Literal["thread", "loop"]
#: Seconds between two "BFD timing" log lines (thread timing; lateness and GC pauses).
REPORT_EVERY = 60.0
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class BfdSessionInfo:
    """A snapshot of one session for status and metrics. Intervals in milliseconds."""

    peer: str
    local: str | None
    multihop: bool
    state: State
    remote_state: State
    local_discriminator: int
    remote_discriminator: int
    local_diag: Diag
    remote_diag: int
    detect_mult: int
    remote_detect_mult: int
    desired_min_tx_ms: float
    required_min_rx_ms: float
    tx_interval_ms: float
    detection_time_ms: float
    requests: int
    packets_sent: int
    packets_received: int
    last_change: float
    min_ttl: int = 255  # lowest TTL / hop limit accepted


class _LateWindow:
    """Send lateness samples: the last 100,000, and the exact count and maximum."""

    def __init__(self) -> None:
        self.samples: deque[float] = deque(maxlen=100_000)
        self.count = 0
        self.max = 0.0

    def add(self, late: float) -> None:
        self.samples.append(late)
        self.count += 1
        if late > self.max:
            self.max = late

    def read(self, reset: bool) -> tuple[list[float], int, float]:
        out = (list(self.samples), self.count, self.max)
        if reset:
            self.samples.clear()
            self.count, self.max = 0, 0.0
        return out


@dataclass(frozen=True, slots=True)
class _Key:
    peer: IPAddress
    local: IPAddress | None
    multihop: bool


class BfdHandle:
    """One requester's hold on a shared BFD session; `release()` when no longer needed.

    Used on the loop's thread. `event_info` is the session's snapshot taken when the state
    change being notified happened (with thread timing the session may have moved on by the
    time `notify` runs on the loop)."""

    def __init__(
        self,
        service: BfdService,
        key: _Key,
        interval_ms: int,
        multiplier: int,
        notify: Notify,
        min_ttl: int = TTL_MAX,
    ) -> None:
        self._service = service
        self.key = key
        self.interval_ms = interval_ms
        self.multiplier = multiplier
        self.notify = notify
        self.min_ttl = min_ttl
        self.released = False
        self.event_info: BfdSessionInfo | None = None

    @property
    def state(self) -> State:
        with self._service.lock:
            ep = self._service._endpoints.get(self.key)
            return ep.session.state if ep and not self.released else State.ADMIN_DOWN

    @property
    def info(self) -> BfdSessionInfo | None:
        with self._service.lock:
            ep = self._service._endpoints.get(self.key)
            return ep.info() if ep and not self.released else None

    def release(self) -> None:
        """Drop this request; the session is removed when its last request is released."""
        if not self.released:
            self.released = True
            self._service._release(self)


@dataclass(eq=False)
class _Endpoint:
    key: _Key
    session: Session
    sock: socket.socket
    handles: list[BfdHandle] = field(default_factory=list)
    timer_at: float | None = None  # the deadline armed (may be in the past: "now")
    armed_at: float = 0.0  # when it was armed: lateness counts from max(timer_at, armed_at)
    dest: tuple[str, int] = ("", 0)  # (peer address, port) for sendto
    live: bool = True  # False once removed from the service (stale timers and events)
    last_change: float = 0.0
    min_ttl: int = TTL_MAX

    def info(self) -> BfdSessionInfo:
        s = self.session
        return BfdSessionInfo(
            peer=str(self.key.peer),
            local=None if self.key.local is None else str(self.key.local),
            multihop=self.key.multihop,
            state=s.state,
            remote_state=s.remote_state,
            local_discriminator=s.local_discriminator,
            remote_discriminator=s.remote_discriminator,
            local_diag=s.local_diag,
            remote_diag=s.remote_diag,
            detect_mult=s.detect_mult,
            remote_detect_mult=s.remote_detect_mult,
            desired_min_tx_ms=s.desired_min_tx_interval / 1000,
            required_min_rx_ms=s.required_min_rx_interval / 1000,
            tx_interval_ms=s.transmit_interval / 1000,
            detection_time_ms=s.detection_time / 1000,
            requests=len(self.handles),
            packets_sent=s.packets_sent,
            packets_received=s.packets_received,
            last_change=self.last_change,
            min_ttl=self.min_ttl,
        )


class BfdService:
    """BFD sessions on demand for the BGP speaker (or anything else).

    Created and used on the asyncio loop's thread (requests, releases, notifications).
    `timing="thread"` (default) runs the timers and socket reads in a thread of their own
    (bgplb.io.bfd_timing.ThreadDriver), `"loop"` on the loop. With thread timing,
    `realtime_priority` (1..99, None: off) runs that thread SCHED_FIFO, `switch_interval`
    (seconds, None: unchanged) lowers the interpreter's GIL switch interval if it is longer,
    and `freeze_gc` calls `gc.freeze()` once when the first session is created (after the
    daemon's start-up). `rng` drives jitter, discriminators and source ports.
    `single_hop_port` / `multihop_port` / `listen_v4` / `listen_v6` exist for tests and
    benchmarks; `multihop_min_ttl` is the lowest TTL accepted on a multihop session whose
    request names none (single hop always requires 255).

    Thread safety: `lock` guards the session tables, the sessions, the listening sockets and
    the counters; read `dropped` and `tx_lateness` through `counters()` / `take_lateness()`.
    """

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        rng: random.Random | None = None,
        single_hop_port: int = SINGLE_HOP_PORT,
        multihop_port: int = MULTIHOP_PORT,
        listen_v4: str = "0.0.0.0",
        listen_v6: str = "::",
        multihop_min_ttl: int = 254,
        timing: Timing = "thread",
        realtime_priority: int | None = None,
        switch_interval: float | None = 0.001,
        freeze_gc: bool = True,
    ) -> None:
        if not 1 <= multihop_min_ttl <= TTL_MAX:
            raise ValueError(f"multihop_min_ttl must be in 1..255: {multihop_min_ttl}")
        if timing not in ("thread", "loop"):
            raise ValueError(f"BFD timing must be 'thread' or 'loop': {timing!r}")
        self._loop = loop or asyncio.get_running_loop()
        self.lock = threading.RLock()
        self._driver: LoopDriver | ThreadDriver
        if timing == "thread":
            self._driver = ThreadDriver(
                self,
                self._loop,
                realtime_priority=realtime_priority,
                switch_interval=switch_interval,
            )
        else:
            self._driver = LoopDriver(self, self._loop)
        self.timing = timing
        self._freeze_gc = freeze_gc and timing == "thread"
        self._rng = rng or random.Random()
        self._ports = {False: single_hop_port, True: multihop_port}
        self._listen: dict[int, str] = {socket.AF_INET: listen_v4, socket.AF_INET6: listen_v6}
        self._multihop_min_ttl = multihop_min_ttl
        # Guarded by `lock`:
        self._endpoints: dict[_Key, _Endpoint] = {}
        self._by_discr: dict[int, _Endpoint] = {}
        self._listeners: dict[tuple[int, bool], socket.socket] = {}
        self._sources: dict[str, IPAddress] = {}
        self.dropped: Counter[str] = Counter()
        self.tx_lateness: deque[float] = deque(maxlen=100_000)
        # Send lateness windows: one for timing_stats() callers, one for the periodic log.
        self._late_api = _LateWindow()
        self._late_log = _LateWindow()
        self._report: asyncio.TimerHandle | None = None
        self.closed = False

    # ------------------------------------------------------------------ public API

    def request(
        self,
        peer: str,
        local: str | None = None,
        multihop: bool = False,
        interval_ms: int = 300,
        multiplier: int = 3,
        notify: Notify | None = None,
        min_ttl: int | None = None,
    ) -> BfdHandle:
        """Request a BFD session to `peer` (from `local`, or any source address if None).

        `min_ttl` (multihop only; None: the service's `multihop_min_ttl`) is the lowest
        received TTL / hop limit accepted; a shared session uses the highest of its requests'.
        Single hop always requires 255 (RFC 5881 §5).

        Returns a handle; `notify(state, diag)` is called on the loop on each state change, and
        once soon after the request if the shared session is already past Down. Raises
        ValueError for a bad address, timer or min_ttl, OSError if a socket cannot be opened.
        """
        if self.closed:
            raise RuntimeError("BfdService is closed")
        peer_ip = ipaddress.ip_address(peer)
        local_ip = None if local is None else ipaddress.ip_address(local)
        if local_ip is not None and local_ip.version != peer_ip.version:
            raise ValueError(f"local {local} and peer {peer} are of different families")
        if not 1 <= interval_ms <= 4_294_967 or not 1 <= multiplier <= 255:
            raise ValueError(f"bad BFD timers: interval_ms={interval_ms} multiplier={multiplier}")
        if not multihop:
            min_ttl = TTL_MAX
        elif min_ttl is None:
            min_ttl = self._multihop_min_ttl
        elif not isinstance(min_ttl, int) or not 1 <= min_ttl <= TTL_MAX:
            raise ValueError(f"bad BFD min_ttl {min_ttl!r}: must be in 1..255")
        key = _Key(peer_ip, local_ip, bool(multihop))
        handle = BfdHandle(
            self, key, interval_ms, multiplier, notify or (lambda st, dg: None), min_ttl
        )
        if self._freeze_gc:
            self._freeze_gc = False
            freeze_gc()
        with self.lock:
            ep = self._endpoints.get(key)
            if ep is None:
                ep = self._create(key, interval_ms, multiplier)
            else:
                state, diag = ep.session.state, ep.session.local_diag
                if state != State.DOWN:
                    self._loop.call_soon(self._notify_one, handle, state, diag, ep.info())
            ep.handles.append(handle)
            self._apply_timers(ep)
        if self._driver.threaded and self._report is None:
            gc_pauses().read(reset=True, reader="log")
            self._report = self._loop.call_later(REPORT_EVERY, self._log_timing)
        return handle

    def sessions(self) -> list[BfdSessionInfo]:
        """Snapshots of every session, for status and metrics."""
        with self.lock:
            return [ep.info() for ep in self._endpoints.values()]

    def counters(self) -> Counter[str]:
        """A copy of `dropped` (discarded packets by reason), safe to read from any thread."""
        with self.lock:
            return Counter(self.dropped)

    def take_lateness(self) -> list[float]:
        """Send lateness samples (seconds: a periodic packet's send time minus the deadline the
        session asked for) since the last call; clears them."""
        with self.lock:
            out = list(self.tx_lateness)
            self.tx_lateness.clear()
        return out

    def timing_stats(self, *, reset: bool = False) -> dict[str, Any]:
        """Send lateness (ms) since the last reset — count and max exact, percentiles over the
        last 100,000 packets — and the process's GC pauses, for benchmarks and status."""
        return self._timing(self._late_api, reset, "api")

    def _timing(self, window: _LateWindow, reset: bool, reader: str) -> dict[str, Any]:
        with self.lock:  # copy only: sorting is done without holding the lock
            samples, count, worst = window.read(reset)
        late = sorted(samples)
        n = len(late)

        def pct(q: float) -> float:
            return round(late[min(n - 1, int(q * n))] * 1000, 3) if n else 0.0

        return {
            "timing": self.timing,
            "packets": count,
            "late_p50_ms": pct(0.50),
            "late_p99_ms": pct(0.99),
            "late_max_ms": round(worst * 1000, 3),
            "gc": gc_pauses().read(reset=reset, reader=reader),
        }

    def close(self) -> None:
        """Take every session AdminDown (one packet each), stop the timers, close all sockets.
        Idempotent; the timing thread is joined."""
        if self.closed:
            return
        with self.lock:
            endpoints = list(self._endpoints.values())
        for ep in endpoints:
            for h in list(ep.handles):
                h.release()
        self._driver.stop()
        with self.lock:
            for sock in self._listeners.values():
                sock.close()
            self._listeners.clear()
        if self._report is not None:
            self._report.cancel()
        self.closed = True

    # ------------------------------------------------------------------ sessions

    def _is_live(self, ep: _Endpoint) -> bool:
        return ep.live

    def _create(self, key: _Key, interval_ms: int, multiplier: int) -> _Endpoint:
        family = socket.AF_INET6 if key.peer.version == 6 else socket.AF_INET
        self._listener(family, key.multihop)
        discr = self._rng.randrange(1, 2**32)
        while discr in self._by_discr:
            discr = self._rng.randrange(1, 2**32)
        now = self._driver.now()
        session = Session(
            discr,
            desired_min_tx_interval=interval_ms * 1000,
            required_min_rx_interval=interval_ms * 1000,
            detect_mult=multiplier,
            rng=self._rng,
            now=now,
        )
        ep = _Endpoint(key, session, self._sender(family, key.local), last_change=now)
        self._endpoints[key] = ep
        self._by_discr[discr] = ep
        ep.timer_at = ep.armed_at = now
        ep.dest = (str(key.peer), self._ports[key.multihop])
        self._driver.arm(ep, now)  # the first packet, at once
        return ep

    def _apply_timers(self, ep: _Endpoint) -> None:
        live = [h for h in ep.handles if not h.released]
        if not live:
            return
        ep.min_ttl = max(h.min_ttl for h in live)
        best = min(live, key=lambda h: (h.interval_ms * h.multiplier, h.interval_ms))
        us = best.interval_ms * 1000
        s = ep.session
        if (s.desired_min_tx_interval, s.required_min_rx_interval, s.detect_mult) != (
            us,
            us,
            best.multiplier,
        ):
            s.set_intervals(us, us, best.multiplier)
            self._service(ep, self._driver.now())

    def _release(self, handle: BfdHandle) -> None:
        with self.lock:
            ep = self._endpoints.get(handle.key)
            if ep is None:
                return
            with contextlib.suppress(ValueError):
                ep.handles.remove(handle)
            if ep.handles:
                self._apply_timers(ep)
                return
            # Last requester gone: tell the peer (AdminDown, §6.8.16) and remove the session.
            ep.session.admin_down()
            for raw in ep.session.packets_to_send(self._driver.now()):
                self._send(ep, raw)
            self._driver.disarm(ep)
            ep.sock.close()
            ep.live = False
            del self._endpoints[ep.key]
            del self._by_discr[ep.session.local_discriminator]

    def _notify_one(
        self, handle: BfdHandle, state: State, diag: Diag, info: BfdSessionInfo | None = None
    ) -> None:
        if handle.released:
            return
        handle.event_info = info
        try:
            handle.notify(state, diag)
        except Exception:
            log.exception("BFD notify callback for %s failed", handle.key.peer)

    def _deliver(
        self, handles: list[BfdHandle], state: State, diag: Diag, info: BfdSessionInfo
    ) -> None:
        for h in handles:
            self._notify_one(h, state, diag, info)

    def _log(self, level: int, msg: str, *args: object) -> None:
        """Log from either thread: the timing thread hands the record to the loop."""
        if not log.isEnabledFor(level):
            return
        if self._driver.in_thread():
            self._driver.call(log.log, level, msg, *args)
        else:
            log.log(level, msg, *args)

    def _log_timing(self) -> None:
        if self.closed:
            return
        st = self._timing(self._late_log, True, "log")
        if st["packets"]:
            gcs = st["gc"]
            log.info(
                "BFD timing, last %.0f s: %d packets, send lateness p50 %.2f p99 %.2f (last "
                "100,000) max %.2f ms; %d GC pauses, longest %.1f ms (generation %d)",
                REPORT_EVERY,
                st["packets"],
                st["late_p50_ms"],
                st["late_p99_ms"],
                st["late_max_ms"],
                gcs["collections"],
                gcs["max_ms"],
                gcs["max_generation"],
            )
        self._report = self._loop.call_later(REPORT_EVERY, self._log_timing)

    def _service(self, ep: _Endpoint, now: float, *, from_timer: bool = False) -> None:
        """After any input: send what is due, deliver events, re-arm the one timer.
        Called with `lock` held."""
        s = ep.session
        due = None if ep.timer_at is None else max(ep.timer_at, ep.armed_at)
        if from_timer:
            s.handle_timer(now)
        out = s.packets_to_send(now)
        if out and due is not None and due <= now:
            # Sent after the time we were asked to run at: how late (from the timer, or from
            # a packet read first because we woke up late). A deadline already past when it
            # was armed ("send now") counts from the arming.
            late = now - due
            self.tx_lateness.append(late)
            self._late_api.add(late)
            self._late_log.add(late)
        for raw in out:
            self._send(ep, raw)
        while (ev := s.next_event()) is not None:
            if isinstance(ev, StateChanged):
                ep.last_change = now
                self._log(
                    logging.INFO,
                    "BFD %s: %s -> %s (%s)",
                    ep.key.peer,
                    ev.old.name,
                    ev.new.name,
                    ev.diag.name,
                )
                info = ep.info()
                if self._driver.threaded:  # requesters live on the loop
                    self._driver.call(self._deliver, list(ep.handles), ev.new, ev.diag, info)
                else:
                    self._deliver(list(ep.handles), ev.new, ev.diag, info)
        if not self._is_live(ep):
            return  # released from a callback
        when = s.get_timer()
        if when is None:
            self._driver.disarm(ep)
            ep.timer_at = None
        elif when != ep.timer_at or not self._driver.armed(ep):
            ep.timer_at, ep.armed_at = when, now
            self._driver.arm(ep, when)

    def _on_timer(self, ep: _Endpoint) -> None:
        with self.lock:
            if not self._is_live(ep):
                return
            now = self._driver.now()
            if ep.timer_at is not None and now - max(ep.timer_at, ep.armed_at) > LATE_TIMER:
                # We are late (a stall of the loop or of this process): the peer's packets of
                # that time wait in the sockets (one wake-up reads at most
                # _MAX_READS_PER_WAKEUP, and with many sessions far more are queued). They
                # must count before the Detection Time is judged, or our own stall looks like
                # the peer's death (a false Down for every session).
                self.drain()
                if not self._is_live(ep):
                    return
            self._service(ep, now, from_timer=True)

    def drain(self) -> None:
        """Read every packet waiting on the listening sockets (bounded by DRAIN_LIMIT)."""
        with self.lock:
            for (family, multihop), sock in list(self._listeners.items()):
                for _ in range(DRAIN_LIMIT // _MAX_READS_PER_WAKEUP):
                    if self._on_readable(sock, family, multihop) < _MAX_READS_PER_WAKEUP:
                        break

    # ------------------------------------------------------------------ sockets

    def _sender(self, family: int, local: IPAddress | None) -> socket.socket:
        host = str(local) if local is not None else self._listen[family]
        return open_sender(family, host, self._rng)

    def _listener(self, family: int, multihop: bool) -> socket.socket:
        sock = self._listeners.get((family, multihop))
        if sock is None:
            sock = open_listener(family, self._listen[family], self._ports[multihop])
            self._listeners[(family, multihop)] = sock
            self._driver.watch(sock, family, multihop)
        return sock

    def _send(self, ep: _Endpoint, raw: bytes) -> None:
        try:
            ep.sock.sendto(raw, ep.dest)
        except OSError as exc:  # full buffer, no route...: BFD tolerates loss
            self.dropped["send_" + type(exc).__name__] += 1

    def _on_readable(self, sock: socket.socket, family: int, multihop: bool) -> int:
        """Read up to _MAX_READS_PER_WAKEUP datagrams; returns how many were read."""
        with self.lock:
            for count in range(_MAX_READS_PER_WAKEUP):
                try:
                    data, ancdata, _flags, addr = sock.recvmsg(512, CMSG_SPACE)
                except (BlockingIOError, InterruptedError):
                    return count
                except OSError as exc:
                    self.dropped["recv_" + type(exc).__name__] += 1
                    return count
                self._datagram(data, ancdata, addr, family, multihop)
            return _MAX_READS_PER_WAKEUP

    def _datagram(
        self,
        data: bytes,
        ancdata: list[tuple[int, int, bytes]],
        addr: tuple[str, int] | tuple[str, int, int, int],
        family: int,
        multihop: bool,
    ) -> None:
        """One received datagram: the transport checks (TTL, format), the demultiplexing,
        then the session's input. Takes `lock` (re-entrant: `_on_readable` holds it)."""
        with self.lock:
            ttl, dst = parse_ancillary(ancdata, family)
            if ttl is None:
                self.dropped["no_ttl"] += 1
                return
            if not multihop and ttl != TTL_MAX:
                self.dropped["ttl"] += 1  # RFC 5881 §5 (GTSM)
                return
            try:
                pkt = decode_packet(data)
            except BfdError:
                self.dropped["malformed"] += 1
                return
            src = self._source(addr[0])
            ep = self._demux(pkt, src, dst, multihop)
            if ep is None:
                self.dropped["no_session"] += 1
                return
            if ttl < ep.min_ttl:  # multihop: RFC 5883 §2, the session's own minimum
                self.dropped["ttl"] += 1
                self._log(
                    logging.DEBUG, "BFD %s: dropped a packet with TTL %d < %d", src, ttl, ep.min_ttl
                )
                return
            now = self._driver.now()
            changes = ep.session.remote_discriminator_changes
            try:
                ep.session.handle_packet(pkt, now)
            except BfdError as exc:
                self.dropped["session_discard"] += 1
                self._log(logging.DEBUG, "BFD %s: packet discarded: %s", src, exc)
                return
            if ep.session.remote_discriminator_changes != changes:
                self._log(
                    logging.INFO,
                    "BFD %s: peer changed its discriminator to %d",
                    src,
                    pkt.my_discriminator,
                )
            self._service(ep, now)

    def _source(self, text: str) -> IPAddress:
        """The packet's source address, parsed once per address (a bounded cache)."""
        ip = self._sources.get(text)
        if ip is None:
            if len(self._sources) >= 65536:
                self._sources.clear()
            ip = self._sources[text] = ipaddress.ip_address(text.split("%")[0])
        return ip

    def _demux(
        self, pkt: ControlPacket, src: IPAddress, dst: IPAddress | None, multihop: bool
    ) -> _Endpoint | None:
        if pkt.your_discriminator:
            ep = self._by_discr.get(pkt.your_discriminator)
            if ep is None or ep.key.peer != src or ep.key.multihop != multihop:
                return None
            return ep
        # §6.3: Your Discriminator zero -> select by addresses.
        return self._endpoints.get(_Key(src, dst, multihop)) or self._endpoints.get(
            _Key(src, None, multihop)
        )


# Names kept for the tests and older callers.
_parse_ancillary = parse_ancillary
_large_receive_buffer = large_receive_buffer
