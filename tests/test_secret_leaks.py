"""Known secrets and credentials must not show up anywhere but where they are used: not in
repr/str, logs (DEBUG), error messages, CLI output (tables and --json), or the stored
attempt records."""

from __future__ import annotations

import base64
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import webhook_dispatch as wd
from webhook_dispatch.cli import main
from webhook_dispatch.signing import generate_keypair

SECRET = "whsec_" + base64.b64encode(b"LEAKCANARY-signing-secret-32byte").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"LEAKCANARY-retired-secret-32byte").decode()
TOKEN = "tok_LEAKCANARY_bearer"
PASSWORD = "pw_LEAKCANARY_basic"
API_KEY = "ak_LEAKCANARY_header"
CLIENT_SECRET = "cs_LEAKCANARY_oauth"
JWT_KEY = "jk_LEAKCANARY_jwt_hmac_key_long_enough_for_hs256"
ED_SECRET, ED_PUBLIC = generate_keypair()

CANARIES = [
    SECRET,
    SECRET.removeprefix("whsec_"),
    OLD_SECRET.removeprefix("whsec_"),
    TOKEN,
    PASSWORD,
    base64.b64encode(f"user:{PASSWORD}".encode()).decode(),
    API_KEY,
    CLIENT_SECRET,
    JWT_KEY,
    ED_SECRET.removeprefix("whsk_"),
    "LEAKCANARY",
]


def assert_clean(text: str, where: str) -> None:
    for canary in CANARIES:
        assert canary not in text, f"a secret leaked into {where}"


def _errors() -> list[Callable[[wd.Dispatcher], object]]:
    url = "https://hooks.example.com/"
    return [
        lambda d: d.subscribe(url, secret=SECRET + "!"),
        lambda d: d.subscribe(url, secret=SECRET[:12]),
        lambda d: d.subscribe(url, secret=SECRET, signature="standard-ed25519"),
        lambda d: d.subscribe(
            url, secret=ED_SECRET[:-8] + "AAAAAAA=", signature="standard-ed25519"
        ),
        lambda d: d.subscribe(url, secret="LEAKCANARY\n" * 3, signature="github"),
        lambda d: d.subscribe(f"https://user:{PASSWORD}@hooks.example.com/"),
        lambda d: d.subscribe(f"https://hooks.example.com/{TOKEN}/ x"),
        lambda d: d.subscribe(f"ftp://hooks.example.com/{TOKEN}"),
        lambda d: d.subscribe(url, headers={"X-Api-Key": API_KEY + "\r\n"}),
        lambda d: d.subscribe(url, headers={"X-Api-Key": " " + API_KEY}),
        lambda d: d.subscribe(url, auth=wd.BearerToken(TOKEN + "\n")),
        lambda d: d.subscribe(url, auth=wd.BearerToken(TOKEN + " x")),
        lambda d: d.subscribe(url, auth=wd.BasicAuth("user", PASSWORD + "\x00")),
        lambda d: d.subscribe(url, auth=wd.ApiKeyHeader("X-Key", API_KEY + "\n")),
        lambda d: d.subscribe(
            url, auth=wd.OAuth2ClientCredentials(f"ftp://idp/{TOKEN}", "id", CLIENT_SECRET)
        ),
        lambda d: d.subscribe(
            url,
            auth=wd.OAuth2ClientCredentials("https://idp.example/t", "id", CLIENT_SECRET + "\n"),
        ),
        lambda d: d.subscribe(url, auth=wd.JWTAuth(JWT_KEY, "RS256")),
        lambda d: d.subscribe(url, auth=wd.JWTAuth(JWT_KEY[:10])),
        lambda d: d.rotate_secret("sub_missing", secret=SECRET),
    ]


def test_error_messages_never_contain_secrets() -> None:
    with wd.Dispatcher() as dispatcher:
        for attempt in _errors():
            with pytest.raises(wd.WebhookDispatchError) as caught:
                attempt(dispatcher)
            assert_clean(str(caught.value), "an error message")
            assert_clean(repr(caught.value), "an error repr")
        with pytest.raises(wd.InvalidSignature) as caught:
            wd.verify(b"{}", {"webhook-id": "m", "webhook-timestamp": "1"}, SECRET, now=1)
        assert_clean(str(caught.value), "verify()'s error")


def test_secrets_stay_out_of_repr_logs_cli_and_attempts(
    tmp_path: Path,
    loopback: Any,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = tmp_path / "hooks.db"
    store = f"sqlite:///{db}"
    loopback.route("/ok", [200])
    loopback.route("/fail", [500], headers={"x-echo": "no secrets here"})
    caplog.set_level(logging.DEBUG)

    auths: list[wd.EndpointAuth | None] = [
        None,
        wd.BearerToken(TOKEN),
        wd.BasicAuth("user", PASSWORD),
        wd.ApiKeyHeader("X-Api-Key", API_KEY),
        wd.JWTAuth(JWT_KEY),
        # a token endpoint that fails: the attempt error must not echo the client secret
        wd.OAuth2ClientCredentials(loopback.url("/fail"), "client", CLIENT_SECRET),
    ]
    with wd.Dispatcher(
        store, allow_private_networks=True, retry=wd.RetryPolicy.fixed([0, 0])
    ) as dispatcher:
        assert_clean(repr(dispatcher) + str(dispatcher), "Dispatcher repr")
        subscriptions = []
        for index, auth in enumerate(auths):
            path = "/fail" if index % 2 else "/ok"
            subscriptions.append(
                dispatcher.subscribe(
                    loopback.url(path),
                    secret=SECRET,
                    auth=auth,
                    headers={"X-Extra": API_KEY} if auth is None else None,
                )
            )
        subscriptions.append(
            dispatcher.subscribe(
                loopback.url("/ok"), secret=ED_SECRET, signature="standard-ed25519"
            )
        )
        dispatcher.rotate_secret(subscriptions[0].id, secret=OLD_SECRET)
        message = dispatcher.publish("order.created", {"id": "ord_1"})
        dispatcher.run_until_idle()

        for subscription in dispatcher.subscriptions():
            assert_clean(repr(subscription) + str(subscription), "Subscription repr")
            assert_clean(repr(subscription.auth), "auth repr")
        for attempt in dispatcher.attempts(message.id):
            assert_clean(repr(attempt) + str(attempt.error), "Attempt")
        for delivery in dispatcher.deliveries():
            assert_clean(repr(delivery), "Delivery")
        assert dispatcher.attempts(message.id)

    assert_clean(caplog.text, "the logs")

    # The receiver saw the credentials (they are meant for it)...
    assert any(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in loopback.received)

    # ...but the stored attempt records do not.
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT * FROM attempts").fetchall()
        deliveries = connection.execute("SELECT * FROM deliveries").fetchall()
    assert rows
    assert_clean(repr(rows), "the attempts table")
    assert_clean(repr(deliveries), "the deliveries table")

    capsys.readouterr()
    commands = [
        ["subscriptions", "list"],
        ["subscriptions", "list", "--json"],
        ["messages", "list"],
        ["messages", "list", "--json"],
        ["deliveries", "list"],
        ["deliveries", "list", "--json"],
        ["attempts", message.id],
        ["attempts", message.id, "--json"],
    ]
    for command in commands:
        assert main(["--store", store, *command]) == 0
        out, err = capsys.readouterr()
        assert_clean(out + err, f"`webhook-dispatch {' '.join(command)}`")
    assert (
        main(
            [
                "--store",
                store,
                "subscriptions",
                "add",
                "https://x.example.com/",
                "--secret",
                SECRET + "!",
            ]
        )
        == 2
    )
    out, err = capsys.readouterr()
    assert_clean(out + err, "a CLI error")
