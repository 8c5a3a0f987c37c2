"""How fast routes `dst nhid G proto 200` reach the kernel: one pyroute2-encoded round trip per
route, one hand-encoded round trip per route, hand-encoded batches (NexthopSocket.transact),
and iproute2's `ip -batch` as a reference. Also how long the batched deletion of all of them
takes, and the deletion of the group (which takes its routes along).

    sudo .venv/bin/python benchmarks/netlink_batch.py [--routes 100000] [--skip-slow]

Runs in a network namespace it creates and always removes. Every route is a /32 out of
198.18.0.0/15 pointing to one shared resilient group of two nexthops.
"""

from __future__ import annotations

import argparse
import ipaddress
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from bgplb.lab.netns import Topology
from bgplb.linux.nexthop import (
    NexthopSocket,
    encode_del_route,
    encode_route,
)

PROTO = 200
GROUP = 10
BASE = int(ipaddress.IPv4Address("198.18.0.0"))


def _timed(what: str, action: Callable[[], object], routes: int) -> float:
    started = time.perf_counter()
    action()
    elapsed = time.perf_counter() - started
    print(f"{what:<52} {elapsed:8.3f} s  {routes / elapsed:>12,.0f} routes/s", flush=True)
    return elapsed


def _count(nl: NexthopSocket) -> int:
    return len(nl.dump_routes(protocol=PROTO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", type=int, default=100_000)
    parser.add_argument("--skip-slow", action="store_true", help="no pyroute2 / ip -batch runs")
    args = parser.parse_args()
    n = args.routes
    if not 1 <= n <= 131072:
        parser.error("--routes must be 1..131072 (198.18.0.0/15)")
    dsts = [ipaddress.IPv4Network((BASE + i, 32)) for i in range(n)]
    topo = Topology(prefix="nlbench")
    try:
        ns, peer = topo.add("router"), topo.add("peer")
        topo.link(ns, peer, ["192.0.2.1/24"], ["192.0.2.2/24"], "eth-srv", "eth-rtr")
        with NexthopSocket(ns.name) as nl:
            oif = nl.link_index("eth-srv")
            nl.add_nexthop(1, gateway="192.0.2.2", oif=oif, protocol=PROTO)
            nl.add_nexthop(2, gateway="192.0.2.3", oif=oif, protocol=PROTO)
            nl.add_group(GROUP, members=[(1, 1), (2, 1)], protocol=PROTO, buckets=512)
            print(f"{n} routes, one resilient group of 2 nexthops, namespace {ns.name}")
            times: dict[str, float] = {}

            def delete_batched() -> None:
                msgs = [encode_del_route(d, protocol=PROTO) for d in dsts]
                bad = [r for r in nl.transact(msgs) if r is not None]
                assert not bad, bad[:3]

            def check_and_delete() -> None:
                assert _count(nl) == n, "not every route was installed"
                times.setdefault("delete (1st)", _timed("  delete all, batched", delete_batched, n))
                assert _count(nl) == 0

            if not args.skip_slow:

                def pyroute2_each() -> None:
                    for d in dsts:
                        nl.add_route(d, nh_id=GROUP, protocol=PROTO)

                times["pyroute2"] = _timed("pyroute2, one round trip per route", pyroute2_each, n)
                check_and_delete()

            def raw_each() -> None:
                for d in dsts:
                    nl.request_raw(encode_route(d, nh_id=GROUP, protocol=PROTO))

            times["raw"] = _timed("hand-encoded, one round trip per route", raw_each, n)
            check_and_delete()

            _timed(
                "  (encoding alone, no kernel)",
                lambda: [encode_route(d, nh_id=GROUP, protocol=PROTO) for d in dsts],
                n,
            )
            for ack_each in (False, True):

                def batched(ack_each: bool = ack_each) -> None:
                    msgs = [encode_route(d, nh_id=GROUP, protocol=PROTO) for d in dsts]
                    bad = [r for r in nl.transact(msgs, ack_each=ack_each) if r is not None]
                    assert not bad, bad[:3]

                key = "batch-ack-each" if ack_each else "batch"
                label = "ACK per request" if ack_each else "errors + 1 ACK per datagram"
                times[key] = _timed(f"hand-encoded batches, {label}", batched, n)
                check_and_delete()

            if not args.skip_slow:
                with tempfile.NamedTemporaryFile("w", suffix=".batch") as f:
                    f.writelines(f"route add {d} nhid {GROUP} proto {PROTO}\n" for d in dsts)
                    f.flush()
                    times["ip"] = _timed(
                        "ip -batch (iproute2)",
                        lambda: subprocess.run(ns.cmd("ip", "-batch", f.name), check=True),
                        n,
                    )
                check_and_delete()

            nl.transact([encode_route(d, nh_id=GROUP, protocol=PROTO) for d in dsts])
            _timed("  delete the group (takes its routes)", lambda: nl.del_nexthop(GROUP), n)
            assert _count(nl) == 0

        print("ratios (time of the row / time of hand-encoded batches):")
        for key, value in times.items():
            print(f"  {key:<16} {value / times['batch']:8.1f}x")
    finally:
        topo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
