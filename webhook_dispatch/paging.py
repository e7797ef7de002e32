"""Bounded listings: a `Page` of items with an opaque cursor to the next one.

Every listing is keyset-paginated on the store's insertion order, so a page costs the
same however deep it is, and rows added meanwhile never shift what a cursor points to.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from .errors import ConfigurationError

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "Page", "every"]

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
"""Items in a page when ``limit=`` is not given."""
MAX_PAGE_SIZE = 10_000
"""The largest ``limit=`` a listing accepts."""


class Page(list[T], Generic[T]):
    """One page of a listing: a list of the items, plus `next_cursor`.

    Pass ``next_cursor`` as ``cursor=`` to the same listing (with the same filters) for
    the next page; it is None on the last page. A `Page` is a plain list otherwise, so
    code that iterates, indexes or compares a listing keeps working.
    """

    next_cursor: str | None

    def __init__(self, items: Iterable[T] = (), next_cursor: str | None = None) -> None:
        super().__init__(items)
        self.next_cursor = next_cursor

    def __repr__(self) -> str:
        return f"Page({list.__repr__(self)}, next_cursor={self.next_cursor!r})"


def every(listing: Callable[..., Page[T]], **filters: Any) -> Iterator[T]:
    """Every item of a listing, fetched page by page (`MAX_PAGE_SIZE` at a time):
    ``every(dispatcher.deliveries, status="failed")``."""
    cursor: str | None = None
    while True:
        page = listing(**filters, limit=MAX_PAGE_SIZE, cursor=cursor)
        yield from page
        cursor = page.next_cursor
        if cursor is None:
            return


def check_limit(limit: object) -> int:
    """A listing's ``limit=``, validated (1 to `MAX_PAGE_SIZE`)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise ConfigurationError(f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}")
    return limit


def encode_cursor(listing: str, position: int) -> str:
    """The opaque cursor for "after ``position`` in ``listing``"."""
    return base64.urlsafe_b64encode(f"{listing}:{position}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, listing: str) -> int | None:
    """The position a cursor of ``listing`` stands after; None for no cursor. A cursor
    that is malformed, or from another listing, is a `ConfigurationError`."""
    if cursor is None:
        return None
    if isinstance(cursor, str) and len(cursor) <= 128:
        try:
            text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            text = ""
        kind, _, position = text.partition(":")
        if kind == listing and position.isdigit() and position.isascii():
            return int(position)
    raise ConfigurationError(
        f"cursor is not a next_cursor of this {listing} listing; pass the one a page returned"
    )


def page_of(rows: Sequence[tuple[int, T]], limit: int, listing: str) -> Page[T]:
    """A page from up to ``limit + 1`` ``(position, item)`` rows in listing order: the
    extra row, when present, only says that a next page exists."""
    items = rows[:limit]
    cursor = encode_cursor(listing, items[-1][0]) if len(rows) > limit else None
    return Page((item for _, item in items), cursor)
