"""`bgplb lab up|status|exec|down`: the demo's topology, left running for you to explore.

`up` builds it (see `bgplb.lab.topology`) with every process detached and recorded in
/run/bgplb-lab/lab.json; `status` reads that file and asks the agents and the kernel; `exec`
runs a command in a node (`client`, `router`, `srv1`…); `down` stops every recorded process by
PID and deletes the namespaces. `up` and `down` are idempotent; `down` also removes what a demo
that was killed (SIGKILL, power loss) left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from bgplb.control.socket import ControlError, request
from bgplb.lab.labstate import STATE_DIR, LabState, all_states, leftovers, teardown_state
from bgplb.lab.topology import VIP4, Lab, LabError, LabNamespace, _hops, server_addrs

LAB_STATE = STATE_DIR / "lab.json"


def _load() -> LabState | None:
    if not LAB_STATE.exists():
        return None
    try:
        return LabState.load(LAB_STATE)
    except (OSError, ValueError, TypeError) as exc:
        print(f"bgplb lab: unreadable {LAB_STATE} ({exc}); `bgplb lab down` removes it")
        return None


def _healthy(state: LabState) -> bool:
    return all(Path(f"/var/run/netns/{n}").exists() for n in state.namespaces.values()) and all(
        p.alive() for p in state.procs
    )


def status_of(state: LabState) -> dict[str, Any]:
    """The lab's state: nodes, processes, each agent's session and service, the VIP route."""
    nodes = {
        short: {"namespace": name, "exists": Path(f"/var/run/netns/{name}").exists()}
        for short, name in state.namespaces.items()
    }
    procs = [
        {"node": p.node, "role": p.role, "pid": p.pid, "alive": p.alive(), "log": p.log}
        for p in state.procs
    ]
    servers = []
    for i in range(1, state.servers + 1):
        address = server_addrs(i)[1] if state.routers == 1 else f"192.0.2.{10 + i}"
        row: dict[str, Any] = {"name": f"srv{i}", "address": address}
        sock = state.agent_socket(i)
        row["socket"] = str(sock)
        try:
            st = request(sock, "status", timeout=2)
            peer = (st.get("peers") or [{}])[0]
            svc = (st.get("services") or [{}])[0]
            row.update(session=peer.get("state"), bfd=peer.get("bfd"), service=svc.get("status"))
            if state.routers == 2:
                row["sessions"] = {p.get("address"): p.get("state") for p in st.get("peers", [])}
        except ControlError as exc:
            row["error"] = str(exc)
        servers.append(row)
    routes: dict[str, list[str] | None] = {}
    for node in ("router", "router2"):
        if nodes.get(node, {}).get("exists"):
            try:
                routes[node] = _hops(LabNamespace(state.namespaces[node]), VIP4)
            except Exception:
                routes[node] = None
    route = routes.get("router")
    return {
        "routers": state.routers,
        "name": state.name,
        "router": state.router,
        "web": state.web,
        "bfd": state.bfd,
        "vip": VIP4,
        "workdir": state.workdir,
        "nodes": nodes,
        "processes": procs,
        "servers": servers,
        "route": route,
        **({"route2": routes.get("router2")} if state.routers == 2 else {}),
        "healthy": _healthy(state),
    }


def _print_status(st: dict[str, Any]) -> None:
    print(f"lab: router {st['router']}, web {st['web']}, VIP {st['vip']}, files in {st['workdir']}")
    for short, node in st["nodes"].items():
        print(f"  {short:8} {node['namespace']:24} {'ok' if node['exists'] else 'MISSING'}")
    for p in st["processes"]:
        alive = "running" if p["alive"] else "NOT RUNNING"
        print(f"  {p['node']:8} {p['role']:14} pid {p['pid']:<8} {alive}")
    for s in st["servers"]:
        if "error" in s:
            print(f"  {s['name']}: agent not answering ({s['error']})")
        else:
            bfd = s.get("bfd")
            bfd_text = f", BFD {bfd.get('state') if isinstance(bfd, dict) else bfd}" if bfd else ""
            sessions = s.get("sessions")
            if sessions:
                text = ", ".join(f"{a} {state}" for a, state in sessions.items())
                print(f"  {s['name']}: sessions {text}, service web {s['service']}")
            else:
                print(
                    f"  {s['name']}: session {s['session']}{bfd_text}, service web {s['service']}"
                )
    for node, key in (("router", "route"), ("router2", "route2")):
        if key in st:
            route = st[key]
            print(f"  {node}: {st['vip']} via {', '.join(route) if route else '(no route)'}")


def cmd_up(args: argparse.Namespace) -> int:
    state = _load()
    if state is not None:
        if _healthy(state):
            print("bgplb lab: already up")
            _print_status(status_of(state))
            return 0
        print("bgplb lab: removing an incomplete lab first")
        teardown_state(state)
    kw: dict[str, Any] = dict(
        name="lab",
        servers=args.servers,
        router=args.router,
        bfd=args.bfd != "off",
        web=args.web,
        workdir=STATE_DIR / "lab",
        hold_time=args.hold_time,
        drain_time=10.0,
        log=lambda text: print(f"  {text}"),
    )
    routers = getattr(args, "routers", 1)
    try:
        if routers == 2:
            from bgplb.lab.routers2 import TwoRouterLab

            group = "consistent" if args.group == "auto" else args.group
            lab: Lab = TwoRouterLab(group=group, **{**kw, "bfd": False})
            print(
                f"bgplb lab: building client — upstream — router, router2 ({args.router}) — "
                f"srv1..srv{args.servers}"
            )
        else:
            lab = Lab(**kw)
            print(f"bgplb lab: building client — router ({args.router}) — srv1..srv{args.servers}")
    except LabError as exc:
        print(f"bgplb lab up: {exc}", file=sys.stderr)
        return 2
    try:
        lab.build()
        want = sorted(lab.server_address(i) for i in range(1, args.servers + 1))
        lab.wait(lambda: lab.nexthops() == want, 30, f"the router's route to {VIP4}")
        if routers == 2:
            lab.wait(lab.both_route_to_all, 30, f"both routers' routes to {VIP4}")  # type: ignore[attr-defined]
    except (LabError, OSError) as exc:
        print(f"bgplb lab up: {exc}", file=sys.stderr)
        lab.teardown()
        return 1
    except BaseException:
        lab.teardown()
        raise
    _print_status(status_of(lab.state))
    print(
        f"\n  try: bgplb lab exec client curl -s http://{VIP4.split('/')[0]}/\n"
        f"       bgplb drain web --socket {lab.state.agent_socket(1)}\n"
        f"       bgplb lab exec router ip nexthop show\n"
        "       bgplb lab down"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = _load()
    if state is None:
        if args.json:
            print(json.dumps({"running": False}))
        else:
            print("bgplb lab: no lab is running (start one with `bgplb lab up`)")
        return 1
    st = status_of(state)
    if args.json:
        print(json.dumps({"running": True, **st}, indent=2))
    else:
        _print_status(st)
    return 0 if st["healthy"] else 1


def cmd_exec(args: argparse.Namespace) -> int:
    state = _load()
    if state is None:
        print("bgplb lab exec: no lab is running (start one with `bgplb lab up`)", file=sys.stderr)
        return 1
    name = state.namespaces.get(args.node)
    if name is None:
        nodes = ", ".join(state.namespaces)
        print(f"bgplb lab exec: unknown node {args.node!r} (nodes: {nodes})", file=sys.stderr)
        return 2
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    cmd = cmd or [os.environ.get("SHELL", "/bin/sh")]
    sys.stdout.flush()
    os.execvp("ip", ["ip", "netns", "exec", name, *cmd])
    return 127  # not reached


def cmd_down(args: argparse.Namespace) -> int:
    removed = 0
    for state in all_states():
        # a demo still running removes its own things; only a dead one's leftovers are ours
        if state.name != "lab" and _pid_alive(state.owner_pid):
            continue
        what = "lab" if state.name == "lab" else f"leftovers of a {state.name} run"
        problems = teardown_state(state)
        left = leftovers(state) + problems
        removed += 1
        if left:
            print(f"bgplb lab down: could not remove: {', '.join(left)}", file=sys.stderr)
            return 1
        print(f"bgplb lab down: removed the {what} ({', '.join(state.namespaces.values())})")
    if not removed:
        print("bgplb lab down: no lab is running; nothing to remove")
    return 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
