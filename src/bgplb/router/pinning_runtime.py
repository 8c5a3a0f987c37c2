"""The router daemon's connection pinning: the pure planner (:mod:`bgplb.router.pinning`) and
the kernel (:mod:`bgplb.linux.pinroutes`, :mod:`bgplb.linux.nftables`) tied to the RIB task.

Hooks called by the router's kernel side (:class:`bgplb.router.kernel.KernelSide`, which owns
the :class:`RouterPinning`; kept small on purpose):

* :func:`open` after the FIB is opened — adopts the slots our nftables table still holds (a
  restart after kill -9 or ``keep_on_exit``) so conntrack marks keep meaning the same server;
* :func:`sync` instead of a bare ``fib.update`` — pins for servers that join are installed before
  the groups change, pins of servers that left are removed after; draining servers leave the
  groups; a linger deadline wakes the RIB task through its queue. Only the changed VIPs go to
  the FIB (a VIP's group depends on its own entry only); the planner itself
  (:mod:`bgplb.router.pinning`) still walks every VIP per sync, O(VIPs), and this module keeps
  its input, ``{VIP network: FIB entry}``, up to date with one dict update per changed VIP;
* :func:`close` after the FIB cleanup — rules, tables and the nftables table go (unless
  ``keep_on_exit``);
* :func:`status` for ``bgplb status`` — per server: slot, mark, table, VIPs, state, and the
  number of conntrack entries carrying its mark.

``[fib] group = "consistent"`` runs here too, with or without ``pinning``: it needs the same
per-server slots (mark, ``ip rule``, table). Each sync also derives the Maglev tables
(:mod:`bgplb.router.consistent`) from the groups — the RIB's entries without pinning, the
planner's groups with it — and the pins, and hands them to the kernel with the pins
(:mod:`bgplb.linux.nft_consistent`); :func:`consistent_status` shows a VIP's table. Without
pinning no conntrack rule is written and no pin lingers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Collection, Mapping
from typing import Any

from bgplb.config.router import FibConfig
from bgplb.linux.fibapi import Fib, FibResult
from bgplb.router.consistent import ConsistentTables, with_held
from bgplb.router.pinning import GroupMember, Pin, PinPlan, Planner, Server, merge_pins
from bgplb.router.status import ConsistentStatus, PinnedServer, PinningStatus

log = logging.getLogger("bgplb.router")

#: After a restart, adopted slots wait this long for their server to announce again.
ADOPT_GRACE = 120.0

#: What the FIB's startup deferral holds: (a token that changes when it lets paths go, {VIP
#: network: [(address, ifindex, weight)]}), or None when it holds nothing.
Held = tuple[object, dict[Any, list[tuple[Any, int, int]]]] | None


def held_paths(fib: Any) -> Held:
    """The adopted paths the FIB (its engine: `adopted`, `released`, `gone`) still holds while
    it defers after a restart; None when it does not defer."""
    engine: Any = getattr(fib, "engine", None)
    adopted = getattr(engine, "adopted", None)
    if not adopted:
        return None
    released = set(engine.released)
    gone = frozenset(engine.gone)
    memo: dict[int, list[tuple[Any, int, int]]] = {}  # adopted path sets are shared objects
    out: dict[Any, list[tuple[Any, int, int]]] = {}
    for net, pset in list(adopted.items()):
        key = id(pset) * 2 + (net.version == 6)
        paths = memo.get(key)
        if paths is None:
            paths = memo[key] = [
                (gw.address, gw.oif, w)
                for gw, w in pset
                if (gw.address, net.version) not in released and gw.address not in gone
            ]
        if paths:
            out[net] = paths
    return (id(adopted), len(released), gone), out


def _rib_only(groups: Mapping[Any, tuple[GroupMember, ...]], entries: Mapping[Any, Any]) -> Any:
    """`groups` without the members the RIB's entries lack (held adopted paths stay out of
    what the FIB is told to want); a VIP left with none gets its entry's members."""
    out: dict[Any, tuple[GroupMember, ...]] = {}
    for net, members in groups.items():
        entry = entries.get(net, ())
        have = {(n.address, n.ifindex) for n in entry}
        keep = tuple(m for m in members if (m.address, m.ifindex) in have)
        if not keep:
            keep = tuple(GroupMember(n.address, n.ifindex, n.weight) for n in entry)
        if keep:
            out[net] = keep
    return out


class RouterPinning:
    """The planner and the kernel's pins (`kernel`: KernelPins by default; tests pass an
    in-memory one with the same methods)."""

    def __init__(self, fib: FibConfig, netns: str | None = None, kernel: Any = None) -> None:
        self.config = fib
        # consistent mode without pinning uses the slots (mark + table per server) only: no
        # conntrack, a draining server keeps its place (weight 1) and no pin lingers
        self.pinning = bool(fib.pinning)
        self.consistent = (
            ConsistentTables(fib.consistent_table_size, fib.consistent_seed)
            if fib.group == "consistent"
            else None
        )
        linger = fib.drain_linger if self.pinning else 0.0
        self.planner = Planner(fib.mark_mask, fib.pin_tables, linger)
        if kernel is None:
            from bgplb.linux.pinroutes import KernelPins

            kernel = KernelPins(
                fib.mark_mask, fib.pin_tables, fib.pin_rule_priority, fib.nft_table, netns
            )
            kernel.pinning = self.pinning
        self.kernel = kernel
        self._be_liberal = False
        self.pins: tuple[Pin, ...] = ()
        self.entries: dict[Any, Any] = {}  # VIP network -> FIB entry, kept by sync()
        self.plan: PinPlan | None = None
        self.refused: set[str] = set()
        self.errors = 0
        self._timer: asyncio.TimerHandle | None = None
        # sync() runs in a worker thread that task cancellation does not stop: close() waits
        # for it, and a sync after close() does nothing (it would re-create what close removed)
        self._lock = threading.Lock()
        self.closed = False

    def adopt(self) -> None:
        marks = self.kernel.installed_marks()
        if marks:
            until = asyncio.get_running_loop().time() + ADOPT_GRACE
            self.planner.adopt({Server(m.gateway, m.oif): m.slot for m in marks}, until)
            log.info("pinning: adopted %d server slot(s) from the kernel", len(marks))

    def sync(
        self,
        changes: Mapping[Any, Any],
        established: set[str],
        now: float,
        apply_fib: Callable[[dict[Any, list[tuple[Any, int, int]]]], FibResult],
        held: Callable[[], Held] | None = None,
    ) -> FibResult:
        """Blocking (run it in a thread): plan, pins before, groups, pins after. `changes`:
        {VIP prefix: FIB entry, () when gone} of the VIPs that changed since the last sync.
        `held` (consistent group): the paths the FIB's startup deferral still holds."""
        with self._lock:
            if self.closed:
                return FibResult()
            return self._sync(changes, established, now, apply_fib, held)

    def _sync(
        self,
        changes: Mapping[Any, Any],
        established: set[str],
        now: float,
        apply_fib: Callable[[dict[Any, list[tuple[Any, int, int]]]], FibResult],
        held: Callable[[], Held] | None = None,
    ) -> FibResult:
        from bgplb.linux.pinroutes import PinSpec

        for vip, entry in changes.items():
            if entry:
                self.entries[vip.network] = entry
            else:
                self.entries.pop(vip.network, None)
        # consistent group after a restart: while the FIB defers, the tables (and the pins
        # they need) also count the adopted paths not re-learned yet; the nexthop groups
        # handed to the FIB stay the RIB's (the FIB unites them with the adopted ones itself)
        hold = held() if held is not None and self.consistent is not None else None
        entries = with_held(self.entries, hold[1]) if hold else self.entries
        plan = self.planner.plan(entries, established, now)
        self.plan = plan
        for reason in set(plan.refused) - self.refused:
            log.warning("pinning: %s", reason)
        # a VIP's group depends on its own entry, and on refusals (no free slot) that may
        # concern any VIP: when those change, every VIP is handed over again
        nets = (
            set(self.entries) | {vip.network for vip in changes}
            if set(plan.refused) != self.refused
            else {vip.network for vip in changes}
        )
        self.refused = set(plan.refused)

        def specs(pins: tuple[Pin, ...]) -> list[PinSpec]:
            return [
                PinSpec(p.server.address, p.server.ifindex, p.mark, p.slot, p.table, p.vips)
                for p in pins
            ]

        groups: Mapping[Any, tuple[GroupMember, ...]] = plan.groups
        if not self.pinning:  # consistent mode alone: the groups are the entries
            groups = {
                net: tuple(GroupMember(n.address, n.ifindex, n.weight) for n in entry)
                for net, entry in entries.items()
            }
        fib_groups = groups if not hold else _rib_only(groups, self.entries)
        if self.pinning:
            self.kernel.ensure_src_valid_mark()
        before = plan.before(self.pins)
        if self.consistent is None:
            self.kernel.apply(specs(before))
        else:
            # the tables only use marks of pins present both before and after the change
            chains = consistent_chains(self.consistent.plan(groups, plan.pins))
            self.kernel.apply(specs(before), chains)
            if self.pinning and not self._be_liberal:
                self.kernel.ensure_be_liberal()
                self._be_liberal = True
        self.pins = before
        result = apply_fib(
            {
                net: [(m.address, m.ifindex, m.weight) for m in fib_groups.get(net, ())]
                for net in nets
            }
        )
        if self.consistent is None:
            self.kernel.apply(specs(plan.pins))
        elif hold and held is not None and ((after := held()) is None or after[0] != hold[0]):
            # the FIB released adopted paths (End-of-RIB) or ended its deferral in this very
            # step: plan again without what it let go
            entries = with_held(self.entries, after[1]) if after else self.entries
            plan = self.planner.plan(entries, established, now)
            self.plan = plan
            if self.pinning:
                groups = plan.groups
            else:
                groups = {
                    net: tuple(GroupMember(n.address, n.ifindex, n.weight) for n in entry)
                    for net, entry in entries.items()
                }
            chains = consistent_chains(self.consistent.plan(groups, plan.pins))
            self.kernel.apply(specs(merge_pins(self.pins, plan.pins)), chains)
            self.kernel.apply(specs(plan.pins), chains)
        else:
            self.kernel.apply(specs(plan.pins), chains)
        self.pins = plan.pins
        return result

    def consistent_status(self, vip: Any) -> ConsistentStatus | None:
        """The Maglev table of `vip` (a network), None when it has none."""
        return None if self.consistent is None else self.consistent.status(vip)

    def arm(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        """Wake the RIB task at the next linger deadline."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.planner.next_deadline()
        if deadline is not None:
            self._timer = loop.call_at(deadline + 0.01, wake)

    def close(self, keep: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            self.closed = True
        try:
            if keep:
                log.info("pinning: keeping rules, tables and nftables table (keep_on_exit)")
            else:
                self.kernel.cleanup()
        finally:
            self.kernel.close()

    def status(self, counts: bool = True) -> PinningStatus:
        conns: dict[int, int] = {}
        counts = counts and self.pinning
        if counts:
            try:
                conns = self.kernel.counts()
            except Exception as exc:  # status must not break on conntrack trouble
                log.debug("conntrack counts: %s", exc)
        states = self.plan.states if self.plan is not None else {}
        servers = tuple(
            PinnedServer(
                address=str(p.server.address),
                ifindex=p.server.ifindex,
                slot=p.slot,
                mark=f"{p.mark:#x}",
                table=p.table,
                vips={str(v): str(states.get((p.server, v), "pinned")) for v in p.vips},
                connections=conns.get(p.mark, 0) if counts else None,
            )
            for p in self.pins
        )
        known = {p.mark for p in self.pins}
        return PinningStatus(
            enabled=self.pinning,
            mark_mask=f"{self.config.mark_mask:#x}",
            tables=tuple(self.config.pin_tables),
            drain_linger=self.config.drain_linger,
            servers=servers,
            orphan_connections=sum(v for k, v in conns.items() if k not in known),
            refused=tuple(sorted(self.refused)),
            errors=self.errors,
        )


# -- hooks for the kernel side (bgplb.router.kernel) --------------------------------------------


def consistent_chains(plans: Any) -> list[Any]:
    from bgplb.linux.nft_consistent import ConsistentChain

    return [ConsistentChain(p.name, p.version, p.table.seed, p.marks, p.vips) for p in plans]


def open(config: FibConfig) -> RouterPinning | None:
    """After the FIB is opened: the pinning owner if ``[fib] pinning`` or ``group =
    "consistent"`` (which needs the per-server slots too), else None."""
    if not config.pinning and config.group != "consistent":
        return None
    pinning = RouterPinning(config)
    try:
        pinning.adopt()
    except Exception as exc:
        log.error("pinning: reading our nftables table failed: %s", exc)
    return pinning


async def sync(
    fib: Fib,
    pinning: RouterPinning | None,
    changes: Mapping[Any, Any],
    now: float,
    established: Callable[[], set[str]],
    wake: Callable[[], None],
    finish_deferral: bool = False,
    release: Collection[tuple[Any, int]] = (),
) -> FibResult:
    """Instead of ``fib.update(changes)``: with pinning, plan and apply pins around it
    (`established`: the peers whose session is up; `wake`: asks the RIB task for a sync at the
    next linger deadline). Then drop from adopted VIPs the gateways in `release` (their peers
    sent End-of-RIB), retry the failed VIPs that are due and, with `finish_deferral`, end the
    startup deferral (a full reconcile). Runs the FIB in a worker thread."""

    def fib_step(fib_changes: dict[Any, list[tuple[Any, int, int]]]) -> FibResult:
        result = fib.update(fib_changes, now) if fib_changes else FibResult()
        for extra in (
            fib.release_gateways(release, now) if release else FibResult(),
            fib.retry_due(now),
            fib.finish_deferral(now) if finish_deferral else FibResult(),
        ):
            result.ops.extend(extra.ops)
            result.failed.update(extra.failed)
        return result

    if pinning is None:
        # in the worker thread: O(changes) of Python; the FIB takes Prefix keys as they are
        def plain() -> FibResult:
            return fib_step(
                {
                    vip: [(n.address, n.ifindex, n.weight) for n in entry]
                    for vip, entry in changes.items()
                }
            )

        return await asyncio.to_thread(plain)
    loop = asyncio.get_running_loop()
    try:
        result: FibResult = await asyncio.to_thread(
            pinning.sync, changes, established(), now, fib_step, lambda: held_paths(fib)
        )
    finally:
        pinning.arm(loop, wake)
    return result


def due(pinning: RouterPinning | None, now: float) -> bool:
    """True when a linger deadline has passed (the RIB task must sync even if nothing changed)."""
    if pinning is None:
        return False
    deadline = pinning.planner.next_deadline()
    return deadline is not None and deadline <= now


def close(pinning: RouterPinning | None, keep: bool) -> None:
    if pinning is None:
        return
    try:
        pinning.close(keep=keep)
    except Exception as exc:
        log.error("pinning: cleanup failed: %s", exc)


def consistent_status(pinning: RouterPinning | None, vip: Any) -> ConsistentStatus | None:
    """The Maglev table of one VIP (a network), None outside the consistent group."""
    return None if pinning is None else pinning.consistent_status(vip)


def status(pinning: RouterPinning | None, counts: bool = True) -> PinningStatus:
    if pinning is None:
        return PinningStatus(enabled=False)
    return pinning.status(counts)
