"""The delivery state machine: every row of the delivery rules as one pure call, no
sockets and no store."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhook_dispatch.delivery import next_state
from webhook_dispatch.models import (
    Attempt,
    AttemptTrigger,
    Delivery,
    DeliveryStatus,
    ErrorKind,
    Message,
    Subscription,
)
from webhook_dispatch.retry import Outcome, RetryPolicy
from webhook_dispatch.stores.base import Claim

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
NOW = T0 + timedelta(minutes=3)
POLICY = RetryPolicy.fixed([0, 10, 20])  # three attempts, no jitter


def make_claim(
    *, attempt_count: int = 0, trigger: AttemptTrigger = AttemptTrigger.SCHEDULED
) -> Claim:
    subscription = Subscription(
        id="sub_1",
        url="https://example.com/hooks",
        secret="whsec_" + "A" * 32,
        created_at=T0,
        updated_at=T0,
    )
    message = Message(id="msg_1", event_type="order.created", payload=b"{}", created_at=T0)
    delivery = Delivery(
        id="dlv_1",
        message_id=message.id,
        subscription_id=subscription.id,
        status=DeliveryStatus.DELIVERING,
        attempt_count=attempt_count,
        next_attempt_at=T0,
        next_trigger=trigger,
        created_at=T0,
        updated_at=T0,
    )
    return Claim(delivery=delivery, message=message, subscription=subscription)


def make_attempt(claim: Claim, outcome: Outcome) -> Attempt:
    return Attempt(
        id="att_1",
        delivery_id=claim.delivery.id,
        message_id=claim.message.id,
        subscription_id=claim.subscription.id,
        number=claim.delivery.attempt_count + 1,
        trigger=claim.delivery.next_trigger,
        started_at=NOW,
        duration=0.1,
        url=claim.subscription.url,
        status_code=outcome.status_code,
        response_headers=dict(outcome.headers),
        error_kind=outcome.error_kind,
        error=outcome.error,
        webhook_timestamp=int(NOW.timestamp()),
    )


def run(
    outcome: Outcome,
    *,
    attempt_count: int = 0,
    trigger: AttemptTrigger = AttemptTrigger.SCHEDULED,
    policy: RetryPolicy = POLICY,
    now: datetime = NOW,
) -> tuple[Claim, Delivery, str | None, str | None]:
    claim = make_claim(attempt_count=attempt_count, trigger=trigger)
    record = next_state(claim, make_attempt(claim, outcome), outcome, policy, now)
    assert record.attempt.delivery_id == record.delivery.id == claim.delivery.id
    assert record.event_type == "order.created"
    return claim, record.delivery, record.attempt.error, record.disable_subscription


@pytest.mark.parametrize("code", [200, 201, 204, 299])
def test_2xx_succeeds_with_no_next_time_and_no_error(code: int) -> None:
    _, delivery, error, disable = run(Outcome(status_code=code))
    assert delivery.status is DeliveryStatus.SUCCEEDED
    assert delivery.next_attempt_at is None
    assert delivery.last_status_code == code
    assert error is None and delivery.last_error is None and disable is None


def test_3xx_fails_and_keeps_where_it_pointed() -> None:
    outcome = Outcome(status_code=301, headers={"Location": "https://new.example/hooks"})
    _, delivery, error, disable = run(outcome)
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.next_attempt_at is None
    assert error == "HTTP 301: redirect to https://new.example/hooks (not followed)"
    assert delivery.last_error == error and disable is None


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 599])
def test_408_429_and_5xx_are_retried_on_the_schedule(code: int) -> None:
    _, delivery, error, disable = run(Outcome(status_code=code))
    assert delivery.status is DeliveryStatus.PENDING
    assert delivery.next_attempt_at == NOW + timedelta(seconds=10)
    assert error == f"HTTP {code}" and delivery.last_error == error and disable is None


@pytest.mark.parametrize("kind", [ErrorKind.TIMEOUT, ErrorKind.CONNECT, ErrorKind.TLS])
def test_no_response_is_retried_and_keeps_the_transport_error(kind: ErrorKind) -> None:
    _, delivery, error, _ = run(Outcome(error_kind=kind, error="boom"))
    assert delivery.status is DeliveryStatus.PENDING
    assert delivery.last_status_code is None
    assert error == "boom"  # the transport's own text is not replaced


def test_blocked_address_fails() -> None:
    _, delivery, error, _ = run(Outcome(error_kind=ErrorKind.BLOCKED, error="private address"))
    assert delivery.status is DeliveryStatus.FAILED and error == "private address"


@pytest.mark.parametrize("code", [429, 503])
def test_retry_after_pushes_the_next_attempt_past_the_schedule(code: int) -> None:
    outcome = Outcome(status_code=code, headers={"Retry-After": "120"})
    _, delivery, _, _ = run(outcome)
    assert delivery.next_attempt_at == NOW + timedelta(seconds=120)


def test_retry_after_shorter_than_the_schedule_does_not_hurry_it() -> None:
    _, delivery, _, _ = run(Outcome(status_code=503, headers={"Retry-After": "1"}))
    assert delivery.next_attempt_at == NOW + timedelta(seconds=10)


def test_retry_after_is_capped_by_the_policy() -> None:
    policy = RetryPolicy.fixed([0, 10, 20])
    capped = RetryPolicy(wait=policy.wait, stop=policy.stop, max_retry_after=60)
    outcome = Outcome(status_code=429, headers={"Retry-After": "86400"})
    _, delivery, _, _ = run(outcome, policy=capped)
    assert delivery.next_attempt_at == NOW + timedelta(seconds=60)


def test_410_fails_and_disables_the_subscription() -> None:
    _, delivery, error, disable = run(Outcome(status_code=410))
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.next_attempt_at is None
    assert disable == "endpoint answered 410 Gone"
    assert error == "HTTP 410: gone, subscription disabled"


@pytest.mark.parametrize("code", [400, 401, 403, 404, 422])
def test_other_4xx_fail_without_retry(code: int) -> None:
    _, delivery, error, disable = run(Outcome(status_code=code))
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.next_attempt_at is None
    assert error == f"HTTP {code}" and disable is None


def test_a_4xx_listed_in_retry_statuses_is_retried() -> None:
    policy = RetryPolicy(
        wait=POLICY.wait, stop=POLICY.stop, retry_statuses=frozenset({408, 429, 409})
    )
    _, delivery, _, _ = run(Outcome(status_code=409), policy=policy)
    assert delivery.status is DeliveryStatus.PENDING


def test_a_used_up_schedule_exhausts_the_delivery() -> None:
    _, delivery, error, _ = run(Outcome(status_code=503), attempt_count=2)
    assert delivery.attempt_count == 3
    assert delivery.status is DeliveryStatus.EXHAUSTED
    assert delivery.next_attempt_at is None
    assert error == "HTTP 503"


def test_a_failed_manual_attempt_is_final_and_the_next_one_is_scheduled() -> None:
    _, delivery, _, _ = run(Outcome(status_code=503), trigger=AttemptTrigger.MANUAL)
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.next_attempt_at is None
    assert delivery.next_trigger is AttemptTrigger.SCHEDULED


def test_a_successful_manual_attempt_succeeds() -> None:
    _, delivery, _, _ = run(Outcome(status_code=200), trigger=AttemptTrigger.MANUAL)
    assert delivery.status is DeliveryStatus.SUCCEEDED


def test_the_delivery_keeps_its_identity_and_creation_time() -> None:
    claim, delivery, _, _ = run(Outcome(status_code=503), attempt_count=1)
    before = claim.delivery
    assert (delivery.id, delivery.message_id, delivery.subscription_id) == (
        before.id,
        before.message_id,
        before.subscription_id,
    )
    assert delivery.created_at == before.created_at
    assert delivery.updated_at == NOW
    assert delivery.attempt_count == 2


outcomes = st.one_of(
    st.builds(
        Outcome,
        status_code=st.integers(100, 599),
        headers=st.one_of(
            st.just({}),
            st.builds(lambda s: {"Retry-After": str(s)}, st.integers(0, 200_000)),
            st.just({"Location": "https://elsewhere.example/"}),
        ),
    ),
    st.builds(
        Outcome, error_kind=st.sampled_from(ErrorKind), error=st.one_of(st.none(), st.text())
    ),
)

FINAL = {DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED, DeliveryStatus.EXHAUSTED}


@given(
    outcome=outcomes,
    attempt_count=st.integers(0, 12),
    trigger=st.sampled_from(AttemptTrigger),
    offset=st.floats(0, 10 * 86400),
)
def test_every_attempt_counts_once_and_never_schedules_the_past(
    outcome: Outcome, attempt_count: int, trigger: AttemptTrigger, offset: float
) -> None:
    now = T0 + timedelta(seconds=offset)
    claim = make_claim(attempt_count=attempt_count, trigger=trigger)
    record = next_state(claim, make_attempt(claim, outcome), outcome, RetryPolicy(), now)
    delivery = record.delivery
    assert delivery.attempt_count == attempt_count + 1
    assert delivery.next_trigger is AttemptTrigger.SCHEDULED
    assert delivery.updated_at == now
    if delivery.status in FINAL:
        assert delivery.next_attempt_at is None
    else:
        assert delivery.status is DeliveryStatus.PENDING
        assert delivery.next_attempt_at is not None and delivery.next_attempt_at >= now
    if delivery.status is not DeliveryStatus.SUCCEEDED:
        assert record.attempt.error  # a failure always says why
    assert (record.disable_subscription is not None) == (outcome.status_code == 410)
