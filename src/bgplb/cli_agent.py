"""The agent's commands: ``agent -c FILE``, ``status``, ``drain``, ``undrain``, ``config check``.

``add_agent_commands(subparsers)`` registers them on the ``bgplb`` parser; every subparser sets
``func`` (``args.func(args) -> int``). ``python -m bgplb.cli_agent ...`` runs them standalone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_SOCKETS = (Path("/run/bgplb/agent.sock"), Path("/run/bgplb/router.sock"))
DEFAULT_STATE = Path("/var/lib/bgplb/agent-state.json")


def _socket(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    for path in DEFAULT_SOCKETS:
        if path.exists():
            return path
    return DEFAULT_SOCKETS[0]


def state_file(option: str | None, configured: Path | None) -> Path:
    """The state file: ``--state-file``, else ``$BGPLB_STATE_FILE``, else ``[control]
    state_file``, else /var/lib/bgplb/agent-state.json."""
    chosen = option or os.environ.get("BGPLB_STATE_FILE") or configured or DEFAULT_STATE
    return Path(chosen)


def cmd_agent(args: argparse.Namespace) -> int:
    from bgplb.agent.daemon import AgentDaemon
    from bgplb.config import ConfigError, load_agent_config
    from bgplb.logs import setup

    try:
        config = load_agent_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print(
            f"bgplb agent: not starting: {len(exc.issues)} error(s) in {args.config}",
            file=sys.stderr,
        )
        return 2
    setup(args.log_level or config.logging.level, args.log_json or config.logging.json_)
    state_path = state_file(args.state_file, config.control.state_file)
    daemon = AgentDaemon(args.config, state_path=state_path, config=config)
    try:
        return asyncio.run(daemon.run())
    except KeyboardInterrupt:
        return 130


def cmd_status(args: argparse.Namespace) -> int:
    from bgplb.control.socket import ControlError, request

    try:
        status = request(_socket(args), "status")
    except ControlError as exc:
        print(f"bgplb status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2))
    elif isinstance(status, dict) and status.get("role") == "agent":
        from bgplb.control.agent_status import print_status

        print_status(status)
    else:
        print(json.dumps(status, indent=2))
    return 0


def _drain(args: argparse.Namespace, command: str) -> int:
    from bgplb.control.socket import ControlError, request

    extra = {"service": args.service} if args.service else {}
    try:
        result = request(_socket(args), command, **extra)
    except ControlError as exc:
        print(f"bgplb {command}: {exc}", file=sys.stderr)
        return 1
    if command == "drain":
        names = result.get("drained", [])
        for name in names:
            seconds = result.get("drain_time", {}).get(name)
            print(f"{name}: draining (GRACEFUL_SHUTDOWN now, withdrawal in {seconds:g}s)")
        if args.wait:
            limit = max(result.get("drain_time", {}).values(), default=0.0) + args.timeout
            return _wait_withdrawn(args, names, limit)
    else:
        for name in result.get("undrained", []):
            print(f"{name}: undrained (announced again while healthy)")
    return 0


def _still_announced(status: dict[str, Any], names: list[str]) -> list[str]:
    """The services of `names` whose withdrawal has not yet left for every router: a VIP is
    still announced, draining, or its withdrawal is not yet written to every peer."""
    busy = {"adding", "announced", "draining", "withdrawing"}
    return [
        s["name"]
        for s in status.get("services", [])
        if s["name"] in names and any(v["phase"] in busy for v in s.get("vips", []))
    ]


def _wait_withdrawn(args: argparse.Namespace, names: list[str], limit: float) -> int:
    """``drain --wait``: return once every drained service is withdrawn on the wire."""
    from bgplb.control.socket import ControlError, request

    loop_start = time.monotonic()
    while True:
        try:
            left = _still_announced(request(_socket(args), "status"), names)
        except ControlError as exc:
            print(f"bgplb drain --wait: {exc}", file=sys.stderr)
            return 1
        if not left:
            waited = time.monotonic() - loop_start
            for name in names:
                print(f"{name}: withdrawn: the withdrawal left for every peer ({waited:.1f}s)")
            return 0
        if time.monotonic() - loop_start > limit:
            print(
                f"bgplb drain --wait: still announced after {limit:g}s: {', '.join(left)}",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.05)


def cmd_drain(args: argparse.Namespace) -> int:
    return _drain(args, "drain")


def cmd_undrain(args: argparse.Namespace) -> int:
    return _drain(args, "undrain")


def cmd_config_check(args: argparse.Namespace) -> int:
    from bgplb.config import config_check

    ok, text = config_check(args.file)
    print(text, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _socket_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket", metavar="PATH", help="control socket (default /run/bgplb/agent.sock)"
    )


def add_agent_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the agent's commands on the ``bgplb`` subparsers."""
    p = subparsers.add_parser("agent", help="run the agent: health checks -> BGP announcements")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="agent config (TOML)")
    p.add_argument(
        "--state-file",
        metavar="PATH",
        help="drain state and owned VIPs (overrides $BGPLB_STATE_FILE and [control] state_file; "
        f"default {DEFAULT_STATE})",
    )
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-json", action="store_true", default=None, help="JSON log lines")
    p.set_defaults(func=cmd_agent)

    p = subparsers.add_parser("status", help="show the running daemon's peers and services")
    p.add_argument("--json", action="store_true", help="JSON instead of tables")
    _socket_option(p)
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("drain", help="GRACEFUL_SHUTDOWN, wait drain_time, withdraw")
    p.add_argument("service", nargs="?", help="one service (default: all)")
    p.add_argument(
        "--wait",
        action="store_true",
        help="return only once the withdrawal has left for every peer (e.g. in ExecStop=)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="with --wait: give up (exit 1) this long after drain_time (default 30)",
    )
    _socket_option(p)
    p.set_defaults(func=cmd_drain)

    p = subparsers.add_parser("undrain", help="announce drained services again")
    p.add_argument("service", nargs="?", help="one service (default: all)")
    _socket_option(p)
    p.set_defaults(func=cmd_undrain)

    p = subparsers.add_parser("config", help="configuration tools")
    sub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    check = sub.add_parser("check", help="validate a config file: OK, or every error")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=cmd_config_check)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bgplb")
    add_agent_commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
