"""`bgplb agent`: the asyncio daemon around the pure :class:`~bgplb.agent.state.AgentState`.

It owns the inputs and carries out the state's steps. :class:`AgentDaemon` holds the shared
state and the start-up sequence; its parts live in sibling modules, one concern each:

- :mod:`~bgplb.agent.checks`: health checks, a transition handed to the state at once;
- :mod:`~bgplb.agent.steps`: the state's actions (VIPs on lo, announcements, withdrawals
  confirmed once on the wire) and its timer;
- :mod:`~bgplb.agent.sessions`: one BGP peer per ``[[peers]]`` and its BFD link (RFC 5882,
  RFC 9384);
- :mod:`~bgplb.agent.lifecycle`: signals, drain-and-withdraw shutdown, exit keeping the routes
  for Graceful Restart (RFC 4724), sd_notify;
- :mod:`~bgplb.agent.reload`: SIGHUP applies only the difference;
- :mod:`~bgplb.agent.commands`: the control socket (status, drain, undrain, reload) and metrics.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from pathlib import Path
from typing import Any

from bgplb.agent import peers as bgp
from bgplb.agent import statefile
from bgplb.agent.checks import HealthChecks
from bgplb.agent.commands import ControlCommands
from bgplb.agent.lifecycle import Lifecycle, sd_notify
from bgplb.agent.metrics import AgentMetrics
from bgplb.agent.reload import Reload, specs
from bgplb.agent.sessions import PeerSessions
from bgplb.agent.state import AddVip, AgentState, RemoveVip
from bgplb.agent.steps import StateSteps
from bgplb.bgp.attributes import PathAttributes
from bgplb.bgp.prefix import Prefix
from bgplb.config import AgentConfig, PeerConfig, load_agent_config
from bgplb.control.metrics import BfdCollector, MetricsServer
from bgplb.control.socket import ControlError, ControlServer
from bgplb.health import CheckRunner, ServiceHealth
from bgplb.io.bfd import BfdService
from bgplb.io.bgp import BgpPeer
from bgplb.io.bgp_bfd import BfdLink

__all__ = ["AgentDaemon", "run_agent", "sd_notify", "specs"]

log = logging.getLogger("bgplb.agent")


class AgentDaemon(Lifecycle, Reload, ControlCommands, HealthChecks, StateSteps, PeerSessions):
    """Runs the agent until stopped; ``await run()`` returns the exit code."""

    def __init__(
        self,
        config_path: str | Path,
        *,
        state_path: str | Path = statefile.DEFAULT_PATH,
        config: AgentConfig | None = None,
    ) -> None:
        self.config_path = Path(config_path)
        self.config = config or load_agent_config(self.config_path)  # ConfigError: CLI prints it
        self.state_path = Path(state_path)
        self.state = AgentState(shutdown_drain_time=self.config.bgp.shutdown_drain_time)
        self.peers: dict[str, BgpPeer] = {}
        self.peer_configs: dict[str, PeerConfig] = {}
        self.announced: dict[Prefix, PathAttributes] = {}
        self.health: dict[str, ServiceHealth] = {}
        self.saved = statefile.SavedState()
        self.started = time.time()
        self.metrics_server = MetricsServer()
        self.metrics = AgentMetrics(self.metrics_server)
        BfdCollector(
            self.metrics_server,
            "agent",
            lambda: [(k, link.status()) for k, link in list(self.bfd_links.items())],
        )
        self.control: ControlServer | None = None
        self.runner = CheckRunner(self._on_check, on_result=self._on_result, jitter=0.1)
        self.router_id: ipaddress.IPv4Address | None = None
        self._vip_queue: asyncio.Queue[AddVip | RemoveVip] = asyncio.Queue()
        self._stop: asyncio.Future[str] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.restarting = False
        self.bfd: BfdService | None = None  # created when the first peer asks for BFD
        self.bfd_links: dict[str, BfdLink] = {}

    # -- life cycle --------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        cfg = self.config
        self.router_id = cfg.bgp.router_id or await asyncio.to_thread(bgp.default_router_id)
        if self.router_id is None:
            log.error(
                "no router_id configured and no IPv4 address on this host: set [bgp].router_id"
            )
            return 1
        try:
            self.saved = statefile.load(self.state_path)
        except statefile.StateFileError:
            return 1  # logged at CRITICAL with what to do: a drained service must not come back
        self.restarting = cfg.bgp.graceful_restart and self.saved.keeps_routes(
            cfg.bgp.graceful_restart_time
        )
        self.saved.clean_exit, self.saved.restart_at = False, None
        statefile.save(self.state_path, self.saved)
        try:
            await self._start_control(cfg)
        except (ControlError, OSError) as exc:
            log.error("control socket: %s", exc)
            return 1
        self._spawn(self._vip_worker())
        self.state.configure(specs(cfg), loop.time(), drained=self.saved.drained & self._names())
        await self._sync_checks(cfg)
        self._rebuild_health(cfg, loop.time(), "starting")
        self.runner.start()
        self._pump()
        await self._forget_unconfigured_vips()
        for peer_cfg in cfg.peers:
            self._add_peer(peer_cfg, start=False)
        if self.restarting:
            log.info(
                "restarting with routes kept at the routers: waiting for first health verdicts"
            )
            await self._settle(max(1.0, cfg.bgp.graceful_restart_time / 2))
        for peer in self.peers.values():
            peer.start()
        self._install_signal_handlers(loop)
        log.info(
            "agent started: AS %s, router id %s, %d peer(s), %d service(s)%s",
            cfg.bgp.asn,
            self.router_id,
            len(self.peers),
            len(cfg.services),
            " (graceful restart)" if self.restarting else "",
        )
        sd_notify("READY=1\nSTATUS=running")
        mode = await self._stop
        self._remove_signal_handlers(loop)
        if mode == "restart":
            await self._exit_keeping_routes()
        else:
            await self._shutdown()
        return 0

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _names(self) -> set[str]:
        return {s.name for s in self.config.services}


async def run_agent(config_path: str | Path, state_path: str | Path) -> int:
    daemon = AgentDaemon(config_path, state_path=state_path)
    return await daemon.run()
