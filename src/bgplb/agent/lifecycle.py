"""Signals, shutdown and restart of the agent (part of :class:`~bgplb.agent.daemon.AgentDaemon`).

SIGTERM/SIGINT drain, withdraw, remove VIPs, Cease (Administrative Shutdown) and exit 0; SIGHUP
reloads the config applying only the difference; SIGUSR1 exits *keeping* the routes (no
withdrawal, no NOTIFICATION, VIPs left on lo): with Graceful Restart (RFC 4724) the routers keep
forwarding until the agent is back and sends End-of-RIB. Readiness and stopping are reported to
systemd with :func:`sd_notify`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bgplb.agent import statefile
from bgplb.agent.state import AddVip, AgentState, Phase, RemoveVip
from bgplb.config import AgentConfig
from bgplb.control.metrics import MetricsServer
from bgplb.control.socket import ControlServer
from bgplb.health import CheckRunner
from bgplb.io.bgp import BgpPeer

log = logging.getLogger("bgplb.agent")

_STOP_SIGNALS = ((signal.SIGTERM, "stop"), (signal.SIGINT, "stop"), (signal.SIGUSR1, "restart"))


def sd_notify(message: str) -> None:
    """Send a datagram to systemd's $NOTIFY_SOCKET (no-op when not under systemd)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.debug("sd_notify(%s) failed: %s", message, exc)


class Lifecycle:
    """Stop requests (signals), the two ways of exiting, and the wait for health verdicts."""

    config: AgentConfig
    state: AgentState
    state_path: Path
    saved: statefile.SavedState
    peers: dict[str, BgpPeer]
    runner: CheckRunner
    control: ControlServer | None
    metrics_server: MetricsServer
    _vip_queue: asyncio.Queue[AddVip | RemoveVip]
    _stop: asyncio.Future[str] | None
    _timer: asyncio.TimerHandle | None
    _tasks: set[asyncio.Task[Any]]

    if TYPE_CHECKING:

        def _pump(self) -> None: ...

        def _close_bfd(self) -> None: ...

        def _spawn(self, coro: Any) -> asyncio.Task[Any]: ...

        async def reload(self) -> tuple[bool, str]: ...

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig, mode in _STOP_SIGNALS:
            loop.add_signal_handler(sig, self.request_stop, mode)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload()))

    def _remove_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    def request_stop(self, mode: str = "stop") -> None:
        """``stop``: drain, withdraw, remove VIPs; ``restart``: exit keeping the routes."""
        if self._stop is not None and not self._stop.done():
            log.info("%s requested", "stop" if mode == "stop" else "restart keeping routes")
            self._stop.set_result(mode)

    async def _shutdown(self) -> None:
        cfg = self.config
        sd_notify("STOPPING=1\nSTATUS=draining")
        loop = asyncio.get_running_loop()
        self.state.shutdown(loop.time(), cfg.bgp.shutdown_drain_time)
        self._pump()
        deadline = loop.time() + cfg.bgp.shutdown_drain_time + 10.0
        while not (self.state.idle and self._vip_queue.empty()) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self.state.idle:
            await asyncio.wait_for(self._vip_queue.join(), 10.0)
        await self.runner.stop()
        await asyncio.gather(
            *(p.stop("bgplb agent shutting down") for p in self.peers.values()),
            return_exceptions=True,
        )
        self._close_bfd()
        self.saved.clean_exit = True
        statefile.save(self.state_path, self.saved)
        await self._close()
        log.info("agent stopped: everything withdrawn")

    async def _exit_keeping_routes(self) -> None:
        sd_notify("STOPPING=1\nSTATUS=restarting, routes kept")
        await self.runner.stop()
        for peer in self.peers.values():
            peer.close_silently()  # no NOTIFICATION: GR helpers keep our routes
        # BFD AdminDown, not silence: the routers must not see a failure (RFC 5882 §3.2), or
        # they would drop our routes at once instead of keeping them for Graceful Restart.
        self._close_bfd()
        self.saved.clean_exit, self.saved.restart_at = False, time.time()
        statefile.save(self.state_path, self.saved)
        await self._close()
        log.info("agent exited keeping routes and VIPs (graceful restart)")

    async def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.control is not None:
            await self.control.close()
        await asyncio.to_thread(self.metrics_server.close)

    async def _settle(self, timeout: float) -> None:
        """Until every check has a verdict (UP, or `fall` failures) and no VIP is being added."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            verdicts = all(
                s.machine.up or s.machine.failures >= s.machine.fall for s in self.runner.statuses()
            )
            adding = any(v.phase is Phase.ADDING for v in self.state.vips.values())
            if verdicts and not adding:
                return
            await asyncio.sleep(0.05)
        log.warning("no health verdict for every check after %.1fs: starting sessions", timeout)
