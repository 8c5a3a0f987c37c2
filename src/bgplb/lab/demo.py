"""`bgplb demo`: the whole setup on one machine, with measured failover and drain.

Builds the lab topology (`bgplb.lab.topology`), waits for the BGP sessions and the router's
ECMP route, sends fresh requests from the client, then runs three scenarios while the client
keeps sending requests and the router's kernel route is polled:

1. the web server on srv1 stops → srv1's check fails, its agent withdraws; it comes back;
2. srv1 dies (all its traffic dropped with nftables, its agent SIGKILLed) → the router notices
   through BFD when both ends run it, otherwise through the hold timer; it comes back;
3. srv2 is drained (`bgplb drain web`) while long-lived connections run, kept open until 2 s
   after its withdrawal → broken connections before and after the withdrawal, where new
   connections went; undrain.

Everything it made is removed at the end, on error and on Ctrl-C/SIGTERM (try/finally, signal
handlers, atexit). Figures are returned as a dict (`--json` prints it).
"""

from __future__ import annotations

import atexit
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.table import Table

from bgplb.control.socket import ControlError, request
from bgplb.lab.labstate import leftovers
from bgplb.lab.probes import Answer, LongLived, NsLoop, RouteWatcher, Stream, fresh_requests
from bgplb.lab.topology import BGPLB, VIP4, VIP6, Lab, LabError, _python_env

HOST = VIP4.split("/")[0]
_ROUTER_NAMES = {"bgplb": "bgplb router", "bird": "BIRD 2", "frr": "FRR"}
GRACE = 0.3  # s after the route change during which a request may still fail (in flight)
KEEP_AFTER = 2.0  # s the long-lived connections of scenario 3 stay open after the withdrawal


@dataclass
class Options:
    servers: int = 2
    router: str = "bgplb"
    bfd: str = "auto"  # auto | on | off
    web: str = "auto"
    requests: int = 20
    hold_time: int = 3
    check_interval_ms: int = 200
    drain_time: float = 6.0
    long_lived: int = 20
    plot: Path | None = None
    routers: int = 1  # 2: bgplb.lab.demo_routers (a router dies under long-lived connections)
    group: str = "auto"  # --routers 2, bgplb router: consistent (auto) or resilient


@dataclass
class Run:
    """What the demo observed: figures, the client's answers and the events, for the plot."""

    opts: Options
    console: Console
    t0: float = field(default_factory=time.monotonic)
    figures: dict[str, Any] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    step: int = 0

    def event(self, label: str) -> float:
        t = time.monotonic()
        self.events.append((t - self.t0, label))
        return t

    def title(self, text: str) -> None:
        self.step += 1
        self.console.print(f"\n[bold cyan]{self.step}. {text}[/]")

    def say(self, text: str) -> None:
        self.console.print(f"   {text}", highlight=False)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1000:.0f} ms" if seconds < 2 else f"{seconds:.2f} s"


def _spread(answers: list[Answer], servers: int) -> dict[str, int]:
    counts = Counter(f"srv{a.server}" for a in answers if a.server is not None)
    return {f"srv{i}": counts.get(f"srv{i}", 0) for i in range(1, servers + 1)}


def _bfd_state(status: dict[str, Any]) -> str | None:
    """BFD state of the first peer in an agent/router status document, if it reports one."""
    for peer in status.get("peers", []):
        bfd = peer.get("bfd")
        if isinstance(bfd, dict):
            bfd = bfd.get("state")
        if bfd:
            return str(bfd).lower()
    return None


class _Interrupted(BaseException):
    """SIGTERM/SIGHUP: unwind like Ctrl-C so that the finally blocks clean up."""


def run_demo(opts: Options, console: Console | None = None) -> dict[str, Any]:
    """Run the demo; always remove what it made. Raises LabError with a readable message."""
    console = console or Console(stderr=True)
    r = Run(opts, console)
    lab = Lab(
        name="demo",
        servers=opts.servers,
        router=opts.router,
        bfd=opts.bfd != "off",
        web=opts.web,
        hold_time=opts.hold_time,
        check_interval_ms=opts.check_interval_ms,
        drain_time=opts.drain_time,
        log=r.say,
    )
    done = False

    def cleanup() -> None:
        nonlocal done
        if done:
            return
        done = True
        problems = lab.teardown()
        left = leftovers(lab.state)
        r.figures["cleanup"] = {
            "left_behind": left + problems,
            "namespaces": sorted(lab.state.namespaces.values()),
            "pids": [p.pid for p in lab.state.procs],
            "state_file": str(lab.state.path),
            "workdir": lab.state.workdir,
        }

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    atexit.register(cleanup)
    old = {s: signal.signal(s, interrupted) for s in (signal.SIGTERM, signal.SIGHUP)}
    loop: NsLoop | None = None
    watcher: RouteWatcher | None = None
    try:
        web = lab.state.web
        router = _ROUTER_NAMES[opts.router]
        console.print(
            f"[bold]bgplb demo[/]: client — router ({router}) — "
            f"{', '.join(lab.server_names)}; web servers: {web}; VIP {HOST}"
        )
        r.title("Building the topology in network namespaces")
        lab.build()
        loop = NsLoop(lab.client_ns.name)
        _sessions(r, lab)
        watcher = RouteWatcher(lab.nexthops, interval=0.02)
        _fresh(r, lab, loop)
        _web_stops(r, lab, loop, watcher)
        _host_dies(r, lab, loop, watcher)
        _drain(r, lab, loop, watcher)
        r.figures["duration_s"] = round(time.monotonic() - r.t0, 1)
        _summary(r)
        if opts.plot is not None:
            from bgplb.lab.plot import plot_timeline

            plot_timeline(opts.plot, r.answers, r.events, r.t0, opts.servers, router)
            r.say(f"timeline written to {opts.plot}")
    except _Interrupted as exc:
        raise LabError(f"interrupted by {exc}; everything was removed") from None
    finally:
        if watcher is not None:
            watcher.stop()
        if loop is not None:
            loop.close()
        console.print("\n[bold cyan]Cleaning up[/]: stopping every process, deleting namespaces")
        cleanup()
        atexit.unregister(cleanup)
        for s, h in old.items():
            signal.signal(s, h)
        left = r.figures["cleanup"]["left_behind"]
        console.print("   nothing left behind" if not left else f"   [red]left: {left}[/]")
    return r.figures


def _sessions(r: Run, lab: Lab) -> None:
    r.title("BGP sessions and the router's ECMP route")
    start = time.monotonic()
    up: dict[str, float] = {}
    bfd: dict[str, str | None] = {}
    deadline = start + 30
    while len(up) < lab.state.servers and time.monotonic() < deadline:
        for i, name in enumerate(lab.server_names, 1):
            if name in up:
                continue
            try:
                status = request(lab.state.agent_socket(i), "status", timeout=2)
            except ControlError:
                continue
            peer = (status.get("peers") or [{}])[0]
            if str(peer.get("state", "")).lower() == "established":
                up[name] = time.monotonic() - start
                bfd[name] = _bfd_state(status)
                r.say(f"{name} ({lab.server_address(i)}) ⇄ router: Established")
        time.sleep(0.05)
    if len(up) < lab.state.servers:
        missing = sorted(set(lab.server_names) - set(up))
        raise LabError(f"BGP session(s) of {', '.join(missing)} not up after 30 s; see the logs")
    want = sorted(lab.server_address(i) for i in range(1, lab.state.servers + 1))
    lab.wait(lambda: lab.nexthops() == want, 30, f"the router's route to {VIP4} via every server")
    r.say(f"the router has one route for the VIP with {lab.state.servers} next hops:")
    r.console.print(lab.route_text(VIP4), style="dim", highlight=False)
    r.console.print(lab.route_text(VIP6).split("\n", 2)[1], style="dim", highlight=False)
    # BFD is used when both ends run it: the agent then reports the session's state.
    active = bool(bfd) and all(s == "up" for s in bfd.values())
    if r.opts.bfd != "off" and not active:
        deadline = time.monotonic() + 3
        while not active and any(bfd.values()) and time.monotonic() < deadline:
            states = [
                _bfd_state(request(lab.state.agent_socket(i), "status", timeout=2))
                for i in range(1, lab.state.servers + 1)
            ]
            active = all(s == "up" for s in states)
            time.sleep(0.1)
    if r.opts.bfd == "on" and not active:
        raise LabError("--bfd on: the agents report no BFD session up (BFD not available)")
    r.figures["bfd"] = {"requested": r.opts.bfd != "off", "active": active}
    r.say(
        "BFD: up on every session (100 ms x 3)"
        if active
        else ("BFD: not used" if r.opts.bfd == "off" else "BFD: not available in this build")
    )
    r.figures["sessions"] = {k: round(v, 3) for k, v in up.items()}


def _fresh(r: Run, lab: Lab, loop: NsLoop) -> None:
    n = r.opts.requests
    r.title(f"{n} requests from the client, each on a fresh connection (curl http://{HOST}/)")
    answers = loop.run(fresh_requests(HOST, n))
    r.answers += answers
    table = Table(box=None, padding=(0, 2), show_edge=False)
    table.add_column("#", justify="right")
    table.add_column("source port", justify="right")
    table.add_column("answer")
    for k, a in enumerate(answers, 1):
        text = f"Welcome to nginx {a.server} !" if a.server else f"[red]{a.error}[/]"
        table.add_row(str(k), str(a.sport or "—"), text)
    r.console.print(table)
    spread = _spread(answers, lab.state.servers)
    r.say(
        "spread: "
        + ", ".join(f"{k} {v}" for k, v in spread.items())
        + " (the router hashes source/destination addresses and ports)"
    )
    r.figures["fresh_requests"] = {
        "requests": n,
        "answers": spread,
        "failed": sum(1 for a in answers if a.server is None),
    }


def _window(
    answers: list[Answer],
    start: float,
    changed: float | None,
    rejoined: float | None = None,
) -> tuple[dict[str, Any], list[Answer]]:
    """Failed requests in the window the failure explains ([start, route change + GRACE]) and
    outside it. `rejoined`: the moment the server re-joined a plain multipath route (BIRD's
    kernel route): the kernel re-hashes every flow then, so a request in flight at that moment
    may land on the other server and be reset — counted apart (``errors_at_rejoin``), not as
    unexplained. Resilient groups (bgplb router) move no active flow: nothing is excused."""
    failed = [a for a in answers if a.server is None]
    end = (changed if changed is not None else start) + GRACE
    at_rejoin = [
        a
        for a in failed
        if rejoined is not None and not start <= a.t <= end and abs(a.t - rejoined) <= GRACE
    ]
    outside = [a for a in failed if not start <= a.t <= end and a not in at_rejoin]
    last = max((a.t for a in failed if start <= a.t <= end), default=None)  # last failed start
    return (
        {
            "requests": len(answers),
            "failed": len(failed),
            "error_window_ms": round((last - start) * 1000) if last is not None else 0,
            "errors_outside_window": len(outside),
            "errors_at_rejoin": len(at_rejoin),
        },
        outside,
    )


def _client_text(figs: dict[str, Any], outside: list[Answer], after: str) -> str:
    if outside:
        return f"[red]client: {len(outside)} request(s) failed outside the window[/]"
    if not figs["failed"]:
        return f"client: all {figs['requests']} requests answered"
    rejoin = figs.get("errors_at_rejoin", 0)
    in_window = figs["failed"] - rejoin
    text = (
        f"client: {in_window} of {figs['requests']} requests failed, all started within "
        f"{figs['error_window_ms']} ms after {after}"
    )
    if rejoin:
        text += (
            f"; {rejoin} in flight when srv1 re-joined the plain multipath route was reset "
            "(the kernel re-hashes every flow; resilient groups would not)"
        )
    return text + "; every other request was answered"


def _route(lab: Lab, hops: list[str]) -> list[str]:
    return [lab.server_of(h) for h in hops]


def _web_stops(r: Run, lab: Lab, loop: NsLoop, watcher: RouteWatcher) -> None:
    r.title("Scenario 1: the web server on srv1 stops")
    srv1 = lab.server_address(1)
    stream = Stream(loop, HOST, interval=0.05, timeout=0.5)
    time.sleep(1.0)
    r.say("client: a fresh request every 50 ms; router: kernel route polled every 20 ms")
    t_stop = r.event("srv1 web stopped")
    lab.stop_web(1)
    r.say(f"stopped the web server on srv1 ({lab.state.web}, SIGTERM)")
    t_drop = watcher.wait_for(lambda h: srv1 not in h, 15, since=t_stop)
    if t_drop is None:
        stream.stop()
        raise LabError("the router kept srv1 after its web server stopped (15 s)")
    r.event("router drops srv1")
    r.say(
        f"router dropped srv1 {_ms(t_drop - t_stop)} after the web server stopped "
        f"(check every {r.opts.check_interval_ms} ms, fall 2); route now via "
        f"{', '.join(_route(lab, watcher.current))}"
    )
    time.sleep(0.5)
    t_start = time.monotonic()
    lab.start_web(1)
    t_start = r.event("srv1 web back")
    t_back = watcher.wait_for(lambda h: srv1 in h, 15, since=t_start)
    if t_back is None:
        stream.stop()
        raise LabError("srv1 did not come back into the route after its web server restarted")
    r.event("router adds srv1")
    r.say(f"web server started again: srv1 back in the route after {_ms(t_back - t_start)}")
    time.sleep(1.0)
    answers = stream.stop()
    r.answers += answers
    rejoined = t_back if lab.state.router != "bgplb" else None  # plain multipath: see _window
    figs, outside = _window(answers, t_stop, t_drop, rejoined)
    r.say(_client_text(figs, outside, "the stop"))
    r.figures["web_stop"] = {
        **figs,
        "route_drop_ms": round((t_drop - t_stop) * 1000),
        "route_back_ms": round((t_back - t_start) * 1000),
        "route_after_drop": [s for s in _route(lab, _at(watcher, t_drop))],
        "route_restored": _route(lab, _at(watcher, t_back)),
    }


def _at(watcher: RouteWatcher, t: float) -> list[str]:
    hops: list[str] = []
    for when, h in watcher.changes:
        if when <= t:
            hops = h
    return hops


def _host_dies(r: Run, lab: Lab, loop: NsLoop, watcher: RouteWatcher) -> None:
    bfd = r.figures["bfd"]["active"]
    how = "BFD (100 ms x 3)" if bfd else f"the hold timer ({r.opts.hold_time} s)"
    r.title(f"Scenario 2: srv1 dies — the router notices through {how}")
    srv1 = lab.server_address(1)
    stream = Stream(loop, HOST, interval=0.05, timeout=0.5)
    time.sleep(1.0)
    t_kill = r.event("srv1 dies")
    lab.ns["srv1"].drop_all_traffic()
    lab.kill_agent(1)
    r.say("dropped every packet in and out of srv1 (nftables) and SIGKILLed its agent")
    t_drop = watcher.wait_for(lambda h: srv1 not in h, r.opts.hold_time + 10, since=t_kill)
    if t_drop is None:
        stream.stop()
        raise LabError("the router kept the dead srv1 in its route")
    r.event("router drops srv1")
    r.say(f"router dropped srv1 {_ms(t_drop - t_kill)} after it died")
    time.sleep(0.5)
    lab.ns["srv1"].allow_all_traffic()
    lab.start_agent(1)
    t_start = r.event("srv1 back")
    t_back = watcher.wait_for(lambda h: srv1 in h, 30, since=t_start)
    if t_back is None:
        stream.stop()
        raise LabError("srv1 did not come back after its agent restarted")
    r.event("router adds srv1")
    r.say(
        "traffic allowed again, agent restarted: srv1 back in the route after "
        f"{_ms(t_back - t_start)}"
    )
    time.sleep(1.0)
    answers = stream.stop()
    r.answers += answers
    rejoined = t_back if lab.state.router != "bgplb" else None  # plain multipath: see _window
    figs, outside = _window(answers, t_kill, t_drop, rejoined)
    r.say(_client_text(figs, outside, "srv1 died"))
    r.figures["host_down"] = {
        **figs,
        "detection": "bfd" if bfd else "hold_timer",
        "route_drop_ms": round((t_drop - t_kill) * 1000),
        "route_back_ms": round((t_back - t_start) * 1000),
        "route_after_drop": _route(lab, _at(watcher, t_drop)),
        "route_restored": _route(lab, _at(watcher, t_back)),
    }


def _bgplb(lab: Lab, *args: str) -> str:
    proc = subprocess.run(
        [*BGPLB, *args], capture_output=True, text=True, timeout=20, env=_python_env()
    )
    if proc.returncode != 0:
        raise LabError(f"bgplb {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _vip_phase(lab: Lab, i: int) -> str | None:
    """The agent of server `i`'s phase for VIP4 (`draining`, `withdrawing`, `idle`, …)."""
    try:
        status = request(lab.state.agent_socket(i), "status", timeout=2)
    except ControlError:
        return None
    for service in status.get("services", []):
        for v in service.get("vips", []):
            if v.get("vip") == VIP4:
                return str(v.get("phase"))
    return None


def _wait_withdrawal(lab: Lab, i: int, timeout: float) -> tuple[float, float] | None:
    """Poll the agent every 20 ms until it has withdrawn the drained VIP: `(lo, hi)` where `lo`
    is the start of the last poll that still saw it draining (the withdrawal came after) and
    `hi` the end of the first that saw it withdrawn (it came before)."""
    deadline = time.monotonic() + timeout
    lo = time.monotonic()
    while time.monotonic() < deadline:
        t = time.monotonic()
        phase = _vip_phase(lab, i)
        if phase in ("withdrawing", "idle"):
            return lo, time.monotonic()
        if phase == "draining":
            lo = t
        time.sleep(0.02)
    return None


def _drain(r: Run, lab: Lab, loop: NsLoop, watcher: RouteWatcher) -> None:
    n = r.opts.long_lived
    i = 2 if lab.state.servers >= 2 else 1
    name, addr = f"srv{i}", lab.server_address(i)
    drain_time = r.opts.drain_time
    router = _ROUTER_NAMES[lab.state.router]
    r.title(f"Scenario 3: {name} is drained while {n} long-lived connections run")
    conns = LongLived(loop, HOST, n=n, period=0.2)
    conns.wait_open()
    on = Counter(f"srv{c.server}" for c in conns.connections if c.server)
    r.say(
        f"{n} keep-alive connections, one request every 200 ms each: "
        + ", ".join(f"{k} {v}" for k, v in sorted(on.items()))
    )
    stream = Stream(loop, HOST, interval=0.1, timeout=0.5)
    time.sleep(0.5)
    sock = lab.state.agent_socket(i)
    t_drain = r.event(f"{name} drained")
    out = _bgplb(lab, "drain", "web", "--socket", str(sock))
    r.say(f"$ bgplb drain web --socket {sock}\n   {out}")
    # The long-lived connections stay open through the withdrawal (drain_time later) and for
    # KEEP_AFTER more: what happens to connections that have not finished by then is the point.
    seen = _wait_withdrawal(lab, i, drain_time + 10)
    if seen is None:
        conns.stop()
        stream.stop()
        raise LabError(f"the agent of {name} never withdrew the VIP after the drain")
    t_w_lo, t_w_hi = seen
    r.event(f"{name} withdrawn")
    time.sleep(max(0.0, t_w_hi + KEEP_AFTER - time.monotonic()))
    t_closed = r.event("long-lived closed")
    result = conns.stop()
    t_gone = watcher.wait_for(lambda h: addr not in h, 15, since=t_drain)
    if t_gone is None:
        stream.stop()
        raise LabError(f"{name} was never taken out of the route after the drain")
    if t_gone > t_w_hi - 1.0:  # left with the withdrawal: let new connections show it
        time.sleep(max(0.0, t_gone + 1.0 - time.monotonic()))
    r.event(f"router drops {name}")
    during = stream.stop()
    r.answers += during
    broken = [c for c in result if c.broken]
    before = [c for c in broken if c.broken_at is not None and c.broken_at < t_w_lo]
    after = [c for c in broken if c not in before]
    open_at_withdrawal = [c for c in result if c.requests and c not in before]
    pinned_after = sum(
        1 for c in result for t, s in c.answered if t >= t_w_hi and s == i and c.server == i
    )
    new_during = [a for a in during if t_drain + 1.0 <= a.t < t_gone]
    new_after = [a for a in during if a.t >= t_gone + GRACE]
    new_since = [a for a in during if a.t >= t_drain]
    d_spread = _spread(new_during, lab.state.servers)
    a_spread = _spread(new_after, lab.state.servers)
    s_spread = _spread(new_since, lab.state.servers)
    r.say(
        f"{name} withdrawn by its agent {_ms(t_w_hi - t_drain)} after the drain "
        f"(drain_time {drain_time:g} s); long-lived connections closed by the client "
        f"{_ms(t_closed - t_w_hi)} after the withdrawal"
    )
    r.say(
        f"long-lived connections: {len(before)} of {n} broken before the withdrawal, "
        f"{len(after)} of the {len(open_at_withdrawal)} still open at the withdrawal broken after "
        f"it ({sum(c.requests for c in result)} requests answered; {pinned_after} answered by "
        f"{name} on its connections after the withdrawal)"
    )
    for c in broken:
        when = "before" if c in before else "after"
        r.say(f"[red]broken ({when} the withdrawal): {c.broken}[/]")
    if before and lab.state.router != "bgplb":
        r.say(
            f"{router} has no connection pinning: it moved {name}'s connections to the other "
            "servers during the drain, which reset them"
        )
    if after and lab.state.router != "bgplb":
        r.say(
            f"{router} has no connection pinning: once {name} is withdrawn its connections are "
            "routed to the other servers, which reset them"
        )
    early = t_gone - t_drain < drain_time - 1.0
    if early:
        r.say(
            f"the router took {name} out of the route {_ms(t_gone - t_drain)} after the drain "
            "started: it acts on GRACEFUL_SHUTDOWN at once, without waiting for the withdrawal"
            + (
                f"; connection pinning keeps {name}'s open connections on it"
                if lab.state.router == "bgplb"
                else ""
            )
        )
    else:
        note = (
            ""
            if lab.state.router == "bgplb" or d_spread[name] == 0
            else f" ({router} as configured here keeps {name} at full weight until the withdrawal)"
        )
        r.say(
            f"new connections during the drain (GRACEFUL_SHUTDOWN): {d_spread[name]} of "
            f"{len(new_during)} to {name}{note}"
        )
        r.say(f"{name} out of the route {_ms(t_gone - t_drain)} after the drain")
    r.say(
        f"new connections since the drain started: {s_spread[name]} of {len(new_since)} to "
        f"{name}; after it left the route: {a_spread[name]} of {len(new_after)}"
    )
    t_undrain = r.event(f"{name} undrained")
    out = _bgplb(lab, "undrain", "web", "--socket", str(sock))
    r.say(f"$ bgplb undrain web --socket {sock}\n   {out}")
    t_back = watcher.wait_for(lambda h: addr in h, 20, since=t_undrain)
    if t_back is None:
        raise LabError(f"{name} did not come back after undrain")
    r.event(f"router adds {name}")
    r.say(f"{name} back in the route after {_ms(t_back - t_undrain)}")
    r.figures["drain"] = {
        "server": name,
        "connections": n,
        "broken": len(broken),
        "broken_reasons": [c.broken for c in broken],
        "broken_before_withdrawal": len(before),
        "broken_after_withdrawal": len(after),
        "open_at_withdrawal": len(open_at_withdrawal),
        "answered_by_drained_after_withdrawal": pinned_after,
        "long_lived_on": dict(on),
        "new_during_drain": d_spread,
        "new_since_drain": s_spread,
        "new_after_withdrawal": a_spread,
        "withdrawal_ms": round((t_gone - t_drain) * 1000),
        "agent_withdrawal_ms": round((t_w_hi - t_drain) * 1000),
        "long_lived_closed_after_withdrawal_ms": round((t_closed - t_w_hi) * 1000),
        "route_after_withdrawal": _route(lab, _at(watcher, max(t_gone, t_w_hi))),
        "route_restored": _route(lab, _at(watcher, t_back)),
        "route_back_ms": round((t_back - t_undrain) * 1000),
    }


def _errors_cell(figs: dict[str, Any]) -> str:
    """``failed/requests within N ms``; just ``0/requests`` when nothing failed (no window)."""
    if not figs["failed"]:
        return f"0/{figs['requests']}"
    return f"{figs['failed']}/{figs['requests']} within {figs['error_window_ms']} ms"


def _summary(r: Run) -> None:
    f = r.figures
    r.title("Summary")
    table = Table(show_lines=False)
    table.add_column("scenario")
    table.add_column("measured")
    table.add_column("result", justify="right")
    fr = f["fresh_requests"]
    table.add_row(
        f"{fr['requests']} fresh requests",
        "answers per server",
        ", ".join(f"{k} {v}" for k, v in fr["answers"].items()),
    )
    w = f["web_stop"]
    table.add_row(
        "1. web server on srv1 stops", "→ router drops srv1", _ms(w["route_drop_ms"] / 1000)
    )
    table.add_row("", "client errors", _errors_cell(w))
    table.add_row("", "web back → srv1 in the route", _ms(w["route_back_ms"] / 1000))
    h = f["host_down"]
    how = "BFD" if h["detection"] == "bfd" else f"hold timer {r.opts.hold_time} s"
    table.add_row(f"2. srv1 dies ({how})", "→ router drops srv1", _ms(h["route_drop_ms"] / 1000))
    table.add_row("", "client errors", _errors_cell(h))
    d = f["drain"]
    srv = d["server"]
    table.add_row(
        f"3. {srv} drained",
        "long-lived broken before the withdrawal",
        f"{d['broken_before_withdrawal']}/{d['connections']}",
    )
    table.add_row(
        "",
        f"… after it (open then, kept {KEEP_AFTER:g} s more)",
        f"{d['broken_after_withdrawal']}/{d['open_at_withdrawal']}",
    )
    table.add_row(
        "",
        f"new connections to {srv} since the drain began",
        f"{d['new_since_drain'][srv]}/{sum(d['new_since_drain'].values())}",
    )
    table.add_row(
        "",
        f"new connections to {srv} once out of the route",
        f"{d['new_after_withdrawal'][srv]}/{sum(d['new_after_withdrawal'].values())}",
    )
    table.add_row("", f"drain → {srv} out of the route", _ms(d["withdrawal_ms"] / 1000))
    table.add_row("", f"drain → {srv} withdrawn by its agent", _ms(d["agent_withdrawal_ms"] / 1000))
    r.console.print(table)
    r.say(f"demo took {f['duration_s']:.0f} s")


def main(opts: Options, json_out: bool = False) -> int:
    """Entry point for `bgplb demo`: prints progress (stderr with --json) and the figures."""
    import json

    console = Console(stderr=json_out)
    if not console.is_terminal:
        console.width = 100
    try:
        if opts.routers == 2:
            from bgplb.lab.demo_routers import run_routers_demo

            figures = run_routers_demo(opts, console)
        else:
            figures = run_demo(opts, console)
    except LabError as exc:
        console.print(f"[red]bgplb demo: {exc}[/]", highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]bgplb demo: interrupted; everything was removed[/]")
        return 130
    if json_out:
        sys.stdout.write(json.dumps(figures, indent=2) + "\n")
    return 0 if not figures.get("cleanup", {}).get("left_behind") else 1
