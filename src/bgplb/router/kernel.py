"""The router's kernel side: the FIB it installs, and the connected subnets it resolves with.

One :class:`KernelSide` per router daemon, handed the RIB, the counters and the RIB task's queue
(typed, in its constructor); it owns the FIB and the pinning runtime. After each batch of
events the FIB entries of the VIPs the RIB marked dirty — only those — go to the FIB (a
:class:`bgplb.linux.fibapi.Fib`, :class:`~bgplb.linux.fib.KernelFib` unless one is handed to
``_open_fib``), through connection pinning (:mod:`bgplb.router.pinning_runtime`). A VIP the
kernel refuses is retried with backoff (``_fib_next_deadline`` tells the RIB task when to
wake); the kernel's nexthop/route notifications are watched and whatever of ours someone
deletes is re-installed.

Restart (RFC 4724 §4.1 selection deferral): at start the objects a previous run left (``[fib]
keep_on_exit``, or kill -9) are adopted, not removed. While deferring, what the RIB learns is
added to them but nothing adopted is deleted or shrunk, until every gateway of an adopted group
has had its peer send End-of-RIB for the family of the VIPs it serves (``_fib_end_of_rib``) —
a peer without the Graceful Restart capability, which need not send one, counts
``NO_EOR_SETTLE`` seconds after its session is Established — or ``[fib] startup_defer`` runs
out; then a full reconcile removes what is no longer wanted. A gateway whose peer has spoken
leaves at once the adopted VIPs it did not announce again (``Fib.release_gateways``). On exit
ours are removed (unless ``keep_on_exit``). Interface addresses are polled so next hops resolve
against the current connected subnets (RFC 4271 §5.1.3, §9.1.2.1).

Fast path of a server's loss (``_fib_peer_lost``): when an Established session ends and the
RIB is about to purge the peer's paths (no Graceful Restart retention, RFC 4724 §4.2: hold
timer expiry, BFD Down, a NOTIFICATION, an administrative reset, or a peer without the
capability), the gateways only that peer provides are first taken out of every installed
group that keeps another member (``Fib.drop_gateways``: one in-place replace per group, one
batch), before any per-VIP work; the RIB's per-VIP results then find the kernel as they want
it. A peer whose paths are kept stale is not touched: they stay in the kernel by design.
With fail-open (:mod:`bgplb.router.failopen`), a peer lost to a failure is decided at the start
of the next sync, once the batch's other failures are in: only if fail-open kept none of its
paths do its gateways leave the groups that way.
The same holds for an UPDATE withdrawing every path of its peer, and groups all of whose VIPs
move from one entry to another together are replaced in place before the per-VIP work
(`bgplb.router.fastpath`, `_fib_before_update`, `_fib_regroup`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bgplb.bgp.families import AFI, Family
from bgplb.bgp.prefix import Prefix
from bgplb.bgp.session import Event
from bgplb.config.router import FibConfig
from bgplb.linux.fibapi import Fib
from bgplb.router import fastpath
from bgplb.router import pinning_runtime as router_pinning
from bgplb.router.entry import Counters, PeerEntry
from bgplb.router.pinning_runtime import RouterPinning
from bgplb.router.rib import Connected, PeerState, Rib

log = logging.getLogger("bgplb.router")

CONNECTED_POLL = 2.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SYNC_INLINE = 256


def _bucket(entry: tuple[Any, ...]) -> str:
    """The `nexthops` label of a VIP's FIB entry: its number of next hops, "8+" from 8 on."""
    return str(len(entry)) if len(entry) < 8 else "8+"


#: After a sync of at least this many VIPs, what it built is long-lived: ``gc.freeze()`` takes it
#: out of the cyclic collector's full collections (objects are still freed by refcount).
FREEZE_AFTER = 10_000
"""Dirty VIPs turned into FIB entries on the event loop; more go to a worker thread."""

DROP_INLINE = 20_000
"""Routes of a lost peer above which its fast-path request goes from a worker thread."""

NO_EOR_SETTLE = 2.0
"""Seconds after a peer without the Graceful Restart capability is Established before its
gateways stop holding the startup deferral (it sends no End-of-RIB to wait for)."""


def read_connected(netns: str | None = None) -> list[Connected]:
    """Directly connected subnets of this namespace: every interface address except loopback,
    host routes (/32, /128) and IPv6 link-local ones."""
    from pyroute2 import IPRoute, NetNS

    out: list[Connected] = []
    ipr = NetNS(netns) if netns else IPRoute()
    try:
        loopbacks = {link["index"] for link in ipr.get_links() if link["flags"] & 0x8}
        for msg in ipr.get_addr():
            if msg["index"] in loopbacks:
                continue
            address = msg.get_attr("IFA_ADDRESS")
            if address is None:
                continue
            iface = ipaddress.ip_interface(f"{address}/{msg['prefixlen']}")
            if iface.network.prefixlen == iface.max_prefixlen or iface.ip.is_link_local:
                continue
            out.append(Connected(iface.network, msg["index"], iface.ip))
    finally:
        ipr.close()
    return out


def _gateways_of(state: PeerState) -> set[IPAddress]:
    """Next hops a peer's paths can install (a `bgplb.router.rib.PeerState`): its session
    address unless it may use third-party next hops, else those of its paths (one walk over
    them: such peers are rare)."""
    if not state.third_party_next_hop:
        return {state.source} if state.source is not None and state.paths else set()
    seen: set[int] = set()
    hops: set[IPAddress] = set()
    for path in state.paths.values():
        if id(path) not in seen:  # paths are interned: a few objects for many prefixes
            seen.add(id(path))
            if path.next_hop is not None:
                hops.add(path.next_hop)
    return hops


def default_router_id(connected: Iterable[Connected]) -> ipaddress.IPv4Address:
    for c in connected:
        if isinstance(c.local, ipaddress.IPv4Address):
            return c.local
    return ipaddress.IPv4Address("192.0.2.255")


@dataclass(slots=True)
class StartupDeferral:
    """Adopted gateways waiting for End-of-RIB: (gateway address, IP version of the VIPs)."""

    pending: set[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]
    deadline: float
    adopted_vips: int = 0
    # gateways whose peer is Established without the Graceful Restart capability: since when
    settling: dict[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int], float] = field(
        default_factory=dict
    )
    # gateways that stopped holding the deferral since the last sync: the FIB drops from
    # their adopted VIPs whatever their peer did not announce again
    released: set[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]] = field(
        default_factory=set
    )

    def discard(self, key: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]) -> None:
        if key in self.pending:
            self.pending.discard(key)
            self.settling.pop(key, None)
            self.released.add(key)

    def done(self, now: float) -> bool:
        return not self.pending or now >= self.deadline

    def next_deadline(self) -> float:
        return min([self.deadline, *(t + NO_EOR_SETTLE for t in self.settling.values())])

    def release(self, peers: Mapping[str, PeerState], now: float) -> None:
        """RFC 4724 §4.1 waits for End-of-RIB only from peers that advertised the Graceful
        Restart capability (others may never send one: GoBGP without graceful restart does
        not). The gateway of such a peer stops holding the deferral NO_EOR_SETTLE seconds
        after its session is seen Established, time for its initial UPDATEs."""
        for key in list(self.pending):
            state = peers.get(str(key[0]))
            if state is None or not state.established or state.restart_time is not None:
                self.settling.pop(key, None)
                continue
            since = self.settling.setdefault(key, now)
            if now - since >= NO_EOR_SETTLE:
                self.discard(key)


#: What the kernel side does with an exception of its kernel watcher: (task, exception).
OnError = Callable[[str, BaseException], None]


class KernelSide:
    """Opens, watches, syncs and closes the FIB; polls the connected subnets.

    `config`: ``[fib]`` (a reload keeps it); `rib`: read for the FIB entries of dirty VIPs;
    `counters`: FIB applies and errors; `queue`: the RIB task's, woken for connected-subnet
    changes and pinning deadlines; `on_error`: the supervisor's handler of an exception of the
    kernel watcher (default: raised)."""

    def __init__(
        self,
        config: FibConfig,
        rib: Rib,
        counters: Counters,
        queue: asyncio.Queue[tuple[PeerEntry | None, Event | str]],
        on_error: OnError | None = None,
    ) -> None:
        self.fib_config = config
        self.rib = rib
        self.counters = counters
        self.queue = queue
        self.on_error = on_error
        self.fib: Fib | None = None  # while open ([fib] install)
        self.pinning: RouterPinning | None = None  # while the FIB is open, with [fib] pinning
        self.installed: dict[Prefix, tuple[Any, ...]] = {}
        self.nexthop_counts: Counter[str] = Counter()  # installed VIPs by next hops (_bucket)
        self.connected: list[Connected] = []
        self._fib_defer: StartupDeferral | None = None
        self._fib_resync_task: asyncio.Task[None] | None = None
        self._fib_resync_again = False
        self._fib_drops_pending: list[asyncio.Future[Any]] = []  # fast-path requests in threads
        self._fib_with_paths: dict[str, int] = {}  # paths per peer at the last sync
        # fail-open: fast-path removals of failed peers, decided at the end of the batch
        self._fib_failed: list[tuple[str, Any, set[IPAddress], int]] = []
        # moves (id(old entry), id(new entry)) done before the RIB's work since the last sync
        self._fib_premoved: dict[tuple[int, int], tuple[Any, Any]] = {}

    def _fib_now(self) -> float:
        """The clock of deferral and retries: the event loop's (tests replace it)."""
        return asyncio.get_running_loop().time()

    def _open_fib(self, fib: Fib | None = None) -> None:
        """Open the FIB (`fib`, or a KernelFib from the config), adopt what a previous run
        left, start watching."""
        f = self.fib_config
        if fib is None:
            from bgplb.linux.fib import KernelFib

            fib = KernelFib(
                table=f.table,
                # consistent: the Maglev table is in nftables; the main table keeps a
                # resilient group for what it does not match (ICMP, other protocols)
                group="resilient" if f.group == "consistent" else f.group,
                buckets=f.buckets,
                idle_timer=f.idle_timer,
                unbalanced_timer=f.unbalanced_timer,
            )
        self.fib = fib
        fib.start_watching()
        loop = asyncio.get_running_loop()
        self._fib_defer = None
        adopted = fib.adopt()
        if adopted.vips:
            self._fib_defer = StartupDeferral(
                set(adopted.gateways), self._fib_now() + f.startup_defer, adopted.vips
            )
            log.info(
                "fib: adopted %d VIP(s) in %d group(s) of a previous run; deferring deletions "
                "until End-of-RIB from %d gateway(s) or %.0fs",
                adopted.vips,
                adopted.groups,
                len(adopted.gateways),
                f.startup_defer,
            )
        else:
            ops = fib.finish_deferral(self._fib_now()).ops  # nothing to keep: remove debris
            if ops:
                log.info("fib: removed %d stale kernel object(s) of ours", len(ops))
        loop.add_reader(fib.watch_fileno(), self._watch)
        self.pinning = router_pinning.open(f)

    def _watch(self) -> None:
        try:
            self._kernel_events()
        except Exception as exc:
            if self.on_error is None:
                raise
            self.on_error("kernel-watch", exc)

    def _kernel_events(self) -> None:
        """The watch socket is readable: read it here (cheap, no lock); if something of ours
        changed or notifications were lost, re-read the kernel and re-install in a worker
        thread (a dump of every route: never on the event loop). Coalesced: one at a time."""
        if self.fib is None:
            return
        try:
            needed = self.fib.poll_events()
        except Exception as exc:
            self.counters.fib_errors += 1
            log.error("fib: reading kernel notifications failed: %s", exc)
            return
        if not needed:
            return
        self._fib_resync_again = True
        if self._fib_resync_task is None:
            loop = asyncio.get_running_loop()
            self._fib_resync_task = loop.create_task(self._fib_resync(), name="fib-resync")

    async def _fib_resync(self) -> None:
        try:
            while self._fib_resync_again and self.fib is not None:
                self._fib_resync_again = False
                fib = self.fib
                ops = await asyncio.to_thread(fib.resync, self._fib_now())
                if ops:
                    log.warning("fib: re-installed %d object(s) someone else removed", len(ops))
        except Exception as exc:
            self.counters.fib_errors += 1
            log.error("fib: re-install failed: %s", exc)
        finally:
            self._fib_resync_task = None

    def _close_fib(self) -> None:
        if self.fib is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.fib.watch_fileno())
        if self._fib_resync_task is not None:
            self._fib_resync_task.cancel()  # its thread finishes under the FIB lock
        # waits for a sync still running in its thread, then cleans up
        router_pinning.close(self.pinning, keep=self.fib_config.keep_on_exit)
        self.pinning = None
        try:
            if self.fib_config.keep_on_exit:
                log.info("fib: keeping our routes in the kernel (keep_on_exit)")
            else:
                ops = self.fib.cleanup()
                log.info(
                    "fib: removed %d object(s) of ours (%s)",
                    len(ops),
                    self.fib.status(self._fib_now()),
                )
        except Exception as exc:
            log.error("fib: cleanup failed: %s", exc)
        finally:
            self.fib.close()
            self.fib = None
            self._fib_defer = None

    # -- fast path of a server's loss (hook for the RIB task) -----------------------------------
    def _fib_peer_lost(self, key: str, graceful: bool, failure: str | None = None) -> None:
        """Call before `Rib.peer_down(key, graceful=graceful, failure=failure)`: if the RIB
        will purge the peer's paths (all of them: no family kept stale for Graceful Restart),
        remove its gateways from the kernel's groups at once. A gateway another peer also
        announces (the same next hop) stays. Never raises: the normal path follows anyway.
        A failure with fail-open on is decided at the start of the next sync, once the batch's
        other failures are in (`_fib_failed_drops`): fail-open may keep its paths."""
        state = self.rib.peers.get(key)
        if self.fib is None or state is None or not state.paths:
            return
        hold = float(state.restart_time or 0)
        if self.rib.max_stale_time is not None:
            hold = min(hold, self.rib.max_stale_time)
        if graceful and hold > 0 and state.gr_families:
            return  # RFC 4724 §4.2 helper: (some of) its paths stay, stale, on purpose
        if failure is not None and self.rib.fail_open is not None:
            entry = (key, state, _gateways_of(state), len(state.paths))
            self._fib_failed = [*self._fib_failed, entry]
            return
        self._fib_drop(key, state, _gateways_of(state), "lost", len(state.paths))

    def _fib_failed_drops(self) -> None:
        """Fail-open: the failed peers of the batch that kept nothing (not in the RIB any
        more) leave the groups now, as `_fib_peer_lost` does for other losses."""
        failed, self._fib_failed = self._fib_failed, []
        for key, state, gateways, routes in failed:
            if key not in self.rib.peers:
                self._fib_drop(key, state, gateways, "lost", routes)

    def _fib_emptied(self) -> None:
        """At the start of a sync, before the per-VIP work: an Established peer that had
        paths at the last sync and has none now withdrew all of them (a server stopping, its
        agent withdrawing every VIP): its gateway leaves the groups at once, as in
        `_fib_peer_lost`. O(peers). Peers using third-party next hops are left to the normal
        path (their next hops are not known once their paths are gone)."""
        peers = self.rib.peers
        had = self._fib_with_paths
        self._fib_with_paths = {k: len(s.paths) for k, s in peers.items() if s.paths}
        for key, count in had.items():
            state = peers.get(key)
            if (
                key not in self._fib_with_paths
                and state is not None
                and state.established
                and not state.third_party_next_hop
            ):
                gateways = {state.source} if state.source is not None else set()
                self._fib_drop(key, state, gateways, "withdrew everything", count)

    def _fib_before_update(self, key: str, announced: Any, attributes: Any, withdrawn: Any) -> None:
        """Call before `Rib.update` of an UPDATE from peer `key` (the RIB task): the
        group-level fast paths that can be told from the UPDATE alone go to the kernel first —
        a peer withdrawing everything (its gateway leaves the groups, as in `_fib_peer_lost`),
        a peer announcing every VIP of a group (`_fib_announcing`). Never raises."""
        if self.fib is None:
            return
        if withdrawn:
            state = self.rib.peers.get(key)
            if state is not None and fastpath.withdraws_everything(state, announced, withdrawn):
                if self._fib_with_paths.get(key):  # `_fib_emptied` has nothing more to do
                    self._fib_with_paths = {
                        k: n for k, n in self._fib_with_paths.items() if k != key
                    }
                gateways = {state.source} if state.source is not None else set()
                self._fib_drop(key, state, gateways, "withdraws everything", len(state.paths))
        elif self.pinning is None:
            try:
                self._fib_announcing(key, announced, attributes)
            except Exception as exc:  # the normal path does the same, per VIP
                self.counters.fib_errors += 1
                log.error("fib: early group-level move for %s failed: %s", key, exc)

    def _fib_announcing(self, key: str, announced: Any, attributes: Any) -> None:
        """Peer `key` announces VIPs that all have the same entry now and none from it (a
        server back announcing its VIPs again): if they are every VIP of their group, the group
        is replaced in place with the entry they will have before the RIB's per-VIP work (the
        sync that follows skips that move). Above REGROUP_INLINE VIPs from a worker thread."""
        move = fastpath.announce_move(self.rib, self.installed, key, announced, attributes)
        if move is None:
            return
        done = {**self._fib_premoved, (id(move[1]), id(move[2])): (move[1], move[2])}
        now = self._fib_now()
        if move[3] > fastpath.REGROUP_INLINE:  # the kernel re-sends every route: a thread
            with contextlib.suppress(RuntimeError):  # no running loop: inline below
                loop = asyncio.get_running_loop()
                before = self._fib_drops_pending
                job = loop.run_in_executor(None, self._fib_regroup, [move], now)
                self._fib_drops_pending = [*before, job]
                self._fib_premoved = done  # if it does nothing, the plan does it all
                return  # the next sync waits for it (_sync_fib)
        if self._fib_regroup([move], now, wait=False):
            self._fib_premoved = done

    def _fib_withdrawing(self, key: str, announced: Any, withdrawn: Any) -> None:
        """`_fib_before_update` of an UPDATE that withdraws (tests call it alone)."""
        self._fib_before_update(key, announced, None, withdrawn)

    def _fib_drop(
        self, key: str, state: PeerState, gateways: set[IPAddress], why: str, routes: int = 0
    ) -> None:
        """`gateways` of peer `key` (its `PeerState`, which had `routes` paths) leave the
        kernel's groups, except those another peer also announces. Never raises. The kernel
        re-sends every route of a replaced group within the request (its answer comes after
        them: ~10 ms for 10,000 routes, 65-160 ms for 100,000, seconds on a loaded machine):
        above DROP_INLINE routes the request goes from a worker thread, not to block the event
        loop that long; the forwarding changes at the start of the request either way."""
        fib = self.fib
        installed = self.installed
        if state.paths and not any(len(installed.get(vip, ())) > 1 for vip in state.paths):
            return  # its VIPs have no other next hop (or are not installed): nothing to keep
        others: set[IPAddress] = set()
        for other in self.rib.peers.values():  # who else provides these gateways
            if other is state:
                continue
            if other.third_party_next_hop:
                others |= _gateways_of(other)
            elif other.source in gateways and other.paths:
                others.add(other.source)
        gone = gateways - others
        drop = getattr(fib, "drop_gateways", None)
        if not gone or drop is None:  # drop None: a FIB without the fast path
            return
        now = self._fib_now()

        def run() -> None:
            started = time.perf_counter()
            try:
                result = drop(gone, now)
            except Exception as exc:  # the normal path does the same, per VIP
                self.counters.fib_errors += 1
                log.error("fib: fast removal of %s failed: %s", key, exc)
                return
            if result is None:
                log.debug("fib: %s: FIB busy, no fast removal", key)
            elif result.ops:
                log.info(
                    "fib: %s %s: %s removed from %d group(s) at once (%.1f ms)",
                    key,
                    why,
                    ", ".join(sorted(str(a) for a in gone)),
                    sum(1 for op in result.ops if type(op).__name__ == "ReplaceGroup"),
                    (time.perf_counter() - started) * 1000,
                )

        if routes > DROP_INLINE:
            with contextlib.suppress(RuntimeError):  # no running loop: inline below
                loop = asyncio.get_running_loop()
                before = self._fib_drops_pending
                self._fib_drops_pending = [*before, loop.run_in_executor(None, run)]
                return  # the next sync waits for it (_sync_fib)
        run()

    # -- restart deferral and retries (hooks for the RIB task) ----------------------------------
    def _fib_end_of_rib(self, peer_address: IPAddress, family: Family) -> None:
        """A peer sent End-of-RIB for `family`: its gateways stop holding the deferral. The
        peer's own address and every next hop it announced for that family count."""
        defer = self._fib_defer
        if defer is None or not defer.pending:
            return
        version = 4 if family[0] == AFI.IPV4 else 6
        defer.discard((peer_address, version))
        state = self.rib.peers.get(str(peer_address))
        if state is not None and defer.pending:
            for prefix, path in state.paths.items():
                if path.next_hop is not None and prefix.network.version == version:
                    defer.discard((path.next_hop, version))
        if not defer.pending:  # the RIB task's _sync_fib right after this event ends it
            log.info("fib: End-of-RIB from every adopted gateway: deferral ends")

    def _fib_next_deadline(self) -> float | None:
        """When the RIB task must run `_sync_fib` even without events: the next retry of a
        failed VIP, or the end of the startup deferral."""
        if self.fib is None:
            return None
        deadlines = [self.fib.next_retry()]
        if self._fib_defer is not None:
            deadlines.append(self._fib_defer.next_deadline())
        present = [d for d in deadlines if d is not None]
        return min(present) if present else None

    async def _sync_fib(self) -> None:
        """Hand the FIB the entries of the VIPs the RIB marked dirty (and nothing else), retry
        the failed VIPs that are due, end the deferral when it is over."""
        self._fib_failed_drops()  # failed peers fail-open did not keep: group-level first
        self._fib_emptied()  # a peer that withdrew everything: group-level first
        if self._fib_drops_pending:  # fast-path requests in worker threads go first
            pending, self._fib_drops_pending = self._fib_drops_pending, []
            await asyncio.gather(*pending, return_exceptions=True)
        dirty = self.rib.take_dirty()
        # a drained server's pins: drain_linger
        due = self.pinning is not None and router_pinning.due(self.pinning, self._fib_now())
        now = self._fib_now()
        premoved, self._fib_premoved = self._fib_premoved, {}
        if len(dirty) > SYNC_INLINE:
            # ~2 us per VIP: 100k dirty VIPs would hold the event loop too long. The RIB
            # is only changed by the RIB task, which waits here; status only reads it.
            regroup = self.pinning is None and self.fib is not None

            def changes_of() -> dict[Prefix, tuple[Any, ...]]:
                moves: dict[tuple[int, int], list[Any]] | None = {} if regroup else None
                out = self._fib_changes(dirty, moves)
                if moves and premoved:  # done before the RIB's work: not twice
                    moves = {k: m for k, m in moves.items() if k not in premoved}
                if moves:
                    self._fib_regroup(moves.values(), now)  # group-level first, here
                return out

            changes = await asyncio.to_thread(changes_of)
        elif len(dirty) >= fastpath.REGROUP_MIN and self.fib is not None and self.pinning is None:
            moves: dict[tuple[int, int], list[Any]] = {}
            changes = self._fib_changes(dirty, moves)
            moves = {k: m for k, m in moves.items() if k not in premoved}
            if any(m[3] >= fastpath.REGROUP_MIN for m in moves.values()):
                await asyncio.to_thread(self._fib_regroup, list(moves.values()), now)
        else:
            changes = self._fib_changes(dirty)
        fib = self.fib
        if fib is None:
            return
        now = self._fib_now()  # after the work above: deadlines are judged by the present
        defer = self._fib_defer
        if defer is not None:
            defer.release(self.rib.peers, now)
        finish = defer is not None and defer.done(now)
        release: set[tuple[IPAddress, int]] = set()
        if defer is not None and not finish:
            release, defer.released = defer.released, set()
        retry = fib.next_retry()
        idle = not changes and not due and not finish and not release
        if idle and (retry is None or retry > now):
            return
        if finish:
            self._fib_defer = None
            assert defer is not None
            log.info(
                "fib: deferral over (%s): removing what the peers did not announce again",
                "every adopted gateway sent End-of-RIB" if not defer.pending else "startup_defer",
            )
        result = None
        inline = (
            changes
            and len(changes) <= fastpath.UPDATE_INLINE
            and not finish
            and not release
            and self.pinning is None
            and (retry is None or retry > now)
        )
        try:
            if inline:
                result = self._fib_update_inline(changes, now)
            if result is None:
                result = await router_pinning.sync(
                    fib, self.pinning, changes, now, self._established, self._wake, finish, release
                )
        except Exception as exc:
            self.counters.fib_errors += 1
            log.error("fib: apply failed: %s", exc)
            return
        self.counters.fib_applies += 1
        self.counters.last_apply_ops = len(result.ops)
        if len(changes) >= FREEZE_AFTER:
            gc.freeze()
        if result.failed:
            self.counters.fib_errors += 1
            shown = ", ".join(
                f"{net} ({e.op}: {e.message}, attempt {e.attempts})"
                for net, e in list(result.failed.items())[:5]
            )
            more = f" (+{len(result.failed) - 5} more)" if len(result.failed) > 5 else ""
            log.warning("fib: kernel refused %d VIP(s): %s%s", len(result.failed), shown, more)
        log.debug("fib: %d operation(s)", len(result.ops))

    def _established(self) -> set[str]:
        return {k for k, s in self.rib.peers.items() if s.established}

    def _wake(self) -> None:
        self.queue.put_nowait((None, "pinning"))

    def _fib_update_inline(self, changes: Mapping[Prefix, tuple[Any, ...]], now: float) -> Any:
        """`fastpath.update_inline`: a small sync's FIB update on the loop, or None."""
        return fastpath.update_inline(self.fib, changes, now)

    def _fib_changes(
        self, dirty: Iterable[Prefix], moves: dict[tuple[int, int], list[Any]] | None = None
    ) -> dict[Prefix, tuple[Any, ...]]:
        """The new FIB entry of each dirty VIP whose entry changed (() when gone), kept in
        `self.installed`. With `moves`: the VIPs that change from one installed entry to
        another are counted there by (id(old entry), id(new entry)) — the RIB shares one
        entry object per path set — as [a VIP, old entry, new entry, count]."""
        changes: dict[Prefix, tuple[Any, ...]] = {}
        counts = self.nexthop_counts
        installed = self.installed
        fib_entry = self.rib.fib_entry
        for vip in dirty:
            entry = fib_entry(vip)
            old = installed.get(vip)
            if entry:
                if old != entry:
                    installed[vip] = entry
                    changes[vip] = entry
                    counts[_bucket(entry)] += 1
                    if old:
                        counts[_bucket(old)] -= 1
                        if moves is not None:
                            fastpath.count_move(moves, vip, old, entry)
            elif installed.pop(vip, None) is not None:
                changes[vip] = ()
                if old:
                    counts[_bucket(old)] -= 1
        return changes

    def _fib_regroup(self, moves: Iterable[list[Any]], now: float, wait: bool = True) -> bool:
        """Blocking (the sync's worker thread, before the FIB update of the same VIPs; or the
        loop with `wait` False): a group all of whose VIPs make one same move is replaced in
        place at once (`fastpath.regroup`). True if a group was replaced. Never raises."""
        return fastpath.regroup(self.fib, moves, now, wait, self.counters)

    def fib_status(self) -> dict[str, Any]:
        """FIB counters for `bgplb status` (no kernel read, no walk over VIPs)."""
        fib = self.fib
        if fib is None:
            return {"installed": False}
        try:
            now = self._fib_now()
        except RuntimeError:  # no running loop
            now = time.monotonic()
        out: dict[str, Any] = dict(fib.status(now))
        defer = self._fib_defer
        out["deferring"] = defer is not None
        if defer is not None:
            out["defer_remaining"] = round(max(0.0, defer.deadline - now), 1)
            out["defer_pending_gateways"] = len(defer.pending)
            out["defer_adopted_vips"] = defer.adopted_vips
        next_retry = fib.next_retry()
        out["next_retry_in"] = None if next_retry is None else round(max(0.0, next_retry - now), 3)
        return out

    async def _connected_task(self) -> None:
        while True:
            await asyncio.sleep(CONNECTED_POLL)
            try:
                connected = await asyncio.to_thread(read_connected)
            except Exception as exc:  # netlink trouble: keep the last view
                log.debug("reading interface addresses failed: %s", exc)
                continue
            if connected != self.connected:
                self.connected = connected
                self.rib.set_connected(connected)
                self.queue.put_nowait((None, "connected"))
