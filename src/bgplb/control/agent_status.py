"""``bgplb status`` for the agent: the status document (JSON over the control socket) and its
rendering as readable tables with rich.

The document (``build_status``) is plain JSON types::

    {"role": "agent", "asn": 65000, "router_id": "...", "uptime": 12.3,
     "peers": [{"name", "address", "asn", "state", "uptime", "routes_sent", "updates_sent",
                "last_error", "bfd": None or {"state", "tx_interval_ms", "detection_time_ms",
                "local_diag", "remote_diag", "last_down_diag", "downs", ...},
                "held_back": [{"prefix", "reason"}]}],
     "services": [{"name", "healthy", "status", "drained",
                   "vips": [{"vip", "phase", "lingering"}],
                   "checks": [{"check", "state", "suppressed", "last_ok", "latency_ms",
                               "output", "probes"}]}]}

A VIP's ``phase`` is its announcement phase (idle, adding, announced, draining, withdrawing);
``lingering`` is None, or the seconds left before a VIP withdrawn after ``bgplb drain`` leaves
``lo`` (``drain_vip_linger``; its phase is then idle).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from bgplb.agent.daemon import AgentDaemon


def build_status(daemon: AgentDaemon) -> dict[str, Any]:
    """The status document of a running agent."""
    now = daemon.peers and next(iter(daemon.peers.values())).now()
    peers = []
    for key, peer in daemon.peers.items():
        session = peer.session
        cfg = daemon.peer_configs.get(key)
        established = session.established_at
        peers.append(
            {
                "name": peer.name,
                "address": str(peer.transport.remote),
                "asn": cfg.asn if cfg else session.config.peer_asn,
                "state": session.state.value,
                "uptime": (now - established) if established is not None and now else None,
                "local_address": str(peer.local_address) if peer.local_address else None,
                "routes_sent": len(session.rib_out.sent),
                "updates_sent": session.updates_sent,
                "last_error": session.last_error,
                "bfd": link.status() if (link := daemon.bfd_links.get(key)) else None,
                # prefixes this session cannot carry (family not negotiated / no next hop)
                "held_back": [
                    {"prefix": str(prefix), "reason": why}
                    for prefix, why in sorted(session.held_back.items(), key=lambda i: str(i[0]))
                ],
            }
        )
    mono = time.monotonic()  # the event loop's clock, as the state's deadlines
    services = []
    for service in daemon.config.services:
        svc = daemon.state.services.get(service.name)
        checks = []
        for i, check in enumerate(service.checks):
            try:
                status = daemon.runner.status((service.name, i))
            except KeyError:
                continue
            last = status.last
            checks.append(
                {
                    "check": check.describe(),
                    "state": status.machine.state.value,
                    "suppressed": status.machine.suppressed,
                    "last_ok": last.ok if last else None,
                    "latency_ms": round(last.latency * 1000, 2) if last else None,
                    "output": last.detail if last else None,
                    "probes": status.probes,
                }
            )
        services.append(
            {
                "name": service.name,
                "healthy": bool(svc and svc.healthy),
                "status": svc.status.value if svc else "unknown",
                "drained": bool(svc and svc.drained),
                "reason": svc.reason if svc else None,
                "vips": [
                    {
                        "vip": vip,
                        "phase": phase.value,
                        "lingering": round(max(0.0, until - mono), 1)
                        if (until := lingering.get(vip)) is not None
                        else None,
                    }
                    for lingering in [daemon.state.lingering(service.name)]
                    for vip, phase in daemon.state.phases(service.name).items()
                ],
                "checks": checks,
            }
        )
    return {
        "role": "agent",
        "asn": daemon.config.bgp.asn,
        "router_id": str(daemon.router_id),
        "uptime": time.time() - daemon.started,
        "graceful_restart": daemon.restarting,
        "peers": peers,
        "services": services,
    }


def bfd_text(bfd: dict[str, Any] | None) -> Text:
    """One cell: ``up tx 100ms, detect 300ms``, plus the last failure's diagnostic."""
    if not bfd:
        return Text("-")
    text = Text(bfd["state"], style=_STATE_STYLE.get(bfd["state"], "yellow"))
    if bfd.get("tx_interval_ms") is not None:
        text.append(f" tx {bfd['tx_interval_ms']:g}ms, detect {bfd['detection_time_ms']:g}ms")
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


def _vip_text(vip: dict[str, Any]) -> str:
    if vip.get("lingering") is not None:
        return f"{vip['vip']} (withdrawn, lingering on lo {_duration(vip['lingering'])} more)"
    return f"{vip['vip']} ({vip['phase']})"


def _styled(value: str) -> Text:
    return Text(value, style=_STATE_STYLE.get(value, ""))


def render(status: dict[str, Any]) -> Group:
    """Tables for peers, services and checks."""
    peers = Table(title="BGP peers", title_justify="left")
    for column in ("peer", "AS", "state", "uptime", "routes sent", "BFD", "last error"):
        peers.add_column(column)
    for p in status.get("peers", []):
        peers.add_row(
            p["address"],
            str(p["asn"]),
            _styled(p["state"]),
            _duration(p["uptime"]),
            str(p["routes_sent"]),
            bfd_text(p.get("bfd")),
            "\n".join(
                [p["last_error"] or ""]
                + [f"not announced: {h['prefix']}: {h['reason']}" for h in p.get("held_back", [])]
            ).strip(),
        )
    services = Table(title="Services", title_justify="left")
    for column in ("service", "health", "announcement", "VIPs", "reason"):
        services.add_column(column)
    checks = Table(title="Checks", title_justify="left")
    for column in ("service", "check", "state", "last", "latency", "output"):
        checks.add_column(column)
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
    return Group(header, peers, services, checks)


def print_status(status: dict[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(render(status))
