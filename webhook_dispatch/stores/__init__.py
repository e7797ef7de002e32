"""Stores keep subscriptions, messages, deliveries and attempts: memory, SQLite, PostgreSQL.

`open_store` turns a store URL into a store; every store follows `Store`.
"""

from __future__ import annotations

from .._redact import redact_store_url
from ..errors import InvalidStoreURL
from .base import AttemptRecord, Claim, ClaimPlan, PublishResult, RecordResult, Stats, Store
from .memory import MemoryStore

__all__ = [
    "AttemptRecord",
    "Claim",
    "ClaimPlan",
    "MemoryStore",
    "PublishResult",
    "RecordResult",
    "Stats",
    "Store",
    "open_store",
]


def open_store(url: str | Store) -> Store:
    """Open the store a URL names, or return a `Store` object unchanged.

    ``memory://`` keeps everything in this process; ``sqlite:///path/to/file.db`` (three
    slashes and a relative path, four for an absolute one) is the durable default;
    ``postgresql://user@host:5432/dbname`` (``?schema=name`` optional) serves workers on
    many machines and needs ``webhook-dispatch[postgres]``.
    """
    if not isinstance(url, str):
        if isinstance(url, Store):
            return url
        raise InvalidStoreURL(f"store must be a URL string or a Store, not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise InvalidStoreURL(
            f"store URL {redact_store_url(url)!r} has no scheme; use 'memory://' or "
            "'sqlite:///path/to/file.db'"
        )
    if scheme == "memory":
        if rest:
            raise InvalidStoreURL(
                f"memory store URL takes nothing after 'memory://': {redact_store_url(url)!r}"
            )
        return MemoryStore()
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    if scheme in ("postgres", "postgresql"):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:
            raise InvalidStoreURL(
                f"{exc}; or use 'sqlite:///path/to/file.db' (durable) or 'memory://'"
            ) from None
        return PostgresStore.from_url(url)
    raise InvalidStoreURL(
        f"unknown store scheme {scheme!r} in store URL; use 'memory://' or 'sqlite:///path'"
    )
