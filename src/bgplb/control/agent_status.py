"""``bgplb status`` for the agent: the rendering of its status document as readable tables
(rich).

The document is the JSON that the agent sends over the control socket,
``bgplb.agent.status.AgentStatus.to_json()``; its schema is documented field by field in
docs/status.md ("Agent"). This module reads only that document (what ``bgplb status`` receives),
never the daemon, so it imports nothing of the agent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

#: The status document as received (parsed JSON).
Document = Mapping[str, Any]


def bfd_text(bfd: Mapping[str, Any] | None) -> Text:
    """One cell: ``up tx 100ms, detect 300ms``, plus the last failure's diagnostic."""
    if not bfd:
        return Text("-")
    text = Text(bfd["state"], style=_STATE_STYLE.get(bfd["state"], "yellow"))
    if bfd.get("tx_interval_ms") is not None:
        text.append(f" tx {bfd['tx_interval_ms']:g}ms")
        if bfd.get("packets_received") == 0:
            # no detection time without the peer's timers: say what that usually means
            text.append(", no packet from the peer yet (BFD not configured there?)")
        else:
            text.append(f", detect {bfd['detection_time_ms']:g}ms")
    if bfd.get("last_down_diag"):
        text.append(f"\nlast down: {bfd['last_down_diag']} ({bfd['downs']}x)")
    return text


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


_STATE_STYLE = {
    "established": "green",
    "announced": "green",
    "up": "green",
    "draining": "yellow",
    "drained": "yellow",
    "withdrawn": "red",
    "down": "red",
}


def _vip_text(vip: Mapping[str, Any]) -> str:
    if vip.get("lingering") is not None:
        return f"{vip['vip']} (withdrawn, lingering on lo {_duration(vip['lingering'])} more)"
    return f"{vip['vip']} ({vip['phase']})"


def _styled(value: str) -> Text:
    return Text(value, style=_STATE_STYLE.get(value, ""))


def render(status: Document) -> Group:
    """Tables for peers, services and checks."""
    peers = Table(title="BGP peers", title_justify="left")
    # Addresses, numbers and states are never cut or wrapped (an operator copies them); each
    # peer's last error and held-back routes follow the table as lines of their own, so the
    # table fits 80 columns.
    for column in ("peer", "AS", "state", "uptime", "routes sent", "BFD"):
        peers.add_column(column, no_wrap=True)
    notes: list[Text] = []
    for p in status.get("peers", []):
        peers.add_row(
            p["address"],
            str(p["asn"]),
            _styled(p["state"]),
            _duration(p["uptime"]),
            str(p["routes_sent"]),
            bfd_text(p.get("bfd")),
        )
        lines = [f"last error: {p['last_error']}"] if p["last_error"] else []
        lines += [f"not announced: {h['prefix']}: {h['reason']}" for h in p.get("held_back", [])]
        notes += [Text(f"  {p['address']}: {line}") for line in lines]
    services = Table(title="Services", title_justify="left")
    for column in ("service", "health", "announcement"):
        services.add_column(column, no_wrap=True)
    services.add_column("VIPs", overflow="fold")
    services.add_column("reason", overflow="fold", ratio=1)
    checks = Table(title="Checks", title_justify="left")
    checks.add_column("service", no_wrap=True)
    checks.add_column("check", overflow="fold")
    for column in ("state", "last", "latency"):
        checks.add_column(column, no_wrap=True)
    checks.add_column("output", overflow="fold", ratio=1)
    for s in status.get("services", []):
        services.add_row(
            s["name"],
            _styled("up" if s["healthy"] else "down"),
            _styled(s["status"]),
            "\n".join(_vip_text(v) for v in s["vips"]),
            s.get("reason") or "",
        )
        for c in s["checks"]:
            state = c["state"] + (" (damped)" if c["suppressed"] else "")
            last = "-" if c["last_ok"] is None else ("ok" if c["last_ok"] else "fail")
            latency = "-" if c["latency_ms"] is None else f"{c['latency_ms']:.1f} ms"
            checks.add_row(s["name"], c["check"], _styled(state), last, latency, c["output"] or "")
    header = Text(
        f"bgplb agent  AS {status.get('asn')}  router id {status.get('router_id')}  "
        f"up {_duration(status.get('uptime'))}"
    )
    return Group(header, peers, *notes, services, checks)


def print_status(status: Document, console: Console | None = None) -> None:
    (console or Console()).print(render(status))
