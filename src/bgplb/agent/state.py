"""What the agent announces, and in which order. Pure: no I/O, no clock (``now`` is a parameter).

Theory of operation
-------------------
Inputs: the configured services (:meth:`AgentState.configure`, also on SIGHUP), each service's
health (:meth:`set_health`, from ``bgplb.health``), the operator's drain/undrain, shutdown, time
(:meth:`handle_timer`) and two confirmations from the daemon: a VIP was put on ``lo``
(:meth:`vip_added`) and a withdrawal was written to every established peer (:meth:`withdrawn`).
Outputs are pulled, as in h11/aioquic: :meth:`actions` returns the steps to carry out, in order,
and :meth:`get_timer` the next deadline.

Each VIP has its own phase::

    IDLE --AddVip--> ADDING --vip_added--> ANNOUNCED --(drain)--> DRAINING --(drain_time)--+
      ^                                        |                     |                     |
      |                                        +--(unhealthy)--------+--(unhealthy)--------+
      |                                                                                   v
      +--------------------RemoveVip <--withdrawn-- WITHDRAWING <--Withdraw---------------+
      |                                                  |
      +--RemoveVip <--(drain_vip_linger)-- IDLE, lingering <--withdrawn (operator drain;
                    (shutdown_vip_linger)                             a stop, healthy)
                                              |
                 ANNOUNCED <--Announce <--(undrained and healthy: no AddVip, it is on lo)

So the order the DESIGN asks for is explicit: the VIP is added to ``lo`` *before* the
announcement (``Announce`` is emitted only after :meth:`vip_added`), and removed only *after* the
withdrawal went out to every peer (``RemoveVip`` only after :meth:`withdrawn`). With
``manage_vip = false`` the VIP steps are skipped.

*Lingering*: after the withdrawal that ends an operator drain (``bgplb drain``; not the drain of
a shutdown, not a health failure), the VIP stays on ``lo`` for the service's
``drain_vip_linger`` before ``RemoveVip``, because a router with connection pinning keeps the
drained server's established connections flowing to it for a while after the withdrawal
(``bgplb router``'s ``drain_linger``). The VIP is IDLE for BGP (not announced) while it
lingers; an undrain during the linger announces it again at once, without ``AddVip``; the VIP
leaving the configuration removes it at once.

*Shutdown linger*: the withdrawal of a stop (SIGTERM) is followed by a short linger too,
``shutdown_vip_linger`` (1.5 s), for a healthy service: a router that has not processed the
withdrawal yet (it may be busy, or learn of it only by BFD or the hold timer) still forwards
packets to this server, and without the VIP on ``lo`` they would be dropped. It is bounded, so a
stop never hangs: a stop during a drain's linger shortens that linger to at most
``shutdown_vip_linger`` after its withdrawal (at once if that is over). A service that is
unhealthy at the withdrawal does not linger.

A VIP is *wanted* when its service is configured, healthy, not drained and the agent is not
shutting down. A VIP that stops being wanted because its service is drained (or the agent stops)
is first re-announced with GRACEFUL_SHUTDOWN (RFC 8326 §3, community 65535:0) and withdrawn
``drain_time`` later; one that stops being wanted because its service is unhealthy (or was removed
from the config) is withdrawn at once, also in the middle of a drain.

*Stop drain*: a planned stop of the service itself (a ``systemd`` check whose unit entered
``deactivating``: ``systemctl stop`` or ``restart``) is a drain too (:meth:`set_stopping`):
GRACEFUL_SHUTDOWN, then the withdrawal after ``drain_time`` or as soon as the service is
unhealthy (the unit is ``inactive`` or ``failed``), whichever comes first. It is not the
operator's drain: it is not persisted, ``bgplb undrain`` does not end it, and it ends by itself
when the stop is over (:meth:`set_stopping` with False, once the unit is back up after its
``rise``). Its withdrawal lingers on ``lo`` like an operator drain's when the service is still
healthy at that moment (connections may still be finishing on the stopping server).

Flap damping is applied per check by :mod:`bgplb.health.state` (RFC 2439-like penalty that only
ever delays the return to UP, never a withdrawal); this module sees the damped health.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Seconds a VIP stays on lo after the withdrawal of a stop (see the module docstring).
SHUTDOWN_VIP_LINGER = 1.5


class Phase(Enum):
    IDLE = "idle"  # not announced, not on lo (by us) -- unless lingering after a drain
    ADDING = "adding"  # AddVip emitted, waiting for vip_added()
    ANNOUNCED = "announced"
    DRAINING = "draining"  # announced with GRACEFUL_SHUTDOWN until the deadline
    WITHDRAWING = "withdrawing"  # Withdraw emitted, waiting for withdrawn()


class ServiceStatus(Enum):
    """A service's announcement status, as shown by ``bgplb status`` and logged."""

    WITHDRAWN = "withdrawn"
    ANNOUNCED = "announced"
    DRAINING = "draining"
    DRAINED = "drained"  # drained by the operator and withdrawn


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One service as configured (what ``configure`` needs; attributes are opaque here)."""

    name: str
    vips: tuple[IPNetwork, ...]
    communities: tuple[int, ...] = ()
    large_communities: tuple[tuple[int, int, int], ...] = ()
    med: int | None = None
    as_path_prepend: int = 0
    manage_vip: bool = True
    drain_time: float = 10.0
    drain_vip_linger: float = 60.0  # seconds the VIP stays on lo after a drain's withdrawal

    def same_route(self, other: ServiceSpec) -> bool:
        """True when the announced attributes are the same."""
        return (
            self.communities == other.communities
            and self.large_communities == other.large_communities
            and self.med == other.med
            and self.as_path_prepend == other.as_path_prepend
        )


# -- actions (what the daemon must do, in order) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class AddVip:
    """Put ``vip`` on lo, then call ``vip_added``."""

    vip: IPNetwork
    service: str


@dataclass(frozen=True, slots=True)
class Announce:
    """Announce ``vip`` to every peer with the service's attributes (+ 65535:0 if draining)."""

    vip: IPNetwork
    spec: ServiceSpec
    graceful_shutdown: bool = False


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Withdraw ``vip`` from every peer; call ``withdrawn`` once written to every peer."""

    vip: IPNetwork
    service: str


@dataclass(frozen=True, slots=True)
class RemoveVip:
    """Remove ``vip`` from lo (only if the agent added it)."""

    vip: IPNetwork
    service: str


@dataclass(frozen=True, slots=True)
class ServiceChanged:
    """A service's status changed (one log line, with the reason)."""

    service: str
    old: ServiceStatus
    new: ServiceStatus
    reason: str


Action = AddVip | Announce | Withdraw | RemoveVip | ServiceChanged


@dataclass(slots=True)
class _Vip:
    vip: IPNetwork
    service: str
    phase: Phase = Phase.IDLE
    deadline: float | None = None  # DRAINING: when to withdraw
    configured: bool = True
    manage: bool = True  # manage_vip of the service that added it
    after_drain: bool = False  # the pending withdrawal ends an operator drain
    linger_until: float | None = None  # IDLE but kept on lo (after a drain/stop) until then
    withdrawn_at: float | None = None  # when the last withdrawal was confirmed


@dataclass(slots=True)
class _Service:
    spec: ServiceSpec
    healthy: bool = False
    drained: bool = False
    stopping: bool = False  # stop drain: the service itself is being stopped (not persisted)
    reason: str = "starting"
    status: ServiceStatus = ServiceStatus.WITHDRAWN


@dataclass(slots=True)
class AgentState:
    """Desired announcements from health and drain state. See the module docstring."""

    services: dict[str, _Service] = field(default_factory=dict)
    vips: dict[IPNetwork, _Vip] = field(default_factory=dict)
    shutting_down: bool = False
    shutdown_drain_time: float = 30.0
    shutdown_vip_linger: float = SHUTDOWN_VIP_LINGER
    _actions: list[Action] = field(default_factory=list)
    _shutdown_deadline: float | None = None

    # -- inputs -----------------------------------------------------------------------------

    def configure(
        self, specs: Iterable[ServiceSpec], now: float, drained: Iterable[str] = ()
    ) -> None:
        """Set (or change, on reload) the configured services; only differences take effect.

        New services start unhealthy (nothing is announced before checks pass). ``drained``
        marks services drained at start (the persisted drain state)."""
        new = {s.name: s for s in specs}
        for name in set(self.services) - set(new):
            del self.services[name]
        for name, spec in new.items():
            svc = self.services.get(name)
            if svc is None:
                self.services[name] = _Service(spec)
            elif svc.spec != spec:
                old = svc.spec
                svc.spec = spec
                if not old.same_route(spec):
                    for v in self._vips_of(name):
                        if v.phase in (Phase.ANNOUNCED, Phase.DRAINING):
                            self._emit(Announce(v.vip, spec, v.phase is Phase.DRAINING))
        for name in drained:
            if name in self.services:
                self.services[name].drained = True
        wanted = {vip: name for name, spec in new.items() for vip in spec.vips}
        for vip, v in self.vips.items():
            if vip not in wanted:
                v.configured = False
            else:
                v.configured, v.service = True, wanted[vip]
                if v.phase is Phase.IDLE and v.linger_until is None:
                    v.manage = new[v.service].manage_vip
        for vip, name in wanted.items():
            if vip not in self.vips:
                self.vips[vip] = _Vip(vip, name, manage=new[name].manage_vip)
        self._update(now, "configuration")

    def set_health(self, service: str, healthy: bool, now: float, reason: str = "") -> None:
        svc = self.services.get(service)
        if svc is None or svc.healthy == healthy:
            return
        svc.healthy = healthy
        svc.reason = reason or ("healthy" if healthy else "unhealthy")
        self._update(now, svc.reason)

    def set_stopping(self, service: str, stopping: bool, now: float, reason: str = "") -> None:
        """Stop drain (see the module docstring): the service is being stopped (True: drain,
        then withdraw) or the stop is over (False). Unknown services are ignored.

        When a stop ends in a failure, call :meth:`set_health` (False) *before* this, so the
        end of the drain does not announce again for a moment."""
        svc = self.services.get(service)
        if svc is None or svc.stopping == stopping:
            return
        svc.stopping = stopping
        svc.reason = reason or ("service stopping" if stopping else "service stop over")
        self._update(now, svc.reason)

    def drain(self, service: str, now: float) -> None:
        """Operator drain: GRACEFUL_SHUTDOWN for drain_time, then withdraw. KeyError if unknown."""
        svc = self.services[service]
        if not svc.drained:
            svc.drained = True
            svc.reason = "drain requested"
            self._update(now, svc.reason)

    def undrain(self, service: str, now: float) -> None:
        svc = self.services[service]
        if svc.drained:
            svc.drained = False
            svc.reason = "undrain requested"
            self._update(now, svc.reason)

    def shutdown(self, now: float, drain_time: float | None = None) -> None:
        """Stop: drain every announced VIP (at most ``drain_time``), then withdraw everything."""
        self.shutting_down = True
        if drain_time is not None:
            self.shutdown_drain_time = drain_time
        self._shutdown_deadline = now + self.shutdown_drain_time
        for svc in self.services.values():
            svc.reason = "agent stopping"
        self._update(now, "agent stopping")

    def vip_added(self, vip: IPNetwork, now: float) -> None:
        """The daemon put ``vip`` on lo (or found it there): announce it if still wanted."""
        v = self.vips.get(vip)
        if v is None or v.phase is not Phase.ADDING:
            return
        if self._wanted(v):
            v.phase = Phase.ANNOUNCED
            self._emit(Announce(v.vip, self.services[v.service].spec))
        else:
            v.phase = Phase.IDLE
            self._emit(RemoveVip(v.vip, v.service))
        self._update(now, "")

    def withdrawn(self, vips: Iterable[IPNetwork], now: float) -> None:
        """The withdrawal of ``vips`` was written to every established peer."""
        for vip in vips:
            v = self.vips.get(vip)
            if v is None or v.phase is not Phase.WITHDRAWING:
                continue
            if self._wanted(v):  # healthy again meanwhile: the VIP is still on lo
                v.phase = Phase.ANNOUNCED
                self._emit(Announce(v.vip, self.services[v.service].spec))
            else:
                v.phase, v.withdrawn_at = Phase.IDLE, now
                linger = self.services[v.service].spec.drain_vip_linger if v.configured else 0.0
                if not self._manages(v):
                    pass
                elif v.after_drain and self._operator_drain(v) and linger > 0:
                    v.linger_until = now + linger  # pinned connections may still arrive
                elif self.shutting_down and self._drains(v) and self.shutdown_vip_linger > 0:
                    v.linger_until = now + self.shutdown_vip_linger  # in-flight packets
                else:
                    self._emit(RemoveVip(v.vip, v.service))
            v.after_drain = False
        self._update(now, "")

    def handle_timer(self, now: float) -> None:
        for v in self.vips.values():
            if v.phase is Phase.DRAINING and v.deadline is not None and v.deadline <= now:
                self._start_withdraw(v)
        self._update(now, "drain time over")  # also ends the lingers that are over

    # -- outputs ----------------------------------------------------------------------------

    def actions(self) -> list[Action]:
        """The steps to carry out, in order (and forget them)."""
        out, self._actions = self._actions, []
        return out

    def get_timer(self) -> float | None:
        deadlines = [
            v.deadline
            for v in self.vips.values()
            if v.phase is Phase.DRAINING and v.deadline is not None
        ]
        deadlines += [v.linger_until for v in self.vips.values() if v.linger_until is not None]
        return min(deadlines) if deadlines else None

    def status(self, service: str) -> ServiceStatus:
        return self.services[service].status

    def phases(self, service: str) -> dict[str, Phase]:
        return {str(v.vip): v.phase for v in self._vips_of(service)}

    def lingering(self, service: str) -> dict[str, float]:
        """VIPs withdrawn after a drain and still on lo: VIP -> when they are removed."""
        return {
            str(v.vip): v.linger_until for v in self._vips_of(service) if v.linger_until is not None
        }

    def drained(self) -> list[str]:
        return sorted(n for n, s in self.services.items() if s.drained)

    @property
    def idle(self) -> bool:
        """Nothing announced, nothing in flight, nothing lingering on lo (shutdown is complete
        when this is true)."""
        return all(v.phase is Phase.IDLE and v.linger_until is None for v in self.vips.values())

    # -- the rules ----------------------------------------------------------------------------

    def _emit(self, action: Action) -> None:
        self._actions.append(action)

    def _vips_of(self, service: str) -> list[_Vip]:
        return [v for v in self.vips.values() if v.service == service]

    def _manages(self, v: _Vip) -> bool:
        return v.manage

    def _wanted(self, v: _Vip) -> bool:
        svc = self.services.get(v.service)
        return (
            v.configured
            and svc is not None
            and svc.healthy
            and not svc.drained
            and not svc.stopping
            and not self.shutting_down
        )

    def _drains(self, v: _Vip) -> bool:
        """Not wanted only because of a drain or a stop (so GRACEFUL_SHUTDOWN first)."""
        svc = self.services.get(v.service)
        return (
            v.configured
            and svc is not None
            and svc.healthy
            and (svc.drained or svc.stopping or self.shutting_down)
        )

    def _operator_drain(self, v: _Vip) -> bool:
        """Not wanted only because the operator drained the service (``bgplb drain``) or the
        service itself is stopping (stop drain), not because the agent stops."""
        svc = self.services.get(v.service)
        return (
            self._drains(v)
            and svc is not None
            and (svc.drained or svc.stopping)
            and not self.shutting_down
        )

    def _drain_deadline(self, v: _Vip, now: float) -> float:
        deadline = now + self.services[v.service].spec.drain_time
        if self.shutting_down and self._shutdown_deadline is not None:
            deadline = min(deadline, self._shutdown_deadline)
        return deadline

    def _start_withdraw(self, v: _Vip) -> None:
        v.phase, v.deadline = Phase.WITHDRAWING, None
        v.after_drain = self._operator_drain(v)
        self._emit(Withdraw(v.vip, v.service))

    def _update(self, now: float, reason: str) -> None:
        for v in list(self.vips.values()):
            wanted = self._wanted(v)
            if v.linger_until is not None:  # IDLE, still on lo after a drain
                if wanted:  # undrained: announce again, the VIP is on lo
                    v.phase, v.linger_until = Phase.ANNOUNCED, None
                    self._emit(Announce(v.vip, self.services[v.service].spec))
                    continue
                if v.configured:
                    if self.shutting_down:  # bounded: at most the stop's linger after withdrawal
                        since = v.withdrawn_at if v.withdrawn_at is not None else now
                        limit = since + self.shutdown_vip_linger
                    else:
                        limit = now + self.services[v.service].spec.drain_vip_linger  # reloaded
                    v.linger_until = min(v.linger_until, limit)
                    if v.linger_until > now:
                        continue
                v.linger_until = None
                self._emit(RemoveVip(v.vip, v.service))
                if not v.configured:
                    del self.vips[v.vip]
            elif v.phase is Phase.IDLE:
                if wanted:
                    if self._manages(v):
                        v.phase = Phase.ADDING
                        self._emit(AddVip(v.vip, v.service))
                    else:
                        v.phase = Phase.ANNOUNCED
                        self._emit(Announce(v.vip, self.services[v.service].spec))
                elif not v.configured:
                    del self.vips[v.vip]
            elif v.phase is Phase.ANNOUNCED and not wanted:
                deadline = self._drain_deadline(v, now) if self._drains(v) else now
                if deadline > now:
                    v.phase, v.deadline = Phase.DRAINING, deadline
                    self._emit(Announce(v.vip, self.services[v.service].spec, True))
                else:
                    self._start_withdraw(v)
            elif v.phase is Phase.DRAINING:
                if wanted:  # undrained
                    v.phase, v.deadline = Phase.ANNOUNCED, None
                    self._emit(Announce(v.vip, self.services[v.service].spec))
                elif not self._drains(v):  # unhealthy or removed: no more waiting
                    self._start_withdraw(v)
                else:
                    v.deadline = min(v.deadline or now, self._drain_deadline(v, now))
                    if v.deadline <= now:
                        self._start_withdraw(v)
        self._statuses(reason)

    def _statuses(self, reason: str) -> None:
        for name, svc in self.services.items():
            phases = {v.phase for v in self._vips_of(name)}
            if Phase.DRAINING in phases:
                new = ServiceStatus.DRAINING
            elif Phase.ANNOUNCED in phases:
                new = ServiceStatus.ANNOUNCED
            elif svc.drained:
                new = ServiceStatus.DRAINED
            else:
                new = ServiceStatus.WITHDRAWN
            if new is not svc.status:
                old, svc.status = svc.status, new
                self._emit(ServiceChanged(name, old, new, svc.reason or reason))
