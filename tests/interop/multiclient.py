"""Long-lived TCP connections to the VIP with periodic traffic, driven by JSON commands on stdin
(tests/interop/multirouterlab.py, for test_router_multi.py and benchmarks/multi_router.py). Run
inside the client namespace:

    python multiclient.py VIP PORT [--period 0.5] [--timeout 10] [--lifetime 1500]
    {"open": 240}   -> {"opened": {server: n, "failed": n}}
    {"check": true} -> {"ok": {server: n}, "broken": {server: n}, "new": {server: n},
                        "reasons": {reason: n}, "stalled": n}
    {"quit": true}  -> exits

Every connection sends one line every --period seconds and waits for the same line back. A
connection is *broken* when the peer resets or closes it, answers something else, or does not
answer within --timeout seconds (a route that disappears for a moment only delays the echo; a
connection that reaches another server is reset by it at once). A broken connection is never
used again. `check` first waits (at most 3 x --timeout) until every live connection completed
two more echoes, so that its answer covers the traffic after the step just made; `new` counts the
connections broken since the previous check. Bounded: the process exits after --lifetime
seconds whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any


class Conn:
    def __init__(self, i: int) -> None:
        self.i = i
        self.server: str | None = None
        self.broken: str | None = None
        self.reported = False
        self.done = 0  # echoes completed
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None


async def run_conn(c: Conn, host: str, port: int, period: float, timeout: float) -> None:
    try:
        c.reader, c.writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        c.server = (await asyncio.wait_for(c.reader.readline(), 5)).decode().strip() or None
        if c.server is None:
            c.broken = "no greeting"
            return
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        c.broken = f"connect: {type(exc).__name__}"
        return
    n = 0
    while True:
        n += 1
        msg = f"{c.i}:{n}\n".encode()
        try:
            c.writer.write(msg)
            await c.writer.drain()
            got = await asyncio.wait_for(c.reader.readexactly(len(msg)), timeout)
            if got != msg:
                c.broken = "wrong answer"
                break
        except TimeoutError:
            c.broken = "timeout"
            break
        except asyncio.IncompleteReadError:
            c.broken = "closed"
            break
        except ConnectionResetError:
            c.broken = "reset"
            break
        except OSError as exc:
            c.broken = type(exc).__name__
            break
        c.done += 1
        await asyncio.sleep(period)
    c.writer.close()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--period", type=float, default=0.5)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--lifetime", type=float, default=1500.0)
    args = p.parse_args()
    conns: list[Conn] = []
    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    def emit(obj: Any) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async def open_many(k: int) -> dict[str, int]:
        new = [Conn(len(conns) + j) for j in range(k)]
        conns.extend(new)
        for j, c in enumerate(new):
            tasks.append(
                asyncio.create_task(run_conn(c, args.host, args.port, args.period, args.timeout))
            )
            if j % 32 == 31:  # do not SYN-flood the servers' backlogs
                await asyncio.sleep(0.05)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(
            c.server is None and c.broken is None for c in new
        ):
            await asyncio.sleep(0.05)
        out: dict[str, int] = {}
        for c in new:
            key = "failed" if c.server is None else c.server
            out[key] = out.get(key, 0) + 1
            c.reported = c.broken is not None  # a failed connect is not a broken connection
        return out

    async def check() -> dict[str, Any]:
        want = {c.i: c.done + 2 for c in conns}
        deadline = time.monotonic() + 3 * args.timeout
        while time.monotonic() < deadline and any(
            c.broken is None and c.done < want[c.i] for c in conns
        ):
            await asyncio.sleep(0.05)
        ok: dict[str, int] = {}
        broken: dict[str, int] = {}
        new: dict[str, int] = {}
        reasons: dict[str, int] = {}
        stalled = 0
        for c in conns:
            if c.server is None:
                continue
            if c.broken is None:
                ok[c.server] = ok.get(c.server, 0) + 1
                stalled += c.done < want[c.i]
                continue
            broken[c.server] = broken.get(c.server, 0) + 1
            if not c.reported:
                c.reported = True
                new[c.server] = new.get(c.server, 0) + 1
                reasons[c.broken] = reasons.get(c.broken, 0) + 1
        return {"ok": ok, "broken": broken, "new": new, "reasons": reasons, "stalled": stalled}

    async def serve() -> None:
        while line := await stdin.readline():
            cmd = json.loads(line)
            if "open" in cmd:
                emit({"opened": await open_many(int(cmd["open"]))})
            elif "check" in cmd:
                emit(await check())
            elif "quit" in cmd:
                break

    try:
        await asyncio.wait_for(serve(), args.lifetime)
    except TimeoutError:
        emit({"error": "lifetime exceeded"})
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in conns:
        if c.writer is not None:
            c.writer.close()


if __name__ == "__main__":
    asyncio.run(main())
