"""The kernel side of connection pinning: per-server ``ip rule``s and tables, our nftables
table, ``src_valid_mark``, and conntrack counts.

    pins = KernelPins(mask=0x00FF0000, tables=(20000, 20254), priority=1000)
    pins.reconcile()        # start: what is installed (to adopt slots), stale objects removed
    pins.apply([PinSpec(gateway, oif, mark, slot, table, vips)])   # idempotent
    pins.counts()           # {mark: conntrack entries carrying it}
    pins.cleanup()          # exit: rules, routes, nftables table removed, src_valid_mark
                            # restored

Ownership: rules with our priority, protocol 200 and a table inside our range; routes with
protocol 200 in tables of our range; the nftables table ``inet <name>``. Nothing else is read
for changing or changed. Per server: ``ip rule add fwmark MARK/MASK lookup TABLE pref PRIO
proto 200`` (IPv4 and IPv6) and in TABLE one plain route per pinned VIP ``VIP via GW dev IF``.

``net.ipv4.conf.all.src_valid_mark`` is set to 1 when rp_filter is on; the value found before is
remembered in a small file under ``/run/bgplb/`` named after the network namespace's inode
(``src_valid_mark.net<INODE>.json``: /run is emptied at boot, as the sysctl is reset), written
*before* the sysctl is changed, so a run killed with SIGKILL leaves it for the next run, which
keeps it and restores that value at its cleanup. It is restored only if the sysctl still holds
the 1 we wrote (someone who changed it since wins). ``net.netfilter.nf_conntrack_tcp_be_liberal``
(consistent group with pinning, :meth:`KernelPins.ensure_be_liberal`) is handled the same way
(``tcp_be_liberal.net<INODE>.json``). With ``group = "consistent"`` the nftables table also holds
the Maglev chains (:mod:`bgplb.linux.nft_consistent`); ``pinning = False`` then leaves out every
conntrack rule.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import ipaddress
import json
import logging
import os
import socket
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bgplb.linux.nft_consistent import ConsistentChain, consistent_ruleset
from bgplb.linux.nftables import Nft, PinMark

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
PROTOCOL = 200
STATE_DIR = Path("/run/bgplb")
SRC_VALID_MARK = "net.ipv4.conf.all.src_valid_mark"
BE_LIBERAL = "net.netfilter.nf_conntrack_tcp_be_liberal"


def _save_found(state: Path, key: str, value: str) -> None:
    """Keep the value of a sysctl we are about to change in `state` (atomically). The value
    found is the original one, even if a stale file (an earlier namespace with the same inode)
    says otherwise: it is (re)written before every change."""
    state.parent.mkdir(parents=True, exist_ok=True)
    tmp = state.with_name(state.name + ".tmp")
    tmp.write_text(json.dumps({key: value, "set_by": "bgplb router"}))
    os.replace(tmp, state)


def _restore_found(
    where: Callable[[], Path],
    key: str,
    sysctl: str,
    read: Callable[[], str],
    write: Callable[[str], None],
    role: str,
) -> bool:
    """Put back the value :func:`_save_found` kept in the file `where()` names (also one an
    earlier, killed run kept), if the sysctl still holds our 1, and remove the file. True if the
    sysctl changed."""
    try:
        state = where()  # names our namespace: may fail (OSError) when it is gone
        try:
            saved = json.loads(state.read_text()).get(key)
        except FileNotFoundError:
            return False
        except (ValueError, AttributeError):
            saved = None
        changed = False
        if isinstance(saved, str) and saved.isdigit():
            if read() == "1" and saved != "1":
                write(saved)
                log.info("%s: restored %s=%s", role, sysctl, saved)
                changed = True
        else:
            log.warning("%s: %s unreadable: %s left as it is", role, state, sysctl)
        state.unlink()
        return changed
    except OSError as exc:
        log.warning("%s: cannot restore %s: %s", role, sysctl, exc)
        return False


@dataclass(frozen=True, slots=True)
class PinSpec:
    """One server's pin: its mark and table, and the VIPs its table routes to it."""

    gateway: IPAddress
    oif: int
    mark: int
    slot: int
    table: int
    vips: tuple[IPNetwork, ...]


T = TypeVar("T")


def _off_loop(fn: Callable[..., T]) -> Callable[..., T]:
    """pyroute2's synchronous API cannot run in a thread whose asyncio loop is running: from
    there, run the call in a short-lived worker thread (the daemon itself calls from threads)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args, **kwargs)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(fn, *args, **kwargs).result()

    return wrapper


RuleKey = tuple[int, int, int]  # (family, mark, table)
RouteKey = tuple[int, IPNetwork, IPAddress, int]  # (table, dst, gateway, oif)


class KernelPins:
    """Rules, per-server routes and the nftables table, for one namespace."""

    def __init__(
        self,
        mask: int,
        tables: tuple[int, int],
        priority: int = 1000,
        nft_table: str = "bgplb",
        netns: str | None = None,
        protocol: int = PROTOCOL,
        state_dir: Path = STATE_DIR,
    ) -> None:
        self.mask = mask
        self.state_dir = state_dir
        self.tables = tables
        self.priority = priority
        self.netns = netns
        self.protocol = protocol
        self.nft = Nft(nft_table, netns)
        self._sock: Any = None
        self._installed_vips: tuple[IPNetwork, ...] | None = None
        self._installed_marks: tuple[PinMark, ...] | None = None
        self._installed_chains: tuple[ConsistentChain, ...] | None = None
        # False: consistent mode without pinning (no conntrack rules, only the tables' marks)
        self.pinning = True

    @property
    def _ipr(self) -> Any:
        if self._sock is None:
            from pyroute2 import IPRoute, NetNS

            self._sock = NetNS(self.netns) if self.netns else IPRoute()
        return self._sock

    @_off_loop
    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- reading ------------------------------------------------------------------------------
    def _ours_table(self, table: int | None) -> bool:
        return table is not None and self.tables[0] <= table <= self.tables[1]

    @_off_loop
    def rules(self) -> set[RuleKey]:
        out: set[RuleKey] = set()
        for family in (int(socket.AF_INET), int(socket.AF_INET6)):
            for r in self._ipr.get_rules(family=family):
                table = r.get_attr("FRA_TABLE") or r["table"]
                if (
                    r.get_attr("FRA_PRIORITY") == self.priority
                    and r.get_attr("FRA_PROTOCOL") == self.protocol
                    and self._ours_table(table)
                ):
                    out.add((family, r.get_attr("FRA_FWMARK") or 0, table))
        return out

    @_off_loop
    def routes(self) -> set[RouteKey]:
        out: set[RouteKey] = set()
        for family in (int(socket.AF_INET), int(socket.AF_INET6)):
            for r in self._ipr.get_routes(family=family):
                table = r.get_attr("RTA_TABLE") or r["table"]
                if r["proto"] != self.protocol or not self._ours_table(table):
                    continue
                dst = r.get_attr("RTA_DST")
                gw = r.get_attr("RTA_GATEWAY")
                if dst is None or gw is None:
                    continue
                net = ipaddress.ip_network(f"{dst}/{r['dst_len']}")
                out.add((table, net, ipaddress.ip_address(gw), r.get_attr("RTA_OIF") or 0))
        return out

    def installed_marks(self) -> list[PinMark]:
        """The servers and slots our nftables table holds (to adopt them after a restart)."""
        return self.nft.read_marks()

    # -- changing -----------------------------------------------------------------------------
    @_off_loop
    def apply(self, pins: Sequence[PinSpec], chains: Sequence[ConsistentChain] = ()) -> int:
        """Make the kernel hold exactly `pins` (and the consistent-mode `chains`, whose marks
        must be those of `pins`). Returns the number of changes."""
        want_rules = {
            (fam, p.mark, p.table)
            for p in pins
            for fam in (int(socket.AF_INET), int(socket.AF_INET6))
        }
        want_routes = {(p.table, v, p.gateway, p.oif) for p in pins for v in p.vips}
        have_rules, have_routes = self.rules(), self.routes()
        changes = 0
        # additions first (rules, routes), then nftables, then removals
        for fam, mark, table in sorted(want_rules - have_rules):
            self._rule("add", fam, mark, table, protocol=self.protocol)
            changes += 1
        for route in sorted(want_routes - have_routes, key=_route_sort):
            self._route("replace", *route)
            changes += 1
        marks = tuple(PinMark(p.gateway, p.oif, p.mark, p.slot) for p in pins)
        vips = tuple(sorted({v for p in pins for v in p.vips}, key=_net_sort))
        chain_t = tuple(chains)
        if (
            marks != self._installed_marks
            or vips != self._installed_vips
            or chain_t != self._installed_chains
        ):
            self.nft.replace(
                consistent_ruleset(self.nft.table, self.mask, marks, vips, chain_t, self.pinning)
            )
            self._installed_marks, self._installed_vips = marks, vips
            self._installed_chains = chain_t
            changes += 1
        for route in sorted(have_routes - want_routes, key=_route_sort):
            with contextlib.suppress(Exception):
                self._route("del", *route)
                changes += 1
        for fam, mark, table in sorted(have_rules - want_rules):
            with contextlib.suppress(Exception):
                self._rule("del", fam, mark, table)
                changes += 1
        return changes

    def _rule(self, op: str, fam: int, mark: int, table: int, **extra: Any) -> None:
        self._ipr.rule(
            op,
            family=fam,
            priority=self.priority,
            fwmark=mark,
            fwmask=self.mask,
            table=table,
            **extra,
        )

    def _route(self, op: str, table: int, dst: IPNetwork, gw: IPAddress, oif: int) -> None:
        self._ipr.route(
            op,
            dst=str(dst),
            gateway=str(gw),
            oif=oif,
            table=table,
            proto=self.protocol,
            family=socket.AF_INET if dst.version == 4 else socket.AF_INET6,
        )

    @_off_loop
    def cleanup(self) -> int:
        """Remove every rule, route and the nftables table of ours; restore src_valid_mark."""
        self._installed_marks = self._installed_vips = ()  # no need to write an empty table
        self._installed_chains = ()
        changes = self.apply([])
        if self.nft.delete():
            changes += 1
        self._installed_marks = self._installed_vips = None
        self._installed_chains = None
        if self.restore_src_valid_mark():
            changes += 1
        if self.restore_be_liberal():
            changes += 1
        return changes

    # -- rp_filter ----------------------------------------------------------------------------
    def _sysctls(self) -> tuple[bool, str]:
        """(rp_filter on for `all` or any interface, current src_valid_mark) of our namespace."""
        if self.netns is None:
            conf = Path("/proc/sys/net/ipv4/conf")
            rp = [
                (p / "rp_filter").read_text().strip()
                for p in conf.iterdir()
                if (p / "rp_filter").exists()
            ]
            return any(v not in ("0", "") for v in rp), (
                (conf / "all" / "src_valid_mark").read_text().strip()
            )
        out = self._in_netns("sysctl", "-a", "--pattern", r"^net\.ipv4\.conf\..*\.rp_filter$")
        rp = [line.rpartition("=")[2].strip() for line in out.splitlines() if "=" in line]
        current = self._in_netns("sysctl", "-n", SRC_VALID_MARK).strip()
        return any(v not in ("0", "") for v in rp), current

    def _set_src_valid_mark(self, value: str) -> None:
        if self.netns is None:
            Path("/proc/sys/net/ipv4/conf/all/src_valid_mark").write_text(value + "\n")
        else:
            self._in_netns("sysctl", "-qw", f"{SRC_VALID_MARK}={value}")

    def _in_netns(self, *args: str) -> str:
        assert self.netns is not None
        try:
            proc = subprocess.run(
                ["ip", "netns", "exec", self.netns, *args],
                capture_output=True,
                text=True,
                timeout=10,
            )
        except subprocess.TimeoutExpired as exc:
            raise OSError(f"{args[0]} timed out") from exc
        if proc.returncode != 0:
            raise OSError(f"{' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
        return proc.stdout

    def _netns_id(self) -> int:
        target = f"/var/run/netns/{self.netns}" if self.netns else "/proc/self/ns/net"
        return os.stat(target).st_ino

    @property
    def src_valid_mark_state(self) -> Path:
        """Where the value found before we set src_valid_mark is kept (one per namespace)."""
        return self.state_dir / f"src_valid_mark.net{self._netns_id()}.json"

    def ensure_src_valid_mark(self) -> bool:
        """With rp_filter on (any interface, or `all`), the reverse-path check of a drained
        server's replies must see the packet mark, or they are dropped: set
        ``net.ipv4.conf.all.src_valid_mark = 1``, after saving the value found (restored by
        :meth:`restore_src_valid_mark`). Returns True if it was changed."""
        try:
            strict, current = self._sysctls()
            if not strict or current == "1":
                return False
            _save_found(self.src_valid_mark_state, "src_valid_mark", current)
            self._set_src_valid_mark("1")
            log.info(
                "pinning: rp_filter is on: set %s=1 (was %s; restored at exit)",
                SRC_VALID_MARK,
                current,
            )
            return True
        except OSError as exc:
            log.warning("pinning: cannot check/set src_valid_mark: %s", exc)
        return False

    def restore_src_valid_mark(self) -> bool:
        """Put back the src_valid_mark found before :meth:`ensure_src_valid_mark` set it (also
        by an earlier run that was killed). Returns True if the sysctl was changed."""
        return _restore_found(
            lambda: self.src_valid_mark_state,
            "src_valid_mark",
            SRC_VALID_MARK,
            lambda: self._sysctls()[1],
            self._set_src_valid_mark,
            "pinning",
        )

    # -- conntrack window tracking (consistent mode with pinning) ----------------------------
    @property
    def be_liberal_state(self) -> Path:
        return self.state_dir / f"tcp_be_liberal.net{self._netns_id()}.json"

    def _read_be_liberal(self) -> str:
        if self.netns is None:
            return Path("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal").read_text().strip()
        return self._in_netns("sysctl", "-n", BE_LIBERAL).strip()

    def _write_be_liberal(self, value: str) -> None:
        if self.netns is None:
            Path("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal").write_text(value + "\n")
        else:
            self._in_netns("sysctl", "-qw", f"{BE_LIBERAL}={value}")

    def ensure_be_liberal(self) -> bool:
        """A connection that comes back from another router (or was first seen mid-stream)
        must not be INVALID to conntrack's TCP window tracking, or its packets lose their pin:
        set ``nf_conntrack_tcp_be_liberal = 1`` in our namespace, after saving the value found
        (restored by :meth:`restore_be_liberal`, also after a kill -9). True if changed."""
        try:
            current = self._read_be_liberal()
            if current == "1":
                return False
            _save_found(self.be_liberal_state, "tcp_be_liberal", current)
            self._write_be_liberal("1")
            log.info(
                "consistent: set %s=1 (was %s; restored at exit): flows arriving from another "
                "router keep their pin",
                BE_LIBERAL,
                current,
            )
            return True
        except OSError as exc:
            log.warning("consistent: cannot check/set %s: %s", BE_LIBERAL, exc)
        return False

    def restore_be_liberal(self) -> bool:
        """Put back the value :meth:`ensure_be_liberal` found, if the sysctl still holds our 1."""
        return _restore_found(
            lambda: self.be_liberal_state,
            "tcp_be_liberal",
            BE_LIBERAL,
            self._read_be_liberal,
            self._write_be_liberal,
            "consistent",
        )

    # -- conntrack ----------------------------------------------------------------------------
    def counts(self) -> dict[int, int]:
        """Conntrack entries per pin mark (mark & mask, 0 excluded)."""
        return conntrack_counts(self.mask, self.netns)


def conntrack_counts(mask: int, netns: str | None = None) -> dict[int, int]:
    """{mark & mask: number of conntrack entries} from /proc/net/nf_conntrack (read in our
    namespace), or `conntrack -L` when that file does not exist."""
    lines: Iterable[str]
    path = Path("/proc/net/nf_conntrack")
    if netns is None and path.exists():
        lines = path.read_text(errors="replace").splitlines()
    else:
        cmd = ["conntrack", "-L", "-o", "extended"]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.debug("conntrack -L: %s", exc)
            return {}
        lines = proc.stdout.splitlines()
    out: dict[int, int] = {}
    for line in lines:
        i = line.find(" mark=")
        if i < 0:
            continue
        j = line.find(" ", i + 6)
        try:
            mark = int(line[i + 6 : j if j > 0 else None]) & mask
        except ValueError:
            continue
        if mark:
            out[mark] = out.get(mark, 0) + 1
    return out


def _net_sort(n: IPNetwork) -> tuple[int, int, int]:
    return (n.version, int(n.network_address), n.prefixlen)


def _route_sort(k: RouteKey) -> tuple[int, int, int, int]:
    return (k[0], k[1].version, int(k[1].network_address), k[1].prefixlen)
