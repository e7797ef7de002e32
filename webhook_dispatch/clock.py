"""Where the library gets the time: a `Clock` protocol, the system clock, and helpers.

Every decision that depends on time takes it from a clock, so tests can swap in
`webhook_dispatch.testing.FakeClock` and make hours of retries pass instantly.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "utc"]


def utc(moment: datetime) -> datetime:
    """Return ``moment`` as an aware UTC datetime (naive values are taken as UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


@runtime_checkable
class Clock(Protocol):
    """Something that tells the current wall-clock time as an aware UTC datetime."""

    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...


class SystemClock:
    """The real clock (`datetime.now(timezone.utc)`)."""

    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        return datetime.now(timezone.utc)

    def __repr__(self) -> str:
        return "SystemClock()"
