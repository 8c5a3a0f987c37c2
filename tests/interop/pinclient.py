"""Long-lived TCP connections to the VIP, driven by JSON commands on stdin (for the pinning
tests and benchmarks/pinning.py). Run inside the client namespace:

    python pinclient.py VIP PORT
    {"open": 300}   -> {"opened": [server names, None for a failed connect]}
    {"probe": true} -> {"ok": {server: n}, "broken": {server: n}, "alive": n}
    {"quit": true}  -> exits

A connection is probed with one echo (line in, same line back within 3 s); a connection that
fails once is *broken* and never probed again. Between commands connections are idle. Bounded:
the process exits after --lifetime seconds whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any


class Conn:
    def __init__(self, i: int) -> None:
        self.i = i
        self.server: str | None = None
        self.broken: str | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.n = 0


async def open_one(c: Conn, host: str, port: int) -> None:
    try:
        c.reader, c.writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        c.server = (await asyncio.wait_for(c.reader.readline(), 5)).decode().strip() or None
        if c.server is None:
            c.broken = "no greeting"
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        c.broken = f"connect: {exc!r}"


async def probe_one(c: Conn) -> None:
    if c.broken or c.reader is None or c.writer is None:
        return
    c.n += 1
    msg = f"{c.i}:{c.n}\n".encode()
    try:
        c.writer.write(msg)
        await c.writer.drain()
        got = await asyncio.wait_for(c.reader.readexactly(len(msg)), 3)
        if got != msg:
            raise ValueError(got)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
        c.broken = repr(exc)


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--lifetime", type=float, default=600)
    args = p.parse_args()
    conns: list[Conn] = []
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def emit(obj: Any) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async def serve() -> None:
        while line := await reader.readline():
            cmd = json.loads(line)
            if "open" in cmd:
                new = [Conn(len(conns) + k) for k in range(int(cmd["open"]))]
                conns.extend(new)
                sem = asyncio.Semaphore(64)

                async def guarded(c: Conn, sem: asyncio.Semaphore = sem) -> None:
                    async with sem:
                        await open_one(c, args.host, args.port)

                await asyncio.gather(*(guarded(c) for c in new))
                emit({"opened": [c.server if not c.broken else None for c in new]})
            elif "probe" in cmd:
                await asyncio.gather(*(probe_one(c) for c in conns))
                ok: dict[str, int] = {}
                broken: dict[str, int] = {}
                for c in conns:
                    key = c.server or "none"
                    d = broken if c.broken else ok
                    d[key] = d.get(key, 0) + 1
                emit({"ok": ok, "broken": broken, "alive": sum(ok.values())})
            elif "quit" in cmd:
                break
        for c in conns:
            if c.writer is not None:
                c.writer.close()

    try:
        await asyncio.wait_for(serve(), args.lifetime)
    except TimeoutError:
        emit({"error": "lifetime exceeded"})


if __name__ == "__main__":
    asyncio.run(main())
