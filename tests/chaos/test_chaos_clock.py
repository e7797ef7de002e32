"""Fault family 4: the wall clock jumps back and forth (a FakeClock) while a worker runs.
Scheduled retries are neither lost nor sent twice."""

from __future__ import annotations

import asyncio
import collections
from datetime import timedelta
from pathlib import Path

import chaos_scenarios as chaos
import httpx
import pytest

import webhook_dispatch as wd
from webhook_dispatch.testing import FakeClock

pytestmark = [pytest.mark.chaos]


@pytest.mark.slow
def test_clock_jumping_hours_back_and_forth(tmp_path: Path) -> None:
    result = chaos.clock_jumps(tmp_path, messages=600)
    chaos.check(result)
    assert result.duplicate_sends == 0
    assert result.delivered + result.exhausted == result.messages


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_forward_jump_past_the_lease_does_not_resend_an_attempt_in_flight(
    tmp_path: Path, store: str
) -> None:
    """Regression: a clock jump past the lease made the worker claim its own attempt in
    flight again and send it a second time (two attempts numbered 1)."""
    clock = FakeClock()
    release = asyncio.Event()
    sent: collections.Counter[str] = collections.Counter()

    async def endpoint(request: httpx.Request) -> httpx.Response:
        sent[request.headers["webhook-id"]] += 1
        await release.wait()
        return httpx.Response(200)

    url = "memory://" if store == "memory" else f"sqlite:///{tmp_path / 'jump.db'}"
    async with wd.AsyncDispatcher(
        url, clock=clock, transport=httpx.MockTransport(endpoint), poll_interval=0.02
    ) as dispatcher:
        await dispatcher.subscribe("https://example.com/hooks")
        message = await dispatcher.publish("order.created", {"id": 1})
        dispatcher.start()
        for _ in range(200):
            if sent:
                break
            await asyncio.sleep(0.01)
        clock.advance(timedelta(hours=2))  # the 60 s lease of the attempt in flight expires
        await dispatcher.publish("order.created", {"id": 2})  # wakes the worker to claim
        await asyncio.sleep(0.3)  # several claim rounds
        release.set()
        await dispatcher.stop()
        attempts = await dispatcher.attempts(message.id)
    assert sent[message.id] == 1
    assert [a.number for a in attempts] == [1]
