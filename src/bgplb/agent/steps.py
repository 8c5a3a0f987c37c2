"""Carrying out :class:`~bgplb.agent.state.AgentState`'s steps (part of
:class:`~bgplb.agent.daemon.AgentDaemon`).

- VIPs: ``AddVip``/``RemoveVip`` run one at a time in a worker (pyroute2 in a thread); only VIPs
  the agent added (persisted in the state file) are ever removed;
- BGP: ``Announce`` and ``Withdraw`` go to every session's Adj-RIB-Out, and a withdrawal is
  confirmed to the state only once every Established peer's transport buffer is empty (bounded
  wait);
- the state's one timer is armed on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bgplb.agent import peers as bgp
from bgplb.agent import statefile
from bgplb.agent.metrics import AgentMetrics
from bgplb.agent.state import (
    AddVip,
    AgentState,
    Announce,
    IPNetwork,
    RemoveVip,
    ServiceChanged,
    ServiceStatus,
    Withdraw,
)
from bgplb.bgp.attributes import PathAttributes
from bgplb.bgp.prefix import Prefix
from bgplb.config import AgentConfig
from bgplb.io.bgp import BgpPeer
from bgplb.linux import addresses

log = logging.getLogger("bgplb.agent")


class StateSteps:
    """Turns the state's actions into VIP changes, announcements and withdrawals."""

    config: AgentConfig
    state: AgentState
    state_path: Path
    saved: statefile.SavedState
    announced: dict[Prefix, PathAttributes]
    peers: dict[str, BgpPeer]
    metrics: AgentMetrics
    _vip_queue: asyncio.Queue[AddVip | RemoveVip]
    _timer: asyncio.TimerHandle | None

    if TYPE_CHECKING:

        def _spawn(self, coro: Any) -> asyncio.Task[Any]: ...

    def _pump(self) -> None:
        withdrawn: list[IPNetwork] = []
        touched = False
        for action in self.state.actions():
            if isinstance(action, AddVip | RemoveVip):
                self._vip_queue.put_nowait(action)
            elif isinstance(action, Announce):
                prefix = bgp.prefix_of(action.vip)
                attrs = bgp.attributes(action.spec, self.config.bgp.asn, action.graceful_shutdown)
                self.announced[prefix] = attrs
                for peer in self.peers.values():
                    peer.session.announce(prefix, attrs)
                touched = True
                self.metrics.announcements.labels(action.spec.name).inc()
                log.debug(
                    "announce %s%s",
                    prefix,
                    " with GRACEFUL_SHUTDOWN" if action.graceful_shutdown else "",
                )
            elif isinstance(action, Withdraw):
                prefix = bgp.prefix_of(action.vip)
                self.announced.pop(prefix, None)
                for peer in self.peers.values():
                    peer.session.withdraw(prefix)
                withdrawn.append(action.vip)
                touched = True
                self.metrics.withdrawals.labels(action.service).inc()
            elif isinstance(action, ServiceChanged):
                self._log_service(action)
        if touched:
            for peer in self.peers.values():
                peer.kick()
        if withdrawn:
            self._spawn(self._confirm_withdrawn(withdrawn))
        self._arm_timer()

    def _log_service(self, change: ServiceChanged) -> None:
        level = logging.INFO if change.new is ServiceStatus.ANNOUNCED else logging.WARNING
        log.log(
            level,
            "service %s: %s -> %s (%s)",
            change.service,
            change.old.value,
            change.new.value,
            change.reason,
            extra={
                "service": change.service,
                "old": change.old.value,
                "new": change.new.value,
                "reason": change.reason,
            },
        )
        self.metrics.service_announced.labels(change.service).set(
            1 if change.new in (ServiceStatus.ANNOUNCED, ServiceStatus.DRAINING) else 0
        )
        drained = self.state.services.get(change.service)
        self.metrics.service_drained.labels(change.service).set(
            1 if drained and drained.drained else 0
        )
        names = set(self.state.drained())
        if names != self.saved.drained:
            self.saved.drained = names
            statefile.save(self.state_path, self.saved)

    async def _confirm_withdrawn(self, vips: list[IPNetwork]) -> None:
        await bgp.flushed(list(self.peers.values()), timeout=2.0)
        self.state.withdrawn(vips, asyncio.get_running_loop().time())
        self._pump()

    def _arm_timer(self) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.state.get_timer()
        if deadline is not None:
            self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.state.handle_timer(asyncio.get_running_loop().time())
        self._pump()

    async def _vip_worker(self) -> None:
        while True:
            action = await self._vip_queue.get()
            try:
                await self._vip_step(action)
            except Exception:
                log.exception("VIP step %s failed", action)
            finally:
                self._vip_queue.task_done()

    async def _vip_step(self, action: AddVip | RemoveVip) -> None:
        text = str(action.vip)
        loop = asyncio.get_running_loop()
        if isinstance(action, AddVip):
            try:
                added = await asyncio.to_thread(addresses.add_vip, text)
            except OSError as exc:
                log.error(
                    "service %s: cannot add VIP %s to lo: %s (retrying in 5s)",
                    action.service,
                    text,
                    exc,
                )
                loop.call_later(5.0, self._vip_queue.put_nowait, action)
                return
            if added:
                self.saved.owned_vips.add(text)
                statefile.save(self.state_path, self.saved)
                log.info("service %s: VIP %s added to lo", action.service, text)
            self.state.vip_added(action.vip, loop.time())
        elif text in self.saved.owned_vips:
            await asyncio.to_thread(addresses.remove_vip, text)
            self.saved.owned_vips.discard(text)
            statefile.save(self.state_path, self.saved)
            log.info("service %s: VIP %s removed from lo", action.service, text)
        else:
            log.info(
                "service %s: VIP %s left on lo (the agent did not add it)", action.service, text
            )
        self._pump()

    async def _forget_unconfigured_vips(self) -> None:
        """VIPs a previous run added that are no longer configured, or belong to a drained
        service (the previous run exited while they lingered after the drain, or during the
        drain): remove them now. The state starts with them IDLE, so it never would."""
        drained = set(self.state.drained())
        configured = {str(v) for s in self.config.services for v in s.vips}
        of_drained = {str(v) for s in self.config.services if s.name in drained for v in s.vips}
        for text in sorted(self.saved.owned_vips - (configured - of_drained)):
            with contextlib.suppress(OSError):
                await asyncio.to_thread(addresses.remove_vip, text)
            why = "its service is drained" if text in of_drained else "no longer configured"
            log.info("VIP %s (added by a previous run, %s) removed from lo", text, why)
            self.saved.owned_vips.discard(text)
        statefile.save(self.state_path, self.saved)
