"""Real BGP daemons (BIRD 2, FRR, GoBGP, ExaBGP) run inside a network namespace.

One small, uniform API for the interop tests, the lab and the demo (`--router bird|frr`):

    with Bird(ns, workdir, asn=65530, router_id="192.0.2.1") as bird:
        bird.add_neighbor("192.0.2.11", 65000, hold_time=3)
        bird.announce("198.51.100.0/24", communities=["65530:1"])
        bird.start()
        bird.wait_established("192.0.2.11", timeout=15)
        routes = bird.received_routes()

Each daemon runs in the foreground as a child process of ours (so `stop()` signals exactly that
PID), writes its log into `workdir`, and is queried through its own control channel: `birdc -s`,
`vtysh --vty_socket`, `gobgp --target unix://…`, and for ExaBGP the JSON lines of an API process.
Every failure raises `PeerError` naming what failed, with the tail of the daemon's log.
Facts about running these daemons here are in /work/shared/INTEROP-NOTES.md.
"""

from __future__ import annotations

import ipaddress
import json
import os
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
from typing import ClassVar

from bgplb.lab.netns import Namespace

__all__ = [
    "Announcement",
    "Bird",
    "Daemon",
    "ExaBgp",
    "Frr",
    "GoBgp",
    "Neighbor",
    "PeerError",
    "ReceivedRoute",
    "kernel_routes",
]

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
    """Return a standard community as "ASN:VALUE" whatever name or form a daemon printed."""
    text = text.strip().strip("()").replace(",", ":").replace(" ", "")
    return WELL_KNOWN_COMMUNITIES.get(text.lower(), text)


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

    def __enter__(self) -> Daemon:
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


# ----------------------------------------------------------------------------------------------
# BIRD 2


class Bird(Daemon):
    """BIRD 2: `bird -f -c CONF -s SOCK`; `birdc -s SOCK`. Installs received routes in the
    kernel (one multipath route per prefix) when `kernel=True`."""

    name = "bird"

    def __init__(
        self,
        ns: Namespace,
        workdir: Path,
        asn: int,
        router_id: str,
        *,
        listen_port: int = 179,
        kernel: bool = True,
    ) -> None:
        super().__init__(ns, workdir, asn, router_id, listen_port=listen_port)
        self.kernel = kernel
        self.conf_path = self.workdir / "bird.conf"
        self.socket = self.rundir / "bird.ctl"

    def _write_config(self) -> None:
        self.conf_path.write_text(self.config_text())

    def _proto(self, address: str) -> str:
        return "n_" + re.sub(r"[^0-9a-fA-F]", "_", address)

    def config_text(self) -> str:
        """The bird.conf this instance runs with."""
        out = [
            f"log stderr all;\nrouter id {self.router_id};\n",
            "protocol device { scan time 10; }\n",
        ]
        if self.kernel:
            for fam in FAMILIES:
                out.append(
                    f"protocol kernel k_{fam} {{ {fam} {{ import none; "
                    f"export where source = RTS_BGP; }}; merge paths on; learn off; }}\n"
                )
        if any(nb.bfd for nb in self.neighbors.values()):
            out.append('protocol bfd { interface "*" { interval 100 ms; multiplier 3; }; }\n')
        for fam in FAMILIES:
            routes = [a for a in self.announcements.values() if a.family == fam]
            if not routes:
                continue
            out.append(f"protocol static s_{fam} {{\n  {fam};\n")
            for a in routes:
                attrs = [f"bgp_community.add(({c.replace(':', ',')}));" for c in a.communities]
                attrs += [
                    f"bgp_large_community.add(({c.replace(':', ',')}));"
                    for c in a.large_communities
                ]
                if a.med is not None:
                    attrs.append(f"bgp_med = {a.med};")
                via = f"via {a.next_hop}" if a.next_hop else "blackhole"
                out.append(f"  route {a.prefix} {via} {{ {' '.join(attrs)} }};\n")
            out.append("}\n")
        for nb in self.neighbors.values():
            opts = [
                f"local as {self.asn};",
                f"neighbor {nb.address} port {nb.port} as {nb.asn};",
                f"hold time {nb.hold_time};",
                "connect delay time 1;",
                "connect retry time 1;",
                "error wait time 1, 5;",
            ]
            if self.listen_port != 179 or nb.local_address:
                src = f"{nb.local_address} " if nb.local_address else ""
                opts.append(f"local {src}port {self.listen_port};")
            if nb.hold_time:
                opts.append(f"keepalive time {max(1, nb.hold_time // 3)};")
            if nb.password is not None:
                opts.append(f'password "{nb.password}";')
            if nb.passive:
                opts.append("passive on;")
            if nb.multihop is not None:
                opts.append(f"multihop {nb.multihop};")
            if nb.bfd:
                opts.append("bfd on;")
            if nb.graceful_restart:
                opts.append("graceful restart on;")
            for fam in nb.families:
                opts.append(f"{fam} {{ import all; export where source = RTS_STATIC; }};")
            body = "\n  ".join(opts)
            out.append(f"protocol bgp {self._proto(nb.address)} {{\n  {body}\n}}\n")
        return "".join(out)

    def _commands(self) -> list[list[str]]:
        if self.socket.exists():
            self.socket.unlink()
        return [["bird", "-f", "-c", str(self.conf_path), "-s", str(self.socket)]]

    def _cli(self, *args: str) -> list[str]:
        return ["birdc", "-s", str(self.socket), *args]

    def _ready(self) -> bool:
        if not self.socket.exists():
            return False
        proc = subprocess.run(
            self._cli("show", "status"), capture_output=True, text=True, timeout=5
        )
        return "Daemon is up and running" in proc.stdout

    def _reload(self) -> None:
        self._write_config()
        out = self.control("configure")
        if "Reconfigured" not in out and "Reconfiguration in progress" not in out:
            raise self.error(f"birdc configure: {out.strip()}")

    def neighbor_state(self, address: str) -> str:
        address = str(ipaddress.ip_address(address))
        out = self.control("show", "protocols", self._proto(address))
        for line in out.splitlines():
            fields = line.split()
            if fields and fields[0] == self._proto(address):
                # "name BGP --- state since info", info e.g. "Established", "Active  Socket: …"
                m = _BGP_STATE.search(line)
                return (m.group(1) if m else fields[3]).lower()
        return "unknown"

    def received_routes(self) -> list[ReceivedRoute]:
        out = self.control("show", "route", "all", "where", "source = RTS_BGP")
        protos = {self._proto(a): a for a in self.neighbors}
        return sorted(parse_bird_routes(out, protos), key=_route_key)


_BGP_STATE = re.compile(r"\b(Idle|Connect|Active|OpenSent|OpenConfirm|Established|Close)\b")
_BIRD_ROUTE = re.compile(r"^(\S+)?\s+(?:unicast|unreachable|blackhole|prohibited)\s+\[(\S+)\s")


def parse_bird_routes(text: str, protos: dict[str, str]) -> list[ReceivedRoute]:
    """Parse `birdc show route all` (BIRD 2.0): a prefix line, then for each path a header
    line (prefix omitted for the 2nd+ path), `via` lines, and `\\tName: value` attributes whose
    long int-sets continue on `\\t\\t` lines. `protos` maps protocol names to peer addresses."""
    routes: list[ReceivedRoute] = []
    prefix = ""
    cur: dict[str, object] | None = None
    last_attr = ""

    def flush() -> None:
        if cur is not None:
            attrs: dict[str, str] = cur["attrs"]  # type: ignore[assignment]
            nh = attrs.get("BGP.next_hop", "").split()
            routes.append(
                ReceivedRoute(
                    prefix=str(cur["prefix"]),
                    next_hop=nh[0] if nh else "",
                    as_path=[int(x) for x in re.findall(r"\d+", attrs.get("BGP.as_path", ""))],
                    communities=[
                        f"{a}:{b}"
                        for a, b in re.findall(
                            r"\((\d+),\s*(\d+)\)", attrs.get("BGP.community", "")
                        )
                    ],
                    large_communities=[
                        f"{a}:{b}:{c}"
                        for a, b, c in re.findall(
                            r"\((\d+),\s*(\d+),\s*(\d+)\)", attrs.get("BGP.large_community", "")
                        )
                    ],
                    med=int(attrs["BGP.med"]) if "BGP.med" in attrs else None,
                    peer=str(cur["peer"]),
                )
            )

    for line in text.splitlines():
        if not line.strip() or line.startswith(("BIRD ", "Table ")):
            continue
        m = _BIRD_ROUTE.match(line)
        if m:
            flush()
            prefix = m.group(1) or prefix
            proto = m.group(2)
            cur = {"prefix": prefix, "peer": protos.get(proto, proto), "attrs": {}}
            continue
        if cur is None:
            continue
        attrs = cur["attrs"]
        assert isinstance(attrs, dict)
        if line.startswith("\t\t") and last_attr:
            attrs[last_attr] += " " + line.strip()
        elif line.startswith("\t") and ":" in line and not line.startswith("\tvia"):
            key, _, value = line.strip().partition(": ")
            last_attr = key.rstrip(":")
            attrs[last_attr] = value.strip()
    flush()
    return routes


def _route_key(r: ReceivedRoute) -> tuple[str, str, str]:
    return (r.prefix, r.peer, r.next_hop)


# ----------------------------------------------------------------------------------------------
# GoBGP


_GOBGP_STATES = {
    0: "unknown",
    1: "idle",
    2: "connect",
    3: "active",
    4: "opensent",
    5: "openconfirm",
    6: "established",
}


class GoBgp(Daemon):
    """GoBGP: `gobgpd -f CONF` with its gRPC API on a unix socket in `workdir`; routes are
    originated with `gobgp global rib add` (also live). A speaker only: no kernel routes,
    no BFD."""

    name = "gobgp"

    def __init__(
        self, ns: Namespace, workdir: Path, asn: int, router_id: str, *, listen_port: int = 179
    ) -> None:
        super().__init__(ns, workdir, asn, router_id, listen_port=listen_port)
        self.conf_path = self.workdir / "gobgpd.toml"
        self.socket = self.rundir / "gobgp.sock"

    def _check_neighbor(self, nb: Neighbor) -> None:
        if nb.bfd:
            raise NotImplementedError("GoBGP has no BFD")

    def config_text(self) -> str:
        """The gobgpd.toml this instance runs with."""
        out = [
            f'[global.config]\n  as = {self.asn}\n  router-id = "{self.router_id}"\n'
            f"  port = {self.listen_port}\n"
        ]
        for nb in self.neighbors.values():
            out.append(
                f"\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = "
                f'"{nb.address}"\n    peer-as = {nb.asn}\n'
            )
            if nb.password is not None:
                out.append(f"    auth-password = {json.dumps(nb.password)}\n")
            keepalive = max(1, nb.hold_time // 3) if nb.hold_time else 0
            out.append(
                f"  [neighbors.timers.config]\n    hold-time = {nb.hold_time}\n"
                f"    keepalive-interval = {keepalive}\n    connect-retry = 1\n"
                f"    idle-hold-time-after-reset = 1\n"
            )
            out.append(
                f"  [neighbors.transport.config]\n    remote-port = {nb.port}\n"
                f"    passive-mode = {str(nb.passive).lower()}\n"
            )
            if nb.local_address:
                out.append(f'    local-address = "{nb.local_address}"\n')
            if nb.multihop is not None:
                out.append(
                    f"  [neighbors.ebgp-multihop.config]\n    enabled = true\n"
                    f"    multihop-ttl = {nb.multihop}\n"
                )
            if nb.graceful_restart:
                out.append(
                    "  [neighbors.graceful-restart.config]\n    enabled = true\n"
                    "    restart-time = 30\n"
                )
            for fam in nb.families:
                out.append(
                    f"  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n"
                    f'      afi-safi-name = "{fam}-unicast"\n'
                )
                if nb.graceful_restart:
                    out.append(
                        "    [neighbors.afi-safis.mp-graceful-restart.config]\n"
                        "      enabled = true\n"
                    )
        return "".join(out)

    def _write_config(self) -> None:
        self.conf_path.write_text(self.config_text())

    def _commands(self) -> list[list[str]]:
        if self.socket.exists():
            self.socket.unlink()
        return [
            [
                "gobgpd",
                "-f",
                str(self.conf_path),
                "-p",
                "--pprof-disable",
                f"--api-hosts=unix://{self.socket}",
            ]
        ]

    def _cli(self, *args: str) -> list[str]:
        return ["gobgp", "--target", f"unix://{self.socket}", *args]

    def _ready(self) -> bool:
        if not self.socket.exists():
            return False
        proc = subprocess.run(self._cli("-j", "global"), capture_output=True, text=True, timeout=5)
        return proc.returncode == 0 and '"asn"' in proc.stdout

    def _after_start(self) -> None:
        for ann in self.announcements.values():
            self._announce_live(ann)

    def _announce_live(self, ann: Announcement) -> None:
        nh = ann.next_hop or ("::" if ann.family == "ipv6" else "0.0.0.0")
        args = ["global", "rib", "add", ann.prefix, "nexthop", nh]
        if ann.communities:
            args += ["community", ",".join(ann.communities)]
        if ann.large_communities:
            args += ["large-community", ",".join(ann.large_communities)]
        if ann.med is not None:
            args += ["med", str(ann.med)]
        self.control(*args, "-a", ann.family)

    def _withdraw_live(self, ann: Announcement) -> None:
        self.control("global", "rib", "del", ann.prefix, "-a", ann.family)

    def neighbor_state(self, address: str) -> str:
        data = json.loads(self.control("-j", "neighbor", str(ipaddress.ip_address(address))))
        state = data.get("state", {}).get("session_state", 0)
        return _GOBGP_STATES.get(state, str(state)) if isinstance(state, int) else str(state)

    def received_routes(self) -> list[ReceivedRoute]:
        routes: list[ReceivedRoute] = []
        for nb in self.neighbors.values():
            if self.neighbor_state(nb.address) != "established":
                continue
            for fam in nb.families:
                out = self.control("-j", "neighbor", nb.address, "adj-in", "-a", fam)
                # adj-in also holds paths that loop detection (RFC 4271 §9.1.2) rejected
                routes += [r for r in parse_gobgp_rib(out, nb.address) if self.asn not in r.as_path]
        return sorted(routes, key=_route_key)


def parse_gobgp_rib(text: str, peer: str) -> list[ReceivedRoute]:
    """Parse `gobgp -j … rib`/`adj-in` JSON: {prefix: [path, …]} with numeric attribute types."""
    text = text.strip()
    if not text or text == "null":
        return []
    routes = []
    for prefix, paths in json.loads(text).items():
        for path in paths:
            nh, as_path, comms, large, med = "", [], [], [], None
            for attr in path.get("attrs", []):
                kind = attr.get("type")
                if kind == 2:
                    for seg in attr.get("as_paths", []):
                        as_path += seg.get("asns", [])
                elif kind in (3, 14):
                    nh = attr.get("nexthop", nh)
                elif kind == 4:
                    med = attr.get("metric")
                elif kind == 8:
                    comms = [f"{c >> 16}:{c & 0xFFFF}" for c in attr.get("communities", [])]
                elif kind == 32:
                    large = [
                        f"{v['ASN']}:{v['LocalData1']}:{v['LocalData2']}"
                        for v in attr.get("value", [])
                    ]
            routes.append(
                ReceivedRoute(prefix, nh, as_path, comms, large, med, path.get("neighbor-ip", peer))
            )
    return routes


# ----------------------------------------------------------------------------------------------
# FRR


class Frr(Daemon):
    """FRR 8: zebra + bgpd (+ bfdd when a neighbor has `bfd`) as user frr, with a private
    frr-owned run directory for vty sockets, pid files and zserv.api; `vtysh --vty_socket`.
    zebra installs received routes in the kernel (ECMP as nexthop objects)."""

    name = "frr"
    sbin: ClassVar[Path] = Path("/usr/lib/frr")

    def __init__(
        self,
        ns: Namespace,
        workdir: Path,
        asn: int,
        router_id: str,
        *,
        listen_port: int = 179,
        maximum_paths: int = 64,
    ) -> None:
        super().__init__(ns, workdir, asn, router_id, listen_port=listen_port)
        self.maximum_paths = maximum_paths
        self.conf_path = self.workdir / "bgpd.conf"

    def config_text(self) -> str:
        """The bgpd.conf this instance runs with."""
        out = [
            "frr defaults traditional",
            f"hostname {self.ns.name}",
            "log stdout informational",
            "!",
            f"router bgp {self.asn}",
            f" bgp router-id {self.router_id}",
            " no bgp ebgp-requires-policy",
            " no bgp default ipv4-unicast",
            " no bgp network import-check",
            " bgp bestpath as-path multipath-relax",
        ]
        if any(nb.graceful_restart for nb in self.neighbors.values()):
            out.append(" bgp graceful-restart")
        for nb in self.neighbors.values():
            n = f" neighbor {nb.address}"
            out += [
                f"{n} remote-as {nb.asn}",
                f"{n} timers connect 1",
                f"{n} advertisement-interval 0",
            ]
            out.append(
                f"{n} timers {max(1, nb.hold_time // 3) if nb.hold_time else 0} {nb.hold_time}"
            )
            if nb.port != 179:
                out.append(f"{n} port {nb.port}")
            if nb.password is not None:
                out.append(f"{n} password {nb.password}")
            if nb.passive:
                out.append(f"{n} passive")
            if nb.multihop is not None:
                out.append(f"{n} ebgp-multihop {nb.multihop}")
            if nb.local_address:
                out.append(f"{n} update-source {nb.local_address}")
            if nb.bfd:
                out.append(f"{n} bfd")
        maps: list[str] = []
        for fam in FAMILIES:
            out.append(f" address-family {fam} unicast")
            out.append(f"  maximum-paths {self.maximum_paths}")
            for i, a in enumerate(self.announcements.values()):
                if a.family != fam:
                    continue
                out.append(f"  network {a.prefix} route-map ANNOUNCE-{i}")
                maps += [f"route-map ANNOUNCE-{i} permit 10"]
                if a.communities:
                    maps.append(f" set community {' '.join(a.communities)}")
                if a.large_communities:
                    maps.append(f" set large-community {' '.join(a.large_communities)}")
                if a.med is not None:
                    maps.append(f" set metric {a.med}")
                if a.next_hop:
                    kw = "ipv6 next-hop global" if fam == "ipv6" else "ip next-hop"
                    maps.append(f" set {kw} {a.next_hop}")
                maps.append("!")
            for nb in self.neighbors.values():
                if fam in nb.families:
                    out.append(f"  neighbor {nb.address} activate")
            out.append(" exit-address-family")
        head, bgp = out[:4], out[4:]
        return "\n".join([*head, *maps, *bgp, "!", ""])

    def _write_config(self) -> None:
        text = self.config_text()
        self.conf_path.write_text(text)
        (self.rundir / "bgpd.conf").write_text(text)
        shutil.chown(self.rundir, "frr", "frr")
        shutil.chown(self.rundir / "bgpd.conf", "frr", "frr")

    def _common(self, daemon: str) -> list[str]:
        return [
            str(self.sbin / daemon),
            "-u",
            "frr",
            "-g",
            "frr",
            "--vty_socket",
            str(self.rundir),
            "-i",
            str(self.rundir / f"{daemon}.pid"),
        ]

    def _commands(self) -> list[list[str]]:
        zserv = ["-z", str(self.rundir / "zserv.api")]
        cmds = [[*self._common("zebra"), *zserv, "-f", "/dev/null"]]
        if any(nb.bfd for nb in self.neighbors.values()):
            cmds.append(
                [
                    *self._common("bfdd"),
                    "--bfdctl",
                    str(self.rundir / "bfdd.sock"),
                    "-f",
                    "/dev/null",
                ]
            )
        cmds.append(
            [
                *self._common("bgpd"),
                *zserv,
                "-p",
                str(self.listen_port),
                "-f",
                str(self.rundir / "bgpd.conf"),
            ]
        )
        return cmds

    def _spawned(self, proc: subprocess.Popen[bytes]) -> bool:
        daemon = Path(str(proc.args[4] if isinstance(proc.args, list) else "")).name
        return (self.rundir / f"{daemon}.vty").exists()

    def _cli(self, *args: str) -> list[str]:
        cmd = ["vtysh", "--vty_socket", str(self.rundir)]
        for arg in args:
            cmd += ["-c", arg]
        return cmd

    def _ready(self) -> bool:
        proc = subprocess.run(
            self._cli("show bgp summary json"), capture_output=True, text=True, timeout=5
        )
        return proc.returncode == 0 and proc.stdout.lstrip().startswith("{")

    def _reload(self) -> None:
        # Re-apply the whole `router bgp` block: vtysh accepts the same lines as the file.
        lines = [
            ln
            for ln in self.config_text().splitlines()
            if ln and ln != "!" and not ln.startswith(("frr ", "hostname", "log "))
        ]
        self.control("configure terminal", *lines, "end")

    def _withdraw_live(self, ann: Announcement) -> None:
        self.control(
            "configure terminal",
            f"router bgp {self.asn}",
            f"address-family {ann.family} unicast",
            f"no network {ann.prefix}",
            "end",
        )

    def neighbor_state(self, address: str) -> str:
        address = str(ipaddress.ip_address(address))
        data = json.loads(self.control(f"show bgp neighbors {address} json"))
        return str(data.get(address, {}).get("bgpState", "unknown")).lower()

    def received_routes(self) -> list[ReceivedRoute]:
        routes: list[ReceivedRoute] = []
        for fam in FAMILIES:
            table = json.loads(self.control(f"show bgp {fam} unicast json")).get("routes", {})
            prefixes = [
                p
                for p, paths in table.items()
                if any(x.get("peerId") not in _FRR_LOCAL for x in paths)
            ]
            if prefixes:
                out = self.control(*(f"show bgp {fam} unicast {p} json" for p in prefixes))
                routes += parse_frr_detail(out)
        return sorted(routes, key=_route_key)


_FRR_LOCAL = ("(unspec)", "0.0.0.0", "::")


def parse_frr_detail(text: str) -> list[ReceivedRoute]:
    """Parse concatenated `show bgp <afi> unicast <prefix> json` objects (FRR 8)."""
    routes = []
    decoder = json.JSONDecoder()
    pos = 0
    text = text.strip()
    while pos < len(text):
        obj, end = decoder.raw_decode(text, pos)
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
        for path in obj.get("paths", []):
            peer = path.get("peer", {}).get("peerId", "")
            if peer in _FRR_LOCAL:
                continue
            nhs = path.get("nexthops", [])
            nh = next((n["ip"] for n in nhs if n.get("scope", "global") == "global"), "")
            as_path = [
                asn
                for seg in path.get("aspath", {}).get("segments", [])
                for asn in seg.get("list", [])
            ]
            routes.append(
                ReceivedRoute(
                    prefix=obj["prefix"],
                    next_hop=nh,
                    as_path=as_path,
                    communities=[
                        normalize_community(c) for c in path.get("community", {}).get("list", [])
                    ],
                    large_communities=list(path.get("largeCommunity", {}).get("list", [])),
                    med=path.get("metric"),
                    peer=peer,
                )
            )
    return routes


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
    return sorted(hops)


# ----------------------------------------------------------------------------------------------
# ExaBGP

#: The API process ExaBGP runs: its stdin (ExaBGP's JSON messages) is appended to a file, and
#: lines written to a FIFO are passed to its stdout (ExaBGP's command channel).
_EXABGP_API = """\
import os, sys, threading
received, fifo, ready = sys.argv[1:4]
def commands():
    with os.fdopen(os.open(fifo, os.O_RDWR)) as f:
        for line in f:
            sys.stdout.write(line)
            sys.stdout.flush()
threading.Thread(target=commands, daemon=True).start()
open(ready, "w").close()
with open(received, "a", buffering=1) as out:
    for line in sys.stdin:
        out.write(line)
"""

_SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class ExaBgp(Daemon):
    """ExaBGP 4.2 (Debian's /usr/sbin/exabgp, system Python, run as root without dropping
    privileges). What it receives is read from the JSON lines of its API process; `announce`
    and `withdraw` also work live through that process. No BFD, no kernel routes."""

    name = "exabgp"
    binary: ClassVar[str] = "/usr/sbin/exabgp"
    python: ClassVar[str] = "/usr/bin/python3"

    def __init__(
        self, ns: Namespace, workdir: Path, asn: int, router_id: str, *, listen_port: int = 179
    ) -> None:
        super().__init__(ns, workdir, asn, router_id, listen_port=listen_port)
        self.conf_path = self.workdir / "exabgp.conf"
        self.received_path = self.workdir / "received.jsonl"

    @property
    def fifo(self) -> Path:
        return self.rundir / "commands"

    def _check_neighbor(self, nb: Neighbor) -> None:
        if nb.bfd:
            raise NotImplementedError("ExaBGP has no BFD")

    def _local_address(self, nb: Neighbor) -> str:
        if nb.local_address:
            return nb.local_address
        out = json.loads(self.ns.exec("ip", "-j", "route", "get", nb.address))
        if not out or "prefsrc" not in out[0]:
            raise self.error(f"no local address towards {nb.address}: {out}")
        return str(out[0]["prefsrc"])

    @staticmethod
    def _route_args(a: Announcement) -> str:
        words = [a.prefix, "next-hop", a.next_hop or "self"]
        if a.communities:
            words += ["community", f"[ {' '.join(a.communities)} ]"]
        if a.large_communities:
            words += ["large-community", f"[ {' '.join(a.large_communities)} ]"]
        if a.med is not None:
            words += ["med", str(a.med)]
        return " ".join(words)

    def config_text(self) -> str:
        """The exabgp.conf this instance runs with (needs the namespace for local addresses)."""
        api = [
            self.python,
            str(self.workdir / "exabgp_api.py"),
            str(self.received_path),
            str(self.fifo),
            str(self.rundir / "api.ready"),
        ]
        out = [f"process bgplb-api {{\n  run {' '.join(api)};\n  encoder json;\n}}\n"]
        for nb in self.neighbors.values():
            local = self._local_address(nb)
            lines = [
                f"router-id {self.router_id};",
                f"local-address {local};",
                f"local-as {self.asn};",
                f"peer-as {nb.asn};",
                f"hold-time {nb.hold_time};",
                "group-updates false;",
            ]
            if nb.password is not None:
                lines.append(f"md5-password {json.dumps(nb.password)};")
            if nb.passive:
                lines += ["passive true;", f"listen {self.listen_port};"]
            if nb.port != 179:
                lines.append(f"connect {nb.port};")
            if nb.multihop is not None:
                lines.append(f"outgoing-ttl {nb.multihop};")
            lines.append("family { " + " ".join(f"{f} unicast;" for f in nb.families) + " }")
            if nb.graceful_restart:
                lines.append("capability { graceful-restart 30; }")
            lines.append(
                "api { processes [ bgplb-api ]; neighbor-changes; receive { parsed; update; } }"
            )
            statics = [
                f"route {self._route_args(a)};"
                for a in self.announcements.values()
                if a.family in nb.families
            ]
            if statics:
                lines.append("static {\n    " + "\n    ".join(statics) + "\n  }")
            out.append(f"neighbor {nb.address} {{\n  " + "\n  ".join(lines) + "\n}\n")
        return "".join(out)

    def _write_config(self) -> None:
        self.conf_path.write_text(self.config_text())
        (self.workdir / "exabgp_api.py").write_text(_EXABGP_API)
        self.received_path.write_text("")
        os.mkfifo(self.fifo)

    def _env(self) -> dict[str, str]:
        return {
            "PATH": _SYSTEM_PATH,
            "exabgp.daemon.user": "root",
            "exabgp.daemon.drop": "false",
            "exabgp.daemon.daemonize": "false",
            "exabgp.api.cli": "false",
            "exabgp.api.ack": "false",
            "exabgp.log.destination": "stdout",
            "exabgp.tcp.bind": "",
            "exabgp.tcp.port": str(self.listen_port),
        }

    def _commands(self) -> list[list[str]]:
        return [[self.binary, str(self.conf_path)]]

    def _ready(self) -> bool:
        return (self.rundir / "api.ready").exists()

    def command(self, line: str) -> None:
        """Send one API command (e.g. "announce route …") to the running ExaBGP."""
        try:
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise self.error(f"API process not reading {self.fifo}: {exc}") from exc
        with os.fdopen(fd, "w") as f:
            f.write(line.rstrip("\n") + "\n")

    def _announce_live(self, ann: Announcement) -> None:
        self.command(f"announce route {self._route_args(ann)}")

    def _withdraw_live(self, ann: Announcement) -> None:
        self.command(f"withdraw route {ann.prefix} next-hop {ann.next_hop or 'self'}")

    def _messages(self) -> list[dict[str, object]]:
        messages = []
        for line in self.received_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    messages.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line being written right now
        return messages

    def neighbor_state(self, address: str) -> str:
        address = str(ipaddress.ip_address(address))
        state = "idle"
        for msg in self._messages():
            nb = msg.get("neighbor")
            if msg.get("type") == "state" and isinstance(nb, dict) and _exa_peer(nb) == address:
                state = str(nb.get("state", state))
        return "established" if state == "up" else state

    def received_routes(self) -> list[ReceivedRoute]:
        # ExaBGP does no AS-path loop detection (RFC 4271 §9.1.2): drop what a router would
        routes = exabgp_rib(self._messages()).values()
        return sorted((r for r in routes if self.asn not in r.as_path), key=_route_key)


def _exa_peer(nb: dict[str, object]) -> str:
    addr = nb.get("address", {})
    return str(ipaddress.ip_address(addr.get("peer", ""))) if isinstance(addr, dict) else ""


def exabgp_rib(messages: Iterable[dict[str, object]]) -> dict[tuple[str, str], ReceivedRoute]:
    """Replay ExaBGP 4.2 JSON messages (state + parsed update) into {(peer, prefix): route}."""
    rib: dict[tuple[str, str], ReceivedRoute] = {}
    for msg in messages:
        nb = msg.get("neighbor")
        if not isinstance(nb, dict):
            continue
        peer = _exa_peer(nb)
        if msg.get("type") == "state" and nb.get("state") != "up":
            rib = {k: v for k, v in rib.items() if k[0] != peer}
            continue
        update = nb.get("message", {}).get("update") if msg.get("type") == "update" else None
        if not isinstance(update, dict):
            continue
        for nlris in update.get("withdraw", {}).values():
            for nlri in nlris:
                rib.pop((peer, _nlri(nlri)), None)
        attr = update.get("attribute", {})
        seen: set[str] = set()
        for by_nh in update.get("announce", {}).values():
            for nh, nlris in by_nh.items():
                for nlri in nlris:
                    prefix = _nlri(nlri)
                    # an IPv6 global + link-local next hop lists each NLRI under both
                    if prefix in seen and ipaddress.ip_address(nh).is_link_local:
                        continue
                    seen.add(prefix)
                    rib[(peer, prefix)] = ReceivedRoute(
                        prefix=prefix,
                        next_hop=nh,
                        as_path=[int(a) for a in attr.get("as-path", [])],
                        communities=[
                            normalize_community(f"{c[0]}:{c[1]}") for c in attr.get("community", [])
                        ],
                        large_communities=[
                            ":".join(str(x) for x in c) for c in attr.get("large-community", [])
                        ],
                        med=attr.get("med"),
                        peer=peer,
                    )
    return rib


def _nlri(nlri: object) -> str:
    return str(nlri["nlri"] if isinstance(nlri, dict) else nlri)
