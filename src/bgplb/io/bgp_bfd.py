"""BGP as a client of BFD: when a BFD session tears a BGP session down (RFC 5882, RFC 9384).

Shared by the agent and the router. One :class:`BfdLink` per BGP neighbor holds a request on
the process's :class:`~bgplb.io.bfd.BfdService` (one BFD session per neighbor address, shared
by every requester) and turns its state changes into a single decision, ``on_down(diag)``:

* RFC 5882 §4.3 (BGP) and §3.3: only a transition from Up to Down is a failure. A BFD session
  that never came Up (the neighbor runs no BFD, or not yet) never blocks or resets BGP; BGP
  just runs on its own timers, as BIRD and FRR do by default.
* RFC 5882 §3.2: Down because the neighbor took the session AdminDown (its BFD was
  deconfigured, or it is restarting gracefully) is *not* a failure: nothing happens.
* Otherwise (typically diag 1, Control Detection Time Expired) ``on_down`` runs at once, on the
  loop, inside the BFD service's notification (the service's timers may run in a thread of
  their own, bgplb.io.bfd_timing; notifications are always delivered on the loop).

:func:`tear_down` is what the owner does then: the BGP session is stopped with Cease / BFD Down
(subcode 10, RFC 9384) and the connection is aborted at once, without waiting for the
NOTIFICATION or a FIN to be acknowledged by a neighbor that is, by BFD's verdict, unreachable.
The NOTIFICATION is handed to the kernel before the socket is closed, so it still reaches a
neighbor that is alive (BFD can go down on a congested but working path); closing the socket
does not send a RST (nothing unread), so the kernel keeps retrying the last bytes and the FIN as
an orphan. Why Cease rather than a silent abort: RFC 9384 asks for it, and a neighbor that gets
it logs the real reason instead of a hold-timer expiry later.

What the owner does with the routes is its business: the router removes the neighbor's paths at
once, exactly as on hold-timer expiry (never kept stale for Graceful Restart); the agent starts
the session again (it reconnects as soon as the neighbor answers).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from bgplb.bfd import Diag, State
from bgplb.bgp.errors import CeaseSubcode
from bgplb.bgp.fsm import State as BgpState
from bgplb.io.bfd import BfdHandle, BfdService
from bgplb.io.bgp import BgpPeer

__all__ = ["BfdLink", "diag_text", "tear_down"]

log = logging.getLogger("bgplb.bfd")

_CONNECTED = (BgpState.OPEN_SENT, BgpState.OPEN_CONFIRM, BgpState.ESTABLISHED)


def diag_text(diag: int) -> str:
    """Readable BFD diagnostic, e.g. ``"control detection time expired"``."""
    try:
        return Diag(diag).name.lower().replace("_", " ")
    except ValueError:
        return f"diag {diag}"


class BfdLink:
    """One BGP neighbor's hold on a BFD session, with the RFC 5882 decision rules.

    ``on_down(diag)`` is called only for an Up -> Down transition that the neighbor did not
    signal as AdminDown. ``min_ttl`` (multihop only, the config's ``bfd.min_ttl``; None: the
    service default, 254) is the lowest TTL accepted from the neighbor. ``release()`` when the
    BGP neighbor goes away (idempotent).
    """

    def __init__(
        self,
        service: BfdService,
        peer: str,
        *,
        local: str | None,
        multihop: bool,
        interval_ms: int,
        multiplier: int,
        on_down: Callable[[Diag], None],
        min_ttl: int | None = None,
    ) -> None:
        self.peer = peer
        self.interval_ms = interval_ms
        self.multiplier = multiplier
        self.min_ttl = min_ttl
        self.on_down = on_down
        self.was_up = False
        self.downs = 0  # Up -> Down transitions that tore BGP down
        self.last_down_diag: Diag | None = None
        self.last_down_at: float | None = None  # time.time()
        self.handle: BfdHandle = service.request(
            peer, local, multihop, interval_ms, multiplier, self._notify, min_ttl
        )

    @property
    def state(self) -> State:
        return self.handle.state

    def release(self) -> None:
        self.handle.release()

    def _notify(self, state: State, diag: Diag) -> None:
        if state == State.UP:
            self.was_up = True
            log.info("BFD %s up", self.peer)
            return
        if state != State.DOWN:
            return
        was_up, self.was_up = self.was_up, False
        if not was_up:
            return  # never came Up (or the 3-way handshake failed): not a failure, §3.3
        # The snapshot taken with the change (with thread timing the session may have moved
        # on by now, e.g. Down -> Init when the neighbor's next packet came).
        info = self.handle.event_info or self.handle.info
        if info is not None and info.remote_state == State.ADMIN_DOWN:
            log.info("BFD %s: neighbor took the session AdminDown: BGP left alone", self.peer)
            return  # RFC 5882 §3.2
        self.downs += 1
        self.last_down_diag = diag
        self.last_down_at = time.time()
        log.warning("BFD %s down (%s)", self.peer, diag_text(diag))
        self.on_down(diag)

    def status(self) -> dict[str, Any]:
        """Plain-JSON status of this neighbor's BFD session (for ``bgplb status``/metrics)."""
        info = self.handle.info
        out: dict[str, Any] = {
            "configured": {"interval_ms": self.interval_ms, "multiplier": self.multiplier},
            "state": self.state.name.lower().replace("_", ""),
            "state_code": int(self.state),
            "downs": self.downs,
            "last_down_diag": None
            if self.last_down_diag is None
            else diag_text(self.last_down_diag),
            "last_down_at": self.last_down_at,
        }
        if info is not None:
            out.update(
                remote_state=info.remote_state.name.lower().replace("_", ""),
                multihop=info.multihop,
                local=info.local,
                tx_interval_ms=round(info.tx_interval_ms, 3),
                detection_time_ms=round(info.detection_time_ms, 3),
                detect_mult=info.detect_mult,
                remote_detect_mult=info.remote_detect_mult,
                local_diag=diag_text(info.local_diag),
                local_diag_code=int(info.local_diag),
                remote_diag=diag_text(info.remote_diag),
                packets_sent=info.packets_sent,
                packets_received=info.packets_received,
                min_ttl=info.min_ttl,
            )
        return out


def tear_down(peer: BgpPeer) -> bool:
    """Stop ``peer``'s BGP session now because BFD went down: Cease / BFD Down (RFC 9384),
    then abort the connection. False (nothing done) if the session had no connection."""
    session = peer.session
    if session.state not in _CONNECTED:
        return False
    peer.stop_now(CeaseSubcode.BFD_DOWN)
    return True
