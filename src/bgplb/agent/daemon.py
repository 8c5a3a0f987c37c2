"""`bgplb agent`: the asyncio daemon around the pure :class:`~bgplb.agent.state.AgentState`.

:class:`AgentDaemon` only composes small parts, each with one job and its dependencies passed
in its constructor, and runs the start-up sequence:

- :class:`~bgplb.agent.runtime.CurrentConfig`: the configuration in force (a reload replaces
  it); :class:`~bgplb.agent.runtime.Clock`, :class:`~bgplb.agent.runtime.Tasks`;
- :class:`~bgplb.agent.statefile.StateStore`: drain state, VIPs we added, clean-exit flag;
- :class:`~bgplb.agent.checks.HealthChecks`: the checks; a transition is handed to the state
  at once;
- :class:`~bgplb.agent.steps.StateSteps`: the state's actions (VIPs on a
  :class:`~bgplb.agent.vip.Loopback`, announcements, withdrawals confirmed once on the wire)
  and its timer;
- :class:`~bgplb.agent.sessions.PeerSessions`: one BGP peer per ``[[peers]]``, and its BFD
  link (:class:`~bgplb.agent.bfd_links.BfdLinks`, RFC 5882, RFC 9384);
- :class:`~bgplb.agent.commands.ControlCommands` / ``ControlEndpoints``: the control socket
  (status, drain, undrain, reload) and metrics; :class:`~bgplb.agent.report.StatusReport`
  builds the typed status;
- :class:`~bgplb.agent.reload.Reloader`: SIGHUP applies only the difference;
- :class:`~bgplb.agent.lifecycle.Lifecycle` / ``Signals``: drain-and-withdraw shutdown, exit
  keeping the routes for Graceful Restart (RFC 4724), sd_notify.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from pathlib import Path

from bgplb.agent import statefile
from bgplb.agent.checks import HealthChecks
from bgplb.agent.commands import ControlCommands, ControlEndpoints
from bgplb.agent.lifecycle import RESTART, STOP, Lifecycle, Signals, sd_notify
from bgplb.agent.metrics import AgentMetrics
from bgplb.agent.peers import default_router_id
from bgplb.agent.reload import Reloader, specs
from bgplb.agent.report import StatusReport
from bgplb.agent.runtime import Clock, CurrentConfig, LoopClock, Tasks
from bgplb.agent.sessions import PeerFactory, PeerSessions, tcp_peer
from bgplb.agent.state import AgentState
from bgplb.agent.steps import StateSteps
from bgplb.agent.vip import KernelLoopback, Loopback
from bgplb.config import AgentConfig, CheckConfig, ControlConfig, load_agent_config
from bgplb.control.metrics import BfdCollector, MetricsServer
from bgplb.control.socket import ControlError
from bgplb.health.checks import Probe, make_probe

__all__ = ["AgentDaemon", "run_agent", "sd_notify", "specs"]

log = logging.getLogger("bgplb.agent")


class AgentDaemon:
    """Runs the agent until stopped; ``await run()`` returns the exit code.

    The keyword arguments after ``config`` replace the parts that touch the system (tests)."""

    def __init__(
        self,
        config_path: str | Path,
        *,
        state_path: str | Path = statefile.DEFAULT_PATH,
        config: AgentConfig | None = None,
        clock: Clock | None = None,
        loopback: Loopback | None = None,
        peer_factory: PeerFactory = tcp_peer,
        probe_factory: Callable[[CheckConfig], Probe] = make_probe,
        find_router_id: Callable[[], ipaddress.IPv4Address | None] = default_router_id,
        notify: Callable[[str], None] = sd_notify,
        signals: bool = True,
    ) -> None:
        path = Path(config_path)
        self.config = CurrentConfig(path, config or load_agent_config(path))  # CLI prints errors
        self.clock: Clock = clock or LoopClock()
        self.find_router_id = find_router_id
        self.notify = notify
        self.use_signals = signals
        self.metrics_server = MetricsServer()
        self.metrics = AgentMetrics(self.metrics_server)
        self.tasks = Tasks(on_error=lambda: self.metrics.internal_error("background"))
        self.store = statefile.StateStore(Path(state_path))
        self.state = AgentState(shutdown_drain_time=self.config.value.bgp.shutdown_drain_time)
        self.sessions = PeerSessions(
            self.config, self.metrics, self.clock, peer_factory=peer_factory
        )
        BfdCollector(self.metrics_server, "agent", self.sessions.bfd.rows)
        self.steps = StateSteps(
            self.state,
            self.sessions,
            loopback or KernelLoopback(),
            self.store,
            self.metrics,
            self.clock,
            self.config,
            self.tasks,
        )
        self.checks = HealthChecks(
            self.state, self.metrics, self.clock, self.steps.pump, probe_factory=probe_factory
        )
        self.status = StatusReport(self.config, self.state, self.sessions, self.checks, self.clock)
        self.reload = Reloader(
            self.config,
            self.state,
            self.checks,
            self.sessions,
            self.clock,
            self.steps.pump,
            self._restart_control,
            notify,
        )
        self.commands = ControlCommands(
            self.state, self.clock, self.steps.pump, self.status, self.reload, path
        )
        self.endpoints = ControlEndpoints(self.commands, self.metrics_server)
        self.lifecycle = Lifecycle(
            self.config,
            self.state,
            self.steps,
            self.checks,
            self.sessions,
            self.store,
            self.clock,
            self._close,
            notify,
        )
        self.signals = Signals(self.request_stop, self.reload, self.tasks)
        self._stop: asyncio.Future[str] | None = None

    def request_stop(self, mode: str = STOP) -> None:
        """``stop``: drain, withdraw, remove VIPs; ``restart``: exit keeping the routes."""
        if self._stop is not None and not self._stop.done():
            log.info("%s requested", "stop" if mode == STOP else "restart keeping routes")
            self._stop.set_result(mode)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        cfg = self.config.value
        router_id = cfg.bgp.router_id or await asyncio.to_thread(self.find_router_id)
        if router_id is None:
            log.error(
                "no router_id configured and no IPv4 address on this host: set [bgp].router_id"
            )
            return 1
        self.sessions.router_id = router_id
        try:
            saved = self.store.load()
        except statefile.StateFileError:
            return 1  # logged at CRITICAL with what to do: a drained service must not come back
        restarting = cfg.bgp.graceful_restart and saved.keeps_routes(
            cfg.bgp.graceful_restart_time, now=self.clock.wall()
        )
        self.sessions.restarting = restarting
        saved.clean_exit, saved.restart_at = False, None
        self.store.save()
        try:
            await self.endpoints.start(cfg.control)
        except (ControlError, OSError) as exc:
            log.error("control socket: %s", exc)
            await self.endpoints.close()
            return 1
        self.tasks.spawn(self.steps.vips.run())
        drained = saved.drained & self.config.service_names()
        self.state.configure(specs(cfg), self.clock.now(), drained=drained)
        await self.checks.sync(cfg)
        self.checks.rebuild(cfg, "starting")
        self.checks.start()
        self.steps.pump()
        await self._forget_unconfigured_vips()
        for peer_cfg in cfg.peers:
            self.sessions.add(peer_cfg, start=False)
        if restarting:
            log.info(
                "restarting with routes kept at the routers: waiting for first health verdicts"
            )
            await self.lifecycle.settle(max(1.0, cfg.bgp.graceful_restart_time / 2))
        self.sessions.start_all()
        if self.use_signals:
            self.signals.install(loop)
        log.info(
            "agent started: AS %s, router id %s, %d peer(s), %d service(s)%s",
            cfg.bgp.asn,
            router_id,
            len(self.sessions.peers),
            len(cfg.services),
            " (graceful restart)" if restarting else "",
        )
        self.notify("READY=1\nSTATUS=running")
        mode = await self._stop
        if self.use_signals:
            self.signals.remove(loop)
        if mode == RESTART:
            await self.lifecycle.exit_keeping_routes()
        else:
            await self.lifecycle.shutdown()
        return 0

    async def _forget_unconfigured_vips(self) -> None:
        """VIPs a previous run added that are no longer configured, or belong to a drained
        service, are removed now (see :meth:`~bgplb.agent.steps.VipWorker.forget`)."""
        services = self.config.value.services
        drained = set(self.state.drained())
        configured = {str(v) for s in services for v in s.vips}
        of_drained = {str(v) for s in services if s.name in drained for v in s.vips}
        await self.steps.vips.forget(configured - of_drained, of_drained)

    async def _restart_control(self, cfg: ControlConfig) -> None:
        await self.endpoints.restart(cfg)

    async def _close(self) -> None:
        self.steps.close()
        await self.tasks.cancel_all()
        await self.endpoints.close()


async def run_agent(config_path: str | Path, state_path: str | Path) -> int:
    daemon = AgentDaemon(config_path, state_path=state_path)
    return await daemon.run()
