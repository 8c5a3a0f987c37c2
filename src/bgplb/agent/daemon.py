"""`bgplb agent`: the asyncio daemon around the pure :class:`~bgplb.agent.state.AgentState`.

It owns the inputs and carries out the state's steps:

- health: a :class:`~bgplb.health.CheckRunner` runs every check in its own task; a check
  transition is handed to the state at once (event-driven withdrawal, no polling);
- VIPs: ``AddVip``/``RemoveVip`` run one at a time in a worker (pyroute2 in a thread); only VIPs
  the agent added (persisted in the state file) are ever removed;
- BGP: one :class:`~bgplb.io.bgp.BgpPeer` per ``[[peers]]``, each independent; ``Announce`` and
  ``Withdraw`` go to every session's Adj-RIB-Out, and a withdrawal is confirmed to the state only
  once every Established peer's transport buffer is empty (bounded wait);
- BFD: a peer with ``bfd = {...}`` holds a :class:`~bgplb.io.bgp_bfd.BfdLink` from the moment it
  is configured; an Up -> Down transition stops its BGP session at once (Cease / BFD Down, RFC
  9384) and starts it again after ``BFD_RESTART_DELAY`` (RFC 5882; see docs/bfd.md); a reload
  that changes only a peer's ``bfd`` re-requests BFD and leaves the BGP session alone;
- signals: SIGTERM/SIGINT drain, withdraw, remove VIPs, Cease (Administrative Shutdown) and exit
  0; SIGHUP reloads the config applying only the difference; SIGUSR1 exits *keeping* the routes
  (no withdrawal, no NOTIFICATION, VIPs left on lo): with Graceful Restart (RFC 4724) the routers
  keep forwarding until the agent is back and sends End-of-RIB;
- the control socket (status, drain, undrain), Prometheus metrics and sd_notify readiness.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from bgplb.agent import peers as bgp
from bgplb.agent import statefile
from bgplb.agent.logs import setup as setup_logging
from bgplb.agent.metrics import AgentMetrics
from bgplb.agent.state import (
    AddVip,
    AgentState,
    Announce,
    IPNetwork,
    Phase,
    RemoveVip,
    ServiceChanged,
    ServiceSpec,
    ServiceStatus,
    Withdraw,
)
from bgplb.bgp.attributes import PathAttributes
from bgplb.bgp.errors import CeaseSubcode
from bgplb.bgp.fsm import State as BgpState
from bgplb.bgp.prefix import Prefix
from bgplb.bgp.session import Event, Session, SessionDown, SessionEstablished
from bgplb.config import AgentConfig, ConfigError, PeerConfig, load_agent_config
from bgplb.control.metrics import BfdCollector, MetricsServer
from bgplb.control.socket import ControlError, ControlServer
from bgplb.health import CheckEvent, CheckRunner, ProbeResult, ServiceHealth
from bgplb.io.bfd import BfdService
from bgplb.io.bgp import BgpPeer
from bgplb.io.bgp_bfd import BfdLink, diag_text, tear_down
from bgplb.linux import addresses

log = logging.getLogger("bgplb.agent")

CheckKey = tuple[str, int]  # (service, index of the check)
#: After BFD tore a session down, start it again this much later (a short Idle hold, §8.1.1).
BFD_RESTART_DELAY = 1.0


def specs(config: AgentConfig) -> list[ServiceSpec]:
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
        )
        for s in config.services
    ]


def sd_notify(message: str) -> None:
    """Send a datagram to systemd's $NOTIFY_SOCKET (no-op when not under systemd)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.debug("sd_notify(%s) failed: %s", message, exc)


class AgentDaemon:
    """Runs the agent until stopped; ``await run()`` returns the exit code."""

    def __init__(
        self,
        config_path: str | Path,
        *,
        state_path: str | Path = statefile.DEFAULT_PATH,
        config: AgentConfig | None = None,
    ) -> None:
        self.config_path = Path(config_path)
        self.config = config or load_agent_config(self.config_path)  # ConfigError: CLI prints it
        self.state_path = Path(state_path)
        self.state = AgentState(shutdown_drain_time=self.config.bgp.shutdown_drain_time)
        self.peers: dict[str, BgpPeer] = {}
        self.peer_configs: dict[str, PeerConfig] = {}
        self.announced: dict[Prefix, PathAttributes] = {}
        self.health: dict[str, ServiceHealth] = {}
        self.saved = statefile.SavedState()
        self.started = time.time()
        self.metrics_server = MetricsServer()
        self.metrics = AgentMetrics(self.metrics_server)
        BfdCollector(
            self.metrics_server,
            "agent",
            lambda: [(k, link.status()) for k, link in list(self.bfd_links.items())],
        )
        self.control: ControlServer | None = None
        self.runner = CheckRunner(self._on_check, on_result=self._on_result, jitter=0.1)
        self.router_id: ipaddress.IPv4Address | None = None
        self._vip_queue: asyncio.Queue[AddVip | RemoveVip] = asyncio.Queue()
        self._stop: asyncio.Future[str] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.restarting = False
        self.bfd: BfdService | None = None  # created when the first peer asks for BFD
        self.bfd_links: dict[str, BfdLink] = {}

    # -- life cycle --------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        cfg = self.config
        self.router_id = cfg.bgp.router_id or await asyncio.to_thread(bgp.default_router_id)
        if self.router_id is None:
            log.error(
                "no router_id configured and no IPv4 address on this host: set [bgp].router_id"
            )
            return 1
        self.saved = statefile.load(self.state_path)
        self.restarting = cfg.bgp.graceful_restart and self.saved.keeps_routes(
            cfg.bgp.graceful_restart_time
        )
        self.saved.clean_exit, self.saved.restart_at = False, None
        statefile.save(self.state_path, self.saved)
        try:
            await self._start_control(cfg)
        except (ControlError, OSError) as exc:
            log.error("control socket: %s", exc)
            return 1
        self._spawn(self._vip_worker())
        self.state.configure(specs(cfg), loop.time(), drained=self.saved.drained & self._names())
        await self._sync_checks(cfg)
        self._rebuild_health(cfg, loop.time(), "starting")
        self.runner.start()
        self._pump()
        await self._forget_unconfigured_vips()
        for peer_cfg in cfg.peers:
            self._add_peer(peer_cfg, start=False)
        if self.restarting:
            log.info(
                "restarting with routes kept at the routers: waiting for first health verdicts"
            )
            await self._settle(max(1.0, cfg.bgp.graceful_restart_time / 2))
        for peer in self.peers.values():
            peer.start()
        for sig, mode in (
            (signal.SIGTERM, "stop"),
            (signal.SIGINT, "stop"),
            (signal.SIGUSR1, "restart"),
        ):
            loop.add_signal_handler(sig, self.request_stop, mode)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload()))
        log.info(
            "agent started: AS %s, router id %s, %d peer(s), %d service(s)%s",
            cfg.bgp.asn,
            self.router_id,
            len(self.peers),
            len(cfg.services),
            " (graceful restart)" if self.restarting else "",
        )
        sd_notify("READY=1\nSTATUS=running")
        mode = await self._stop
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if mode == "restart":
            await self._exit_keeping_routes()
        else:
            await self._shutdown()
        return 0

    def request_stop(self, mode: str = "stop") -> None:
        """``stop``: drain, withdraw, remove VIPs; ``restart``: exit keeping the routes."""
        if self._stop is not None and not self._stop.done():
            log.info("%s requested", "stop" if mode == "stop" else "restart keeping routes")
            self._stop.set_result(mode)

    async def _shutdown(self) -> None:
        cfg = self.config
        sd_notify("STOPPING=1\nSTATUS=draining")
        loop = asyncio.get_running_loop()
        self.state.shutdown(loop.time(), cfg.bgp.shutdown_drain_time)
        self._pump()
        deadline = loop.time() + cfg.bgp.shutdown_drain_time + 10.0
        while not (self.state.idle and self._vip_queue.empty()) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self.state.idle:
            await asyncio.wait_for(self._vip_queue.join(), 10.0)
        await self.runner.stop()
        await asyncio.gather(
            *(p.stop("bgplb agent shutting down") for p in self.peers.values()),
            return_exceptions=True,
        )
        self._close_bfd()
        self.saved.clean_exit = True
        statefile.save(self.state_path, self.saved)
        await self._close()
        log.info("agent stopped: everything withdrawn")

    async def _exit_keeping_routes(self) -> None:
        sd_notify("STOPPING=1\nSTATUS=restarting, routes kept")
        await self.runner.stop()
        for peer in self.peers.values():
            peer.close_silently()  # no NOTIFICATION: GR helpers keep our routes
        # BFD AdminDown, not silence: the routers must not see a failure (RFC 5882 §3.2), or
        # they would drop our routes at once instead of keeping them for Graceful Restart.
        self._close_bfd()
        self.saved.clean_exit, self.saved.restart_at = False, time.time()
        statefile.save(self.state_path, self.saved)
        await self._close()
        log.info("agent exited keeping routes and VIPs (graceful restart)")

    async def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.control is not None:
            await self.control.close()
        await asyncio.to_thread(self.metrics_server.close)

    async def _settle(self, timeout: float) -> None:
        """Until every check has a verdict (UP, or `fall` failures) and no VIP is being added."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            verdicts = all(
                s.machine.up or s.machine.failures >= s.machine.fall for s in self.runner.statuses()
            )
            adding = any(v.phase is Phase.ADDING for v in self.state.vips.values())
            if verdicts and not adding:
                return
            await asyncio.sleep(0.05)
        log.warning("no health verdict for every check after %.1fs: starting sessions", timeout)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _names(self) -> set[str]:
        return {s.name for s in self.config.services}

    # -- control and metrics -----------------------------------------------------------------

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

        return build_status(self)

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

    # -- health ------------------------------------------------------------------------------

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

    # -- carrying out the state's steps ------------------------------------------------------

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
        """VIPs a previous run added that are no longer configured: remove them now."""
        configured = {str(v) for s in self.config.services for v in s.vips}
        for text in sorted(self.saved.owned_vips - configured):
            with contextlib.suppress(OSError):
                await asyncio.to_thread(addresses.remove_vip, text)
            log.info("VIP %s (added by a previous run, no longer configured) removed from lo", text)
            self.saved.owned_vips.discard(text)
        statefile.save(self.state_path, self.saved)

    # -- peers -------------------------------------------------------------------------------

    def _add_peer(self, peer_cfg: PeerConfig, start: bool = True) -> None:
        assert self.router_id is not None
        key = str(peer_cfg.address)
        session = Session(
            bgp.session_config(self.config.bgp, peer_cfg, self.router_id, self.restarting)
        )
        for prefix, attrs in self.announced.items():
            session.announce(prefix, attrs)
        peer = BgpPeer(
            session, bgp.transport(peer_cfg), self._on_peer_event, name=key, next_hops=bgp.next_hops
        )
        self.peers[key] = peer
        self.peer_configs[key] = peer_cfg
        self.metrics.peer_up.labels(key).set(0)
        if peer_cfg.bfd is not None:
            self._request_bfd(key, peer_cfg)
        if start:
            peer.start()

    def _request_bfd(self, key: str, peer_cfg: PeerConfig) -> None:
        assert peer_cfg.bfd is not None
        if self.bfd is None:
            self.bfd = BfdService()
        try:
            self.bfd_links[key] = BfdLink(
                self.bfd,
                key,
                local=str(peer_cfg.local_address) if peer_cfg.local_address else None,
                multihop=(peer_cfg.multihop or 1) > 1,
                interval_ms=peer_cfg.bfd.interval_ms,
                multiplier=peer_cfg.bfd.multiplier,
                on_down=lambda diag: self._on_bfd_down(key, diag),
            )
        except (OSError, ValueError) as exc:  # e.g. port 3784 taken by another BFD daemon
            log.error("peer %s: BFD not started: %s (BGP runs without it)", key, exc)

    def _rerequest_bfd(self, key: str, peer_cfg: PeerConfig) -> None:
        """Reload changed only the peer's `bfd`: the new request is made before the old one is
        released, so a shared BFD session is not interrupted (its timers change with a Poll
        Sequence, RFC 5880 §6.5) and the BGP session is not touched. Without `bfd` any more, the
        release sends AdminDown: the router does not take it as a failure (RFC 5882 §3.2)."""
        old = self.bfd_links.pop(key, None)
        self.peer_configs[key] = peer_cfg
        log.info("peer %s: BFD settings changed to %s (BGP session kept)", key, peer_cfg.bfd)
        if peer_cfg.bfd is not None:
            self._request_bfd(key, peer_cfg)
        if old is not None:
            if (link := self.bfd_links.get(key)) is not None:  # keep the failure history
                link.downs, link.last_down_diag = old.downs, old.last_down_diag
                link.last_down_at = old.last_down_at
            old.release()

    def _on_bfd_down(self, key: str, diag: int) -> None:
        peer = self.peers.get(key)
        if peer is None or not tear_down(peer):
            return
        log.warning("peer %s: BFD down (%s): BGP session closed", key, diag_text(diag))
        self.metrics.bfd_teardowns.labels(key).inc()
        asyncio.get_running_loop().call_later(BFD_RESTART_DELAY, self._restart_peer, key, peer)

    def _restart_peer(self, key: str, peer: BgpPeer) -> None:
        if self.peers.get(key) is peer and peer.session.state is BgpState.IDLE:
            peer.start()

    def _close_bfd(self) -> None:
        self.bfd_links.clear()
        if self.bfd is not None:
            self.bfd.close()

    async def _remove_peer(self, key: str, message: str) -> None:
        peer = self.peers.pop(key)
        self.peer_configs.pop(key, None)
        await peer.stop(message, CeaseSubcode.PEER_DECONFIGURED)
        link = self.bfd_links.pop(key, None)
        if link is not None:
            link.release()
        self.metrics.peer_up.remove(key)

    def _on_peer_event(self, peer: BgpPeer, event: Event) -> None:
        if isinstance(event, SessionEstablished):
            self.metrics.peer_up.labels(peer.name).set(1)
        elif isinstance(event, SessionDown):
            self.metrics.peer_up.labels(peer.name).set(0)
            if event.was_established:
                self.metrics.session_flaps.labels(peer.name).inc()

    # -- reload ------------------------------------------------------------------------------

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


async def run_agent(config_path: str | Path, state_path: str | Path) -> int:
    daemon = AgentDaemon(config_path, state_path=state_path)
    return await daemon.run()
