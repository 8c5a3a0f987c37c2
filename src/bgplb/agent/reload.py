"""SIGHUP / ``reload`` for the agent (part of :class:`~bgplb.agent.daemon.AgentDaemon`): read
the config again and apply only the difference; a bad file changes nothing."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from bgplb.agent.lifecycle import sd_notify
from bgplb.agent.logs import setup as setup_logging
from bgplb.agent.state import AgentState, ServiceSpec
from bgplb.config import AgentConfig, ConfigError, PeerConfig, load_agent_config
from bgplb.control.metrics import MetricsServer
from bgplb.control.socket import ControlServer
from bgplb.io.bgp import BgpPeer

log = logging.getLogger("bgplb.agent")


def specs(config: AgentConfig) -> list[ServiceSpec]:
    """The state's view of the configured services."""
    return [
        ServiceSpec(
            name=s.name,
            vips=tuple(s.vips),
            communities=tuple(s.communities),
            large_communities=tuple(tuple(c) for c in s.large_communities),  # type: ignore[misc]
            med=s.med,
            as_path_prepend=s.as_path_prepend,
            manage_vip=s.manage_vip,
            drain_time=s.drain_time,
            drain_vip_linger=s.drain_vip_linger,
        )
        for s in config.services
    ]


class Reload:
    """Applies a new configuration: services, checks, peers (only the changed ones), control."""

    config_path: Path
    config: AgentConfig
    state: AgentState
    router_id: ipaddress.IPv4Address | None
    peers: dict[str, BgpPeer]
    peer_configs: dict[str, PeerConfig]
    control: ControlServer | None
    metrics_server: MetricsServer

    if TYPE_CHECKING:

        def _pump(self) -> None: ...

        def _names(self) -> set[str]: ...

        async def _sync_checks(self, cfg: AgentConfig) -> None: ...

        def _rebuild_health(self, cfg: AgentConfig, now: float, reason: str) -> None: ...

        def _add_peer(self, peer_cfg: PeerConfig, start: bool = True) -> None: ...

        def _rerequest_bfd(self, key: str, peer_cfg: PeerConfig) -> None: ...

        async def _remove_peer(self, key: str, message: str) -> None: ...

        async def _start_control(self, cfg: AgentConfig) -> None: ...

    async def reload(self) -> tuple[bool, str]:
        """SIGHUP: read the config again and apply only what changed; a bad file changes
        nothing (its errors are logged). Returns (applied, errors)."""
        try:
            new = await asyncio.to_thread(load_agent_config, self.config_path)
        except ConfigError as exc:
            for issue in exc.issues:
                log.error("reload refused, keeping the running config: %s", issue)
            return False, str(exc)
        sd_notify("RELOADING=1")
        old, self.config = self.config, new
        loop = asyncio.get_running_loop()
        if new.logging != old.logging:
            setup_logging(new.logging.level, new.logging.json_)
        self.state.shutdown_drain_time = new.bgp.shutdown_drain_time
        # services and checks
        await self._sync_checks(new)
        self.state.configure(specs(new), loop.time())
        self._rebuild_health(new, loop.time(), "configuration reloaded")
        self._pump()
        # peers: a change of [bgp] restarts every session, otherwise only the changed ones
        bgp_changed = new.bgp.model_dump(exclude={"shutdown_drain_time"}) != old.bgp.model_dump(
            exclude={"shutdown_drain_time"}
        )
        if bgp_changed and new.bgp.router_id is not None:
            self.router_id = new.bgp.router_id
        wanted = {str(p.address): p for p in new.peers}
        for key in list(self.peers):
            if (
                key in wanted
                and not bgp_changed
                and _only_bfd_differs(wanted[key], self.peer_configs[key])
            ):
                self._rerequest_bfd(key, wanted[key])  # BGP session left alone
                continue
            if key not in wanted or bgp_changed or wanted[key] != self.peer_configs[key]:
                reason = (
                    "removed from the configuration"
                    if key not in wanted
                    else "configuration changed"
                )
                log.info("peer %s: %s, closing the session", key, reason)
                await self._remove_peer(key, f"bgplb agent: peer {reason}")
        for key, peer_cfg in wanted.items():
            if key not in self.peers:
                log.info("peer %s: starting", key)
                self._add_peer(peer_cfg)
        if new.control != old.control:
            if self.control is not None:
                await self.control.close()
            await asyncio.to_thread(self.metrics_server.close)
            await self._start_control(new)
        added = sorted(self._names() - {s.name for s in old.services})
        removed = sorted({s.name for s in old.services} - self._names())
        log.info(
            "configuration reloaded from %s (services added: %s; removed: %s)",
            self.config_path,
            ", ".join(added) or "none",
            ", ".join(removed) or "none",
        )
        sd_notify("READY=1")
        return True, ""


def _only_bfd_differs(new: PeerConfig, old: PeerConfig) -> bool:
    """True if the two peer configurations differ, and only in `bfd`."""
    return new.bfd != old.bfd and new.model_dump(exclude={"bfd"}) == old.model_dump(exclude={"bfd"})
