"""A planned restart of a server's web server under client load, on the demo topology
(`bgplb.lab.topology.Lab`: client — router — srv1, srv2; nginx, `bgplb agent` with an HTTP
check, the router `bgplb router` or BIRD 2). Shared by tests/interop/test_planned_restart.py
and benchmarks/planned_restart.py.

Fresh HTTP requests go from the client to the VIP at a fixed rate (a bounded count, each with a
timeout); meanwhile srv1's nginx is restarted in one of these ways (`MODES`):

* ``drain``:   ``bgplb drain web --wait``, nginx stopped (SIGQUIT: graceful, as Debian's unit
               does), started, ``bgplb undrain web`` — what an ``ExecStop=``/``ExecStartPost=``
               drop-in does around ``systemctl restart nginx`` (docs/agent.md);
* ``systemd``: srv1's agent also has a ``systemd`` check on a fake systemd (private D-Bus); the
               unit goes ``deactivating`` (stop drain), an ``ExecStop=/bin/sleep`` of
               ``stop_delay`` passes, nginx is stopped, the unit is ``inactive``, nginx started,
               ``activating``, ``active``;
* ``naive``:   nginx stopped and started, nothing told to the agent (the baseline).

The count of failed requests is the result. Every process is stopped by PID (the Lab's state),
every wait is bounded.
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field

from fake_systemd import ThreadedSystemd, private_bus

from bgplb.lab.probes import Answer, NsLoop, Stream
from bgplb.lab.topology import BGPLB, VIP4, Lab, _python_env, server_addrs

MODES = ("drain", "systemd", "naive")
HOST = VIP4.split("/")[0]


class RestartLab(Lab):
    """The demo Lab; srv1's agent gets a ``systemd`` check on `systemd_bus` when set."""

    systemd_bus: str | None = None

    def agent_config(self, i: int) -> str:
        text = super().agent_config(i)
        if i == 1 and self.systemd_bus is not None:
            check = (
                '\n[[services.checks]]\ntype = "systemd"\nunit = "nginx.service"\n'
                f'bus = "{self.systemd_bus}"\ndamping = false\n'
            )
            text = text.replace("\n[control]", check + "\n[control]")
        return text


@dataclass
class Result:
    mode: str
    router: str
    answers: list[Answer]
    t0: float  # time.monotonic() of the load's start (Answer.t is on the same clock)
    events: list[tuple[float, str]] = field(default_factory=list)  # (s since t0, what)

    @property
    def failed(self) -> list[Answer]:
        return [a for a in self.answers if a.server is None]

    def by_server(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for a in self.answers:
            if a.server is not None:
                out[a.server] = out.get(a.server, 0) + 1
        return out

    def line(self) -> str:
        errors: dict[str, int] = {}
        for a in self.failed:
            errors[a.error or "?"] = errors.get(a.error or "?", 0) + 1
        return (
            f"{self.mode:8s} router {self.router:5s}: {len(self.failed):4d} failed of "
            f"{len(self.answers)}  answered by {self.by_server()}  {errors or ''}"
        )


def _agent(lab: Lab, i: int, *args: str) -> str:
    sock = lab.state.agent_socket(i)
    proc = subprocess.run(
        lab.ns[f"srv{i}"].cmd(*BGPLB, *args, "--socket", str(sock)),
        capture_output=True, text=True, timeout=30, env=_python_env(),
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"bgplb {' '.join(args)}: {proc.stdout}{proc.stderr}")
    return proc.stdout


def _stop_nginx(lab: Lab, i: int) -> None:
    """SIGQUIT (graceful: the listeners close, the requests in progress finish), as the
    Debian unit's ExecStop; bounded wait for the master to exit."""
    proc = lab.web_procs.pop(i)
    proc.signal(signal.SIGQUIT)
    deadline = time.monotonic() + 10
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.alive():
        proc.signal(signal.SIGKILL)
        raise RuntimeError(f"nginx on srv{i} did not stop on SIGQUIT")
    popen = lab._popens.pop(proc.pid, None)
    if popen is not None:
        popen.wait(5)


def _both(lab: Lab) -> list[str]:
    return sorted([server_addrs(1)[1], server_addrs(2)[1]])


def planned_restart(
    mode: str,
    router: str = "bird",
    *,
    requests: int = 1500,
    rate: float = 250.0,
    drain_time: float = 2.0,
    stop_delay: float = 2.5,
    down_time: float = 0.3,
    timeout: float = 1.0,
) -> Result:
    """Build the lab, send `requests` fresh requests at `rate`/s, restart srv1's nginx by
    `mode` 1 s into the load (nginx down for `down_time` between its stop and its start, as a
    service that takes a moment to start), wait for the load to end; tear everything down."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if mode == "systemd":
        with private_bus() as address:
            return _run(
                mode, router, requests, rate, drain_time, stop_delay, down_time, timeout, address
            )
    return _run(mode, router, requests, rate, drain_time, stop_delay, down_time, timeout, None)


def _run(
    mode: str,
    router: str,
    requests: int,
    rate: float,
    drain_time: float,
    stop_delay: float,
    down_time: float,
    timeout: float,
    bus: str | None,
) -> Result:
    lab = RestartLab(
        name="restart", router=router, web="nginx", bfd=False, drain_time=drain_time,
        check_interval_ms=100,
    )  # fmt: skip
    lab.systemd_bus = bus
    systemd = ThreadedSystemd(bus) if bus is not None else None
    loop: NsLoop | None = None
    try:
        lab.build()
        lab.wait(lambda: lab.nexthops() == _both(lab), 30, "both servers in the router's route")
        loop = NsLoop(lab.client_ns.name)
        duration = requests / rate
        t0 = time.monotonic()
        stream = Stream(loop, HOST, interval=1.0 / rate, timeout=timeout, max_time=duration)
        events: list[tuple[float, str]] = []

        def note(what: str) -> None:
            events.append((time.monotonic() - t0, what))

        time.sleep(1.0)
        if mode == "drain":
            note("bgplb drain web --wait")
            _agent(lab, 1, "drain", "web", "--wait")
            note("drain --wait returned")
        elif mode == "systemd":
            assert systemd is not None
            note("unit deactivating")
            systemd.set("deactivating")
            time.sleep(stop_delay)  # ExecStop=/bin/sleep
        _stop_nginx(lab, 1)
        note("nginx stopped (SIGQUIT)")
        if systemd is not None:
            systemd.set("inactive")
        time.sleep(down_time)
        lab.start_web(1)
        note("nginx started and answering")
        if systemd is not None:
            systemd.set("activating")
            systemd.set("active")
        if mode == "drain":
            _agent(lab, 1, "undrain", "web")
            note("bgplb undrain web")
        lab.wait(lambda: lab.nexthops() == _both(lab), 30, "srv1 back in the router's route")
        note("srv1 back in the router's route")
        left = t0 + duration - time.monotonic()
        if left > 0:
            time.sleep(left)
        answers = stream.stop()
        if len(answers) < requests * 0.95:
            raise RuntimeError(f"the load sent {len(answers)} requests, not {requests}")
        return Result(mode, router, answers, t0, events)
    finally:
        if loop is not None:
            loop.close()
        if systemd is not None:
            systemd.close()
        lab.teardown()
