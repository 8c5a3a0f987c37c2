"""The `bgplb` command."""

from __future__ import annotations

import argparse
import sys

from bgplb import __version__
from bgplb.cli_agent import add_agent_commands
from bgplb.cli_lab import add_lab_commands
from bgplb.cli_router import add_router_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bgplb",
        description="Load balancing without load balancers: BGP anycast with health checks, "
        "ECMP router mode and BFD.",
    )
    parser.add_argument("--version", action="version", version=f"bgplb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the version and exit")
    add_agent_commands(sub)
    add_router_commands(sub)
    add_lab_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is not None:
        return int(args.func(args))
    if args.command == "version":
        print(f"bgplb {__version__}")
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
