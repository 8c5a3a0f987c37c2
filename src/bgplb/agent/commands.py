"""The agent's control socket and metrics endpoint.

- :class:`ControlCommands`: ``status``, ``drain``, ``undrain``, ``reload`` (the requests of
  ``bgplb status|drain|undrain``, JSON over the unix socket of :mod:`bgplb.control.socket`);
- :class:`ControlEndpoints`: the socket and the Prometheus endpoint, started from
  ``[control]`` and restarted when a reload changes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from bgplb.agent.runtime import Clock
from bgplb.agent.state import AgentState
from bgplb.agent.status import AgentStatus
from bgplb.config import ControlConfig
from bgplb.control.metrics import MetricsServer
from bgplb.control.socket import ControlError, ControlServer

Request = Mapping[str, object]
Answer = dict[str, object]


class ControlCommands:
    """What the control socket's commands do, on the parts passed in."""

    def __init__(
        self,
        state: AgentState,
        clock: Clock,
        pump: Callable[[], None],
        status: Callable[[], AgentStatus],
        reload: Callable[[], Awaitable[tuple[bool, str]]],
        config_path: Path,
    ) -> None:
        self.state = state
        self.clock = clock
        self.pump = pump
        self.status = status
        self.reload = reload
        self.config_path = config_path

    def register(self, server: ControlServer) -> None:
        server.register("status", self.cmd_status)
        server.register("drain", self.cmd_drain)
        server.register("undrain", self.cmd_undrain)
        server.register("reload", self.cmd_reload)

    async def cmd_status(self, request: Request) -> Answer:
        return self.status().to_json()

    def _services(self, request: Request) -> list[str]:
        name = request.get("service")
        if name is None:
            return sorted(self.state.services)
        if not isinstance(name, str) or name not in self.state.services:
            known = ", ".join(sorted(self.state.services)) or "none"
            raise ControlError(f"no service {name!r} (configured: {known})")
        return [name]

    async def cmd_drain(self, request: Request) -> Answer:
        now = self.clock.now()
        names = self._services(request)
        for name in names:
            self.state.drain(name, now)
        self.pump()
        return {
            "drained": names,
            "drain_time": {n: self.state.services[n].spec.drain_time for n in names},
        }

    async def cmd_undrain(self, request: Request) -> Answer:
        now = self.clock.now()
        names = self._services(request)
        for name in names:
            self.state.undrain(name, now)
        self.pump()
        return {"undrained": names}

    async def cmd_reload(self, request: Request) -> Answer:
        ok, errors = await self.reload()
        if not ok:
            raise ControlError("reload refused:\n" + errors)
        return {"reloaded": str(self.config_path)}


class ControlEndpoints:
    """The control socket (commands registered by ``commands``) and the metrics endpoint."""

    def __init__(
        self,
        commands: ControlCommands,
        metrics_server: MetricsServer,
        server_factory: Callable[[Path], ControlServer] = ControlServer,
    ) -> None:
        self.commands = commands
        self.metrics_server = metrics_server
        self.server_factory = server_factory
        self.server: ControlServer | None = None

    async def start(self, cfg: ControlConfig) -> None:
        """ControlError or OSError when the socket or the metrics port cannot be opened."""
        server = self.server_factory(cfg.socket)
        self.commands.register(server)
        await server.start()  # on error nothing is ours yet: a file found there stays
        self.server = server
        if cfg.metrics is not None:
            m = cfg.metrics
            try:
                await asyncio.to_thread(self.metrics_server.start, str(m.host), m.port)
            except OSError:
                await self.close()
                raise

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None
        await asyncio.to_thread(self.metrics_server.close)

    async def restart(self, cfg: ControlConfig) -> None:
        await self.close()
        await self.start(cfg)
