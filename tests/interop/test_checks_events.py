"""Event-driven checks against real daemons in a network namespace.

- nginx (``daemon off``, its own pidfile and port) watched by ``process`` and ``listen`` checks
  running in a CheckRunner *inside* the namespace (a child Python process printing one JSON
  line per transition): up when nginx runs, down at once when it stops, up again after a
  restart; a listener on the same port in another namespace does not count.
- the real agent with BIRD 2 (the lab of agent_lab.py): a ``process`` and a ``listen`` check on
  the lab's HTTP server; killing it withdraws the VIP at the router (bounded wait), restarting
  it (new pidfile) announces it again. No agent code knows these check types: they come through
  bgplb.health.CheckRunner.

Every process is stopped by PID; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_lab import VIP4, build_lab

from bgplb.lab.netns import Namespace, Topology
from prerequisites import require_binary

ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0

pytestmark = pytest.mark.netns

WATCHER = r"""
import asyncio, json, sys
from pydantic import TypeAdapter
from bgplb.config import CheckConfig
from bgplb.health import CheckRunner

async def main():
    adapter = TypeAdapter(CheckConfig)
    def report(event):
        print(json.dumps({"key": event.key, "up": event.transition.up,
                          "detail": event.result.detail}), flush=True)
    runner = CheckRunner(report)
    for key, check in json.loads(sys.argv[1]).items():
        runner.add(key, adapter.validate_python(check))
    async with runner:
        print(json.dumps({"key": "ready"}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


class Watcher:
    """A CheckRunner in a child process inside ``ns``; its transitions on a queue."""

    def __init__(self, ns: Namespace, checks: dict[str, dict[str, Any]]) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.proc = ns.popen(
            sys.executable, "-c", WATCHER, json.dumps(checks),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
        )  # fmt: skip
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.next()["key"] == "ready"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def next(self, timeout: float = WAIT) -> dict[str, Any]:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no check transition within {timeout}s") from None

    def states(self, count: int) -> dict[str, dict[str, Any]]:
        """The next ``count`` transitions, by check key."""
        return {e["key"]: e for e in (self.next() for _ in range(count))}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


class Nginx:
    def __init__(self, ns: Namespace, workdir: Path, port: int) -> None:
        self.ns, self.workdir, self.port = ns, workdir, port
        self.pidfile = workdir / "nginx.pid"
        self.proc: subprocess.Popen[bytes] | None = None
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        (workdir / "nginx.conf").write_text(
            f"""
daemon off;
worker_processes 2;
pid {self.pidfile};
error_log {workdir}/logs/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/tmp;
    server {{ listen 127.0.0.1:{port}; return 200 "ok\\n"; }}
}}
"""
        )

    def start(self) -> None:
        self.proc = self.ns.popen(
            "nginx", "-p", str(self.workdir), "-c", str(self.workdir / "nginx.conf"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        """SIGTERM (fast shutdown: the master stops its workers, closes the listeners, removes
        the pidfile and exits); SIGKILL only if it does not exit in time."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # `ip netns exec` execs: nginx's master PID
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)
        self.proc = None


@pytest.fixture
def nginx_ns(topo: Topology, tmp_path: Path) -> Iterator[tuple[Namespace, Nginx]]:
    """nginx (not started) in namespace "web", on the port of a listener that the test's own
    namespace holds meanwhile (which the checks in "web" must not see)."""
    require_binary("nginx")
    ns = topo.add("web")
    ns.exec("ip", "link", "set", "lo", "up")
    outside = socket.socket()
    outside.bind(("127.0.0.1", 0))
    outside.listen()
    nginx = Nginx(ns, tmp_path / "nginx", outside.getsockname()[1])
    try:
        yield ns, nginx
    finally:
        nginx.stop()
        outside.close()


def test_nginx_stop_is_seen_at_once_and_restart_comes_back(
    nginx_ns: tuple[Namespace, Nginx],
) -> None:
    ns, nginx = nginx_ns
    port = nginx.port
    checks = {
        "process": {"type": "process", "pidfile": str(nginx.pidfile), "interval": "1h",
                    "rise": 1, "damping": False},
        "listen": {"type": "listen", "port": port, "address": "127.0.0.1", "interval": "1h",
                   "rise": 1, "damping": False},
    }  # fmt: skip
    watcher = Watcher(ns, checks)
    try:
        with pytest.raises(AssertionError, match="no check transition"):
            # The first probes run at once: nothing listens in "web", both stay down.
            watcher.next(timeout=1.0)
        watcher.close()
        # With a short interval so that the start (new pidfile, new listener) is picked up.
        short = {k: {**v, "interval": "50ms"} for k, v in checks.items()}
        watcher = Watcher(ns, short)
        nginx.start()
        up = watcher.states(2)
        assert up["process"]["up"] and up["listen"]["up"], up
        assert nginx.proc is not None
        assert up["process"]["detail"] == f"pid {nginx.proc.pid} running"
        watcher.close()
        # Interval an hour: only the events can tell of the stop.
        watcher = Watcher(ns, checks)
        up = watcher.states(2)
        assert up["process"]["up"] and up["listen"]["up"], up
        nginx.stop()  # SIGTERM: listeners closed, pidfile removed, exit
        down = watcher.states(2)
        assert not down["process"]["up"] and not down["listen"]["up"], down
        assert down["listen"]["detail"] == f"nothing listens on tcp 127.0.0.1:{port}"
    finally:
        watcher.close()


def test_agent_withdraws_when_the_web_server_dies(topo: Topology, daemons: Any) -> None:
    """The real agent, BIRD 2 router: process + listen checks on s1's HTTP server."""
    lab = build_lab(topo, daemons)
    try:
        lab.bird.start()
        s1, s2 = lab.servers
        for s in lab.servers:
            s.start_http()
            assert s.http is not None
            (s.workdir / "http.pid").write_text(f"{s.http.pid}\n")
            s.write_config(
                f"""
[[services]]
name = "web"
vips = ["{VIP4}"]
drain_time = "2s"
drain_vip_linger = "0s"

[[services.checks]]
type = "process"
pidfile = "{s.workdir / "http.pid"}"
rise = 1
damping = false

[[services.checks]]
type = "listen"
port = {s.http_port}
address = "127.0.0.1"
rise = 1
damping = false
"""
            )
            s.start_agent()
        lab.wait_nexthops([s1.address, s2.address], timeout=30)
        assert s1.http is not None
        s1.http.kill()
        s1.http.wait(5)
        s1.http = None
        lab.wait_nexthops([s2.address], timeout=WAIT)
        checks = s1.status()["services"][0]["checks"]
        assert all(c["state"] == "down" for c in checks), checks
        s1.start_http()  # a restart: a new process, a new pidfile
        assert s1.http is not None
        (s1.workdir / "http.pid").write_text(f"{s1.http.pid}\n")
        lab.wait_nexthops([s1.address, s2.address], timeout=WAIT)
    finally:
        lab.close()
