"""`bgplb demo --routers 2`: two load-balancer routers behind an upstream's ECMP; one dies
under long-lived connections. How many connections broke?

Builds `bgplb.lab.routers2.TwoRouterLab`, waits until every agent has both sessions and both
routers route the VIP to every server, sends fresh requests, then opens `long_lived` keep-alive
connections (a request every 200 ms each) and kills router A the way a machine dies (its traffic
dropped, its daemon SIGKILLed); the upstream and the servers then route via router B only, as
their failure detection would. The connections router A carried now reach router B: they survive
only if B sends each to the same server as A did — what `[fib] group = "consistent"` is for.

A connection is broken when a request on it fails (2 s timeout) or another server answers it.
Everything is removed at the end, on error and on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import atexit
import signal
import time
from collections import Counter
from types import FrameType
from typing import Any

from rich.console import Console
from rich.table import Table

from bgplb.control.socket import ControlError, request
from bgplb.lab.labstate import leftovers
from bgplb.lab.probes import LongLived, NsLoop, fresh_requests
from bgplb.lab.routers2 import ROUTER_NODES, TwoRouterLab
from bgplb.lab.topology import VIP4, LabError

HOST = VIP4.split("/")[0]
BEFORE = 2.0  # s of traffic on the long-lived connections before the router dies
AFTER = 4.0  # s of traffic after it


class _Interrupted(BaseException):
    """SIGTERM/SIGHUP: unwind like Ctrl-C so that the finally blocks clean up."""


def _established(lab: TwoRouterLab, i: int) -> int:
    try:
        st = request(lab.state.agent_socket(i), "status", timeout=2)
    except ControlError:
        return 0
    return sum(1 for p in st.get("peers", []) if str(p.get("state", "")).lower() == "established")


def run_routers_demo(opts: Any, console: Console) -> dict[str, Any]:
    """Run the two-router demo (`opts`: demo.Options); always remove what it made."""
    group = "consistent" if opts.group == "auto" else opts.group
    lab = TwoRouterLab(
        name="demo",
        servers=opts.servers,
        router=opts.router,
        bfd=False,
        web=opts.web,
        hold_time=opts.hold_time,
        check_interval_ms=opts.check_interval_ms,
        drain_time=opts.drain_time,
        group=group,
        log=lambda text: console.print(f"   {text}", highlight=False),
    )
    figures: dict[str, Any] = {"routers": 2, "router": opts.router}
    if opts.router == "bgplb":
        figures["group"] = group
    done = False

    def cleanup() -> None:
        nonlocal done
        if done:
            return
        done = True
        problems = lab.teardown()
        figures["cleanup"] = {
            "left_behind": leftovers(lab.state) + problems,
            "namespaces": sorted(lab.state.namespaces.values()),
            "pids": [p.pid for p in lab.state.procs],
            "state_file": str(lab.state.path),
            "workdir": lab.state.workdir,
        }

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    def title(text: str) -> None:
        console.print(f"\n[bold cyan]{text}[/]")

    def say(text: str) -> None:
        console.print(f"   {text}", highlight=False)

    atexit.register(cleanup)
    old = {s: signal.signal(s, interrupted) for s in (signal.SIGTERM, signal.SIGHUP)}
    loop: NsLoop | None = None
    t0 = time.monotonic()
    try:
        what = f"bgplb router, {group} group" if opts.router == "bgplb" else "BIRD 2 ECMP"
        console.print(
            f"[bold]bgplb demo --routers 2[/]: client — upstream — router, router2 ({what}) — "
            f"{', '.join(lab.server_names)}; VIP {HOST}"
        )
        title("1. Building the topology in network namespaces")
        lab.build()
        loop = NsLoop(lab.client_ns.name)

        title("2. BGP sessions (every agent peers with both routers) and the routes")
        servers = range(1, lab.state.servers + 1)
        lab.wait(lambda: all(_established(lab, i) == 2 for i in servers), 30, "both sessions")
        lab.wait(lab.both_route_to_all, 30, f"both routers' routes to {VIP4}")
        up = lab.ns["upstream"].exec("ip", "route", "show", "exact", VIP4).strip()
        say(f"upstream: {' '.join(up.split())}")
        for node in ROUTER_NODES:
            say(f"{node}: {VIP4} via {', '.join(lab.nexthops(node=node) or [])}")

        title(f"3. {opts.requests} requests from the client, each on a fresh connection")
        answers = loop.run(fresh_requests(HOST, opts.requests))
        spread = Counter(f"srv{a.server}" for a in answers if a.server is not None)
        figures["fresh_requests"] = {
            "requests": len(answers),
            "answers": {f"srv{i}": spread.get(f"srv{i}", 0) for i in servers},
            "failed": sum(1 for a in answers if a.server is None),
        }
        say(
            "spread: "
            + ", ".join(f"{k} {v}" for k, v in figures["fresh_requests"]["answers"].items())
        )

        n = opts.long_lived
        title(f"4. router dies under {n} long-lived connections (a request every 200 ms each)")
        ll = LongLived(loop, HOST, n=n, period=0.2, timeout=2.0, max_time=60)
        ll.wait_open(15)
        time.sleep(BEFORE)
        t_kill = lab.kill_router("router")
        say("router: every packet dropped, its daemon SIGKILLed; the upstream and the servers")
        say("now route via router2 only (what their BGP/BFD sessions with it would do)")
        time.sleep(AFTER)
        conns = ll.stop()
        opened = [c for c in conns if c.server is not None]
        broken = [c for c in opened if c.broken]
        reasons = Counter(
            "another server answered" if "instead of" in (c.broken or "") else (c.broken or "")
            for c in broken
        )
        after = loop.run(fresh_requests(HOST, opts.requests))
        figures["router_dies"] = {
            "connections": len(opened),
            "failed_to_open": len(conns) - len(opened),
            "broken": len(broken),
            "broken_before_death": sum(1 for c in broken if (c.broken_at or 0) < t_kill),
            "reasons": dict(reasons),
            "requests_after_death": sum(c.requests for c in opened if not c.broken),
            "fresh_after_death": {
                "requests": len(after),
                "failed": sum(1 for a in after if a.server is None),
            },
        }
        rd = figures["router_dies"]
        say(f"broken: {rd['broken']}/{rd['connections']} ({dict(reasons) or 'none'})")
        figures["duration_s"] = round(time.monotonic() - t0, 1)

        title("Summary")
        table = Table()
        table.add_column("scenario")
        table.add_column("measured")
        table.add_column("result", justify="right")
        spread_text = ", ".join(f"{k} {v}" for k, v in figures["fresh_requests"]["answers"].items())
        fa = rd["fresh_after_death"]
        table.add_row("fresh requests", "answers per server", spread_text)
        broken_text = f"{rd['broken']}/{rd['connections']}"
        table.add_row(f"router dies ({what})", "long-lived connections broken", broken_text)
        table.add_row("", "fresh requests failed after it", f"{fa['failed']}/{fa['requests']}")
        console.print(table)
    except _Interrupted as exc:
        raise LabError(f"interrupted by {exc}; everything was removed") from None
    finally:
        if loop is not None:
            loop.close()
        console.print("\n[bold cyan]Cleaning up[/]: stopping every process, deleting namespaces")
        cleanup()
        atexit.unregister(cleanup)
        for s, h in old.items():
            signal.signal(s, h)
        left = figures["cleanup"]["left_behind"]
        console.print("   nothing left behind" if not left else f"   [red]left: {left}[/]")
    return figures
