"""What each request carries: a message's own headers, GitHub style's event headers
(checked with GitHub's own receiver middleware), and the request headers each attempt
records, on every store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import webhook_dispatch as wd
from webhook_dispatch.testing import FakeClock, MockReceiver

if TYPE_CHECKING:
    from conftest import Processes

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
SECRET = "github_secret_0123456789"


@pytest.fixture
def receiver() -> MockReceiver:
    return MockReceiver([200])


@pytest.fixture
def dispatcher(store_url: str, receiver: MockReceiver) -> Iterator[wd.Dispatcher]:
    with wd.Dispatcher(store_url, transport=receiver, clock=FakeClock(T0)) as d:
        yield d


# -- per-message headers ------------------------------------------------------------------
def test_a_messages_headers_go_with_it_over_the_subscriptions(
    dispatcher: wd.Dispatcher, receiver: MockReceiver
) -> None:
    dispatcher.subscribe(
        "https://h.example/x", headers={"X-Team": "billing", "X-Trace": "from-subscription"}
    )
    message = dispatcher.publish(
        "order.paid", {}, headers={"x-trace": "abc123", "X-Request-Id": "r-1"}, tenant=None
    )
    assert dict(message.headers) == {"x-trace": "abc123", "X-Request-Id": "r-1"}
    assert dispatcher.run_until_idle() == 1
    [request] = receiver.requests
    assert request.headers["x-trace"] == "abc123"
    assert request.headers.get_list("x-trace") == ["abc123"]
    assert request.headers["x-team"] == "billing" and request.headers["x-request-id"] == "r-1"
    assert dict(dispatcher.store.get_message(message.id).headers) == dict(message.headers)


def test_a_message_header_never_replaces_auth(
    dispatcher: wd.Dispatcher, receiver: MockReceiver
) -> None:
    dispatcher.subscribe("https://h.example/x", auth=wd.ApiKeyHeader("X-Api-Key", "k" * 20))
    dispatcher.publish("order.paid", {}, headers={"X-Api-Key": "from-the-message"})
    dispatcher.run_until_idle()
    assert receiver.requests[0].headers.get_list("x-api-key") == ["k" * 20]


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        ({"Content-Type": "text/plain"}, "reserved"),
        ({"webhook-signature": "v1,x"}, "reserved"),
        ({"X-Hub-Signature-256": "sha256=x"}, "signature scheme"),
        ({"X-GitHub-Event": "push"}, "signature scheme"),
        ({"Stripe-Signature": "t=1"}, "signature scheme"),
        ({"Authorization": "Bearer x"}, "signature scheme or auth"),
        ({"X-Bad": "a\r\nInjected: yes"}, "X-Bad"),
        ({"Bad Name": "x"}, "Bad Name"),
        ({"X-Num": 5}, "str value"),
    ],
)
def test_bad_message_headers_are_refused_and_nothing_stored(
    dispatcher: wd.Dispatcher, headers: dict[str, object], match: str
) -> None:
    dispatcher.subscribe("https://h.example/x")
    with pytest.raises(wd.InvalidHeader, match=match):
        dispatcher.publish("order.paid", {}, headers=headers)  # type: ignore[dict-item]
    assert list(dispatcher.messages()) == []


# -- GitHub style -------------------------------------------------------------------------
def test_github_style_sends_the_event_and_delivery_headers(
    dispatcher: wd.Dispatcher, receiver: MockReceiver
) -> None:
    dispatcher.subscribe("https://h.example/x", signature="github", secret=SECRET)
    message = dispatcher.publish("order.paid", {"n": 1})
    dispatcher.run_until_idle()
    [request] = receiver.requests
    assert request.headers["x-github-event"] == "order.paid"
    assert request.headers["x-github-delivery"] == message.id
    assert request.headers["x-hub-signature-256"].startswith("sha256=")
    with pytest.raises(wd.InvalidHeader):
        dispatcher.subscribe(
            "https://h.example/y",
            signature="github",
            secret=SECRET,
            headers={"X-GitHub-Event": "push"},
        )


def test_octokit_webhooks_middleware_accepts_github_style(
    processes: Processes, tmp_path: Path
) -> None:
    """GitHub's own receiver (``@octokit/webhooks``' Node middleware) verifies the
    signature and answers 400 without X-GitHub-Event and X-GitHub-Delivery."""
    where = os.environ.get("WEBHOOK_DISPATCH_OCTOKIT_DIR")
    node = shutil.which("node")
    if not where or node is None:
        pytest.skip(
            "needs node and @octokit/webhooks: set WEBHOOK_DISPATCH_OCTOKIT_DIR to a "
            "directory where `npm install @octokit/webhooks@13` ran (.ci/run does)"
        )
    script = Path(where) / f"octokit_receiver_{tmp_path.name}.mjs"
    shutil.copy(Path(__file__).parent / "receivers" / "octokit_receiver.mjs", script)
    try:
        server = processes.start(
            [node, str(script)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "WEBHOOK_SECRET": SECRET},
        )
        first = processes.read_line(server)
        assert first.startswith("PORT "), first
        url = f"http://127.0.0.1:{first.split()[1]}/hooks"
        with wd.Dispatcher(allow_private_networks=True) as dispatcher:
            dispatcher.subscribe(url, signature="github", secret=SECRET)
            message = dispatcher.publish("order.paid", {"amount": 250})
            dispatcher.run_until_idle()
            [attempt] = dispatcher.attempts(message.id)
            wrong = dispatcher.subscribe(url, signature="github", secret="wrong_secret_0123456789")
            dispatcher.publish("order.paid", {"amount": 1})
            dispatcher.run_until_idle()
            refused = dispatcher.deliveries(subscription_id=wrong.id)
        assert attempt.status_code == 200, attempt.response_body
        received = json.loads(processes.read_line(server))
        assert received["id"] == message.id and received["name"] == "order.paid"
        assert received["payload"]["data"] == {"amount": 250}
        assert refused[0].last_status_code is not None and refused[0].last_status_code >= 400
    finally:
        script.unlink(missing_ok=True)


# -- the attempt log ----------------------------------------------------------------------
def test_each_attempt_records_its_request_headers_with_secrets_hidden(
    dispatcher: wd.Dispatcher,
) -> None:
    secret = wd.generate_secret()
    sub = dispatcher.subscribe(
        "https://h.example/x",
        secret=secret,
        headers={"X-Api-Key": "sk_live_hidden"},
        auth=wd.BearerToken("tok_hidden_0123456789"),
    )
    message = dispatcher.publish("order.paid", {}, headers={"X-Trace": "abc"})
    dispatcher.run_until_idle()
    [attempt] = dispatcher.attempts(message.id)
    headers = dict(attempt.request_headers)
    assert headers["webhook-id"] == message.id
    assert headers["webhook-timestamp"] == str(attempt.webhook_timestamp)
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("webhook-dispatch/")
    assert headers["webhook-signature"] == "***"
    assert headers["X-Api-Key"] == "***"
    assert headers["authorization"] == "***"
    assert headers["X-Trace"] == "abc"
    text = json.dumps(headers)
    assert "sk_live_hidden" not in text and "tok_hidden" not in text and secret not in text
    assert sub.id == attempt.subscription_id
