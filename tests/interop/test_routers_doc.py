"""docs/routers.md, run for real: the BIRD 2 and FRR configurations of the page, copied verbatim
from its marked code blocks (`<!-- test: NAME -->` before a fenced block), each run in a router
namespace against two real `bgplb agent`s and a test speaker.

    rt eth-s1 192.0.2.1/30  <-> s1 192.0.2.2   bgplb agent, AS 65001, VIPs 198.51.100.10/32 and
    rt eth-s2 192.0.2.5/30  <-> s2 192.0.2.6   bgplb agent, AS 65002      2001:db8:100::10/128
    rt eth-s3 192.0.2.9/30  <-> s3 192.0.2.10  bgplb speaker, AS 65003 (filter and max-prefix)

Nothing of the page is substituted except, in the agent block, the server's own AS and the
router's address on its link (the page's placeholders 65001 and 192.0.2.1). For every router the
test checks what the page promises: the kernel settings (the L4 hash really spreads flows: `ip
route get` with different source ports gives both servers), MD5 enforced (a speaker without the
password never gets a session; the kernel counts the unsigned SYNs), both agents' sessions
Established with BFD Up on both sides, a multipath kernel route to each VIP via both servers
(servers in different ASes), a drained agent taken out of the route by GRACEFUL_SHUTDOWN long
before its withdrawal, routes outside the VIP range refused, and max-prefix ending the session
of a speaker that sends too many (and what each router does next, as the page says). Every wait
is bounded; nothing asserts on speed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from agent_lab import VIP4, VIP6, Server, add_servers, wait_for
from bgpspeaker import SpeakerProcess

from bgplb.lab.netns import Namespace, Topology
from bgplb.lab.peers import Bird, Daemon, Frr, kernel_routes

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "routers.md"
#: `<!-- test: NAME -->`, optional blank lines, then a fenced code block.
_MARKED = re.compile(
    r"<!--\s*test:\s*([\w-]+)\s*-->\s*\n(```|~~~)[^\n]*\n(.*?)^\2\s*$", re.S | re.M
)

ROUTER_AS = 65530  # the page's placeholders
SERVER_AS = {"s1": 65001, "s2": 65002}
SPEAKER_AS = 65003
MAX_PREFIX = 100
#: the drain must outlast every wait for its effect: the route moves because of GRACEFUL_SHUTDOWN
DRAIN_TIME = 40


def doc_blocks(text: str | None = None) -> dict[str, str]:
    """The marked code blocks of docs/routers.md: {name: block text}. A name used twice is an
    error (the test would silently take one of them)."""
    if text is None:
        text = DOC.read_text()
    blocks: dict[str, str] = {}
    for m in _MARKED.finditer(text):
        name, body = m.group(1), m.group(3)
        if name in blocks:
            raise ValueError(f"{DOC.name}: two blocks marked 'test: {name}'")
        blocks[name] = body
    return blocks


def sysctl_settings(block: str) -> dict[str, str]:
    """`key = value` lines of a sysctl.d block (comments and blank lines skipped)."""
    out = {}
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


# -- the routers, running the page's configuration -------------------------------------------


class DocBird(Bird):
    """BIRD 2 with bird.conf = the page's block (plus a log line for the test's log file)."""

    def __init__(self, ns: Namespace, workdir: Path, asn: int, router_id: str, *, text: str):
        super().__init__(ns, workdir, asn, router_id)
        self.text = text

    def config_text(self) -> str:
        return "log stderr all;\n" + self.text

    def sessions(self) -> dict[str, str]:
        """Neighbor address -> BGP state (lower case) of every dynamic session."""
        out: dict[str, str] = {}
        state = ""
        for line in self.control("show", "protocols", "all").splitlines():
            if m := re.match(r"\s+BGP state:\s+(\S+)", line):
                state = m.group(1).lower()
            elif m := re.match(r"\s+Neighbor address:\s+(\S+)", line):
                out[m.group(1)] = state
            elif line and not line[0].isspace():
                state = ""
        return out

    def neighbor_state(self, address: str) -> str:
        return self.sessions().get(address, "unknown")

    def bfd_up(self, address: str) -> bool:
        out = self.control("show", "bfd", "sessions")
        return any(ln.split()[:1] == [address] and " Up " in ln for ln in out.splitlines())

    def paths(self, prefix: str) -> dict[str, dict[str, str]]:
        """next hop -> {"local_pref", "community"} for every path of `prefix` BIRD holds."""
        out: dict[str, dict[str, str]] = {}
        cur: dict[str, str] = {}
        for line in [*self.control("show", "route", prefix, "all").splitlines(), "END"]:
            if not line.startswith("\t") and ("unicast [" in line or line == "END"):
                if "next_hop" in cur:
                    out[cur["next_hop"]] = cur
                cur = {}
            elif m := re.match(r"\tBGP\.(next_hop|local_pref|community):\s*(.*)", line):
                cur[m.group(1)] = m.group(2).split()[0] if m.group(1) == "next_hop" else m.group(2)
        return out

    def holds(self, prefix: str) -> bool:
        proc = subprocess.run(
            self._cli("show", "route", prefix), capture_output=True, text=True, timeout=10
        )
        if "Network not found" in proc.stdout:
            return False
        assert proc.returncode == 0, proc
        return prefix in proc.stdout


class DocFrr(Frr):
    """FRR 8 (zebra, bfdd, bgpd) started with empty configurations; then the page's block is
    applied with `vtysh -f`, as an integrated frr.conf would be."""

    def __init__(self, ns: Namespace, workdir: Path, asn: int, router_id: str, *, text: str):
        super().__init__(ns, workdir, asn, router_id)
        self.text = text

    def config_text(self) -> str:
        return f"hostname {self.ns.name}\nlog stdout informational\n!\n"

    def _commands(self) -> list[list[str]]:
        zserv = ["-z", str(self.rundir / "zserv.api")]
        bfdd = [*self._common("bfdd"), *zserv, "--bfdctl", str(self.rundir / "bfdd.sock")]
        bgpd = [*self._common("bgpd"), *zserv, "-f", str(self.rundir / "bgpd.conf")]
        return [
            [*self._common("zebra"), *zserv, "-f", "/dev/null"],
            [*bfdd, "-f", "/dev/null"],
            bgpd,
        ]

    def _after_start(self) -> None:
        conf = self.rundir / "frr.conf"
        conf.write_text(self.text)
        proc = subprocess.run(
            ["vtysh", "--vty_socket", str(self.rundir), "-f", str(conf)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        errors = [
            ln for ln in (proc.stdout + proc.stderr).splitlines() if "%" in ln or "line " in ln
        ]
        if proc.returncode != 0 or errors:
            err = self.error(f"vtysh -f refused the page's configuration: {errors or proc}")
            self.stop()
            raise err

    def neighbor_state(self, address: str) -> str:
        data = json.loads(self.control(f"show bgp neighbors {address} json") or "{}")
        return str(data.get(address, {}).get("bgpState", "unknown")).lower()

    def bfd_up(self, address: str) -> bool:
        peers = json.loads(self.control("show bfd peers json") or "[]")
        return any(p.get("peer") == address and p.get("status") == "up" for p in peers)

    def paths(self, prefix: str) -> dict[str, dict[str, str]]:
        fam = "ipv6" if ":" in prefix else "ipv4"
        data = json.loads(self.control(f"show bgp {fam} unicast {prefix} json") or "{}")
        out = {}
        for path in data.get("paths", []):
            hops = [
                n["ip"] for n in path.get("nexthops", []) if n.get("scope", "global") == "global"
            ]
            out[hops[0] if hops else ""] = {
                "local_pref": str(path.get("locPrf", 100)),
                "community": path.get("community", {}).get("string", ""),
            }
        return out

    def holds(self, prefix: str) -> bool:
        fam = "ipv6" if ":" in prefix else "ipv4"
        data = json.loads(self.control(f"show bgp {fam} unicast {prefix} json") or "{}")
        return bool(data.get("paths"))


# -- the lab ----------------------------------------------------------------------------------


def agent_config(server: Server, block: str) -> str:
    """The page's agent block for `server` (its AS, the router's address on its link), a
    router id, one service with both VIPs and an HTTP check, and a private control socket."""
    text = block.replace("asn = 65001", f"asn = {SERVER_AS[server.name]}", 1)
    text = text.replace('"192.0.2.1"', f'"{server.router}"')
    text = text.replace("[bgp]\n", f'[bgp]\nrouter_id = "{server.address}"\n', 1)
    return f"""{text}
[[services]]
name = "web"
vips = ["{VIP4}", "{VIP6}"]
drain_time = "{DRAIN_TIME}s"
drain_vip_linger = "0s"

[[services.checks]]
type = "http"
url = "http://127.0.0.1:{server.http_port}/"
interval = "200ms"
timeout = "150ms"
damping = false

[control]
socket = "{server.socket}"
metrics = "off"
"""


def nstat(ns: Namespace, counter: str) -> int:
    """A kernel counter of `ns` (absolute value, `nstat -az` leaves the history alone)."""
    out = ns.exec("nstat", "-az", "--json", counter)
    data = json.loads(out)
    return int(next(iter(data.values()), {}).get(counter, 0))


def route_get_hops(ns: Namespace, dst: str, sports: range) -> set[str]:
    """The next hop the router's kernel picks for a TCP flow to `dst`:80 from each source port."""
    hops = set()
    for sport in sports:
        out = ns.exec(
            "ip", "-j", "route", "get", dst, "ipproto", "tcp", "sport", str(sport), "dport", "80"
        )
        hops.update(r.get("gateway", "") for r in json.loads(out))
    return hops


@pytest.fixture
def lab(topo: Topology, tmp_path: Path):
    router = topo.add("rt")
    servers = add_servers(topo, router, count=3)
    made: list[Daemon] = []
    speakers: list[SpeakerProcess] = []
    try:
        yield router, servers, made, speakers
    finally:
        for sp in speakers:
            sp.stop()
        for server in servers:
            server.stop()
        for daemon in made:
            daemon.stop()
        for server in servers:
            shutil.rmtree(server.workdir, ignore_errors=True)


def start_speaker(
    ns: Namespace, peer: str, local: str, speakers: list[SpeakerProcess], workdir: Path, **kw: str
) -> SpeakerProcess:
    args = ["--asn", str(SPEAKER_AS), "--router-id", local, "--local", local, "--peer", peer]
    args += ["--families", "ipv4", "--hold", "9", "--connect-retry", "1"]
    if kw.get("password"):
        args += ["--password", kw["password"]]
    sp = SpeakerProcess(ns, *args, log_path=str(workdir / f"speaker-{len(speakers)}.log"))
    speakers.append(sp)
    return sp


@pytest.mark.parametrize("kind", ["bird", "frr"])
def test_router_config_from_the_doc(kind, lab, daemons, tmp_path):
    router, servers, made, speakers = lab
    blocks = doc_blocks()
    s1, s2, s3 = servers
    agents = [s1, s2]
    password = re.search(r'password = "([^"]+)"', blocks["agent"]).group(1)  # type: ignore[union-attr]

    # the kernel settings of the page, then the router with the page's configuration
    settings = sysctl_settings(blocks["sysctl"])
    assert settings["net.ipv4.fib_multipath_hash_policy"] == "1", settings
    for key, value in settings.items():
        router.sysctl(key, value)
    for key, value in settings.items():
        assert router.exec("sysctl", "-n", key).strip() == value, key
    cls: type[DocBird | DocFrr] = DocBird if kind == "bird" else DocFrr
    rt = daemons(cls, router, ROUTER_AS, "192.0.2.1", text=blocks[kind])
    made.append(rt)
    rt.start()

    # MD5 is required: a speaker without the password never gets a session
    before = nstat(router, "TcpExtTCPMD5NotFound")
    nokey = start_speaker(s3.ns, s3.router, s3.address, speakers, tmp_path)
    wait_for(lambda: nstat(router, "TcpExtTCPMD5NotFound") > before, 15, "unsigned SYNs dropped")
    assert not any(e.get("event") == "established" for e in nokey.events)
    assert rt.neighbor_state(s3.address) != "established"
    nokey.stop()
    speakers.remove(nokey)

    # two agents (AS 65001 and 65002) with the page's agent block
    for s in agents:
        s.config_path.write_text(agent_config(s, blocks["agent"]))
        s.start_http()
        s.start_agent()
    for s in agents:
        rt.wait_established(s.address, timeout=30)
    logs = lambda: "\n".join(s.log_tail() for s in agents) + "\n" + rt.log_tail()  # noqa: E731
    for s in agents:
        wait_for(lambda s=s: rt.bfd_up(s.address), 20, f"router's BFD with {s.name} Up")
        wait_for(
            lambda s=s: (s.status()["peers"][0]["bfd"] or {}).get("state") == "up",
            20,
            f"{s.name}'s BFD Up",
        )
    # FRR 8.4 may reset a fresh session once when it replaces its first BFD session
    for s in agents:
        rt.wait_established(s.address, timeout=30)
        peer = s.status()["peers"][0]
        assert peer["state"].lower() == "established", (peer, logs())

    # one multipath kernel route per VIP, via both servers
    both = sorted([s1.address, s2.address])
    try:
        wait_for(lambda: kernel_routes(router, VIP4) == both, 30, "IPv4 multipath route")
        wait_for(lambda: len(kernel_routes(router, VIP6)) == 2, 30, "IPv6 multipath route")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {kernel_routes(router, VIP4)}\n{logs()}") from None

    # the L4 hash: flows that differ only in their source port go to both servers
    assert route_get_hops(router, VIP4.split("/")[0], range(40000, 40032)) == set(both)

    # import filter: only host routes inside the VIP range; then max-prefix
    sp = start_speaker(s3.ns, s3.router, s3.address, speakers, tmp_path, password=password)
    sp.wait_for(lambda e: e.get("event") == "established", 30)
    for prefix in ("198.51.100.20/32", "203.0.113.10/32", "198.51.100.0/24", "198.51.100.128/25"):
        sp.send(announce=prefix)
    wait_for(lambda: kernel_routes(router, "198.51.100.20/32") == [s3.address], 20, "good route")
    for refused in ("203.0.113.10/32", "198.51.100.0/24", "198.51.100.128/25"):
        assert kernel_routes(router, refused) == [], refused
        assert not rt.holds(refused), refused
    mark = len(sp.events)
    sp.send(bulk={"count": MAX_PREFIX + 1, "start": "198.51.100.100", "length": 32})
    down = sp.wait_for(lambda e: e.get("event") == "down", 30, after=mark)
    assert down["notification"] == [6, 1], down  # Cease / Maximum Number of Prefixes Reached
    wait_for(lambda: kernel_routes(router, "198.51.100.20/32") == [], 20, "speaker's routes gone")
    # what the page says happens next: BIRD refuses the server for `error wait time`; FRR 8.4
    # takes a listen-range peer back at once (its restart timer is lost with the dynamic peer)
    mark = len(sp.events)
    if kind == "bird":
        with pytest.raises(TimeoutError):
            sp.wait_for(lambda e: e.get("event") == "established", 5, after=mark)
    else:
        sp.wait_for(lambda e: e.get("event") == "established", 15, after=mark)
    sp.stop()
    speakers.remove(sp)
    assert kernel_routes(router, VIP4) == both  # the agents' sessions are untouched

    # drain: GRACEFUL_SHUTDOWN -> LOCAL_PREF 0 -> s2 leaves the route before its withdrawal
    print(s2.cli("drain", "web", "--socket", str(s2.socket)).stdout)
    try:
        wait_for(lambda: kernel_routes(router, VIP4) == [s1.address], DRAIN_TIME / 2, "s2 out")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {kernel_routes(router, VIP4)}\n{logs()}") from None
    service = s2.status()["services"][0]
    assert service["status"] == "draining", service  # not withdrawn yet
    path = rt.paths(VIP4)[s2.address]
    assert path["local_pref"] == "0", path
    assert "65535" in path["community"] or "graceful" in path["community"].lower(), path
    s2.cli("undrain", "web", "--socket", str(s2.socket))
    wait_for(lambda: kernel_routes(router, VIP4) == both, 20, "s2 back after undrain")
    for s in agents:
        assert "Traceback" not in s.log_path.read_text(), s.log_tail()
