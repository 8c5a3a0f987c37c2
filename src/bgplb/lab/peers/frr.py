"""FRR 8 (zebra + bgpd) in a namespace as user frr: bgpd.conf, vtysh JSON parser."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from pathlib import Path
from typing import ClassVar

from bgplb.lab.netns import Namespace
from bgplb.lab.peers.base import (
    FAMILIES,
    Announcement,
    Daemon,
    ReceivedRoute,
    normalize_community,
    route_key,
)


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
                    *zserv,  # bgpd's BFD requests reach bfdd through this zebra
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

    def start(self) -> None:
        """As Daemon.start(), and fail if bgpd rejected a line of the generated config (bgpd
        logs the line and runs on without it)."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        super().start()
        with self.log_path.open("rb") as log:
            log.seek(offset)
            bad = [
                ln
                for ln in log.read().decode(errors="replace").splitlines()
                if "on config line" in ln or ln.startswith("% ")
            ]
        if bad:
            err = self.error("bgpd rejected its config: " + "; ".join(bad))
            self.stop()
            raise err

    def _configure(self, *lines: str) -> None:
        out = self.control("configure terminal", *lines, "end")
        bad = [ln for ln in out.splitlines() if ln.startswith("%")]
        if bad:
            raise self.error("vtysh rejected the configuration: " + "; ".join(bad))

    def _reload(self) -> None:
        # Re-apply the whole `router bgp` block: vtysh accepts the same lines as the file.
        lines = [
            ln
            for ln in self.config_text().splitlines()
            if ln and ln != "!" and not ln.startswith(("frr ", "hostname", "log "))
        ]
        self._configure(*lines)

    def _withdraw_live(self, ann: Announcement) -> None:
        self._configure(
            f"router bgp {self.asn}",
            f"address-family {ann.family} unicast",
            f"no network {ann.prefix}",
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
        return sorted(routes, key=route_key)


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
