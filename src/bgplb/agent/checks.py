"""The agent's health checks (part of :class:`~bgplb.agent.daemon.AgentDaemon`).

A :class:`~bgplb.health.CheckRunner` runs every check in its own task; a check transition is
handed to the state at once (event-driven withdrawal, no polling).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from bgplb.agent.metrics import AgentMetrics
from bgplb.agent.state import AgentState
from bgplb.config import AgentConfig
from bgplb.health import CheckEvent, CheckRunner, ProbeResult, ServiceHealth

log = logging.getLogger("bgplb.agent")

CheckKey = tuple[str, int]  # (service, index of the check)


class HealthChecks:
    """Keeps the runner's checks equal to the config's and feeds their verdicts to the state."""

    state: AgentState
    runner: CheckRunner
    health: dict[str, ServiceHealth]
    metrics: AgentMetrics

    if TYPE_CHECKING:

        def _pump(self) -> None: ...

    async def _sync_checks(self, cfg: AgentConfig) -> None:
        """Make the runner run exactly cfg's checks: changed or removed ones are stopped, new
        or changed ones added (they start DOWN); unchanged checks keep their state."""
        wanted: dict[CheckKey, Any] = {
            (s.name, i): check for s in cfg.services for i, check in enumerate(s.checks)
        }
        for status in self.runner.statuses():
            key = status.key
            if key not in wanted or wanted[key] != status.check:
                await self.runner.remove(key)
        current = {status.key for status in self.runner.statuses()}
        for key, check in wanted.items():
            if key not in current:
                self.runner.add(key, check)

    def _rebuild_health(self, cfg: AgentConfig, now: float, reason: str) -> None:
        self.health = {}
        for s in cfg.services:
            keys = [(s.name, i) for i in range(len(s.checks))]
            health = ServiceHealth(keys)
            for key in keys:
                health.update(key, self.runner.status(key).machine.up)
            self.health[s.name] = health
            self.metrics.service_healthy.labels(s.name).set(1 if health.healthy else 0)
            if health.healthy:
                self.state.set_health(s.name, True, now, reason)
            else:
                down = ", ".join(self._describe(k) for k in health.down_checks())  # type: ignore[arg-type]
                self.state.set_health(s.name, False, now, f"{reason}: waiting for {down}")

    def _describe(self, key: CheckKey) -> str:
        try:
            return f"check {key[1]} ({self.runner.status(key).check.describe()})"
        except KeyError:
            return f"check {key[1]}"

    def _on_check(self, event: CheckEvent) -> None:
        key = event.key
        assert isinstance(key, tuple)
        service, _ = key
        up = event.transition.up
        what = self._describe(key)
        detail = event.result.detail
        log.log(
            logging.INFO if up else logging.WARNING,
            "service %s: %s %s: %s (%s)",
            service,
            what,
            "up" if up else "down",
            detail,
            event.transition.reason,
            extra={"service": service, "check": what, "up": up},
        )
        self.metrics.check_up.labels(service, str(key[1])).set(1 if up else 0)
        health = self.health.get(service)
        if health is None:
            return
        changed = health.update(key, up)
        if changed is not None:
            self.metrics.service_healthy.labels(service).set(1 if changed else 0)
            reason = f"{what} {'up' if up else 'down'}: {detail}"
            self.state.set_health(service, changed, asyncio.get_running_loop().time(), reason)
            self._pump()

    def _on_result(self, key: Hashable, result: ProbeResult) -> None:
        assert isinstance(key, tuple)
        self.metrics.check_duration.labels(key[0], str(key[1])).observe(result.latency)
