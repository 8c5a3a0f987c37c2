"""systemd's notification protocol (sd_notify(3)): ``READY=1``, ``STOPPING=1``, ``STATUS=...``.

Both daemons run as ``Type=notify`` units: systemd considers the service started only once it
says ``READY=1``. Without ``$NOTIFY_SOCKET`` (not under systemd) this does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("bgplb")


def sd_notify(message: str) -> None:
    """Send one datagram to systemd's $NOTIFY_SOCKET (no-op when not under systemd)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path  # "@": abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.debug("sd_notify(%s) failed: %s", message, exc)
