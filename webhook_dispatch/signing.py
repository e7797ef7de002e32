"""Signing secrets and signature schemes (Standard Webhooks v1 and v1a, GitHub and Stripe
styles, custom `Signer`s), and `verify()` for receivers.

Pure functions of their inputs and a clock: no I/O, cheap enough for the delivery hot path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

import httpx

from .clock import utc
from .errors import ConfigurationError, InvalidSecret, InvalidSignature

__all__ = [
    "DEFAULT_SIGNATURE",
    "DEFAULT_TOLERANCE",
    "MAX_SECRET_BYTES",
    "MIN_SECRET_BYTES",
    "PUBLIC_KEY_PREFIX",
    "SECRET_KEY_PREFIX",
    "SECRET_PREFIX",
    "SIGNATURE_HEADERS",
    "WEBHOOK_ID_HEADER",
    "WEBHOOK_SIGNATURE_HEADER",
    "WEBHOOK_TIMESTAMP_HEADER",
    "Ed25519Signer",
    "EventHeaders",
    "GitHubSigner",
    "HeadersLike",
    "Signer",
    "StandardSigner",
    "StripeSigner",
    "generate_keypair",
    "generate_secret",
    "get_signer",
    "parse_secret",
    "public_key",
    "register_signer",
    "signature_header_names",
    "sign",
    "sign_all",
    "signer_names",
    "verify",
]

WEBHOOK_ID_HEADER = "webhook-id"
"""Header carrying the message id; identical on every retry of a message."""

WEBHOOK_TIMESTAMP_HEADER = "webhook-timestamp"
"""Header carrying the attempt time as integer Unix seconds."""

WEBHOOK_SIGNATURE_HEADER = "webhook-signature"
"""Header carrying space-separated ``v1,<base64>`` signatures."""

SIGNATURE_HEADERS = (WEBHOOK_ID_HEADER, WEBHOOK_TIMESTAMP_HEADER, WEBHOOK_SIGNATURE_HEADER)
"""The three Standard Webhooks header names, lower case, in the order they are checked."""

SECRET_PREFIX = "whsec_"
"""Prefix of Standard Webhooks symmetric secrets; optional when a secret is parsed."""

SECRET_KEY_PREFIX = "whsk_"
"""Prefix of Standard Webhooks ed25519 secret keys: base64 of the 32-byte seed followed by
the 32-byte public key."""

PUBLIC_KEY_PREFIX = "whpk_"
"""Prefix of Standard Webhooks ed25519 public keys: base64 of the 32-byte public key."""

DEFAULT_SIGNATURE = "standard"
"""The signature scheme subscriptions use unless told otherwise (Standard Webhooks v1)."""

MIN_SECRET_BYTES = 16
"""Shortest decoded key `parse_secret()` accepts."""

MAX_SECRET_BYTES = 128
"""Longest decoded key `parse_secret()` accepts."""

DEFAULT_TOLERANCE = 300
"""Seconds a `webhook-timestamp` may differ from now, in either direction."""

HeadersLike: TypeAlias = (
    Mapping[str, str] | httpx.Headers | Iterable[tuple[str | bytes, str | bytes]]
)
"""What `verify()` reads headers from: a mapping, `httpx.Headers`, or (name, value) pairs."""

_GENERATED_MIN_BYTES = 24
_GENERATED_MAX_BYTES = 64
# 4 * ceil(MAX_SECRET_BYTES / 3): anything longer cannot decode to an acceptable key,
# so hostile megabyte "secrets" are refused before any regex or decoding work.
_MAX_ENCODED_SECRET_LENGTH = 4 * -(-MAX_SECRET_BYTES // 3)
_BASE64_SECRET = re.compile(r"[A-Za-z0-9+/]+={0,2}")

# Well above any real header (ids are ~30 chars, a signature entry 47) and about the
# limit HTTP servers put on a header line; refusing early bounds the work per request.
_MAX_HEADER_LENGTH = 8192
_MAX_TIMESTAMP_DIGITS = 18
_TIMESTAMP = re.compile(f"[0-9]{{1,{_MAX_TIMESTAMP_DIGITS}}}")
# Timestamps (and `now`, in Unix seconds) lie below this in magnitude, so every
# difference verify() computes is an ordinary float and never overflows.
_TIMESTAMP_LIMIT = 10**_MAX_TIMESTAMP_DIGITS
_SHA256_SIZE = 32
_MAX_DECODE_CACHE = 1024


def generate_secret(nbytes: int = 24) -> str:
    """Return a new random secret: ``"whsec_"`` + standard base64 of ``nbytes`` random bytes.

    ``nbytes`` must be between 24 and 64 inclusive, otherwise `InvalidSecret` is raised.
    """
    if (
        not isinstance(nbytes, int)
        or isinstance(nbytes, bool)
        or not _GENERATED_MIN_BYTES <= nbytes <= _GENERATED_MAX_BYTES
    ):
        raise InvalidSecret(
            f"nbytes must be an integer from {_GENERATED_MIN_BYTES} to {_GENERATED_MAX_BYTES}"
        )
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode("ascii")


def parse_secret(secret: str) -> bytes:
    """Return the HMAC key a Standard Webhooks secret stands for.

    Accepts the secret with or without the ``whsec_`` prefix and with or without base64
    ``=`` padding. Raises `InvalidSecret` when it is not a string, is empty, holds
    characters outside the standard base64 alphabet (whitespace included), does not
    decode, or decodes to fewer than 16 or more than 128 bytes. The error message never
    contains the secret.
    """
    if not isinstance(secret, str):
        raise InvalidSecret(f"a secret must be a str, not {type(secret).__name__}")
    return _decode_secret(secret)


@lru_cache(maxsize=_MAX_DECODE_CACHE)
def _decode_secret(secret: str) -> bytes:
    # Cached because the same few secrets are parsed for every delivery; failures raise
    # and so are never cached.
    encoded = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    if not encoded:
        raise InvalidSecret("the secret is empty")
    if len(encoded) > _MAX_ENCODED_SECRET_LENGTH + 2:
        raise InvalidSecret(f"the secret is longer than {MAX_SECRET_BYTES} bytes")
    if _BASE64_SECRET.fullmatch(encoded) is None:
        raise InvalidSecret("the secret has characters outside the standard base64 alphabet")
    unpadded = encoded.rstrip("=")
    if len(unpadded) % 4 == 1:
        raise InvalidSecret("the secret is not valid base64 (truncated)")
    try:
        key = base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), validate=True)
    except binascii.Error:
        raise InvalidSecret("the secret is not valid base64") from None
    if len(key) < MIN_SECRET_BYTES:
        raise InvalidSecret(f"the secret decodes to fewer than {MIN_SECRET_BYTES} bytes")
    if len(key) > MAX_SECRET_BYTES:
        raise InvalidSecret(f"the secret decodes to more than {MAX_SECRET_BYTES} bytes")
    return key


@lru_cache(maxsize=_MAX_DECODE_CACHE)
def _keyed_hmac(secret: str) -> hmac.HMAC:
    # Copying a pre-keyed HMAC skips hashing the padded key twice per signature: about
    # 30% faster than a fresh hmac.new() for typical bodies (measured).
    return hmac.new(_decode_secret(secret), digestmod=hashlib.sha256)


def _hmac_for(secret: str) -> hmac.HMAC:
    if not isinstance(secret, str):
        raise InvalidSecret(f"a secret must be a str, not {type(secret).__name__}")
    return _keyed_hmac(secret).copy()


def _checked_timestamp(timestamp: int) -> int:
    # Only what verify() accepts back: a bool, float or 5,000-digit int would sign bytes
    # no receiver can check (or fail deep inside str()).
    given: object = timestamp  # checked at run time too: callers may not use mypy
    if isinstance(given, int) and not isinstance(given, bool) and 0 <= given < _TIMESTAMP_LIMIT:
        return given
    raise ConfigurationError(
        f"timestamp must be integer Unix seconds from 0 to 10**{_MAX_TIMESTAMP_DIGITS} - 1, "
        f"not {_describe_number(given)}"
    )


def _describe_number(value: object) -> str:
    # For error messages: a number's repr while it is short, never str() of a huge int
    # (which is slow, and raises past 4,300 digits); other values by their type only.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"a {type(value).__name__}"
    if isinstance(value, float) or -(10**30) < value < 10**30:
        return repr(value)
    return f"an int of about {int(value.bit_length() * math.log10(2))} digits"


def _signed_prefix(msg_id: str, timestamp: int) -> bytes:
    return f"{msg_id}.{_checked_timestamp(timestamp)}.".encode()


def _signature(secret: str, prefix: bytes, body: bytes) -> str:
    if isinstance(secret, str) and secret.startswith(SECRET_KEY_PREFIX):
        signature = _ed25519_private(secret).sign(prefix + body)
        return "v1a," + binascii.b2a_base64(signature, newline=False).decode("ascii")
    mac = _hmac_for(secret)
    mac.update(prefix)
    mac.update(body)
    return "v1," + binascii.b2a_base64(mac.digest(), newline=False).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the Standard Webhooks v1 signature ``"v1,<base64>"`` of one request.

    The signature is base64 of HMAC-SHA256, keyed with `parse_secret(secret)`, over
    ``f"{msg_id}.{timestamp}.".encode() + body``; ``timestamp`` is integer Unix seconds.
    With a ``whsk_`` ed25519 secret key it is ``"v1a,<base64>"``, the ed25519 signature of
    the same bytes. Raises `InvalidSecret` for an unusable secret, and
    `ConfigurationError` for a ``timestamp`` that is not an ``int`` from 0 to
    ``10**18 - 1`` (what `verify` accepts).
    """
    return _signature(secret, _signed_prefix(msg_id, timestamp), body)


def sign_all(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """Return space-separated v1 signatures, one per secret, in the order given.

    Used during a secret rotation so receivers holding either the old or the new secret
    accept the request. A lone ``str`` counts as one secret. Raises `InvalidSecret` when
    no secret is given or any secret is unusable, and `ConfigurationError` for a bad
    ``timestamp`` (as `sign` does).
    """
    if isinstance(secrets, str):
        secrets = (secrets,)
    if not secrets:
        raise InvalidSecret("at least one secret is needed to sign")
    prefix = _signed_prefix(msg_id, timestamp)
    return " ".join([_signature(secret, prefix, body) for secret in secrets])


def verify(
    body: bytes | str,
    headers: HeadersLike,
    secret: str | Sequence[str],
    tolerance: int = DEFAULT_TOLERANCE,
    *,
    now: datetime | float | None = None,
) -> None:
    """Check that a received webhook was signed with ``secret``; return ``None`` if so.

    Reads ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` (names are
    case-insensitive) from ``headers``: a mapping, `httpx.Headers`, or (name, value)
    pairs of ``str`` or ``bytes`` (raw ASGI headers work). The timestamp must lie within
    ``tolerance`` seconds of ``now`` (default: the system clock; a naive datetime is
    taken as UTC) in either direction, and at least one entry of the signature header
    must match one of the secrets (several during a rotation): ``v1,<base64>`` entries
    are checked against ``whsec_`` secrets, ``v1a,<base64>`` (ed25519) entries against
    ``whpk_`` public keys (or ``whsk_`` secret keys). Other versions are ignored.

    Raises `InvalidSignature`, and only that, for anything wrong with the request:
    missing, duplicated, non-ASCII or oversized headers, a malformed or out-of-tolerance
    timestamp, no matching signature, or a body that is neither bytes nor str. A
    malformed ``secret`` is the caller's bug and raises `InvalidSecret`; a negative
    ``tolerance`` or an unusable ``now`` raises `ConfigurationError`.

    ``tolerance`` is any finite, non-negative ``int`` or ``float`` (not a bool; one larger
    than any timestamp accepts every timestamp). ``now`` is a datetime, ``None``, or
    ``int``/``float`` Unix seconds of magnitude below ``10**18``; NaN, infinities, bools
    and larger numbers raise `ConfigurationError`.
    """
    # Caller mistakes surface first, whatever the request looks like.
    macs, public_keys = _verifiers_for(secret)
    current = _now_seconds(now)
    given_tolerance: object = tolerance  # checked at run time too: callers may not use mypy
    # Comparisons between int and float are exact in Python and never overflow, so even
    # 10**400 is judged here without being converted.
    if (
        isinstance(given_tolerance, bool)
        or not isinstance(given_tolerance, (int, float))
        or not 0 <= given_tolerance < math.inf
    ):
        raise ConfigurationError(
            "tolerance must be a finite, non-negative number of seconds, "
            f"not {_describe_number(given_tolerance)}"
        )

    payload = _body_bytes(body)
    msg_id, timestamp_text, signature_text = _read_headers(headers)

    if _TIMESTAMP.fullmatch(timestamp_text) is None:
        raise InvalidSignature(
            f"the {WEBHOOK_TIMESTAMP_HEADER} header is not a non-negative integer "
            f"of Unix seconds with at most {_MAX_TIMESTAMP_DIGITS} digits"
        )
    timestamp = int(timestamp_text)
    # Both sides are below 10**18 in magnitude (now checked, the timestamp by its digits),
    # so the age is an ordinary float; tolerance is only compared with it, never added,
    # so a huge one cannot overflow, and it is printed only when below the age.
    age = current - timestamp
    if age > tolerance:
        raise InvalidSignature(
            f"the {WEBHOOK_TIMESTAMP_HEADER} is too old: {int(age)} s "
            f"before now, tolerance is {tolerance} s"
        )
    if -age > tolerance:
        raise InvalidSignature(
            f"the {WEBHOOK_TIMESTAMP_HEADER} is too new: {int(-age)} s "
            f"after now, tolerance is {tolerance} s"
        )

    prefix = _signed_prefix(msg_id, timestamp)
    expected: list[bytes] = []
    for mac in macs:
        mac.update(prefix)
        mac.update(payload)
        expected.append(mac.digest())

    signed = prefix + payload if public_keys else b""
    for entry in signature_text.split():
        version, _, encoded = entry.partition(",")
        if version not in ("v1", "v1a"):
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        if version == "v1" and len(candidate) == _SHA256_SIZE:
            for digest in expected:
                if hmac.compare_digest(digest, candidate):
                    return
        elif version == "v1a" and len(candidate) == _ED25519_SIGNATURE_SIZE:
            for key in public_keys:
                if _ed25519_verifies(key, candidate, signed):
                    return
    kinds = " or ".join(kind for kind, present in (("v1", macs), ("v1a", public_keys)) if present)
    raise InvalidSignature(
        f"no {kinds} signature in the webhook-signature header matches the secret"
    )


def _verifiers_for(secret: str | Sequence[str]) -> tuple[list[hmac.HMAC], list[Any]]:
    given: object = secret  # checked at run time too: callers may not use mypy
    if isinstance(given, str):
        given = [given]
    elif isinstance(given, (bytes, bytearray)) or not isinstance(given, Sequence):
        raise InvalidSecret(
            f"secret must be a str or a sequence of str, not {type(given).__name__}"
        )
    if not given:
        raise InvalidSecret("at least one secret is needed to verify")
    macs: list[hmac.HMAC] = []
    public_keys: list[Any] = []
    for one in given:
        if isinstance(one, str) and one.startswith(PUBLIC_KEY_PREFIX):
            public_keys.append(_ed25519_public(one))
        elif isinstance(one, str) and one.startswith(SECRET_KEY_PREFIX):
            public_keys.append(_ed25519_private(one).public_key())
        else:
            macs.append(_hmac_for(one))
    return macs, public_keys


def _now_seconds(now: datetime | float | None) -> float:
    if now is None:
        return time.time()
    if isinstance(now, datetime):
        return utc(now).timestamp()
    given: object = now  # checked at run time too: callers may not use mypy
    # The chained comparison is exact for any int (no float conversion, so no
    # OverflowError) and false for NaN; float() below is then safe.
    if (
        isinstance(given, (int, float))
        and not isinstance(given, bool)
        and -_TIMESTAMP_LIMIT < given < _TIMESTAMP_LIMIT
    ):
        return float(given)
    raise ConfigurationError(
        "now must be a datetime, None, or Unix seconds of magnitude below "
        f"10**{_MAX_TIMESTAMP_DIGITS}, not {_describe_number(given)}"
    )


def _body_bytes(body: bytes | str) -> bytes:
    given: object = body  # checked at run time too: frameworks hand over many types
    if isinstance(given, bytes):
        return given
    if isinstance(given, str):
        try:
            return given.encode()
        except UnicodeEncodeError:
            raise InvalidSignature("the body is a str that cannot be encoded as UTF-8") from None
    if isinstance(given, (bytearray, memoryview)):
        return bytes(given)
    raise InvalidSignature(f"the body must be bytes or str, not {type(given).__name__}")


def _header_pairs(headers: HeadersLike) -> Iterable[tuple[object, object]]:
    # httpx.Headers.items() joins repeated headers with ", ", which would hide a
    # duplicated webhook-id; multi_items() shows each one.
    if isinstance(headers, httpx.Headers):
        return headers.multi_items()
    items = getattr(headers, "items", None)
    if callable(items):
        return items()  # type: ignore[no-any-return]
    return headers  # type: ignore[return-value]


def _read_headers(headers: HeadersLike) -> tuple[str, str, str]:
    found: dict[str, list[str]] = {name: [] for name in SIGNATURE_HEADERS}
    try:
        pairs = iter(_header_pairs(headers))
    except TypeError:
        raise InvalidSignature("headers must be a mapping or (name, value) pairs") from None
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InvalidSignature("headers must be a mapping or (name, value) pairs")
        name, value = pair
        wanted = _header_name(name)
        if wanted is not None:
            found[wanted].append(_header_value(wanted, value))

    for name in SIGNATURE_HEADERS:
        if not found[name]:
            raise InvalidSignature(f"the {name} header is missing")
    for name in (WEBHOOK_ID_HEADER, WEBHOOK_TIMESTAMP_HEADER):
        if len(found[name]) > 1:
            raise InvalidSignature(f"the {name} header appears more than once")
    # Several signature headers are harmless (any one match suffices), so join them.
    signature_text = " ".join(found[WEBHOOK_SIGNATURE_HEADER])
    if len(signature_text) > _MAX_HEADER_LENGTH:
        raise InvalidSignature(f"the {WEBHOOK_SIGNATURE_HEADER} header is too long")
    return found[WEBHOOK_ID_HEADER][0], found[WEBHOOK_TIMESTAMP_HEADER][0], signature_text


def _header_name(name: object) -> str | None:
    if isinstance(name, (bytes, bytearray)):
        if len(name) > len(WEBHOOK_SIGNATURE_HEADER):
            return None
        name = bytes(name).decode("latin-1")
    if not isinstance(name, str):
        raise InvalidSignature(f"a header name is a {type(name).__name__}, not str or bytes")
    # Cheap length test first: most headers are not ours, and str.lower() on a hostile
    # megabyte name would be wasted work.
    if len(name) > len(WEBHOOK_SIGNATURE_HEADER) or not name.isascii():
        # Unicode case mapping would fold e.g. KELVIN SIGN to "k": only ASCII names count.
        return None
    lowered = name.lower()
    return lowered if lowered in SIGNATURE_HEADERS else None


def _header_value(name: str, value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        if len(value) > _MAX_HEADER_LENGTH:
            raise InvalidSignature(f"the {name} header is too long")
        try:
            value = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            raise InvalidSignature(f"the {name} header is not ASCII") from None
    if not isinstance(value, str):
        raise InvalidSignature(f"the {name} header is a {type(value).__name__}, not str or bytes")
    if len(value) > _MAX_HEADER_LENGTH:
        raise InvalidSignature(f"the {name} header is too long")
    # HTTP strips surrounding whitespace from field values; anything else outside
    # printable ASCII cannot be what the sender signed, so refuse it plainly.
    value = value.strip(" \t")
    if not value:
        raise InvalidSignature(f"the {name} header is empty")
    if not value.isascii() or not value.isprintable():
        raise InvalidSignature(f"the {name} header has non-printable or non-ASCII characters")
    return value


# -- ed25519 (Standard Webhooks v1a) ----------------------------------------------------
_ED25519_KEY_SIZE = 32
_ED25519_SIGNATURE_SIZE = 64
_ED25519_HINT = (
    "ed25519 signatures (v1a) need the cryptography package: "
    "pip install 'webhook-dispatch[ed25519]'"
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )


def _ed25519_module() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - the test extra installs cryptography
        raise ConfigurationError(_ED25519_HINT) from None
    return ed25519


def _decode_key(text: str, prefix: str, size: int, what: str) -> bytes:
    encoded = text[len(prefix) :]
    if len(encoded) > 4 * -(-size // 3) + 2 or _BASE64_SECRET.fullmatch(encoded) is None:
        raise InvalidSecret(f"the {what} is not base64 of {size} bytes after '{prefix}'")
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise InvalidSecret(f"the {what} is not valid base64") from None
    if len(raw) != size:
        raise InvalidSecret(f"the {what} must decode to {size} bytes")
    return raw


@lru_cache(maxsize=_MAX_DECODE_CACHE)
def _ed25519_private(secret_key: str) -> Ed25519PrivateKey:
    if not isinstance(secret_key, str) or not secret_key.startswith(SECRET_KEY_PREFIX):
        raise InvalidSecret(f"an ed25519 secret key is a str starting with {SECRET_KEY_PREFIX!r}")
    raw = _decode_key(secret_key, SECRET_KEY_PREFIX, 2 * _ED25519_KEY_SIZE, "ed25519 secret key")
    ed25519 = _ed25519_module()
    private: Ed25519PrivateKey = ed25519.Ed25519PrivateKey.from_private_bytes(
        raw[:_ED25519_KEY_SIZE]
    )
    if _raw_public(private.public_key()) != raw[_ED25519_KEY_SIZE:]:
        raise InvalidSecret("the ed25519 secret key's public half does not match its seed")
    return private


@lru_cache(maxsize=_MAX_DECODE_CACHE)
def _ed25519_public(public: str) -> Ed25519PublicKey:
    if not isinstance(public, str) or not public.startswith(PUBLIC_KEY_PREFIX):
        raise InvalidSecret(f"an ed25519 public key is a str starting with {PUBLIC_KEY_PREFIX!r}")
    raw = _decode_key(public, PUBLIC_KEY_PREFIX, _ED25519_KEY_SIZE, "ed25519 public key")
    key: Ed25519PublicKey = _ed25519_module().Ed25519PublicKey.from_public_bytes(raw)
    return key


def _raw_public(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _ed25519_verifies(key: Ed25519PublicKey, signature: bytes, signed: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature as BadSignature

    try:
        key.verify(signature, signed)
    except BadSignature:
        return False
    return True


def generate_keypair() -> tuple[str, str]:
    """Return a new ed25519 key pair for Standard Webhooks v1a: ``(secret_key, public_key)``.

    The ``whsk_`` secret key signs (pass it as ``secret=`` with
    ``signature="standard-ed25519"``); the ``whpk_`` public key is what receivers verify
    with, and it can be published. Needs the ``[ed25519]`` extra (cryptography).
    """
    ed25519 = _ed25519_module()
    private = ed25519.Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    seed = private.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    raw_public = _raw_public(private.public_key())
    secret_key = SECRET_KEY_PREFIX + base64.b64encode(seed + raw_public).decode("ascii")
    return secret_key, PUBLIC_KEY_PREFIX + base64.b64encode(raw_public).decode("ascii")


def public_key(secret_key: str) -> str:
    """The ``whpk_`` public key of a ``whsk_`` ed25519 secret key (give it to receivers)."""
    raw = _raw_public(_ed25519_private(secret_key).public_key())
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode("ascii")


# -- signature schemes ------------------------------------------------------------------
@runtime_checkable
class Signer(Protocol):
    """A signature scheme: how a subscription's secret(s) sign each request.

    ``name`` selects it (``subscribe(..., signature=name)``) once `register_signer` has
    seen it; ``header_names`` are the headers `sign` sets (custom headers may not use
    them). ``webhook-id`` and ``webhook-timestamp`` are sent with every scheme.
    """

    name: str
    header_names: tuple[str, ...]

    def check_secret(self, secret: str) -> None:
        """Raise `InvalidSecret` unless ``secret`` can sign with this scheme; the message
        must never contain the secret."""

    def generate_secret(self) -> str:
        """A new random secret suitable for this scheme."""

    def sign(
        self, secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
    ) -> list[tuple[str, str]]:
        """The signature header(s) of one request; ``secrets`` holds the current secret
        first, then those still valid during a rotation."""


class StandardSigner:
    """Standard Webhooks v1: ``webhook-signature: v1,<base64 HMAC-SHA256>`` (the default)."""

    name = "standard"
    header_names: tuple[str, ...] = (WEBHOOK_SIGNATURE_HEADER,)

    def check_secret(self, secret: str) -> None:
        """A ``whsec_`` secret (see `parse_secret`)."""
        parse_secret(secret)

    def generate_secret(self) -> str:
        """A new ``whsec_`` secret."""
        return generate_secret()

    def sign(
        self, secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
    ) -> list[tuple[str, str]]:
        """One header with a space-separated signature per secret."""
        return [(WEBHOOK_SIGNATURE_HEADER, sign_all(secrets, msg_id, timestamp, body))]


class Ed25519Signer(StandardSigner):
    """Standard Webhooks v1a: ``webhook-signature: v1a,<base64 ed25519 signature>``.

    The secret is a ``whsk_`` key from `generate_keypair`; receivers verify with its
    ``whpk_`` public key (`public_key`), which need not be kept secret.
    """

    name = "standard-ed25519"

    def check_secret(self, secret: str) -> None:
        """A ``whsk_`` ed25519 secret key whose halves match."""
        _ed25519_private(secret)

    def generate_secret(self) -> str:
        """A new ``whsk_`` secret key."""
        return generate_keypair()[0]


def _check_plain_secret(secret: str) -> None:
    if not isinstance(secret, str):
        raise InvalidSecret(f"a secret must be a str, not {type(secret).__name__}")
    if not 16 <= len(secret) <= 512:
        raise InvalidSecret("the secret must be 16 to 512 characters long")
    if not secret.isascii() or not secret.isprintable():
        raise InvalidSecret("the secret must be printable ASCII")
    if secret != secret.strip():
        raise InvalidSecret("the secret must not start or end with whitespace")


def _hex_hmac(secret: str, *parts: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.hexdigest()


class _PlainSecretSigner:
    """Schemes keyed with the secret string itself (GitHub and Stripe styles)."""

    def check_secret(self, secret: str) -> None:
        """Any printable ASCII string of 16 to 512 characters."""
        _check_plain_secret(secret)

    def generate_secret(self) -> str:
        """A new random secret (``whsec_`` shaped, used as plain text)."""
        return generate_secret()


@runtime_checkable
class EventHeaders(Protocol):
    """A `Signer` that also sends headers describing the event, as its receivers'
    libraries require (GitHub's ``X-GitHub-Event``). Its ``header_names`` include them."""

    def event_headers(self, msg_id: str, event_type: str) -> list[tuple[str, str]]:
        """The headers naming this message and its event type."""


class GitHubSigner(_PlainSecretSigner):
    """GitHub style: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``, keyed
    with the secret's UTF-8 bytes, no timestamp. The header holds one signature, so during
    a rotation only the new secret signs. ``X-GitHub-Event`` (the event type) and
    ``X-GitHub-Delivery`` (the message id) go with it, as GitHub's receivers (the
    ``@octokit/webhooks`` middleware) require."""

    name = "github"
    header_names: tuple[str, ...] = ("x-hub-signature-256", "x-github-event", "x-github-delivery")

    def event_headers(self, msg_id: str, event_type: str) -> list[tuple[str, str]]:
        """``X-GitHub-Event`` and ``X-GitHub-Delivery``."""
        return [("X-GitHub-Event", event_type), ("X-GitHub-Delivery", msg_id)]

    def sign(
        self, secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
    ) -> list[tuple[str, str]]:
        """``X-Hub-Signature-256`` with the current secret's signature."""
        return [("X-Hub-Signature-256", "sha256=" + _hex_hmac(secrets[0], body))]


class StripeSigner(_PlainSecretSigner):
    """Stripe style: ``Stripe-Signature: t=<ts>,v1=<hex>``, hex HMAC-SHA256 keyed with the
    whole secret string's UTF-8 bytes over ``"{t}.{body}"``. During a rotation one ``v1=``
    entry per secret, as Stripe does."""

    name = "stripe"
    header_names: tuple[str, ...] = ("stripe-signature",)

    def sign(
        self, secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
    ) -> list[tuple[str, str]]:
        """``Stripe-Signature`` with one ``v1=`` entry per secret."""
        timestamp = _checked_timestamp(timestamp)
        signed_prefix = f"{timestamp}.".encode()
        entries = [f"v1={_hex_hmac(secret, signed_prefix, body)}" for secret in secrets]
        return [("Stripe-Signature", ",".join([f"t={timestamp}", *entries]))]


_SIGNER_NAME = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,63}")
_SIGNERS: dict[str, Signer] = {
    signer.name: signer
    for signer in (StandardSigner(), Ed25519Signer(), GitHubSigner(), StripeSigner())
}


def register_signer(signer: Signer, *, replace: bool = False) -> Signer:
    """Make ``signer`` selectable as ``subscribe(..., signature=signer.name)``.

    Register it in every process that delivers (workers too) before they start.
    Raises `ConfigurationError` for a malformed name, or one already taken unless
    ``replace``. Returns ``signer``.
    """
    if not isinstance(signer, Signer):
        raise ConfigurationError(
            "a signer needs name, header_names, check_secret(), generate_secret() and sign()"
        )
    if not isinstance(signer.name, str) or _SIGNER_NAME.fullmatch(signer.name) is None:
        raise ConfigurationError(
            "a signer's name must be 1 to 64 lowercase letters, digits, '.', '_' or '-'"
        )
    if signer.name in _SIGNERS and not replace:
        raise ConfigurationError(f"a signer named {signer.name!r} is already registered")
    _SIGNERS[signer.name] = signer
    return signer


def get_signer(name: str) -> Signer:
    """The registered signature scheme called ``name``; `ConfigurationError` otherwise."""
    signer = _SIGNERS.get(name) if isinstance(name, str) else None
    if signer is None:
        shown = name[:40] if isinstance(name, str) else type(name).__name__
        raise ConfigurationError(
            f"unknown signature scheme {shown!r}; known: {', '.join(sorted(_SIGNERS))}"
        )
    return signer


def signer_names() -> list[str]:
    """The names of every registered signature scheme, sorted."""
    return sorted(_SIGNERS)


def signature_header_names() -> frozenset[str]:
    """Lowercase names of every header some registered scheme sets (a message's own
    headers may not use them)."""
    return frozenset(name.lower() for signer in _SIGNERS.values() for name in signer.header_names)
