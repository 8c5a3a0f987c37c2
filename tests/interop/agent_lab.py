"""The agent's interop lab: BIRD 2 as the router (kernel protocol, `merge paths on`; or another
daemon class, e.g. FRR, with `build_lab(..., kind=Frr)`) and two server namespaces each running
`bgplb agent` (a subprocess inside `ip netns exec`) in front of a local HTTP server
(python -m http.server) that the agent checks.

    rt  eth-s1 192.0.2.1/30  2001:db8:1::1/64  <->  s1 eth-rt 192.0.2.2/30  2001:db8:1::2/64
    rt  eth-s2 192.0.2.5/30  2001:db8:2::1/64  <->  s2 eth-rt 192.0.2.6/30  2001:db8:2::2/64

Every process started here is stopped by PID; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgplb.lab.netns import Namespace, NetnsError, Topology
from bgplb.lab.peers import Bird, Daemon, kernel_routes
from bgplb.lab.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
BGPLB = [str(ROOT / ".venv" / "bin" / "python"), "-m", "bgplb.cli_agent"]
VIP4 = "198.51.100.10/32"
VIP6 = "2001:db8:100::10/128"
ROUTER_AS = 65530
SERVER_AS = 65000


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy (return it) or fail after `timeout` seconds."""
    return wait_until(predicate, timeout, what, step=step)


@dataclass
class Server:
    name: str
    ns: Namespace
    address: str  # IPv4 on the router link
    address6: str
    router: str  # the router's address on that link
    router6: str
    workdir: Path
    http_port: int = 8080
    http: subprocess.Popen[bytes] | None = None
    agent: subprocess.Popen[bytes] | None = None
    extra_config: str = ""
    peer_extra: str = ""
    services: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: 6: the agent's [[peers]] entry is the router's IPv6 address (`router6`), not `router`
    peer_family: int = 4

    @property
    def peer_address(self) -> str:
        return self.router6 if self.peer_family == 6 else self.router

    @property
    def config_path(self) -> Path:
        return self.workdir / "agent.toml"

    @property
    def socket(self) -> Path:
        return self.workdir / "agent.sock"

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "agent.log"

    def service(
        self,
        name: str = "web",
        vips: tuple[str, ...] = (VIP4,),
        extra: str = "",
        rise: int = 2,
        fall: int = 2,
        interval: str = "200ms",
        timeout: str = "150ms",
    ) -> str:
        vip_list = ", ".join(f'"{v}"' for v in vips)
        return f"""
[[services]]
name = "{name}"
vips = [{vip_list}]
drain_time = "2s"
drain_vip_linger = "3s"
{extra}
[[services.checks]]
type = "http"
url = "http://127.0.0.1:{self.http_port}/"
interval = "{interval}"
timeout = "{timeout}"
rise = {rise}
fall = {fall}
damping = false
"""

    def write_config(self, services: str | None = None) -> None:
        if services is not None:
            self.services = services
        self.config_path.write_text(
            f"""
[bgp]
asn = {SERVER_AS}
router_id = "{self.address}"
hold_time = 3
graceful_restart_time = 5
shutdown_drain_time = "2s"
{self.extra_config}
[[peers]]
address = "{self.peer_address}"
asn = {ROUTER_AS}
{self.peer_extra}
{self.services}
[control]
socket = "{self.socket}"
metrics = "off"
"""
        )

    def start_http(self) -> None:
        www = self.workdir / "www"
        www.mkdir(exist_ok=True)
        (www / "index.html").write_text(f"Welcome to {self.name}\n")
        self.http = self.ns.popen(
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(www),
            str(self.http_port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(self.http)
        wait_for(
            lambda: (
                "LISTEN" in self.ns.exec("ss", "-Htln", f"sport = :{self.http_port}")
                or ":" + str(self.http_port) in self.ns.exec("ss", "-Htln")
            ),
            10,
            f"{self.name} HTTP server",
        )

    def stop_http(self) -> None:
        if self.http is not None and self.http.poll() is None:
            self.http.terminate()
            self.http.wait(5)
        self.http = None

    def start_agent(self) -> None:
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.agent = self.ns.popen(
            *BGPLB,
            "agent",
            "-c",
            str(self.config_path),
            "--state-file",
            str(self.state_file),
            "--log-level",
            "info",
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        self.procs.append(self.agent)
        wait_for(lambda: self.socket.exists() or self.agent.poll() is not None, 15, "agent socket")
        assert self.agent.poll() is None, self.log_tail()

    def signal(self, sig: int) -> None:
        assert self.agent is not None
        # `ip netns exec` execs the command, so the PID is the agent's own.
        self.agent.send_signal(sig)

    def wait_exit(self, timeout: float = 15) -> int:
        assert self.agent is not None
        try:
            return self.agent.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"agent did not exit in {timeout}s\n{self.log_tail()}") from None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        proc = subprocess.run(
            self.ns.cmd(*BGPLB, *args), capture_output=True, text=True, timeout=20, env=env
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"bgplb {' '.join(args)}: {proc.stderr}\n{self.log_tail()}")
        return proc

    def status(self) -> dict[str, Any]:
        return json.loads(self.cli("status", "--json", "--socket", str(self.socket)).stdout)

    def has_vip(self, vip: str) -> bool:
        fam = "-6" if ":" in vip else "-4"
        out = self.ns.exec("ip", "-j", fam, "addr", "show", "dev", "lo")
        addr = vip.split("/")[0]
        return any(
            a.get("local") == addr for i in json.loads(out or "[]") for a in i.get("addr_info", [])
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no agent log)"
        return f"--- {self.name} agent log ---\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.kill()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        self.procs.clear()


@dataclass
class AgentLab:
    topo: Topology
    router: Namespace
    daemon: Daemon  # the router's BGP daemon (BIRD unless build_lab got another `kind`)
    servers: list[Server]

    @property
    def bird(self) -> Bird:
        assert isinstance(self.daemon, Bird), self.daemon
        return self.daemon

    def start(self, services: str | None = None) -> None:
        """Start BIRD, then on every server its config (`services`, default one service), HTTP
        server and agent; return when every server's BGP session is established."""
        self.bird.start()
        for s in self.servers:
            s.write_config(services if services is not None else s.service())
            s.start_http()
            s.start_agent()
        for s in self.servers:
            self.bird.wait_established(s.address, timeout=20)

    def nexthops(self, prefix: str = VIP4) -> list[str]:
        return kernel_routes(self.router, prefix)

    def try_nexthops(self, prefix: str = VIP4) -> list[str] | None:
        """nexthops(), or None when a nexthop object went away between two reads (FRR's zebra
        replaces its groups): poll again."""
        try:
            return self.nexthops(prefix)
        except NetnsError:
            return None

    def wait_nexthops(self, expected: list[str], prefix: str = VIP4, timeout: float = 20) -> None:
        try:
            wait_for(lambda: self.try_nexthops(prefix) == sorted(expected), timeout, "nexthops")
        except AssertionError as exc:
            logs = "\n".join(s.log_tail() for s in self.servers)
            raise AssertionError(
                f"{exc}: router has {self.try_nexthops(prefix)}, want {sorted(expected)}\n{logs}"
            ) from None

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        self.daemon.stop()
        for server in self.servers:
            shutil.rmtree(server.workdir, ignore_errors=True)


def add_servers(topo: Topology, router: Namespace, count: int = 2) -> list[Server]:
    """`count` server namespaces s1.. linked to `router` (layout in the module docstring);
    nothing is started."""
    servers = []
    for i in range(1, count + 1):
        ns = topo.add(f"s{i}")
        base = 4 * (i - 1)
        topo.link(
            router,
            ns,
            [f"192.0.2.{base + 1}/30", f"2001:db8:{i}::1/64"],
            [f"192.0.2.{base + 2}/30", f"2001:db8:{i}::2/64"],
            f"eth-s{i}",
            "eth-rt",
        )
        workdir = Path(tempfile.mkdtemp(prefix=f"bgplb-agent-s{i}-"))
        servers.append(
            Server(
                f"s{i}",
                ns,
                f"192.0.2.{base + 2}",
                f"2001:db8:{i}::2",
                f"192.0.2.{base + 1}",
                f"2001:db8:{i}::1",
                workdir,
            )
        )
    return servers


def build_lab(
    topo: Topology,
    daemons: Callable[..., Any],
    *,
    password: str | None = None,
    graceful_restart: bool = False,
    kind: type[Daemon] = Bird,
) -> AgentLab:
    """Router + 2 servers, the router's daemon (BIRD unless `kind`) configured (not started)
    with both agents as passive peers."""
    router = topo.add("rt")
    router.sysctl("net.ipv4.ip_forward", 1)
    router.sysctl("net.ipv6.conf.all.forwarding", 1)
    bird = daemons(kind, router, ROUTER_AS, "192.0.2.1")
    servers = add_servers(topo, router)
    for server in servers:
        if password:
            server.peer_extra = f'password = "{password}"'
        if not graceful_restart:
            server.extra_config = "graceful_restart = false"
        bird.add_neighbor(
            server.address,
            SERVER_AS,
            passive=True,
            password=password,
            graceful_restart=graceful_restart,
        )
    return AgentLab(topo, router, bird, servers)


def stop_signal() -> int:
    return signal.SIGTERM
