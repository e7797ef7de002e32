"""Subscription health, as pure functions: fold a batch of attempts into each
subscription's run of failures, and decide when a long run disables it.

Stores call these inside the transaction that records the attempts, so every worker
of a cluster counts on the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

import attrs

from .errors import ConfigurationError
from .models import Attempt, ErrorKind

__all__ = ["AutoDisable", "HealthChanges", "HealthUpdate", "fold_attempts", "settle_health"]


def _check_window(instance: object, attribute: attrs.Attribute[timedelta], value: object) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise ConfigurationError("AutoDisable.failing_for must be a positive timedelta")


def _check_count(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError("AutoDisable.min_failed_attempts must be a whole number >= 1")


@attrs.frozen
class AutoDisable:
    """When a failing subscription is disabled: it has failed continuously for
    ``failing_for`` (no successful attempt since) AND made at least
    ``min_failed_attempts`` failed attempts in that run. Any success resets both."""

    failing_for: timedelta = attrs.field(default=timedelta(days=5), validator=_check_window)
    min_failed_attempts: int = attrs.field(default=10, validator=_check_count)

    def reason(
        self, failing_since: datetime | None, consecutive_failures: int, now: datetime
    ) -> str | None:
        """Why a subscription in this state should be disabled at ``now``, or None."""
        if failing_since is None or consecutive_failures < self.min_failed_attempts:
            return None
        if now - failing_since < self.failing_for:
            return None
        return (
            f"failing since {failing_since.isoformat()} "
            f"({consecutive_failures} failed attempts in a row); disabled automatically"
        )


@attrs.frozen
class HealthUpdate:
    """One subscription's new failure run after a batch of its attempts."""

    subscription_id: str
    failing_since: datetime | None
    consecutive_failures: int
    recovered: bool
    """A success came after at least one failure (before or within the batch)."""
    last_attempt_at: datetime


@attrs.frozen
class _Batch:
    succeeded: bool  # at least one success in the batch
    failures_after: int  # failed attempts after the batch's last success (or all of them)
    first_failure_after: datetime | None
    failures_before: int  # failed attempts before the batch's last success
    last_attempt_at: datetime


def _fold(attempts: Iterable[Attempt]) -> dict[str, _Batch]:
    found: dict[str, _Batch] = {}
    for attempt in sorted(attempts, key=lambda a: a.started_at):
        if attempt.error_kind is ErrorKind.INTERRUPTED:
            continue  # our worker stopped: says nothing about the endpoint
        prior = found.get(attempt.subscription_id)
        if prior is None:
            prior = _Batch(False, 0, None, 0, attempt.started_at)
        if attempt.succeeded:
            found[attempt.subscription_id] = _Batch(
                True, 0, None, prior.failures_before + prior.failures_after, attempt.started_at
            )
        else:
            found[attempt.subscription_id] = attrs.evolve(
                prior,
                failures_after=prior.failures_after + 1,
                first_failure_after=prior.first_failure_after or attempt.started_at,
                last_attempt_at=attempt.started_at,
            )
    return found


def fold_attempts(
    attempts: Iterable[Attempt],
    current: Mapping[str, tuple[datetime | None, int]],
) -> list[HealthUpdate]:
    """The failure runs after ``attempts`` (any order; sorted by start time here), given
    each subscription's ``current`` ``(failing_since, consecutive_failures)``.
    Subscriptions missing from ``current`` (removed meanwhile) are left out; so are those
    whose run does not change (a success while healthy)."""
    updates: list[HealthUpdate] = []
    for subscription_id, batch in _fold(attempts).items():
        if subscription_id not in current:
            continue
        since, count = current[subscription_id]
        if batch.succeeded:
            recovered = count > 0 or batch.failures_before > 0
            new_since = batch.first_failure_after
            new_count = batch.failures_after
        else:
            recovered = False
            new_since = since or batch.first_failure_after
            new_count = count + batch.failures_after
        if (new_since, new_count) == (since, count) and not recovered:
            continue
        updates.append(
            HealthUpdate(subscription_id, new_since, new_count, recovered, batch.last_attempt_at)
        )
    return updates


@attrs.frozen
class HealthChanges:
    """What a batch of recorded attempts changes in its subscriptions: new failure
    runs, and the subscriptions to disable, each with its reason and the time of its
    last attempt in the batch (its ``updated_at``)."""

    updates: list[HealthUpdate]
    disabled: list[tuple[str, str, datetime]]

    @property
    def recovered(self) -> tuple[str, ...]:
        """Subscriptions whose run ended with a success after failures."""
        return tuple(u.subscription_id for u in self.updates if u.recovered)


def settle_health(
    attempts: Iterable[Attempt],
    health: Mapping[str, tuple[bool, datetime | None, int]],
    auto_disable: AutoDisable | None,
    gone: Iterable[tuple[str, str]] = (),
) -> HealthChanges:
    """The subscription changes of a batch of attempts, decided once for every store.

    ``health`` holds each subscription's stored ``(enabled, failing_since,
    consecutive_failures)`` (removed ones are missing); ``gone`` the ``(subscription_id,
    reason)`` of attempts that ask to disable theirs (a 410), only those whose delivery
    this worker still held. An enabled subscription is disabled by ``gone`` first, else
    when its new failure run passes ``auto_disable``.
    """
    attempts = list(attempts)
    updates = fold_attempts(
        attempts, {key: (since, count) for key, (_, since, count) in health.items()}
    )
    reasons: dict[str, str] = {}
    for subscription_id, reason in gone:
        if health.get(subscription_id, (False, None, 0))[0]:
            reasons.setdefault(subscription_id, reason)
    for update in updates:
        if auto_disable is None or not health[update.subscription_id][0]:
            continue
        refused = auto_disable.reason(
            update.failing_since, update.consecutive_failures, update.last_attempt_at
        )
        if refused is not None:
            reasons.setdefault(update.subscription_id, refused)
    last_at = {u.subscription_id: u.last_attempt_at for u in updates}
    for attempt in attempts:
        at = last_at.get(attempt.subscription_id)
        if at is None or attempt.started_at > at:
            last_at[attempt.subscription_id] = attempt.started_at
    return HealthChanges(updates, [(key, reason, last_at[key]) for key, reason in reasons.items()])
