"""The PostgreSQL store beyond the shared suite: URLs and errors, migrations, the
transactional outbox, LISTEN/NOTIFY wake-ups, and worker processes that crash or see
the server restart.

Needs ``WEBHOOK_DISPATCH_TEST_POSTGRES`` (see ``conftest.py``); the URL checks that need
no server run everywhere psycopg is installed.
"""

from __future__ import annotations

import collections
import inspect
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest

import webhook_dispatch as wd
from webhook_dispatch._receiver import LoopbackReceiver
from webhook_dispatch.models import new_id
from webhook_dispatch.stores import open_store
from webhook_dispatch.testing import MockReceiver

psycopg = pytest.importorskip("psycopg")

from webhook_dispatch.stores.postgres import (  # noqa: E402
    DEFAULT_SCHEMA,
    SCHEMA_VERSION,
    PostgresStore,
)

if TYPE_CHECKING:
    from conftest import Processes

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def loopback_options() -> dict[str, Any]:
    """Dispatcher options opening the network guard to loopback receivers, where this
    version has a guard (the worker processes below run this function's source too)."""
    import inspect

    import webhook_dispatch as wd

    if "allow_private_networks" in inspect.signature(wd.Dispatcher).parameters:
        return {"allow_private_networks": True}
    try:  # a guard in the transport, before the Dispatcher option exists
        from webhook_dispatch.netguard import NetworkPolicy
        from webhook_dispatch.transport import HTTPTransport

        policy = NetworkPolicy(allow_private_networks=True)
        return {"transport": HTTPTransport(network_policy=policy)}
    except (ImportError, TypeError):
        return {}


LOOPBACK_OPTIONS = "from typing import Any\n" + textwrap.dedent(inspect.getsource(loopback_options))


def _sql(dsn: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        cursor = connection.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


# -- the pool's connection check (no server needed) ---------------------------------
def test_the_pool_checks_only_connections_idle_for_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection back in the pool within CHECK_IDLE_AFTER is used unchecked (a
    publish takes two: two round trips saved); one idle longer, or never seen, is."""
    import psycopg_pool

    from webhook_dispatch.stores import postgres

    checked: list[object] = []
    monkeypatch.setattr(psycopg_pool.ConnectionPool, "check_connection", checked.append)
    clock = [100.0]
    monkeypatch.setattr(postgres.time, "monotonic", lambda: clock[0])

    class FakeConnection:
        pass

    recency, connection = postgres._Recency(), FakeConnection()
    recency.check(connection)  # type: ignore[arg-type]
    assert checked == [connection]  # never returned: checked
    recency.returned(connection)  # type: ignore[arg-type]
    clock[0] += postgres.CHECK_IDLE_AFTER / 2
    recency.check(connection)  # type: ignore[arg-type]
    assert checked == [connection]
    clock[0] += postgres.CHECK_IDLE_AFTER
    recency.check(connection)  # type: ignore[arg-type]
    assert checked == [connection, connection]


# -- URLs and errors (no server needed) -------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "postgresql://h:notaport/db",
        "postgresql://h/db?nonsense=1",
        "postgresql://[::1/db",
        "postgresql://h/db?schema=Bad-Name",
        "postgresql://h/db?schema=pg_catalog",
        "postgresql://h/db?schema=1abc",
        "postgresql://h/db?schema=" + "a" * 49,
        "postgresql://h/db?schema=a&schema=b",
    ],
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(wd.InvalidStoreURL):
        open_store(url)


def test_unreachable_server_is_unavailable_and_hides_the_password() -> None:
    started = time.monotonic()
    with pytest.raises(wd.StoreUnavailable) as caught:
        open_store("postgres://someone:sekrit-pw@127.0.0.1:1/db?connect_timeout=2")
    text = str(caught.value)
    assert "127.0.0.1:1" in text
    assert "sekrit-pw" not in text
    assert "sekrit-pw" not in repr(caught.value.__cause__ or "")
    assert time.monotonic() - started < 10


# -- opening, schema and migrations ----------------------------------------------------
@pytest.mark.postgres
def test_schema_tables_indexes_and_repr(postgres_dsn: str, postgres_schema: str) -> None:
    password_url = postgres_dsn.replace("postgresql://postgres@", "postgresql://postgres:pw@")
    store = open_store(f"{password_url}?schema={postgres_schema}")
    try:
        assert isinstance(store, PostgresStore)
        assert store.schema == postgres_schema
        assert "pw@" not in repr(store) and ":pw" not in repr(store)
        assert postgres_schema in repr(store)
    finally:
        store.close()
    tables = {
        row[0]
        for row in _sql(
            postgres_dsn,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (postgres_schema,),
        )
    }
    assert tables == {
        "webhook_dispatch_meta",
        "subscriptions",
        "messages",
        "deliveries",
        "attempts",
        "tenants",
        "subscription_changes",
        "event_types",
        "settings",
    }
    [(kind, default)] = _sql(
        postgres_dsn,
        "SELECT data_type, column_default FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = 'subscriptions' AND column_name = 'options'",
        (postgres_schema,),
    )
    assert kind == "jsonb" and default.startswith("'{}'")
    indexes = dict(
        _sql(
            postgres_dsn,
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s",
            (postgres_schema,),
        )
    )
    assert "WHERE (status = 'pending'::text)" in indexes["deliveries_due"]
    assert "WHERE (status = 'delivering'::text)" in indexes["deliveries_lease"]
    assert "(tenant, next_attempt_at, seq)" in indexes["deliveries_tenant_due"]
    assert "UNIQUE" in indexes["messages_idempotency"]
    [(version,)] = _sql(
        postgres_dsn,
        f"SELECT value FROM {postgres_schema}.webhook_dispatch_meta WHERE key = 'schema_version'",
    )
    assert version == SCHEMA_VERSION


@pytest.mark.postgres
def test_version_2_schema_is_migrated_and_ordered_claims_still_work(
    postgres_dsn: str, postgres_url: str, postgres_schema: str
) -> None:
    """Version 3 gives PostgreSQL SQLite's ``ordered`` column and index: a version-2
    schema with an ordered subscription's open deliveries is migrated in place, and
    only the head of that subscription is claimed."""
    with wd.Dispatcher(postgres_url, transport=MockReceiver([200])) as dispatcher:
        ordered = dispatcher.subscribe("https://example.com/ordered", ordered=True)
        first = dispatcher.publish("order.created", {"n": 1})
        second = dispatcher.publish("order.created", {"n": 2})
    schema = postgres_schema
    undo_version_5(postgres_dsn, schema)
    _sql(postgres_dsn, f"DROP INDEX {schema}.deliveries_ordered")
    _sql(postgres_dsn, f"ALTER TABLE {schema}.deliveries DROP COLUMN ordered")
    _sql(
        postgres_dsn,
        f"CREATE INDEX deliveries_unfinished ON {schema}.deliveries (subscription_id, seq) "
        "WHERE status IN ('pending', 'delivering')",
    )
    _sql(
        postgres_dsn,
        f"CREATE INDEX attempts_message ON {schema}.attempts (message_id, started_at, number)",
    )
    _sql(
        postgres_dsn,
        f"UPDATE {schema}.webhook_dispatch_meta SET value = 2 WHERE key = 'schema_version'",
    )
    store = open_store(postgres_url)
    try:
        claims = store.claim_due(
            datetime.now(timezone.utc) + timedelta(seconds=1),
            limit=10,
            lease_until=datetime.now(timezone.utc) + timedelta(minutes=1),
            worker_id="w1",
        )
        assert [c.delivery.message_id for c in claims] == [first.id]
        assert claims[0].subscription.id == ordered.id
        assert second.id not in {c.delivery.message_id for c in claims}
    finally:
        store.close()
    [(version,)] = _sql(
        postgres_dsn,
        f"SELECT value FROM {schema}.webhook_dispatch_meta WHERE key = 'schema_version'",
    )
    indexes = {
        row[0]
        for row in _sql(
            postgres_dsn, "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,)
        )
    }
    assert version == SCHEMA_VERSION == 7
    assert "deliveries_ordered" in indexes and "deliveries_unfinished" not in indexes
    assert "attempts_message" not in indexes
    assert "deliveries_subscription_due" in indexes  # version 6


def undo_version_7(dsn: str, schema: str) -> None:
    """Put a current schema back in its version-6 shape: no routing columns, no catalog."""
    _sql(dsn, f"ALTER TABLE {schema}.subscriptions DROP COLUMN filter")
    _sql(dsn, f"ALTER TABLE {schema}.subscriptions DROP COLUMN key")
    _sql(dsn, f"ALTER TABLE {schema}.messages DROP COLUMN headers")
    _sql(dsn, f"ALTER TABLE {schema}.messages DROP COLUMN test")
    _sql(dsn, f"ALTER TABLE {schema}.attempts DROP COLUMN request_headers")
    _sql(dsn, f"DROP TABLE {schema}.event_types")
    _sql(dsn, f"DROP TABLE {schema}.settings")
    _sql(dsn, f"UPDATE {schema}.webhook_dispatch_meta SET value = 6 WHERE key = 'schema_version'")


def undo_version_5(dsn: str, schema: str) -> None:
    """Put a current schema back in its version-4 shape: no tenants."""
    undo_version_7(dsn, schema)
    for table in ("subscriptions", "messages", "deliveries"):
        _sql(dsn, f"ALTER TABLE {schema}.{table} DROP COLUMN tenant")
    _sql(
        dsn,
        f"ALTER TABLE {schema}.messages ADD CONSTRAINT messages_idempotency_key_key "
        "UNIQUE (idempotency_key)",
    )
    _sql(dsn, f"DROP TABLE {schema}.tenants")
    _sql(dsn, f"DROP TABLE {schema}.subscription_changes")
    _sql(dsn, f"UPDATE {schema}.webhook_dispatch_meta SET value = 4 WHERE key = 'schema_version'")


def test_version_4_schema_keeps_working_untenanted(
    postgres_url: str, postgres_dsn: str, postgres_schema: str
) -> None:
    """A version-4 schema's rows become untenanted; keys become unique per tenant."""
    with wd.Dispatcher(postgres_url, transport=MockReceiver([200])) as dispatcher:
        subscription = dispatcher.subscribe("https://example.com/hook")
        keyed = dispatcher.publish("order.created", {"n": 1}, idempotency_key="k1")
    undo_version_5(postgres_dsn, postgres_schema)
    with wd.Dispatcher(postgres_url, transport=MockReceiver([200])) as dispatcher:
        assert dispatcher.get_subscription(subscription.id).tenant is None
        again = dispatcher.publish("order.created", {"n": 1}, idempotency_key="k1")
        assert again.id == keyed.id and again.tenant is None
        other = dispatcher.publish("order.created", {"n": 1}, idempotency_key="k1", tenant="a")
        assert other.id != keyed.id and other.tenant == "a"
        assert dispatcher.run_until_idle() == 1


def test_default_schema_name() -> None:
    # Checked without a server: a test must not create or drop a real default schema.
    assert DEFAULT_SCHEMA == "webhook_dispatch"
    assert inspect.signature(PostgresStore).parameters["schema"].default == DEFAULT_SCHEMA


@pytest.mark.postgres
def test_processes_starting_at_once_migrate_once(postgres_url: str, postgres_dsn: str) -> None:
    # Separate connections serialize on the advisory lock exactly as processes do.
    errors: list[BaseException] = []
    stores: list[PostgresStore] = []
    barrier = threading.Barrier(6)

    def open_one() -> None:
        barrier.wait()
        try:
            stores.append(PostgresStore.from_url(postgres_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert errors == []
    assert len(stores) == 6


@pytest.mark.postgres
def test_newer_schema_is_refused_naming_both_versions(postgres_url: str, postgres_dsn: str) -> None:
    schema = PostgresStore.from_url(postgres_url)
    schema.close()
    name = schema.schema
    _sql(
        postgres_dsn,
        f"UPDATE {name}.webhook_dispatch_meta SET value = 99 WHERE key = 'schema_version'",
    )
    with pytest.raises(wd.SchemaError) as caught:
        open_store(postgres_url)
    assert "99" in str(caught.value) and str(SCHEMA_VERSION) in str(caught.value)
    assert caught.value.found_version == 99  # type: ignore[attr-defined]
    [(version,)] = _sql(
        postgres_dsn, f"SELECT value FROM {name}.webhook_dispatch_meta WHERE key = 'schema_version'"
    )
    assert version == 99  # left untouched


@pytest.mark.postgres
def test_foreign_schema_is_refused(postgres_dsn: str, postgres_schema: str) -> None:
    _sql(postgres_dsn, f"CREATE SCHEMA {postgres_schema}")
    _sql(postgres_dsn, f"CREATE TABLE {postgres_schema}.orders (id int)")
    with pytest.raises(wd.SchemaError, match="orders"):
        PostgresStore(postgres_dsn, schema=postgres_schema)


@pytest.mark.postgres
def test_missing_privileges_raise_store_error_with_the_cause(
    postgres_dsn: str, postgres_schema: str
) -> None:
    role = f"{postgres_schema}_limited"
    _sql(postgres_dsn, f"CREATE ROLE {role} LOGIN")
    try:
        limited = psycopg.conninfo.make_conninfo(postgres_dsn, user=role)
        with pytest.raises(wd.StoreError, match="permission denied") as caught:
            PostgresStore(limited, schema=postgres_schema)
        assert not isinstance(caught.value, wd.StoreUnavailable)
        assert caught.value.cause == "privilege"  # type: ignore[attr-defined]
    finally:
        _sql(postgres_dsn, f"DROP ROLE {role}")


@pytest.mark.postgres
def test_closed_store_raises_store_error(postgres_url: str) -> None:
    store = open_store(postgres_url)
    store.close()
    with pytest.raises(wd.StoreError, match="closed"):
        store.list_subscriptions()


# -- concurrency inside the database -----------------------------------------------------
@pytest.mark.postgres
def test_concurrent_claims_never_share_a_delivery(postgres_url: str) -> None:
    stores = [PostgresStore.from_url(postgres_url) for _ in range(4)]
    try:
        subscription = _subscription()
        stores[0].add_subscription(subscription)
        stores[0].publish_many([(_message(), [subscription.id]) for _ in range(400)], T0)
        claimed: dict[str, list[str]] = collections.defaultdict(list)

        def drain(store: PostgresStore, worker: str) -> None:
            while batch := store.claim_due(
                T0, limit=7, lease_until=T0 + timedelta(minutes=1), worker_id=worker
            ):
                claimed[worker].extend(c.delivery.id for c in batch)

        threads = [
            threading.Thread(target=drain, args=(store, f"w{n}")) for n, store in enumerate(stores)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        every = [delivery for ids in claimed.values() for delivery in ids]
        assert len(every) == len(set(every)) == 400
        assert sum(1 for ids in claimed.values() if ids) > 1, "only one worker got any"
    finally:
        for store in stores:
            store.close()


@pytest.mark.postgres
def test_one_idempotency_key_from_many_threads_makes_one_message(postgres_url: str) -> None:
    store = PostgresStore.from_url(postgres_url)
    try:
        subscription = _subscription()
        store.add_subscription(subscription)
        barrier = threading.Barrier(6)
        results: list[wd.Message] = []

        def publish() -> None:
            barrier.wait()
            results.append(store.publish(_message("same-key"), [subscription.id], T0).message)

        threads = [threading.Thread(target=publish) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len({m.id for m in results}) == 1
        assert len(store.list_deliveries()) == 1
    finally:
        store.close()


# -- the transactional outbox -------------------------------------------------------------
@pytest.mark.postgres
def test_outbox_rollback_sends_nothing_and_commit_delivers(
    postgres_url: str, postgres_dsn: str, loopback: LoopbackReceiver
) -> None:
    with wd.Dispatcher(postgres_url, **loopback_options()) as dispatcher:
        dispatcher.subscribe(loopback.route("/outbox", [200]))
        with psycopg.connect(postgres_dsn) as connection:
            connection.execute("CREATE TEMP TABLE orders (id int)")
            connection.commit()
            # An implicit transaction (psycopg's default), rolled back: nothing happened.
            connection.execute("INSERT INTO orders VALUES (1)")
            dispatcher.publish("order.created", {"id": 1}, connection=connection)
            connection.rollback()
            # An explicit transaction block, committed on leaving it.
            with connection.transaction():
                connection.execute("INSERT INTO orders VALUES (2)")
                committed = dispatcher.publish("order.created", {"id": 2}, connection=connection)
                assert dispatcher.deliveries(message_id=committed.id) == []  # not yet visible
            assert len(dispatcher.deliveries(message_id=committed.id)) == 1
        dispatcher.run_until_idle()
        received = loopback.requests_to("/outbox")
        assert [r.webhook_id for r in received] == [committed.id]
        assert len(dispatcher.messages()) == 1


@pytest.mark.postgres
async def test_outbox_with_an_async_connection(
    postgres_url: str, postgres_dsn: str, loopback: LoopbackReceiver
) -> None:
    async with wd.AsyncDispatcher(postgres_url, **loopback_options()) as dispatcher:
        await dispatcher.subscribe(loopback.route("/async", [200]))
        async with await psycopg.AsyncConnection.connect(postgres_dsn) as connection:
            async with connection.transaction():
                await dispatcher.publish("order.created", {"id": 1}, connection=connection)
                await dispatcher.publish_many([("order.created", {"id": 2})], connection=connection)
                await connection.execute("SELECT 1")
            await dispatcher.publish("order.created", {"id": 3}, connection=connection)
            await connection.rollback()
        await dispatcher.run_until_idle()
        bodies = sorted(r.body for r in loopback.requests_to("/async"))
        assert len(bodies) == 2
        assert all(b'"id":3' not in body for body in bodies)


@pytest.mark.postgres
def test_outbox_misuse_is_refused(postgres_url: str, postgres_dsn: str) -> None:
    with (
        wd.Dispatcher(postgres_url) as dispatcher,
        psycopg.connect(postgres_dsn, autocommit=True) as connection,
    ):
        with pytest.raises(wd.ConfigurationError, match="open transaction"):
            dispatcher.publish("order.created", {}, connection=connection)
        with pytest.raises(wd.ConfigurationError, match="psycopg"):
            dispatcher.publish("order.created", {}, connection=object())
    with (
        wd.Dispatcher("memory://") as memory,
        pytest.raises(wd.ConfigurationError, match="PostgreSQL"),
    ):
        memory.publish("order.created", {}, connection=connection)


# -- worker processes ----------------------------------------------------------------------
WORKER_CONCURRENCY = 16

# A worker process: drains the store and exits once nothing is pending or in flight,
# riding out store errors (the server may be restarting). It has no deadline of its own:
# the test waits while deliveries progress, and kills it at teardown.
WORKER = textwrap.dedent(
    """
    import sys, time
    from datetime import timedelta
    import webhook_dispatch as wd

    store, lease, concurrency = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    with wd.Dispatcher(store, lease=timedelta(seconds=lease), concurrency=concurrency,
                       poll_interval=0.2, **loopback_options()) as d:
        while True:
            try:
                d.run_until_idle()
                if not d.deliveries(status="pending") and not d.deliveries(status="delivering"):
                    break
            except wd.StoreError as exc:
                print("store error:", exc, flush=True)
            time.sleep(0.05)
    """
)


def start_worker(processes: Processes, store: str, lease: float) -> subprocess.Popen[bytes]:
    return processes.start(
        [
            sys.executable,
            "-c",
            LOOPBACK_OPTIONS + WORKER,
            store,
            str(lease),
            str(WORKER_CONCURRENCY),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def drain(
    processes: Processes, workers: list[subprocess.Popen[bytes]], receiver: LoopbackReceiver
) -> list[str]:
    """Wait for each worker to exit (status 0) while deliveries keep arriving; their
    outputs."""
    return [processes.finish(worker, progress=lambda: len(receiver.received)) for worker in workers]


@pytest.fixture
def receiver() -> Iterator[LoopbackReceiver]:
    with LoopbackReceiver(delay=0.001) as instance:
        yield instance


def publish(store: str, url: str, secret: str, count: int) -> list[str]:
    """``count`` messages to one subscription that every worker can work on at once (the
    default in-flight cap, a quarter of one worker's concurrency, would make the workers
    take turns)."""
    with wd.Dispatcher(store, **loopback_options()) as dispatcher:
        dispatcher.subscribe(url, secret=secret, max_in_flight=3 * WORKER_CONCURRENCY)
        messages = dispatcher.publish_many(("order.created", {"n": n}) for n in range(count))
    return [m.id for m in messages]


def wait_for(condition: Any, timeout: float, what: str) -> None:
    """Poll ``condition``; ``timeout`` is a safety net against a hang, not a budget."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.mark.postgres
@pytest.mark.slow
def test_three_workers_5000_messages_one_killed_nothing_lost_nothing_doubled(
    postgres_url: str,
    postgres_dsn: str,
    postgres_schema: str,
    receiver: LoopbackReceiver,
    processes: Processes,
) -> None:
    secret = wd.generate_secret()
    ids = publish(postgres_url, receiver.route("/hooks", [200], secret=secret), secret, 5000)

    workers = [start_worker(processes, postgres_url, lease=5.0) for _ in range(3)]
    victim = workers[0]
    processes.wait_while_progressing(
        lambda: len(receiver.received) >= 1500, lambda: len(receiver.received), "1500 deliveries"
    )
    assert victim.poll() is None, "the victim finished before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)
    # What the dead worker held: leased, maybe sent, never recorded.
    in_flight = {
        row[0]
        for row in _sql(
            postgres_dsn,
            f"SELECT message_id FROM {postgres_schema}.deliveries "
            "WHERE status = 'delivering' AND lease_owner LIKE %s",
            (f"%:{victim.pid}:%",),
        )
    }
    received_at_kill = len(receiver.received)
    assert received_at_kill < 5000
    drain(processes, workers[1:], receiver)

    counts = collections.Counter(r.webhook_id for r in receiver.received)
    assert set(counts) == set(ids), "every message arrived"
    duplicates = {message_id for message_id, n in counts.items() if n > 1}
    print(f"victim held {len(in_flight)} at the kill; sent twice: {len(duplicates)}")
    assert duplicates <= in_flight, "only deliveries the killed worker held were sent twice"
    assert max(counts.values()) <= 2
    assert all(r.verified for r in receiver.received)
    statuses = _sql(
        postgres_dsn,
        f"SELECT status, count(*) FROM {postgres_schema}.deliveries GROUP BY status",
    )
    assert statuses == [("succeeded", 5000)]


def _local_cluster(dsn: str) -> tuple[str, str] | None:
    """The (version, name) of the pg_ctlcluster cluster listening on the DSN's port."""
    port = str(psycopg.conninfo.conninfo_to_dict(dsn).get("port") or 5432)
    listing = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, timeout=120
    )
    for line in listing.stdout.splitlines():
        version, name, cluster_port, *_ = [*line.split(), "", "", ""]
        if cluster_port == port:
            return version, name
    return None


def _can_restart_postgres(dsn: str) -> str | None:
    """Why the restart test cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "restarting PostgreSQL needs root"
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        return "restarting PostgreSQL needs pg_ctlcluster (Debian's postgresql-common)"
    host = psycopg.conninfo.conninfo_to_dict(dsn).get("host", "")
    if host not in ("127.0.0.1", "localhost", "::1", ""):
        return f"the test server ({host}) is not on this machine"
    if _local_cluster(dsn) is None:
        return "no pg_ctlcluster cluster listens on the test server's port"
    return None


def _restart_postgres(dsn: str) -> None:
    cluster = _local_cluster(dsn)
    assert cluster is not None
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "restart"],
        check=True,
        capture_output=True,
        timeout=300,  # a safety net: the restart waits for the server to stop and start
    )

    def up() -> bool:
        try:
            _sql(dsn, "SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    wait_for(up, 120, "PostgreSQL to come back")


@pytest.mark.postgres
@pytest.mark.slow
def test_database_restart_mid_run_loses_nothing(
    postgres_url: str,
    postgres_dsn: str,
    postgres_schema: str,
    receiver: LoopbackReceiver,
    processes: Processes,
) -> None:
    reason = _can_restart_postgres(postgres_dsn)
    if reason is not None:
        pytest.skip(reason)
    secret = wd.generate_secret()
    ids = publish(postgres_url, receiver.route("/hooks", [200], secret=secret), secret, 2000)
    workers = [start_worker(processes, postgres_url, lease=30.0) for _ in range(2)]
    processes.wait_while_progressing(
        lambda: len(receiver.received) >= 300, lambda: len(receiver.received), "300 deliveries"
    )
    [(started_before,)] = _sql(postgres_dsn, "SELECT pg_postmaster_start_time()")
    _restart_postgres(postgres_dsn)
    [(started_after,)] = _sql(postgres_dsn, "SELECT pg_postmaster_start_time()")
    assert started_after > started_before, "the server did not restart"
    received_at_restart = len(receiver.received)
    outputs = drain(processes, workers, receiver)
    assert any("failed" in output or "store error" in output for output in outputs), (
        "no worker noticed the restart"
    )

    counts = collections.Counter(r.webhook_id for r in receiver.received)
    print(f"received before the restart finished: {received_at_restart}")
    assert received_at_restart < 2000, "the run ended before the restart"
    assert set(counts) == set(ids), "every message arrived"
    statuses = _sql(
        postgres_dsn,
        f"SELECT status, count(*) FROM {postgres_schema}.deliveries GROUP BY status",
    )
    assert statuses == [("succeeded", 2000)], "nothing left pending or leased"


# Idle, a worker looks for work every POLL seconds: a delivery much sooner than that
# was woken by NOTIFY. It runs until the test's teardown kills it.
POLL = 300.0
LISTENER = textwrap.dedent(
    """
    import sys, time
    import webhook_dispatch as wd

    with wd.Dispatcher(sys.argv[1], poll_interval=float(sys.argv[2]), **loopback_options()) as d:
        d.start()
        while True:
            time.sleep(3600)
    """
)


@pytest.mark.postgres
@pytest.mark.slow
def test_idle_worker_in_another_process_wakes_on_notify(
    postgres_url: str, postgres_dsn: str, receiver: LoopbackReceiver, processes: Processes
) -> None:
    with wd.Dispatcher(postgres_url, **loopback_options()) as publisher:
        publisher.subscribe(receiver.route("/wake", [200]))
        processes.start(
            [sys.executable, "-c", LOOPBACK_OPTIONS + LISTENER, postgres_url, str(POLL)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

        def listening() -> bool:
            rows = _sql(
                postgres_dsn,
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %%' "
                "AND application_name = 'webhook_dispatch' AND pid != pg_backend_pid()",
            )
            return bool(rows[0][0])

        wait_for(listening, 120, "the worker to LISTEN")
        time.sleep(1.0)  # let its first claims end: it is now in its long idle wait
        published_at = time.time()
        message = publisher.publish("order.created", {"id": 1})
        wait_for(lambda: receiver.requests_to("/wake"), POLL / 2, "the idle worker to deliver")
        latency = receiver.requests_to("/wake")[0].at - published_at
        print(f"publish -> received across processes: {latency * 1000:.0f} ms")
        assert receiver.requests_to("/wake")[0].webhook_id == message.id
        assert latency < POLL / 2, "woken by the poll, not by NOTIFY"


# -- builders -----------------------------------------------------------------------------
def _subscription() -> wd.Subscription:
    return wd.Subscription(
        id=new_id("sub"),
        url="https://example.com/hooks",
        secret="whsec_" + "A" * 32,
        created_at=T0,
        updated_at=T0,
    )


def _message(key: str | None = None) -> wd.Message:
    return wd.Message(
        id=new_id("msg"),
        event_type="order.created",
        payload=b"{}",
        created_at=T0,
        idempotency_key=key,
    )
