"""What `KernelFib` and `MemoryFib` share: the calls that go straight to their `FibEngine`.

A FIB built on this class provides the engine (`self.engine`), the lock its changes run under
(`self._lock`), interface names -> indexes (`_link`), the time used when no `now` is given
(`_now`) and, through `_engine()`, the engine as it must be used for a change (the kernel FIB
makes it read the kernel first when nothing watches it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from bgplb.linux import diff as d
from bgplb.linux.fibapi import (
    Adopted,
    ChangesInput,
    FibEngine,
    FibResult,
    PathSpec,
    VipError,
    resolve_changes,
)


class EngineFib:
    engine: FibEngine
    _lock: threading.RLock

    def _link(self, name: str) -> int:
        raise NotImplementedError

    def _now(self, now: float | None) -> float:
        raise NotImplementedError

    def _engine(self) -> FibEngine:
        """The engine for a change (under self._lock)."""
        return self.engine

    def update(self, changes: ChangesInput, now: float | None = None) -> FibResult:
        """Incremental: give each VIP of `changes` its paths (none: remove it); no other VIP is
        looked at except those that must move off a group they share with a changed one.
        A refused operation fails only its VIPs (`FibResult.failed`, `failures()`), retried by
        `retry_due()`. Raises ValueError for bad input."""
        resolved = resolve_changes(changes, self._link, self.engine.interned, self.engine.networks)
        with self._lock:
            return self._engine().update(resolved, self._now(now))

    def update_nowait(self, changes: ChangesInput, now: float | None = None) -> FibResult | None:
        """`update()` without waiting: None if the FIB is busy (an apply or a resync in
        another thread), nothing done. For a few VIPs from an event loop: their change goes
        to the kernel at once, without a hop to a worker thread."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self.update(changes, now)
        finally:
            self._lock.release()

    def drop_gateways(
        self, gateways: Iterable[d.IPAddress], now: float | None = None
    ) -> FibResult | None:
        """Fast path of a server's loss: remove these gateway addresses from every group that
        keeps another member, in place, in one batch (`FibEngine.drop_gateways`). Returns None
        without waiting if the FIB is busy (an apply or a resync in another thread): the
        caller's normal per-VIP path then does the same, later."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._engine().drop_gateways(gateways, self._now(now))
        finally:
            self._lock.release()

    def regroup(
        self,
        moves: Iterable[tuple[Any, Iterable[PathSpec], Iterable[PathSpec], int]],
        now: float | None = None,
        wait: bool = True,
    ) -> FibResult | None:
        """Fast path of many VIPs changing the same way: `moves` are (one of the VIPs, its old
        paths, its new paths, how many VIPs make that move); every group whose VIPs all make
        the same move is replaced in place at once (`FibEngine.regroup`). Blocking; call it just
        before `update()` of the same VIPs, which then has nothing left to do for them. With
        `wait` False: None at once if the FIB is busy (an apply or a resync in a thread)."""
        if not wait and not self._lock.acquire(blocking=False):
            return None
        try:
            return self._regroup(moves, now)
        finally:
            if not wait:
                self._lock.release()

    def _regroup(
        self,
        moves: Iterable[tuple[Any, Iterable[PathSpec], Iterable[PathSpec], int]],
        now: float | None,
    ) -> FibResult:
        sets: list[tuple[d.PathSet, d.PathSet, int]] = []
        pool = self.engine.interned
        for vip, old, new, count in moves:
            # the VIP's network gives the family checks: one VIP stands for the others
            (old_set,) = resolve_changes({vip: old}, self._link, pool).values()
            (new_set,) = resolve_changes({vip: new}, self._link, pool).values()
            sets.append((old_set, new_set, count))
        with self._lock:
            return self._engine().regroup(sets, self._now(now))

    def apply(self, desired: ChangesInput) -> list[d.Op]:
        """Whole table: make the kernel hold exactly `desired` (for our protocol); idempotent.
        Returns the operations executed; refused VIPs are in `failures()`."""
        resolved = resolve_changes(desired, self._link)
        with self._lock:
            return self._engine().replace_all(resolved, self._now(None)).ops

    def retry_due(self, now: float | None = None) -> FibResult:
        """Plan again the failed VIPs whose retry time has come."""
        with self._lock:
            return self._engine().retry_due(self._now(now))

    def next_retry(self) -> float | None:
        return self.engine.next_retry()

    def failures(self) -> dict[d.IPNetwork, VipError]:
        with self._lock:
            return dict(self.engine.failed)

    def adopt(self) -> Adopted:
        """At start: read the kernel and keep every object of ours. Until finish_deferral(),
        the adopted VIPs keep their adopted paths united with what update() gives them
        (nothing adopted is deleted or shrunk: RFC 4724 §4.1 selection deferral)."""
        with self._lock:
            return self.engine.adopt()

    @property
    def deferring(self) -> bool:
        return self.engine.adopted is not None

    def release_gateways(
        self, gateways: Iterable[tuple[d.IPAddress, int]], now: float | None = None
    ) -> FibResult:
        """While deferring: the peers of these adopted gateways (address, IP version of the
        VIPs they serve) sent End-of-RIB; what they did not announce again goes now."""
        with self._lock:
            return self.engine.release(gateways, self._now(now))

    def finish_deferral(self, now: float | None = None) -> FibResult:
        """End of the deferral: read the kernel, remove whatever is no longer wanted."""
        with self._lock:
            return self.engine.finish_deferral(self._now(now))
