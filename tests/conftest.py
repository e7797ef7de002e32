"""Shared fixtures: a real loopback receiver and PostgreSQL schemas (the ``dispatcher``/
``fake_clock``/``mock_receiver`` fixtures come from webhook_dispatch's own pytest plugin)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from webhook_dispatch._receiver import LoopbackReceiver


@pytest.fixture
def loopback() -> Iterator[LoopbackReceiver]:
    """A real HTTP server on 127.0.0.1 with scriptable paths."""
    with LoopbackReceiver() as receiver:
        yield receiver


# -- PostgreSQL ------------------------------------------------------------------------
POSTGRES_ENV = "WEBHOOK_DISPATCH_TEST_POSTGRES"


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The DSN of the test server from ``WEBHOOK_DISPATCH_TEST_POSTGRES``.

    Unset: the test is skipped. Set but unreachable: the test fails, so CI cannot pass
    by silently skipping the PostgreSQL tests.
    """
    dsn = os.environ.get(POSTGRES_ENV)
    if not dsn:
        pytest.skip(
            f"PostgreSQL tests need {POSTGRES_ENV}=postgresql://user@host:5432/dbname "
            "(a database the tests may create and drop schemas in)"
        )
    try:
        import psycopg
    except ImportError:
        pytest.fail(f"{POSTGRES_ENV} is set but psycopg is missing: pip install '.[postgres]'")
    try:
        with psycopg.connect(dsn, connect_timeout=5) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(f"{POSTGRES_ENV} is set but the server is unreachable: {exc}")
    return dsn


def drop_schema(dsn: str, schema: str) -> None:
    """Drop a test schema and everything in it (ignores a server that went away)."""
    import psycopg

    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    except psycopg.OperationalError:
        pass


@pytest.fixture
def postgres_schema(postgres_dsn: str) -> Iterator[str]:
    """A fresh, randomly named schema for one test, dropped afterwards."""
    schema = f"wd_test_{uuid.uuid4().hex[:12]}"
    yield schema
    drop_schema(postgres_dsn, schema)


@pytest.fixture
def postgres_url(postgres_dsn: str, postgres_schema: str) -> str:
    """A ``postgresql://`` store URL naming this test's own schema."""
    separator = "&" if "?" in postgres_dsn else "?"
    return f"{postgres_dsn}{separator}schema={postgres_schema}"
