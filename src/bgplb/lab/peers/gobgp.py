"""GoBGP 3 in a namespace: gobgpd.toml, gRPC API on a unix socket, `gobgp -j` parser."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

from bgplb.lab.netns import Namespace
from bgplb.lab.peers.base import (
    Announcement,
    Daemon,
    Neighbor,
    ReceivedRoute,
    route_key,
)

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
        return sorted(routes, key=route_key)


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
