"""What a test needs from this machine: root, network namespaces, a daemon's binary.

Outside CI a missing prerequisite skips the test with the reason; with CI=true it fails it
(never a silent skip). Importable from any test as `from prerequisites import …`: pytest puts
`tests/` on sys.path (`pythonpath` in pyproject.toml).
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip outside CI, fail in CI."""
    if IN_CI:
        pytest.fail(f"CI=true and a prerequisite is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def require_binary(path_or_name: str) -> str:
    """The path of an executable (a name is looked up on PATH); unavailable() if missing."""
    found = shutil.which(path_or_name) if "/" not in path_or_name else path_or_name
    if not found or not os.access(found, os.X_OK):
        unavailable(f"{path_or_name} is not installed")
    assert found is not None
    return found
