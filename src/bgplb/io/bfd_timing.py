"""Where the BFD service's timers run: the asyncio loop, or a thread of their own.

RFC 5880 §6.8.7 wants a periodic Control packet every transmit interval (less 0-25 % jitter)
and §6.8.4 a session Down when nothing arrived for the Detection Time. At 20 ms x 3 the margin
is tens of milliseconds, and the event loop of the agent or the router also runs BGP, the RIB
and the FIB: any stall of the loop delays BFD packets and can make our side *look* dead (the
peer's false Down) or make us judge the peer dead before reading its packets (ours).

Two drivers, one interface (``arm``, ``disarm``, ``watch``, ``stop``, ``now``):

* :class:`LoopDriver` — one ``loop.call_at`` per session and ``loop.add_reader`` per listening
  socket, all on the asyncio loop (the original design; kept to compare against, and for a
  process that cannot afford a thread).
* :class:`ThreadDriver` — one thread (``bgplb-bfd``) reads the listening sockets and runs every
  session's transmit and detection timers, from a heap of monotonic deadlines. It waits in
  ``epoll_wait`` until the earliest deadline rounded *down* to the millisecond, then sleeps the
  rest precisely (``clock_nanosleep`` via ``time.sleep``), so it wakes within tens of µs of the
  deadline instead of up to 1 ms after (the loop's selector rounds its timeout up).

Thread safety (ThreadDriver): the service's ``lock`` (a ``threading.RLock``) guards every
mutable structure the two threads share — the service's session tables and listening sockets,
each session (the sans-IO :class:`bgplb.bfd.Session` is not thread-safe), the counters
(``dropped``, ``tx_lateness``) and this driver's deadline heap. The thread takes it for each
batch of work (one socket's pending datagrams, the timers due now) and never holds it while
waiting. The loop's thread takes it in ``request``, ``release``, ``sessions``, the handles'
``state`` / ``info``. Notifications never run in the thread: state changes are handed to the
loop with ``loop.call_soon_threadsafe`` (in order) and the requesters' callbacks run there; log
records made in the thread go the same way, so a slow log handler cannot block BFD.

The thread still needs the GIL: a busy loop thread keeps it for up to ``sys.getswitchinterval()``
(5 ms by default) before it must let the BFD thread run. ``switch_interval`` lowers it (the cost
is only paid while another thread waits for the GIL). Garbage collection stops every thread:
:class:`GcPauses` measures the pauses (``gc.callbacks``) and :func:`freeze_gc` moves the objects
that exist after start-up out of the collector's reach (``gc.freeze``), so the full collections
that come later scan less. ``realtime_priority`` puts the thread in SCHED_FIFO (root or
CAP_SYS_NICE; off by default): the kernel then runs it before any normal task on a busy host.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import itertools
import logging
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["GcPauses", "LoopDriver", "ThreadDriver", "freeze_gc", "gc_pauses"]

log = logging.getLogger("bgplb.io.bfd")


class _Service(Protocol):
    """What a driver needs from the BFD service (bgplb.io.bfd.BfdService)."""

    lock: threading.RLock

    def drain(self) -> None: ...
    def _on_timer(self, ep: Any) -> None: ...
    def _on_readable(self, sock: socket.socket, family: int, multihop: bool) -> int: ...
    def _is_live(self, ep: Any) -> bool: ...


class LoopDriver:
    """Timers and socket reads on the asyncio loop (``call_at`` / ``add_reader``)."""

    threaded = False

    def __init__(self, service: _Service, loop: asyncio.AbstractEventLoop) -> None:
        self._service = service
        self._loop = loop
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._readers: list[int] = []
        self._stopped = False

    def now(self) -> float:
        return self._loop.time()

    def arm(self, ep: Any, when: float) -> None:
        self.disarm(ep)
        if not self._stopped:
            self._timers[id(ep)] = self._loop.call_at(when, self._fire, ep)

    def disarm(self, ep: Any) -> None:
        handle = self._timers.pop(id(ep), None)
        if handle is not None:
            handle.cancel()

    def armed(self, ep: Any) -> bool:
        return id(ep) in self._timers

    def in_thread(self) -> bool:
        return False

    def _fire(self, ep: Any) -> None:
        self._timers.pop(id(ep), None)
        self._service._on_timer(ep)

    def watch(self, sock: socket.socket, family: int, multihop: bool) -> None:
        if not self._stopped:
            self._loop.add_reader(sock.fileno(), self._service._on_readable, sock, family, multihop)
            self._readers.append(sock.fileno())

    def call(self, fn: Callable[..., object], *args: Any) -> None:
        """Run `fn(*args)` on the loop, soon (we are on it already)."""
        self._loop.call_soon(fn, *args)

    def stop(self) -> None:
        """Stop every timer and socket read (no packet is sent). Idempotent."""
        self._stopped = True
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for fd in self._readers:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(fd)
        self._readers.clear()


#: epoll_wait's timeout is whole milliseconds and Python rounds it up; the last partial
#: millisecond is slept with time.sleep (clock_nanosleep: µs precision) unless a packet comes.
_MS = 0.001


class ThreadDriver:
    """Timers and socket reads in a thread of their own (see the module docstring)."""

    threaded = True

    def __init__(
        self,
        service: _Service,
        loop: asyncio.AbstractEventLoop,
        *,
        realtime_priority: int | None = None,
        switch_interval: float | None = None,
    ) -> None:
        if realtime_priority is not None and not 1 <= realtime_priority <= 99:
            raise ValueError(f"BFD realtime priority must be in 1..99: {realtime_priority!r}")
        if switch_interval is not None and not 0 < switch_interval <= 0.1:
            raise ValueError(f"switch interval must be in (0, 0.1] s: {switch_interval!r}")
        self._service = service
        self._loop = loop
        self._realtime = realtime_priority
        self._switch_interval = switch_interval
        # Guarded by service.lock: the heap of (deadline, seq, endpoint) and the armed map
        # (id(ep) -> the one valid deadline; other heap entries of that endpoint are stale).
        self._heap: list[tuple[float, int, Any]] = []
        self._armed: dict[int, float] = {}
        self._seq = itertools.count()
        self._socks: dict[int, tuple[socket.socket, int, bool]] = {}
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stopped = False
        self.wakeups = 0

    def now(self) -> float:
        return time.monotonic()

    # -- called with service.lock held, from either thread --------------------------------

    def arm(self, ep: Any, when: float) -> None:
        if self._stopped:
            return
        self._armed[id(ep)] = when
        heapq.heappush(self._heap, (when, next(self._seq), ep))
        if self._thread is None:
            self._start()
        elif threading.get_ident() != self._thread.ident:
            self._poke()

    def disarm(self, ep: Any) -> None:
        self._armed.pop(id(ep), None)

    def armed(self, ep: Any) -> bool:
        return id(ep) in self._armed

    def in_thread(self) -> bool:
        """True when called from the timing thread."""
        return self._thread is not None and threading.get_ident() == self._thread.ident

    def watch(self, sock: socket.socket, family: int, multihop: bool) -> None:
        if self._stopped:
            return
        self._socks[sock.fileno()] = (sock, family, multihop)
        self._epoll.register(sock.fileno(), select.EPOLLIN)  # epoll_ctl is safe while waiting
        if self._thread is None:
            self._start()

    def call(self, fn: Callable[..., object], *args: Any) -> None:
        """Run `fn(*args)` on the loop, in order; dropped once the loop is closed."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)

    # -- lifecycle (loop thread) ----------------------------------------------------------

    def _start(self) -> None:
        if self._switch_interval is not None and sys.getswitchinterval() > self._switch_interval:
            sys.setswitchinterval(self._switch_interval)
        self._thread = threading.Thread(target=self._run, name="bgplb-bfd", daemon=True)
        self._thread.start()

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.eventfd_write(self._wake, 1)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it (no packet is sent). Idempotent. Must not be called
        with service.lock held (the thread may be waiting for it)."""
        if self._stopped:
            return
        self._stopping = True
        self._poke()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.error("BFD timing thread did not stop within %.0f s", timeout)
                return  # leave the epoll and eventfd to it
        self._stopped = True
        with self._service.lock:
            self._heap.clear()
            self._armed.clear()
            self._socks.clear()
        self._epoll.close()
        os.close(self._wake)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        _name_os_thread(b"bgplb-bfd")
        if self._realtime is not None:
            try:  # pid 0: this thread only (Linux)
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self._realtime))
                self.call(log.info, "BFD thread runs SCHED_FIFO priority %d", self._realtime)
            except (OSError, AttributeError) as exc:
                self.call(log.warning, "BFD thread: no real-time priority (%s)", exc)
        try:
            while not self._stopping:
                self._step()
        except Exception:  # a bug: tell the loop, where it is logged and seen
            self.call(log.exception, "BFD timing thread failed")
            raise

    def _next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            when, _, ep = heap[0]
            if self._armed.get(id(ep)) == when and self._service._is_live(ep):
                return when
            heapq.heappop(heap)  # stale: re-armed since, disarmed or removed
        return None

    def _step(self) -> None:
        service = self._service
        with service.lock:
            deadline = self._next_deadline()
        wait = None if deadline is None else deadline - time.monotonic()
        if wait is None:
            events = self._epoll.poll(-1)
        elif wait >= _MS:
            # Whole milliseconds rounded down (Python rounds the float up: ask 0.5 ms less).
            events = self._epoll.poll((int(wait / _MS) - 0.5) * _MS)
        else:
            events = self._epoll.poll(0)
            if not events and wait > 0:
                time.sleep(wait)
        self.wakeups += 1
        for fd, _mask in events:
            if fd == self._wake:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.eventfd_read(self._wake)
                continue
            with service.lock:
                entry = self._socks.get(fd)
                if entry is not None:
                    service._on_readable(*entry)
        self._run_timers()

    def _run_timers(self) -> None:
        service = self._service
        with service.lock:
            now = time.monotonic()
            heap = self._heap
            if heap and heap[0][0] <= now:
                # Every packet that arrived before now must count before a Detection Time is
                # judged: a punctual timer is not enough when the socket holds a backlog (one
                # readiness event reads at most 64 datagrams, and a busy host queues hundreds
                # with 1,000 sessions). Costs one EAGAIN recvmsg per listener when empty.
                service.drain()
            while heap and heap[0][0] <= now:
                when, _, ep = heapq.heappop(heap)
                if self._armed.get(id(ep)) != when or not service._is_live(ep):
                    continue
                del self._armed[id(ep)]
                service._on_timer(ep)


def _name_os_thread(name: bytes) -> None:
    """Give the calling thread its name in the kernel too (prctl PR_SET_NAME: `top -H`,
    /proc/PID/task/TID/comm, `chrt -p TID`). Best effort: nothing happens off Linux."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


# ------------------------------------------------------------------------------- the GC


class GcPauses:
    """Garbage-collector pauses of this process, timed with ``gc.callbacks`` (every thread
    stops while the collector runs, the BFD thread too). One instance per process:
    :func:`gc_pauses`. Figures since the last ``read(reset=True)`` of the same `reader`
    (independent readers: a periodic log and a benchmark do not reset each other), in ms."""

    def __init__(self) -> None:
        self._t0 = 0.0
        self._windows: dict[str, list[float]] = {}  # reader -> [count, total, max, max gen]
        self.installed = False

    def install(self) -> None:
        if not self.installed:
            gc.callbacks.append(self._callback)
            self.installed = True

    def uninstall(self) -> None:
        if self.installed:
            with contextlib.suppress(ValueError):
                gc.callbacks.remove(self._callback)
            self.installed = False

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        ms = (time.perf_counter() - self._t0) * 1000
        for w in list(self._windows.values()):
            w[0] += 1
            w[1] += ms
            if ms > w[2]:
                w[2], w[3] = ms, float(info.get("generation", -1))

    def read(self, *, reset: bool = False, reader: str = "default") -> dict[str, float | int]:
        w = self._windows.setdefault(reader, [0, 0.0, 0.0, -1.0])
        out: dict[str, float | int] = {
            "collections": int(w[0]),
            "max_ms": round(w[2], 3),
            "max_generation": int(w[3]),
            "total_ms": round(w[1], 3),
            "frozen": gc.get_freeze_count(),
        }
        if reset:
            self._windows[reader] = [0, 0.0, 0.0, -1.0]
        return out


_GC_PAUSES = GcPauses()


def gc_pauses() -> GcPauses:
    """The process's GC pause recorder (installed on first use)."""
    _GC_PAUSES.install()
    return _GC_PAUSES


_frozen = False


def freeze_gc() -> bool:
    """``gc.collect()`` then ``gc.freeze()``, once per process: what exists now (modules,
    configuration, the daemon's long-lived structures) is never scanned again by the collector,
    so later full collections — which stop the BFD thread too — are shorter. Returns False if it
    was already done."""
    global _frozen
    if _frozen:
        return False
    _frozen = True
    gc.collect()
    gc.freeze()
    return True
