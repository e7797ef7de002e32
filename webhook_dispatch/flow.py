"""Per-subscription rate limiting: a token bucket per subscription, held by one worker
process and driven by the dispatcher's clock (so a `FakeClock` drives it in tests).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` tokens a second, holding at most ``capacity`` (default: one second's
    worth, at least 1). A request spends one token; none is sent without one."""

    def __init__(self, rate: float, now: datetime, capacity: float | None = None) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate if capacity is None else capacity)
        self.tokens = self.capacity
        self.updated = now

    def _refill(self, now: datetime) -> None:
        elapsed = (now - self.updated).total_seconds()
        if elapsed > 0:
            self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.updated = now  # a clock that went back refills nothing

    def available(self, now: datetime) -> int:
        """Whole tokens at ``now``."""
        self._refill(now)
        return math.floor(self.tokens + 1e-9)

    def take(self, now: datetime) -> bool:
        """Spend a token if there is one."""
        self._refill(now)
        if self.tokens + 1e-9 >= 1:
            self.tokens = max(0.0, self.tokens - 1)
            return True
        return False

    def refund(self) -> None:
        """Give back a token spent on a request that was not sent after all."""
        self.tokens = min(self.capacity, self.tokens + 1)

    def next_token_at(self, now: datetime) -> datetime:
        """When the next whole token is there (``now`` if it already is)."""
        self._refill(now)
        missing = 1 - self.tokens
        if missing <= 1e-9:
            return now
        return now + timedelta(seconds=missing / self.rate)

    def set_rate(self, rate: float) -> None:
        """Follow a changed ``rate_limit`` (tokens kept, capped to the new capacity)."""
        if rate != self.rate:
            self.rate = rate
            self.capacity = max(1.0, rate)
            self.tokens = min(self.tokens, self.capacity)
