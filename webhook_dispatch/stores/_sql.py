"""Pieces of SQL and value codecs that the SQLite and PostgreSQL stores share.

Each takes the dialect's placeholder where it builds SQL, so a rule is written once.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

__all__: list[str] = []

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def where_clause(placeholder: str, *filters: tuple[str, Any]) -> tuple[str, list[Any]]:
    """A ``WHERE`` clause (with a trailing space, or empty) and its parameters for the
    ``(column, value)`` filters: ``"column"`` means equal, ``"column op"`` compares with
    that operator; None values are left out."""
    conditions: list[str] = []
    parameters: list[Any] = []
    for column, value in filters:
        if value is not None:
            operator = "" if " " in column else " ="
            conditions.append(f"{column}{operator} {placeholder}")
            parameters.append(value)
    return (f"WHERE {' AND '.join(conditions)} " if conditions else ""), parameters


def prefixed(alias: str, columns: str) -> str:
    """``"a, b"`` as ``"alias.a, alias.b"``."""
    return ", ".join(f"{alias}.{column.strip()}" for column in columns.split(","))


def to_us(moment: datetime) -> int:
    """Integer microseconds since the epoch; naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - EPOCH) // _MICROSECOND


def from_us(value: int) -> datetime:
    """The UTC datetime of integer microseconds since the epoch."""
    return EPOCH + timedelta(microseconds=value)
