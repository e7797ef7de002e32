"""Endpoint authentication against real servers on 127.0.0.1: static credentials, JWTs
checked with PyJWT, and OAuth 2 client credentials against a loopback token endpoint."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

import webhook_dispatch as wd
from webhook_dispatch import auth as auth_module
from webhook_dispatch.auth import UnregisteredAuth, auth_from_document, auth_to_document
from webhook_dispatch.netguard import NetworkPolicy
from webhook_dispatch.transport import HTTPTransport

jwt = pytest.importorskip("jwt")
serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: E402

Answer = tuple[int, dict[str, str], bytes]


@attrs.define
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes


class Server:
    """A loopback HTTP server whose paths answer through Python functions."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[Seen], Answer]] = {}
        self.seen: list[Seen] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                seen = Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                owner.seen.append(seen)
                route = owner.routes.get(self.path, lambda _: (200, {}, b"ok"))
                status, headers, payload = route(seen)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                return None

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def to(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    instance = Server()
    yield instance
    instance.close()


@pytest.fixture(autouse=True)
def _fresh_token_cache() -> Iterator[None]:
    auth_module._TOKENS.clear()
    yield
    auth_module._TOKENS.clear()


def deliver(
    server: Server, auth: wd.EndpointAuth, *, messages: int = 1, **options: Any
) -> list[wd.Attempt]:
    with wd.Dispatcher(allow_private_networks=True, **options) as dispatcher:
        dispatcher.subscribe(server.url("/hook"), auth=auth)
        sent = [dispatcher.publish("order.created", {"n": n}) for n in range(messages)]
        dispatcher.run_until_idle()
        return [a for m in sent for a in dispatcher.attempts(m.id)]


def test_api_key_header(server: Server) -> None:
    [attempt] = deliver(server, wd.ApiKeyHeader("X-Api-Key", "key-123"))
    assert attempt.status_code == 200
    assert server.to("/hook")[0].headers["x-api-key"] == "key-123"


def test_bearer_token(server: Server) -> None:
    deliver(server, wd.BearerToken("tok_abc"))
    assert server.to("/hook")[0].headers["authorization"] == "Bearer tok_abc"


def test_basic_auth(server: Server) -> None:
    deliver(server, wd.BasicAuth("user", "p\u00e4ss:word"))
    header = server.to("/hook")[0].headers["authorization"]
    assert header.startswith("Basic ")
    assert base64.b64decode(header[6:]).decode() == "user:p\u00e4ss:word"


def test_signature_headers_still_sent_with_auth(server: Server) -> None:
    deliver(server, wd.BearerToken("tok_abc"))
    headers = server.to("/hook")[0].headers
    assert {"webhook-id", "webhook-timestamp", "webhook-signature"} <= set(headers)


# -- JWT ------------------------------------------------------------------------------
def _pem(key: Any) -> str:
    return str(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    )


def _keys() -> dict[str, tuple[str, Any]]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    secret = "s" * 40
    return {
        "HS256": (secret, secret),
        "RS256": (_pem(rsa_key), rsa_key.public_key()),
        "ES256": (_pem(ec_key), ec_key.public_key()),
        "EdDSA": (_pem(ed_key), ed_key.public_key()),
    }


KEYS = _keys()


@pytest.mark.parametrize("algorithm", list(KEYS))
def test_jwt_auth(server: Server, algorithm: str) -> None:
    private, public = KEYS[algorithm]
    auth = wd.JWTAuth(
        private,
        algorithm,
        issuer="shop",
        audience="receiver",
        subject="sub_1",
        body_hash=True,
        key_id="k1",
    )
    deliver(server, auth, messages=2)
    tokens = []
    for seen in server.to("/hook"):
        scheme, _, token = seen.headers["authorization"].partition(" ")
        assert scheme == "Bearer"
        assert jwt.get_unverified_header(token)["kid"] == "k1"
        claims = jwt.decode(token, public, algorithms=[algorithm], audience="receiver")
        assert claims["iss"] == "shop" and claims["sub"] == "sub_1"
        assert claims["exp"] - claims["iat"] == 60
        assert abs(claims["iat"] - time.time()) < 30
        assert claims["body_sha256"] == hashlib.sha256(seen.body).hexdigest()
        tokens.append(claims["jti"])
    assert len(set(tokens)) == 2  # a fresh token per request


@pytest.mark.parametrize(
    ("key", "algorithm"),
    [
        ("short", "HS256"),
        ("", "HS256"),
        (KEYS["RS256"][0], "ES256"),
        ("-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----", "RS256"),
        ("not a pem", "EdDSA"),
        ("s" * 40, "none"),
        ("s" * 40, "HS512"),
    ],
)
def test_bad_jwt_settings(key: str, algorithm: str) -> None:
    with pytest.raises(wd.InvalidAuth) as caught:
        wd.JWTAuth(key, algorithm)
    assert "garbage" not in str(caught.value)


# -- OAuth 2 client credentials ---------------------------------------------------------
class TokenEndpoint:
    """Hands out tokens t1, t2, ...; the hook accepts only the newest one."""

    def __init__(self, server: Server, *, expires_in: float = 3600) -> None:
        self.issued: list[str] = []
        self.expires_in = expires_in
        self.fail_with: int | None = None
        self.requests: list[Seen] = []
        server.routes["/token"] = self.token
        server.routes["/hook"] = self.hook

    def token(self, seen: Seen) -> Answer:
        self.requests.append(seen)
        if self.fail_with is not None:
            return self.fail_with, {}, b'{"error": "server_error"}'
        self.issued.append(f"t{len(self.issued) + 1}")
        document = {
            "access_token": self.issued[-1],
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }
        return 200, {"content-type": "application/json"}, json.dumps(document).encode()

    def hook(self, seen: Seen) -> Answer:
        ok = self.issued and seen.headers.get("authorization") == f"Bearer {self.issued[-1]}"
        return (200, {}, b"ok") if ok else (401, {}, b"who are you")


def oauth(server: Server, **options: Any) -> wd.OAuth2ClientCredentials:
    return wd.OAuth2ClientCredentials(
        server.url("/token"), "client-1", "client-secret-1", scope="hooks:write", **options
    )


def test_oauth2_one_token_for_many_deliveries(server: Server) -> None:
    endpoint = TokenEndpoint(server)
    attempts = deliver(server, oauth(server, audience="https://api.example"), messages=10)
    assert [a.status_code for a in attempts] == [200] * 10
    assert len(endpoint.requests) == 1
    [token_request] = endpoint.requests
    basic = token_request.headers["authorization"].removeprefix("Basic ")
    assert base64.b64decode(basic).decode() == "client-1:client-secret-1"
    form = httpx.QueryParams(token_request.body.decode())
    assert form["grant_type"] == "client_credentials"
    assert form["scope"] == "hooks:write" and form["audience"] == "https://api.example"


def test_oauth2_client_credentials_in_the_body(server: Server) -> None:
    endpoint = TokenEndpoint(server)
    deliver(server, oauth(server, client_auth="body"))
    form = httpx.QueryParams(endpoint.requests[0].body.decode())
    assert form["client_id"] == "client-1" and form["client_secret"] == "client-secret-1"
    assert "authorization" not in endpoint.requests[0].headers


def test_oauth2_token_is_shared_across_dispatchers_in_the_process(server: Server) -> None:
    endpoint = TokenEndpoint(server)
    deliver(server, oauth(server), messages=2)
    deliver(server, oauth(server), messages=2)
    assert len(endpoint.requests) == 1


def test_oauth2_refreshes_after_expiry(server: Server) -> None:
    endpoint = TokenEndpoint(server, expires_in=1)
    deliver(server, oauth(server), messages=3)
    assert len(endpoint.requests) == 1
    time.sleep(1.0)  # past expires_in minus the refresh margin (10 % of a second)
    attempts = deliver(server, oauth(server), messages=3)
    assert [a.status_code for a in attempts] == [200] * 3
    assert endpoint.issued == ["t1", "t2"]


def test_oauth2_refreshes_once_on_401(server: Server) -> None:
    endpoint = TokenEndpoint(server)
    deliver(server, oauth(server))
    endpoint.issued.append("t-revoked-then-replaced")  # the hook now refuses t1
    [attempt] = deliver(server, oauth(server))
    assert attempt.status_code == 200
    assert len(endpoint.requests) == 2  # one refresh
    hooks = server.to("/hook")
    assert [h.headers["authorization"] for h in hooks[-2:]] == ["Bearer t1", "Bearer t3"]


def test_oauth2_gives_up_after_one_refresh(server: Server) -> None:
    endpoint = TokenEndpoint(server)
    server.routes["/hook"] = lambda seen: (401, {}, b"never")
    [attempt] = deliver(server, oauth(server), retry=wd.RetryPolicy.fixed([0]))
    assert attempt.status_code == 401
    assert len(endpoint.requests) == 2


def test_oauth2_token_endpoint_failure_is_a_retried_attempt(server: Server) -> None:
    endpoint = TokenEndpoint(server)
    endpoint.fail_with = 503
    with wd.Dispatcher(
        allow_private_networks=True, retry=wd.RetryPolicy.fixed([0, 3600])
    ) as dispatcher:
        dispatcher.subscribe(server.url("/hook"), auth=oauth(server))
        message = dispatcher.publish("order.created", {"n": 1})
        dispatcher.run_until_idle()
        [attempt] = dispatcher.attempts(message.id)
        [delivery] = dispatcher.deliveries(message_id=message.id)
    assert attempt.error_kind is wd.ErrorKind.AUTH
    assert "HTTP 503" in str(attempt.error)
    assert "client-secret-1" not in str(attempt.error)
    assert delivery.status is wd.DeliveryStatus.PENDING  # retried on the schedule
    assert server.to("/hook") == []


@pytest.mark.parametrize(
    "body",
    [b"not json", b"{}", b'{"access_token": ""}', b'{"access_token": "x", "token_type": "mac"}'],
)
def test_oauth2_unusable_token_answers(server: Server, body: bytes) -> None:
    server.routes["/token"] = lambda seen: (200, {"content-type": "application/json"}, body)
    [attempt] = deliver(server, oauth(server), retry=wd.RetryPolicy.fixed([0]))
    assert attempt.error_kind is wd.ErrorKind.AUTH


def test_oauth2_token_url_is_guarded(server: Server) -> None:
    with wd.Dispatcher() as dispatcher, pytest.raises(wd.InvalidURL, match="token_url"):
        dispatcher.subscribe("https://hooks.example.com/", auth=oauth(server))

    # A name for the token endpoint that resolves to loopback is blocked at delivery.
    def resolve(host: str, port: int) -> list[str]:
        return ["93.184.216.34"] if host == "hooks.example.com" else ["127.0.0.1"]

    transport = HTTPTransport(network_policy=NetworkPolicy(), resolve=resolve)
    auth = wd.OAuth2ClientCredentials("http://idp.example.com/token", "c", "s")
    with wd.Dispatcher(transport=transport) as dispatcher:
        dispatcher.subscribe("https://hooks.example.com/", auth=auth)
        message = dispatcher.publish("order.created", {})
        dispatcher.run_until_idle()
        [attempt] = dispatcher.attempts(message.id)
    assert attempt.error_kind is wd.ErrorKind.BLOCKED
    assert "idp.example.com" in str(attempt.error)


# -- persistence and extension -----------------------------------------------------------
ALL_AUTHS = [
    wd.ApiKeyHeader("X-Api-Key", "key-123"),
    wd.BearerToken("tok_abc"),
    wd.BasicAuth("user", "pw"),
    wd.OAuth2ClientCredentials(
        "https://idp.example.com/token", "id", "secret", scope="a b", audience="x"
    ),
    wd.JWTAuth(KEYS["ES256"][0], "ES256", issuer="me", lifetime=30, body_hash=True),
]


@pytest.mark.parametrize("auth", ALL_AUTHS, ids=lambda a: type(a).__name__)
def test_auth_survives_a_sqlite_restart(tmp_path: Path, auth: wd.EndpointAuth) -> None:
    store = f"sqlite:///{tmp_path / 'hooks.db'}"
    with wd.Dispatcher(store) as dispatcher:
        subscription = dispatcher.subscribe("https://hooks.example.com/", auth=auth)
    with wd.Dispatcher(store) as reopened:
        assert reopened.get_subscription(subscription.id).auth == auth
    assert auth_from_document(auth_to_document(auth)) == auth


@pytest.mark.parametrize("auth", ALL_AUTHS, ids=lambda a: type(a).__name__)
def test_repr_hides_credentials(auth: wd.EndpointAuth) -> None:
    for secret in ("key-123", "tok_abc", "pw", "secret", "PRIVATE"):
        assert secret not in repr(auth) and secret not in str(auth)


@wd.register_auth
class HmacQueryAuth(wd.EndpointAuth):
    """A user-defined auth: a header derived from a shared key."""

    type_name = "test.hmac_header"

    def __init__(self, key: str) -> None:
        self.key = key

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key}

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:  # type: ignore[override]
        digest = hashlib.sha256(self.key.encode() + request.content).hexdigest()
        request.headers["X-Body-Mac"] = digest
        yield request


def test_custom_auth_is_registered_stored_and_applied(server: Server, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'hooks.db'}"
    with wd.Dispatcher(store, allow_private_networks=True) as dispatcher:
        dispatcher.subscribe(server.url("/hook"), auth=HmacQueryAuth("k"))
    with wd.Dispatcher(store, allow_private_networks=True) as reopened:
        reopened.publish("order.created", {})
        reopened.run_until_idle()
    seen = server.to("/hook")[0]
    assert seen.headers["x-body-mac"] == hashlib.sha256(b"k" + seen.body).hexdigest()


def test_unregistered_auth_type_fails_deliveries_as_auth_errors(server: Server) -> None:
    stored = auth_from_document({"type": "nobody.knows", "key": "x"})
    assert isinstance(stored, UnregisteredAuth)
    assert auth_to_document(stored) == {"type": "nobody.knows", "key": "x"}
    [attempt] = deliver(server, stored, retry=wd.RetryPolicy.fixed([0]))
    assert attempt.error_kind is wd.ErrorKind.AUTH
    assert server.to("/hook") == []


def test_register_auth_refuses_bad_types() -> None:
    with pytest.raises(wd.InvalidAuth):
        wd.register_auth(int)  # type: ignore[type-var]

    class Nameless(wd.EndpointAuth):
        """No type_name."""

    with pytest.raises(wd.InvalidAuth):
        wd.register_auth(Nameless)

    class Taken(wd.EndpointAuth):
        """Reuses a built-in name."""

        type_name = "bearer"

    with pytest.raises(wd.InvalidAuth):
        wd.register_auth(Taken)


def test_auth_header_may_not_clash_with_custom_headers() -> None:
    with wd.Dispatcher() as dispatcher:
        with pytest.raises(wd.InvalidHeader):
            dispatcher.subscribe(
                "https://hooks.example.com/",
                auth=wd.BearerToken("t"),
                headers={"Authorization": "Bearer other"},
            )
        with pytest.raises(wd.InvalidHeader):
            dispatcher.subscribe(
                "https://hooks.example.com/",
                auth=wd.ApiKeyHeader("X-Key", "v"),
                headers={"x-key": "w"},
            )
        assert dispatcher.subscriptions() == []


def test_plain_httpx_auth_is_refused() -> None:
    with wd.Dispatcher() as dispatcher, pytest.raises(wd.InvalidAuth, match="BasicAuth"):
        dispatcher.subscribe("https://hooks.example.com/", auth=httpx.BasicAuth("u", "p"))  # type: ignore[arg-type]
