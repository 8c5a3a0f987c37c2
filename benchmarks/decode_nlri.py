"""Benchmark: IPv4 NLRI decoding into Prefix objects, bgplb vs ExaBGP.

Builds the same UPDATE messages (each ~1000 random /24../32 prefixes under one set of path
attributes, RFC 8654 extended-message sized) and times full UPDATE decoding:

* bgplb: ``bgplb.bgp.decode(2, body, neg)`` in this interpreter;
* ExaBGP: ``Update.unpack_message`` of Debian's ExaBGP 4.2 (/usr/lib/python3/dist-packages),
  run by /usr/bin/python3 in a subprocess with a system-only PATH, never imported here.

Run:  .venv/bin/python benchmarks/decode_nlri.py [--messages 100] [--prefixes 1000] [--rounds 5]
Prints prefixes/s for both (best of ``--rounds``) and the ratio. No assertions on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from ipaddress import IPv4Address

from bgplb.bgp import (
    AFI,
    AsPathSegment,
    AsPathSegmentType,
    Negotiated,
    Origin,
    PathAttributes,
    Prefix,
    Update,
    decode,
    encode,
)
from bgplb.bgp.prefix import decode_prefixes

NEG = Negotiated(four_octet_as=True, extended_message=True, ebgp=True)
EXABGP_PYTHON = "/usr/bin/python3"

EXABGP_SCRIPT = r"""
import json, sys, time
from exabgp.configuration.setup import environment
environment.setup("")
from exabgp.bgp.neighbor import Neighbor
from exabgp.bgp.message.direction import Direction
from exabgp.bgp.message.open import Open, Version, ASN, HoldTime, RouterID
from exabgp.bgp.message.open.capability import Capabilities, Negotiated
from exabgp.bgp.message.update import Update
from exabgp.protocol.family import AFI, SAFI
from exabgp.version import version

n = Neighbor()
n.local_as, n.peer_as, n.router_id = ASN(65000), ASN(65001), RouterID("192.0.2.1")
n.local_address = None
n.add_family((AFI.ipv4, SAFI.unicast))
n.asn4, n.nexthop, n.add_path, n.graceful_restart, n.route_refresh = True, False, 0, False, False
n.extended_message, n.host_name, n.domain_name = True, None, None
n.operational, n.multisession = False, False
capa = Capabilities().new(n, False)
neg = Negotiated(n)
neg.sent(Open(Version(4), ASN(65000), HoldTime(180), RouterID("192.0.2.1"), capa))
neg.received(Open(Version(4), ASN(65001), HoldTime(180), RouterID("192.0.2.2"), capa))

job = json.load(sys.stdin)
bodies = [bytes.fromhex(b) for b in job["bodies"]]
count = sum(len(Update.unpack_message(b, Direction.IN, neg).nlris) for b in bodies)
best = None
for _ in range(job["rounds"]):
    t0 = time.perf_counter()
    for b in bodies:
        Update.unpack_message(b, Direction.IN, neg)
    dt = time.perf_counter() - t0
    best = dt if best is None else min(best, dt)
print(json.dumps({"version": version, "prefixes": count, "seconds": best}))
"""


def build_bodies(messages: int, per_message: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    attrs = PathAttributes(
        origin=Origin.IGP,
        as_path=(AsPathSegment(AsPathSegmentType.AS_SEQUENCE, (65001, 65002)),),
        next_hop=IPv4Address("192.0.2.1"),
        med=10,
        communities=((65001 << 16) | 100,),
    )
    bodies = []
    for _ in range(messages):
        nlri = []
        for _ in range(per_message):
            length = rng.randint(24, 32)
            address = (0xC6120000 | rng.getrandbits(17)) >> (32 - length) << (32 - length)
            nlri.append(Prefix(AFI.IPV4, address, length))
        bodies.append(encode(Update(attributes=attrs, nlri=tuple(nlri)), NEG)[19:])
    return bodies


def time_bgplb(bodies: list[bytes], rounds: int) -> tuple[int, float, float]:
    count = 0
    for b in bodies:
        msg = decode(2, b, NEG)
        assert isinstance(msg, Update) and not msg.errors
        count += len(msg.nlri)
    best = best_nlri = float("inf")
    fields = []
    for b in bodies:
        wlen = int.from_bytes(b[:2], "big")
        alen = int.from_bytes(b[2 + wlen : 4 + wlen], "big")
        fields.append(b[4 + wlen + alen :])
    for _ in range(rounds):
        t0 = time.perf_counter()
        for b in bodies:
            decode(2, b, NEG)
        best = min(best, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for f in fields:
            decode_prefixes(f, AFI.IPV4)
        best_nlri = min(best_nlri, time.perf_counter() - t0)
    return count, best, best_nlri


def time_exabgp(bodies: list[bytes], rounds: int) -> dict[str, object] | None:
    if not os.path.exists("/usr/lib/python3/dist-packages/exabgp"):
        print("ExaBGP (Debian package) not installed: skipping it", file=sys.stderr)
        return None
    job = json.dumps({"bodies": [b.hex() for b in bodies], "rounds": rounds})
    proc = subprocess.run(
        [EXABGP_PYTHON, "-c", EXABGP_SCRIPT],
        input=job,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "exabgp.log.enable": "false"},
        timeout=600,
    )
    if proc.returncode != 0:
        print(f"ExaBGP run failed:\n{proc.stderr}", file=sys.stderr)
        return None
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--prefixes", type=int, default=1000, help="prefixes per UPDATE")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-exabgp", action="store_true")
    args = parser.parse_args()

    bodies = build_bodies(args.messages, args.prefixes, args.seed)
    size = sum(len(b) for b in bodies)
    print(
        f"{len(bodies)} UPDATEs x {args.prefixes} prefixes (/24../32), {size} octets, "
        f"best of {args.rounds}; Python {sys.version.split()[0]}"
    )
    count, seconds, nlri_seconds = time_bgplb(bodies, args.rounds)
    ours = count / seconds
    print(f"bgplb   UPDATE decode : {ours:12,.0f} prefixes/s ({count} prefixes in {seconds:.4f} s)")
    print(
        f"bgplb   NLRI field    : {count / nlri_seconds:12,.0f} prefixes/s (decode_prefixes only)"
    )
    if args.no_exabgp:
        return
    exa = time_exabgp(bodies, args.rounds)
    if exa is None:
        return
    exa_count = int(str(exa["prefixes"]))
    exa_rate = exa_count / float(str(exa["seconds"]))
    print(
        f"ExaBGP {exa['version']} UPDATE decode: {exa_rate:12,.0f} prefixes/s "
        f"({exa_count} prefixes in {float(str(exa['seconds'])):.4f} s, /usr/bin/python3)"
    )
    if exa_count != count:
        print(f"warning: ExaBGP decoded {exa_count} prefixes, bgplb {count}")
    print(f"ratio bgplb / ExaBGP: {ours / exa_rate:.1f}x")


if __name__ == "__main__":
    main()
