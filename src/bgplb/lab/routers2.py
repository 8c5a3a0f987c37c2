"""The lab with two load-balancer routers behind an upstream's ECMP (`--routers 2`).

    client  uplink 203.0.113.10/24  <->  upstream  client 203.0.113.1/24
    upstream  router 198.18.0.1/30   <->  router   upstream 198.18.0.2/30
    upstream  router2 198.18.0.5/30  <->  router2  upstream 198.18.0.6/30
    router 192.0.2.1/24, router2 192.0.2.2/24, srv<i> 192.0.2.(10+i)/24: one segment, the
    bridge `br0` in the namespace `switch`

* The upstream has one route to the VIP 198.51.100.10/32: multipath via both routers (L4 hash).
  Nothing else routes through it but the client's traffic. IPv4 only.
* Each server has ONE address that both routers see as its next hop; its agent has two peers
  (router and router2) and announces the VIP to both. The servers' default route is multipath
  via both routers, so a router may see only one direction of a connection.
* Both routers run `bgplb router` (`group`: consistent by default, resilient to compare; no
  pinning) or BIRD 2. Each hashes with its own seed (`fib_multipath_hash_policy` 3 on the L4
  fields, a random `fib_multipath_hash_seed`), as two machines do: namespaces of one host
  otherwise share the client socket's hash and every router would map flows alike.

`kill_router()` makes router A die the way a machine does — every packet in and out of its
namespace dropped, its daemon SIGKILLed — and then does what the upstream's and the servers'
failure detection would do (their BGP or BFD session with it goes down): route via router2 only.
"""

from __future__ import annotations

import random
import signal
import time
from typing import Any

from bgplb.lab.netns import run
from bgplb.lab.peers import Bird
from bgplb.lab.topology import (
    BGPLB,
    ROUTER_AS,
    SERVER_AS,
    VIP4,
    Lab,
    LabError,
    LabNamespace,
    _hops,
    _python_env,
)

ROUTER_NODES = ("router", "router2")
SEGMENT = {"router": "192.0.2.1", "router2": "192.0.2.2"}
UPLINKS = {"router": ("198.18.0.1", "198.18.0.2"), "router2": ("198.18.0.5", "198.18.0.6")}
GROUPS = ("consistent", "resilient")
L4_FIELDS = 0x0037  # source/destination address, IP protocol, source/destination port


def server_address(i: int) -> str:
    return f"192.0.2.{10 + i}"


class TwoRouterLab(Lab):
    """`Lab` with two routers; same life cycle (`build()`, `teardown()`)."""

    def __init__(self, *, group: str = "consistent", **kw: Any) -> None:
        if kw.get("router", "bgplb") not in ("bgplb", "bird"):
            raise LabError("--routers 2 works with --router bgplb or bird")
        if group not in GROUPS:
            raise LabError(f"--group must be one of {', '.join(GROUPS)}, not {group!r}")
        super().__init__(**kw)
        self.group = group
        self.state.routers = 2
        self.daemons: dict[str, Bird] = {}

    # -- names -----------------------------------------------------------------------------------
    def server_address(self, i: int) -> str:
        return server_address(i)

    def socket_of(self, node: str) -> Any:
        return self.workdir / node / "router.sock"

    # -- building --------------------------------------------------------------------------------
    def _veth(
        self, left: str, left_if: str, right: str, right_if: str, a4: str = "", b4: str = ""
    ) -> None:
        ln, rn = self.ns[left], self.ns[right]
        run(["ip", "-n", ln.name, "link", "add", left_if, "type", "veth",
             "peer", "name", right_if, "netns", rn.name])  # fmt: skip
        for ns, ifname, addr in ((ln, left_if, a4), (rn, right_if, b4)):
            if addr:
                ns.exec("ip", "addr", "add", addr, "dev", ifname)
            ns.exec("ip", "link", "set", ifname, "up")

    def build(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state.save()
        for short in ("client", "upstream", *ROUTER_NODES, "switch", *self.server_names):
            self._add(short)
        sw = self.ns["switch"]
        sw.exec("ip", "link", "add", "br0", "type", "bridge")
        sw.exec("ip", "link", "set", "br0", "up")
        up = self.ns["upstream"]
        up.sysctl("net.ipv4.ip_forward", 1)
        up.sysctl("net.ipv4.fib_multipath_hash_policy", 1)
        self._veth("client", "uplink", "upstream", "client", "203.0.113.10/24", "203.0.113.1/24")
        self.client_ns.exec("ip", "route", "add", "default", "via", "203.0.113.1")
        seeds = random.Random().sample(range(1, 2**31), len(ROUTER_NODES))
        for node, seed in zip(ROUTER_NODES, seeds, strict=True):
            rt = self.ns[node]
            rt.sysctl("net.ipv4.ip_forward", 1)
            rt.sysctl("net.ipv4.fib_multipath_hash_policy", 3)
            rt.sysctl("net.ipv4.fib_multipath_hash_fields", L4_FIELDS)
            rt.sysctl("net.ipv4.fib_multipath_hash_seed", seed)
            up_addr, rt_addr = UPLINKS[node]
            self._veth("upstream", node, node, "upstream", f"{up_addr}/30", f"{rt_addr}/30")
            rt.exec("ip", "route", "add", "203.0.113.0/24", "via", up_addr)
            self._veth("switch", f"p-{node}", node, "seg", "", f"{SEGMENT[node]}/24")
            sw.exec("ip", "link", "set", f"p-{node}", "master", "br0")
        for i, name in enumerate(self.server_names, 1):
            self._veth("switch", f"p-{name}", name, "seg", "", f"{server_address(i)}/24")
            sw.exec("ip", "link", "set", f"p-{name}", "master", "br0")
            self.ns[name].sysctl("net.ipv4.fib_multipath_hash_policy", 1)
        self.route_via(ROUTER_NODES)
        self.log(
            f"namespaces {', '.join(n.name for n in self.ns.values())}; the upstream routes "
            f"{VIP4} via both routers; each router hashes L4 fields with its own seed"
        )
        for i in range(1, self.state.servers + 1):
            self.start_web(i)
        self.start_router()
        for i in range(1, self.state.servers + 1):
            self.start_agent(i)

    def route_via(self, nodes: tuple[str, ...]) -> None:
        """The upstream's route to the VIP and the servers' default route: via `nodes`."""
        up_hops: list[str] = []
        seg_hops: list[str] = []
        for node in nodes:
            up_hops += ["nexthop", "via", UPLINKS[node][1]] if len(nodes) > 1 else ["via"]
            seg_hops += ["nexthop", "via", SEGMENT[node]] if len(nodes) > 1 else ["via"]
            if len(nodes) == 1:
                up_hops.append(UPLINKS[node][1])
                seg_hops.append(SEGMENT[node])
        self.ns["upstream"].exec("ip", "route", "replace", VIP4, *up_hops)
        for name in self.server_names:
            self.ns[name].exec("ip", "route", "replace", "default", *seg_hops)

    # -- routers ---------------------------------------------------------------------------------
    def start_router(self) -> None:
        for node in ROUTER_NODES:
            self.start_one_router(node)

    def start_one_router(self, node: str) -> None:
        rdir = self.workdir / node
        rdir.mkdir(parents=True, exist_ok=True)
        if self.state.router == "bird":
            daemon = Bird(self.ns[node], rdir, ROUTER_AS, SEGMENT[node])
            for i in range(1, self.state.servers + 1):
                daemon.add_neighbor(
                    server_address(i), SERVER_AS, passive=True, hold_time=self.hold_time
                )
            self.daemons[node] = daemon
            if node == "router":
                self.daemon = daemon
            try:
                daemon.start()
            finally:
                self._record_daemon(daemon)
            return
        conf = rdir / "router.toml"
        conf.write_text(self.two_router_config(node))
        proc = self.spawn(
            node, "bgplb-router", [*BGPLB, "router", "-c", str(conf)], env=_python_env()
        )
        self.wait(self.socket_of(node).exists, 15, f"{node}'s control socket", proc)

    def two_router_config(self, node: str) -> str:
        return f"""# bgplb router {node} of the two-router lab (generated)
[bgp]
asn = {ROUTER_AS}
router_id = "{SEGMENT[node]}"
listen = ["0.0.0.0"]
hold_time = {self.hold_time}
graceful_restart = false

[[peer_ranges]]
prefix = "192.0.2.0/24"
asn = {SERVER_AS}
accept = ["198.51.100.0/24 le 32"]

[fib]
# "consistent": the same flow goes to the same server on every router configured alike
# (same paths, same consistent_seed); "resilient": each router's own history decides
group = "{self.group}"
buckets = 512
idle_timer = "1s"
unbalanced_timer = "0s"

[control]
socket = "{self.socket_of(node)}"
metrics = "off"
"""

    def agent_config(self, i: int) -> str:
        peers = "".join(
            f'[[peers]]\naddress = "{SEGMENT[node]}"\nasn = {ROUTER_AS}\n'
            f'local_address = "{server_address(i)}"\n\n'
            for node in ROUTER_NODES
        )
        timeout = max(50, self.check_interval_ms * 3 // 4)
        return f"""# bgplb agent of srv{i} (generated by the two-router lab)
[bgp]
asn = {SERVER_AS}
router_id = "{server_address(i)}"
hold_time = {self.hold_time}
graceful_restart = false
shutdown_drain_time = "1s"

{peers}[[services]]
name = "web"
vips = ["{VIP4}"]
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

    def teardown(self) -> list[str]:
        for node, daemon in self.daemons.items():
            if node != "router":  # Lab.teardown stops self.daemon (router's)
                try:
                    daemon.stop(timeout=3)
                except Exception:
                    pass
        return super().teardown()

    def nexthops(self, prefix: str = VIP4, node: str = "router") -> list[str] | None:
        try:
            return _hops(self.ns[node], prefix)
        except Exception:
            return None

    def both_route_to_all(self) -> bool:
        want = sorted(server_address(i) for i in range(1, self.state.servers + 1))
        return all(self.nexthops(node=n) == want for n in ROUTER_NODES)

    def kill_router(self, node: str = "router") -> float:
        """`node` dies: all its traffic dropped, its daemon SIGKILLed; then the upstream and
        the servers route via the other router only. Returns the time of death (monotonic)."""
        ns: LabNamespace = self.ns[node]
        ns.drop_all_traffic()
        t = time.monotonic()
        if node in self.daemons:
            for pid in self.daemons[node].pids:
                for p in self.state.procs:
                    if p.pid == pid:
                        p.signal(signal.SIGKILL)
        else:
            for p in self.state.procs:
                if p.node == node and p.role == "bgplb-router":
                    p.signal(signal.SIGKILL)
        self.route_via(tuple(n for n in ROUTER_NODES if n != node))
        return t
