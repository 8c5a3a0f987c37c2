"""Carrying out :class:`~bgplb.agent.state.AgentState`'s steps.

- :class:`VipWorker`: ``AddVip``/``RemoveVip`` one at a time on a :class:`~bgplb.agent.vip.
  Loopback`; only VIPs the agent added (persisted in the state file) are ever removed;
- :class:`StateSteps`: ``Announce`` and ``Withdraw`` go to every BGP session (:class:`Routes`),
  and a withdrawal is confirmed to the state only once every Established peer's transport
  buffer is empty (bounded wait), so a VIP leaves ``lo`` only after its withdrawal is on the
  wire (RFC 4271 §9.2: the UPDATE is what withdraws the route); the state's one timer is armed
  on the :class:`~bgplb.agent.runtime.Clock`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from bgplb.agent.metrics import AgentMetrics
from bgplb.agent.peers import attributes, prefix_of
from bgplb.agent.runtime import Cancellable, Clock, CurrentConfig, Tasks
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
from bgplb.agent.statefile import StateStore
from bgplb.agent.vip import Loopback
from bgplb.bgp.attributes import PathAttributes
from bgplb.bgp.prefix import Prefix

log = logging.getLogger("bgplb.agent")

#: A VIP that the kernel refused to add is tried again this much later.
VIP_RETRY = 5.0
#: How long a withdrawal may take to leave every transport buffer before the VIP goes anyway.
FLUSH_TIMEOUT = 2.0

VipAction = AddVip | RemoveVip


class Routes(Protocol):
    """Where announcements go: every BGP session (:class:`~bgplb.agent.sessions.PeerSessions`)."""

    def announce(self, prefix: Prefix, attrs: PathAttributes) -> None: ...

    def withdraw(self, prefix: Prefix) -> None: ...

    def kick(self) -> None:
        """Send what the sessions hold pending."""
        ...

    async def flushed(self, timeout: float) -> bool:
        """Wait (at most ``timeout``) until every Established session wrote everything out."""
        ...


class VipWorker:
    """Runs VIP steps one at a time, in order; ``on_done(action, now)`` after each.

    A step that raises (a bug: the kernel's refusals are handled inside the step) is logged
    with its traceback and ``on_error()`` is called; the worker goes on with the next one."""

    def __init__(
        self,
        loopback: Loopback,
        store: StateStore,
        clock: Clock,
        on_done: Callable[[VipAction, float], None],
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.loopback = loopback
        self.store = store
        self.clock = clock
        self.on_done = on_done
        self.on_error = on_error
        self._queue: asyncio.Queue[VipAction] = asyncio.Queue()
        self._pending = 0  # submitted, not done
        self._retries: set[Cancellable] = set()

    def submit(self, action: VipAction) -> None:
        self._pending += 1
        self._queue.put_nowait(action)

    @property
    def idle(self) -> bool:
        """No step waiting or running."""
        return self._pending == 0

    async def join(self) -> None:
        await self._queue.join()

    async def run(self) -> None:
        """The worker (a task until cancelled)."""
        try:
            while True:
                action = await self._queue.get()
                try:
                    await self.step(action)
                except Exception:
                    log.exception("internal error: VIP step %s failed", action)
                    if self.on_error is not None:
                        self.on_error()
                finally:
                    self._pending -= 1
                    self._queue.task_done()
        finally:
            for retry in self._retries:
                retry.cancel()

    async def step(self, action: VipAction) -> None:
        text = str(action.vip)
        if isinstance(action, AddVip):
            try:
                added = await self.loopback.add(text)
            except OSError as exc:
                log.error(
                    "service %s: cannot add VIP %s to lo: %s (retrying in %gs)",
                    action.service,
                    text,
                    exc,
                    VIP_RETRY,
                )
                self._retry(action)
                return
            if added:
                self.store.saved.owned_vips.add(text)
                self.store.save()
                log.info("service %s: VIP %s added to lo", action.service, text)
        elif text in self.store.saved.owned_vips:
            await self.loopback.remove(text)
            self.store.saved.owned_vips.discard(text)
            self.store.save()
            log.info("service %s: VIP %s removed from lo", action.service, text)
        else:
            log.info(
                "service %s: VIP %s left on lo (the agent did not add it)", action.service, text
            )
        self.on_done(action, self.clock.now())

    def _retry(self, action: AddVip) -> None:
        def again() -> None:
            self._retries.discard(handle)
            self.submit(action)

        handle = self.clock.call_at(self.clock.now() + VIP_RETRY, again)
        self._retries.add(handle)

    async def forget(self, keep: set[str], drained: set[str]) -> None:
        """Remove the VIPs a previous run added that are not in ``keep`` (no longer configured,
        or of a service in ``drained``: the previous run exited while they lingered after the
        drain, or during it). The state starts with them IDLE, so it never would."""
        for text in sorted(self.store.saved.owned_vips - keep):
            try:
                await self.loopback.remove(text)
            except OSError as exc:
                log.warning("VIP %s (added by a previous run): cannot remove it: %s", text, exc)
            why = "its service is drained" if text in drained else "no longer configured"
            log.info("VIP %s (added by a previous run, %s) removed from lo", text, why)
            self.store.saved.owned_vips.discard(text)
        self.store.save()


class StateSteps:
    """Turns the state's actions into VIP steps, announcements and withdrawals (:meth:`pump`,
    after every input to the state) and keeps the state's timer armed."""

    def __init__(
        self,
        state: AgentState,
        routes: Routes,
        loopback: Loopback,
        store: StateStore,
        metrics: AgentMetrics,
        clock: Clock,
        config: CurrentConfig,
        tasks: Tasks,
    ) -> None:
        self.state = state
        self.routes = routes
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.config = config
        self.tasks = tasks
        self.vips = VipWorker(
            loopback, store, clock, self._vip_done, lambda: metrics.internal_error("vip-step")
        )
        self._timer: Cancellable | None = None
        self._timer_at: float | None = None

    @property
    def idle(self) -> bool:
        """Nothing announced, lingering or in flight: a stop is complete."""
        return self.state.idle and self.vips.idle

    def pump(self) -> None:
        """Carry out every action the state has (in order), then arm its timer."""
        withdrawn: list[IPNetwork] = []
        touched = False
        for action in self.state.actions():
            if isinstance(action, AddVip | RemoveVip):
                self.vips.submit(action)
            elif isinstance(action, Announce):
                prefix = prefix_of(action.vip)
                asn = self.config.value.bgp.asn
                attrs = attributes(action.spec, asn, action.graceful_shutdown)
                self.routes.announce(prefix, attrs)
                touched = True
                self.metrics.announcements.labels(action.spec.name).inc()
                log.debug(
                    "announce %s%s",
                    prefix,
                    " with GRACEFUL_SHUTDOWN" if action.graceful_shutdown else "",
                )
            elif isinstance(action, Withdraw):
                self.routes.withdraw(prefix_of(action.vip))
                withdrawn.append(action.vip)
                touched = True
                self.metrics.withdrawals.labels(action.service).inc()
            else:
                self._service_changed(action)
        if touched:
            self.routes.kick()
        if withdrawn:
            self.tasks.spawn(self._confirm_withdrawn(withdrawn))
        self._arm_timer()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None

    def _service_changed(self, change: ServiceChanged) -> None:
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
        if names != self.store.saved.drained:
            self.store.saved.drained = names
            self.store.save()

    async def _confirm_withdrawn(self, vips: list[IPNetwork]) -> None:
        await self.routes.flushed(FLUSH_TIMEOUT)
        self.state.withdrawn(vips, self.clock.now())
        self.pump()

    def _vip_done(self, action: VipAction, now: float) -> None:
        if isinstance(action, AddVip):
            self.state.vip_added(action.vip, now)
        self.pump()

    def _arm_timer(self) -> None:
        deadline = self.state.get_timer()
        if deadline == self._timer_at:
            return
        self.close()
        if deadline is not None:
            self._timer = self.clock.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self.state.handle_timer(self.clock.now())
        self.pump()
