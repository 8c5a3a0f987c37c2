"""The lab's commands: ``demo`` and ``lab up|down|status|exec``.

``add_lab_commands(subparsers)`` registers them on the ``bgplb`` parser; every subparser sets
``func`` (``args.func(args) -> int``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def _prereq(router: str) -> str | None:
    from bgplb.lab.topology import prerequisites

    return prerequisites(router)


def cmd_demo(args: argparse.Namespace) -> int:
    from bgplb.lab import demo

    reason = _prereq(args.router)
    if reason:
        print(f"bgplb demo: {reason}", file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "bgplb demo: --plot needs matplotlib: pip install 'bgplb[plot]' "
                "(or: .venv/bin/pip install matplotlib)",
                file=sys.stderr,
            )
            return 2
    opts = demo.Options(
        servers=args.servers,
        router=args.router,
        bfd=args.bfd,
        web=args.web,
        requests=args.requests,
        hold_time=args.hold_time,
        check_interval_ms=args.check_interval_ms,
        plot=Path(args.plot) if args.plot else None,
        routers=args.routers,
        group=args.group,
        long_lived=args.long_lived or (60 if args.routers == 2 else 20),
    )
    if args.routers == 2 and args.plot:
        print("bgplb demo: --plot is not available with --routers 2", file=sys.stderr)
        return 2
    return demo.main(opts, json_out=args.json)


def cmd_lab(args: argparse.Namespace) -> int:
    from bgplb.lab import labctl

    action = args.lab_command
    reason = _prereq(args.router) if action == "up" else None
    if action != "up" and os.geteuid() != 0:
        reason = "the lab needs root (run it with sudo)"
    if reason:
        print(f"bgplb lab {action}: {reason}", file=sys.stderr)
        return 2
    result: int = getattr(labctl, f"cmd_{action}")(args)
    return result


def _topology_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--servers", type=int, default=2, metavar="N", help="servers (default 2)")
    p.add_argument(
        "--router",
        choices=("bgplb", "bird", "frr"),
        default="bgplb",
        help="the router: bgplb router (default), BIRD 2 or FRR",
    )
    p.add_argument(
        "--bfd",
        choices=("auto", "on", "off"),
        default="auto",
        help="BFD between agents and router: auto = use it when this build has it (default)",
    )
    p.add_argument(
        "--routers",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: two routers behind an upstream's ECMP (docs/demo.md, Two routers)",
    )
    p.add_argument(
        "--group",
        choices=("auto", "consistent", "resilient"),
        default="auto",
        help="--routers 2 with bgplb router: its [fib] group (auto: consistent)",
    )
    p.add_argument(
        "--web",
        choices=("auto", "nginx", "builtin"),
        default="auto",
        help="web servers: nginx when installed (auto), or the built-in one",
    )


def add_lab_commands(subparsers: Any) -> None:
    """Register ``demo`` and ``lab`` on the ``bgplb`` subparsers."""
    p = subparsers.add_parser(
        "demo",
        help="build client/router/servers in namespaces; show ECMP, failover and drain",
        description="Builds client — router — srv1..srvN in network namespaces (root), shows "
        "round robin over the VIP, then measures failover and drain; removes everything at "
        "the end.",
    )
    _topology_options(p)
    p.add_argument("--requests", type=int, default=20, metavar="N", help="fresh requests (20)")
    p.add_argument("--hold-time", type=int, default=3, metavar="S", help="BGP hold time (3)")
    p.add_argument(
        "--check-interval-ms", type=int, default=200, metavar="MS", help="HTTP check interval"
    )
    p.add_argument("--plot", metavar="FILE.png", help="write a timeline (needs matplotlib)")
    p.add_argument(
        "--long-lived", type=int, default=0, metavar="N",
        help="long-lived connections (20; 60 with --routers 2)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    p.set_defaults(func=cmd_demo)

    lab = subparsers.add_parser("lab", help="the demo's topology, left running")
    sub = lab.add_subparsers(dest="lab_command", metavar="ACTION", required=True)
    up = sub.add_parser("up", help="build the lab and leave it running")
    _topology_options(up)
    up.add_argument("--hold-time", type=int, default=3, metavar="S", help="BGP hold time (3)")
    up.set_defaults(func=cmd_lab)
    st = sub.add_parser("status", help="namespaces, processes, sessions and the VIP route")
    st.add_argument("--json", action="store_true", help="JSON instead of text")
    st.set_defaults(func=cmd_lab)
    ex = sub.add_parser("exec", help="run a command in a node: client, router, srv1…")
    ex.add_argument("node")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD…")
    ex.set_defaults(func=cmd_lab)
    down = sub.add_parser("down", help="stop everything and delete the namespaces")
    down.set_defaults(func=cmd_lab)
