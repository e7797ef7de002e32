"""webhook_dispatch.contrib.flask with a real Flask application: configuration from
``app.config``, publishing in a request through the test client, and the ``flask
webhooks worker`` command delivering to a real loopback receiver."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

pytest.importorskip("flask")

from flask import Flask

import webhook_dispatch as wd
from webhook_dispatch._receiver import LoopbackReceiver
from webhook_dispatch.contrib.flask import WebhookDispatch

SECRET = wd.generate_secret()


def create_app(webhooks: WebhookDispatch, store: str) -> Flask:
    app = Flask(__name__)
    app.config["WEBHOOK_DISPATCH_STORE"] = store
    app.config["WEBHOOK_DISPATCH_OPTIONS"] = {"allow_private_networks": True}
    webhooks.init_app(app)

    @app.post("/orders")
    def create_order() -> dict[str, str]:
        message = webhooks.publish("order.created", {"id": "ord_1"})
        return {"webhook_id": message.id}

    return app


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'webhooks.db'}"


def test_a_request_publishes_and_the_cli_worker_delivers(
    loopback: LoopbackReceiver, store: str
) -> None:
    webhooks = WebhookDispatch()
    app = create_app(webhooks, store)
    url = loopback.route("/hooks", [200], secret=SECRET)
    with app.app_context():
        webhooks.dispatcher.subscribe(url, event_types=["order.*"], secret=SECRET)

    response = app.test_client().post("/orders")
    assert response.status_code == 200

    result = app.test_cli_runner().invoke(args=["webhooks", "worker", "--until-idle"])
    assert result.exit_code == 0, result.output
    assert "1 attempt(s) made" in result.output
    [request] = loopback.requests_to("/hooks")
    assert request.verified is True
    assert request.webhook_id == response.get_json()["webhook_id"]
    webhooks.close(app)


def test_the_worker_command_with_its_own_concurrency_reads_the_same_store(
    loopback: LoopbackReceiver, store: str
) -> None:
    webhooks = WebhookDispatch()
    app = create_app(webhooks, store)
    url = loopback.route("/hooks", [200], secret=SECRET)
    with app.app_context():
        webhooks.dispatcher.subscribe(url, secret=SECRET)
        webhooks.publish_many([("order.created", {"id": "ord_1"}), ("order.paid", {})])
    result = app.test_cli_runner().invoke(
        args=["webhooks", "worker", "--until-idle", "--concurrency", "2"]
    )
    assert "2 attempt(s) made" in result.output
    assert len(loopback.requests_to("/hooks")) == 2
    webhooks.close(app)


def test_the_worker_command_runs_until_stopped(loopback: LoopbackReceiver, store: str) -> None:
    """Outside the main thread no signal handler is installed; the worker runs until its
    dispatcher is closed, as SIGTERM would make it."""
    webhooks = WebhookDispatch()
    app = create_app(webhooks, store)
    url = loopback.route("/hooks", [200], secret=SECRET)
    with app.app_context():
        dispatcher = webhooks.dispatcher
        dispatcher.subscribe(url, secret=SECRET)
    runner = app.test_cli_runner()
    outcome: dict[str, object] = {}
    thread = threading.Thread(
        target=lambda: outcome.update(result=runner.invoke(args=["webhooks", "worker"]))
    )
    thread.start()
    try:
        with app.app_context():
            webhooks.publish("order.created", {"id": "ord_1"})
        deadline = threading.Event()
        for _ in range(500):
            if loopback.requests_to("/hooks"):
                break
            deadline.wait(0.02)
        assert len(loopback.requests_to("/hooks")) == 1
    finally:
        dispatcher.stop()
        thread.join(timeout=10)
    assert "delivering from sqlite:///" in str(getattr(outcome["result"], "output", ""))


def test_two_applications_have_their_own_dispatchers(tmp_path: Path) -> None:
    webhooks = WebhookDispatch()
    first = create_app(webhooks, f"sqlite:///{tmp_path / 'a.db'}")
    second = create_app(webhooks, f"sqlite:///{tmp_path / 'b.db'}")
    assert webhooks.get_dispatcher(first) is not webhooks.get_dispatcher(second)
    with first.app_context():
        assert webhooks.dispatcher is webhooks.get_dispatcher(first)
    webhooks.close(first)
    webhooks.close(second)


def test_the_constructor_form_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    app = Flask(__name__)
    webhooks = WebhookDispatch(app)
    assert app.config["WEBHOOK_DISPATCH_STORE"] == "sqlite:///webhooks.db"
    with app.app_context():
        assert webhooks.dispatcher.subscriptions() == []
    webhooks.close(app)
    assert (tmp_path / "webhooks.db").exists()


def test_an_application_without_init_app_gets_a_clear_error() -> None:
    with Flask(__name__).app_context(), pytest.raises(wd.ConfigurationError, match="init_app"):
        WebhookDispatch().dispatcher  # noqa: B018
