"""Shared test fixtures.

Interop and kernel tests need root, network namespaces and real daemons. Outside CI a missing
prerequisite skips them with the reason; with CI=true it fails them (never a silent skip):
`unavailable()` and `require_binary()` live in tests/prerequisites.py (re-exported here).
"""

from __future__ import annotations

import pytest

from bgplb.lab.netns import Topology, can_use_netns
from prerequisites import IN_CI, require_binary, unavailable

__all__ = ["IN_CI", "require_binary", "topo", "unavailable"]


@pytest.fixture
def topo():
    """A fresh Topology that is always removed, whatever the test did."""
    reason = can_use_netns()
    if reason:
        unavailable(reason)
    t = Topology(prefix="t")
    try:
        yield t
    finally:
        t.close()
