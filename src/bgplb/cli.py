"""The `bgplb` command.

``bgplb status --watch`` (``--interval SECONDS``) asks the daemon again and redraws the answer
in place every interval (rich Live) until Ctrl-C; the answer is rendered by the status command
itself (whatever role the daemon reports), so the watch shows exactly what ``bgplb status``
prints. An error (daemon restarting) is shown in the frame and the watch goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

from bgplb import __version__
from bgplb.cli_agent import add_agent_commands
from bgplb.cli_completion import add_completion_command
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
    _add_watch(sub)
    add_completion_command(sub, parser)  # last: it describes every command above
    return parser


# -- bgplb status --watch ----------------------------------------------------------------------

Handler = Callable[[argparse.Namespace], int]


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0.1:
        raise argparse.ArgumentTypeError(f"{text}: at least 0.1 seconds")
    return value


def _add_watch(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``--watch``/``--interval`` on the ``status`` subcommand, around its handler."""
    status = subparsers.choices.get("status")
    if status is None:
        return
    status.add_argument(
        "-w", "--watch", action="store_true", help="redraw every --interval seconds until Ctrl-C"
    )
    status.add_argument(
        "--interval",
        type=_interval,
        metavar="SECONDS",
        help="seconds between two redraws (default 1; implies --watch)",
    )
    once: Handler = status.get_default("func")

    def handler(args: argparse.Namespace) -> int:
        if args.watch or args.interval is not None:
            return watch_status(args, once)
        return once(args)

    status.set_defaults(func=handler)


@contextlib.contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _snapshot(once: Handler, args: argparse.Namespace) -> tuple[str, str]:
    """What one ``bgplb status`` prints: (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            once(args)
        except SystemExit:
            pass
    return out.getvalue().rstrip("\n"), err.getvalue().rstrip("\n")


def watch_status(
    args: argparse.Namespace,
    once: Handler,
    console: Console | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Run ``once`` every ``args.interval`` seconds and show its output in place until Ctrl-C
    (exit status 0). Not on a terminal: each answer is printed after the previous one."""
    from rich.console import Console as RichConsole
    from rich.console import Group
    from rich.live import Live
    from rich.rule import Rule
    from rich.text import Text

    console = console or RichConsole()
    interval = args.interval if args.interval is not None else 1.0
    # the status command builds its own Console on the captured stdout: keep colours
    colours = {"FORCE_COLOR": "1"} if console.is_terminal and not console.no_color else {}

    def frame() -> Group:
        with _environ({**colours, "COLUMNS": str(console.width)}):
            out, err = _snapshot(once, args)
        parts = [
            Text(
                f"bgplb status, every {interval:g} s, {time.strftime('%H:%M:%S')} (Ctrl-C to quit)",
                style="dim",
            ),
            Text.from_ansi(out),
        ]
        if err:
            parts.append(Text.from_ansi(err, style="red"))
        return Group(*parts)

    try:
        if not console.is_terminal:
            while True:
                console.print(frame())
                console.print(Rule(style="dim"))
                sleep(interval)
        with Live(
            console=console,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
            vertical_overflow="ellipsis",
        ) as live:
            while True:
                live.update(frame(), refresh=True)
                sleep(interval)
    except KeyboardInterrupt:
        return 0


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
