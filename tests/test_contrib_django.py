"""webhook_dispatch.contrib.django with a real Django, on SQLite and (with
``WEBHOOK_DISPATCH_TEST_POSTGRES``) PostgreSQL: publishing from views follows their
transactions, the worker command delivers to a real loopback receiver, settings errors
are clear.

On PostgreSQL the store lives in Django's own database and a publish inside ``atomic()``
is written on Django's psycopg connection (the outbox); so it is with a SQLite store in
the Django database's own file ("sqlite-outbox", on Django's sqlite3 connection); with a
SQLite store in another file it waits for ``transaction.on_commit``. Either way a view
that raises sends nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402

from webhook_dispatch._receiver import LoopbackReceiver  # noqa: E402

POSTGRES_ENV = "WEBHOOK_DISPATCH_TEST_POSTGRES"
_WORKDIR = tempfile.mkdtemp(prefix="wd_django_")
ORDERS = f"wd_orders_{uuid.uuid4().hex[:10]}"


def _database_settings() -> dict[str, Any]:
    databases: dict[str, Any] = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(_WORKDIR, "app.sqlite3"),
        }
    }
    dsn = os.environ.get(POSTGRES_ENV)
    if dsn:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(dsn)
        databases["postgres"] = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": params.get("dbname", ""),
            "USER": params.get("user", ""),
            "PASSWORD": params.get("password", ""),
            "HOST": params.get("host", ""),
            "PORT": params.get("port", ""),
        }
    return databases


if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="not-a-secret",
        ALLOWED_HOSTS=["testserver"],
        DATABASES=_database_settings(),
        INSTALLED_APPS=["webhook_dispatch.contrib.django"],
        MIDDLEWARE=[],
        ROOT_URLCONF=__name__,
        USE_TZ=True,
        LOGGING_CONFIG=None,
    )
    django.setup()

from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connections, transaction  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.urls import path  # noqa: E402

import webhook_dispatch as wd  # noqa: E402
from webhook_dispatch.contrib.django import (  # noqa: E402
    DjangoDispatcher,
    dispatcher,
    get_dispatcher,
    publish,
    publish_many,
    reset_dispatcher,
    store_url,
)

SECRET = wd.generate_secret()


# -- the application under test ----------------------------------------------------------
def create_order(request: HttpRequest) -> JsonResponse:
    """Insert an order and publish its event in one atomic block; ``?fail=1`` raises
    after both, as a view whose payment step fails would."""
    order_id = f"ord_{uuid.uuid4().hex[:8]}"
    alias = get_dispatcher().database
    with transaction.atomic(using=alias):
        with connections[alias].cursor() as cursor:
            cursor.execute(f"INSERT INTO {ORDERS} (id, total) VALUES (%s, %s)", [order_id, 42])
        message = dispatcher.publish("order.created", {"id": order_id})
        if request.GET.get("fail"):
            raise RuntimeError("payment declined")
    return JsonResponse({"order": order_id, "webhook_id": message.id})


urlpatterns = [path("orders", create_order)]


# -- fixtures -------------------------------------------------------------------------------
def _orders(alias: str) -> list[str]:
    with connections[alias].cursor() as cursor:
        cursor.execute(f"SELECT id FROM {ORDERS} ORDER BY id")
        return [row[0] for row in cursor.fetchall()]


@pytest.fixture(
    params=["sqlite", "sqlite-outbox", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """Settings for one database: on SQLite a SQLite store file next to it, or the
    Django database's own file; on PostgreSQL no STORE, so the store is Django's
    database (a fresh schema)."""
    options = {"allow_private_networks": True}
    if request.param == "sqlite":
        alias = "default"
        config: dict[str, Any] = {
            "STORE": f"sqlite:///{tmp_path / 'webhooks.db'}",
            "OPTIONS": options,
        }
    elif request.param == "sqlite-outbox":
        alias = "default"
        config = {"STORE": f"sqlite:///{_django_file(alias)}", "OPTIONS": options}
    else:
        request.getfixturevalue("postgres_dsn")  # skips, or fails when unreachable
        alias = "postgres"
        config = {
            "DATABASE": alias,
            "SCHEMA": request.getfixturevalue("postgres_schema"),
            "OPTIONS": options,
        }
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {ORDERS} (id varchar(40) PRIMARY KEY, total int)"
        )
        cursor.execute(f"DELETE FROM {ORDERS}")
    with override_settings(WEBHOOK_DISPATCH=config):
        yield alias
    reset_dispatcher()
    with connections[alias].cursor() as cursor:
        cursor.execute(f"DROP TABLE {ORDERS}")
    connections[alias].close()
    if request.param == "sqlite-outbox":  # the store's tables go with the file
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(_django_file(alias) + suffix)


def _django_file(alias: str) -> str:
    return str(connections[alias].settings_dict["NAME"])


@pytest.fixture
def receiver(backend: str, loopback: LoopbackReceiver) -> LoopbackReceiver:
    """The loopback receiver, subscribed to order events with SECRET."""
    url = loopback.route("/hooks", [200], secret=SECRET)
    get_dispatcher().subscribe(url, event_types=["order.*"], secret=SECRET)
    return loopback


def _deliver() -> str:
    """Run the management command once, as cron would; return what it printed."""
    import io

    out = io.StringIO()
    call_command("webhook_dispatch_worker", "--until-idle", stdout=out)
    return out.getvalue()


# -- views ----------------------------------------------------------------------------------
def test_a_view_publishes_and_the_worker_command_delivers(
    backend: str, receiver: LoopbackReceiver
) -> None:
    response = Client().post("/orders")
    assert response.status_code == 200
    body = response.json()

    assert "1 attempt(s) made" in _deliver()
    [request] = receiver.requests_to("/hooks")
    assert request.verified is True
    assert request.webhook_id == body["webhook_id"]
    assert json.loads(request.body)["data"] == {"id": body["order"]}
    assert _orders(backend) == [body["order"]]


def test_a_view_that_raises_inside_atomic_sends_nothing(
    backend: str, receiver: LoopbackReceiver
) -> None:
    response = Client(raise_request_exception=False).post("/orders?fail=1")
    assert response.status_code == 500

    assert "0 attempt(s) made" in _deliver()
    assert receiver.requests_to("/hooks") == []
    assert get_dispatcher().messages() == []
    assert _orders(backend) == []


# -- transactions, directly -----------------------------------------------------------------
def test_inside_atomic_the_event_exists_only_after_commit(
    backend: str, receiver: LoopbackReceiver
) -> None:
    current = get_dispatcher()
    with transaction.atomic(using=backend):
        message = publish("order.created", {"id": "ord_1"})
        # Another connection (the store's own) cannot see it before the commit.
        assert current.deliveries(message_id=message.id) == []
        if backend == "postgres":
            import psycopg

            raw = connections[backend].connection
            assert isinstance(raw, psycopg.Connection)  # Django's backend is psycopg 3
        if current.outbox:
            # The outbox: written inside Django's transaction, not deferred.
            assert transaction.get_connection(backend).run_on_commit == []
        else:
            assert len(transaction.get_connection(backend).run_on_commit) == 1
    [delivery] = current.deliveries(message_id=message.id)
    assert delivery.status == wd.DeliveryStatus.PENDING
    assert current.get_message(message.id).id == message.id


def _publish_then_fail(alias: str, *events: tuple[str, Any]) -> None:
    with transaction.atomic(using=alias):
        publish_many(events)
        raise RuntimeError("rolled back")


def test_a_rolled_back_block_leaves_nothing(backend: str, receiver: LoopbackReceiver) -> None:
    with pytest.raises(RuntimeError):
        _publish_then_fail(backend, ("order.created", {"id": "ord_1"}), ("order.paid", {}))
    assert get_dispatcher().messages() == []
    assert _deliver().startswith("webhook_dispatch_worker: 0 attempt")


def test_a_savepoint_rolled_back_drops_only_its_events(
    backend: str, receiver: LoopbackReceiver
) -> None:
    with transaction.atomic(using=backend):
        kept = publish("order.created", {"id": "ord_1"})
        with pytest.raises(RuntimeError):
            _publish_then_fail(backend, ("order.cancelled", {"id": "ord_1"}))
    assert [m.id for m in get_dispatcher().messages()] == [kept.id]


def test_outside_atomic_publish_is_immediate(backend: str, receiver: LoopbackReceiver) -> None:
    message = dispatcher.publish("order.created", {"id": "ord_1"})
    assert len(get_dispatcher().deliveries(message_id=message.id)) == 1
    assert len(publish_many([("order.paid", {"id": "ord_1"})])) == 1


def test_bad_input_is_refused_at_once_inside_atomic(
    backend: str, receiver: LoopbackReceiver
) -> None:
    with transaction.atomic(using=backend):
        with pytest.raises(wd.InvalidEventType):
            publish("not an event type", {})
        with pytest.raises(wd.InvalidPayload):
            publish("order.created", {"when": object()})
    assert get_dispatcher().messages() == []


def test_idempotency_key_inside_atomic(backend: str, receiver: LoopbackReceiver) -> None:
    for _ in range(2):
        with transaction.atomic(using=backend):
            publish("order.created", {"id": "ord_1"}, idempotency_key="ord_1:created")
    assert len(get_dispatcher().messages()) == 1
    _deliver()
    assert len(receiver.requests_to("/hooks")) == 1


# -- a SQLite store in the Django database's own file -----------------------------------------
@pytest.fixture
def shared_file(tmp_path: Any) -> Iterator[str]:
    """The Django database's file, holding one of Django's tables (the orders) before
    the store ever opens it; removed, with the store's tables, afterwards."""
    alias = "default"
    with connections[alias].cursor() as cursor:
        cursor.execute(f"CREATE TABLE {ORDERS} (id varchar(40) PRIMARY KEY, total int)")
    name = str(connections[alias].settings_dict["NAME"])
    yield name
    reset_dispatcher()
    connections[alias].close()
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(name + suffix)


def test_a_sqlite_store_in_the_django_file_writes_on_djangos_connection(
    shared_file: str, loopback: LoopbackReceiver
) -> None:
    url = loopback.route("/hooks", [200], secret=SECRET)
    config = {"STORE": f"sqlite:///{shared_file}", "OPTIONS": {"allow_private_networks": True}}
    with override_settings(WEBHOOK_DISPATCH=config):
        current = get_dispatcher()
        assert current.outbox is True
        current.subscribe(url, event_types=["order.*"], secret=SECRET)
        with transaction.atomic():
            with connections["default"].cursor() as cursor:
                cursor.execute(f"INSERT INTO {ORDERS} (id, total) VALUES (%s, %s)", ["o1", 1])
            message = publish("order.created", {"id": "o1"})
            assert transaction.get_connection().run_on_commit == []
            # Django's own sqlite3 connection holds it, uncommitted.
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT count(*) FROM messages WHERE id = %s", [message.id])
                assert cursor.fetchone() == (1,)
            assert current.deliveries(message_id=message.id) == []
        assert "1 attempt(s) made" in _deliver()
    assert [r.webhook_id for r in loopback.requests_to("/hooks")] == [message.id]


def test_outbox_false_keeps_on_commit_for_the_django_file(shared_file: str) -> None:
    with override_settings(WEBHOOK_DISPATCH={"STORE": f"sqlite:///{shared_file}", "OUTBOX": False}):
        current = get_dispatcher()
        current.subscribe("https://example.com/hooks")
        with transaction.atomic():
            message = publish("order.created", {})
            assert len(transaction.get_connection().run_on_commit) == 1
        assert len(current.deliveries(message_id=message.id)) == 1


def test_outbox_true_with_a_sqlite_store_in_another_file_is_refused_at_publish(
    tmp_path: Any,
) -> None:
    config = {"STORE": f"sqlite:///{tmp_path / 'elsewhere.db'}", "OUTBOX": True}
    with override_settings(WEBHOOK_DISPATCH=config):
        get_dispatcher().subscribe("https://example.com/hooks")
        with (
            transaction.atomic(),
            pytest.raises(wd.ConfigurationError, match="store's file"),
        ):
            publish("order.created", {})
        assert get_dispatcher().messages() == []
    reset_dispatcher()
    connections["default"].close()


def test_the_command_line_opens_the_shared_django_file_first(
    shared_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``manage.py webhook_dispatch`` before any publish: the file holds only Django's
    tables, and the command adds ours rather than refusing a foreign database."""
    with override_settings(WEBHOOK_DISPATCH={"STORE": f"sqlite:///{shared_file}"}):
        call_command("webhook_dispatch", "subscriptions", "add", "https://example.com/hooks")
        assert "whsec_" in capsys.readouterr().out
        assert [s.url for s in get_dispatcher().subscriptions()] == ["https://example.com/hooks"]


# -- configuration --------------------------------------------------------------------------
def test_the_lazy_dispatcher_follows_settings(tmp_path: Any) -> None:
    first = f"sqlite:///{tmp_path / 'a.db'}"
    second = f"sqlite:///{tmp_path / 'b.db'}"
    with override_settings(WEBHOOK_DISPATCH={"STORE": first}):
        assert store_url() == first
        assert isinstance(get_dispatcher(), DjangoDispatcher)
        assert dispatcher.subscriptions() == []
        built = get_dispatcher()
        assert "lazy" in repr(dispatcher)
        with override_settings(WEBHOOK_DISPATCH={"STORE": second}):
            assert get_dispatcher() is not built
            assert str(tmp_path / "b.db") in repr(get_dispatcher().store)
    reset_dispatcher()


def test_without_store_on_sqlite_the_default_is_a_sqlite_file() -> None:
    with override_settings(WEBHOOK_DISPATCH={}):
        assert store_url() == "sqlite:///webhooks.db"


@pytest.mark.parametrize(
    ("config", "complaint"),
    [
        ({"STORE": "sqlite:///x.db", "STOER": 1}, "unknown keys"),
        ({"STORE": "sqlite:///x.db", "OPTIONS": ["x"]}, "OPTIONS"),
        ({"STORE": "sqlite:///x.db", "OPTIONS": {"concurency": 4}}, "concurency"),
        ({"STORE": "sqlite:///x.db", "OPTIONS": {"concurrency": 0}}, "concurrency"),
        ({"STORE": "sqlite:///x.db", "OPTIONS": {"store": "memory://"}}, "STORE key"),
        ({"STORE": "nope://", "OPTIONS": {}}, "scheme"),
        ({"DATABASE": "missing"}, "DATABASES"),
        ({"STORE": "memory://", "OUTBOX": "yes"}, "OUTBOX"),
    ],
)
def test_settings_mistakes_are_improperly_configured(
    config: dict[str, Any], complaint: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with (
        override_settings(WEBHOOK_DISPATCH=config),
        pytest.raises(Exception, match=complaint) as info,
    ):
        get_dispatcher()
    assert isinstance(info.value, (ImproperlyConfigured, wd.ConfigurationError))
    reset_dispatcher()


def test_store_url_for_a_postgresql_database_keeps_connection_details() -> None:
    """A STORE-less config on a PostgreSQL alias derives a URL with quoted credentials
    (no server needed: nothing connects)."""
    from webhook_dispatch.contrib.django import _postgres_url

    databases = {
        **settings.DATABASES,
        "pg_unix": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "shop",
            "USER": "app",
            "PASSWORD": "p@ss:word/",
            "HOST": "/var/run/postgresql",
            "PORT": "5433",
            "OPTIONS": {"sslmode": "disable"},
        },
        "pg_tcp": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "shop",
            "USER": "app",
            "PASSWORD": "",
            "HOST": "db.internal",
            "PORT": "5432",
        },
    }
    pytest.importorskip("psycopg")
    from django.db.utils import ConnectionHandler

    handler = ConnectionHandler(databases)
    import webhook_dispatch.contrib.django as contrib

    original = contrib.connections
    contrib.connections = handler  # type: ignore[assignment]
    try:
        unix = _postgres_url("pg_unix", "hooks")
        tcp = _postgres_url("pg_tcp", "webhook_dispatch")
    finally:
        contrib.connections = original
    assert unix == (
        "postgresql://app:p%40ss%3Aword%2F@/shop?sslmode=disable"
        "&host=%2Fvar%2Frun%2Fpostgresql&port=5433&schema=hooks"
    )
    assert tcp == "postgresql://app@db.internal:5432/shop?schema=webhook_dispatch"
    from webhook_dispatch.stores.postgres import _parse_dsn

    parsed = _parse_dsn(unix.replace("&schema=hooks", ""))
    assert parsed["password"] == "p@ss:word/"
    assert parsed["host"] == "/var/run/postgresql"


# -- the passthrough command ----------------------------------------------------------------
def test_the_webhook_dispatch_command_uses_the_settings_store(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with override_settings(WEBHOOK_DISPATCH={"STORE": f"sqlite:///{tmp_path / 'w.db'}"}):
        call_command(
            "webhook_dispatch",
            "subscriptions",
            "add",
            "https://example.com/hooks",
            "--event-type",
            "order.*",
        )
        assert "whsec_" in capsys.readouterr().out  # the generated secret, shown once
        call_command("webhook_dispatch", "subscriptions", "list", "--json")
        listed = json.loads(capsys.readouterr().out)
        assert [s["url"] for s in listed] == ["https://example.com/hooks"]
        assert [s.url for s in get_dispatcher().subscriptions()] == ["https://example.com/hooks"]
        from django.core.management.base import CommandError

        with pytest.raises(CommandError):
            call_command("webhook_dispatch", "attempts", "msg_missing")
    reset_dispatcher()
