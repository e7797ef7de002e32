"""Fault family 3: the store fails under the worker and the publishers. PostgreSQL is
restarted mid-run; another process holds SQLite's write lock for seconds; the SQLite
file's file system fills up. Publishes that raised were not stored; publishes that
returned are delivered; the worker backs off and recovers."""

from __future__ import annotations

from pathlib import Path

import chaos_scenarios as chaos
import pytest

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


@pytest.mark.postgres
def test_postgres_restart_mid_run(tmp_path: Path) -> None:
    reason = chaos.postgres_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    result = chaos.postgres_restart(tmp_path, messages=2000)
    chaos.check(result)
    assert result.duplicate_sends == 0
    assert result.figures["workers saw store errors"] > 0, "no worker noticed the restart"


def test_sqlite_locked_by_another_process(tmp_path: Path) -> None:
    result = chaos.sqlite_locked(tmp_path, messages=1500, lock_seconds=3.0, busy_timeout=1.0)
    chaos.check(result)
    assert result.duplicate_sends == 0
    assert result.figures["publishes that raised"], "no publish met the lock"
    assert result.figures["worker backed off"] > 0, "the worker never met the lock"


def test_sqlite_disk_full(tmp_path: Path) -> None:
    result = chaos.disk_full(tmp_path, messages=1000)
    chaos.check(result)
    assert result.duplicate_sends == 0
    assert result.figures["publishes that raised"], "no publish met the full disk"


def test_sqlite_disk_full_injected_at_the_store_boundary(tmp_path: Path) -> None:
    """The fallback where no small file system can be mounted, run everywhere."""
    result = chaos.disk_full(tmp_path, messages=500, method="injected")
    chaos.check(result)
    assert result.figures["publishes that raised"]
