"""The demo/lab topology: client — router — srv1..srvN in network namespaces.

    client  uplink 203.0.113.10/24 2001:db8:ff::10/64  <->  router  client 203.0.113.1/24 …::1
    router  srv<i> 192.0.2.(8i+1)/29 2001:db8:<i>::1/64 <->  srv<i> uplink 192.0.2.(8i+2)/29 …::2

The router forwards with L4 multipath hashing (`fib_multipath_hash_policy=1`, IPv4 and IPv6)
and runs `bgplb router` (default), BIRD 2 or FRR (`bgplb.lab.peers`); every server runs a web
server answering "Welcome to nginx <i> !" (nginx when installed, else `bgplb.lab.webserver`) and
`bgplb agent` with an HTTP check, announcing the VIP 198.51.100.10/32 (and 2001:db8:100::10/128).

Every process is started in its own session (Ctrl-C in the terminal reaches only the demo), and
recorded with its PID and start time in a JSON state file under /run/bgplb-lab/, so that
`teardown()` — in this process or a later `bgplb lab down` — kills exactly those PIDs, then any
process still inside our namespaces, then deletes the namespaces (and with them the veths).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bgplb
from bgplb.lab.labstate import LabState, Proc, _start_time, teardown_state
from bgplb.lab.netns import Namespace, NetnsError, run
from bgplb.lab.peers import Bird, Daemon, Frr, PeerError
from bgplb.lab.webserver import welcome

VIP4 = "198.51.100.10/32"
VIP6 = "2001:db8:100::10/128"
ROUTER_AS = 65530
SERVER_AS = 65000
ROUTERS = ("bgplb", "bird", "frr")
MAX_SERVERS = 16
ROUTER_BINARIES = {
    "bird": (("bird", "birdc"), "apt-get install bird2"),
    "frr": (("/usr/lib/frr/zebra", "/usr/lib/frr/bgpd", "vtysh"), "apt-get install frr"),
}


class LabError(RuntimeError):
    """Something the user must fix (missing binary, not root…), or a step that failed."""


def server_addrs(i: int) -> tuple[str, str, str, str]:
    """(router v4, server v4, router v6, server v6) of the link to server i (1-based)."""
    return (f"192.0.2.{8 * i + 1}", f"192.0.2.{8 * i + 2}", f"2001:db8:{i}::1", f"2001:db8:{i}::2")


class LabNamespace(Namespace):
    """A Namespace whose children start in their own session (so a Ctrl-C in the terminal
    reaches only the demo, which then stops them by PID) and whose `ip` queries use `ip -n`
    (no mount namespace set-up per call: cheap enough to poll routes every few ms)."""

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs.setdefault("start_new_session", True)
        return super().popen(*args, **kwargs)

    def exec(self, *args: str, check: bool = True, timeout: float = 30.0) -> str:
        if args and args[0] == "ip":
            return run(["ip", "-n", self.name, *args[1:]], check=check, timeout=timeout)
        return super().exec(*args, check=check, timeout=timeout)


def prerequisites(router: str = "bgplb") -> str | None:
    """None when the lab can be built here, otherwise what is needed, in one message."""
    if sys.platform != "linux":
        return "the lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return (
            "the lab needs root: it creates network namespaces, veth links and routes "
            "(run it with sudo, e.g. `sudo .venv/bin/bgplb demo`)"
        )
    missing = [b for b in ("ip", "nft") if shutil.which(b) is None]
    if missing:
        return f"missing {', '.join(missing)}: apt-get install iproute2 nftables"
    if router in ROUTER_BINARIES:
        binaries, how = ROUTER_BINARIES[router]
        absent = [b for b in binaries if not (shutil.which(b) or os.access(b, os.X_OK))]
        if absent:
            return f"--router {router} needs {', '.join(absent)} ({how})"
    elif router not in ROUTERS:
        return f"unknown router {router!r}: use one of {', '.join(ROUTERS)}"
    probe = f"bgplbprobe{uuid.uuid4().hex[:6]}"
    try:
        run(["ip", "netns", "add", probe])
    except (NetnsError, OSError) as exc:
        return f"cannot create a network namespace here ({exc}); a container needs CAP_SYS_ADMIN"
    run(["ip", "netns", "del", probe], check=False)
    return None


def _python_env() -> dict[str, str]:
    src = str(Path(bgplb.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{src}:{path}" if path else src}


BGPLB = [sys.executable, "-m", "bgplb.cli"]


class Lab:
    """Builds and tears down the topology; one instance per demo run or `lab up`."""

    def __init__(
        self,
        *,
        name: str,
        servers: int = 2,
        router: str = "bgplb",
        bfd: bool = True,
        web: str = "auto",
        workdir: Path | None = None,
        hold_time: int = 3,
        check_interval_ms: int = 200,
        drain_time: float = 6.0,
        log: Callable[[str], None] = lambda text: None,
    ) -> None:
        if not 1 <= servers <= MAX_SERVERS:
            raise LabError(f"--servers must be between 1 and {MAX_SERVERS}, not {servers}")
        if web == "auto":
            web = "nginx" if shutil.which("nginx") else "builtin"
        suffix = "lab" if name == "lab" else uuid.uuid4().hex[:6]
        self.suffix = suffix
        self.log = log
        self.hold_time = hold_time
        self.check_interval_ms = check_interval_ms
        self.drain_time = drain_time
        workdir = workdir or Path(f"/tmp/bgplb-{name}-{suffix}")
        self.state = LabState(
            name=name,
            owner_pid=os.getpid(),
            router=router,
            servers=servers,
            web=web,
            bfd=bfd,
            workdir=str(workdir),
        )
        self.ns: dict[str, LabNamespace] = {}
        self.daemon: Daemon | None = None
        self.web_procs: dict[int, Proc] = {}
        self.agent_procs: dict[int, Proc] = {}
        self._popens: dict[int, subprocess.Popen[bytes]] = {}

    # -- names ---------------------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        return Path(self.state.workdir)

    @property
    def server_names(self) -> list[str]:
        return [f"srv{i}" for i in range(1, self.state.servers + 1)]

    @property
    def router_ns(self) -> LabNamespace:
        return self.ns["router"]

    @property
    def client_ns(self) -> LabNamespace:
        return self.ns["client"]

    def server_address(self, i: int) -> str:
        return server_addrs(i)[1]

    # -- building ------------------------------------------------------------------------------

    def build(self) -> None:
        """Namespaces, links, forwarding, then web servers, router and agents."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state.save()
        self._add("client")
        self._add("router")
        for name in self.server_names:
            self._add(name)
        rt = self.router_ns
        for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
            rt.sysctl(key, 1)
        for key in ("net.ipv4.fib_multipath_hash_policy", "net.ipv6.fib_multipath_hash_policy"):
            rt.sysctl(key, 1)
        self._link(rt, "client", self.client_ns, "203.0.113.1", "203.0.113.10", "2001:db8:ff::")
        self.client_ns.exec("ip", "route", "add", "default", "via", "203.0.113.1")
        self.client_ns.exec("ip", "-6", "route", "add", "default", "via", "2001:db8:ff::1")
        for i, name in enumerate(self.server_names, 1):
            r4, s4, r6, _ = server_addrs(i)
            srv = self.ns[name]
            self._link(rt, name, srv, r4, s4, f"2001:db8:{i}::", plen=29)
            srv.exec("ip", "route", "add", "default", "via", r4)
            srv.exec("ip", "-6", "route", "add", "default", "via", r6)
        self.log(
            f"namespaces {', '.join(n.name for n in self.ns.values())}; router forwards with "
            "fib_multipath_hash_policy=1 (IPv4 and IPv6)"
        )
        for i in range(1, self.state.servers + 1):
            self.start_web(i)
        self.start_router()
        for i in range(1, self.state.servers + 1):
            self.start_agent(i)

    def _add(self, short: str) -> None:
        ns = LabNamespace(f"bgplb-{short}-{self.suffix}")
        self.state.namespaces[short] = ns.name
        self.state.save()
        run(["ip", "netns", "add", ns.name])
        self.ns[short] = ns
        ns.exec("ip", "link", "set", "lo", "up")

    def _link(
        self,
        left: LabNamespace,
        left_if: str,
        right: LabNamespace,
        left4: str,
        right4: str,
        net6: str,
        plen: int = 24,
    ) -> None:
        # Create both ends directly inside the namespaces: nothing ever exists on the host.
        run(
            [
                "ip",
                "-n",
                left.name,
                "link",
                "add",
                left_if,
                "type",
                "veth",
                "peer",
                "name",
                "uplink",
                "netns",
                right.name,
            ]
        )
        host6 = "10" if left_if == "client" else "2"
        for ns, ifname, a4, a6 in (
            (left, left_if, left4, f"{net6}1"),
            (right, "uplink", right4, f"{net6}{host6}"),
        ):
            ns.sysctl(f"net.ipv6.conf.{ifname}.accept_dad", 0)
            ns.sysctl(f"net.ipv6.conf.{ifname}.keep_addr_on_down", 1)
            ns.exec("ip", "addr", "add", f"{a4}/{plen}", "dev", ifname)
            ns.exec("ip", "addr", "add", f"{a6}/64", "dev", ifname, "nodad")
            ns.exec("ip", "link", "set", ifname, "up")

    def spawn(
        self, node: str, role: str, argv: list[str], *, env: dict[str, str] | None = None
    ) -> Proc:
        """Start `argv` inside `node` (own session, output to a log file) and record it."""
        logdir = self.workdir / node
        logdir.mkdir(parents=True, exist_ok=True)
        log = logdir / f"{role}.log"
        with log.open("ab") as out:
            popen = self.ns[node].popen(
                *argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        # `ip netns exec` execs the command: this PID is the program's own.
        proc = Proc(node, role, popen.pid, _start_time(popen.pid), argv, str(log))
        self._popens[popen.pid] = popen
        self.state.procs.append(proc)
        self.state.save()
        return proc

    def _record_daemon(self, daemon: Daemon) -> None:
        for pid in daemon.pids:
            self.state.procs.append(Proc("router", daemon.name, pid, _start_time(pid), []))
        self.state.rundirs.append(str(daemon.rundir))
        self.state.save()

    # -- web servers ---------------------------------------------------------------------------

    def start_web(self, i: int) -> Proc:
        node = f"srv{i}"
        if self.state.web == "nginx":
            argv = self._nginx(i)
        else:
            argv = [sys.executable, "-m", "bgplb.lab.webserver", "--index", str(i), "--port", "80"]
        proc = self.spawn(node, "web", argv, env=_python_env())
        self.web_procs[i] = proc
        self.wait(lambda: self.web_answers(i), 10, f"the web server on {node}", proc)
        return proc

    def _nginx(self, i: int) -> list[str]:
        d = self.workdir / f"srv{i}" / "nginx"
        (d / "tmp").mkdir(parents=True, exist_ok=True)
        temps = " ".join(
            f"{k}_temp_path {d / 'tmp' / k};" for k in ("client_body", "proxy", "fastcgi")
        )
        temps += f" uwsgi_temp_path {d / 'tmp' / 'uwsgi'}; scgi_temp_path {d / 'tmp' / 'scgi'};"
        body = welcome(i).decode().replace("\n", "\\n")
        (d / "nginx.conf").write_text(
            f"daemon off;\nmaster_process on;\nworker_processes 1;\npid {d / 'nginx.pid'};\n"
            f"error_log {d / 'error.log'} warn;\nevents {{ worker_connections 512; }}\n"
            f"http {{\n  access_log off;\n  {temps}\n  keepalive_timeout 120s;\n"
            "  keepalive_requests 100000;\n  default_type text/plain;\n"
            "  server {\n    listen 80 default_server;\n    listen [::]:80 default_server;\n"
            f'    location / {{ return 200 "{body}"; }}\n  }}\n}}\n'
        )
        return ["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(d / "nginx.conf")]

    def web_answers(self, i: int) -> bool:
        """True when srv<i>'s web server answers on 127.0.0.1:80 (checked from inside)."""
        proc = subprocess.run(
            self.ns[f"srv{i}"].cmd("curl", "-s", "-m", "1", "http://127.0.0.1:80/"),
            capture_output=True,
            text=True,
            timeout=5,
        )
        return welcome(i).decode() in proc.stdout

    def stop_web(self, i: int) -> None:
        """Stop srv<i>'s web server (SIGTERM: nginx's master takes its workers with it)."""
        proc = self.web_procs.pop(i)
        proc.signal(signal.SIGTERM)
        self._reap(proc, 5)

    # -- router --------------------------------------------------------------------------------

    def start_router(self) -> None:
        kind = self.state.router
        rdir = self.workdir / "router"
        rdir.mkdir(parents=True, exist_ok=True)
        if kind == "bgplb":
            conf = rdir / "router.toml"
            conf.write_text(self.router_config())
            proc = self.spawn(
                "router", "bgplb-router", [*BGPLB, "router", "-c", str(conf)], env=_python_env()
            )
            self.wait(self.state.router_socket.exists, 15, "bgplb router's control socket", proc)
            return
        cls = Bird if kind == "bird" else Frr
        daemon: Daemon = cls(self.router_ns, rdir, ROUTER_AS, "203.0.113.1")
        for i in range(1, self.state.servers + 1):
            daemon.add_neighbor(
                self.server_address(i),
                SERVER_AS,
                passive=True,
                hold_time=self.hold_time,
                bfd=self.state.bfd,
            )
        self.daemon = daemon
        try:
            daemon.start()
        except PeerError as exc:
            raise LabError(str(exc)) from None
        finally:
            self._record_daemon(daemon)

    def router_config(self) -> str:
        bfd = "bfd = { interval_ms = 100, multiplier = 3 }\n" if self.state.bfd else ""
        return f"""# bgplb router of the lab (generated)
[bgp]
asn = {ROUTER_AS}
router_id = "203.0.113.1"
listen = ["0.0.0.0", "::"]
hold_time = {self.hold_time}
graceful_restart = false

[[peer_ranges]]
prefix = "192.0.2.0/24"
asn = {SERVER_AS}
accept = ["198.51.100.0/24 le 32", "2001:db8:100::/48 le 128"]
{bfd}
[fib]
group = "resilient"
buckets = 512
idle_timer = "1s"
unbalanced_timer = "0s"
# connection pinning (docs/pinning.md): a drained server's connections stay on it, and its pins
# linger drain_linger after its withdrawal
pinning = true
drain_linger = "60s"

[control]
socket = "{self.state.router_socket}"
metrics = "off"
"""

    # -- agents --------------------------------------------------------------------------------

    def agent_config(self, i: int) -> str:
        r4 = server_addrs(i)[0]
        bfd = "bfd = { interval_ms = 100, multiplier = 3 }\n" if self.state.bfd else ""
        timeout = max(50, self.check_interval_ms * 3 // 4)
        return f"""# bgplb agent of srv{i} (generated by the lab)
[bgp]
asn = {SERVER_AS}
router_id = "{self.server_address(i)}"
hold_time = {self.hold_time}
graceful_restart = false
shutdown_drain_time = "1s"

[[peers]]
address = "{r4}"
asn = {ROUTER_AS}
{bfd}
[[services]]
name = "web"
vips = ["{VIP4}", "{VIP6}"]
# the agent puts the VIPs on lo; after a drain they stay drain_vip_linger (default 60s, the
# router's drain_linger) past the withdrawal, for the connections the router keeps pinned here
drain_time = "{self.drain_time:g}s"

[[services.checks]]
type = "http"
url = "http://127.0.0.1:80/"
expect_body = "Welcome to nginx"
interval = "{self.check_interval_ms}ms"
timeout = "{timeout}ms"
rise = 2
fall = 2
damping = false

[control]
socket = "{self.state.agent_socket(i)}"
metrics = "off"
"""

    def start_agent(self, i: int) -> Proc:
        node = f"srv{i}"
        conf = self.workdir / node / "agent.toml"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(self.agent_config(i))
        argv = [*BGPLB, "agent", "-c", str(conf), "--state-file", str(conf.parent / "state.json")]
        proc = self.spawn(node, "agent", argv, env=_python_env())
        self.agent_procs[i] = proc
        sock = self.state.agent_socket(i)
        self.wait(sock.exists, 15, f"the agent on {node}", proc)
        return proc

    def kill_agent(self, i: int) -> None:
        """SIGKILL srv<i>'s agent (a crash: no NOTIFICATION, the VIP stays on lo)."""
        proc = self.agent_procs.pop(i)
        proc.signal(signal.SIGKILL)
        self._reap(proc, 5)
        self.state.agent_socket(i).unlink(missing_ok=True)

    # -- queries -------------------------------------------------------------------------------

    def nexthops(self, prefix: str = VIP4) -> list[str] | None:
        """The router's kernel next hops for `prefix` (sorted; [] without a route), from two
        `ip -n` calls; None if the kernel changed between them (poll again)."""
        try:
            return _hops(self.router_ns, prefix)
        except (NetnsError, ValueError, KeyError):
            return None

    def server_of(self, address: str) -> str:
        for i in range(1, self.state.servers + 1):
            if server_addrs(i)[1] == address or server_addrs(i)[3] == address:
                return f"srv{i}"
        return address

    def route_text(self, prefix: str = VIP4) -> str:
        """`ip route show` of the VIP and `ip nexthop show` of the groups it uses, as text."""
        fam = "-6" if ":" in prefix else "-4"
        out = self.router_ns.exec("ip", fam, "route", "show", "exact", prefix).strip()
        lines = [f"$ ip {fam} route show {prefix}", out or "(no route)"]
        if "nhid" in out:
            lines += ["$ ip nexthop show", self.router_ns.exec("ip", "nexthop", "show").strip()]
        return "\n".join(lines)

    # -- waiting and teardown ------------------------------------------------------------------

    def wait(
        self, probe: Callable[[], object], timeout: float, what: str, proc: Proc | None = None
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and not proc.alive():
                raise LabError(
                    f"{proc.role} on {proc.node} exited while waiting for {what}" + _tail(proc.log)
                )
            try:
                if probe():
                    return
            except (OSError, subprocess.SubprocessError, NetnsError):
                pass
            time.sleep(0.05)
        raise LabError(
            f"timed out after {timeout:g}s waiting for {what}"
            + (_tail(proc.log) if proc is not None else "")
        )

    def _reap(self, proc: Proc, timeout: float) -> None:
        popen = self._popens.pop(proc.pid, None)
        if popen is not None:
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.signal(signal.SIGKILL)
                popen.wait(timeout)
        else:
            deadline = time.monotonic() + timeout
            while proc.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.signal(signal.SIGKILL)

    def teardown(self) -> list[str]:
        """Remove everything (see `teardown_state`), reaping our own children. Never raises."""
        if self.daemon is not None:
            try:
                self.daemon.stop(timeout=3)
            except Exception:
                pass
        problems = teardown_state(self.state)
        for popen in self._popens.values():
            try:
                popen.wait(2)
            except subprocess.TimeoutExpired:
                problems.append(f"pid {popen.pid} did not exit")
        self._popens.clear()
        return problems


def _hops(ns: Namespace, prefix: str) -> list[str] | None:
    fam = "-6" if ":" in prefix else "-4"
    routes = json.loads(ns.exec("ip", "-j", fam, "route", "show", "exact", prefix) or "[]")
    if not routes:
        return []
    hops: list[str] = []
    nhobjs: dict[int, dict[str, Any]] | None = None
    for route in routes:
        if "nhid" in route:
            if nhobjs is None:
                dump = json.loads(ns.exec("ip", "-j", "nexthop", "show") or "[]")
                nhobjs = {int(o["id"]): o for o in dump}
            obj = nhobjs[int(route["nhid"])]
            members = [nhobjs[int(m["id"])] for m in obj.get("group", [])] or [obj]
            hops += [m["gateway"] for m in members if "gateway" in m]
        elif "nexthops" in route:
            hops += [nh["gateway"] for nh in route["nexthops"] if "gateway" in nh]
        elif "gateway" in route:
            hops.append(route["gateway"])
    return sorted(hops, key=ipaddress.ip_address)


def _tail(path: str, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"\n--- {path} ---\n" + "\n".join(text)
