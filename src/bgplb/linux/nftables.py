"""bgplb's own nftables table (``inet bgplb``) for connection pinning, driven through the
JSON interface of libnftables (``nft -j -f -`` to apply, ``nft -j list table`` to read).

    nft = Nft(table="bgplb")
    mark = PinMark(IPv4Address("192.0.2.10"), oif=4, mark=0x10000, slot=1)
    nft.replace(pin_ruleset("bgplb", 0x00FF0000, [mark], [IPv4Network("198.51.100.10/32")]))
    nft.read_marks()        # [PinMark(...)] from the rule comments (adopted at start)
    nft.delete()            # on exit

Only our table is ever touched: a replace is one transaction ``add table; delete table; add
table; …`` so the ruleset changes atomically (no packet sees a half-built table) and nothing of
anyone else's is read or written. IPv4 and IPv6 share the table (family ``inet``).

The ruleset (``mask`` = the configured mark mask, M = a server's mark)::

    table inet bgplb {
      set vip4 { type ipv4_addr; flags interval; elements = { VIPs } }
      set vip6 { type ipv6_addr; flags interval; elements = { VIPs } }
      chain prerouting { type filter hook prerouting priority mangle;       # before routing
        ct mark & mask == 0 return
        ct mark & mask == M meta mark set meta mark & ~mask | M             # one per server
      }
      chain forward { type filter hook forward priority mangle;             # after routing
        ct direction original ct mark & mask == 0 ip daddr @vip4 rt ip nexthop GW
            ct mark set ct mark | M comment "bgplb-pin slot=1 gw=GW oif=IF"  # one per server
      }
    }

Matching "mark not yet set" rather than "ct state new" also pins connections that existed
before the table (their next packet is marked with the server the route picks now). Other bits
of the packet and conntrack marks are preserved (firewalld, WireGuard, kube-proxy use some).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

FAMILY = "inet"
PRIORITY_MANGLE = -150
COMMENT_PREFIX = "bgplb-pin"
#: Without pinning (consistent group alone) there is no forward rule to carry a server's slot
#: in its comment: a chain without a hook (never evaluated) holds one rule per server instead,
#: so a router restarted after a kill -9 gives every server the mark it had.
SLOTS_CHAIN = "slots"


class NftError(RuntimeError):
    """`nft` failed; the message carries its stderr."""


@dataclass(frozen=True, slots=True)
class PinMark:
    """One server's forward rule: connections routed via `gateway` get `mark`."""

    gateway: IPAddress
    oif: int
    mark: int
    slot: int

    def comment(self) -> str:
        return f"{COMMENT_PREFIX} slot={self.slot} gw={self.gateway} oif={self.oif}"


def _ct_mark() -> dict[str, Any]:
    return {"ct": {"key": "mark"}}


def _meta_mark() -> dict[str, Any]:
    return {"meta": {"key": "mark"}}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _element(net: IPNetwork) -> Any:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def pin_ruleset(
    table: str, mask: int, marks: Sequence[PinMark], vips: Iterable[IPNetwork]
) -> list[dict[str, Any]]:
    """The commands of one ``nft -j`` transaction that (re)creates `table` (pure)."""
    if not 0 < mask <= 0xFFFFFFFF:
        raise ValueError(f"mask {mask:#x}")
    inv = ~mask & 0xFFFFFFFF
    t = {"family": FAMILY, "name": table}
    cmds: list[dict[str, Any]] = [
        {"add": {"table": dict(t)}},
        {"delete": {"table": dict(t)}},
        {"add": {"table": dict(t)}},
    ]
    nets = sorted(set(vips), key=lambda n: (n.version, int(n.network_address), n.prefixlen))
    for name, version, kind in (("vip4", 4, "ipv4_addr"), ("vip6", 6, "ipv6_addr")):
        s: dict[str, Any] = {
            "family": FAMILY,
            "table": table,
            "name": name,
            "type": kind,
            "flags": ["interval"],
        }
        elems = [_element(n) for n in nets if n.version == version]
        if elems:
            s["elem"] = elems
        cmds.append({"add": {"set": s}})
    for chain, hook in (("prerouting", "prerouting"), ("forward", "forward")):
        cmds.append(
            {
                "add": {
                    "chain": {
                        "family": FAMILY,
                        "table": table,
                        "name": chain,
                        "type": "filter",
                        "hook": hook,
                        "prio": PRIORITY_MANGLE,
                        "policy": "accept",
                    }
                }
            }
        )

    def rule(chain: str, expr: list[dict[str, Any]], comment: str | None = None) -> None:
        r: dict[str, Any] = {"family": FAMILY, "table": table, "chain": chain, "expr": expr}
        if comment:
            r["comment"] = comment
        cmds.append({"add": {"rule": r}})

    ct_bits = {"&": [_ct_mark(), mask]}
    rule("prerouting", [_match(ct_bits, 0), {"return": None}])
    for m in sorted(marks, key=lambda m: m.slot):
        if m.mark & ~mask or not m.mark:
            raise ValueError(f"mark {m.mark:#x} is not inside mask {mask:#x}")
        rule(
            "prerouting",
            [
                _match(ct_bits, m.mark),
                {
                    "mangle": {
                        "key": _meta_mark(),
                        "value": {"|": [{"&": [_meta_mark(), inv]}, m.mark]},
                    }
                },
            ],
        )
    for m in sorted(marks, key=lambda m: m.slot):
        fam, setname = ("ip", "@vip4") if m.gateway.version == 4 else ("ip6", "@vip6")
        rule(
            "forward",
            [
                _match({"ct": {"key": "direction"}}, "original"),
                _match(ct_bits, 0),
                _match({"payload": {"protocol": fam, "field": "daddr"}}, setname),
                _match({"rt": {"key": "nexthop", "family": fam}}, str(m.gateway)),
                {"mangle": {"key": _ct_mark(), "value": {"|": [_ct_mark(), m.mark]}}},
            ],
            m.comment(),
        )
    return cmds


def parse_marks(listing: Sequence[dict[str, Any]]) -> list[PinMark]:
    """Our forward rules' marks, from the comments of a ``nft -j list table`` answer (pure)."""
    out = []
    for item in listing:
        r = item.get("rule")
        if not r or r.get("chain") not in ("forward", SLOTS_CHAIN):
            continue
        comment = r.get("comment") or ""
        if not comment.startswith(COMMENT_PREFIX):
            continue
        fields = dict(f.split("=", 1) for f in comment.split()[1:] if "=" in f)
        mark = None
        for e in r.get("expr", []):
            value = e.get("mangle", {}).get("value")
            if isinstance(value, dict) and "|" in value:
                mark = value["|"][1]
        try:
            out.append(
                PinMark(
                    ipaddress.ip_address(fields["gw"]),
                    int(fields["oif"]),
                    int(mark) if mark is not None else 0,
                    int(fields["slot"]),
                )
            )
        except (KeyError, ValueError, TypeError):
            log.warning("nftables: ignoring an unreadable rule of ours: %r", comment)
    return out


class Nft:
    """Our nftables table through ``nft -j`` (optionally inside namespace `netns`)."""

    def __init__(self, table: str = "bgplb", netns: str | None = None, binary: str = "nft") -> None:
        self.table = table
        self.netns = netns
        self.binary = binary

    def _cmd(self, *args: str) -> list[str]:
        base = [self.binary, *args]
        return ["ip", "netns", "exec", self.netns, *base] if self.netns else base

    def run(self, commands: Sequence[dict[str, Any]]) -> None:
        """Apply `commands` in one transaction (all or nothing)."""
        doc = json.dumps({"nftables": list(commands)})
        proc = subprocess.run(
            self._cmd("-j", "-f", "-"), input=doc, capture_output=True, text=True, timeout=30
        )
        if proc.returncode != 0:
            raise NftError(f"nft -j -f - failed ({proc.returncode}): {proc.stderr.strip()}")

    def list_table(self) -> list[dict[str, Any]] | None:
        """``nft -j list table inet NAME`` items, or None when the table does not exist."""
        proc = subprocess.run(
            self._cmd("-j", "list", "table", FAMILY, self.table),
            capture_output=True,
            text=True,
            timeout=30,
        )
        if proc.returncode != 0:
            if "No such file or directory" in proc.stderr:
                return None
            raise NftError(f"nft list table failed ({proc.returncode}): {proc.stderr.strip()}")
        items: list[dict[str, Any]] = json.loads(proc.stdout).get("nftables", [])
        return items

    def read_marks(self) -> list[PinMark]:
        listing = self.list_table()
        return parse_marks(listing) if listing else []

    def replace(self, commands: Sequence[dict[str, Any]]) -> None:
        self.run(commands)

    def delete(self) -> bool:
        """Remove our table; False when there was none."""
        if self.list_table() is None:
            return False
        self.run([{"delete": {"table": {"family": FAMILY, "name": self.table}}}])
        return True
