"""Signals, shutdown and restart of the agent.

SIGTERM/SIGINT drain, withdraw, remove VIPs, Cease (Administrative Shutdown) and exit 0; SIGHUP
reloads the config applying only the difference; SIGUSR1 exits *keeping* the routes (no
withdrawal, no NOTIFICATION, VIPs left on lo): with Graceful Restart (RFC 4724) the routers keep
forwarding until the agent is back and sends End-of-RIB. Readiness and stopping are reported to
systemd with :func:`sd_notify`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from bgplb.agent.checks import HealthChecks
from bgplb.agent.runtime import Clock, CurrentConfig, Tasks
from bgplb.agent.sessions import PeerSessions
from bgplb.agent.state import AgentState, Phase
from bgplb.agent.statefile import StateStore
from bgplb.agent.steps import StateSteps
from bgplb.io.sdnotify import sd_notify as sd_notify

log = logging.getLogger("bgplb.agent")

STOP, RESTART = "stop", "restart"
_STOP_SIGNALS = ((signal.SIGTERM, STOP), (signal.SIGINT, STOP), (signal.SIGUSR1, RESTART))
#: What a stop may take beyond the drain (withdrawal on the wire, linger, VIP removal).
STOP_MARGIN = 10.0


class Signals:
    """SIGTERM/SIGINT: ``stop``, SIGUSR1: ``restart``, SIGHUP: ``reload()`` in a task."""

    def __init__(
        self,
        on_stop: Callable[[str], None],
        reload: Callable[[], Awaitable[tuple[bool, str]]],
        tasks: Tasks,
    ) -> None:
        self.on_stop = on_stop
        self.reload = reload
        self.tasks = tasks

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig, mode in _STOP_SIGNALS:
            loop.add_signal_handler(sig, self.on_stop, mode)
        loop.add_signal_handler(signal.SIGHUP, self.on_reload)

    def on_reload(self) -> None:
        self.tasks.spawn(self._reload())

    async def _reload(self) -> None:
        await self.reload()

    @staticmethod
    def remove(loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
            loop.remove_signal_handler(sig)


class Lifecycle:
    """The two ways of exiting, and the wait for health verdicts before a Graceful Restart."""

    def __init__(
        self,
        config: CurrentConfig,
        state: AgentState,
        steps: StateSteps,
        checks: HealthChecks,
        sessions: PeerSessions,
        store: StateStore,
        clock: Clock,
        close: Callable[[], Awaitable[None]],
        notify: Callable[[str], None] = sd_notify,
    ) -> None:
        self.config = config
        self.state = state
        self.steps = steps
        self.checks = checks
        self.sessions = sessions
        self.store = store
        self.clock = clock
        self.close = close
        self.notify = notify

    async def shutdown(self) -> bool:
        """Drain (at most ``shutdown_drain_time``), withdraw, let the VIPs linger briefly, remove
        them, Cease to every peer. True if everything was withdrawn and removed in time."""
        drain_time = self.config.value.bgp.shutdown_drain_time
        self.notify("STOPPING=1\nSTATUS=draining")
        self.state.shutdown(self.clock.now(), drain_time)
        self.steps.pump()
        deadline = self.clock.now() + drain_time + STOP_MARGIN
        while not self.steps.idle and self.clock.now() < deadline:
            await self.clock.sleep(0.02)
        done = self.steps.idle
        if not done:
            log.warning("stop: not everything withdrawn after %.0fs; exiting", drain_time + 10)
        await self.checks.stop()
        await self.sessions.stop_all("bgplb agent shutting down")
        self.store.saved.clean_exit = True
        self.store.save()
        await self.close()
        log.info("agent stopped: everything withdrawn")
        return done

    async def exit_keeping_routes(self) -> None:
        self.notify("STOPPING=1\nSTATUS=restarting, routes kept")
        await self.checks.stop()
        self.sessions.close_silently()  # no NOTIFICATION: GR helpers keep our routes
        self.store.saved.clean_exit, self.store.saved.restart_at = False, self.clock.wall()
        self.store.save()
        await self.close()
        log.info("agent exited keeping routes and VIPs (graceful restart)")

    async def settle(self, timeout: float) -> bool:
        """Until every check has a verdict (UP, or `fall` failures) and no VIP is being added.
        False (logged) if that took longer than ``timeout``."""
        deadline = self.clock.now() + timeout
        while self.clock.now() < deadline:
            adding = any(v.phase is Phase.ADDING for v in self.state.vips.values())
            if self.checks.have_verdicts() and not adding:
                return True
            await self.clock.sleep(0.05)
        log.warning("no health verdict for every check after %.1fs: starting sessions", timeout)
        return False
