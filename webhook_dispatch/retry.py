"""Pure delivery decisions: classify what one attempt produced, and when (if ever) to try again.

No I/O and no sleeping: every function takes its inputs and a ``now``, tenacity strategies
included, so the worker persists the next due time instead of waiting in a process.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from random import Random
from types import MappingProxyType
from typing import Any

import attrs
import tenacity
import tenacity.wait

from .errors import ConfigurationError, WebhookDispatchError
from .models import Attempt, AttemptTrigger, DeliveryStatus, ErrorKind, RetrySchedule

__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "DEFAULT_SCHEDULE",
    "MAX_RETRY_AFTER",
    "Classification",
    "Classifier",
    "Decision",
    "Outcome",
    "RetryPolicy",
    "ScheduleWait",
    "StopStrategy",
    "Verdict",
    "WaitStrategy",
    "classify_attempt",
    "classify_outcome",
    "decide",
    "parse_retry_after",
]

DEFAULT_SCHEDULE: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
"""Standard Webhooks' recommended schedule, in seconds: entry ``n`` is the wait after attempt ``n``.

Entry 0 is the first attempt (immediately); ten entries mean ten attempts in all.
"""

DEFAULT_RETRY_STATUSES: frozenset[int] = frozenset({408, 429})
"""The 4xx status codes retried by default (every 5xx is, unless ``retry_statuses``
lists 5xx codes of its own)."""

MAX_RETRY_AFTER: float = 86400.0
"""The longest ``Retry-After`` honoured, in seconds (24 hours)."""

WaitStrategy = Callable[[tenacity.RetryCallState], "float | int"]
"""A tenacity wait strategy: any callable from a retry state to seconds."""

StopStrategy = Callable[[tenacity.RetryCallState], bool]
"""A tenacity stop strategy: any callable from a retry state to "give up"."""

_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_MAX_REASON_URL = 512


def _lowercase_headers(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType({name.lower(): text for name, text in (value or {}).items()})


@attrs.frozen
class Outcome:
    """What one attempt produced, as plain data: a response's status and headers, or an error.

    ``headers`` keeps lowercase names; only ``retry-after`` and ``location`` are read.
    ``error_kind`` is set when no HTTP response arrived.
    """

    status_code: int | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_lowercase_headers)
    error_kind: ErrorKind | None = None
    error: str | None = None


class Verdict(str, enum.Enum):
    """What an attempt's outcome means for its delivery."""

    SUCCEEDED = "succeeded"
    """The endpoint accepted the message (2xx)."""
    RETRY = "retry"
    """A transient failure: try again on the schedule."""
    FAIL = "fail"
    """A final failure: retrying would not help."""


@attrs.frozen
class Classification:
    """The verdict on one outcome, with a human-readable reason.

    ``retry_after`` is the wait (seconds, at most 24 h) a 429 or 503 asked for;
    ``disable_subscription`` is set for 410 Gone.
    """

    verdict: Verdict
    reason: str
    retry_after: float | None = None
    disable_subscription: bool = False


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Return the seconds a ``Retry-After`` header value asks to wait, or ``None`` if unusable.

    Accepts delta-seconds (``"120"``) or an HTTP date; a date in the past gives 0.
    The result is capped at 24 hours.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        whole = text.partition(".")[0].lstrip("0")
        if len(whole) > 6:  # longer than the cap anyway; avoids huge int/float conversions
            return MAX_RETRY_AFTER
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with no claim about local time
        when = when.replace(tzinfo=timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    seconds = (when - now).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    found = headers.get(name)
    if found is not None:
        return found
    for key, text in headers.items():
        if key.lower() == name:
            return text
    return None


def _no_response_reason(outcome: Outcome, kind: ErrorKind) -> str:
    return f"{kind.value}: {outcome.error}" if outcome.error else kind.value


def classify_outcome(
    outcome: Outcome,
    now: datetime,
    *,
    retry_statuses: frozenset[int] = DEFAULT_RETRY_STATUSES,
) -> Classification:
    """Decide what one attempt's outcome means, following the delivery-rules table.

    2xx succeeds; 3xx fails (the redirect is not followed); 408, 429, 5xx and any code in
    ``retry_statuses`` are retried, honouring ``Retry-After`` on 429 and 503; 410 fails and
    disables the subscription; other codes fail. Without a response, every error kind is
    retried except ``BLOCKED``. Never raises.
    """
    code = outcome.status_code
    if code is None:
        kind = outcome.error_kind or ErrorKind.OTHER
        if outcome.error_kind is None and not outcome.error:
            return Classification(Verdict.RETRY, "no response")
        verdict = Verdict.FAIL if kind is ErrorKind.BLOCKED else Verdict.RETRY
        return Classification(verdict, _no_response_reason(outcome, kind))

    reason = f"HTTP {code}"
    if 200 <= code < 300:
        return Classification(Verdict.SUCCEEDED, reason)
    if code in retry_statuses or (500 <= code < 600 and not _lists_5xx(retry_statuses)):
        retry_after = None
        if code in (429, 503):
            retry_after = parse_retry_after(_header(outcome.headers, "retry-after"), now)
        return Classification(Verdict.RETRY, reason, retry_after=retry_after)
    if 300 <= code < 400:
        location = _header(outcome.headers, "location")
        if location:
            shown = location[:_MAX_REASON_URL].replace("\r", " ").replace("\n", " ")
            return Classification(Verdict.FAIL, f"{reason}: redirect to {shown} (not followed)")
        return Classification(Verdict.FAIL, f"{reason}: redirect without Location (not followed)")
    if code == 410:
        return Classification(
            Verdict.FAIL, f"{reason}: gone, subscription disabled", disable_subscription=True
        )
    if 400 <= code < 500:
        return Classification(Verdict.FAIL, reason)
    return Classification(Verdict.FAIL, f"{reason}: unexpected status")


def _lists_5xx(statuses: frozenset[int]) -> bool:
    return any(500 <= code < 600 for code in statuses)


def classify_attempt(
    attempt: Attempt, outcome: Outcome, now: datetime, policy: RetryPolicy
) -> Classification:
    """`classify_outcome` under ``policy``, then its ``classifier``, if any, on the
    attempt."""
    classification = classify_outcome(outcome, now, retry_statuses=policy.retry_statuses)
    if policy.classifier is None:
        return classification
    try:
        verdict: object = policy.classifier(attempt)
    except Exception as exc:
        return attrs.evolve(
            classification,
            reason=f"{classification.reason} (classifier raised {type(exc).__name__})",
        )
    if verdict is None or verdict is classification.verdict:
        return classification
    if not isinstance(verdict, Verdict):
        return attrs.evolve(
            classification,
            reason=f"{classification.reason} (classifier returned {type(verdict).__name__})",
        )
    return Classification(
        verdict,
        f"{classification.reason} ({verdict.value} by the classifier)",
        retry_after=classification.retry_after if verdict is Verdict.RETRY else None,
        disable_subscription=classification.disable_subscription and verdict is Verdict.FAIL,
    )


def _check_delay(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{what} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"{what} must be finite and non-negative, got {value!r}")
    return float(value)


class ScheduleWait(tenacity.wait.wait_base):
    """A tenacity wait strategy that walks a fixed schedule, with proportional jitter.

    After attempt ``n`` (1-based) fails it waits ``delays[n]`` seconds times a uniform factor
    in ``[1 - jitter, 1 + jitter]``; past the end of ``delays`` the last entry repeats.
    ``delays[0]`` stands for the first attempt (0 = immediately). Composes with ``+`` like
    tenacity's own strategies.
    """

    def __init__(
        self,
        delays: Sequence[float] = DEFAULT_SCHEDULE,
        jitter: float = 0.2,
        random: Random | None = None,
    ) -> None:
        if isinstance(delays, (str, bytes)) or not isinstance(delays, Iterable):
            raise ConfigurationError(f"delays must be a sequence of seconds, got {delays!r}")
        self.delays: tuple[float, ...] = tuple(
            _check_delay(delay, "each schedule delay") for delay in delays
        )
        if not self.delays:
            raise ConfigurationError("delays must not be empty")
        jitter = _check_delay(jitter, "jitter")
        if jitter > 1:
            raise ConfigurationError(f"jitter must be between 0 and 1, got {jitter!r}")
        self.jitter = jitter
        self.random = random if random is not None else Random()

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        """Seconds to wait after attempt ``retry_state.attempt_number`` failed."""
        index = min(max(retry_state.attempt_number, 0), len(self.delays) - 1)
        delay = self.delays[index]
        if self.jitter:
            delay *= self.random.uniform(1 - self.jitter, 1 + self.jitter)
        return delay

    def __repr__(self) -> str:
        return f"ScheduleWait(delays={self.delays!r}, jitter={self.jitter!r})"


def _require_callable(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not callable(value):
        raise ConfigurationError(
            f"{attribute.name} must be a tenacity strategy (a callable), got {value!r}"
        )


def _status_set(value: Iterable[int]) -> frozenset[int]:
    try:
        statuses = frozenset(value)
    except TypeError:
        raise ConfigurationError(
            f"retry_statuses must be a set of status codes, got {value!r}"
        ) from None
    for code in statuses:
        if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
            raise ConfigurationError(f"retry_statuses holds 4xx and 5xx status codes, got {code!r}")
    return statuses


def _optional_callable(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not callable(value):
        raise ConfigurationError(
            f"{attribute.name} must be a function of an Attempt, got {type(value).__name__}"
        )


Classifier = Callable[["Attempt"], "Verdict | None"]
"""`RetryPolicy.classifier`: an attempt in, a `Verdict` (or None for the usual rules) out."""


def _check_max_retry_after(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _check_delay(value, attribute.name)


def _default_stop() -> StopStrategy:
    return tenacity.stop_after_attempt(len(DEFAULT_SCHEDULE))


class _AttemptFailed(WebhookDispatchError):
    """Stands in the retry state's outcome: the attempt did not succeed."""


@attrs.frozen
class RetryPolicy:
    """When to try a failed delivery again, in tenacity's vocabulary.

    ``wait`` and ``stop`` are tenacity strategies (``wait_exponential(...) + wait_random(...)``,
    ``stop_after_attempt(8) | stop_after_delay(...)``); the worker evaluates them against
    schedule time (first attempt to now) and persists the next due time.
    ``retry_statuses`` lists the 4xx codes to retry; every 5xx is retried too, unless the
    set lists 5xx codes itself, when only those are (``{408, 429, 500, 502, 503, 504}``
    makes a 501 final). ``max_retry_after`` caps how long a receiver's ``Retry-After`` may
    push the next attempt.

    ``classifier`` decides per response where the rules cannot: it gets the `Attempt`
    (status, the kept response headers, the first 16 KiB of the body) and returns a
    `Verdict`, or None to keep the usual one. A classifier that raises changes
    nothing (the error is noted in the attempt's reason). A receiver's ``Retry-After``
    holds for a retry verdict; a 410 disables the subscription only while the verdict
    stays a failure.
    """

    wait: WaitStrategy = attrs.field(factory=ScheduleWait, validator=_require_callable)
    stop: StopStrategy = attrs.field(factory=_default_stop, validator=_require_callable)
    retry_statuses: frozenset[int] = attrs.field(
        default=DEFAULT_RETRY_STATUSES, converter=_status_set
    )
    max_retry_after: float = attrs.field(default=MAX_RETRY_AFTER, validator=_check_max_retry_after)
    classifier: Classifier | None = attrs.field(default=None, validator=_optional_callable)

    @classmethod
    def fixed(cls, delays: Sequence[float], *, jitter: float = 0.0) -> RetryPolicy:
        """A policy of ``len(delays)`` attempts walking ``delays`` (``delays[0]`` = first attempt).

        ``RetryPolicy.fixed([0, 1, 2])`` tries now, 1 s after the first failure, 2 s after the
        second, then gives up.
        """
        schedule = ScheduleWait(delays, jitter)
        return cls(wait=schedule, stop=tenacity.stop_after_attempt(len(schedule.delays)))

    @property
    def schedule(self) -> RetrySchedule | None:
        """This policy as a storable `RetrySchedule` when it is a fixed schedule (made
        by `fixed`), else None: arbitrary tenacity strategies cannot be persisted."""
        wait, stop = self.wait, self.stop
        if (
            isinstance(wait, ScheduleWait)
            and isinstance(stop, tenacity.stop_after_attempt)
            and stop.max_attempt_number == len(wait.delays)
        ):
            return RetrySchedule(wait.delays, wait.jitter)
        return None

    def with_schedule(self, schedule: RetrySchedule) -> RetryPolicy:
        """This policy walking ``schedule`` instead (retry statuses and the
        ``Retry-After`` cap kept): how a subscription's own schedule applies."""
        fixed = RetryPolicy.fixed(schedule.delays, jitter=schedule.jitter)
        return attrs.evolve(self, wait=fixed.wait, stop=fixed.stop)

    def next_delay(
        self, *, attempt_number: int, first_attempt_at: datetime, now: datetime
    ) -> float | None:
        """Seconds to wait after attempt ``attempt_number`` failed at ``now``; ``None`` = give up.

        The strategies see a tenacity retry state whose ``seconds_since_start`` is the time from
        ``first_attempt_at`` to ``now``, so ``stop_after_delay`` counts schedule time, not the
        lifetime of this process. As in tenacity, ``wait`` is evaluated before ``stop`` (so
        ``stop_before_delay`` sees the upcoming sleep).
        """
        elapsed = max((now - first_attempt_at).total_seconds(), 0.0)
        state = tenacity.RetryCallState(
            retry_object=tenacity.Retrying(wait=self.wait, stop=self.stop),
            fn=None,
            args=(),
            kwargs={},
        )
        state.attempt_number = attempt_number
        state.start_time = 0.0
        state.outcome = tenacity.Future.construct(
            attempt_number, _AttemptFailed(f"attempt {attempt_number} failed"), True
        )
        state.outcome_timestamp = elapsed
        delay = self.wait(state)
        state.upcoming_sleep = delay
        if self.stop(state):
            return None
        return _check_delay(delay, f"the wait strategy's result ({self.wait!r})")


@attrs.frozen
class Decision:
    """A delivery's next state after one attempt, and when its next attempt is due."""

    status: DeliveryStatus
    next_attempt_at: datetime | None
    classification: Classification


def decide(
    *,
    classification: Classification,
    attempt_number: int,
    first_attempt_at: datetime,
    now: datetime,
    trigger: AttemptTrigger,
    policy: RetryPolicy,
) -> Decision:
    """Turn an attempt's classification into the delivery's next status and due time.

    Success and final failures end the delivery; a failed manual attempt ends it too (a manual
    retry is a single try). A retryable failure is scheduled by ``policy``, never earlier than a
    ``Retry-After`` the receiver asked for, or marked exhausted when the policy stops.
    """
    verdict = classification.verdict
    if verdict is Verdict.SUCCEEDED:
        return Decision(DeliveryStatus.SUCCEEDED, None, classification)
    if verdict is Verdict.FAIL or trigger is AttemptTrigger.MANUAL:
        return Decision(DeliveryStatus.FAILED, None, classification)
    delay = policy.next_delay(
        attempt_number=attempt_number, first_attempt_at=first_attempt_at, now=now
    )
    if delay is None:
        return Decision(DeliveryStatus.EXHAUSTED, None, classification)
    asked = min(classification.retry_after or 0.0, policy.max_retry_after)
    try:
        next_attempt_at = now + timedelta(seconds=max(delay, asked))
    except OverflowError:
        raise ConfigurationError(
            f"the wait strategy's delay of {delay} s is beyond any representable date"
        ) from None
    return Decision(DeliveryStatus.PENDING, next_attempt_at, classification)
