"""Builds the agent's :class:`~bgplb.agent.status.AgentStatus` from its parts (``bgplb status``)."""

from __future__ import annotations

from bgplb.agent.checks import HealthChecks
from bgplb.agent.runtime import Clock, CurrentConfig
from bgplb.agent.sessions import PeerSessions
from bgplb.agent.state import AgentState
from bgplb.agent.status import AgentStatus, ServiceStatus, VipStatus
from bgplb.config import ServiceConfig


class StatusReport:
    """The status of a running agent, read from the parts that own each piece."""

    def __init__(
        self,
        config: CurrentConfig,
        state: AgentState,
        sessions: PeerSessions,
        checks: HealthChecks,
        clock: Clock,
    ) -> None:
        self.config = config
        self.state = state
        self.sessions = sessions
        self.checks = checks
        self.clock = clock
        self.started = clock.wall()

    def __call__(self) -> AgentStatus:
        cfg = self.config.value
        return AgentStatus(
            asn=cfg.bgp.asn,
            router_id=str(self.sessions.router_id),
            uptime=self.clock.wall() - self.started,
            graceful_restart=self.sessions.restarting,
            peers=tuple(self.sessions.statuses()),
            services=tuple(self.service(s) for s in cfg.services),
        )

    def service(self, spec: ServiceConfig) -> ServiceStatus:
        name = spec.name
        svc = self.state.services.get(name)
        now = self.clock.now()  # the clock of the state's deadlines
        lingering = self.state.lingering(name)
        return ServiceStatus(
            name=name,
            healthy=bool(svc and svc.healthy),
            status=svc.status.value if svc else "unknown",
            drained=bool(svc and svc.drained),
            reason=svc.reason if svc else None,
            vips=tuple(
                VipStatus(
                    vip=vip,
                    phase=phase.value,
                    lingering=None if until is None else round(max(0.0, until - now), 1),
                )
                for vip, phase in self.state.phases(name).items()
                for until in [lingering.get(vip)]
            ),
            checks=tuple(self.checks.statuses(spec)),
        )
