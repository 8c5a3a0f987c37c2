"""bgplb.health: health checks of local services.

- :mod:`bgplb.health.state`: the pure rise/fall machine with flap damping (no I/O, no clock)
  and :class:`ServiceHealth` (a service is healthy when all its checks are up);
- :mod:`bgplb.health.checks`: the async probes (http, https, tcp, exec, dns) and the
  :class:`CheckRunner` that runs each check on its own interval and reports transitions at once.
"""

from bgplb.health.checks import (
    CheckEvent,
    CheckRunner,
    CheckStatus,
    DnsProbe,
    ExecProbe,
    HttpProbe,
    Probe,
    ProbeResult,
    TcpProbe,
    make_probe,
    run_probe,
)
from bgplb.health.state import Damping, Health, RiseFall, ServiceHealth, Transition

__all__ = [
    "CheckEvent",
    "CheckRunner",
    "CheckStatus",
    "Damping",
    "DnsProbe",
    "ExecProbe",
    "Health",
    "HttpProbe",
    "Probe",
    "ProbeResult",
    "RiseFall",
    "ServiceHealth",
    "TcpProbe",
    "Transition",
    "make_probe",
    "run_probe",
]
