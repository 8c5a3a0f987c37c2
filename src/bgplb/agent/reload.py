"""SIGHUP / ``reload`` for the agent: read the config again and apply only the difference; a
bad file changes nothing. :class:`Reloader` does it on the parts passed in."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from bgplb.agent.checks import HealthChecks
from bgplb.agent.runtime import Clock, CurrentConfig
from bgplb.agent.sessions import PeerSessions
from bgplb.agent.state import AgentState, ServiceSpec
from bgplb.config import AgentConfig, ConfigError, ControlConfig, PeerConfig, load_agent_config
from bgplb.logs import setup as setup_logging

log = logging.getLogger("bgplb.agent")


def specs(config: AgentConfig) -> list[ServiceSpec]:
    """The state's view of the configured services."""
    return [
        ServiceSpec(
            name=s.name,
            vips=tuple(s.vips),
            communities=tuple(s.communities),
            large_communities=tuple((c[0], c[1], c[2]) for c in s.large_communities),
            med=s.med,
            as_path_prepend=s.as_path_prepend,
            manage_vip=s.manage_vip,
            drain_time=s.drain_time,
            drain_vip_linger=s.drain_vip_linger,
        )
        for s in config.services
    ]


class Reloader:
    """Applies a new configuration: services, checks, peers (only the changed ones), control."""

    def __init__(
        self,
        config: CurrentConfig,
        state: AgentState,
        checks: HealthChecks,
        sessions: PeerSessions,
        clock: Clock,
        pump: Callable[[], None],
        restart_control: Callable[[ControlConfig], Awaitable[None]],
        notify: Callable[[str], None],
        loader: Callable[[Path], AgentConfig] = load_agent_config,
    ) -> None:
        self.config = config
        self.state = state
        self.checks = checks
        self.sessions = sessions
        self.clock = clock
        self.pump = pump
        self.restart_control = restart_control
        self.notify = notify
        self.loader = loader

    async def __call__(self) -> tuple[bool, str]:
        """Read the config again and apply only what changed; a bad file changes nothing (its
        errors are logged). Returns (applied, errors)."""
        try:
            new = await asyncio.to_thread(self.loader, self.config.path)
        except ConfigError as exc:
            for issue in exc.issues:
                log.error("reload refused, keeping the running config: %s", issue)
            return False, str(exc)
        self.notify("RELOADING=1")
        old = self.config.value
        self.config.value = new
        if new.logging != old.logging:
            setup_logging(new.logging.level, new.logging.json_)
        await self.apply_services(new)
        await self.apply_peers(new, old)
        if new.control != old.control:
            await self.restart_control(new.control)
        added = sorted(self.config.service_names() - {s.name for s in old.services})
        removed = sorted({s.name for s in old.services} - self.config.service_names())
        log.info(
            "configuration reloaded from %s (services added: %s; removed: %s)",
            self.config.path,
            ", ".join(added) or "none",
            ", ".join(removed) or "none",
        )
        self.notify("READY=1")
        return True, ""

    async def apply_services(self, new: AgentConfig) -> None:
        self.state.shutdown_drain_time = new.bgp.shutdown_drain_time
        await self.checks.sync(new)
        self.state.configure(specs(new), self.clock.now())
        self.checks.rebuild(new, "configuration reloaded")
        self.pump()

    async def apply_peers(self, new: AgentConfig, old: AgentConfig) -> None:
        """A change of [bgp] restarts every session, otherwise only the changed ones."""
        sessions = self.sessions
        bgp_changed = new.bgp.model_dump(exclude={"shutdown_drain_time"}) != old.bgp.model_dump(
            exclude={"shutdown_drain_time"}
        )
        if bgp_changed and new.bgp.router_id is not None:
            sessions.router_id = new.bgp.router_id
        wanted = {str(p.address): p for p in new.peers}
        for key in list(sessions.peers):
            running = sessions.peer_configs[key]
            if key in wanted and not bgp_changed and _only_bfd_differs(wanted[key], running):
                sessions.rerequest_bfd(key, wanted[key])  # BGP session left alone
                continue
            if key not in wanted or bgp_changed or wanted[key] != running:
                reason = (
                    "removed from the configuration"
                    if key not in wanted
                    else "configuration changed"
                )
                log.info("peer %s: %s, closing the session", key, reason)
                await sessions.remove(key, f"bgplb agent: peer {reason}")
        for key, peer_cfg in wanted.items():
            if key not in sessions.peers:
                log.info("peer %s: starting", key)
                sessions.add(peer_cfg)


def _only_bfd_differs(new: PeerConfig, old: PeerConfig) -> bool:
    """True if the two peer configurations differ, and only in `bfd`."""
    return new.bfd != old.bfd and new.model_dump(exclude={"bfd"}) == old.model_dump(exclude={"bfd"})
