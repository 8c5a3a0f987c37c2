"""What the agent's parts share at run time: the clock, the background tasks, the config.

:class:`Clock` is the one source of time for the agent's parts (``now()`` is the event loop's
monotonic clock, the clock of :class:`~bgplb.agent.state.AgentState`'s deadlines; ``wall()`` is
the wall clock for uptime and the restart time of RFC 4724 §4.1). :class:`LoopClock` is the
asyncio implementation; tests pass a fake one that they advance by hand.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Protocol

from bgplb.config import AgentConfig

log = logging.getLogger("bgplb.agent")


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds (the event loop's time)."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable:
        """Run ``callback`` once ``now() >= when``."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    """:class:`Clock` on the running asyncio event loop."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable:
        return asyncio.get_running_loop().call_at(when, callback)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


Job = Coroutine[object, object, None]


class Tasks:
    """Background tasks of the agent, cancelled together at exit.

    A task that ends with an exception (a bug: the jobs catch what they expect) is logged with
    its traceback at once, not when the task object is collected, and ``on_error()`` is
    called (the agent counts it in ``bgplb_agent_internal_errors_total``)."""

    def __init__(self, on_error: Callable[[], None] | None = None) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_error = on_error

    def spawn(self, job: Job) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()  # retrieved: asyncio does not log it a second time
        if error is None:
            return
        log.error(
            "internal error in background task %s: %s: %s",
            getattr(task.get_coro(), "__qualname__", task.get_name()),
            type(error).__name__,
            error,
            exc_info=error,
        )
        if self._on_error is not None:
            self._on_error()

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class CurrentConfig:
    """The configuration in force and the file it comes from; a reload replaces ``value``.

    The parts that need the configuration at the moment they act (the AS number of an
    announcement, the ``[bgp]`` section of a new session, the services listed in the status)
    hold this object rather than a copy."""

    def __init__(self, path: Path, value: AgentConfig) -> None:
        self.path = path
        self.value = value

    def service_names(self) -> set[str]:
        return {s.name for s in self.value.services}
