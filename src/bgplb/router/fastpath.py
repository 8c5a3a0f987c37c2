"""Group-level fast paths of the router's FIB sync, beyond a server's loss
(docs/kernel.md, "Fast path of a server's loss").

Many VIPs often change the same way at once: a server's agent withdraws every VIP, or the server
comes back and announces them all again. Their kernel change is one in-place replace per nexthop
group, not one operation per VIP; these helpers find it before the per-VIP work (the RIB's, then
the FIB's planning) and hand it to the FIB (`Fib.regroup`, `Fib.drop_gateways`):

* `withdraws_everything`: an UPDATE withdrawing every path its peer has, announcing nothing;
* `announce_move`: an UPDATE announcing, from a new peer, VIPs that all have one FIB entry now
  (`Rib.entries_after_announce` tells the one they will have);
* `count_move`: while a sync computes its FIB entries, the VIPs moving from one entry to another
  together (the RIB shares one entry object per path set);
* `regroup`: the FIB's group-level move for those, logged; `update_inline`: a small sync's FIB
  update on the event loop, without waiting for a busy FIB.

The caller (bgplb.router.kernel) owns the state; nothing here blocks except `regroup` and
`update_inline` (FIB calls). Entries are tuples of the RIB's `FibNexthop` (address, ifindex,
weight).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable, Mapping
from typing import Any

log = logging.getLogger("bgplb.router")

REGROUP_MIN = 64
"""VIPs making one same move (old entry -> new entry) from which the group-level move is tried."""

REGROUP_INLINE = 1000
"""VIPs of an early group-level move up to which its request is made from the event loop: the
kernel re-sends every route of a replaced group within the request (5-75 ms for 10,000 routes
on a busy machine), so a bigger one goes from a worker thread, not to stall the loop; the
forwarding changes at the start of the request either way."""

UPDATE_INLINE = 8
"""Changed VIPs of a sync up to which the FIB update runs on the event loop (one group replace
or a few routes: well under a millisecond), not in a worker thread."""

Move = list[Any]  # [one of the VIPs, old entry, new entry, number of VIPs]
Moves = dict[tuple[int, int], Move]  # by (id(old entry), id(new entry))


def specs(entry: Iterable[Any]) -> list[tuple[Any, int, int]]:
    """A FIB entry as the FIB takes it: [(gateway, ifindex, weight)]."""
    return [(n.address, n.ifindex, n.weight) for n in entry]


def withdraws_everything(
    state: Any, announced: Collection[Any], withdrawn: Collection[Any]
) -> bool:
    """True if an UPDATE (`announced`, `withdrawn` prefixes) from the peer of `state` (a
    `bgplb.router.rib.PeerState`) withdraws every path it has and announces nothing. Peers using
    third-party next hops are left out (their gateways are those of their paths). O(withdrawn)
    dict lookups."""
    if (
        announced
        or state is None
        or not state.paths
        or not state.established
        or state.third_party_next_hop
        or len(withdrawn) < len(state.paths)
    ):
        return False
    paths = state.paths
    gone = set(withdrawn)  # an UPDATE may name a prefix twice
    if len(gone) < len(paths):
        return False
    return all(p in paths for p in gone) if len(gone) == len(paths) else paths.keys() <= gone


def announce_move(
    rib: Any, installed: Mapping[Any, Any], key: str, announced: Collection[Any], attributes: Any
) -> Move | None:
    """The move an UPDATE announcing `announced` from peer `key` makes its VIPs do, if they all
    have one same entry installed now and will all have one same other entry
    (`Rib.entries_after_announce`); else None. O(announced) dict lookups."""
    if len(announced) < REGROUP_MIN:
        return None
    found = rib.entries_after_announce(key, announced, attributes)
    if found is None:
        return None
    old, new = found
    if not old or not new or old == new:
        return None
    vips = set(announced)  # an UPDATE may name a prefix twice
    if not all(installed.get(v) is old for v in vips):
        return None  # some not installed with that entry (refused, failed, another state)
    return [next(iter(vips)), old, new, len(vips)]


def count_move(moves: Moves, vip: Any, old: Any, new: Any) -> None:
    """One VIP of a sync moves from entry `old` to entry `new`."""
    move = moves.get((id(old), id(new)))
    if move is None:
        moves[(id(old), id(new))] = [vip, old, new, 1]
    else:
        move[3] += 1


def regroup(fib: Any, moves: Iterable[Move], now: float, wait: bool, counters: Any) -> bool:
    """`Fib.regroup` for the moves made by at least REGROUP_MIN VIPs (blocking; with `wait`
    False, nothing if the FIB is busy). True if a group was replaced. Never raises: a failure
    is counted (`counters.fib_errors`) and logged, and the FIB update that follows does the
    same work per VIP."""
    call = getattr(fib, "regroup", None)
    big = [m for m in moves if m[3] >= REGROUP_MIN]
    if call is None or not big:
        return False
    started = time.perf_counter()
    try:
        result = call(
            [(vip, specs(old), specs(new), count) for vip, old, new, count in big], now, wait
        )
    except Exception as exc:
        counters.fib_errors += 1
        log.error("fib: group-level move failed: %s", exc)
        return False
    if result is None:
        log.debug("fib: FIB busy, no early group-level move")
        return False
    replaced = sum(1 for op in result.ops if type(op).__name__ == "ReplaceGroup")
    if result.ops:
        log.info(
            "fib: %d VIP(s) moved with %d group(s) replaced in place at once (%.1f ms)",
            sum(m[3] for m in big),
            replaced,
            (time.perf_counter() - started) * 1000,
        )
    return replaced > 0


def update_inline(fib: Any, changes: Mapping[Any, Iterable[Any]], now: float) -> Any:
    """A few VIPs' changes straight from the event loop (no hop to a worker thread: it costs
    0.05-3.5 ms on a busy machine, more than their plan): `Fib.update_nowait`, None if the FIB
    is busy or has no such call (the caller then goes through the thread). Raises what
    `Fib.update` raises."""
    nowait = getattr(fib, "update_nowait", None)
    if nowait is None:
        return None
    return nowait({vip: specs(e) for vip, e in changes.items()}, now)
