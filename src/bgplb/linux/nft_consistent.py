"""The nftables side of ``[fib] group = "consistent"``: a Maglev table (:mod:`bgplb.router.maglev`)
per distinct path set, looked up with the kernel's ``jhash`` of the flow's 5-tuple, setting the
packet mark of the chosen server's pin slot before routing (``ip rule fwmark M/mask lookup T``,
table T: ``VIP via SERVER``, the same per-server tables as connection pinning).

    table inet bgplb {
      chain cset_<fingerprint> {          # one per distinct path set (VIPs share it)
        meta mark set jhash ip saddr . th sport . ip daddr . th dport mod M seed S
                      map { 0 : MARK_a, 1 : MARK_b, ... }         # M entries
      }
      chain prerouting { type filter hook prerouting priority mangle;
        meta l4proto { tcp, udp, sctp } ip daddr vmap { VIP : jump cset_<fp>, ... }
        [ip6: ip6 saddr/daddr, ip6 daddr vmap]
        ... the pinning rules (with pinning = true) ...
      }
    }

With pinning, the pinning rules come after: a pinned connection (``ct mark & mask != 0``) gets
its pin's mark instead, an unpinned one keeps the table's and the forward rule pins it to the
server the table chose. A packet conntrack finds INVALID has no entry — no rule reading ``ct
mark`` matches it — and keeps the table's mark. Packets that match no rule (ICMP, other
protocols, a VIP without a table) follow the main table's nexthop group.

nftables cannot OR a map's result into the existing mark ("Right hand side of binary operation
(|) must be constant", nft 1.0.6): the consistent rule *overwrites* the packet mark of the VIP's
TCP/UDP/SCTP packets (documented in docs/kernel.md). The conntrack mark keeps its other bits.

Checked against nft 1.0.6 (``nft -j``): ``th`` inside a concatenation, anonymous maps of up to
65521 elements, ``jhash … mod M seed S``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bgplb.linux.nftables import FAMILY, PRIORITY_MANGLE, SLOTS_CHAIN, PinMark, pin_ruleset

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

L4PROTOS = ("tcp", "udp", "sctp")


@dataclass(frozen=True, slots=True)
class ConsistentChain:
    """One Maglev table in the kernel: `marks[i]` is the pin mark of slot i's server."""

    name: str  # cset_<fingerprint prefix>: the same name on every router for the same table
    version: int  # 4 or 6: the address family of its VIPs
    seed: int
    marks: tuple[int, ...]
    vips: tuple[IPNetwork, ...]

    @property
    def size(self) -> int:
        return len(self.marks)


def _vip(net: IPNetwork) -> Any:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _hash_expr(fam: str, size: int, seed: int) -> dict[str, Any]:
    def field(proto: str, name: str) -> dict[str, Any]:
        return {"payload": {"protocol": proto, "field": name}}

    return {
        "jhash": {
            "mod": size,
            "seed": seed,
            "expr": {
                "concat": [
                    field(fam, "saddr"),
                    field("th", "sport"),
                    field(fam, "daddr"),
                    field("th", "dport"),
                ]
            },
        }
    }


def consistent_ruleset(
    table: str,
    mask: int,
    marks: Sequence[PinMark],
    vips: Sequence[IPNetwork],
    chains: Sequence[ConsistentChain],
    pinning: bool,
) -> list[dict[str, Any]]:
    """The commands of one ``nft -j`` transaction that (re)creates `table` with the pinning rules
    (when `pinning`) and the consistent chains (pure)."""
    if pinning:
        cmds = pin_ruleset(table, mask, marks, vips)
    else:
        t = {"family": FAMILY, "name": table}
        cmds = [
            {"add": {"table": dict(t)}},
            {"delete": {"table": dict(t)}},
            {"add": {"table": dict(t)}},
            {
                "add": {
                    "chain": {
                        "family": FAMILY,
                        "table": table,
                        "name": "prerouting",
                        "type": "filter",
                        "hook": "prerouting",
                        "prio": PRIORITY_MANGLE,
                        "policy": "accept",
                    }
                }
            },
            {"add": {"chain": {"family": FAMILY, "table": table, "name": SLOTS_CHAIN}}},
        ]
        # the slot of every server, for the next run after a kill -9 (parse_marks); stateless
        # (meta mark, not ct mark: no conntrack without pinning) and never evaluated
        for pm in sorted(marks, key=lambda p: p.slot):
            keep_slot: dict[str, Any] = {
                "key": {"meta": {"key": "mark"}},
                "value": {"|": [{"meta": {"key": "mark"}}, pm.mark]},
            }
            cmds.append(
                {
                    "add": {
                        "rule": {
                            "family": FAMILY,
                            "table": table,
                            "chain": SLOTS_CHAIN,
                            "expr": [{"mangle": keep_slot}],
                            "comment": pm.comment(),
                        }
                    }
                }
            )
    if not chains:
        return cmds
    extra: list[dict[str, Any]] = []
    names: set[str] = set()
    for c in sorted(chains, key=lambda c: c.name):
        if c.name in names:
            raise ValueError(f"two consistent chains named {c.name}")
        names.add(c.name)
        for m in c.marks:
            if not m or m & ~mask:
                raise ValueError(f"mark {m:#x} is not inside mask {mask:#x}")
        fam = "ip" if c.version == 4 else "ip6"
        extra.append({"add": {"chain": {"family": FAMILY, "table": table, "name": c.name}}})
        data = {"set": [[i, m] for i, m in enumerate(c.marks)]}
        mangle = [
            {
                "mangle": {
                    "key": {"meta": {"key": "mark"}},
                    "value": {"map": {"key": _hash_expr(fam, c.size, c.seed), "data": data}},
                }
            }
        ]
        extra.append(
            {"add": {"rule": {"family": FAMILY, "table": table, "chain": c.name, "expr": mangle}}}
        )
    for version, fam in ((4, "ip"), (6, "ip6")):
        elems = [
            [_vip(v), {"jump": {"target": c.name}}]
            for c in chains
            if c.version == version
            for v in c.vips
        ]
        if not elems:
            continue
        elems.sort(key=lambda e: str(e[0]))
        # no conntrack condition, even with pinning: a pinned connection's mark is then
        # overwritten by pinning's rules below, and a packet conntrack found INVALID (it has
        # no entry, so no rule reading `ct mark` can match it) still follows the table
        expr: list[dict[str, Any]] = [
            {
                "match": {
                    "op": "==",
                    "left": {"meta": {"key": "l4proto"}},
                    "right": {"set": list(L4PROTOS)},
                }
            },
            {
                "vmap": {
                    "key": {"payload": {"protocol": fam, "field": "daddr"}},
                    "data": {"set": elems},
                }
            },
        ]
        extra.append(
            {
                "add": {
                    "rule": {
                        "family": FAMILY,
                        "table": table,
                        "chain": "prerouting",
                        "expr": expr,
                        "comment": f"bgplb-consistent ipv{version}",
                    }
                }
            }
        )
    # before the first prerouting rule (pinning's "ct mark & mask == 0 return"): every packet
    # gets its table's mark; pinning's rules then give a pinned connection its pin's mark
    at = next(
        (
            i
            for i, c in enumerate(cmds)
            if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] == "prerouting"
        ),
        len(cmds),
    )
    return cmds[:at] + extra + cmds[at:]
