"""bgplb.io.bgp_bfd.BfdLink's RFC 5882 rules over real BFD services on loopback (no root):
only Up -> Down tears BGP down; a session that never came Up, or that the neighbor took
AdminDown, never does (§3.2, §3.3, §4.3)."""

from __future__ import annotations

import asyncio
import random

import pytest
from bfdlab import free_port, until

from bgplb.bfd import Diag, State
from bgplb.io.bfd import BfdService
from bgplb.io.bgp_bfd import BfdLink

pytestmark = pytest.mark.serial  # BFD detection at 50 ms x 3 on loopback


def _silence(service: BfdService) -> None:
    """Make a service stop sending and receiving without AdminDown: a dead host (its timing
    thread, or its loop timers and readers, stopped)."""
    service._driver.stop()


def test_link_rules() -> None:
    async def main() -> None:
        port = free_port()
        a = BfdService(rng=random.Random(1), single_hop_port=port, listen_v4="127.0.0.1")
        b = BfdService(rng=random.Random(2), single_hop_port=port, listen_v4="127.0.1.1")
        downs: list[tuple[str, Diag]] = []
        try:
            # 1. Nobody answers at 127.0.2.1: the session never comes Up, BGP is never told.
            lonely = BfdLink(
                a,
                "127.0.2.1",
                local="127.0.0.1",
                multihop=False,
                interval_ms=50,
                multiplier=3,
                on_down=lambda d: downs.append(("lonely", d)),
            )
            # 2. Up, then the neighbor releases its request: AdminDown, not a failure.
            link = BfdLink(
                a,
                "127.0.1.1",
                local="127.0.0.1",
                multihop=False,
                interval_ms=50,
                multiplier=3,
                on_down=lambda d: downs.append(("link", d)),
            )
            peer = b.request("127.0.0.1", "127.0.1.1", False, 50, 3)
            await until("Up", lambda: link.state == State.UP)
            assert link.status()["state"] == "up"
            peer.release()
            await until("Down after AdminDown", lambda: link.state == State.DOWN)
            assert downs == [] and link.downs == 0
            # 3. Up again, then the neighbor dies silently: detection time expires -> on_down.
            peer = b.request("127.0.0.1", "127.0.1.1", False, 50, 3)
            await until("Up again", lambda: link.state == State.UP)
            _silence(b)
            await until("on_down", lambda: bool(downs))
            assert downs == [("link", Diag.CONTROL_DETECTION_TIME_EXPIRED)]
            st = link.status()
            assert st["downs"] == 1 and st["last_down_diag"] == "control detection time expired"
            assert lonely.state == State.DOWN and lonely.downs == 0
            link.release()
            lonely.release()
            assert a.sessions() == []
        finally:
            a.close()
            b.close()

    asyncio.run(main())
