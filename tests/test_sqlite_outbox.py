"""The transactional outbox on SQLite: ``publish(connection=...)`` with the application's
own ``sqlite3.Connection`` to the store's file writes in the application's transaction.
A rollback sends nothing, a commit delivers (to a real loopback receiver), a connection
to any other file is refused with nothing written, and a process killed right after its
commit loses nothing.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import webhook_dispatch as wd
from webhook_dispatch._receiver import LoopbackReceiver
from webhook_dispatch.models import new_id
from webhook_dispatch.stores.sqlite import SQLiteStore

if TYPE_CHECKING:
    from conftest import Processes

SECRET = wd.generate_secret()


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """The application's database file, which holds the store too (migrated first)."""
    path = tmp_path / "shop.db"
    SQLiteStore(path).close()
    app = sqlite3.connect(path)
    app.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    app.commit()
    app.close()
    return path


@pytest.fixture
def dispatcher(shop: Path, loopback: LoopbackReceiver) -> Iterator[wd.Dispatcher]:
    """A dispatcher on the shop's file, subscribed to the loopback receiver's /hooks."""
    with wd.Dispatcher(f"sqlite:///{shop}", allow_private_networks=True) as current:
        url = loopback.route("/hooks", [200], secret=SECRET)
        current.subscribe(url, event_types=["order.*"], secret=SECRET)
        yield current


@pytest.fixture
def app(shop: Path) -> Iterator[sqlite3.Connection]:
    """The application's own connection, in sqlite3's default (implicit transactions)."""
    connection = sqlite3.connect(shop)
    yield connection
    connection.close()


def _orders(path: Path) -> list[int]:
    with sqlite3.connect(path) as reader:
        return [row[0] for row in reader.execute("SELECT id FROM orders ORDER BY id")]


def _received(loopback: LoopbackReceiver) -> list[str]:
    requests = loopback.requests_to("/hooks")
    assert all(request.verified is True for request in requests)
    return [request.webhook_id for request in requests]


# -- commit and rollback ------------------------------------------------------------------
def test_a_commit_delivers_and_a_rollback_sends_nothing(
    dispatcher: wd.Dispatcher, app: sqlite3.Connection, shop: Path, loopback: LoopbackReceiver
) -> None:
    app.execute("INSERT INTO orders VALUES (1)")
    dropped = dispatcher.publish("order.created", {"id": 1}, connection=app)
    app.rollback()
    assert dispatcher.messages() == []

    app.execute("INSERT INTO orders VALUES (2)")
    kept = dispatcher.publish("order.created", {"id": 2}, connection=app)
    [paid] = dispatcher.publish_many([("order.paid", {"id": 2})], connection=app)
    # Written in the application's transaction, not committed: no other connection
    # (the store's own, a worker's) sees it yet.
    assert dispatcher.deliveries(message_id=kept.id) == []
    assert dispatcher.messages() == []
    app.commit()

    assert dispatcher.run_until_idle() == 2
    assert sorted(_received(loopback)) == sorted([kept.id, paid.id])
    assert dropped.id not in _received(loopback)
    assert _orders(shop) == [2]


def test_the_same_idempotency_key_twice_in_one_transaction_stores_one_message(
    dispatcher: wd.Dispatcher, app: sqlite3.Connection, loopback: LoopbackReceiver
) -> None:
    app.execute("INSERT INTO orders VALUES (1)")
    first = dispatcher.publish("order.created", {"id": 1}, idempotency_key="1", connection=app)
    again = dispatcher.publish("order.created", {"id": 1}, idempotency_key="1", connection=app)
    app.commit()
    assert again.id == first.id
    assert dispatcher.run_until_idle() == 1
    assert _received(loopback) == [first.id]


def test_a_connection_to_the_same_file_by_another_path_is_accepted(
    dispatcher: wd.Dispatcher, shop: Path, tmp_path: Path, loopback: LoopbackReceiver
) -> None:
    link = tmp_path / "link.db"
    link.symlink_to(shop)
    with sqlite3.connect(link) as connection:  # commits on leaving
        message = dispatcher.publish("order.created", {"id": 1}, connection=connection)
    connection.close()
    assert dispatcher.run_until_idle() == 1
    assert _received(loopback) == [message.id]


# -- refused: another file, memory, not sqlite3 --------------------------------------------
def test_a_connection_to_another_file_or_memory_is_refused_and_nothing_is_stored(
    dispatcher: wd.Dispatcher, tmp_path: Path, loopback: LoopbackReceiver
) -> None:
    other_path = tmp_path / "other.db"
    SQLiteStore(other_path).close()  # even another store's file
    other = sqlite3.connect(other_path)
    memory = sqlite3.connect(":memory:")
    try:
        for connection in (other, memory):
            connection.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY)")
            connection.execute("INSERT INTO orders VALUES (1)")
            with pytest.raises(wd.ConfigurationError, match="this store's file"):
                dispatcher.publish("order.created", {"id": 1}, connection=connection)
            with pytest.raises(wd.ConfigurationError, match="this store's file"):
                dispatcher.publish_many([("order.created", {"id": 1})], connection=connection)
            # The application's transaction is untouched.
            assert connection.in_transaction
            connection.commit()
        with wd.Dispatcher(f"sqlite:///{other_path}") as elsewhere:
            assert elsewhere.messages() == []
    finally:
        other.close()
        memory.close()
    with pytest.raises(wd.ConfigurationError, match=r"sqlite3\.Connection"):
        dispatcher.publish("order.created", {}, connection=object())
    assert dispatcher.messages() == []
    assert dispatcher.run_until_idle() == 0
    assert _received(loopback) == []


def test_an_in_memory_store_refuses_every_connection(tmp_path: Path) -> None:
    with wd.Dispatcher("sqlite:///:memory:") as dispatcher:
        connection = sqlite3.connect(":memory:")
        with pytest.raises(wd.ConfigurationError, match="in-memory"):
            dispatcher.publish("order.created", {}, connection=connection)
        connection.close()


def test_the_memory_store_still_refuses_connection(app: sqlite3.Connection) -> None:
    with (
        wd.Dispatcher("memory://") as dispatcher,
        pytest.raises(wd.ConfigurationError, match="cannot join a database transaction"),
    ):
        dispatcher.publish("order.created", {}, connection=app)


# -- connections outside a transaction ----------------------------------------------------
def test_outside_a_transaction_implicit_mode_begins_one_for_the_caller_to_end(
    dispatcher: wd.Dispatcher, app: sqlite3.Connection, loopback: LoopbackReceiver
) -> None:
    """sqlite3's default mode would begin a transaction at the first INSERT: publishing
    begins it, and only the caller's commit() makes the event visible."""
    assert app.isolation_level == "" and not app.in_transaction
    dropped = dispatcher.publish("order.created", {"id": 1}, connection=app)
    assert app.in_transaction
    assert dispatcher.messages() == []
    app.rollback()

    kept = dispatcher.publish("order.created", {"id": 2}, connection=app)
    app.execute("INSERT INTO orders VALUES (2)")
    app.commit()
    assert not app.in_transaction
    assert dispatcher.run_until_idle() == 1
    assert _received(loopback) == [kept.id]
    assert dropped.id != kept.id


def test_an_autocommit_connection_outside_a_transaction_is_refused(
    dispatcher: wd.Dispatcher, shop: Path, loopback: LoopbackReceiver
) -> None:
    """With isolation_level=None each statement would commit on its own, so the event
    could not follow a transaction: refused, until the caller begins one."""
    connection = sqlite3.connect(shop, isolation_level=None)
    try:
        with pytest.raises(wd.ConfigurationError, match="autocommit connection has none"):
            dispatcher.publish("order.created", {"id": 1}, connection=connection)
        assert not connection.in_transaction
        assert dispatcher.messages() == []

        connection.execute("BEGIN")
        message = dispatcher.publish("order.created", {"id": 1}, connection=connection)
        connection.execute("COMMIT")
    finally:
        connection.close()
    assert dispatcher.run_until_idle() == 1
    assert _received(loopback) == [message.id]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="sqlite3 autocommit= is Python 3.12+")
def test_python_312_autocommit_modes(dispatcher: wd.Dispatcher, shop: Path) -> None:
    on = sqlite3.connect(shop, autocommit=True)  # type: ignore[call-arg,unused-ignore]
    off = sqlite3.connect(shop, autocommit=False)  # type: ignore[call-arg,unused-ignore]
    try:
        with pytest.raises(wd.ConfigurationError, match="autocommit"):
            dispatcher.publish("order.created", {}, connection=on)
        message = dispatcher.publish("order.created", {}, connection=off)  # always in one
        assert dispatcher.messages() == []
        off.commit()
        assert [m.id for m in dispatcher.messages()] == [message.id]
    finally:
        on.close()
        off.close()


# -- the async face ---------------------------------------------------------------------------
async def test_the_async_dispatcher_uses_the_connection_from_a_thread(
    shop: Path, loopback: LoopbackReceiver
) -> None:
    url = loopback.route("/hooks", [200], secret=SECRET)
    async with wd.AsyncDispatcher(f"sqlite:///{shop}", allow_private_networks=True) as current:
        await current.subscribe(url, event_types=["order.*"], secret=SECRET)
        connection = sqlite3.connect(shop, check_same_thread=False)
        try:
            connection.execute("INSERT INTO orders VALUES (1)")
            message = await current.publish("order.created", {"id": 1}, connection=connection)
            [paid] = await current.publish_many([("order.paid", {})], connection=connection)
            assert await current.messages() == []
            connection.commit()
        finally:
            connection.close()
        assert await current.run_until_idle() == 2
    assert sorted(_received(loopback)) == sorted([message.id, paid.id])


# -- a failed publish ----------------------------------------------------------------------
def test_a_failed_publish_writes_nothing_and_leaves_the_callers_transaction(
    dispatcher: wd.Dispatcher, shop: Path, app: sqlite3.Connection
) -> None:
    """SQLite keeps the statements before a failed one: the store undoes its own part
    (a savepoint), so committing after the error keeps the order and no half message."""
    store = dispatcher.store
    [subscription] = dispatcher.subscriptions()
    now = datetime.now(timezone.utc)
    message = wd.Message(
        id=new_id("msg"), event_type="order.created", payload=b"{}", created_at=now
    )
    app.execute("INSERT INTO orders VALUES (1)")
    with pytest.raises(wd.NotFound):
        store.publish(message, [subscription.id, "sub_missing"], now, connection=app)
    assert app.in_transaction
    app.commit()
    assert _orders(shop) == [1]
    assert dispatcher.messages() == []

    # In implicit mode outside a transaction, the one begun for it is rolled back.
    with pytest.raises(wd.NotFound):
        store.publish(message, ["sub_missing"], now, connection=app)
    assert not app.in_transaction
    assert dispatcher.messages() == []


# -- the store's file shared with the application's own tables ------------------------------
def test_a_file_with_the_applications_tables_needs_shared(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as app:
        app.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    app.close()
    with pytest.raises(wd.SchemaError, match="shared=True"):
        SQLiteStore(path)
    SQLiteStore(path, shared=True).close()
    with wd.Dispatcher(f"sqlite:///{path}") as dispatcher:  # ours now: opens as any store
        assert dispatcher.messages() == []
    assert _orders(path) == []


# -- a crash right after the commit -----------------------------------------------------------
# The application: an order and its event in one transaction, committed, then killed at
# once (no close, no atexit, no checkpoint of the WAL).
CRASHING_APP = textwrap.dedent(
    """
    import os, signal, sqlite3, sys
    import webhook_dispatch as wd

    path = sys.argv[1]
    dispatcher = wd.Dispatcher(f"sqlite:///{path}")
    app = sqlite3.connect(path)
    app.execute("INSERT INTO orders VALUES (7)")
    message = dispatcher.publish("order.created", {"id": 7}, connection=app)
    app.commit()
    print(message.id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_process_killed_right_after_its_commit_loses_nothing(
    dispatcher: wd.Dispatcher, shop: Path, loopback: LoopbackReceiver, processes: Processes
) -> None:
    process = processes.start(
        [sys.executable, "-c", CRASHING_APP, str(shop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    line = processes.read_line(process)
    processes.wait_while_progressing(
        lambda: process.poll() is not None, None, "the application to die", limit=300
    )
    assert process.returncode == -signal.SIGKILL
    message_id = line.decode().strip()
    assert message_id.startswith("msg_")

    assert dispatcher.run_until_idle() == 1
    assert _received(loopback) == [message_id]
    assert _orders(shop) == [7]
    assert os.path.exists(shop)
