"""BGP (+ BFD) load generator for the router benchmarks, and helpers the router benchmarks share.

As a program (`python benchmarks/_loadgen.py ...`, inside a namespace) it runs N BGP sessions
to one router on ONE asyncio loop, session i from source address `--source-start` + i, each
announcing `--vip-count` /32s starting at `--vip-start` + i x `--vip-stride` (stride 0: every
session announces the same VIPs), optionally each with a BFD session (RFC 5880/5881) through
bgplb's own `BfdService` / `BfdLink` (its timers in the BFD thread, as in the agent) — the
sans-IO cores bgplb.bgp.session and bgplb.bfd, wired the way the agent wires them
(src/bgplb/io/bgp.py, io/bfd.py, io/bgp_bfd.py). A BFD Down tears
its BGP session down (Cease/BFD Down, RFC 9384) and the session starts again 1 s later. The BFD
listening socket gets a 16 MiB receive buffer, so a stall of the generator does not drop the
router's packets (the kernel's UDP RcvbufErrors show whether it did).

stdin takes JSON lines, stdout reports JSON lines (every event carries "t", time.time()):
  {"announce": "all" | [i, ...]}   queue the session's VIPs, send them (packed UPDATEs) at once
  {"withdraw": "all" | [i, ...]}   the same for withdrawals
  {"stats": 1}                     -> {"event": "stats", "established", "bfd_up", "bgp_downs",
                                        "bfd_downs", "cpu_s", "loop_max_ms", "bfd_timing":
                                        {send lateness p50/p99/max ms, GC pauses}, ...}
  {"stop": ""}                     Cease on every session, exit
Events: {"event": "established", "i"}, {"event": "down", "i", "reason", "bfd": bool},
{"event": "all_established"} once every session is Established (and BFD Up, if asked).
It exits by itself after --max-seconds, or when stdin closes.

As a module it gives the benchmarks `LoadGen` (that process, driven from the benchmark),
`status_sampler` (a thread timing control requests during a load), `kernel_free_time` and
`ip_lines`.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import queue
import resource
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


# ----------------------------------------------------------------------------- the program


def run_program(a: argparse.Namespace) -> None:
    from bgplb.bgp.attributes import PathAttributes
    from bgplb.bgp.families import IPV4_UNICAST
    from bgplb.bgp.prefix import Prefix
    from bgplb.bgp.session import Session, SessionConfig, SessionDown, SessionEstablished
    from bgplb.io.bfd import BfdService
    from bgplb.io.bgp import BgpPeer, Transport
    from bgplb.io.bgp_bfd import BfdLink, tear_down
    from bgplb.io.loopwatch import LoopWatch

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * a.sessions + 256)), hard))

    def emit(**ev: Any) -> None:
        ev["t"] = time.time()
        sys.stdout.write(json.dumps(ev) + "\n")
        sys.stdout.flush()

    src0 = int(ipaddress.IPv4Address(a.source_start))
    vip0 = int(ipaddress.IPv4Address(a.vip_start))
    router = ipaddress.IPv4Address(a.peer)
    attrs = PathAttributes()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        watch = LoopWatch(0.01)
        watch.start()
        rt = a.bfd_realtime or None
        bfd = BfdService(realtime_priority=rt) if a.bfd_interval_ms else None
        peers: list[BgpPeer] = []
        links: list[Any] = []
        established: set[int] = set()
        counts = {"bgp_downs": 0, "bfd_downs": 0}
        done = asyncio.Event()
        announced_all = False

        def vips(i: int) -> list[Prefix]:
            base = vip0 + i * a.vip_stride
            return [
                Prefix.from_network(ipaddress.IPv4Network((base + k, 32)))
                for k in range(a.vip_count)
            ]

        def ready() -> bool:
            if len(established) < a.sessions:
                return False
            return not links or all(int(ln.state) == 3 for ln in links)  # 3 = Up

        def check_ready() -> None:
            nonlocal announced_all
            if not announced_all and ready():
                announced_all = True
                emit(event="all_established")

        def on_event(i: int) -> Callable[[BgpPeer, object], None]:
            def handler(peer: BgpPeer, event: object) -> None:
                if isinstance(event, SessionEstablished):
                    established.add(i)
                    emit(event="established", i=i)
                    check_ready()
                elif isinstance(event, SessionDown) and i in established:
                    established.discard(i)
                    counts["bgp_downs"] += 1  # also after a BFD Down tore it down
                    emit(event="down", i=i, reason=event.reason, bfd=False)

            return handler

        def bfd_down(i: int) -> Callable[[object], None]:
            def handler(diag: object) -> None:
                counts["bfd_downs"] += 1
                emit(event="down", i=i, reason=f"BFD down ({diag})", bfd=True)
                if tear_down(peers[i]):
                    loop.call_later(1.0, peers[i].start)

            return handler

        for i in range(a.sessions):
            src = str(ipaddress.IPv4Address(src0 + i))
            cfg = SessionConfig(
                local_asn=a.asn,
                router_id=ipaddress.IPv4Address(src),
                peer_asn=None,
                hold_time=a.hold,
                families=(IPV4_UNICAST,),
                connect_retry_time=1.0,
                idle_hold_time=1.0,
            )
            session = Session(cfg)
            if not a.no_announce:
                for p in vips(i):
                    session.announce(p, attrs)
            tr = Transport(remote=router, local=ipaddress.IPv4Address(src), connect_timeout=2.0)
            peer = BgpPeer(session, tr, on_event(i), name=src)
            peers.append(peer)
            if bfd is not None:
                links.append(
                    BfdLink(
                        bfd,
                        str(router),
                        local=src,
                        multihop=False,
                        interval_ms=a.bfd_interval_ms,
                        multiplier=a.bfd_mult,
                        on_down=bfd_down(i),
                    )
                )
        if bfd is not None:
            # One listening socket receives every session's packets: with the default receive
            # buffer (~200 KiB, ~200 packets) a 60 ms stall of this loop at 1000 sessions x
            # 300 ms overflows it and the drops read as the router's fault. 16 MiB (root).
            with bfd.lock:
                for sock in bfd._listeners.values():
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        for k, peer in enumerate(peers):
            peer.start()
            if k % 50 == 49:
                await asyncio.sleep(0)  # let the loop breathe while 1000 connects start

        t_cpu = time.process_time()

        async def readiness() -> None:  # BFD comes Up on its own schedule: look every 50 ms
            while not announced_all:
                check_ready()
                await asyncio.sleep(0.05)

        ready_task = loop.create_task(readiness())

        def which(spec: Any) -> list[int]:
            return list(range(a.sessions)) if spec == "all" else [int(x) for x in spec]

        def command(cmd: dict[str, Any]) -> None:
            if "announce" in cmd or "withdraw" in cmd:
                add = "announce" in cmd
                for i in which(cmd.get("announce", cmd.get("withdraw"))):
                    s = peers[i].session
                    for p in vips(i):
                        if add:
                            s.announce(p, attrs)
                        else:
                            s.withdraw(p)
                    peers[i].kick()
                emit(event="sent", what="announce" if add else "withdraw")
            elif "stats" in cmd:
                fig = watch.read(reset=bool(cmd.get("reset")))
                bfd_timing = {} if bfd is None else bfd.timing_stats(reset=bool(cmd.get("reset")))
                emit(
                    event="stats",
                    bfd_timing=bfd_timing,
                    established=len(established),
                    bfd_up=sum(1 for ln in links if int(ln.state) == 3),
                    cpu_s=round(time.process_time() - t_cpu, 2),
                    loop_max_ms=fig["max_ms"],
                    loop_stalls=fig["stalls"],
                    **counts,
                )
            check_ready()

        async def stdin() -> None:
            reader = asyncio.StreamReader(limit=1 << 24)
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                try:
                    cmd = json.loads(raw)
                except ValueError:
                    emit(event="error", error=f"not JSON: {raw[:80]!r}")
                    continue
                if "stop" in cmd:
                    break
                try:
                    command(cmd)
                except Exception as exc:  # report, keep going
                    emit(event="error", error=f"{type(exc).__name__}: {exc}")
            done.set()

        reader = loop.create_task(stdin())
        try:
            await asyncio.wait_for(done.wait(), a.max_seconds)
        except TimeoutError:
            emit(event="error", error=f"--max-seconds {a.max_seconds} reached, stopping")
        reader.cancel()
        ready_task.cancel()
        for ln in links:
            ln.release()
        await asyncio.gather(*(p.stop("load generator done") for p in peers))
        if bfd is not None:
            bfd.close()
        await watch.stop()
        emit(event="stopped")

    asyncio.run(main())


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--peer", required=True, help="the router's address")
    p.add_argument("--sessions", type=int, default=1)
    p.add_argument("--source-start", required=True)
    p.add_argument("--asn", type=int, default=65100)
    p.add_argument("--hold", type=int, default=9)
    p.add_argument("--vip-start", default="198.19.0.0")
    p.add_argument("--vip-count", type=int, default=1, help="VIPs per session")
    p.add_argument("--vip-stride", type=int, default=1, help="0: every session the same VIPs")
    p.add_argument("--no-announce", action="store_true", help="announce only on command")
    p.add_argument("--bfd-interval-ms", type=int, default=0, help="0: no BFD")
    p.add_argument("--bfd-mult", type=int, default=3)
    p.add_argument("--bfd-realtime", type=int, default=0, help="SCHED_FIFO priority, 0: none")
    p.add_argument("--max-seconds", type=float, default=3600.0)
    a = p.parse_args(argv)
    if not 1 <= a.sessions <= 65000 or a.vip_count < 0 or a.vip_stride < 0:
        p.error("--sessions 1..65000, --vip-count and --vip-stride >= 0")
    return a


# ----------------------------------------------------------------------------- the driver


class LoadGen:
    """`_loadgen.py` in namespace `ns` as a child process (killed by PID in `stop()`)."""

    def __init__(self, ns: Any, log: Path, *args: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._q: queue.Queue[dict[str, Any]] = queue.Queue()
        self._err = log.open("ab")
        self.proc = ns.popen(
            sys.executable, str(HERE / "_loadgen.py"), *args,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
        )  # fmt: skip
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                self._q.put(json.loads(raw))
            except ValueError:
                continue

    def send(self, **cmd: Any) -> float:
        """Write a command; returns time.time() just after it was handed to the pipe."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()
        return time.time()

    def drain(self, timeout: float = 0.0) -> None:
        try:
            self.events.append(self._q.get(timeout=timeout) if timeout else self._q.get_nowait())
            while True:
                self.events.append(self._q.get_nowait())
        except queue.Empty:
            pass

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float, after: int = 0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events[after:]:
                if pred(ev):
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"load generator: nothing matching in {timeout}s")
            if self.proc.poll() is not None:
                self.drain()
                if not any(pred(ev) for ev in self.events[after:]):
                    raise RuntimeError(f"load generator exited {self.proc.returncode}")
            self.drain(min(left, 0.2))

    def stats(self, timeout: float = 30.0, reset: bool = False) -> dict[str, Any]:
        n = len(self.events)
        self.send(stats=1, reset=reset)
        return dict(self.wait(lambda e: e.get("event") == "stats", timeout, after=n))

    def kill9(self) -> float:
        """SIGKILL (its kernel closes the TCP connections); returns time.time() of the kill."""
        os.kill(self.proc.pid, 9)  # `ip netns exec` execs: this PID is the generator itself
        t = time.time()
        self.proc.wait(10)
        return t

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                self.send(stop="")
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        self._t.join(5)
        self._err.close()


def begin() -> tuple[str, str]:
    """A benchmark's start: SIGTERM handling (see exit_on_sigterm), then the header lines (the
    command, the date, the kernel, the load); returns the command and the date for the results."""
    from _routerlab import kernel_info, now_utc

    exit_on_sigterm()
    started = now_utc()
    cmd = shlex.join([sys.executable, *sys.argv])
    print(f"# {cmd}\n# {started}, kernel {kernel_info()}, {load_text()}", flush=True)
    return cmd, started


def exit_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so the benchmark's `finally` blocks stop what it started and
    remove its namespaces (a background job has SIGINT ignored: SIGTERM is how to stop it)."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def load_text() -> str:
    """The host's load average and CPU count (other work on the machine skews every figure)."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} on {os.cpu_count()} CPUs"


def ip_lines(ns: Any, *args: str, timeout: float = 60.0) -> list[str]:
    """`ip -n NS ARGS` (no mount-namespace set-up: cheap enough to poll), its lines."""
    from bgplb.lab.netns import run

    return run(["ip", "-n", ns.name, *args], timeout=timeout).splitlines()


def kernel_free_time(ns: Any, proto: str, timeout: float = 60.0) -> dict[str, Any]:
    """After the router exited: seconds until `ip -n NS route show proto PROTO` lists none of
    ours, and until a fresh `ip netns add` on the host completes then (that namespace is
    deleted right after): `free_s`. Routes still there after `timeout` (the router left them:
    kill -9, keep_on_exit, or a failed clean-up) are counted in `routes_left`; the namespace is
    then deleted here (the kernel frees them with it) and `free_s` runs until the fresh
    `ip netns add` after that deletion completes."""
    from bgplb.lab.netns import run

    t0 = time.monotonic()
    left_at_exit = len(ip_lines(ns, "-o", "-4", "route", "show", "proto", proto))
    left = left_at_exit
    routes_gone = 0.0 if not left else None
    deadline = t0 + timeout
    while routes_gone is None and time.monotonic() < deadline:
        time.sleep(0.2)
        left = len(ip_lines(ns, "-o", "-4", "route", "show", "proto", proto))
        if not left:
            routes_gone = time.monotonic() - t0
    if left:
        run(["ip", "netns", "del", ns.name], check=False, timeout=600)
    probe = f"bgplb-free-{uuid.uuid4().hex[:6]}"
    t1 = time.monotonic()
    run(["ip", "netns", "add", probe], timeout=600)
    netns_add = time.monotonic() - t1
    run(["ip", "netns", "del", probe], check=False)
    return {
        "routes_at_exit": left_at_exit,
        "routes_gone_s": None if routes_gone is None else round(routes_gone, 3),
        "routes_left": left,
        "netns_add_s": round(netns_add, 3),
        "free_s": round(time.monotonic() - t0, 3),
    }


def status_sampler(
    probe: Callable[[], Any], stop: threading.Event, period: float = 0.5, limit: int = 10_000
) -> tuple[threading.Thread, list[tuple[float, float | None]]]:
    """A thread calling `probe()` every `period` s until `stop` (at most `limit` times);
    samples are (start offset s, duration s or None when it failed or timed out)."""
    samples: list[tuple[float, float | None]] = []
    t0 = time.monotonic()

    def run() -> None:
        for _ in range(limit):
            if stop.is_set():
                return
            t = time.monotonic()
            try:
                probe()
                samples.append((t - t0, time.monotonic() - t))
            except Exception:
                samples.append((t - t0, None))
            stop.wait(max(0.0, period - (time.monotonic() - t)))

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, samples


def summarize_samples(samples: list[tuple[float, float | None]], within: float = 0.1) -> dict:
    ok = sorted(d for _, d in samples if d is not None)
    return {
        "samples": len(samples),
        "answered": len(ok),
        "within_100ms": sum(1 for d in ok if d <= within),
        "median_ms": round(ok[len(ok) // 2] * 1000, 1) if ok else None,
        "max_ms": round(ok[-1] * 1000, 1) if ok else None,
    }


if __name__ == "__main__":
    run_program(parse())
