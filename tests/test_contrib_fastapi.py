"""webhook_dispatch.contrib.fastapi and .starlette with real applications and their
TestClient: the lifespan runs a worker in the application's loop, routes publish through
the dependency, and deliveries reach a real loopback receiver."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import webhook_dispatch as wd
from webhook_dispatch._receiver import LoopbackReceiver, Received
from webhook_dispatch.contrib.fastapi import DispatcherDep, WebhookDispatch
from webhook_dispatch.contrib.starlette import get_dispatcher
from webhook_dispatch.testing import MockReceiver

SECRET = wd.generate_secret()


def wait_for(receiver: LoopbackReceiver, path: str, count: int = 1) -> list[Received]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        received = receiver.requests_to(path)
        if len(received) >= count:
            return received
        time.sleep(0.02)
    raise AssertionError(f"{count} request(s) to {path} expected, got {receiver.received}")


def shop(webhooks: WebhookDispatch) -> FastAPI:
    app = FastAPI(lifespan=webhooks.lifespan)

    @app.post("/subscriptions")
    async def subscribe(url: str, dispatcher: DispatcherDep) -> dict[str, str]:
        subscription = await dispatcher.subscribe(url, event_types=["order.*"], secret=SECRET)
        return {"id": subscription.id}

    @app.post("/orders")
    async def create_order(dispatcher: DispatcherDep) -> dict[str, str]:
        message = await dispatcher.publish("order.created", {"id": "ord_1"})
        return {"webhook_id": message.id}

    return app


def test_a_route_publishes_and_the_in_process_worker_delivers(
    loopback: LoopbackReceiver, tmp_path: Path
) -> None:
    webhooks = WebhookDispatch(f"sqlite:///{tmp_path / 'webhooks.db'}", allow_private_networks=True)
    url = loopback.route("/hooks", [200], secret=SECRET)
    with TestClient(shop(webhooks)) as client:
        assert client.post("/subscriptions", params={"url": url}).status_code == 200
        response = client.post("/orders")
        assert response.status_code == 200
        [request] = wait_for(loopback, "/hooks")
        assert isinstance(webhooks.dispatcher, wd.AsyncDispatcher)
    assert request.verified is True
    assert request.webhook_id == response.json()["webhook_id"]
    with pytest.raises(wd.ConfigurationError, match="not running"):
        webhooks.dispatcher  # noqa: B018  # closed with the application


def test_failed_attempts_are_retried_by_the_running_worker(
    loopback: LoopbackReceiver, tmp_path: Path
) -> None:
    webhooks = WebhookDispatch(
        f"sqlite:///{tmp_path / 'webhooks.db'}",
        allow_private_networks=True,
        retry=wd.RetryPolicy.fixed([0.1, 0.1]),
        poll_interval=0.05,
    )
    url = loopback.route("/hooks", [503, 200], secret=SECRET)
    with TestClient(shop(webhooks)) as client:
        client.post("/subscriptions", params={"url": url})
        client.post("/orders")
        received = wait_for(loopback, "/hooks", count=2)
    assert [r.status for r in received] == [503, 200]


def test_worker_false_leaves_delivery_to_another_process(tmp_path: Path) -> None:
    receiver = MockReceiver()
    store = f"sqlite:///{tmp_path / 'webhooks.db'}"
    webhooks = WebhookDispatch(
        dispatcher=wd.AsyncDispatcher(store, transport=receiver), worker=False
    )
    with TestClient(shop(webhooks)) as client:
        client.post("/subscriptions", params={"url": "https://example.com/hooks"})
        webhook_id = client.post("/orders").json()["webhook_id"]
        time.sleep(0.2)
        assert receiver.requests == []
    with wd.Dispatcher(store, transport=receiver) as worker:
        assert worker.run_until_idle() == 1
    assert receiver.requests[0].webhook_id == webhook_id


def test_plain_starlette_reads_the_dispatcher_from_the_request(tmp_path: Path) -> None:
    receiver = MockReceiver(secret=SECRET)

    async def publish(request: Request) -> JSONResponse:
        dispatcher = get_dispatcher(request)
        await dispatcher.subscribe("https://example.com/hooks", secret=SECRET)
        message = await dispatcher.publish("order.created", {"id": "ord_1"})
        await dispatcher.run_until_idle()
        return JSONResponse({"webhook_id": message.id})

    webhooks = WebhookDispatch(dispatcher=wd.AsyncDispatcher(transport=receiver), worker=False)
    app = Starlette(routes=[Route("/", publish, methods=["POST"])], lifespan=webhooks.lifespan)
    with TestClient(app) as client:
        webhook_id = client.post("/").json()["webhook_id"]
        assert app.state.webhook_dispatcher is webhooks.dispatcher
    receiver.assert_all_verified()
    assert [r.webhook_id for r in receiver.requests] == [webhook_id]
    assert not hasattr(app.state, "webhook_dispatcher")


def test_without_the_lifespan_routes_get_a_clear_error() -> None:
    app = FastAPI()

    @app.post("/orders")
    async def create_order(dispatcher: DispatcherDep) -> dict[str, Any]:
        return {}

    with (
        TestClient(app) as client,
        pytest.raises(wd.ConfigurationError, match="lifespan"),
    ):
        client.post("/orders")


def test_dispatcher_and_store_options_exclude_each_other() -> None:
    with pytest.raises(wd.ConfigurationError, match="either"):
        WebhookDispatch("memory://", dispatcher=wd.AsyncDispatcher(), concurrency=4)
