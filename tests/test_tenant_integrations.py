"""Tenants through the transactional outbox (``connection=``) and the Django, Flask and
FastAPI integrations: what is stored, for which subscription, and what real loopback
receivers get. Each framework's tests skip when it is not installed.

Every setup has three endpoints on one loopback receiver, each with its own secret:
acme's, globex's and the application's own (no tenant), all subscribed to ``order.*``.
"""

from __future__ import annotations

import contextlib
import io
import os
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

import webhook_dispatch as wd
from webhook_dispatch._receiver import LoopbackReceiver

# FastAPI resolves a route's (string) annotations in this module's globals; without
# FastAPI its tests skip (the `fastapi_shop` fixture).
with contextlib.suppress(ImportError):
    from webhook_dispatch.contrib.fastapi import DispatcherDep

TENANTS: tuple[str | None, ...] = ("acme", "globex", None)
SECRETS = {tenant: wd.generate_secret() for tenant in TENANTS}
BAD_TENANT = "has space"


def _path(tenant: str | None) -> str:
    return f"/{tenant or 'untenanted'}"


def _endpoints(loopback: LoopbackReceiver) -> dict[str | None, str]:
    """One loopback URL per tenant (and one untenanted), each checking its own secret."""
    return {
        tenant: loopback.route(_path(tenant), [200], secret=SECRETS[tenant]) for tenant in TENANTS
    }


def _subscribe_all(
    dispatcher: wd.Dispatcher, loopback: LoopbackReceiver
) -> dict[str | None, wd.Subscription]:
    return {
        tenant: dispatcher.subscribe(
            url, event_types=["order.*"], secret=SECRETS[tenant], tenant=tenant
        )
        for tenant, url in _endpoints(loopback).items()
    }


def _routed(dispatcher: wd.Dispatcher, message: wd.Message) -> list[str]:
    """The subscriptions the message has deliveries for."""
    return [d.subscription_id for d in dispatcher.deliveries(message_id=message.id)]


def _assert_stored(
    dispatcher: wd.Dispatcher,
    subscriptions: Mapping[str | None, wd.Subscription],
    expected: Mapping[str | None, Sequence[wd.Message]],
) -> None:
    """Each tenant's listing holds exactly its expected messages (with that tenant), and
    each has one delivery, for that tenant's subscription."""
    for tenant in TENANTS:
        mine = expected.get(tenant, [])
        stored = dispatcher.messages(tenant=tenant)
        assert sorted(m.id for m in stored) == sorted(m.id for m in mine), tenant
        assert all(m.tenant == tenant for m in stored)
        for message in mine:
            assert dispatcher.get_message(message.id).tenant == tenant
            assert _routed(dispatcher, message) == [subscriptions[tenant].id]


def _assert_received(
    loopback: LoopbackReceiver, expected: Mapping[str | None, Sequence[str]]
) -> None:
    """Each endpoint got exactly the webhook ids listed for its tenant (none when not
    listed), each signed with that endpoint's own secret."""
    for tenant in TENANTS:
        received = loopback.requests_to(_path(tenant))
        assert sorted(r.webhook_id for r in received) == sorted(expected.get(tenant, [])), tenant
        assert all(r.verified is True for r in received), tenant


# -- the outbox on SQLite: the application's own connection to the store's file ----------
def test_sqlite_outbox_commit_reaches_the_tenant_and_rollback_no_one(
    tmp_path: Path, loopback: LoopbackReceiver
) -> None:
    """``connection=`` with the application's sqlite3 connection to the store's file:
    each event reaches only its tenant's endpoint once committed, none when rolled back;
    a connection to another file is refused with nothing written, tenant or not."""
    path = tmp_path / "shop.db"
    with wd.Dispatcher(f"sqlite:///{path}", allow_private_networks=True) as dispatcher:
        subscriptions = _subscribe_all(dispatcher, loopback)
        app = sqlite3.connect(path)
        other = sqlite3.connect(tmp_path / "other.db")
        try:
            app.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
            app.commit()
            app.execute("INSERT INTO orders VALUES (1)")
            dispatcher.publish("order.created", {"id": 1}, connection=app, tenant="globex")
            app.rollback()

            app.execute("INSERT INTO orders VALUES (2)")
            acme = dispatcher.publish("order.created", {"id": 2}, connection=app, tenant="acme")
            [own, globex] = dispatcher.publish_many(
                [("order.created", {"id": 2}), ("order.paid", {"id": 2}, None, "globex")],
                connection=app,
            )
            with pytest.raises(wd.ConfigurationError, match="store's file"):
                dispatcher.publish("order.created", {}, connection=other, tenant="acme")
            with pytest.raises(wd.InvalidTenant):
                dispatcher.publish("order.created", {}, connection=app, tenant=BAD_TENANT)
            assert dispatcher.messages(tenant=wd.ALL_TENANTS) == []  # not committed yet
            app.commit()
        finally:
            app.close()
            other.close()
        assert (acme.tenant, own.tenant, globex.tenant) == ("acme", None, "globex")
        _assert_stored(dispatcher, subscriptions, {"acme": [acme], "globex": [globex], None: [own]})
        assert dispatcher.run_until_idle() == 3
    _assert_received(loopback, {"acme": [acme.id], "globex": [globex.id], None: [own.id]})


# -- the outbox on PostgreSQL -------------------------------------------------------------
@pytest.mark.postgres
def test_postgres_outbox_commit_reaches_the_tenant_and_rollback_no_one(
    postgres_url: str, postgres_dsn: str, loopback: LoopbackReceiver
) -> None:
    import psycopg

    with wd.Dispatcher(postgres_url, allow_private_networks=True) as dispatcher:
        subscriptions = _subscribe_all(dispatcher, loopback)
        with psycopg.connect(postgres_dsn) as connection:
            connection.execute("CREATE TEMP TABLE orders (id int)")
            connection.commit()
            connection.execute("INSERT INTO orders VALUES (1)")
            dispatcher.publish("order.created", {"id": 1}, connection=connection, tenant="globex")
            connection.rollback()
            with connection.transaction():
                connection.execute("INSERT INTO orders VALUES (2)")
                acme = dispatcher.publish(
                    "order.created", {"id": 2}, connection=connection, tenant="acme"
                )
                own = dispatcher.publish("order.created", {"id": 2}, connection=connection)
                assert dispatcher.messages() == []  # not committed yet
            assert (acme.tenant, own.tenant) == ("acme", None)
        _assert_stored(dispatcher, subscriptions, {"acme": [acme], None: [own]})
        assert dispatcher.run_until_idle() == 2
    _assert_received(loopback, {"acme": [acme.id], None: [own.id]})


@pytest.mark.postgres
def test_postgres_outbox_idempotency_keys_are_per_tenant(
    postgres_url: str, postgres_dsn: str, loopback: LoopbackReceiver
) -> None:
    import psycopg

    with wd.Dispatcher(postgres_url, allow_private_networks=True) as dispatcher:
        subscriptions = _subscribe_all(dispatcher, loopback)
        with psycopg.connect(postgres_dsn) as connection, connection.transaction():

            def publish(tenant: str | None) -> wd.Message:
                return dispatcher.publish(
                    "order.created",
                    {"id": "ord_1"},
                    idempotency_key="ord_1:created",
                    connection=connection,
                    tenant=tenant,
                )

            first, again = publish("acme"), publish("acme")
            other, own = publish("globex"), publish(None)
        later = dispatcher.publish(
            "order.created", {"id": "ord_1"}, idempotency_key="ord_1:created", tenant="acme"
        )
        assert again.id == first.id and later.id == first.id
        assert len({first.id, other.id, own.id}) == 3
        assert (other.tenant, own.tenant) == ("globex", None)
        _assert_stored(dispatcher, subscriptions, {"acme": [first], "globex": [other], None: [own]})
        assert dispatcher.run_until_idle() == 3
    _assert_received(loopback, {"acme": [first.id], "globex": [other.id], None: [own.id]})


@pytest.mark.postgres
def test_postgres_outbox_publish_many_takes_a_tenant_per_event(
    postgres_url: str, postgres_dsn: str, loopback: LoopbackReceiver
) -> None:
    import psycopg

    with wd.Dispatcher(postgres_url, allow_private_networks=True) as dispatcher:
        subscriptions = _subscribe_all(dispatcher, loopback)
        with psycopg.connect(postgres_dsn) as connection:
            with connection.transaction():
                messages = dispatcher.publish_many(
                    [
                        ("order.created", {"n": 0}, None, "acme"),
                        ("order.created", {"n": 1}, None, "globex"),
                        ("order.created", {"n": 2}, None, None),
                        ("order.paid", {"n": 3}),
                    ],
                    connection=connection,
                )
            dispatcher.publish_many(
                [("order.created", {"n": 4}, None, "acme"), ("order.created", {"n": 5})],
                connection=connection,
            )
            connection.rollback()
        assert [m.tenant for m in messages] == ["acme", "globex", None, None]
        acme, globex, *own = messages
        _assert_stored(dispatcher, subscriptions, {"acme": [acme], "globex": [globex], None: own})
        assert dispatcher.run_until_idle() == 4
    _assert_received(
        loopback, {"acme": [acme.id], "globex": [globex.id], None: [m.id for m in own]}
    )


@pytest.mark.postgres
def test_postgres_outbox_bad_tenant_is_refused_and_the_transaction_goes_on(
    postgres_url: str, postgres_dsn: str
) -> None:
    import psycopg
    from psycopg.pq import TransactionStatus

    with wd.Dispatcher(postgres_url) as dispatcher:
        dispatcher.subscribe("https://acme.example/hook", tenant="acme")
        with psycopg.connect(postgres_dsn) as connection:
            connection.execute("CREATE TEMP TABLE orders (id int)")
            connection.execute("INSERT INTO orders VALUES (1)")
            with pytest.raises(wd.InvalidTenant):
                dispatcher.publish("order.created", {}, connection=connection, tenant=BAD_TENANT)
            with pytest.raises(wd.InvalidTenant):
                dispatcher.publish_many(
                    [("order.created", {}, None, "acme"), ("order.created", {}, None, BAD_TENANT)],
                    connection=connection,
                )
            # Refused before any statement ran: the caller's transaction is still good.
            assert connection.info.transaction_status == TransactionStatus.INTRANS
            connection.commit()
            assert connection.execute("SELECT count(*) FROM orders").fetchone() == (1,)
        assert dispatcher.messages() == []
        assert dispatcher.deliveries() == []


@pytest.mark.postgres
async def test_postgres_outbox_async_connection_follows_the_tenant(
    postgres_url: str, postgres_dsn: str, loopback: LoopbackReceiver
) -> None:
    import psycopg

    async with wd.AsyncDispatcher(postgres_url, allow_private_networks=True) as dispatcher:
        subscriptions = {
            tenant: await dispatcher.subscribe(
                url, event_types=["order.*"], secret=SECRETS[tenant], tenant=tenant
            )
            for tenant, url in _endpoints(loopback).items()
        }
        async with await psycopg.AsyncConnection.connect(postgres_dsn) as connection:
            async with connection.transaction():
                acme = await dispatcher.publish(
                    "order.created", {"n": 0}, connection=connection, tenant="acme"
                )
                globex, own = await dispatcher.publish_many(
                    [("order.created", {"n": 1}, None, "globex"), ("order.created", {"n": 2})],
                    connection=connection,
                )
                assert await dispatcher.messages() == []  # not committed yet
            await dispatcher.publish(
                "order.created", {"n": 3}, connection=connection, tenant="acme"
            )
            await connection.rollback()
            with pytest.raises(wd.InvalidTenant):
                await dispatcher.publish(
                    "order.created", {}, connection=connection, tenant=BAD_TENANT
                )
            with pytest.raises(wd.InvalidTenant):
                await dispatcher.publish_many(
                    [("order.created", {}, None, BAD_TENANT)], connection=connection
                )
            await connection.rollback()
        assert (acme.tenant, globex.tenant, own.tenant) == ("acme", "globex", None)
        for tenant, message in zip(TENANTS, (acme, globex, own), strict=True):
            assert [m.id for m in await dispatcher.messages(tenant=tenant)] == [message.id]
            deliveries = await dispatcher.deliveries(message_id=message.id)
            assert [d.subscription_id for d in deliveries] == [subscriptions[tenant].id]
        assert await dispatcher.run_until_idle() == 3
    _assert_received(loopback, {"acme": [acme.id], "globex": [globex.id], None: [own.id]})


# -- Django ---------------------------------------------------------------------------------
def _django_databases(workdir: Path) -> dict[str, Any]:
    """The aliases tests/test_contrib_django.py configures too ("default" on SQLite,
    "postgres" with WEBHOOK_DISPATCH_TEST_POSTGRES)."""
    databases: dict[str, Any] = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(workdir / "app.sqlite3")}
    }
    dsn = os.environ.get("WEBHOOK_DISPATCH_TEST_POSTGRES")
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


@pytest.fixture(scope="session")
def django_settings(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Django, configured here unless tests/test_contrib_django.py was collected too (it
    configures Django on import, with the same database aliases)."""
    django = pytest.importorskip("django")
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="not-a-secret",
            ALLOWED_HOSTS=["testserver"],
            DATABASES=_django_databases(tmp_path_factory.mktemp("django")),
            INSTALLED_APPS=["webhook_dispatch.contrib.django"],
            MIDDLEWARE=[],
            USE_TZ=True,
            LOGGING_CONFIG=None,
        )
        django.setup()
    return settings


def _django_create_order(request: Any) -> Any:
    """Publish ``order.created`` for ``?tenant=`` inside an atomic block; ``?fail=1``
    raises after the publish, as a view whose payment step fails would."""
    from django.db import transaction
    from django.http import JsonResponse

    from webhook_dispatch.contrib.django import dispatcher, get_dispatcher

    with transaction.atomic(using=get_dispatcher().database):
        message = dispatcher.publish(
            "order.created", {"id": "ord_1"}, tenant=request.GET.get("tenant")
        )
        if request.GET.get("fail"):
            raise RuntimeError("payment declined")
    return JsonResponse({"webhook_id": message.id, "tenant": message.tenant})


class _DjangoURLs:
    """The URLconf of these tests (Django takes any object with ``urlpatterns``)."""

    urlpatterns: ClassVar[list[Any]] = []


@pytest.fixture(
    params=["sqlite", "sqlite-outbox", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def django_backend(
    request: pytest.FixtureRequest, tmp_path: Path, django_settings: Any
) -> Iterator[str]:
    """The Django database alias the store follows: on SQLite a separate SQLite store
    (``on_commit``) or a store in the Django database's own file (the outbox, on
    Django's sqlite3 connection); on PostgreSQL the store in Django's database (the
    outbox)."""
    from django.db import connections
    from django.test import override_settings
    from django.urls import path

    from webhook_dispatch.contrib.django import reset_dispatcher

    _DjangoURLs.urlpatterns = [path("orders", _django_create_order)]
    options = {"allow_private_networks": True}
    if request.param == "sqlite":
        alias = "default"
        config: dict[str, Any] = {
            "STORE": f"sqlite:///{tmp_path / 'webhooks.db'}",
            "OPTIONS": options,
        }
    elif request.param == "sqlite-outbox":
        alias = "default"
        shared = str(connections[alias].settings_dict["NAME"])
        config = {"STORE": f"sqlite:///{shared}", "OPTIONS": options}
    else:
        request.getfixturevalue("postgres_dsn")  # skips, or fails when unreachable
        alias = "postgres"
        config = {
            "DATABASE": alias,
            "SCHEMA": request.getfixturevalue("postgres_schema"),
            "OPTIONS": options,
        }
    with override_settings(WEBHOOK_DISPATCH=config, ROOT_URLCONF=_DjangoURLs):
        yield alias
    reset_dispatcher()
    connections[alias].close()
    if request.param == "sqlite-outbox":  # the store's tables go with the file
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(shared + suffix)


def _django_deliver() -> str:
    """Run ``manage.py webhook_dispatch_worker --until-idle``; what it printed."""
    from django.core.management import call_command

    out = io.StringIO()
    call_command("webhook_dispatch_worker", "--until-idle", stdout=out)
    return out.getvalue()


def _django_publish_then_fail(alias: str, tenant: str) -> None:
    from django.db import transaction

    from webhook_dispatch.contrib.django import dispatcher

    with transaction.atomic(using=alias):
        dispatcher.publish("order.created", {"id": "ord_2"}, tenant=tenant)
        raise RuntimeError("rolled back")


def test_django_view_publishes_for_its_tenant_only(
    django_backend: str, loopback: LoopbackReceiver
) -> None:
    from django.test import Client

    from webhook_dispatch.contrib.django import get_dispatcher

    dispatcher = get_dispatcher()
    subscriptions = _subscribe_all(dispatcher, loopback)
    acme = Client().post("/orders?tenant=acme").json()
    own = Client().post("/orders").json()
    assert (acme["tenant"], own["tenant"]) == ("acme", None)
    _assert_stored(
        dispatcher,
        subscriptions,
        {
            "acme": [dispatcher.get_message(acme["webhook_id"])],
            None: [dispatcher.get_message(own["webhook_id"])],
        },
    )
    assert "2 attempt(s) made" in _django_deliver()
    _assert_received(loopback, {"acme": [acme["webhook_id"]], None: [own["webhook_id"]]})


def test_django_atomic_commit_keeps_the_tenant_and_rollback_stores_nothing(
    django_backend: str, loopback: LoopbackReceiver
) -> None:
    from django.db import transaction
    from django.test import Client

    from webhook_dispatch.contrib.django import dispatcher, get_dispatcher

    current = get_dispatcher()
    subscriptions = _subscribe_all(current, loopback)
    with transaction.atomic(using=django_backend):
        message = dispatcher.publish("order.created", {"id": "ord_1"}, tenant="acme")
        assert message.tenant == "acme"
        assert current.deliveries(message_id=message.id) == []  # not committed yet
        pending_hooks = transaction.get_connection(django_backend).run_on_commit
        # The outbox: written in Django's transaction; else stored from on_commit.
        assert len(pending_hooks) == (0 if current.outbox else 1)
    with pytest.raises(RuntimeError, match="payment declined"):
        Client().post("/orders?tenant=globex&fail=1")
    with pytest.raises(RuntimeError, match="rolled back"):
        _django_publish_then_fail(django_backend, "acme")
    _assert_stored(current, subscriptions, {"acme": [message]})
    assert "1 attempt(s) made" in _django_deliver()
    _assert_received(loopback, {"acme": [message.id]})


def test_django_idempotency_keys_are_per_tenant_inside_atomic(
    django_backend: str, loopback: LoopbackReceiver
) -> None:
    from django.db import transaction

    from webhook_dispatch.contrib.django import dispatcher, get_dispatcher

    current = get_dispatcher()
    _subscribe_all(current, loopback)
    for tenant in ("acme", "acme", "globex", None):
        with transaction.atomic(using=django_backend):
            dispatcher.publish("order.created", {}, idempotency_key="ord_1:created", tenant=tenant)
    assert [len(current.messages(tenant=tenant)) for tenant in TENANTS] == [1, 1, 1]
    assert "3 attempt(s) made" in _django_deliver()
    assert [len(loopback.requests_to(_path(tenant))) for tenant in TENANTS] == [1, 1, 1]


def test_django_publish_many_inside_atomic_keeps_each_events_tenant(
    django_backend: str, loopback: LoopbackReceiver
) -> None:
    from django.db import transaction

    from webhook_dispatch.contrib.django import get_dispatcher, publish_many

    current = get_dispatcher()
    subscriptions = _subscribe_all(current, loopback)
    with transaction.atomic(using=django_backend):
        messages = publish_many(
            [
                ("order.created", {"n": 0}, None, "acme"),
                ("order.created", {"n": 1}, None, "globex"),
                ("order.created", {"n": 2}),
            ]
        )
    assert [m.tenant for m in messages] == ["acme", "globex", None]
    acme, globex, own = messages
    _assert_stored(current, subscriptions, {"acme": [acme], "globex": [globex], None: [own]})
    assert "3 attempt(s) made" in _django_deliver()
    _assert_received(loopback, {"acme": [acme.id], "globex": [globex.id], None: [own.id]})


def test_django_module_publish_takes_a_tenant(
    django_backend: str, loopback: LoopbackReceiver
) -> None:
    from django.db import transaction

    from webhook_dispatch.contrib.django import get_dispatcher, publish

    current = get_dispatcher()
    subscriptions = _subscribe_all(current, loopback)
    with transaction.atomic(using=django_backend):
        message = publish("order.created", {"id": "ord_1"}, tenant="acme")
    _assert_stored(current, subscriptions, {"acme": [message]})


def test_django_bad_tenant_is_refused_at_once_and_stores_nothing(
    django_backend: str, loopback: LoopbackReceiver
) -> None:
    from django.db import transaction
    from django.test import Client

    from webhook_dispatch.contrib.django import dispatcher, get_dispatcher

    current = get_dispatcher()
    subscriptions = _subscribe_all(current, loopback)
    with pytest.raises(wd.InvalidTenant):
        Client().post("/orders?" + urllib.parse.urlencode({"tenant": BAD_TENANT}))
    with pytest.raises(wd.InvalidTenant):
        dispatcher.publish("order.created", {}, tenant=BAD_TENANT)  # outside atomic
    with transaction.atomic(using=django_backend):
        with pytest.raises(wd.InvalidTenant):
            dispatcher.publish("order.created", {}, tenant=BAD_TENANT)
        # Refused before anything was written: the block goes on and commits.
        kept = dispatcher.publish("order.created", {}, tenant="acme")
    _assert_stored(current, subscriptions, {"acme": [kept]})
    assert "1 attempt(s) made" in _django_deliver()
    _assert_received(loopback, {"acme": [kept.id]})


def test_django_bad_tenant_in_publish_many_is_refused_inside_atomic(
    django_backend: str,
) -> None:
    from django.db import transaction

    from webhook_dispatch.contrib.django import get_dispatcher, publish_many

    current = get_dispatcher()
    current.subscribe("https://acme.example/hook", tenant="acme")
    current.subscribe("https://ops.example/hook")
    with transaction.atomic(using=django_backend), pytest.raises(wd.InvalidTenant):
        publish_many([("order.created", {}, None, "acme"), ("order.created", {}, None, BAD_TENANT)])
    assert current.messages() == []


# -- Flask ----------------------------------------------------------------------------------
FlaskShop = Callable[..., tuple[Any, Any]]


@pytest.fixture
def flask_shop() -> Iterator[FlaskShop]:
    """``flask_shop(store, dsn=None)``: a Flask application and its `WebhookDispatch`,
    whose routes publish for ``?tenant=``; closed after the test."""
    flask = pytest.importorskip("flask")
    from webhook_dispatch.contrib.flask import WebhookDispatch

    made: list[tuple[Any, Any]] = []

    def make(store: str, *, dsn: str | None = None) -> tuple[Any, Any]:
        webhooks = WebhookDispatch()
        app = flask.Flask(__name__)
        app.testing = True  # a view's exception reaches the test
        app.config["WEBHOOK_DISPATCH_STORE"] = store
        app.config["WEBHOOK_DISPATCH_OPTIONS"] = {"allow_private_networks": True}
        webhooks.init_app(app)

        @app.post("/orders")
        def create_order() -> dict[str, Any]:
            tenant = flask.request.args.get("tenant")
            message = webhooks.publish("order.created", {"id": "ord_1"}, tenant=tenant)
            return {"webhook_id": message.id, "tenant": message.tenant}

        @app.post("/orders/batch")
        def create_orders() -> dict[str, Any]:
            tenants = flask.request.get_json()["tenants"]
            messages = webhooks.publish_many(
                [("order.created", {"n": n}, None, tenant) for n, tenant in enumerate(tenants)]
            )
            return {"webhook_ids": [m.id for m in messages]}

        @app.post("/orders/outbox")
        def create_order_in_outbox() -> dict[str, Any]:
            import psycopg

            assert dsn is not None
            with psycopg.connect(dsn) as connection, connection.transaction():
                message = webhooks.publish(
                    "order.created",
                    {"id": "ord_1"},
                    connection=connection,
                    tenant=flask.request.args.get("tenant"),
                )
                if flask.request.args.get("fail"):
                    raise RuntimeError("payment declined")
            return {"webhook_id": message.id, "tenant": message.tenant}

        made.append((app, webhooks))
        return app, webhooks

    yield make
    for app, webhooks in made:
        webhooks.close(app)


def test_flask_request_publishes_for_its_tenant_only(
    flask_shop: FlaskShop, tmp_path: Path, loopback: LoopbackReceiver
) -> None:
    app, webhooks = flask_shop(f"sqlite:///{tmp_path / 'webhooks.db'}")
    dispatcher = webhooks.get_dispatcher(app)
    subscriptions = _subscribe_all(dispatcher, loopback)
    client = app.test_client()
    acme = client.post("/orders?tenant=acme").get_json()
    own = client.post("/orders").get_json()
    assert (acme["tenant"], own["tenant"]) == ("acme", None)
    _assert_stored(
        dispatcher,
        subscriptions,
        {
            "acme": [dispatcher.get_message(acme["webhook_id"])],
            None: [dispatcher.get_message(own["webhook_id"])],
        },
    )
    result = app.test_cli_runner().invoke(args=["webhooks", "worker", "--until-idle"])
    assert result.exit_code == 0, result.output
    assert "2 attempt(s) made" in result.output
    _assert_received(loopback, {"acme": [acme["webhook_id"]], None: [own["webhook_id"]]})


def test_flask_publish_many_takes_a_tenant_per_event(
    flask_shop: FlaskShop, tmp_path: Path, loopback: LoopbackReceiver
) -> None:
    app, webhooks = flask_shop(f"sqlite:///{tmp_path / 'webhooks.db'}")
    dispatcher = webhooks.get_dispatcher(app)
    subscriptions = _subscribe_all(dispatcher, loopback)
    response = app.test_client().post("/orders/batch", json={"tenants": ["acme", "globex", None]})
    acme, globex, own = (dispatcher.get_message(i) for i in response.get_json()["webhook_ids"])
    _assert_stored(dispatcher, subscriptions, {"acme": [acme], "globex": [globex], None: [own]})
    assert dispatcher.run_until_idle() == 3
    _assert_received(loopback, {"acme": [acme.id], "globex": [globex.id], None: [own.id]})


def test_flask_bad_tenant_is_refused_and_stores_nothing(
    flask_shop: FlaskShop, tmp_path: Path, loopback: LoopbackReceiver
) -> None:
    app, webhooks = flask_shop(f"sqlite:///{tmp_path / 'webhooks.db'}")
    dispatcher = webhooks.get_dispatcher(app)
    _subscribe_all(dispatcher, loopback)
    client = app.test_client()
    with pytest.raises(wd.InvalidTenant):
        client.post("/orders", query_string={"tenant": BAD_TENANT})
    with pytest.raises(wd.InvalidTenant):
        client.post("/orders/batch", json={"tenants": ["acme", BAD_TENANT]})
    assert dispatcher.messages() == []
    assert dispatcher.run_until_idle() == 0
    assert loopback.received == []


@pytest.mark.postgres
def test_flask_outbox_on_postgres_keeps_the_tenant(
    flask_shop: FlaskShop, postgres_url: str, postgres_dsn: str, loopback: LoopbackReceiver
) -> None:
    app, webhooks = flask_shop(postgres_url, dsn=postgres_dsn)
    dispatcher = webhooks.get_dispatcher(app)
    subscriptions = _subscribe_all(dispatcher, loopback)
    client = app.test_client()
    acme = client.post("/orders/outbox?tenant=acme").get_json()
    with pytest.raises(RuntimeError, match="payment declined"):
        client.post("/orders/outbox?tenant=globex&fail=1")
    with pytest.raises(wd.InvalidTenant):
        client.post("/orders/outbox", query_string={"tenant": BAD_TENANT})
    assert acme["tenant"] == "acme"
    _assert_stored(
        dispatcher, subscriptions, {"acme": [dispatcher.get_message(acme["webhook_id"])]}
    )
    assert dispatcher.run_until_idle() == 1
    _assert_received(loopback, {"acme": [acme["webhook_id"]]})


# -- FastAPI --------------------------------------------------------------------------------
FastAPIShop = Callable[..., tuple[Any, Any]]


@pytest.fixture
def fastapi_shop() -> FastAPIShop:
    """``fastapi_shop(store, dsn=None)``: a FastAPI application whose routes publish for
    ``?tenant=`` through `DispatcherDep`, and its `TestClient` class. No worker runs in
    the application: the tests deliver with a `Dispatcher` of their own."""
    fastapi = pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from webhook_dispatch.contrib.fastapi import WebhookDispatch

    def make(store: str, *, dsn: str | None = None) -> tuple[Any, Any]:
        dispatcher = wd.AsyncDispatcher(store, allow_private_networks=True)
        webhooks = WebhookDispatch(dispatcher=dispatcher, worker=False)
        app = fastapi.FastAPI(lifespan=webhooks.lifespan)

        @app.post("/orders")
        async def create_order(
            dispatcher: DispatcherDep, tenant: str | None = None
        ) -> dict[str, Any]:
            message = await dispatcher.publish("order.created", {"id": "ord_1"}, tenant=tenant)
            return {"webhook_id": message.id, "tenant": message.tenant}

        @app.post("/orders/batch")
        async def create_orders(dispatcher: DispatcherDep, tenants: str) -> dict[str, Any]:
            """``tenants`` separated by commas; an empty one is no tenant."""
            messages = await dispatcher.publish_many(
                [
                    ("order.created", {"n": n}, None, tenant or None)
                    for n, tenant in enumerate(tenants.split(","))
                ]
            )
            return {"webhook_ids": [m.id for m in messages]}

        @app.post("/orders/outbox")
        async def create_order_in_outbox(
            dispatcher: DispatcherDep, tenant: str, fail: bool = False
        ) -> dict[str, Any]:
            import psycopg

            assert dsn is not None
            async with (
                await psycopg.AsyncConnection.connect(dsn) as connection,
                connection.transaction(),
            ):
                message = await dispatcher.publish(
                    "order.created", {"id": "ord_1"}, connection=connection, tenant=tenant
                )
                if fail:
                    raise RuntimeError("payment declined")
            return {"webhook_id": message.id, "tenant": message.tenant}

        return app, TestClient

    return make


def test_fastapi_route_publishes_for_its_tenant_only(
    fastapi_shop: FastAPIShop, tmp_path: Path, loopback: LoopbackReceiver
) -> None:
    store = f"sqlite:///{tmp_path / 'webhooks.db'}"
    app, client_class = fastapi_shop(store)
    with wd.Dispatcher(store, allow_private_networks=True) as admin:
        subscriptions = _subscribe_all(admin, loopback)
        with client_class(app) as client:
            acme = client.post("/orders", params={"tenant": "acme"}).json()
            own = client.post("/orders").json()
        assert (acme["tenant"], own["tenant"]) == ("acme", None)
        _assert_stored(
            admin,
            subscriptions,
            {
                "acme": [admin.get_message(acme["webhook_id"])],
                None: [admin.get_message(own["webhook_id"])],
            },
        )
        assert admin.run_until_idle() == 2
    _assert_received(loopback, {"acme": [acme["webhook_id"]], None: [own["webhook_id"]]})


def test_fastapi_publish_many_takes_a_tenant_per_event(
    fastapi_shop: FastAPIShop, tmp_path: Path, loopback: LoopbackReceiver
) -> None:
    store = f"sqlite:///{tmp_path / 'webhooks.db'}"
    app, client_class = fastapi_shop(store)
    with wd.Dispatcher(store, allow_private_networks=True) as admin:
        subscriptions = _subscribe_all(admin, loopback)
        with client_class(app) as client:
            ids = client.post("/orders/batch", params={"tenants": "acme,globex,"}).json()
        acme, globex, own = (admin.get_message(i) for i in ids["webhook_ids"])
        _assert_stored(admin, subscriptions, {"acme": [acme], "globex": [globex], None: [own]})
        assert admin.run_until_idle() == 3
    _assert_received(loopback, {"acme": [acme.id], "globex": [globex.id], None: [own.id]})


def test_fastapi_bad_tenant_is_refused_and_stores_nothing(
    fastapi_shop: FastAPIShop, tmp_path: Path, loopback: LoopbackReceiver
) -> None:
    store = f"sqlite:///{tmp_path / 'webhooks.db'}"
    app, client_class = fastapi_shop(store)
    with wd.Dispatcher(store, allow_private_networks=True) as admin:
        _subscribe_all(admin, loopback)
        with client_class(app) as client:
            with pytest.raises(wd.InvalidTenant):
                client.post("/orders", params={"tenant": BAD_TENANT})
            with pytest.raises(wd.InvalidTenant):
                client.post("/orders/batch", params={"tenants": f"acme,{BAD_TENANT}"})
        assert admin.messages() == []
        assert admin.run_until_idle() == 0
    assert loopback.received == []


@pytest.mark.postgres
def test_fastapi_outbox_with_an_async_connection_keeps_the_tenant(
    fastapi_shop: FastAPIShop, postgres_url: str, postgres_dsn: str, loopback: LoopbackReceiver
) -> None:
    app, client_class = fastapi_shop(postgres_url, dsn=postgres_dsn)
    with wd.Dispatcher(postgres_url, allow_private_networks=True) as admin:
        subscriptions = _subscribe_all(admin, loopback)
        with client_class(app) as client:
            acme = client.post("/orders/outbox", params={"tenant": "acme"}).json()
            with pytest.raises(RuntimeError, match="payment declined"):
                client.post("/orders/outbox", params={"tenant": "globex", "fail": True})
            with pytest.raises(wd.InvalidTenant):
                client.post("/orders/outbox", params={"tenant": BAD_TENANT})
        assert acme["tenant"] == "acme"
        _assert_stored(admin, subscriptions, {"acme": [admin.get_message(acme["webhook_id"])]})
        assert admin.run_until_idle() == 1
    _assert_received(loopback, {"acme": [acme["webhook_id"]]})
