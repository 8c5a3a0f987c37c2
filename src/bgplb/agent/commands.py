"""The agent's control-socket commands and metrics endpoint (part of
:class:`~bgplb.agent.daemon.AgentDaemon`): ``status``, ``drain``, ``undrain``, ``reload``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from bgplb.agent.state import AgentState
from bgplb.config import AgentConfig
from bgplb.control.metrics import MetricsServer
from bgplb.control.socket import ControlError, ControlServer

if TYPE_CHECKING:
    from bgplb.agent.daemon import AgentDaemon


class ControlCommands:
    """Serves the control socket (status, drain, undrain, reload) and the Prometheus metrics."""

    config_path: Path
    state: AgentState
    control: ControlServer | None
    metrics_server: MetricsServer

    if TYPE_CHECKING:

        def _pump(self) -> None: ...

        async def reload(self) -> tuple[bool, str]: ...

    async def _start_control(self, cfg: AgentConfig) -> None:
        self.control = ControlServer(cfg.control.socket)
        for command, handler in (
            ("status", self._cmd_status),
            ("drain", self._cmd_drain),
            ("undrain", self._cmd_undrain),
            ("reload", self._cmd_reload),
        ):
            self.control.register(command, handler)
        await self.control.start()
        if cfg.control.metrics is not None:
            m = cfg.control.metrics
            await asyncio.to_thread(self.metrics_server.start, str(m.host), m.port)

    async def _cmd_status(self, request: dict[str, Any]) -> dict[str, Any]:
        from bgplb.control.agent_status import build_status

        return build_status(cast("AgentDaemon", self))

    def _services_arg(self, request: dict[str, Any]) -> list[str]:
        name = request.get("service")
        if name is None:
            return sorted(self.state.services)
        if name not in self.state.services:
            known = ", ".join(sorted(self.state.services)) or "none"
            raise ControlError(f"no service {name!r} (configured: {known})")
        return [str(name)]

    async def _cmd_drain(self, request: dict[str, Any]) -> dict[str, Any]:
        now = asyncio.get_running_loop().time()
        names = self._services_arg(request)
        for name in names:
            self.state.drain(name, now)
        self._pump()
        return {
            "drained": names,
            "drain_time": {n: self.state.services[n].spec.drain_time for n in names},
        }

    async def _cmd_undrain(self, request: dict[str, Any]) -> dict[str, Any]:
        now = asyncio.get_running_loop().time()
        names = self._services_arg(request)
        for name in names:
            self.state.undrain(name, now)
        self._pump()
        return {"undrained": names}

    async def _cmd_reload(self, request: dict[str, Any]) -> dict[str, Any]:
        ok, errors = await self.reload()
        if not ok:
            raise ControlError("reload refused:\n" + errors)
        return {"reloaded": str(self.config_path)}
