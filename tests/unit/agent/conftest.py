"""The agent's async unit tests run on asyncio (``pytest.mark.anyio``)."""

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
