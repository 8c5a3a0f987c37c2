"""The router's commands of the `bgplb` CLI: ``bgplb router -c FILE`` and ``bgplb status``.

``status`` is shared with the agent (registered by ``cli_agent``; this module adds ``--role`` and
takes over its handler): it asks the daemon on the control socket (``--socket``, else the first
of ``/run/bgplb/agent.sock``, ``/run/bgplb/router.sock`` that exists; ``--role`` picks one) and
renders the answer by the ``role`` it carries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

DEFAULT_SOCKETS = {"agent": "/run/bgplb/agent.sock", "router": "/run/bgplb/router.sock"}


def add_router_commands(subparsers: Any) -> None:
    """Register ``router`` (and ``status`` unless another role registered it already)."""
    router = subparsers.add_parser(
        "router", help="run the BGP router: sessions from servers into kernel ECMP groups"
    )
    router.add_argument("-c", "--config", required=True, metavar="FILE", help="router TOML file")
    router.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    router.set_defaults(func=run_router_command)
    status = subparsers.choices.get("status")
    if status is None:  # the agent's commands were not registered
        status = subparsers.add_parser("status", help="show the running daemon's state")
        status.add_argument("--json", action="store_true", help="print the raw JSON")
        status.add_argument("--socket", metavar="PATH", help="control socket of the daemon")
    # shared with the agent: this handler renders by the role the daemon reports
    status.add_argument("--role", choices=["router", "agent"], help="which daemon to ask")
    status.add_argument(
        "--vips",
        type=int,
        metavar="N",
        help="router: list at most N VIPs (default 100, at most 1000; 0: none)",
    )
    status.add_argument(
        "--vips-offset", type=int, metavar="N", help="router: skip the first N VIPs (sorted)"
    )
    status.add_argument("--vip", metavar="PREFIX", help="router: show only this VIP")
    status.set_defaults(func=status_command)


def run_router_command(args: argparse.Namespace) -> int:
    from bgplb.config import ConfigError, load_router_config
    from bgplb.router.daemon import Router, setup_logging

    try:
        config = load_router_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{args.config}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level or config.logging.level, config.logging.json_)
    try:
        return asyncio.run(Router(config, Path(args.config)).run())
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # last resort (start-up or shutdown): logged with its traceback
        import logging

        logging.getLogger("bgplb.router").critical(
            "bgplb router failed: %s: %s", type(exc).__name__, exc, exc_info=exc
        )
        return 1


def status_command(args: argparse.Namespace) -> int:
    from bgplb.control.socket import ControlError, request

    if args.socket:
        candidates = [args.socket]
    elif args.role:
        candidates = [DEFAULT_SOCKETS[args.role]]
    else:
        candidates = [p for p in DEFAULT_SOCKETS.values() if Path(p).exists()][:1] or [
            DEFAULT_SOCKETS["agent"]
        ]
    extra = {
        key: value
        for key, value in (
            ("vips_limit", getattr(args, "vips", None)),
            ("vips_offset", getattr(args, "vips_offset", None)),
            ("vip", getattr(args, "vip", None)),
        )
        if value is not None
    }
    errors = []
    for path in candidates:
        try:
            result = request(path, "status", **extra)
        except ControlError as exc:
            errors.append(str(exc))
            continue
        if args.json:
            print(json.dumps(result, indent=2, default=str))
        elif isinstance(result, dict) and result.get("role") == "router":
            render_status(result)
        else:
            render = _agent_renderer()
            if render is not None and isinstance(result, dict) and result.get("role") == "agent":
                render(result)
            else:
                print(json.dumps(result, indent=2, default=str))
        return 0
    for e in errors:
        print(f"bgplb status: {e}", file=sys.stderr)
    return 1


def _agent_renderer() -> Any:
    try:
        from bgplb.control import agent_status
    except ImportError:
        return None
    return getattr(agent_status, "print_status", None)


# -- rendering of the router status ------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def render_status(status: dict[str, Any], console: Console | None = None) -> None:
    """Print the router status as tables (rich)."""
    from rich.console import Console
    from rich.table import Table

    from bgplb.control.agent_status import bfd_text

    console = console or Console()
    fib = status["fib"]
    console.print(
        f"[bold]bgplb router[/bold] AS {status['asn']} id {status['router_id']}  "
        f"fib: {fib['group'] if fib['install'] else 'not installed'}"
        + (f" ({fib['buckets']} buckets)" if fib["group"] == "resilient" else "")
    )
    peers = Table(title="Peers")
    for col in ("address", "AS", "state", "prefixes", "filtered", "uptime", "BFD", "last error"):
        peers.add_column(col)
    for p in status["peers"]:
        state = p["state"] + (f" ({p['stale']} stale)" if p.get("stale") else "")
        peers.add_row(
            p["address"],
            str(p["asn"] or "-"),
            state,
            str(p["prefixes"]),
            str(p["filtered"]),
            _duration(p["uptime"]),
            bfd_text(p.get("bfd")),
            "" if p["established"] else (p.get("last_error") or ""),
        )
    console.print(peers)
    vips = Table(title="VIPs")
    for col in ("VIP", "nexthop", "weight", "state", "buckets", "share"):
        vips.add_column(col)
    for v in status["vips"]:
        if not v["nexthops"]:
            vips.add_row(v["vip"], "(no usable nexthop)", "", "", "", "")
        for i, n in enumerate(v["nexthops"]):
            state = "draining" if n["draining"] else "stale" if n["stale"] else "active"
            vips.add_row(
                v["vip"] if i == 0 else "",
                n["address"],
                str(n["weight"]),
                state,
                "-" if n["buckets"] is None else str(n["buckets"]),
                "-" if n["share"] is None else f"{100 * n['share']:.1f}%",
            )
    console.print(vips)
    for v in status["vips"]:
        if c := v.get("consistent"):
            shares = ", ".join(f"{a} {100 * x:.1f}%" for a, x in c["shares"].items())
            console.print(
                f"consistent {v['vip']}: table {c['size']} seed {c['seed']:#x} "
                f"fingerprint {c['fingerprint']}: {shares}"
            )
    if status.get("vips_omitted"):
        shown, offset = len(status["vips"]), status.get("vips_offset", 0)
        console.print(
            f"[yellow]{status['vips_omitted']} of {status['vips_total']} VIP(s) not shown[/yellow]"
            f" (--vips N, --vips-offset {offset + shown}, --vip PREFIX)"
        )
    internal = (status.get("counters") or {}).get("internal_errors") or {}
    if internal:
        errors = ", ".join(f"{task} {n}" for task, n in sorted(internal.items()))
        console.print(f"[red]internal errors[/red] (see the router's log): {errors}")
    counted = fib.get("bucket_shares") or {}
    if counted.get("omitted"):
        console.print(
            f"[yellow]bucket shares of {counted['omitted']} VIP(s) not read[/yellow]: "
            f"over {counted['limit']} buckets per status request"
        )
    pinning = status.get("pinning") or {}
    if pinning.get("enabled"):
        pins = Table(title=f"Connection pinning (mark mask {pinning['mark_mask']})")
        for col in ("server", "mark", "table", "VIPs", "connections"):
            pins.add_column(col)
        for srv in pinning["servers"]:
            pins.add_row(
                srv["address"],
                srv["mark"],
                str(srv["table"]),
                ", ".join(f"{v} ({st})" for v, st in srv["vips"].items()),
                "-" if srv["connections"] is None else str(srv["connections"]),
            )
        console.print(pins)
        for reason in pinning.get("refused", []):
            console.print(f"[yellow]not pinned:[/yellow] {reason}")
