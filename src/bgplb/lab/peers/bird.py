"""BIRD 2 in a namespace: bird.conf, `birdc -s`, `show route all` parser."""

from __future__ import annotations

import ipaddress
import re
import subprocess
from pathlib import Path

from bgplb.lab.netns import Namespace
from bgplb.lab.peers.base import (
    FAMILIES,
    Daemon,
    ReceivedRoute,
    route_key,
)


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
            # BIRD drops a MED on eBGP export unless the export filter itself set it (the
            # attribute must be "fresh"), so MEDs are set here rather than on the static route.
            meds = " ".join(
                f"if net = {a.prefix} then bgp_med = {a.med};"
                for a in self.announcements.values()
                if a.med is not None
            )
            export = f"export filter {{ if source != RTS_STATIC then reject; {meds} accept; }};"
            for fam in nb.families:
                opts.append(f"{fam} {{ import all; {export} }};")
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
        return sorted(parse_bird_routes(out, protos), key=route_key)


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
