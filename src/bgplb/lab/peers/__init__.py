"""Real BGP daemons (BIRD 2, FRR, GoBGP, ExaBGP) run inside a network namespace.

One small, uniform API for the interop tests, the lab and the demo (`--router bird|frr`):

    with Bird(ns, workdir, asn=65530, router_id="192.0.2.1") as bird:
        bird.add_neighbor("192.0.2.11", 65000, hold_time=3)
        bird.announce("198.51.100.0/24", communities=["65530:1"])
        bird.start()
        bird.wait_established("192.0.2.11", timeout=15)
        routes = bird.received_routes()

Each daemon runs in the foreground as a child process of ours (so `stop()` signals exactly that
PID), writes its log into `workdir`, and is queried through its own control channel: `birdc -s`,
`vtysh --vty_socket`, `gobgp --target unix://…`, and for ExaBGP the JSON lines of an API process.
Every failure raises `PeerError` naming what failed, with the tail of the daemon's log.
docs/dev/interop.md lists what these daemons need to run in a namespace.
"""

from bgplb.lab.peers.base import (
    FAMILIES,
    WELL_KNOWN_COMMUNITIES,
    Announcement,
    Daemon,
    Neighbor,
    PeerError,
    ReceivedRoute,
    kernel_routes,
    normalize_community,
)
from bgplb.lab.peers.bird import Bird, parse_bird_routes
from bgplb.lab.peers.exabgp import ExaBgp, exabgp_rib
from bgplb.lab.peers.frr import Frr, parse_frr_detail
from bgplb.lab.peers.gobgp import GoBgp, parse_gobgp_rib

__all__ = [
    "FAMILIES",
    "WELL_KNOWN_COMMUNITIES",
    "Announcement",
    "Bird",
    "Daemon",
    "ExaBgp",
    "Frr",
    "GoBgp",
    "Neighbor",
    "PeerError",
    "ReceivedRoute",
    "exabgp_rib",
    "kernel_routes",
    "normalize_community",
    "parse_bird_routes",
    "parse_frr_detail",
    "parse_gobgp_rib",
]
