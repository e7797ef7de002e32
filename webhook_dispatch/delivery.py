"""The delivery state machine: one attempt's outcome in, the delivery's next state out.

Pure: no I/O, no clock, no logging. The worker calls `next_state` after each attempt
and writes the `AttemptRecord` it returns.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from .models import Attempt, AttemptTrigger, Delivery, DeliveryStatus, ErrorKind, new_id
from .retry import Outcome, RetryPolicy, Verdict, classify_attempt, decide
from .stores.base import AttemptRecord, Claim

__all__ = ["interrupted", "next_state"]


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


def interrupted(claim: Claim, started_at: datetime, now: datetime) -> AttemptRecord:
    """The record of an attempt of ``claim`` cut short at ``now`` because the worker
    stopped: counted (the request may have arrived), due again at once, so another
    worker takes it without waiting for the lease to lapse."""
    before = claim.delivery
    error = "interrupted: the worker stopped before the endpoint answered"
    attempt = Attempt(
        id=new_id("atm"),
        delivery_id=before.id,
        message_id=before.message_id,
        subscription_id=before.subscription_id,
        number=before.attempt_count + 1,
        trigger=before.next_trigger,
        started_at=started_at,
        duration=max(0.0, (now - started_at).total_seconds()),
        url=claim.subscription.url,
        error_kind=ErrorKind.INTERRUPTED,
        error=error,
        webhook_timestamp=int(started_at.timestamp()),
    )
    delivery = attrs.evolve(
        before,
        status=DeliveryStatus.PENDING,
        attempt_count=before.attempt_count + 1,
        next_attempt_at=now,
        updated_at=now,
        last_status_code=None,
        last_error=error,
    )
    return AttemptRecord(
        attempt=attempt,
        delivery=delivery,
        event_type=claim.message.event_type,
        tenant=claim.message.tenant,
    )
