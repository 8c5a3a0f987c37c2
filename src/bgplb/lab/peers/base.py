"""Common parts of the daemon harness: route/neighbor types and the Daemon life cycle."""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from bgplb.lab.netns import Namespace

FAMILIES = ("ipv4", "ipv6")
#: Names that daemons print instead of the numeric form of well-known communities (RFC 1997,
#: RFC 8326, RFC 7999, RFC 8642).
WELL_KNOWN_COMMUNITIES = {
    "graceful-shutdown": "65535:0",
    "gshut": "65535:0",
    "accept-own": "65535:1",
    "llgr-stale": "65535:6",
    "no-llgr": "65535:7",
    "blackhole": "65535:666",
    "no-export": "65535:65281",
    "no-advertise": "65535:65282",
    "no-export-subconfed": "65535:65283",
    "local-as": "65535:65283",
    "no-peer": "65535:65284",
}


class PeerError(RuntimeError):
    """A daemon failed to start, answer or stop; the message includes its log tail."""


@dataclass(frozen=True, slots=True)
class ReceivedRoute:
    """One path a daemon received from a BGP neighbor (its Adj-RIB-In / Loc-RIB entry)."""

    prefix: str
    next_hop: str
    as_path: list[int]
    communities: list[str]  # "65000:100"
    large_communities: list[str]  # "65000:1:2"
    med: int | None
    peer: str


@dataclass(frozen=True, slots=True)
class Neighbor:
    """A configured BGP neighbor (same fields for every daemon)."""

    address: str
    asn: int
    password: str | None = None
    passive: bool = False
    hold_time: int = 3
    port: int = 179
    multihop: int | None = None
    local_address: str | None = None
    bfd: bool = False
    graceful_restart: bool = False
    families: tuple[str, ...] = FAMILIES


@dataclass(frozen=True, slots=True)
class Announcement:
    """A route the daemon originates."""

    prefix: str
    next_hop: str | None = None
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()
    med: int | None = None

    @property
    def family(self) -> str:
        return "ipv6" if ":" in self.prefix else "ipv4"


def normalize_community(text: str) -> str:
    """Return a standard community as "ASN:VALUE" whatever name or form a daemon printed.

    FRR's JSON prints camelCase names ("gracefulShutdown", "noExport"), others use dashes.
    """
    text = text.strip().strip("()").replace(",", ":").replace(" ", "")
    key = re.sub(r"(?<=[a-z])(?=[A-Z])", "-", text).lower()
    return WELL_KNOWN_COMMUNITIES.get(key, text)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


class Daemon:
    """Common life cycle: config → foreground child process(es) in `ns` → control channel.

    Subclasses implement `_write_config`, `_commands` (argv lists to spawn, in order),
    `_ready` (True once the control channel answers), `neighbor_state` and `received_routes`.
    """

    name: ClassVar[str] = "daemon"
    start_timeout: ClassVar[float] = 15.0

    def __init__(
        self,
        ns: Namespace,
        workdir: Path,
        asn: int,
        router_id: str,
        *,
        listen_port: int = 179,
    ) -> None:
        self.ns = ns
        self.workdir = Path(workdir)
        self.asn = asn
        self.router_id = router_id
        self.listen_port = listen_port
        self.neighbors: dict[str, Neighbor] = {}
        self.announcements: dict[str, Announcement] = {}
        self._procs: list[subprocess.Popen[bytes]] = []
        #: Short private directory for sockets and pid files (AF_UNIX paths are limited to
        #: 107 bytes, test workdirs can be longer); made by start(), removed by stop().
        self.rundir = Path(tempfile.gettempdir()) / f"bgplb-{self.name}-{uuid.uuid4().hex[:8]}"

    # -- configuration -------------------------------------------------------------------------

    def add_neighbor(
        self,
        address: str,
        asn: int,
        *,
        password: str | None = None,
        passive: bool = False,
        hold_time: int = 3,
        port: int = 179,
        multihop: int | None = None,
        local_address: str | None = None,
        bfd: bool = False,
        graceful_restart: bool = False,
        families: Sequence[str] = FAMILIES,
    ) -> Neighbor:
        """Configure a neighbor; takes effect at the next `start()`/`restart()`."""
        ipaddress.ip_address(address)
        if hold_time != 0 and hold_time < 3:
            raise ValueError(f"hold_time must be 0 or >= 3, not {hold_time}")
        unknown = set(families) - set(FAMILIES)
        if unknown or not families:
            raise ValueError(f"families must be a non-empty subset of {FAMILIES}, not {families}")
        nb = Neighbor(
            str(ipaddress.ip_address(address)),
            asn,
            password,
            passive,
            hold_time,
            port,
            multihop,
            local_address,
            bfd,
            graceful_restart,
            tuple(families),
        )
        self._check_neighbor(nb)
        self.neighbors[nb.address] = nb
        return nb

    def _check_neighbor(self, nb: Neighbor) -> None:
        """Raise NotImplementedError for options this daemon cannot do."""

    def announce(
        self,
        prefix: str,
        next_hop: str | None = None,
        communities: Iterable[str] = (),
        large_communities: Iterable[str] = (),
        med: int | None = None,
    ) -> Announcement:
        """Originate `prefix` (static, from the config); daemons with an API also do it live."""
        net = str(ipaddress.ip_network(prefix))
        ann = Announcement(net, next_hop, tuple(communities), tuple(large_communities), med)
        self.announcements[net] = ann
        if self.running:
            self._announce_live(ann)
        return ann

    def withdraw(self, prefix: str) -> None:
        """Stop originating `prefix` (live when the daemon is running)."""
        ann = self.announcements.pop(str(ipaddress.ip_network(prefix)))
        if self.running:
            self._withdraw_live(ann)

    def _announce_live(self, ann: Announcement) -> None:
        self._reload()

    def _withdraw_live(self, ann: Announcement) -> None:
        self._reload()

    def _reload(self) -> None:
        raise NotImplementedError(f"{self.name}: live changes need restart()")

    # -- life cycle ----------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def running(self) -> bool:
        return bool(self._procs) and all(p.poll() is None for p in self._procs)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def log_tail(self, lines: int = 25) -> str:
        return _tail(self.log_path, lines)

    def error(self, what: str) -> PeerError:
        """A PeerError for `what`, with the daemon's log tail."""
        return PeerError(
            f"{self.name} in {self.ns.name}: {what}\n--- {self.log_path} ---\n{self.log_tail()}"
        )

    def start(self) -> None:
        """Write the config, spawn the daemon in the namespace, wait until it answers."""
        if self._procs:
            raise PeerError(f"{self.name} in {self.ns.name} is already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rundir.mkdir(mode=0o755, exist_ok=True)
        self._write_config()
        with self.log_path.open("ab") as log:
            for argv in self._commands():
                log.write(f"--- {time.strftime('%H:%M:%S')} {shlex.join(argv)}\n".encode())
                log.flush()
                proc = self.ns.popen(
                    *argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._env(),
                )
                self._procs.append(proc)
                self._wait(lambda p=proc: self._spawned(p), f"{argv[0]} to come up")
        self._wait(self._ready, "its control channel to answer")
        self._after_start()

    def _wait(self, probe: object, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            dead = [p for p in self._procs if p.poll() is not None]
            if dead:
                codes = ", ".join(f"pid {p.pid} exit {p.returncode}" for p in dead)
                err = self.error(f"exited while waiting for {what} ({codes})")
                self.stop()
                raise err
            if probe():  # type: ignore[operator]
                return
            if time.monotonic() > deadline:
                err = self.error(f"timed out after {self.start_timeout:.0f}s waiting for {what}")
                self.stop()
                raise err
            time.sleep(0.05)

    def _spawned(self, proc: subprocess.Popen[bytes]) -> bool:
        return True

    def _env(self) -> dict[str, str] | None:
        return None

    def _after_start(self) -> None:
        pass

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM our own PIDs (last started first), SIGKILL after `timeout`. Never raises."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout)
        self._procs.clear()
        shutil.rmtree(self.rundir, ignore_errors=True)

    def restart(self) -> None:
        """stop() then start() with the current configuration."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- queries -------------------------------------------------------------------------------

    def control(self, *args: str, timeout: float = 10.0) -> str:
        """Run this daemon's CLI (argv after the socket options) and return stdout."""
        argv = self._cli(*args)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise self.error(f"{shlex.join(argv)} timed out") from exc
        if proc.returncode != 0:
            raise self.error(
                f"{shlex.join(argv)} failed ({proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()}"
            )
        return proc.stdout

    def _cli(self, *args: str) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _write_config(self) -> None:
        raise NotImplementedError

    def _commands(self) -> list[list[str]]:
        raise NotImplementedError

    def neighbor_state(self, address: str) -> str:
        """The session state, lower case; "established" when up."""
        raise NotImplementedError

    def received_routes(self) -> list[ReceivedRoute]:
        """Every path received from neighbors (not our own announcements), sorted."""
        raise NotImplementedError

    def wait_established(self, address: str, timeout: float = 20.0) -> None:
        """Block until the session with `address` is Established or raise PeerError."""
        address = str(ipaddress.ip_address(address))
        deadline = time.monotonic() + timeout
        state = "unknown"
        while time.monotonic() < deadline:
            if not self.running:
                raise self.error(f"died while waiting for {address} to be established")
            state = self.neighbor_state(address)
            if state == "established":
                return
            time.sleep(0.1)
        raise self.error(f"session with {address} not established after {timeout}s (state {state})")

    def wait_routes(
        self, predicate: object, timeout: float = 10.0, what: str = "routes"
    ) -> list[ReceivedRoute]:
        """Poll received_routes() until `predicate(routes)` is true; return them or raise."""
        deadline = time.monotonic() + timeout
        routes: list[ReceivedRoute] = []
        while time.monotonic() < deadline:
            routes = self.received_routes()
            if predicate(routes):  # type: ignore[operator]
                return routes
            time.sleep(0.1)
        raise self.error(f"{what} not seen after {timeout}s; received: {routes}")


def route_key(r: ReceivedRoute) -> tuple[str, str, str]:
    return (r.prefix, r.peer, r.next_hop)


# ----------------------------------------------------------------------------------------------
# Kernel


def kernel_routes(ns: Namespace, prefix: str) -> list[str]:
    """Next-hop addresses of the kernel route for exactly `prefix` in `ns` (main table), sorted,
    one per path; [] when there is none. Inline multipath routes (BIRD `merge paths`) and
    nexthop objects/groups (FRR zebra, bgplb router) are both resolved."""
    net = ipaddress.ip_network(prefix)
    fam = "-6" if net.version == 6 else "-4"
    routes = json.loads(ns.exec("ip", "-j", fam, "route", "show", "exact", str(net)) or "[]")
    hops: list[str] = []

    def resolve(nhid: int, depth: int = 0) -> None:
        out = ns.exec("ip", "-j", "nexthop", "show", "id", str(nhid))
        for obj in json.loads(out or "[]"):
            if "group" in obj and depth < 4:
                for member in obj["group"]:
                    resolve(int(member["id"]), depth + 1)
            elif "gateway" in obj:
                hops.append(obj["gateway"])

    for route in routes:
        if "nhid" in route:
            resolve(int(route["nhid"]))
        elif "nexthops" in route:
            hops += [nh["gateway"] for nh in route["nexthops"] if "gateway" in nh]
        elif "gateway" in route:
            hops.append(route["gateway"])
    return sorted(hops, key=ipaddress.ip_address)
