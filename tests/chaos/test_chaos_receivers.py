"""Fault family 1: a receiver that answers 200, 500, 503 with Retry-After, 429, slowly,
with a huge body, by resetting or closing the connection, with garbage bytes, or never.

5,000 messages; every one must end delivered, or exhausted where its script failed every
attempt, and every attempt record must match what the receiver saw and answered.
"""

from __future__ import annotations

from pathlib import Path

import chaos_scenarios as chaos
import pytest

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def test_5000_messages_to_a_misbehaving_receiver_end_as_scripted(tmp_path: Path) -> None:
    result = chaos.receivers(tmp_path, messages=5000)
    chaos.check(result)
    assert result.delivered + result.exhausted == result.messages == 5000
    assert result.duplicate_sends == 0
    answers = result.figures["answers"]
    assert set(answers) == {behaviour.value for behaviour in chaos.Behaviour}, answers
    assert result.attempts == result.figures["requests received"]


def test_a_scripted_message_gets_exactly_its_script(tmp_path: Path) -> None:
    """The audit itself: a small run where each plan is known in advance."""
    result = chaos.receivers(tmp_path, messages=200, seed=11)
    chaos.check(result)
    plans = [chaos.plan_for(11, n, len(chaos.DELAYS)) for n in range(200)]
    assert result.attempts == sum(len(plan) for plan in plans)
    assert result.exhausted == sum(chaos.scripted_end(p) is chaos.EXHAUSTED for p in plans)
