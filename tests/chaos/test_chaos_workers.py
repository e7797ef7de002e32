"""Fault family 2: the worker process is killed with SIGKILL at seeded moments while it
delivers, and restarted each time. Nothing is lost; a request is sent again only when
the killed worker held its delivery leased (in flight), with the same webhook-id."""

from __future__ import annotations

from pathlib import Path

import chaos_scenarios as chaos
import pytest

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def test_worker_killed_four_times_loses_nothing(tmp_path: Path) -> None:
    result = chaos.worker_kills(tmp_path, messages=2500, kills=4)
    chaos.check(result)
    assert result.delivered + result.exhausted == result.messages
    assert sum(result.figures["leased by the victim at each kill"]) > 0, (
        "no kill caught an attempt in flight"
    )
