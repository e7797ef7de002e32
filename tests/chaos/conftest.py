"""The chaos suite's own fixture: no worker process outlives its test."""

from __future__ import annotations

from collections.abc import Iterator

import chaos_scenarios
import pytest


@pytest.fixture(autouse=True)
def _no_leftover_workers() -> Iterator[None]:
    yield
    chaos_scenarios.kill_leftover_workers()
