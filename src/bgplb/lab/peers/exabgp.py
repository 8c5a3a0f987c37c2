"""ExaBGP 4.2 in a namespace: exabgp.conf, JSON API process, live commands via FIFO."""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from bgplb.lab.netns import Namespace
from bgplb.lab.peers.base import (
    Announcement,
    Daemon,
    Neighbor,
    ReceivedRoute,
    normalize_community,
    route_key,
)

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
        return sorted((r for r in routes if self.asn not in r.as_path), key=route_key)


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
