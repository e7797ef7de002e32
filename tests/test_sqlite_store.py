"""SQLite-only behaviour: durability across reopen, schema checks, URLs, locking, and
several threads and processes sharing one file."""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import sqlite3
import stat
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest

from webhook_dispatch.errors import InvalidStoreURL, SchemaError, StoreError, StoreUnavailable
from webhook_dispatch.models import (
    Attempt,
    AttemptTrigger,
    DeliveryStatus,
    Message,
    Subscription,
    new_id,
)
from webhook_dispatch.paging import MAX_PAGE_SIZE
from webhook_dispatch.stores import AttemptRecord, Claim, Store, open_store
from webhook_dispatch.stores.sqlite import SCHEMA_VERSION, SQLiteStore

# Worker processes are spawned (not forked) so none inherits an open connection.
_MP = multiprocessing.get_context("spawn")
_PROCESS_TIMEOUT = 60.0
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


def make_subscription(**changes: Any) -> Subscription:
    fields: dict[str, Any] = {
        "id": new_id("sub"),
        "url": "https://example.com/hooks",
        "secret": "whsec_" + "A" * 32,
        "created_at": T0,
        "updated_at": T0,
        **changes,
    }
    return Subscription(**fields)


def make_message(
    key: str | None = None, *, idempotency_key: str | None = None, tenant: str | None = None
) -> Message:
    return Message(
        id=new_id("msg"),
        event_type="order.created",
        payload=b"{}",
        created_at=T0,
        idempotency_key=key or idempotency_key,
        tenant=tenant,
    )


def claim(store: Store, now: datetime = T0, *, limit: int = 10, worker: str = "w1") -> list[Claim]:
    return store.claim_due(
        now, limit=limit, lease_until=now + timedelta(minutes=5), worker_id=worker
    )


def retry_record(held: Claim, *, started: datetime, retry_at: datetime) -> AttemptRecord:
    attempt = Attempt(
        id=new_id("att"),
        delivery_id=held.delivery.id,
        message_id=held.message.id,
        subscription_id=held.subscription.id,
        number=1,
        trigger=AttemptTrigger.SCHEDULED,
        started_at=started,
        duration=0.5,
        url=held.subscription.url,
        status_code=503,
        response_body=b"down",
        webhook_timestamp=int(started.timestamp()),
    )
    delivery = attrs.evolve(
        held.delivery,
        status=DeliveryStatus.PENDING,
        attempt_count=1,
        next_attempt_at=retry_at,
        last_status_code=503,
        updated_at=started,
    )
    return AttemptRecord(attempt, delivery)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "w.db"


def test_everything_survives_close_and_reopen(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    subscription = make_subscription(headers={"X-Tenant": "42"}, metadata={"team": "a"})
    store.add_subscription(subscription)
    message = make_message("key-1")
    store.publish(message, [subscription.id], T0)
    [held] = claim(store)
    retry_at = T0 + timedelta(minutes=5, microseconds=7)
    record = retry_record(held, started=T0 + timedelta(seconds=1), retry_at=retry_at)
    store.record([record], "w1")
    version = store.subscriptions_version()
    store.close()

    reopened = SQLiteStore(db_path)
    try:
        # The failed attempt began the subscription's failure run (auto-disable counts it).
        assert reopened.list_subscriptions() == [
            attrs.evolve(
                subscription,
                failing_since=record.attempt.started_at,
                consecutive_failures=1,
            )
        ]
        assert reopened.subscriptions_version() == version
        assert reopened.get_message(message.id) == message
        [delivery] = reopened.list_deliveries()
        assert delivery == record.delivery
        assert delivery.status is DeliveryStatus.PENDING
        assert delivery.next_attempt_at == retry_at
        assert delivery.next_attempt_at.tzinfo is not None
        assert reopened.next_due_at() == retry_at
        assert reopened.list_attempts(message_id=message.id) == [record.attempt]
        assert not reopened.publish(make_message("key-1"), [subscription.id], T0).created
        assert claim(reopened, retry_at)[0].delivery.id == delivery.id
    finally:
        reopened.close()


def test_new_file_is_private_wal_and_versioned(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    store.close()
    if os.name == "posix":
        assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    with sqlite3.connect(db_path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        version = connection.execute(
            "SELECT value FROM webhook_dispatch_meta WHERE key = 'schema_version'"
        ).fetchone()[0]
    connection.close()
    assert version == SCHEMA_VERSION


def test_path_and_repr_hide_secrets(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    subscription = make_subscription()
    store.add_subscription(subscription)
    assert store.path == str(db_path)
    assert repr(store) == f"SQLiteStore({str(db_path)!r})"
    assert subscription.secret not in repr(store)
    assert store.blocking is True
    store.close()


def undo_version_7(connection: sqlite3.Connection) -> None:
    """Put a current file back in its version-6 shape: no routing columns, no catalog."""
    connection.execute("ALTER TABLE subscriptions DROP COLUMN filter")
    connection.execute("DROP INDEX subscriptions_key")
    connection.execute("ALTER TABLE subscriptions DROP COLUMN key")
    connection.execute("ALTER TABLE messages DROP COLUMN headers")
    connection.execute("ALTER TABLE messages DROP COLUMN test")
    connection.execute("ALTER TABLE attempts DROP COLUMN request_headers")
    connection.execute("DROP TABLE event_types")
    connection.execute("DROP TABLE settings")
    connection.execute("UPDATE webhook_dispatch_meta SET value = 6 WHERE key = 'schema_version'")


def undo_version_6(connection: sqlite3.Connection) -> None:
    """Put a current file back in its version-5 shape: no subscription due index."""
    undo_version_7(connection)
    connection.execute("DROP INDEX deliveries_subscription_due")
    connection.execute("UPDATE webhook_dispatch_meta SET value = 5 WHERE key = 'schema_version'")


def test_version_5_file_gains_the_subscription_due_index(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    subscription = make_subscription()
    store.add_subscription(subscription)
    published = store.publish(make_message(), [subscription.id], T0).message
    store.close()
    connection = sqlite3.connect(db_path)
    with connection:
        undo_version_6(connection)
    connection.close()
    reopened = SQLiteStore(db_path)
    try:
        assert [c.delivery.message_id for c in claim(reopened)] == [published.id]
    finally:
        reopened.close()
    connection = sqlite3.connect(db_path)
    try:
        names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        version = connection.execute("SELECT value FROM webhook_dispatch_meta").fetchone()[0]
    finally:
        connection.close()
    assert "deliveries_subscription_due" in names and version == SCHEMA_VERSION == 7


def undo_version_5(connection: sqlite3.Connection) -> None:
    """Put a current file back in its version-4 shape: no tenants."""
    undo_version_6(connection)
    for index in (
        "subscriptions_tenant",
        "messages_tenant",
        "messages_idempotency",
        "deliveries_tenant",
        "deliveries_tenant_due",
    ):
        connection.execute(f"DROP INDEX {index}")
    for table in ("subscriptions", "messages", "deliveries"):
        connection.execute(f"ALTER TABLE {table} DROP COLUMN tenant")
    connection.execute("CREATE UNIQUE INDEX messages_key ON messages (idempotency_key)")
    connection.execute("DROP TABLE tenants")
    connection.execute("DROP TABLE subscription_changes")
    connection.execute("UPDATE webhook_dispatch_meta SET value = 4 WHERE key = 'schema_version'")


def test_version_4_file_keeps_working_untenanted(db_path: Path) -> None:
    """Version 5 adds tenants: a version-4 file's subscriptions, messages and keys
    become untenanted, and its unique keys become unique per tenant."""
    store = SQLiteStore(db_path)
    subscription = make_subscription()
    store.add_subscription(subscription)
    keyed = make_message(idempotency_key="k1")
    store.publish(keyed, [subscription.id], T0)
    store.close()
    connection = sqlite3.connect(db_path)
    with connection:
        undo_version_5(connection)
    connection.close()
    reopened = SQLiteStore(db_path)
    try:
        assert reopened.get_subscription(subscription.id).tenant is None
        assert reopened.get_message(keyed.id).tenant is None
        again = reopened.publish(make_message(idempotency_key="k1"), [subscription.id], T0)
        assert not again.created and again.message.id == keyed.id
        other = make_message(idempotency_key="k1", tenant="acme")
        assert reopened.publish(other, [], T0).created
        assert [c.delivery.message_id for c in claim(reopened)] == [keyed.id]
        assert [s.id for s in reopened.list_subscriptions(tenant=None)] == [subscription.id]
    finally:
        reopened.close()


def test_version_3_headers_become_name_value_pairs(db_path: Path) -> None:
    """Version 4 keeps headers as ``[[name, value], ...]``, PostgreSQL's form: a
    version-3 file's JSON-object headers are rewritten in order, and read back alike."""
    store = SQLiteStore(db_path)
    subscription = make_subscription(headers={"X-Zeta": "1", "X-Alpha": "2"})
    store.add_subscription(subscription)
    store.close()
    connection = sqlite3.connect(db_path)
    with connection:
        undo_version_5(connection)
        connection.execute(
            "UPDATE subscriptions SET headers = ? WHERE id = ?",
            ('{"X-Zeta":"1","X-Alpha":"2"}', subscription.id),
        )
        connection.execute(
            "UPDATE webhook_dispatch_meta SET value = 3 WHERE key = 'schema_version'"
        )
    connection.close()
    reopened = SQLiteStore(db_path)
    try:
        assert list(reopened.get_subscription(subscription.id).headers.items()) == [
            ("X-Zeta", "1"),
            ("X-Alpha", "2"),
        ]
    finally:
        reopened.close()
    connection = sqlite3.connect(db_path)
    (stored,) = connection.execute("SELECT headers FROM subscriptions").fetchone()
    connection.close()
    assert json.loads(stored) == [["X-Zeta", "1"], ["X-Alpha", "2"]]


def test_version_2_file_is_migrated_and_ordered_claims_still_work(db_path: Path) -> None:
    """Version 3 indexes only ordered subscriptions' open deliveries, on columns a lease
    does not rewrite; a version-2 file, with a finished row that still carries a due
    time, is migrated in place and its ordered subscription claims as before."""
    store = SQLiteStore(db_path)
    ordered = make_subscription(ordered=True)
    store.add_subscription(ordered)
    first, second = make_message(), make_message()
    store.publish(first, [ordered.id], T0)
    store.publish(second, [ordered.id], T0)
    (head,) = claim(store)
    done = attrs.evolve(
        retry_record(head, started=T0, retry_at=T0).delivery,
        status=DeliveryStatus.SUCCEEDED,
        next_attempt_at=None,
    )
    store.record([AttemptRecord(retry_record(head, started=T0, retry_at=T0).attempt, done)], "w1")
    store.close()
    # Put the file back in its version-2 shape.
    connection = sqlite3.connect(db_path)
    with connection:
        undo_version_5(connection)
        connection.execute("DROP INDEX deliveries_ordered")
        connection.execute("ALTER TABLE deliveries DROP COLUMN ordered")
        connection.execute(
            "CREATE INDEX attempts_message ON attempts (message_id, started_at, number)"
        )
        connection.execute(
            "CREATE INDEX deliveries_unfinished ON deliveries (subscription_id, seq) "
            "WHERE status IN ('pending', 'delivering')"
        )
        connection.execute(
            "UPDATE deliveries SET next_attempt_at = created_at WHERE status = 'succeeded'"
        )
        connection.execute(
            "UPDATE webhook_dispatch_meta SET value = 2 WHERE key = 'schema_version'"
        )
    connection.close()

    reopened = SQLiteStore(db_path)
    try:
        assert [c.delivery.message_id for c in claim(reopened)] == [second.id]
    finally:
        reopened.close()
    connection = sqlite3.connect(db_path)
    indexes = {row[0] for row in connection.execute("SELECT name FROM sqlite_schema")}
    version = connection.execute(
        "SELECT value FROM webhook_dispatch_meta WHERE key = 'schema_version'"
    ).fetchone()[0]
    finished = connection.execute(
        "SELECT next_attempt_at FROM deliveries WHERE status = 'succeeded'"
    ).fetchall()
    connection.close()
    assert version == SCHEMA_VERSION == 7
    assert "deliveries_ordered" in indexes and "deliveries_unfinished" not in indexes
    assert "attempts_message" not in indexes
    assert finished == [(None,)]
    reopened = SQLiteStore(db_path)
    try:  # a message's attempts are still found (through its deliveries)
        assert [a.delivery_id for a in reopened.list_attempts(message_id=first.id)] == [
            head.delivery.id
        ]
    finally:
        reopened.close()


def test_checkpoints_run_off_the_committing_thread_and_stop_with_the_store(
    db_path: Path,
) -> None:
    """Every few commits a background thread copies the WAL back into the file, so a
    commit does not pay for it; closing the store ends that thread, and what was
    written is all there on reopening."""
    before = {thread.name for thread in threading.enumerate()}
    store = SQLiteStore(db_path)
    subscription = make_subscription()
    store.add_subscription(subscription)
    messages = [make_message() for _ in range(40)]
    for message in messages:
        store.publish(message, [subscription.id], T0)
    checkpointer = store._checkpointer
    assert checkpointer is not None
    deadline = time.monotonic() + 10
    while checkpointer.runs == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert checkpointer.runs >= 1
    assert "webhook-dispatch-checkpoint" in {t.name for t in threading.enumerate()}
    store.close()
    store.close()  # idempotent
    assert {thread.name for thread in threading.enumerate()} <= before
    reopened = SQLiteStore(db_path)
    try:
        assert len(reopened.list_messages(limit=100)) == len(messages)
    finally:
        reopened.close()


def _commit_until_checkpointed_then_close(store: SQLiteStore) -> int:
    """Commit enough to ask for a background checkpoint, wait for one (10 s at most),
    close the store; return how many checkpoints ran."""
    subscription = make_subscription()
    store.add_subscription(subscription)
    for _ in range(16):
        store.publish(make_message(), [subscription.id], T0)
    checkpointer = store._checkpointer
    assert checkpointer is not None
    deadline = time.monotonic() + 10
    while checkpointer.runs == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    store.close()
    return checkpointer.runs


def test_the_checkpoint_thread_finds_a_relative_path_after_a_change_of_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon that changes directory after opening ``webhooks.db`` keeps checkpointing
    that file, and no empty database appears in the new directory."""
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    store = SQLiteStore("webhooks.db")
    monkeypatch.chdir(tmp_path / "second")
    assert _commit_until_checkpointed_then_close(store) >= 1
    assert list((tmp_path / "second").iterdir()) == []


def test_the_checkpoint_thread_opens_a_path_with_uri_characters(tmp_path: Path) -> None:
    directory = tmp_path / "a b#c?d%20e"
    directory.mkdir()
    store = SQLiteStore(directory / "hooks.db")
    assert _commit_until_checkpointed_then_close(store) >= 1
    assert sorted(p.name for p in directory.iterdir()) == ["hooks.db"]


def test_an_in_memory_store_has_no_checkpoint_thread() -> None:
    store = SQLiteStore(":memory:")
    try:
        assert store._checkpointer is None
    finally:
        store.close()


def test_finished_deliveries_lose_their_due_time(db_path: Path) -> None:
    """However a record is built, a final delivery is stored without a due time, and an
    unfinished one with one (the ordered-deliveries index depends on both)."""
    store = SQLiteStore(db_path)
    subscription = make_subscription()
    store.add_subscription(subscription)
    store.publish(make_message(), [subscription.id], T0)
    store.publish(make_message(), [subscription.id], T0)
    held = claim(store)
    sloppy = retry_record(held[0], started=T0, retry_at=T0 + timedelta(hours=1))
    final = attrs.evolve(sloppy.delivery, status=DeliveryStatus.FAILED)  # keeps the time
    timeless = retry_record(held[1], started=T0, retry_at=T0)
    pending = attrs.evolve(timeless.delivery, next_attempt_at=None)
    store.record(
        [AttemptRecord(sloppy.attempt, final), AttemptRecord(timeless.attempt, pending)], "w1"
    )
    assert store.get_delivery(held[0].delivery.id).next_attempt_at is None
    assert store.get_delivery(held[1].delivery.id).next_attempt_at == T0
    assert [c.delivery.id for c in claim(store, T0 + timedelta(minutes=10))] == [
        held[1].delivery.id
    ]
    store.close()


def test_newer_schema_is_refused_and_left_untouched(db_path: Path) -> None:
    SQLiteStore(db_path).close()
    connection = sqlite3.connect(db_path)
    with connection:
        connection.execute(
            "UPDATE webhook_dispatch_meta SET value = ? WHERE key = 'schema_version'",
            (SCHEMA_VERSION + 1,),
        )
    connection.close()
    before = db_path.read_bytes()

    with pytest.raises(SchemaError) as caught:
        SQLiteStore(db_path)
    text = str(caught.value)
    assert str(db_path) in text
    assert str(SCHEMA_VERSION + 1) in text
    assert str(SCHEMA_VERSION) in text
    assert caught.value.path == str(db_path)  # type: ignore[attr-defined]
    assert db_path.read_bytes() == before


@pytest.mark.parametrize(
    "content",
    [os.urandom(4096), b"just some notes\n" * 300],
    ids=["random-bytes", "text-file"],
)
def test_not_a_database_is_refused_and_left_untouched(db_path: Path, content: bytes) -> None:
    db_path.write_bytes(content)
    with pytest.raises(SchemaError) as caught:
        open_store(f"sqlite:///{db_path}")
    assert str(db_path) in str(caught.value)
    assert db_path.read_bytes() == content


def test_foreign_database_is_refused_and_left_untouched(db_path: Path) -> None:
    connection = sqlite3.connect(db_path)
    with connection:
        connection.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        connection.execute("INSERT INTO customers (name) VALUES ('ada')")
    connection.close()
    before = db_path.read_bytes()
    with pytest.raises(SchemaError) as caught:
        SQLiteStore(db_path)
    assert str(db_path) in str(caught.value)
    assert "customers" in str(caught.value)
    assert db_path.read_bytes() == before


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite:///w.db?mode=ro",
        "sqlite:///w.db#frag",
        "sqlite://host/w.db",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidStoreURL):
        open_store(url)


def test_missing_directory_is_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "w.db"
    with pytest.raises(InvalidStoreURL) as caught:
        open_store(f"sqlite:///{path}")
    assert str(path) in str(caught.value)
    assert not path.parent.exists()


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidStoreURL):
        SQLiteStore(tmp_path)


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions and no root"
)
def test_unreadable_file_is_refused(db_path: Path) -> None:
    SQLiteStore(db_path).close()
    db_path.chmod(0)
    try:
        with pytest.raises(InvalidStoreURL) as caught:
            SQLiteStore(db_path)
        assert str(db_path) in str(caught.value)
    finally:
        db_path.chmod(0o600)


def test_relative_url_and_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///relative.db")
    assert isinstance(store, SQLiteStore)
    assert store.path == "relative.db"
    store.close()
    assert (tmp_path / "relative.db").exists()

    memory = open_store("sqlite:///:memory:")
    subscription = make_subscription()
    memory.add_subscription(subscription)
    assert memory.list_subscriptions() == [subscription]
    memory.close()


def test_locked_database_raises_unavailable_and_stores_nothing(db_path: Path) -> None:
    store = SQLiteStore(db_path, busy_timeout=0.05)
    subscription = make_subscription()
    store.add_subscription(subscription)
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    message = make_message()
    try:
        with pytest.raises(StoreUnavailable) as caught:
            store.publish(message, [subscription.id], T0)
        assert str(db_path) in str(caught.value)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.list_messages() == []
    assert store.list_deliveries() == []
    assert store.publish(message, [subscription.id], T0).created  # usable again
    store.close()


def test_closed_store_raises_store_error(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    store.close()
    with pytest.raises(StoreError):
        store.list_subscriptions()


def test_one_key_from_two_threads_makes_one_message(db_path: Path) -> None:
    setup = SQLiteStore(db_path)
    subscription = make_subscription()
    setup.add_subscription(subscription)
    stores = [SQLiteStore(db_path), SQLiteStore(db_path)]  # two connections
    barrier = threading.Barrier(len(stores))
    created: list[bool] = []
    ids: list[str] = []

    def publish(store: SQLiteStore) -> None:
        barrier.wait(timeout=10)
        for _ in range(20):
            result = store.publish(make_message("same-key"), [subscription.id], T0)
            created.append(result.created)
            ids.append(result.message.id)

    threads = [threading.Thread(target=publish, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert created.count(True) == 1
    assert len(set(ids)) == 1
    assert len(setup.list_messages()) == 1
    assert len(setup.list_deliveries()) == 1
    for store in [setup, *stores]:
        store.close()


def _publish_in_process(path: str, subscription_id: str, start: Any, results: Any) -> None:
    store = SQLiteStore(path)
    try:
        start.wait(timeout=30)
        outcome = []
        for _ in range(20):
            result = store.publish(make_message("same-key"), [subscription_id], T0)
            outcome.append((result.created, result.message.id))
        results.put(outcome)
    finally:
        store.close()


def _claim_in_process(path: str, worker_id: str, start: Any, results: Any) -> None:
    store = SQLiteStore(path)
    try:
        start.wait(timeout=30)
        taken: list[str] = []
        while batch := claim(store, T0, limit=7, worker=worker_id):
            taken.extend(c.delivery.id for c in batch)
        results.put(taken)
    finally:
        store.close()


def _run_processes(target: Any, arguments: list[tuple[Any, ...]]) -> list[Any]:
    start = _MP.Event()
    results = _MP.Queue()
    processes = [
        _MP.Process(target=target, args=(*args, start, results), daemon=True) for args in arguments
    ]
    for process in processes:
        process.start()
    start.set()
    try:
        collected = [results.get(timeout=_PROCESS_TIMEOUT) for _ in processes]
    except queue.Empty:
        pytest.fail("a worker process did not report in time")
    finally:
        for process in processes:
            process.join(timeout=_PROCESS_TIMEOUT)
            if process.is_alive():
                process.kill()
    assert all(process.exitcode == 0 for process in processes)
    return collected


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "emscripten", reason="no processes")
def test_one_key_from_two_processes_makes_one_message(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    subscription = make_subscription()
    store.add_subscription(subscription)
    outcomes = _run_processes(
        _publish_in_process, [(str(db_path), subscription.id), (str(db_path), subscription.id)]
    )
    flat = [item for outcome in outcomes for item in outcome]
    assert [created for created, _ in flat].count(True) == 1
    assert len({message_id for _, message_id in flat}) == 1
    assert len(store.list_messages()) == 1
    assert len(store.list_deliveries()) == 1
    store.close()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "emscripten", reason="no processes")
def test_two_processes_never_claim_the_same_delivery(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    subscriptions = [make_subscription() for _ in range(5)]
    for subscription in subscriptions:
        store.add_subscription(subscription)
    items = [(make_message(), [s.id for s in subscriptions]) for _ in range(100)]
    store.publish_many(items, T0)
    every = {d.id for d in store.list_deliveries(limit=MAX_PAGE_SIZE)}
    assert len(every) == 500

    first, second = _run_processes(
        _claim_in_process, [(str(db_path), "worker-a"), (str(db_path), "worker-b")]
    )
    assert not set(first) & set(second)
    assert len(first) + len(second) == 500
    assert set(first) | set(second) == every
    assert len(store.list_deliveries(status=DeliveryStatus.DELIVERING, limit=1000)) == 500
    store.close()


def test_claims_see_subscription_changes_at_once(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    try:
        subscription = make_subscription()
        store.add_subscription(subscription)
        store.publish_many([(make_message(), [subscription.id]) for _ in range(2)], T0)
        [first] = claim(store, limit=1)
        assert first.subscription == subscription
        rotated = attrs.evolve(subscription, secret="whsec_" + "B" * 32)
        store.save_subscription(rotated)  # same updated_at: decoded subscriptions are
        [second] = claim(store, limit=1)  # reused only while their whole row is unchanged
        assert second.subscription == rotated
    finally:
        store.close()


def test_the_wal_stays_near_its_bound_under_eight_publishing_threads(tmp_path: Path) -> None:
    """8 threads x 500 publishes, one Dispatcher each, while another process's store
    keeps the file open: the WAL once grew past 190 MB and kept that size (no
    journal_size_limit, checkpoints never resetting it under readers)."""
    import webhook_dispatch as wd
    from webhook_dispatch.stores.sqlite import WAL_SIZE_LIMIT
    from webhook_dispatch.testing import MockReceiver

    path = tmp_path / "webhooks.db"
    url = f"sqlite:///{path}"
    wal = Path(f"{path}-wal")
    with wd.Dispatcher(url, transport=MockReceiver()) as setup:
        for n in range(3):
            setup.subscribe(f"https://example.com/hook{n}")
    bystander = SQLiteStore(path)  # an idle worker's store: the WAL is never removed

    def publish_some() -> None:
        with wd.Dispatcher(url, transport=MockReceiver()) as dispatcher:
            for n in range(500):
                dispatcher.publish("order.created", {"n": n, "pad": "x" * 2000})

    try:
        threads = [threading.Thread(target=publish_some) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert bystander.stats(datetime.now(timezone.utc)).pending == 8 * 500 * 3
        # Once the publishers are gone, the WAL left for the open store is small.
        assert wal.stat().st_size <= WAL_SIZE_LIMIT
        limit = bystander._rows("PRAGMA journal_size_limit")[0][0]
        assert limit == WAL_SIZE_LIMIT
    finally:
        bystander.close()


def _claim_steps(path: Path, backlog: int, tenant: str | None) -> int:
    """SQLite VM instructions (in hundreds) one claim of 20 takes with ``backlog``
    messages to 50 subscriptions pending, some deliveries already leased."""
    store = SQLiteStore(path)
    try:
        ids = []
        for _ in range(50):
            sub = make_subscription(tenant=tenant)
            store.add_subscription(sub)
            ids.append(sub.id)
        store.publish_many([(make_message(tenant=tenant), ids) for _ in range(backlog)], T0)
        claim(store, limit=30)  # leases held, none expired
        steps, got = _vm_steps(store, lambda: claim(store, limit=20, worker="w2"))
        assert len(got) == 20
        return steps
    finally:
        store.close()


def _vm_steps(store: SQLiteStore, call: Any) -> tuple[int, Any]:
    """SQLite VM instructions (in hundreds) ``call()`` takes, and what it returned."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    connection = store._open_connection()
    connection.set_progress_handler(count, 100)
    try:
        result = call()
    finally:
        connection.set_progress_handler(None, 0)
    return steps, result


@pytest.mark.parametrize("tenant", [None, "acme"])
def test_a_claims_work_does_not_grow_with_the_backlog(tmp_path: Path, tenant: str | None) -> None:
    """Counted in SQLite VM instructions, not time: every statement of a claim walks an
    index to the rows it takes (a planner choice that scans every delivery fails this)."""
    small = _claim_steps(tmp_path / "small.db", 10, tenant)
    large = _claim_steps(tmp_path / "large.db", 200, tenant)
    assert large < 2 * small, (small, large)


def _capped_claim_steps(path: Path, backlog: int) -> int:
    """VM instructions (in hundreds) of a claim when one subscription with ``backlog``
    due deliveries is at its in-flight cap and its sibling has one new delivery."""
    store = SQLiteStore(path)
    try:
        busy, idle = make_subscription(), make_subscription()
        store.add_subscription(busy)
        store.add_subscription(idle)
        store.publish_many([(make_message(), [busy.id]) for _ in range(backlog)], T0)
        store.publish(make_message(), [idle.id], T0 + timedelta(seconds=1))
        now = T0 + timedelta(seconds=2)
        lease = now + timedelta(minutes=5)
        held = store.claim_due(now, limit=4, lease_until=lease, worker_id="w1")
        assert {c.subscription.id for c in held} == {busy.id, idle.id}
        # The busy one is at its cap of 3, the idle one has nothing left: no row is due
        # for this claim, however long the busy one's backlog.
        steps, got = _vm_steps(
            store,
            lambda: store.claim_due(
                now, limit=10, lease_until=lease, worker_id="w2", default_max_in_flight=3
            ),
        )
        assert got == []
        return steps
    finally:
        store.close()


def test_a_subscription_at_its_cap_is_not_walked(tmp_path: Path) -> None:
    """A busy endpoint at its in-flight cap costs a claim the same whatever its backlog:
    claims walk each subscription's own due deliveries, never past another's."""
    small = _capped_claim_steps(tmp_path / "small.db", 20)
    large = _capped_claim_steps(tmp_path / "large.db", 4000)
    assert large < 2 * small, (small, large)


@pytest.mark.parametrize("name", ["file:shop.db", "file:shop.db?mode=memory", "x?mode=ro#y"])
def test_a_path_spelled_like_a_uri_is_a_file_of_that_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """SQLite reads ``file:...`` as a URI when asked to: the store never asks with a path
    of yours, so the database (holding secrets) is that file, owner-only, and no other."""
    monkeypatch.chdir(tmp_path)
    store = SQLiteStore(name)
    try:
        store.add_subscription(make_subscription())
    finally:
        store.close()
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    assert {p.name for p in tmp_path.iterdir()} <= {name, f"{name}-wal", f"{name}-shm"}
    reopened = SQLiteStore(tmp_path / name)
    try:
        assert len(reopened.list_subscriptions()) == 1
    finally:
        reopened.close()


def test_a_path_with_a_nul_is_refused_with_a_store_error(tmp_path: Path) -> None:
    import webhook_dispatch as wd

    with pytest.raises(InvalidStoreURL, match="NUL"):
        SQLiteStore(f"{tmp_path}/a\x00b.db")
    with pytest.raises(InvalidStoreURL, match="NUL"):
        wd.Dispatcher(f"sqlite:///{tmp_path}/a\x00b.db")
    assert list(tmp_path.iterdir()) == []
