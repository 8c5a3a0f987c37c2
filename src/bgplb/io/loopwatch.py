"""Event-loop lateness watch: how late does the asyncio loop run a timer?

A daemon whose loop is blocked (a long synchronous computation, a netlink dump, a big status
request) misses its BGP keepalives (RFC 4271 §4.4, hold timer) and BFD transmissions (RFC 5880
§6.8.7, detection time) without any error being logged. `LoopWatch` makes that visible: a task
sleeps `period` seconds again and again and records how much later than asked it woke up.

Figures (`LoopWatch.read()`, all in milliseconds):

* ``max_ms``: the worst lateness since the last reset;
* ``p99_ms``: the 99th percentile of the last `window` wake-ups (a sliding window);
* ``stalls``: how many wake-ups were later than `stall` seconds since the last reset;
* ``samples``: wake-ups since the last reset;
* ``gc_max_ms``, ``gc_full``, ``gc_full_ms``: the longest garbage collection, and the number and
  total time of full (generation 2) collections since the last reset. A collection stops every
  thread, the loop's included: with a heap of a million objects (100k VIPs) a full one takes
  ~0.1-0.3 s, which tells a stall the collector caused from one the code did.

`read(reset=True)` returns the figures and starts a new interval (max and stalls; the p99
window slides on its own). The watch costs one timer per period (100 wake-ups/s at 10 ms).

Usage in a daemon::

    watch = LoopWatch(period=0.01)
    watch.start()            # inside the running loop
    ...
    status["loop"] = watch.read()      # {"max_ms": ..., "p99_ms": ..., "stalls": ..., ...}
    ...
    await watch.stop()
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import math
import time
from typing import TypedDict


class LoopFigures(TypedDict):
    """What `LoopWatch.read()` returns (milliseconds, counts)."""

    period_ms: float
    max_ms: float
    p99_ms: float
    stalls: int
    stall_ms: float
    samples: int
    gc_max_ms: float
    gc_full: int
    gc_full_ms: float


class LoopWatch:
    """Records how late the running event loop wakes a `period`-second sleeper."""

    def __init__(self, period: float = 0.01, *, stall: float = 0.05, window: int = 1000) -> None:
        if not (period > 0 and math.isfinite(period)):
            raise ValueError(f"loop watch period must be a positive number of seconds: {period!r}")
        if not (stall > 0 and math.isfinite(stall)):
            raise ValueError(f"loop watch stall threshold must be positive: {stall!r}")
        if window < 1:
            raise ValueError(f"loop watch window must be at least 1 sample: {window!r}")
        self.period = period
        self.stall = stall
        self._late: collections.deque[float] = collections.deque(maxlen=window)
        self._max = 0.0
        self._stalls = 0
        self._samples = 0
        self._task: asyncio.Task[None] | None = None
        self._gc_started = 0.0
        self._gc_max = 0.0
        self._gc_full = 0
        self._gc_full_time = 0.0

    def start(self) -> None:
        """Start the watch task on the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loopwatch")
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    async def stop(self) -> None:
        """Cancel the watch task and wait for it."""
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def record(self, late: float) -> None:
        """Account one wake-up that came `late` seconds after it was due (also for tests)."""
        late = max(0.0, late)
        self._late.append(late)
        self._samples += 1
        if late > self._max:
            self._max = late
        if late > self.stall:
            self._stalls += 1

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        """gc.callbacks: time each collection (in whichever thread it runs)."""
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_started
        self._gc_max = max(self._gc_max, took)
        if info.get("generation") == 2:
            self._gc_full += 1
            self._gc_full_time += took

    def read(self, *, reset: bool = False) -> LoopFigures:
        """The figures since the last reset; with `reset`, start a new interval."""
        window = sorted(self._late)
        p99 = window[min(len(window) - 1, math.ceil(0.99 * len(window)) - 1)] if window else 0.0
        figures: LoopFigures = {
            "period_ms": round(self.period * 1000, 3),
            "max_ms": round(self._max * 1000, 3),
            "p99_ms": round(p99 * 1000, 3),
            "stalls": self._stalls,
            "stall_ms": round(self.stall * 1000, 3),
            "samples": self._samples,
            "gc_max_ms": round(self._gc_max * 1000, 3),
            "gc_full": self._gc_full,
            "gc_full_ms": round(self._gc_full_time * 1000, 3),
        }
        if reset:
            self._max = 0.0
            self._stalls = 0
            self._samples = 0
            self._gc_max = 0.0
            self._gc_full = 0
            self._gc_full_time = 0.0
        return figures

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.period
            await asyncio.sleep(self.period)
            self.record(loop.time() - due)
