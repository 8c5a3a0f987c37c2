"""The agent's Prometheus metric families (on a :class:`bgplb.control.metrics.MetricsServer`)."""

from __future__ import annotations

from bgplb.control.metrics import MetricsServer

#: Where the agent catches an unexpected exception (a bug), the ``task`` label of
#: ``bgplb_agent_internal_errors_total``: a VIP step (adding or removing a VIP on ``lo``), a
#: health check's callback into the agent, or one of the agent's background tasks.
INTERNAL_TASKS = ("vip-step", "check-callback", "background")


class AgentMetrics:
    def __init__(self, server: MetricsServer) -> None:
        self.peer_up = server.gauge(
            "agent_peer_up", "1 if the BGP session is Established", ("peer",)
        )
        self.session_flaps = server.counter(
            "agent_session_flaps", "Established sessions that went down", ("peer",)
        )
        self.service_healthy = server.gauge(
            "agent_service_healthy", "1 if every check of the service is up", ("service",)
        )
        self.service_announced = server.gauge(
            "agent_service_announced", "1 if the service's VIPs are announced", ("service",)
        )
        self.service_drained = server.gauge(
            "agent_service_drained", "1 if the service is drained by the operator", ("service",)
        )
        self.check_up = server.gauge("agent_check_up", "1 if the check is up", ("service", "check"))
        self.check_duration = server.histogram(
            "agent_check_duration_seconds",
            "Duration of health probes",
            ("service", "check"),
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.announcements = server.counter(
            "agent_announcements", "VIP announcements sent (to all peers)", ("service",)
        )
        self.withdrawals = server.counter(
            "agent_withdrawals", "VIP withdrawals sent (to all peers)", ("service",)
        )
        self.bfd_teardowns = server.counter(
            "agent_bfd_teardowns", "BGP sessions closed because BFD went down", ("peer",)
        )
        self.internal_errors = server.counter(
            "agent_internal_errors",
            "Unexpected exceptions (bugs), logged with their traceback",
            ("task",),
        )
        for task in INTERNAL_TASKS:
            self.internal_errors.labels(task)  # exported at 0 before the first one

    def internal_error(self, task: str) -> None:
        self.internal_errors.labels(task).inc()
