"""bgplb.health: health checks of local services.

- :mod:`bgplb.health.state`: the pure rise/fall machine with flap damping (no I/O, no clock)
  and :class:`ServiceHealth` (a service is healthy when all its checks are up);
- :mod:`bgplb.health.checks`: the polled probes (http, https, tcp, exec, dns), ``make_probe``
  and the :class:`CheckRunner` that runs each check in its own task and reports transitions at
  once;
- event-driven probes, woken by the kernel or systemd the moment a service fails:
  :mod:`bgplb.health.process` (pidfd), :mod:`bgplb.health.listen` (sock_diag netlink, encoded
  in the pure :mod:`bgplb.health.sockdiag`) and :mod:`bgplb.health.systemd` (D-Bus).

This package imports nothing itself: ``import bgplb.health.state`` loads neither asyncio nor
httpx, dnspython or pydantic. The names below are loaded from their submodule on first use
(``from bgplb.health import CheckRunner`` works as before).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bgplb.health.checks import (
        CheckEvent,
        CheckRunner,
        CheckStatus,
        DnsProbe,
        ExecProbe,
        HttpProbe,
        TcpProbe,
        make_probe,
        run_probe,
    )
    from bgplb.health.listen import ListenProbe
    from bgplb.health.probe import DEACTIVATING, EventProbe, Probe, ProbeResult
    from bgplb.health.process import ProcessProbe
    from bgplb.health.state import Damping, Health, RiseFall, ServiceHealth, Transition
    from bgplb.health.systemd import SystemdProbe

_WHERE: dict[str, str] = {
    **dict.fromkeys(
        (
            "CheckEvent",
            "CheckRunner",
            "CheckStatus",
            "DnsProbe",
            "ExecProbe",
            "HttpProbe",
            "TcpProbe",
            "make_probe",
            "run_probe",
        ),
        "bgplb.health.checks",
    ),
    **dict.fromkeys(
        ("Damping", "Health", "RiseFall", "ServiceHealth", "Transition"), "bgplb.health.state"
    ),
    **dict.fromkeys(("DEACTIVATING", "EventProbe", "Probe", "ProbeResult"), "bgplb.health.probe"),
    "ListenProbe": "bgplb.health.listen",
    "ProcessProbe": "bgplb.health.process",
    "SystemdProbe": "bgplb.health.systemd",
}

__all__ = [
    "CheckEvent",
    "CheckRunner",
    "CheckStatus",
    "DEACTIVATING",
    "Damping",
    "DnsProbe",
    "EventProbe",
    "ExecProbe",
    "Health",
    "HttpProbe",
    "ListenProbe",
    "Probe",
    "ProbeResult",
    "ProcessProbe",
    "RiseFall",
    "ServiceHealth",
    "SystemdProbe",
    "TcpProbe",
    "Transition",
    "make_probe",
    "run_probe",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'bgplb.health' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
