"""The lab's state file: every namespace and process a demo or `bgplb lab up` made.

One JSON file per lab under /run/bgplb-lab/ (`lab.json`, `demo-<id>.json`), written before each
thing is made, so that a crashed run can still be removed by `bgplb lab down`. Processes are
recorded with their PID *and* start time: a PID that was reused by another program is never
signalled.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_DIR = Path("/run/bgplb-lab")


def _start_time(pid: int) -> str | None:
    """The process' start time (field 22 of /proc/PID/stat), None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


@dataclass
class Proc:
    """A process we started: killed only while its PID still has the recorded start time."""

    node: str
    role: str
    pid: int
    started: str | None
    argv: list[str]
    log: str = ""

    def alive(self) -> bool:
        return self.started is not None and _start_time(self.pid) == self.started

    def signal(self, sig: int) -> bool:
        if not self.alive():
            return False
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True


@dataclass
class LabState:
    """What `bgplb lab status|exec|down` needs to find (and remove) a running lab."""

    name: str
    owner_pid: int
    router: str
    servers: int
    web: str
    bfd: bool
    workdir: str
    namespaces: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    rundirs: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    routers: int = 1  # 2: bgplb.lab.routers2 (upstream, router, router2, switch)

    @property
    def path(self) -> Path:
        return STATE_DIR / f"{self.name}.json"

    def save(self) -> None:
        STATE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.path)

    @classmethod
    def load(cls, path: Path) -> LabState:
        data = json.loads(path.read_text())
        data["procs"] = [Proc(**p) for p in data.get("procs", [])]
        return cls(**data)

    def agent_socket(self, i: int) -> Path:
        return Path(self.workdir) / f"srv{i}" / "agent.sock"

    @property
    def router_socket(self) -> Path:
        return Path(self.workdir) / "router" / "router.sock"


def teardown_state(state: LabState) -> list[str]:
    """Stop every recorded process (SIGTERM, SIGKILL after 3 s), kill whatever still runs in
    our namespaces, delete them, remove our directories and the state file. Idempotent; never
    raises; returns what could not be removed."""
    problems: list[str] = []
    procs = [p for p in reversed(state.procs) if p.alive()]
    for p in procs:
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + 3
    while any(p.alive() for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in procs:
        p.signal(signal.SIGKILL)
    for name in state.namespaces.values():
        if not Path(f"/var/run/netns/{name}").exists():
            continue
        # Anything left inside our namespace (nginx workers, FRR helpers) is ours.
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        for pid in pids.stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        proc = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True)
        if proc.returncode != 0 and Path(f"/var/run/netns/{name}").exists():
            problems.append(f"namespace {name}: {proc.stderr.strip()}")
    for d in [*state.rundirs, state.workdir]:
        shutil.rmtree(d, ignore_errors=True)
    state.path.unlink(missing_ok=True)
    return problems


def leftovers(state: LabState) -> list[str]:
    """What of this lab still exists: namespaces, live processes, directories, state file."""
    found = [
        f"namespace {n}" for n in state.namespaces.values() if Path(f"/var/run/netns/{n}").exists()
    ]
    found += [f"process {p.pid} ({p.role} on {p.node})" for p in state.procs if p.alive()]
    found += [f"directory {d}" for d in [*state.rundirs, state.workdir] if Path(d).exists()]
    if state.path.exists():
        found.append(f"state file {state.path}")
    return found


def all_states() -> list[LabState]:
    """Every lab state file present (lab and demo runs), unreadable ones skipped."""
    found = []
    for path in sorted(STATE_DIR.glob("*.json")):
        try:
            found.append(LabState.load(path))
        except (OSError, ValueError, TypeError):
            continue
    return found
