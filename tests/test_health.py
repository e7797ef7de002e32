"""The subscription-health rules every store applies when it records attempts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from webhook_dispatch.health import AutoDisable, settle_health
from webhook_dispatch.models import Attempt, AttemptTrigger, new_id

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


def attempt(subscription_id: str, at: datetime, status_code: int) -> Attempt:
    return Attempt(
        id=new_id("att"),
        delivery_id=new_id("dlv"),
        message_id=new_id("msg"),
        subscription_id=subscription_id,
        number=1,
        trigger=AttemptTrigger.SCHEDULED,
        started_at=at,
        duration=0.01,
        url="https://example.com/h",
        status_code=status_code,
        webhook_timestamp=int(at.timestamp()),
    )


def test_a_410_disables_before_the_failure_run_is_judged() -> None:
    rule = AutoDisable(failing_for=timedelta(days=1), min_failed_attempts=1)
    health = {"sub_a": (True, T0 - timedelta(days=2), 5)}
    later = T0 + timedelta(seconds=3)
    changes = settle_health(
        [attempt("sub_a", T0, 503), attempt("sub_a", later, 410)],
        health,
        rule,
        gone=[("sub_a", "endpoint answered 410 Gone")],
    )
    assert changes.disabled == [("sub_a", "endpoint answered 410 Gone", later)]
    [update] = changes.updates
    assert (update.failing_since, update.consecutive_failures) == (T0 - timedelta(days=2), 7)


def test_a_long_failure_run_disables_an_enabled_subscription_only() -> None:
    rule = AutoDisable(failing_for=timedelta(days=1), min_failed_attempts=3)
    since = T0 - timedelta(days=2)
    health = {"sub_on": (True, since, 2), "sub_off": (False, since, 2)}
    changes = settle_health([attempt("sub_on", T0, 503), attempt("sub_off", T0, 503)], health, rule)
    assert [(key, at) for key, _, at in changes.disabled] == [("sub_on", T0)]
    assert "failing since" in changes.disabled[0][1]
    assert settle_health([attempt("sub_on", T0, 503)], health, None).disabled == []


def test_a_success_recovers_and_a_removed_subscription_is_left_out() -> None:
    health = {"sub_a": (True, T0 - timedelta(hours=1), 4)}
    changes = settle_health(
        [attempt("sub_a", T0, 200), attempt("sub_gone", T0, 503)],
        health,
        AutoDisable(),
        gone=[("sub_gone", "endpoint answered 410 Gone")],
    )
    assert changes.recovered == ("sub_a",)
    assert [(u.subscription_id, u.consecutive_failures) for u in changes.updates] == [("sub_a", 0)]
    assert changes.disabled == []
