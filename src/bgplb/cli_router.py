"""The router's commands of the `bgplb` CLI: ``bgplb router -c FILE`` and ``bgplb status``.

``status`` is shared with the agent: it asks the daemon on the control socket (``--socket``, or
``/run/bgplb/router.sock`` then ``/run/bgplb/agent.sock``; ``--role`` picks one) and renders the
answer according to the ``role`` it carries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_SOCKETS = {"router": "/run/bgplb/router.sock", "agent": "/run/bgplb/agent.sock"}


def add_router_commands(subparsers: Any) -> None:
    """Register ``router`` (and ``status`` unless another role registered it already)."""
    router = subparsers.add_parser(
        "router", help="run the BGP router: sessions from servers into kernel ECMP groups"
    )
    router.add_argument("-c", "--config", required=True, metavar="FILE", help="router TOML file")
    router.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    router.set_defaults(func=run_router_command)
    if "status" not in subparsers.choices:
        status = subparsers.add_parser("status", help="show the running daemon's state")
        status.add_argument("--json", action="store_true", help="print the raw JSON")
        status.add_argument("--socket", metavar="PATH", help="control socket of the daemon")
        status.add_argument("--role", choices=["router", "agent"], help="which daemon to ask")
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
    setup_logging(args.log_level or config.logging.level)
    try:
        return asyncio.run(Router(config, Path(args.config)).run())
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # last resort: one line, not a traceback
        print(f"bgplb router: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def status_command(args: argparse.Namespace) -> int:
    from bgplb.control.socket import ControlError, request

    if args.socket:
        candidates = [args.socket]
    elif args.role:
        candidates = [DEFAULT_SOCKETS[args.role]]
    else:
        candidates = [p for p in DEFAULT_SOCKETS.values() if Path(p).exists()] or [
            DEFAULT_SOCKETS["router"]
        ]
    errors = []
    for path in candidates:
        try:
            result = request(path, "status")
        except ControlError as exc:
            errors.append(str(exc))
            continue
        if args.json:
            print(json.dumps(result, indent=2, default=str))
        elif isinstance(result, dict) and result.get("role") == "router":
            from bgplb.control.router_status import render_status

            render_status(result)
        else:
            render = _agent_renderer()
            if render is not None:
                render(result)
            else:
                print(json.dumps(result, indent=2, default=str))
        return 0
    for e in errors:
        print(f"bgplb status: {e}", file=sys.stderr)
    return 1


def _agent_renderer() -> Any:
    try:
        from bgplb.control import agent_status  # type: ignore[attr-defined]
    except ImportError:
        return None
    return getattr(agent_status, "render_status", None)
