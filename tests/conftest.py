"""Shared fixtures: a real loopback receiver (the ``dispatcher``/``fake_clock``/
``mock_receiver`` fixtures come from webhook_dispatch's own pytest plugin)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from webhook_dispatch._receiver import LoopbackReceiver


@pytest.fixture
def loopback() -> Iterator[LoopbackReceiver]:
    """A real HTTP server on 127.0.0.1 with scriptable paths."""
    with LoopbackReceiver() as receiver:
        yield receiver
