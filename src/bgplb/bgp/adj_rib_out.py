"""Adj-RIB-Out: what we want a peer to have, and what it already has (RFC 4271 §3.2, §9.2).

The owner sets the routes it wants advertised; the session asks for the difference since the
last `commit()`. A route the peer already has with the same attributes is never re-sent; a route
whose attributes changed is simply re-announced (an implicit withdrawal, §3.1); a withdrawal is
sent only for a prefix the peer actually has. `reset()` forgets what the peer has (the session
went down) and `resend_all()` re-sends everything (ROUTE-REFRESH, RFC 2918).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bgplb.bgp.attributes import PathAttributes
from bgplb.bgp.prefix import Prefix


class AdjRibOut:
    """Desired and sent routes for one peer. Pure bookkeeping, no encoding."""

    __slots__ = ("_desired", "_dirty", "_sent")

    def __init__(self) -> None:
        self._desired: dict[Prefix, PathAttributes] = {}
        self._sent: dict[Prefix, PathAttributes] = {}
        self._dirty: set[Prefix] = set()

    def set(self, prefix: Prefix, attributes: PathAttributes) -> None:
        """Want `prefix` advertised with `attributes`."""
        self._desired[prefix] = attributes
        if self._sent.get(prefix) == attributes:
            self._dirty.discard(prefix)
        else:
            self._dirty.add(prefix)

    def remove(self, prefix: Prefix) -> None:
        """Want `prefix` no longer advertised."""
        self._desired.pop(prefix, None)
        if prefix in self._sent:
            self._dirty.add(prefix)
        else:
            self._dirty.discard(prefix)

    def replace_all(self, routes: Mapping[Prefix, PathAttributes]) -> None:
        """Make the desired set exactly `routes`."""
        for prefix in [p for p in self._desired if p not in routes]:
            self.remove(prefix)
        for prefix, attributes in routes.items():
            self.set(prefix, attributes)

    @property
    def desired(self) -> Mapping[Prefix, PathAttributes]:
        return self._desired

    @property
    def sent(self) -> Mapping[Prefix, PathAttributes]:
        return self._sent

    def has_pending(self) -> bool:
        return bool(self._dirty)

    def pending(
        self, include: Iterable[Prefix] | None = None
    ) -> tuple[dict[PathAttributes, list[Prefix]], list[Prefix]]:
        """Routes to announce grouped by attributes, and prefixes to withdraw, in prefix order.

        `include`, when given, limits the result to those prefixes (e.g. negotiated families).
        """
        dirty = self._dirty if include is None else self._dirty.intersection(include)
        announce: dict[PathAttributes, list[Prefix]] = {}
        withdraw: list[Prefix] = []
        for prefix in sorted(dirty):
            attributes = self._desired.get(prefix)
            if attributes is not None:
                announce.setdefault(attributes, []).append(prefix)
            elif prefix in self._sent:
                withdraw.append(prefix)
        return announce, withdraw

    def commit(self, prefixes: Iterable[Prefix] | None = None) -> None:
        """Record that the pending changes (or those of `prefixes`) reached the peer."""
        done = set(self._dirty) if prefixes is None else self._dirty.intersection(prefixes)
        for prefix in done:
            attributes = self._desired.get(prefix)
            if attributes is None:
                self._sent.pop(prefix, None)
            else:
                self._sent[prefix] = attributes
        self._dirty -= done

    def reset(self) -> None:
        """The peer lost everything (session down): everything desired is pending again."""
        self._sent.clear()
        self._dirty = set(self._desired)

    def resend_all(self) -> None:
        """Re-send every desired route (the peer asked for a ROUTE-REFRESH)."""
        for prefix in self._desired:
            self._sent.pop(prefix, None)
        self._dirty |= set(self._desired)
