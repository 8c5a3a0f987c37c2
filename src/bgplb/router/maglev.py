"""Maglev consistent hashing, pure: the lookup table of ``[fib] group = "consistent"``.

Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load Balancer", NSDI 2016, §3.4
("Consistent Hashing", Pseudocode 1). Each backend gets a permutation of the table's M slots
from two hashes of its name — ``offset`` in [0, M) and ``skip`` in [1, M) — and backends take
turns claiming their next preferred free slot until all M are taken. With M prime, every
permutation visits every slot.

What makes the table usable by several routers at once (and by one router after a restart):

* **Pure function of (backends, weights, size, seed).** Nothing depends on arrival order or
  history: backends are sorted by address before the fill, so the input order is irrelevant.
* **Process-independent hash.** ``hashlib.blake2b`` keyed with the seed over the next-hop address
  string (never Python's ``hash()``, which is salted per process).
* **Backend identity = next-hop address.** Not the interface index (it differs between routers):
  every router must see the same next-hop address for a server.
* **Weights** (the RIB's link-bandwidth weights, a draining path's weight 1): a deterministic
  turn rule, Envoy's weighted variant of Maglev — in round ``n`` (1, 2, …) backend ``i`` takes a
  turn iff ``floor(n·w_i / w_max) > floor((n-1)·w_i / w_max)``; within a round backends go in
  address order (the tie-break). The heaviest backend takes a turn every round, so the fill ends.

The kernel realisation (``jhash … mod M map { slot : mark }`` in nftables) is in
:mod:`bgplb.linux.nft_consistent`; the semantics (what moves on each change) in docs/kernel.md.

No I/O, no clock. Checked with ``mypy --strict``.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_SIZE = 4093
"""Default table size: a prime; see docs/kernel.md for the imbalance/disruption measurements."""
DEFAULT_SEED = 0x62676C62
"""Default seed ("bglb"): two routers with the default configuration agree."""
MIN_SIZE = 7
MAX_SIZE = 65521  # largest prime below 2**16: nftables map of at most 64 Ki elements
MAX_SEED = 0xFFFFFFFF  # nftables' jhash seed is a u32


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def check_size(size: int) -> int:
    """`size` if it is a prime within [MIN_SIZE, MAX_SIZE], else ValueError saying why."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise ValueError(f"table size must be an integer, got {size!r}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"table size {size} out of range {MIN_SIZE}..{MAX_SIZE}")
    if not is_prime(size):
        raise ValueError(f"table size {size} is not a prime (e.g. 1021, 4093, 16381, 65521)")
    return size


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    return seed


@dataclass(frozen=True, slots=True, order=True)
class Backend:
    """A server as the table sees it: its next-hop address and its weight (>= 1)."""

    address: IPAddress
    weight: int = 1

    def sort_key(self) -> tuple[int, int]:
        return (self.address.version, int(self.address))


def permutation(address: IPAddress, size: int, seed: int) -> tuple[int, int]:
    """(offset, skip) of a backend: offset in [0, size), skip in [1, size)."""
    digest = hashlib.blake2b(
        str(address).encode(), key=seed.to_bytes(8, "big"), digest_size=16
    ).digest()
    h1 = int.from_bytes(digest[:8], "big")
    h2 = int.from_bytes(digest[8:], "big")
    return h1 % size, h2 % (size - 1) + 1


@dataclass(frozen=True, slots=True)
class Table:
    """A filled lookup table: ``entries[i]`` is the index in ``backends`` of slot i's owner."""

    size: int
    seed: int
    backends: tuple[Backend, ...]
    entries: tuple[int, ...]

    def lookup(self, slot: int) -> IPAddress:
        return self.backends[self.entries[slot]].address

    def addresses(self) -> tuple[IPAddress, ...]:
        """The owner of every slot, in slot order."""
        return tuple(self.backends[i].address for i in self.entries)

    def counts(self) -> dict[IPAddress, int]:
        out = {b.address: 0 for b in self.backends}
        for i in self.entries:
            out[self.backends[i].address] += 1
        return out

    def shares(self) -> dict[IPAddress, float]:
        """Fraction of the slots (hence of the flows) each backend owns."""
        return {a: c / self.size for a, c in self.counts().items()}

    def fingerprint(self) -> str:
        """Hex digest over seed, size and the owner address of every slot: two routers whose
        fingerprints are equal map every flow hash to the same server."""
        h = hashlib.blake2b(digest_size=16)
        h.update(f"maglev-v1 seed={self.seed} size={self.size}\n".encode())
        names = [str(b.address).encode() for b in self.backends]
        h.update(b"\n".join(names[i] for i in self.entries))
        return h.hexdigest()


def normalise(backends: Iterable[Backend]) -> tuple[Backend, ...]:
    """Backends sorted by address; the same address twice is one backend (weights summed)."""
    merged: dict[IPAddress, int] = {}
    for b in backends:
        if isinstance(b.weight, bool) or not isinstance(b.weight, int) or b.weight < 1:
            raise ValueError(f"backend {b.address}: weight must be an integer >= 1")
        merged[b.address] = merged.get(b.address, 0) + b.weight
    return tuple(sorted((Backend(a, w) for a, w in merged.items()), key=Backend.sort_key))


def build_table(
    backends: Sequence[Backend], size: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED
) -> Table:
    """The Maglev table of `backends` (any order). ValueError on no backend, a bad size or seed
    or a weight < 1."""
    check_size(size)
    check_seed(seed)
    bs = normalise(backends)
    if not bs:
        raise ValueError("a table needs at least one backend")
    perms = [permutation(b.address, size, seed) for b in bs]
    nxt = [0] * len(bs)
    entry = [-1] * size
    wmax = max(b.weight for b in bs)
    filled = 0
    n = 0
    while filled < size:
        n += 1
        for i, b in enumerate(bs):
            # weighted turn rule: b takes (n·w/wmax) turns in the first n rounds, rounded down
            if (n * b.weight) // wmax == ((n - 1) * b.weight) // wmax:
                continue
            offset, skip = perms[i]
            c = (offset + nxt[i] * skip) % size
            while entry[c] >= 0:
                nxt[i] += 1
                c = (offset + nxt[i] * skip) % size
            entry[c] = i
            nxt[i] += 1
            filled += 1
            if filled == size:
                break
    return Table(size, seed, bs, tuple(entry))


def moved(old: Table, new: Table) -> float:
    """Fraction of slots whose owner differs between two tables of the same size."""
    if old.size != new.size:
        raise ValueError("tables of different sizes")
    a, b = old.addresses(), new.addresses()
    return sum(1 for x, y in zip(a, b, strict=True) if x != y) / old.size


def backends_of(weights: Mapping[IPAddress, int]) -> tuple[Backend, ...]:
    """Convenience: {address: weight} -> sorted backends."""
    return normalise(Backend(a, w) for a, w in weights.items())
