"""Tests for webhook_dispatch.retry: the delivery-rules table, the schedule, and decisions.

Everything here is pure, so the tests pass a fixed ``now`` and never sleep.
"""

from __future__ import annotations

import itertools
import math
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from random import Random

import attrs
import httpx
import pytest
import tenacity
from hypothesis import given
from hypothesis import strategies as st

import webhook_dispatch as wd
from webhook_dispatch.errors import ConfigurationError
from webhook_dispatch.models import AttemptTrigger, DeliveryStatus, ErrorKind
from webhook_dispatch.retry import (
    DEFAULT_RETRY_STATUSES,
    DEFAULT_SCHEDULE,
    MAX_RETRY_AFTER,
    Classification,
    Decision,
    Outcome,
    RetryPolicy,
    ScheduleWait,
    Verdict,
    classify_outcome,
    decide,
    parse_retry_after,
)
from webhook_dispatch.testing import MockReceiver

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def http(status: int, **headers: str) -> Classification:
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return classify_outcome(Outcome(status_code=status, headers=named), NOW)


def no_response(kind: ErrorKind, error: str | None = None) -> Classification:
    return classify_outcome(Outcome(error_kind=kind, error=error), NOW)


def schedule(
    classification: Classification,
    *,
    attempt_number: int = 1,
    first_attempt_at: datetime = NOW,
    now: datetime = NOW,
    policy: RetryPolicy | None = None,
    trigger: AttemptTrigger = AttemptTrigger.SCHEDULED,
) -> Decision:
    return decide(
        classification=classification,
        attempt_number=attempt_number,
        first_attempt_at=first_attempt_at,
        now=now,
        trigger=trigger,
        policy=policy if policy is not None else RetryPolicy(wait=ScheduleWait(jitter=0)),
    )


def run_schedule(policy: RetryPolicy, failure: Classification) -> list[Decision]:
    """Fail every attempt on the schedule until the policy stops; return each decision."""
    decisions = []
    first = now = NOW
    for attempt_number in range(1, 100):
        decision = schedule(
            failure, attempt_number=attempt_number, first_attempt_at=first, now=now, policy=policy
        )
        decisions.append(decision)
        if decision.next_attempt_at is None:
            return decisions
        now = decision.next_attempt_at
    raise AssertionError("the policy never stopped")


def gaps(decisions: list[Decision]) -> list[float]:
    times = [NOW] + [d.next_attempt_at for d in decisions if d.next_attempt_at is not None]
    return [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]


# --- the delivery-rules table: responses ------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_succeeds(status: int) -> None:
    result = http(status)
    assert result.verdict is Verdict.SUCCEEDED
    assert result.reason == f"HTTP {status}"
    decision = schedule(result)
    assert decision.status is DeliveryStatus.SUCCEEDED
    assert decision.next_attempt_at is None


@pytest.mark.parametrize("status", [300, 301, 302, 303, 307, 308])
def test_3xx_fails_without_following_and_records_location(status: int) -> None:
    result = http(status, location="https://elsewhere.example/hook")
    assert result.verdict is Verdict.FAIL
    assert "redirect to https://elsewhere.example/hook (not followed)" in result.reason
    assert not result.disable_subscription
    assert schedule(result).status is DeliveryStatus.FAILED


def test_3xx_without_location_fails() -> None:
    result = http(302)
    assert result.verdict is Verdict.FAIL
    assert "not followed" in result.reason


def test_3xx_location_header_name_is_case_insensitive() -> None:
    result = classify_outcome(Outcome(301, {"Location": "https://x.example/"}), NOW)
    assert "redirect to https://x.example/" in result.reason


def test_408_retries() -> None:
    result = http(408)
    assert result.verdict is Verdict.RETRY
    assert result.retry_after is None
    decision = schedule(result)
    assert decision.status is DeliveryStatus.PENDING
    assert decision.next_attempt_at == NOW + timedelta(seconds=5)


def test_429_without_retry_after_retries_on_schedule() -> None:
    result = http(429)
    assert result.verdict is Verdict.RETRY
    assert result.retry_after is None
    assert schedule(result).next_attempt_at == NOW + timedelta(seconds=5)


def test_429_with_retry_after_seconds() -> None:
    result = http(429, retry_after="120")
    assert result.verdict is Verdict.RETRY
    assert result.retry_after == 120


def test_429_with_retry_after_http_date() -> None:
    result = http(429, retry_after=format_datetime(NOW + timedelta(minutes=10), usegmt=True))
    assert result.verdict is Verdict.RETRY
    assert result.retry_after == 600


def test_503_with_retry_after() -> None:
    result = http(503, retry_after="90")
    assert result.verdict is Verdict.RETRY
    assert result.retry_after == 90
    assert schedule(result).next_attempt_at == NOW + timedelta(seconds=90)


def test_503_with_retry_after_http_date() -> None:
    result = http(503, retry_after="Sat, 01 Mar 2025 12:30:00 GMT")
    assert result.retry_after == 1800


def test_retry_after_in_the_past_means_now() -> None:
    result = http(503, retry_after="Sat, 01 Mar 2025 11:00:00 GMT")
    assert result.verdict is Verdict.RETRY
    assert result.retry_after == 0
    assert schedule(result).next_attempt_at == NOW + timedelta(seconds=5)


@pytest.mark.parametrize("garbage", ["soon", "-5", "1e3", "", "  ", "Sat, 99 Foo 2025", "0x10"])
def test_garbage_retry_after_is_ignored(garbage: str) -> None:
    result = http(429, retry_after=garbage)
    assert result.verdict is Verdict.RETRY
    assert result.retry_after is None
    assert schedule(result).next_attempt_at == NOW + timedelta(seconds=5)


@pytest.mark.parametrize(
    "value",
    ["86401", "999999999", "9" * 5000, "Sat, 01 Mar 2031 12:00:00 GMT"],
)
def test_retry_after_capped_at_24_hours(value: str) -> None:
    result = http(503, retry_after=value)
    assert result.retry_after == MAX_RETRY_AFTER == 86400
    assert schedule(result).next_attempt_at == NOW + timedelta(hours=24)


def test_retry_after_only_read_on_429_and_503() -> None:
    assert http(500, retry_after="120").retry_after is None
    assert http(408, retry_after="120").retry_after is None


def test_410_fails_and_disables_the_subscription() -> None:
    result = http(410)
    assert result.verdict is Verdict.FAIL
    assert result.disable_subscription
    decision = schedule(result)
    assert decision.status is DeliveryStatus.FAILED
    assert decision.classification.disable_subscription


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 413, 422, 451, 499])
def test_other_4xx_fail_without_retry(status: int) -> None:
    result = http(status)
    assert result.verdict is Verdict.FAIL
    assert not result.disable_subscription
    assert schedule(result).status is DeliveryStatus.FAILED


@pytest.mark.parametrize("status", [500, 501, 502, 503, 504, 599])
def test_5xx_retries(status: int) -> None:
    result = http(status)
    assert result.verdict is Verdict.RETRY
    assert result.reason == f"HTTP {status}"


@pytest.mark.parametrize("status", [0, 100, 101, 199, 600, 999, -1])
def test_unexpected_status_codes_fail(status: int) -> None:
    assert http(status).verdict is Verdict.FAIL


def test_retry_statuses_configure_a_4xx_to_retry() -> None:
    outcome = Outcome(status_code=409)
    assert classify_outcome(outcome, NOW).verdict is Verdict.FAIL
    policy = RetryPolicy(retry_statuses=frozenset({408, 409, 429}))
    assert classify_outcome(outcome, NOW, retry_statuses=policy.retry_statuses).verdict is (
        Verdict.RETRY
    )


def test_retry_statuses_can_stop_retrying_408_and_429() -> None:
    assert classify_outcome(Outcome(408), NOW, retry_statuses=frozenset()).verdict is Verdict.FAIL
    assert classify_outcome(Outcome(429), NOW, retry_statuses=frozenset()).verdict is Verdict.FAIL
    assert classify_outcome(Outcome(503), NOW, retry_statuses=frozenset()).verdict is Verdict.RETRY


def test_default_retry_statuses() -> None:
    assert frozenset({408, 429}) == DEFAULT_RETRY_STATUSES == RetryPolicy().retry_statuses


# --- the delivery-rules table: no response --------------------------------------------


@pytest.mark.parametrize(
    "kind",
    [ErrorKind.TIMEOUT, ErrorKind.CONNECT, ErrorKind.TLS, ErrorKind.PROTOCOL, ErrorKind.OTHER],
)
def test_transport_errors_retry(kind: ErrorKind) -> None:
    result = no_response(kind)
    assert result.verdict is Verdict.RETRY
    assert result.reason == kind.value
    assert schedule(result).status is DeliveryStatus.PENDING


def test_blocked_address_fails_and_is_never_retried() -> None:
    result = no_response(ErrorKind.BLOCKED, "resolves to 10.0.0.1 (private)")
    assert result.verdict is Verdict.FAIL
    assert result.reason == "blocked: resolves to 10.0.0.1 (private)"
    assert schedule(result).status is DeliveryStatus.FAILED


def test_every_error_kind_is_classified() -> None:
    expected = dict.fromkeys(ErrorKind, Verdict.RETRY) | {ErrorKind.BLOCKED: Verdict.FAIL}
    assert {kind: no_response(kind).verdict for kind in ErrorKind} == expected


def test_error_text_goes_into_the_reason() -> None:
    assert no_response(ErrorKind.TIMEOUT, "read timed out").reason == "timeout: read timed out"


def test_outcome_without_status_or_error_is_retried() -> None:
    assert classify_outcome(Outcome(), NOW).verdict is Verdict.RETRY


# --- parse_retry_after ----------------------------------------------------------------


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after(None, NOW) is None
    assert parse_retry_after("0", NOW) == 0
    assert parse_retry_after(" 120 ", NOW) == 120
    assert parse_retry_after("1.5", NOW) == 1.5
    assert parse_retry_after("Sat, 01 Mar 2025 12:02:00 GMT", NOW) == 120
    assert parse_retry_after("Sat, 01 Mar 2025 12:02:00 -0000", NOW) == 120
    assert parse_retry_after("Saturday, 01-Mar-25 12:02:00 GMT", NOW) == 120  # RFC 850
    assert parse_retry_after("Sat Mar  1 12:02:00 2025", NOW) == 120  # asctime, taken as UTC
    assert parse_retry_after("tomorrow", NOW) is None


# --- the schedule ---------------------------------------------------------------------


def test_default_schedule_is_standard_webhooks() -> None:
    assert DEFAULT_SCHEDULE == (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)


def test_default_schedule_without_jitter_follows_default_schedule() -> None:
    decisions = run_schedule(RetryPolicy(wait=ScheduleWait(jitter=0)), http(503))
    # the first attempt happens at delay 0 (immediately); each retry waits the next entry
    assert [0.0, *gaps(decisions)] == list(DEFAULT_SCHEDULE)


def test_default_schedule_exhausts_after_ten_attempts() -> None:
    decisions = run_schedule(RetryPolicy(), http(503))
    assert len(decisions) == 10
    assert all(d.status is DeliveryStatus.PENDING for d in decisions[:9])
    assert decisions[-1].status is DeliveryStatus.EXHAUSTED
    assert decisions[-1].next_attempt_at is None


def test_default_jitter_keeps_every_delay_within_20_percent() -> None:
    for seed in range(20):
        policy = RetryPolicy(wait=ScheduleWait(random=Random(seed)))
        for delay, nominal in zip(
            gaps(run_schedule(policy, http(500))), DEFAULT_SCHEDULE[1:], strict=True
        ):
            assert nominal * 0.8 <= delay <= nominal * 1.2


def test_jitter_actually_varies_delays() -> None:
    policy = RetryPolicy(wait=ScheduleWait(random=Random(1)))
    delays = {policy.next_delay(attempt_number=3, first_attempt_at=NOW, now=NOW) for _ in range(5)}
    assert len(delays) > 1


def test_schedule_repeats_last_delay_past_its_end() -> None:
    policy = RetryPolicy(wait=ScheduleWait([0, 10, 20], jitter=0), stop=tenacity.stop_never)
    delays = [
        policy.next_delay(attempt_number=n, first_attempt_at=NOW, now=NOW) for n in range(1, 6)
    ]
    assert delays == [10, 20, 20, 20, 20]


def test_schedule_wait_composes_like_tenacity_strategies() -> None:
    policy = RetryPolicy(
        wait=ScheduleWait([0, 10], jitter=0) + tenacity.wait_fixed(2),
        stop=tenacity.stop_never,
    )
    assert policy.next_delay(attempt_number=1, first_attempt_at=NOW, now=NOW) == 12


def test_schedule_wait_works_inside_tenacity_itself() -> None:
    sleeps: list[float] = []
    retrying = tenacity.Retrying(
        wait=ScheduleWait([0, 1, 2], jitter=0),
        stop=tenacity.stop_after_attempt(3),
        sleep=sleeps.append,
        reraise=True,
    )

    def always_fails() -> None:
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        retrying(always_fails)
    assert sleeps == [1, 2]


def test_fixed_policy() -> None:
    decisions = run_schedule(RetryPolicy.fixed([0, 1, 2]), http(500))
    assert [d.status for d in decisions] == [
        DeliveryStatus.PENDING,
        DeliveryStatus.PENDING,
        DeliveryStatus.EXHAUSTED,
    ]
    assert gaps(decisions) == [1, 2]


def test_fixed_policy_with_jitter() -> None:
    policy = RetryPolicy.fixed([0, 100], jitter=0.5)
    delay = policy.next_delay(attempt_number=1, first_attempt_at=NOW, now=NOW)
    assert delay is not None
    assert 50 <= delay <= 150


# --- Retry-After against the schedule ---------------------------------------------------


def test_retry_after_longer_than_schedule_wins() -> None:
    decision = schedule(http(429, retry_after="120"), attempt_number=1)  # schedule says 5 s
    assert decision.status is DeliveryStatus.PENDING
    assert decision.next_attempt_at == NOW + timedelta(seconds=120)


def test_retry_after_never_brings_the_next_attempt_forward() -> None:
    decision = schedule(http(503, retry_after="1"), attempt_number=2)  # schedule says 300 s
    assert decision.next_attempt_at == NOW + timedelta(seconds=300)


def test_policy_max_retry_after_caps_retry_after() -> None:
    policy = RetryPolicy(wait=ScheduleWait(jitter=0), max_retry_after=60)
    decision = schedule(http(429, retry_after="3600"), policy=policy)
    assert decision.next_attempt_at == NOW + timedelta(seconds=60)


def test_retry_after_does_not_outlive_the_policy() -> None:
    decision = schedule(http(429, retry_after="120"), policy=RetryPolicy.fixed([0]))
    assert decision.status is DeliveryStatus.EXHAUSTED


# --- user-supplied tenacity strategies -------------------------------------------------


def test_wait_exponential_with_max() -> None:
    policy = RetryPolicy(
        wait=tenacity.wait_exponential(multiplier=1, max=60), stop=tenacity.stop_never
    )
    delays = [
        policy.next_delay(attempt_number=n, first_attempt_at=NOW, now=NOW) for n in range(1, 9)
    ]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]


def test_wait_fixed_plus_wait_random() -> None:
    policy = RetryPolicy(wait=tenacity.wait_fixed(3) + tenacity.wait_random(0, 1))
    for attempt_number in range(1, 6):
        delay = policy.next_delay(attempt_number=attempt_number, first_attempt_at=NOW, now=NOW)
        assert delay is not None
        assert 3 <= delay <= 4


def test_stop_after_attempt_or_delay_stops_on_attempts() -> None:
    policy = RetryPolicy(
        wait=tenacity.wait_fixed(10),
        stop=tenacity.stop_after_attempt(3) | tenacity.stop_after_delay(3600),
    )
    decisions = run_schedule(policy, http(500))
    assert [d.status for d in decisions][-1] is DeliveryStatus.EXHAUSTED
    assert len(decisions) == 3


def test_stop_after_delay_counts_schedule_time_not_process_time() -> None:
    policy = RetryPolicy(
        wait=tenacity.wait_fixed(60),
        stop=tenacity.stop_after_attempt(3) | tenacity.stop_after_delay(3600),
    )
    early = NOW + timedelta(seconds=3599)
    late = NOW + timedelta(seconds=3600)
    assert policy.next_delay(attempt_number=2, first_attempt_at=NOW, now=early) == 60
    assert policy.next_delay(attempt_number=2, first_attempt_at=NOW, now=late) is None
    # hours of schedule time elapse instantly: this process is milliseconds old
    later = NOW + timedelta(days=2)
    decision = schedule(http(500), attempt_number=2, now=later, policy=policy)
    assert decision.status is DeliveryStatus.EXHAUSTED


def test_stop_before_delay_sees_the_upcoming_wait() -> None:
    policy = RetryPolicy(wait=tenacity.wait_fixed(600), stop=tenacity.stop_before_delay(3600))
    at = NOW + timedelta(seconds=2900)
    assert policy.next_delay(attempt_number=2, first_attempt_at=NOW, now=at) == 600
    at = NOW + timedelta(seconds=3001)
    assert policy.next_delay(attempt_number=2, first_attempt_at=NOW, now=at) is None


def test_plain_function_strategies_are_accepted() -> None:
    def wait(state: tenacity.RetryCallState) -> float:
        return 7.0 * state.attempt_number

    def stop(state: tenacity.RetryCallState) -> bool:
        return state.attempt_number >= 2

    policy = RetryPolicy(wait=wait, stop=stop)
    assert policy.next_delay(attempt_number=1, first_attempt_at=NOW, now=NOW) == 7
    assert policy.next_delay(attempt_number=2, first_attempt_at=NOW, now=NOW) is None


def test_strategies_see_a_failed_outcome() -> None:
    seen: list[bool] = []

    def wait(state: tenacity.RetryCallState) -> float:
        assert state.outcome is not None
        seen.append(state.outcome.failed)
        return 1.0

    RetryPolicy(wait=wait).next_delay(attempt_number=1, first_attempt_at=NOW, now=NOW)
    assert seen == [True]


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan, "5", None])
def test_wait_results_are_validated(bad: object) -> None:
    policy = RetryPolicy(wait=lambda state: bad, stop=tenacity.stop_never)  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigurationError):
        policy.next_delay(attempt_number=1, first_attempt_at=NOW, now=NOW)


def test_delay_beyond_any_date_is_a_configuration_error() -> None:
    policy = RetryPolicy(wait=tenacity.wait_fixed(1e300), stop=tenacity.stop_never)
    with pytest.raises(ConfigurationError):
        schedule(http(500), policy=policy)


# --- manual attempts -------------------------------------------------------------------


def test_failed_manual_attempt_is_a_single_try() -> None:
    decision = schedule(http(503), attempt_number=1, trigger=AttemptTrigger.MANUAL)
    assert decision.status is DeliveryStatus.FAILED
    assert decision.next_attempt_at is None


def test_manual_attempt_ignores_the_exhausted_schedule() -> None:
    decision = schedule(http(200), attempt_number=11, trigger=AttemptTrigger.MANUAL)
    assert decision.status is DeliveryStatus.SUCCEEDED
    decision = schedule(http(404), attempt_number=11, trigger=AttemptTrigger.MANUAL)
    assert decision.status is DeliveryStatus.FAILED


# --- configuration errors --------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"wait": 5},
        {"stop": "never"},
        {"retry_statuses": frozenset({600})},
        {"retry_statuses": frozenset({200})},
        {"retry_statuses": {True}},
        {"retry_statuses": 429},
        {"max_retry_after": -1},
        {"max_retry_after": math.nan},
    ],
)
def test_bad_policy_is_a_configuration_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_retry_statuses_accept_any_iterable() -> None:
    assert RetryPolicy(retry_statuses=[409]).retry_statuses == frozenset({409})


@pytest.mark.parametrize(
    ("delays", "jitter"),
    [([], 0.2), ([0, -1], 0.2), ([0, math.inf], 0.2), ("05", 0.2), ([0, 5], -0.1), ([0, 5], 1.5)],
)
def test_bad_schedule_is_a_configuration_error(delays: object, jitter: float) -> None:
    with pytest.raises(ConfigurationError):
        ScheduleWait(delays, jitter)  # type: ignore[arg-type]


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="retry_statuses"):
        RetryPolicy(retry_statuses=frozenset({302}))


# --- properties ------------------------------------------------------------------------

headers_strategy = st.dictionaries(
    st.one_of(st.sampled_from(["retry-after", "location", "Retry-After"]), st.text(max_size=20)),
    st.one_of(
        st.text(max_size=40),
        st.integers(-(10**30), 10**30).map(str),
        st.datetimes(timezones=st.just(timezone.utc)).map(lambda d: format_datetime(d, True)),
    ),
    max_size=4,
)
nows = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(9000, 1, 1), timezones=st.just(timezone.utc)
)


@given(status=st.integers(0, 999), headers=headers_strategy, now=nows)
def test_classification_is_total(status: int, headers: dict[str, str], now: datetime) -> None:
    result = classify_outcome(Outcome(status_code=status, headers=headers), now)
    assert isinstance(result.verdict, Verdict)
    assert result.reason
    if result.retry_after is not None:
        assert 0 <= result.retry_after <= MAX_RETRY_AFTER


@given(value=st.text(), now=nows)
def test_parse_retry_after_never_raises(value: str, now: datetime) -> None:
    seconds = parse_retry_after(value, now)
    assert seconds is None or 0 <= seconds <= MAX_RETRY_AFTER


@given(kind=st.sampled_from(ErrorKind), error=st.none() | st.text())
def test_no_response_classification_is_total(kind: ErrorKind, error: str | None) -> None:
    assert classify_outcome(Outcome(error_kind=kind, error=error), NOW).verdict in (
        Verdict.RETRY,
        Verdict.FAIL,
    )


sorted_delays = st.lists(st.floats(0, 10**6), min_size=1, max_size=12).map(sorted)


@given(
    delays=sorted_delays,
    retry_afters=st.lists(st.none() | st.floats(0, 10**6), min_size=1, max_size=20),
)
def test_schedule_without_jitter_is_monotone(
    delays: list[float], retry_afters: list[float | None]
) -> None:
    policy = RetryPolicy(wait=ScheduleWait(delays, jitter=0), stop=tenacity.stop_never)
    previous_delay = -1.0
    previous_at = NOW
    for attempt_number, retry_after in enumerate(retry_afters, start=1):
        delay = policy.next_delay(attempt_number=attempt_number, first_attempt_at=NOW, now=NOW)
        assert delay is not None
        assert delay >= previous_delay
        previous_delay = delay
        failure = Classification(Verdict.RETRY, "HTTP 503", retry_after=retry_after)
        decision = schedule(failure, attempt_number=attempt_number, now=previous_at, policy=policy)
        assert decision.next_attempt_at is not None
        assert decision.next_attempt_at - previous_at >= timedelta(seconds=delay)
        assert decision.next_attempt_at >= previous_at
        previous_at = decision.next_attempt_at


@given(
    delays=st.lists(st.floats(0, 10**7), min_size=1, max_size=12),
    jitter=st.floats(0, 1),
    seed=st.integers(),
    attempt_number=st.integers(1, 50),
)
def test_delays_are_never_negative(
    delays: list[float], jitter: float, seed: int, attempt_number: int
) -> None:
    policy = RetryPolicy(wait=ScheduleWait(delays, jitter, Random(seed)), stop=tenacity.stop_never)
    delay = policy.next_delay(attempt_number=attempt_number, first_attempt_at=NOW, now=NOW)
    assert delay is not None
    assert delay >= 0
    nominal = delays[min(attempt_number, len(delays) - 1)]
    assert nominal * (1 - jitter) - 1e-6 <= delay <= nominal * (1 + jitter) + 1e-6


@given(attempt_number=st.integers(1, 30), elapsed=st.floats(-1e6, 1e9))
def test_default_policy_decisions_are_pending_or_exhausted(
    attempt_number: int, elapsed: float
) -> None:
    now = NOW + timedelta(seconds=elapsed)
    decision = schedule(http(500), attempt_number=attempt_number, now=now, policy=RetryPolicy())
    if attempt_number >= len(DEFAULT_SCHEDULE):
        assert decision.status is DeliveryStatus.EXHAUSTED
    else:
        assert decision.status is DeliveryStatus.PENDING
        assert decision.next_attempt_at is not None
        assert decision.next_attempt_at >= now


# -- 5xx made final, and the classifier hook ----------------------------------------------
def test_retry_statuses_listing_5xx_codes_make_the_others_final() -> None:
    policy = RetryPolicy(retry_statuses={408, 429, 500, 502, 503, 504})
    now = datetime(2024, 5, 1, tzinfo=timezone.utc)
    final = classify_outcome(Outcome(status_code=501), now, retry_statuses=policy.retry_statuses)
    again = classify_outcome(Outcome(status_code=503), now, retry_statuses=policy.retry_statuses)
    assert final.verdict is Verdict.FAIL and again.verdict is Verdict.RETRY
    default = classify_outcome(Outcome(status_code=501), now)
    assert default.verdict is Verdict.RETRY
    with pytest.raises(wd.ConfigurationError, match="4xx and 5xx"):
        RetryPolicy(retry_statuses={302})


def test_a_classifier_decides_per_response() -> None:
    def classify(attempt: wd.Attempt) -> wd.Verdict | None:
        if attempt.status_code == 200 and b'"ok":false' in attempt.response_body:
            return wd.Verdict.RETRY
        if attempt.status_code == 500 and b"permanent" in attempt.response_body:
            return wd.Verdict.FAIL
        return None

    receiver = MockReceiver(
        routes={
            "https://soft.example/h": [httpx.Response(200, content=b'{"ok":false}'), 200],
            "https://hard.example/h": [httpx.Response(500, content=b"permanent failure")],
            "https://plain.example/h": [503, 200],
        }
    )
    policy = RetryPolicy.fixed([0, 0, 0])
    with wd.Dispatcher(transport=receiver, retry=attrs.evolve(policy, classifier=classify)) as d:
        soft = d.subscribe("https://soft.example/h")
        hard = d.subscribe("https://hard.example/h")
        plain = d.subscribe("https://plain.example/h")
        d.publish("order.paid", {})
        d.run_until_idle()
        status = {s.id: d.deliveries(subscription_id=s.id)[0] for s in (soft, hard, plain)}
    assert status[soft.id].status is wd.DeliveryStatus.SUCCEEDED
    assert status[soft.id].attempt_count == 2
    assert status[hard.id].status is wd.DeliveryStatus.FAILED
    assert status[hard.id].attempt_count == 1
    assert "fail by the classifier" in (status[hard.id].last_error or "")
    assert status[plain.id].status is wd.DeliveryStatus.SUCCEEDED
    assert status[plain.id].attempt_count == 2


def test_a_classifier_that_raises_changes_nothing() -> None:
    def broken(attempt: wd.Attempt) -> wd.Verdict | None:
        raise RuntimeError("bug")

    receiver = MockReceiver([500, 200])
    policy = attrs.evolve(RetryPolicy.fixed([0, 0]), classifier=broken)
    with wd.Dispatcher(transport=receiver, retry=policy) as d:
        d.subscribe("https://h.example/h")
        message = d.publish("order.paid", {})
        d.run_until_idle()
        attempts = d.attempts(message.id)
    assert [a.status_code for a in attempts] == [500, 200]
    assert "classifier raised RuntimeError" in (attempts[0].error or "")
    with pytest.raises(wd.ConfigurationError, match="classifier"):
        RetryPolicy(classifier="not callable")  # type: ignore[arg-type]
