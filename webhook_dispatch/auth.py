"""Endpoint authentication: `httpx.Auth` objects a subscription stores and applies to
every request (API key, bearer token, Basic, OAuth 2 client credentials, JWT).

Each one also turns into a plain document (``{"type": ..., ...}``) so stores keep it with
the subscription; `register_auth` adds your own types. Credentials never appear in
``repr``, ``str`` or error messages.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import threading
import time
import uuid
import weakref
from collections.abc import AsyncGenerator, Generator, Mapping
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote

import attrs
import httpx

from ._validation import _check_header_name, _check_header_value, validate_url
from .errors import AuthError, InvalidAuth, InvalidHeader, InvalidURL

__all__ = [
    "JWT_ALGORITHMS",
    "ApiKeyHeader",
    "BasicAuth",
    "BearerToken",
    "EndpointAuth",
    "JWTAuth",
    "OAuth2ClientCredentials",
    "UnregisteredAuth",
    "auth_from_document",
    "auth_to_document",
    "register_auth",
]

JWT_ALGORITHMS = ("HS256", "RS256", "ES256", "EdDSA")
"""The JWT signing algorithms `JWTAuth` accepts."""

_TOKEN_RESPONSE_LIMIT = 64 * 1024
_TYPE_NAME = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,63}")
_MAX_CREDENTIAL = 8 * 1024

A = TypeVar("A", bound="type[EndpointAuth]")


def _text(value: object, what: str, *, allow_empty: bool = False, limit: int = 1024) -> str:
    """A credential or setting: printable text, never echoed back in the error."""
    if not isinstance(value, str):
        raise InvalidAuth(f"{what} must be a str, got {type(value).__name__}")
    if not value and not allow_empty:
        raise InvalidAuth(f"{what} must not be empty")
    if len(value) > limit:
        raise InvalidAuth(f"{what} is longer than {limit} characters")
    if not value.isprintable():
        raise InvalidAuth(f"{what} contains control characters or line breaks")
    return value


def _header_value(name: str, value: str, what: str) -> str:
    try:
        return _check_header_value(name, value)
    except InvalidHeader:
        raise InvalidAuth(
            f"{what} cannot be sent in a header (latin-1 text without control characters "
            "or surrounding spaces)"
        ) from None


class EndpointAuth(httpx.Auth):
    """Base of the authentication types a subscription can store (``subscribe(auth=...)``).

    A subclass sets ``type_name``, implements `to_dict` (JSON-safe settings, credentials
    included: the store keeps them beside the signing secret) and `from_dict`, and is
    registered with `register_auth`. ``repr`` shows the type, never a credential.
    """

    type_name: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """The settings to store, without ``"type"`` (added by `auth_to_document`).

        Deliberately abstract: every built-in type implements it, and a custom type must
        (else subscribing with it raises `InvalidAuth`, and nothing is stored)."""
        raise InvalidAuth(f"{type(self).__name__} must implement to_dict() to be stored")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EndpointAuth:
        """Rebuild from what `to_dict` returned; raises `InvalidAuth` for bad data."""
        try:
            return cls(**dict(data))
        except TypeError:
            raise InvalidAuth(f"stored {cls.type_name!r} auth settings are unusable") from None

    def header_names(self) -> tuple[str, ...]:
        """Lowercase names of the headers this auth sets (custom headers may not clash)."""
        return ("authorization",)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<credentials hidden>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EndpointAuth):
            return NotImplemented
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(type(self).__name__)


class ApiKeyHeader(EndpointAuth):
    """Send ``name: value`` with every request (``X-Api-Key: ...``)."""

    type_name = "api_key_header"

    def __init__(self, name: str, value: str) -> None:
        try:
            self.name = _check_header_name(name)
        except InvalidHeader as error:
            raise InvalidAuth(f"ApiKeyHeader name: {error}") from None
        if self.name.lower().startswith("webhook-"):
            raise InvalidAuth("ApiKeyHeader name must not start with 'webhook-'")
        self._value = _header_value(self.name, _text(value, "ApiKeyHeader value"), "the API key")

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "value"}``."""
        return {"name": self.name, "value": self._value}

    def header_names(self) -> tuple[str, ...]:
        """The configured header name, lowercase."""
        return (self.name.lower(),)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add the header."""
        request.headers[self.name] = self._value
        yield request


class BearerToken(EndpointAuth):
    """Send ``Authorization: Bearer <token>`` with every request."""

    type_name = "bearer"

    def __init__(self, token: str) -> None:
        self._token = _text(token, "BearerToken token", limit=_MAX_CREDENTIAL)
        _header_value("authorization", self._token, "the bearer token")
        if " " in self._token:
            raise InvalidAuth("BearerToken token must not contain spaces")

    def to_dict(self) -> dict[str, Any]:
        """``{"token"}``."""
        return {"token": self._token}

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add the Authorization header."""
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


class BasicAuth(EndpointAuth):
    """HTTP Basic authentication (RFC 7617, UTF-8): ``Authorization: Basic ...``."""

    type_name = "basic"

    def __init__(self, username: str, password: str) -> None:
        self.username = _text(username, "BasicAuth username")
        if ":" in self.username:
            raise InvalidAuth("BasicAuth username must not contain ':'")
        self._password = _text(password, "BasicAuth password", allow_empty=True)
        pair = f"{self.username}:{self._password}".encode()
        self._header = "Basic " + base64.b64encode(pair).decode("ascii")

    def to_dict(self) -> dict[str, Any]:
        """``{"username", "password"}``."""
        return {"username": self.username, "password": self._password}

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add the Authorization header."""
        request.headers["Authorization"] = self._header
        yield request


@attrs.define
class _Token:
    value: str
    refresh_at: float


# Tokens are shared by every delivery using the same client credentials in this process
# (subscriptions are re-read from the store for each delivery, so the cache cannot live
# on the auth object). One fetch at a time per credentials and event loop.
_TOKENS: dict[tuple[str, ...], _Token] = {}
_TOKENS_LOCK = threading.Lock()
_FETCH_LOCKS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, ...], asyncio.Lock]
] = weakref.WeakKeyDictionary()


def _fetch_lock(key: tuple[str, ...]) -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    with _TOKENS_LOCK:
        locks = _FETCH_LOCKS.setdefault(loop, {})
        lock = locks.get(key)
        if lock is None:
            lock = locks[key] = asyncio.Lock()
        return lock


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise AuthError(f"the token endpoint's answer is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class OAuth2ClientCredentials(EndpointAuth):
    """OAuth 2 client credentials grant (RFC 6749 section 4.4): fetch a bearer token from
    ``token_url`` and send it as ``Authorization: Bearer ...``.

    The token is cached (shared by every delivery with these credentials in the process)
    until shortly before it expires; a 401 answer drops it and the request is retried
    once with a fresh one. The token request goes through the dispatcher's transport, so
    the network guard covers ``token_url``. A failing token endpoint raises `AuthError`,
    recorded as a retried attempt. ``client_auth="basic"`` sends the client credentials
    as HTTP Basic (the RFC's default), ``"body"`` as form fields.
    """

    type_name = "oauth2_client_credentials"
    refresh_margin: ClassVar[float] = 30.0
    """Seconds before expiry at which a cached token is replaced (at most 10 % of its life)."""
    default_lifetime: ClassVar[float] = 300.0
    """How long a token without ``expires_in`` is kept, in seconds."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | None = None,
        audience: str | None = None,
        client_auth: str = "basic",
    ) -> None:
        try:
            self.token_url = validate_url(token_url)
        except InvalidURL as error:
            raise InvalidAuth(f"OAuth2ClientCredentials token_url: {error}") from None
        self.client_id = _text(client_id, "client_id")
        self._client_secret = _text(client_secret, "client_secret", limit=_MAX_CREDENTIAL)
        self.scope = None if scope is None else _text(scope, "scope")
        self.audience = None if audience is None else _text(audience, "audience")
        if client_auth not in ("basic", "body"):
            raise InvalidAuth("client_auth must be 'basic' or 'body'")
        self.client_auth = client_auth
        digest = hashlib.sha256(self._client_secret.encode()).hexdigest()
        self._key = (
            self.token_url,
            self.client_id,
            digest,
            self.scope or "",
            self.audience or "",
            client_auth,
        )

    def to_dict(self) -> dict[str, Any]:
        """Every constructor argument."""
        document: dict[str, Any] = {
            "token_url": self.token_url,
            "client_id": self.client_id,
            "client_secret": self._client_secret,
        }
        if self.scope is not None:
            document["scope"] = self.scope
        if self.audience is not None:
            document["audience"] = self.audience
        if self.client_auth != "basic":
            document["client_auth"] = self.client_auth
        return document

    # -- the token cache ------------------------------------------------------------
    def _cached(self, stale: str | None) -> str | None:
        with _TOKENS_LOCK:
            token = _TOKENS.get(self._key)
        if token is None or token.value == stale or time.monotonic() >= token.refresh_at:
            return None
        return token.value

    def _forget(self, value: str) -> None:
        with _TOKENS_LOCK:
            token = _TOKENS.get(self._key)
            if token is not None and token.value == value:
                del _TOKENS[self._key]

    def _token_request(self, original: httpx.Request) -> httpx.Request:
        form = {"grant_type": "client_credentials"}
        headers = {"accept": "application/json"}
        if self.scope is not None:
            form["scope"] = self.scope
        if self.audience is not None:
            form["audience"] = self.audience
        if self.client_auth == "basic":
            # RFC 6749 2.3.1: form-encode both before joining them.
            pair = f"{quote(self.client_id, safe='')}:{quote(self._client_secret, safe='')}"
            headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = self.client_id
            form["client_secret"] = self._client_secret
        extensions = {}
        if "timeout" in original.extensions:
            extensions["timeout"] = original.extensions["timeout"]
        return httpx.Request(
            "POST", self.token_url, data=form, headers=headers, extensions=extensions
        )

    async def _accept(self, response: httpx.Response) -> str:
        where = httpx.URL(self.token_url).host
        if not 200 <= response.status_code < 300:
            raise AuthError(
                f"the OAuth 2 token endpoint at {where} answered HTTP {response.status_code}"
            )
        body = await _read_limited(response, _TOKEN_RESPONSE_LIMIT)
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        token = document.get("access_token") if isinstance(document, dict) else None
        if not isinstance(token, str) or not token or not token.isprintable() or " " in token:
            raise AuthError(
                f"the OAuth 2 token endpoint at {where} returned no usable access_token"
            )
        assert isinstance(document, dict)
        token_type = document.get("token_type", "bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise AuthError(f"the OAuth 2 token endpoint at {where} returned a non-bearer token")
        lifetime = document.get("expires_in", self.default_lifetime)
        if isinstance(lifetime, str) and lifetime.isdigit():
            lifetime = int(lifetime)
        if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or lifetime <= 0:
            lifetime = self.default_lifetime
        lifetime = min(float(lifetime), 366 * 86400.0)
        margin = min(self.refresh_margin, lifetime / 10)
        with _TOKENS_LOCK:
            _TOKENS[self._key] = _Token(token, time.monotonic() + lifetime - margin)
        return token

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """Not supported: the token cache is shared by async deliveries (`InvalidAuth`)."""
        raise InvalidAuth("OAuth2ClientCredentials works with async transports only")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Get a token (cached, or from the token endpoint), send; on 401 refresh once."""
        stale: str | None = None
        for _ in range(2):
            token = self._cached(stale)
            if token is None:
                async with _fetch_lock(self._key):
                    token = self._cached(stale)  # another delivery may have fetched it
                    if token is None:
                        token_response = yield self._token_request(request)
                        token = await self._accept(token_response)
            request.headers["Authorization"] = f"Bearer {token}"
            response = yield request
            if response.status_code != 401:
                return
            stale = token
            self._forget(token)


class JWTAuth(EndpointAuth):
    """A short-lived JWT per request in ``Authorization: Bearer <jwt>``.

    ``key`` is the HS256 shared secret (at least 32 characters) or a PEM private key for
    RS256, ES256 (P-256) or EdDSA (Ed25519). Claims: ``iat``, ``exp`` (``iat`` +
    ``lifetime`` seconds), a random ``jti``, and ``iss``/``aud``/``sub`` when given; with
    ``body_hash=True`` also ``body_sha256``, the hex SHA-256 of the request body, which
    binds the token to this payload. Needs the ``[jwt]`` extra (PyJWT, cryptography).
    """

    type_name = "jwt"

    def __init__(
        self,
        key: str,
        algorithm: str = "HS256",
        *,
        issuer: str | None = None,
        audience: str | None = None,
        subject: str | None = None,
        lifetime: int = 60,
        body_hash: bool = False,
        key_id: str | None = None,
    ) -> None:
        try:
            import jwt
        except ImportError:
            raise InvalidAuth("JWTAuth needs PyJWT: pip install 'webhook-dispatch[jwt]'") from None
        if algorithm not in JWT_ALGORITHMS:
            raise InvalidAuth(f"JWTAuth algorithm must be one of {', '.join(JWT_ALGORITHMS)}")
        self.algorithm = algorithm
        if not isinstance(key, str) or not key:
            raise InvalidAuth("JWTAuth key must be a non-empty str (a secret or a PEM key)")
        if algorithm == "HS256" and len(key.encode()) < 32:
            raise InvalidAuth("an HS256 key must be at least 32 bytes long")
        if algorithm != "HS256" and "PRIVATE KEY-----" not in key:
            raise InvalidAuth(f"a {algorithm} key must be a PEM private key")
        self._key = key
        self.issuer = None if issuer is None else _text(issuer, "issuer")
        self.audience = None if audience is None else _text(audience, "audience")
        self.subject = None if subject is None else _text(subject, "subject")
        if isinstance(lifetime, bool) or not isinstance(lifetime, int) or not 1 <= lifetime <= 3600:
            raise InvalidAuth("JWTAuth lifetime must be whole seconds from 1 to 3600")
        self.lifetime = lifetime
        self.body_hash = bool(body_hash)
        self.key_id = None if key_id is None else _text(key_id, "key_id")
        self._jwt = jwt
        try:
            self._signing_key: Any = key if algorithm == "HS256" else _load_private_key(key)
            self.encode({"probe": True})
        except Exception:
            raise InvalidAuth(
                f"JWTAuth key does not work with {algorithm} (wrong key type or malformed PEM)"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """Every constructor argument that differs from its default."""
        document: dict[str, Any] = {"key": self._key, "algorithm": self.algorithm}
        for name in ("issuer", "audience", "subject", "key_id"):
            if getattr(self, name) is not None:
                document[name] = getattr(self, name)
        if self.lifetime != 60:
            document["lifetime"] = self.lifetime
        if self.body_hash:
            document["body_hash"] = True
        return document

    def encode(self, claims: Mapping[str, Any]) -> str:
        """Sign ``claims`` as a JWT with this key and algorithm."""
        headers = {"kid": self.key_id} if self.key_id is not None else None
        token: str = self._jwt.encode(
            dict(claims), self._signing_key, algorithm=self.algorithm, headers=headers
        )
        return token

    def claims_for(self, body: bytes, now: float | None = None) -> dict[str, Any]:
        """The claims of the token sent with ``body`` at ``now`` (default: the time)."""
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iat": issued,
            "exp": issued + self.lifetime,
            "jti": uuid.uuid4().hex,
        }
        for claim, value in (("iss", self.issuer), ("aud", self.audience), ("sub", self.subject)):
            if value is not None:
                claims[claim] = value
        if self.body_hash:
            claims["body_sha256"] = hashlib.sha256(body).hexdigest()
        return claims

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add a fresh token."""
        token = self.encode(self.claims_for(request.content))
        request.headers["Authorization"] = f"Bearer {token}"
        yield request


def _load_private_key(pem: str) -> Any:
    # Parsed once here rather than by PyJWT on every request.
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return load_pem_private_key(pem.encode(), password=None)


class UnregisteredAuth(EndpointAuth):
    """A stored auth whose type is not registered in this process (a custom type, or one
    written by a newer version). Kept as stored; deliveries using it fail with
    `AuthError` (retried) until the type is registered."""

    def __init__(self, type_name: str, data: Mapping[str, Any]) -> None:
        self.stored_type = type_name
        self._data = dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The stored settings, unchanged."""
        return dict(self._data)

    def __repr__(self) -> str:
        return f"UnregisteredAuth({self.stored_type!r}, <credentials hidden>)"

    __str__ = __repr__

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Fail: the type is unknown here."""
        raise AuthError(
            f"auth type {self.stored_type[:64]!r} is not registered in this process "
            "(webhook_dispatch.register_auth), or its stored settings are unusable"
        )


_REGISTRY: dict[str, type[EndpointAuth]] = {}


def register_auth(cls: A) -> A:
    """Register an `EndpointAuth` subclass under its ``type_name`` so stored subscriptions
    can rebuild it; usable as a class decorator. Register it in every process that
    delivers. Raises `InvalidAuth` for a bad or taken name."""
    if not (isinstance(cls, type) and issubclass(cls, EndpointAuth)):
        raise InvalidAuth("register_auth takes a subclass of webhook_dispatch.EndpointAuth")
    name = cls.type_name
    if not isinstance(name, str) or _TYPE_NAME.fullmatch(name) is None:
        raise InvalidAuth("type_name must be 1 to 64 lowercase letters, digits, '.', '_' or '-'")
    if _REGISTRY.get(name, cls) is not cls:
        raise InvalidAuth(f"an auth type named {name!r} is already registered")
    _REGISTRY[name] = cls
    return cls


for _builtin in (ApiKeyHeader, BearerToken, BasicAuth, OAuth2ClientCredentials, JWTAuth):
    register_auth(_builtin)


def auth_to_document(auth: EndpointAuth) -> dict[str, Any]:
    """``{"type": <type_name>, **auth.to_dict()}``: what a store keeps."""
    if isinstance(auth, UnregisteredAuth):
        return {"type": auth.stored_type, **auth.to_dict()}
    return {"type": auth.type_name, **auth.to_dict()}


def auth_from_document(document: Mapping[str, Any]) -> EndpointAuth:
    """Rebuild a stored auth; an unknown type (or unusable data) gives `UnregisteredAuth`,
    so reading subscriptions never fails because of it."""
    data = dict(document)
    name = str(data.pop("type", ""))
    cls = _REGISTRY.get(name)
    if cls is None:
        return UnregisteredAuth(name, data)
    try:
        return cls.from_dict(data)
    except InvalidAuth:
        return UnregisteredAuth(name, data)
