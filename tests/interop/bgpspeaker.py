"""A scriptable BGP speaker for the tests and benchmarks (not part of the package).

It runs one bgplb session (active, or passive with --listen) and talks JSON lines:
stdin takes commands, stdout reports events. This is how the interop tests drive bgplb against
BIRD, FRR, GoBGP and ExaBGP from another process inside a network namespace.

Commands (one JSON object per line on stdin):
  {"announce": "198.51.100.10/32", "communities": ["65000:100"], "large_communities":
   ["65000:1:2"], "med": 10, "next_hop": "192.0.2.2"}
  {"withdraw": "198.51.100.10/32"}
  {"bulk": {"count": 100000, "start": "198.18.0.0", "length": 32}}   # many prefixes at once
  {"refresh": "ipv4"}                                                 # send ROUTE-REFRESH
  {"stop": "message"}                                                 # Cease + exit
Events (stdout): {"event": "state", "state": "Established"}, {"event": "established", ...},
  {"event": "routes", "announced": [...], "withdrawn": [...], "attributes": {...}},
  {"event": "eor", "family": "ipv4"}, {"event": "down", "reason": "...", ...}
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from typing import Any

from bgplb.bgp.attributes import (
    LargeCommunity,
    PathAttributes,
    format_community,
    parse_community,
)
from bgplb.bgp.families import AFI, IPV4_UNICAST, IPV6_UNICAST
from bgplb.bgp.prefix import Prefix
from bgplb.bgp.session import (
    EndOfRibReceived,
    Event,
    RoutesReceived,
    Session,
    SessionConfig,
    SessionDown,
    SessionEstablished,
    StateChanged,
)
from bgplb.io.bgp import BgpListener, BgpPeer, Transport


def attributes_json(attrs: PathAttributes) -> dict[str, Any]:
    mp = attrs.mp_reach
    return {
        "origin": int(attrs.origin) if attrs.origin is not None else None,
        "as_path": attrs.as_path_list(),
        "next_hop": str(attrs.next_hop) if attrs.next_hop else None,
        "mp_next_hop": [str(a) for a in mp.next_hop] if mp else [],
        "med": attrs.med,
        "local_pref": attrs.local_pref,
        "communities": [format_community(c) for c in attrs.communities],
        "large_communities": [
            f"{c.global_admin}:{c.local1}:{c.local2}" for c in attrs.large_communities
        ],
        "extended_communities": [c.value.hex() for c in attrs.extended_communities],
    }


class Speaker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = sys.stdout
        families = []
        if "ipv4" in args.families:
            families.append(IPV4_UNICAST)
        if "ipv6" in args.families:
            families.append(IPV6_UNICAST)
        self.config = SessionConfig(
            local_asn=args.asn,
            router_id=ipaddress.IPv4Address(args.router_id),
            peer_asn=args.peer_as,
            hold_time=args.hold,
            passive=bool(args.listen),
            families=tuple(families),
            graceful_restart_time=args.graceful_restart,
            connect_retry_time=args.connect_retry,
            idle_hold_time=args.connect_retry,
        )
        self.session = Session(self.config)
        self.peer: BgpPeer | None = None
        self.done = asyncio.Event()

    def emit(self, **payload: Any) -> None:
        self.out.write(json.dumps(payload) + "\n")
        self.out.flush()

    def on_event(self, peer: BgpPeer, event: Event) -> None:
        if isinstance(event, StateChanged):
            self.emit(event="state", state=event.new.value)
        elif isinstance(event, SessionEstablished):
            n = event.negotiated
            self.emit(
                event="established",
                peer_asn=n.peer_asn,
                hold_time=n.hold_time,
                four_octet_as=n.four_octet_as,
                families=sorted(f"{a.name.lower()}" for a, _ in n.families),
                route_refresh=n.route_refresh,
                graceful_restart=n.peer_graceful_restart is not None,
                local_address=str(peer.local_address),
            )
        elif isinstance(event, RoutesReceived):
            self.emit(
                event="routes",
                announced=[str(p) for p in event.announced],
                withdrawn=[str(p) for p in event.withdrawn],
                attributes=attributes_json(event.update.attributes),
                errors=[str(e) for e in event.update.errors],
            )
        elif isinstance(event, EndOfRibReceived):
            self.emit(event="eor", family=event.family[0].name.lower())
        elif isinstance(event, SessionDown):
            notif = event.notification
            self.emit(
                event="down",
                reason=event.reason,
                was_established=event.was_established,
                hold_expired=event.hold_expired,
                local=event.local,
                notification=[notif.code, notif.subcode] if notif else None,
                shutdown_message=notif.shutdown_message if notif else None,
            )

    def command(self, cmd: dict[str, Any]) -> None:
        if "announce" in cmd:
            prefix = Prefix.parse(cmd["announce"])
            attrs = PathAttributes(
                med=cmd.get("med"),
                communities=tuple(parse_community(c) for c in cmd.get("communities", ())),
                large_communities=tuple(
                    LargeCommunity(*(int(x) for x in c.split(":")))
                    for c in cmd.get("large_communities", ())
                ),
                next_hop=ipaddress.IPv4Address(cmd["next_hop"])
                if cmd.get("next_hop") and prefix.afi == AFI.IPV4
                else None,
            )
            self.session.announce(prefix, attrs)
        elif "withdraw" in cmd:
            self.session.withdraw(Prefix.parse(cmd["withdraw"]))
        elif "bulk" in cmd:
            spec = cmd["bulk"]
            start = int(ipaddress.IPv4Address(spec["start"]))
            length = int(spec.get("length", 32))
            step = 1 << (32 - length)
            attrs = PathAttributes()
            for i in range(int(spec["count"])):
                net = ipaddress.IPv4Network((start + i * step, length))
                self.session.announce(Prefix.from_network(net), attrs)
        elif "refresh" in cmd:
            family = IPV6_UNICAST if cmd["refresh"] == "ipv6" else IPV4_UNICAST
            self.session.request_route_refresh(family)
        elif "stop" in cmd:
            asyncio.get_running_loop().create_task(self.stop(cmd["stop"] or ""))
            return
        if self.peer is not None:
            self.peer.kick()

    async def stop(self, message: str) -> None:
        if self.peer is not None:
            await self.peer.stop(message)
        self.done.set()

    async def read_stdin(self) -> None:
        # A pipe reader (not a thread blocked in readline) so that exit never waits on stdin.
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            raw = await reader.readline()
            if not raw:
                await self.stop("stdin closed")
                return
            line = raw.decode().strip()
            if line:
                try:
                    cmd = json.loads(line)
                    if "stop" in cmd:  # no more commands: stop with this message
                        await self.stop(cmd["stop"] or "")
                        return
                    self.command(cmd)
                except Exception as exc:  # report and keep going
                    self.emit(event="error", error=f"{type(exc).__name__}: {exc}")

    async def run(self) -> None:
        a = self.args
        transport = Transport(
            remote=ipaddress.ip_address(a.peer),
            port=a.port,
            local=ipaddress.ip_address(a.local) if a.local else None,
            password=a.password,
            ttl_security=a.ttl_security,
            connect_timeout=a.connect_retry,
        )
        self.peer = BgpPeer(self.session, transport, self.on_event)
        listener = None
        if a.listen:
            peer = self.peer

            def accept(tr: Any, proto: Any, remote: Any) -> BgpPeer | None:
                if remote != transport.remote:
                    return None
                return peer

            listener = BgpListener(
                [a.listen], a.port, accept, gtsm_hops=1 if a.ttl_security else None
            )
            await listener.start()
            if a.password:
                listener.set_password(a.peer, a.password)
        self.peer.start()
        self.emit(event="started")
        reader = asyncio.get_running_loop().create_task(self.read_stdin())
        await self.done.wait()
        reader.cancel()
        if listener is not None:
            await listener.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tests/interop/bgpspeaker.py", description=__doc__)
    p.add_argument("--asn", type=int, required=True)
    p.add_argument("--router-id", required=True)
    p.add_argument("--peer", required=True, help="peer address")
    p.add_argument("--peer-as", type=int, default=None, help="expected peer AS (default: any)")
    p.add_argument("--port", type=int, default=179)
    p.add_argument("--local", help="source address")
    p.add_argument("--listen", help="listen on this address instead of connecting")
    p.add_argument("--password", help="TCP-MD5 key")
    p.add_argument("--ttl-security", action="store_true")
    p.add_argument("--hold", type=int, default=9)
    p.add_argument("--graceful-restart", type=int, default=None, metavar="SECONDS")
    p.add_argument("--connect-retry", type=float, default=1.0)
    p.add_argument("--families", default="ipv4,ipv6")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(Speaker(args).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())


class SpeakerProcess:
    """Runs `tests/interop/bgpspeaker.py` in a namespace and collects its JSON events.

    Used by the interop tests and benchmarks. `wait_for(pred, timeout)` returns the first event
    (seen so far or arriving) that satisfies `pred`, bounded in time.
    """

    def __init__(self, ns: Any, *args: str, log_path: str | None = None) -> None:

        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self.log_path = log_path
        stderr = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self._stderr = stderr
        self.proc = ns.popen(
            sys.executable,
            os.path.abspath(__file__),
            *args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )

        def pump() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                try:
                    self._queue.put(json.loads(raw))
                except ValueError:
                    continue

        self._thread = threading.Thread(target=pump, daemon=True)
        self._thread.start()

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()

    def _drain(self, timeout: float) -> None:

        try:
            self.events.append(self._queue.get(timeout=timeout))
            while True:
                self.events.append(self._queue.get_nowait())
        except queue.Empty:
            pass

    def wait_for(self, pred: Any, timeout: float = 20.0, after: int = 0) -> dict[str, Any]:
        """First event at index >= `after` matching `pred`; raises TimeoutError after `timeout`."""

        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[after:]:
                if pred(event):
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tail = self.events[-10:]
                raise TimeoutError(f"speaker: no matching event in {timeout}s; last: {tail}")
            self._drain(min(remaining, 0.2))

    def routes(self) -> dict[str, dict[str, Any]]:
        """Prefixes currently received (announced minus withdrawn), with their attributes."""
        self._drain(0)
        table: dict[str, dict[str, Any]] = {}
        for event in self.events:
            if event.get("event") == "routes":
                for prefix in event["withdrawn"]:
                    table.pop(prefix, None)
                for prefix in event["announced"]:
                    table[prefix] = event["attributes"]
            elif event.get("event") == "down":
                table.clear()
        return table

    def stop(self, message: str = "test done", timeout: float = 5.0) -> None:

        if self.proc.poll() is None:
            try:
                self.send(stop=message)
                assert self.proc.stdin is not None
                self.proc.stdin.close()  # EOF also stops the speaker, should the command be lost
                self.proc.wait(timeout)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except BrokenPipeError:
                    pass
        self._thread.join(5)
        if hasattr(self._stderr, "close"):
            self._stderr.close()
