"""The delivery state machine: one attempt's outcome in, the delivery's next state out.

Pure: no I/O, no clock, no logging. The worker calls `next_state` after each attempt
and writes the `AttemptRecord` it returns.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from .models import Attempt, AttemptTrigger, Delivery
from .retry import Outcome, RetryPolicy, Verdict, classify_attempt, decide
from .stores.base import AttemptRecord, Claim

__all__ = ["next_state"]


def next_state(
    claim: Claim, attempt: Attempt, outcome: Outcome, policy: RetryPolicy, now: datetime
) -> AttemptRecord:
    """What one finished attempt of ``claim`` changes, decided at ``now`` by ``policy``.

    The record holds the attempt (its ``error`` filled from the classification when it
    did not succeed and the transport gave no text), the delivery's next state (status,
    attempt count + 1, next due time, last status and error; the next attempt is a
    scheduled one) and, for a 410 Gone, the reason to disable the subscription.
    """
    classification = classify_attempt(attempt, outcome, now, policy)
    before = claim.delivery
    decision = decide(
        classification=classification,
        attempt_number=before.attempt_count + 1,
        first_attempt_at=before.created_at,
        now=now,
        trigger=before.next_trigger,
        policy=policy,
    )
    if classification.verdict is not Verdict.SUCCEEDED and not attempt.error:
        attempt = attrs.evolve(attempt, error=classification.reason)
    # Built whole rather than with attrs.evolve: this runs once per attempt.
    delivery = Delivery(
        id=before.id,
        message_id=before.message_id,
        subscription_id=before.subscription_id,
        status=decision.status,
        attempt_count=before.attempt_count + 1,
        next_attempt_at=decision.next_attempt_at,
        next_trigger=AttemptTrigger.SCHEDULED,
        created_at=before.created_at,
        updated_at=now,
        last_status_code=attempt.status_code,
        last_error=attempt.error,
    )
    return AttemptRecord(
        attempt=attempt,
        delivery=delivery,
        disable_subscription=(
            f"endpoint answered {attempt.status_code} Gone"
            if classification.disable_subscription
            else None
        ),
        event_type=claim.message.event_type,
        tenant=claim.message.tenant,
    )
