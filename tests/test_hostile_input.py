"""A corpus of hostile or mistaken inputs: each raises its own typed error from the
`WebhookDispatchError` tree, and nothing is stored and nothing is sent."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import webhook_dispatch as wd
from webhook_dispatch.testing import MockReceiver

URL = "https://hooks.example.com/in"
Call = Callable[[wd.Dispatcher], object]


def sub(url: Any = URL, **options: Any) -> Call:
    return lambda dispatcher: dispatcher.subscribe(url, **options)


def auth(make: Callable[[], Any]) -> Call:
    return lambda dispatcher: dispatcher.subscribe(URL, auth=make())


def pub(event_type: Any = "order.created", payload: Any = None, **options: Any) -> Call:
    return lambda dispatcher: dispatcher.publish(event_type, payload, **options)


@pytest.fixture(scope="module")
def garbage_pem(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("pem") / "garbage.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    return str(path)


SUBSCRIBE_CASES: list[tuple[str, Call, type[wd.WebhookDispatchError]]] = [
    # URLs
    ("url-empty", sub(""), wd.InvalidURL),
    ("url-not-str", sub(12345), wd.InvalidURL),
    ("url-ftp", sub("ftp://files.example.com/x"), wd.InvalidURL),
    ("url-javascript", sub("javascript:alert(1)"), wd.InvalidURL),
    ("url-credentials", sub("https://user:hunter2@example.com/"), wd.InvalidURL),
    ("url-fragment", sub("https://example.com/#frag"), wd.InvalidURL),
    ("url-crlf", sub("https://example.com/\r\nHost: evil"), wd.InvalidURL),
    ("url-no-host", sub("https:///path"), wd.InvalidURL),
    ("url-port", sub("http://example.com:99999/"), wd.InvalidURL),
    ("url-space", sub("https://exa mple.com/"), wd.InvalidURL),
    ("url-bad-ipv6", sub("http://[::1/"), wd.InvalidURL),
    ("url-backslash", sub("https://example.com\\@evil.com/"), wd.InvalidURL),
    ("url-huge", sub("https://" + "a" * 3000 + ".com/"), wd.InvalidURL),
    ("url-loopback", sub("http://127.0.0.1:8080/"), wd.InvalidURL),
    ("url-decimal-ip", sub("http://2130706433/"), wd.InvalidURL),
    ("url-hex-ip", sub("http://0x7f.1/"), wd.InvalidURL),
    ("url-octal-ip", sub("http://017700000001/"), wd.InvalidURL),
    ("url-mapped-metadata", sub("http://[::ffff:169.254.169.254]/"), wd.InvalidURL),
    ("url-nat64-private", sub("http://[64:ff9b::a00:1]/"), wd.InvalidURL),
    ("url-zero", sub("http://0.0.0.0/"), wd.InvalidURL),
    # headers
    ("header-name-newline", sub(headers={"X-Bad\n": "v"}), wd.InvalidHeader),
    ("header-value-crlf", sub(headers={"X-Ok": "v\r\nInjected: 1"}), wd.InvalidHeader),
    ("header-host", sub(headers={"Host": "evil.example"}), wd.InvalidHeader),
    ("header-signature", sub(headers={"webhook-signature": "v1,forged"}), wd.InvalidHeader),
    ("header-content-length", sub(headers={"Content-Length": "0"}), wd.InvalidHeader),
    ("header-empty-name", sub(headers={"": "v"}), wd.InvalidHeader),
    ("header-int-value", sub(headers={"X-A": 5}), wd.InvalidHeader),
    ("header-padded", sub(headers={"X-A": " v"}), wd.InvalidHeader),
    ("header-not-mapping", sub(headers="X-A: v"), wd.InvalidHeader),
    ("header-nul", sub(headers={"X-A": "a\x00b"}), wd.InvalidHeader),
    # secrets
    ("secret-empty", sub(secret=""), wd.InvalidSecret),
    ("secret-prefix-only", sub(secret="whsec_"), wd.InvalidSecret),
    ("secret-not-base64", sub(secret="whsec_!!!!!!!!!!!!!!!!!!!!!!!!"), wd.InvalidSecret),
    ("secret-short", sub(secret="whsec_AAAAAAAA"), wd.InvalidSecret),
    ("secret-int", sub(secret=12345), wd.InvalidSecret),
    ("secret-huge", sub(secret="whsec_" + "A" * 100_000), wd.InvalidSecret),
    ("secret-github-short", sub(secret="tiny", signature="github"), wd.InvalidSecret),
    (
        "secret-ed25519-wrong-kind",
        sub(signature="standard-ed25519", secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        wd.InvalidSecret,
    ),
    # event-type patterns
    ("pattern-double-dot", sub(event_types=["order..created"]), wd.InvalidEventType),
    ("pattern-space", sub(event_types=["ord er"]), wd.InvalidEventType),
    ("pattern-bare-str", sub(event_types="order.*"), wd.InvalidEventType),
    ("pattern-empty", sub(event_types=[""]), wd.InvalidEventType),
    ("pattern-inner-globstar", sub(event_types=["a.**.b"]), wd.InvalidEventType),
    ("pattern-int", sub(event_types=[5]), wd.InvalidEventType),
    # auth configurations
    ("auth-str", sub(auth="Bearer abc"), wd.InvalidAuth),
    ("auth-empty-token", auth(lambda: wd.BearerToken("")), wd.InvalidAuth),
    ("auth-token-space", auth(lambda: wd.BearerToken("a b")), wd.InvalidAuth),
    ("auth-token-newline", auth(lambda: wd.BearerToken("abc\r\nX-Evil: 1")), wd.InvalidAuth),
    ("auth-basic-colon", auth(lambda: wd.BasicAuth("a:b", "p")), wd.InvalidAuth),
    ("auth-basic-newline", auth(lambda: wd.BasicAuth("a", "p\n")), wd.InvalidAuth),
    ("auth-key-bad-name", auth(lambda: wd.ApiKeyHeader("Bad Name", "v")), wd.InvalidAuth),
    ("auth-key-reserved", auth(lambda: wd.ApiKeyHeader("webhook-id", "v")), wd.InvalidAuth),
    ("auth-key-empty", auth(lambda: wd.ApiKeyHeader("X-Key", "")), wd.InvalidAuth),
    (
        "auth-oauth-ftp",
        auth(lambda: wd.OAuth2ClientCredentials("ftp://x.example/t", "i", "s")),
        wd.InvalidAuth,
    ),
    (
        "auth-oauth-creds-url",
        auth(lambda: wd.OAuth2ClientCredentials("https://u:p@x.example/t", "i", "s")),
        wd.InvalidAuth,
    ),
    (
        "auth-oauth-no-id",
        auth(lambda: wd.OAuth2ClientCredentials("https://x.example/t", "", "s")),
        wd.InvalidAuth,
    ),
    (
        "auth-oauth-client-auth",
        auth(
            lambda: wd.OAuth2ClientCredentials(
                "https://x.example/t", "i", "s", client_auth="digest"
            )
        ),
        wd.InvalidAuth,
    ),
    (
        "auth-oauth-loopback",
        auth(lambda: wd.OAuth2ClientCredentials("http://127.0.0.1/t", "i", "s")),
        wd.InvalidURL,
    ),
    ("auth-jwt-short-key", auth(lambda: wd.JWTAuth("short")), wd.InvalidAuth),
    ("auth-jwt-alg-none", auth(lambda: wd.JWTAuth("k" * 40, "none")), wd.InvalidAuth),
    ("auth-jwt-lifetime", auth(lambda: wd.JWTAuth("k" * 40, lifetime=0)), wd.InvalidAuth),
    (
        "auth-header-clash",
        sub(auth=wd.BearerToken("t"), headers={"authorization": "x"}),
        wd.InvalidHeader,
    ),
    # signature schemes, TLS, other options
    ("signature-unknown", sub(signature="md5"), wd.ConfigurationError),
    ("signature-none", sub(signature=None), wd.ConfigurationError),
    ("tls-missing-ca", sub(ca_bundle="/nonexistent/ca.pem"), wd.ConfigurationError),
    ("tls-key-without-cert", sub(client_key="/nonexistent/key.pem"), wd.ConfigurationError),
    ("tls-ca-int", sub(ca_bundle=5), wd.ConfigurationError),
    ("timeout-zero", sub(timeout=0), wd.ConfigurationError),
    ("timeout-inf", sub(timeout=float("inf")), wd.ConfigurationError),
    ("timeout-str", sub(timeout="10"), wd.ConfigurationError),
    ("metadata-int", sub(metadata={"a": 1}), wd.ConfigurationError),
]

PUBLISH_CASES: list[tuple[str, Call, type[wd.WebhookDispatchError]]] = [
    ("event-empty", pub(""), wd.InvalidEventType),
    ("event-space", pub("order created"), wd.InvalidEventType),
    ("event-wildcard", pub("order.*"), wd.InvalidEventType),
    ("event-int", pub(5), wd.InvalidEventType),
    ("event-newline", pub("order.created\n"), wd.InvalidEventType),
    ("payload-object", pub(payload=object()), wd.InvalidPayload),
    ("payload-nan", pub(payload=float("nan")), wd.InvalidPayload),
    ("payload-bytes-no-type", pub(payload=b"<xml/>"), wd.InvalidPayload),
    ("payload-too-large", pub(payload="x" * (2 * 1024 * 1024)), wd.PayloadTooLarge),
    ("payload-type-crlf", pub(payload=b"a", content_type="text/plain\r\nX: 1"), wd.InvalidHeader),
    ("payload-type-int", pub(payload=b"a", content_type=5), wd.InvalidHeader),
    (
        "payload-circular",
        pub(payload=(lambda d: (d.__setitem__("me", d), d)[1])({})),
        wd.InvalidPayload,
    ),
    ("idempotency-newline", pub(payload={}, idempotency_key="k\n"), wd.ConfigurationError),
    ("idempotency-empty", pub(payload={}, idempotency_key=""), wd.ConfigurationError),
]

CONSTRUCTOR_CASES: list[tuple[str, dict[str, Any], type[wd.WebhookDispatchError]]] = [
    ("store-redis", {"store": "redis://localhost"}, wd.InvalidStoreURL),
    ("store-sqlite-no-path", {"store": "sqlite://"}, wd.InvalidStoreURL),
    ("store-empty", {"store": ""}, wd.InvalidStoreURL),
    ("store-missing-dir", {"store": "sqlite:///nonexistent_dir/x/y.db"}, wd.InvalidStoreURL),
    ("networks-bare-str", {"allowed_networks": "10.0.0.0/8"}, wd.ConfigurationError),
    ("networks-host-bits", {"allowed_networks": ["10.0.0.1/8"]}, wd.ConfigurationError),
    ("networks-garbage", {"allowed_networks": ["intranet"]}, wd.ConfigurationError),
    ("networks-prefix", {"allowed_networks": ["10.0.0.0/33"]}, wd.ConfigurationError),
    ("private-str", {"allow_private_networks": "yes"}, wd.ConfigurationError),
    ("https-only-int", {"https_only": 1}, wd.ConfigurationError),
    ("concurrency-zero", {"concurrency": 0}, wd.ConfigurationError),
    ("transport-str", {"transport": "aiohttp"}, wd.ConfigurationError),
]


@pytest.fixture
def dispatcher() -> Iterator[tuple[wd.Dispatcher, MockReceiver]]:
    receiver = MockReceiver()
    with wd.Dispatcher(transport=receiver) as instance:
        yield instance, receiver


def _assert_nothing_sent(dispatcher: wd.Dispatcher, receiver: MockReceiver) -> None:
    assert dispatcher.messages() == []
    assert dispatcher.run_until_idle() == 0
    assert receiver.requests == []


def test_corpus_is_large_enough() -> None:
    assert len(SUBSCRIBE_CASES) + len(PUBLISH_CASES) + len(CONSTRUCTOR_CASES) >= 40


@pytest.mark.parametrize(
    ("name", "call", "error"), SUBSCRIBE_CASES, ids=[c[0] for c in SUBSCRIBE_CASES]
)
def test_bad_subscriptions(
    dispatcher: tuple[wd.Dispatcher, MockReceiver],
    name: str,
    call: Call,
    error: type[wd.WebhookDispatchError],
) -> None:
    instance, receiver = dispatcher
    with pytest.raises(error) as caught:
        call(instance)
    assert isinstance(caught.value, wd.WebhookDispatchError)
    assert instance.subscriptions() == []
    instance.publish("order.created", {"id": 1})
    _assert_nothing_sent_except_messages(instance, receiver)


def _assert_nothing_sent_except_messages(dispatcher: wd.Dispatcher, receiver: MockReceiver) -> None:
    assert dispatcher.run_until_idle() == 0
    assert receiver.requests == []
    assert dispatcher.deliveries() == []


def test_bad_ca_bundle_file(
    dispatcher: tuple[wd.Dispatcher, MockReceiver], garbage_pem: str
) -> None:
    instance, receiver = dispatcher
    for option in ("ca_bundle", "client_cert"):
        with pytest.raises(wd.ConfigurationError) as caught:
            instance.subscribe(URL, **{option: garbage_pem})
        assert "not base64" not in str(caught.value)
    assert instance.subscriptions() == []
    _assert_nothing_sent(instance, receiver)


@pytest.mark.parametrize(
    ("name", "call", "error"), PUBLISH_CASES, ids=[c[0] for c in PUBLISH_CASES]
)
def test_bad_publishes(
    dispatcher: tuple[wd.Dispatcher, MockReceiver],
    name: str,
    call: Call,
    error: type[wd.WebhookDispatchError],
) -> None:
    instance, receiver = dispatcher
    instance.subscribe(URL)
    with pytest.raises(error):
        call(instance)
    _assert_nothing_sent(instance, receiver)


@pytest.mark.parametrize(
    ("name", "options", "error"), CONSTRUCTOR_CASES, ids=[c[0] for c in CONSTRUCTOR_CASES]
)
def test_bad_dispatcher_options(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    options: dict[str, Any],
    error: type[wd.WebhookDispatchError],
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error):
        wd.Dispatcher(**options)
    assert list(tmp_path.iterdir()) == []  # no store file was created
