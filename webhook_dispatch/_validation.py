"""Checks applied at the boundary of the public API: endpoint URLs, custom headers, timeouts.

Each validator returns the cleaned value or raises a typed error whose message never echoes secrets.
"""

from __future__ import annotations

import ipaddress
import math
import re
import unicodedata
from collections.abc import Mapping
from numbers import Real

import httpx

from .errors import ConfigurationError, InvalidHeader, InvalidTenant, InvalidURL

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADER_NAME_LENGTH",
    "MAX_HEADER_VALUE_LENGTH",
    "MAX_TIMEOUT",
    "MAX_URL_LENGTH",
    "RESERVED_HEADERS",
    "validate_headers",
    "validate_subscription_key",
    "validate_tenant",
    "validate_timeout",
    "validate_url",
]

MAX_URL_LENGTH = 2048
"""Longest endpoint URL accepted, in characters."""

MAX_HEADERS = 50
"""Most custom headers one subscription may carry."""

MAX_HEADER_NAME_LENGTH = 256
"""Longest custom header name accepted, in characters."""

MAX_HEADER_VALUE_LENGTH = 8 * 1024
"""Longest custom header value accepted, in characters (latin-1, so also bytes)."""

MAX_TIMEOUT = 300.0
"""Longest per-attempt timeout accepted, in seconds."""

RESERVED_HEADERS: frozenset[str] = frozenset(
    {
        "connection",
        "content-length",
        "content-type",
        "expect",
        "host",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "webhook-id",
        "webhook-signature",
        "webhook-timestamp",
    }
)
"""Lowercase header names the library sets itself (or that belong to the transport)."""

_ALLOWED_SCHEMES = frozenset({"http", "https"})
_SCHEME_AND_AUTHORITY = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*:)?(?://(?P<authority>[^/?#]*))?(?P<rest>.*)",
    re.DOTALL,
)
_ASCII_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
# Categories that are invisible or break a URL apart: controls, format chars, separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
_HOST_LABEL = re.compile(r"[A-Za-z0-9_\-]{1,63}")
_MAX_HOST_LENGTH = 253
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_ECHO_LIMIT = 60


def _echo(value: str) -> str:
    """Quote a short, non-secret value (a header name, a scheme) for an error message."""
    if len(value) > _ECHO_LIMIT:
        return repr(value[:_ECHO_LIMIT]) + f"... ({len(value)} characters)"
    return repr(value)


def _describe_url(url: str) -> str:
    """Show where a URL points without anything that may be secret.

    Userinfo is dropped, and path, query and fragment are elided: tokens often
    live there (chat-service webhook URLs carry their secret in the path).
    """
    parts = _SCHEME_AND_AUTHORITY.match(url)
    assert parts is not None  # the pattern matches every string
    scheme = parts.group("scheme") or ""
    authority = parts.group("authority")
    shown = scheme
    if authority is not None:
        shown += "//" + authority.rpartition("@")[2]
    if parts.group("rest"):
        shown += "/..." if authority is not None else "..."
    if not shown:
        return f"(a {len(url)}-character string)"
    return _echo(shown)


def _find_forbidden_character(url: str) -> tuple[int, str] | None:
    """Return (position, character) of the first whitespace or control character, if any."""
    if url.isascii():
        found = _ASCII_CONTROL_OR_SPACE.search(url)
        return None if found is None else (found.start(), found.group())
    for position, character in enumerate(url):
        if character.isspace() or unicodedata.category(character) in _FORBIDDEN_CATEGORIES:
            return position, character
    return None


def _host_problem(raw_host: bytes) -> str | None:
    """Explain what is wrong with an (IDNA-encoded) host, or return None if it is usable."""
    host = raw_host.decode("ascii", errors="replace")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host.partition("%")[0])
        except ValueError:
            return "has a malformed IPv6 address"
        if "%" in host:
            return "has an IPv6 zone identifier, which cannot be used for a remote endpoint"
        return None
    name = host[:-1] if host.endswith(".") else host
    if len(name) > _MAX_HOST_LENGTH:
        return f"has a host longer than {_MAX_HOST_LENGTH} characters"
    if not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
        return "has a malformed host name"
    return None


def validate_url(url: object, *, https_only: bool = False) -> str:
    """Return ``url`` normalized (as ``str(httpx.URL(url))``) if it is a usable endpoint.

    Refused with `InvalidURL`: anything but a non-empty ``str`` of at most 2048
    characters; whitespace or control characters anywhere; a scheme other than
    ``http``/``https`` (or ``http`` when ``https_only``); no host; credentials
    (``user:password@``); a fragment; a port outside 1-65535. Error messages
    never repeat the credentials, path or query of the URL.
    """
    if not isinstance(url, str):
        raise InvalidURL(f"endpoint URL must be a str, got {type(url).__name__}")
    if not url:
        raise InvalidURL("endpoint URL must not be empty")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidURL(
            f"endpoint URL {_describe_url(url)} is {len(url)} characters long; "
            f"the limit is {MAX_URL_LENGTH}"
        )
    forbidden = _find_forbidden_character(url)
    if forbidden is not None:
        position, character = forbidden
        raise InvalidURL(
            f"endpoint URL {_describe_url(url)} contains whitespace or a control character "
            f"(U+{ord(character):04X} at position {position}); percent-encode it"
        )
    parts = _SCHEME_AND_AUTHORITY.match(url)
    assert parts is not None  # the pattern matches every string
    authority = parts.group("authority")
    if authority is not None and "@" in authority:
        raise InvalidURL(
            f"endpoint URL {_describe_url(url)} contains credentials (user:password@); "
            "pass them as subscribe(..., auth=webhook_dispatch.BasicAuth(user, password)) "
            "or another auth= object instead"
        )
    if "#" in url:
        raise InvalidURL(
            f"endpoint URL {_describe_url(url)} has a fragment ('#...'), "
            "which is never sent to the receiver"
        )
    if "\\" in url:
        raise InvalidURL(f"endpoint URL {_describe_url(url)} contains a backslash")
    try:
        parsed = httpx.URL(url)
        parsed.host  # noqa: B018 - decoding an IDNA host can fail only here
    except (httpx.InvalidURL, ValueError) as error:
        # httpx's own messages name the bad component (port, address), never userinfo,
        # and credentials were refused above anyway.
        raise InvalidURL(f"endpoint URL {_describe_url(url)} is malformed: {error}") from None
    scheme = parsed.scheme
    if not scheme:
        raise InvalidURL(
            f"endpoint URL {_describe_url(url)} has no scheme; write it as https://host/path"
        )
    if scheme not in _ALLOWED_SCHEMES:
        raise InvalidURL(
            f"endpoint URL {_describe_url(url)} has scheme {_echo(scheme)}; "
            "only http and https are allowed"
        )
    if https_only and scheme != "https":
        raise InvalidURL(f"endpoint URL {_describe_url(url)} must use https (https_only is set)")
    if not parsed.raw_host:
        raise InvalidURL(f"endpoint URL {_describe_url(url)} has no host")
    if parsed.userinfo:
        raise InvalidURL(  # pragma: no cover - caught by the authority check above
            f"endpoint URL {_describe_url(url)} contains credentials"
        )
    host_problem = _host_problem(parsed.raw_host)
    if host_problem is not None:
        raise InvalidURL(f"endpoint URL {_describe_url(url)} {host_problem}")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise InvalidURL(
            f"endpoint URL {_describe_url(url)} has port {parsed.port}, outside 1-65535"
        )
    normalized = str(parsed)
    if len(normalized) > MAX_URL_LENGTH:
        raise InvalidURL(
            f"endpoint URL {_describe_url(url)} is longer than {MAX_URL_LENGTH} characters "
            "once percent-encoded"
        )
    return normalized


def _check_header_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidHeader(f"header names must be str, got {type(name).__name__}")
    if not name:
        raise InvalidHeader("header name must not be empty")
    if len(name) > MAX_HEADER_NAME_LENGTH:
        raise InvalidHeader(
            f"header name {_echo(name)} is longer than {MAX_HEADER_NAME_LENGTH} characters"
        )
    if not _TOKEN.fullmatch(name):
        raise InvalidHeader(
            f"header name {_echo(name)} is not a valid HTTP token "
            "(letters, digits and !#$%&'*+-.^_`|~ only)"
        )
    if name.lower() in RESERVED_HEADERS:
        raise InvalidHeader(
            f"header {_echo(name)} is reserved: the library sets it (or the transport owns it)"
        )
    return name


def _check_header_value(name: str, value: object) -> str:
    # Messages name the header but never show the value: it may be a credential.
    if not isinstance(value, str):
        raise InvalidHeader(
            f"header {_echo(name)} must have a str value, got {type(value).__name__}"
        )
    if len(value) > MAX_HEADER_VALUE_LENGTH:
        raise InvalidHeader(
            f"header {_echo(name)} has a value longer than {MAX_HEADER_VALUE_LENGTH} characters"
        )
    if not _FIELD_VALUE.fullmatch(value):
        if any(character in value for character in "\r\n\x00"):
            raise InvalidHeader(f"header {_echo(name)} has a value containing CR, LF or NUL")
        raise InvalidHeader(
            f"header {_echo(name)} has a value with a control character or a character "
            "outside latin-1"
        )
    if value != value.strip(" \t"):
        raise InvalidHeader(f"header {_echo(name)} has a value with leading or trailing whitespace")
    return value


def validate_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Return a plain ``dict`` copy of a subscription's custom headers, checked.

    ``None`` gives ``{}``. Names must be RFC 9110 tokens, unique ignoring case, and
    not in `RESERVED_HEADERS`; values must be ``str`` of visible ASCII or latin-1
    characters, spaces and tabs (no CR, LF or NUL, no leading or trailing
    whitespace), at most 8 KiB; at most 50 headers. Names keep their spelling.
    Raises `InvalidHeader`, naming the header but never showing a value.
    """
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise InvalidHeader(
            f"headers must be a mapping of str to str, got {type(headers).__name__}"
        )
    if len(headers) > MAX_HEADERS:
        raise InvalidHeader(f"{len(headers)} headers given; at most {MAX_HEADERS} are allowed")
    checked: dict[str, str] = {}
    seen: dict[str, str] = {}
    for raw_name, raw_value in headers.items():
        name = _check_header_name(raw_name)
        folded = name.lower()
        if folded in seen:
            raise InvalidHeader(
                f"headers {_echo(seen[folded])} and {_echo(name)} are the same header "
                "(names are case-insensitive)"
            )
        seen[folded] = name
        checked[name] = _check_header_value(name, raw_value)
    return checked


_TENANT = re.compile(r"[A-Za-z0-9_.:\-]{1,255}")


def validate_tenant(value: object) -> str | None:
    """A tenant id as given (1 to 255 characters of ``[A-Za-z0-9_.:-]``), or None;
    anything else raises `InvalidTenant` (the message shows a short, escaped echo)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidTenant(f"tenant must be a string or None, got {type(value).__name__}")
    if not _TENANT.fullmatch(value):
        if not value:
            raise InvalidTenant("tenant must not be empty (None means no tenant)")
        if len(value) > 255:
            raise InvalidTenant(f"tenant is {len(value)} characters long; at most 255 are allowed")
        raise InvalidTenant(
            f"tenant {_echo(value)} has characters outside [A-Za-z0-9_.:-] "
            "(letters, digits, '_', '.', ':' and '-')"
        )
    return value


def validate_subscription_key(value: object) -> str | None:
    """A subscription key as given (1 to 255 characters of ``[A-Za-z0-9_.:-]``, the
    tenant id's alphabet), or None; anything else raises `ConfigurationError`."""
    if value is None:
        return None
    if not isinstance(value, str) or not _TENANT.fullmatch(value):
        shown = _echo(value) if isinstance(value, str) else type(value).__name__
        raise ConfigurationError(
            f"subscription key {shown} must be 1 to 255 characters of [A-Za-z0-9_.:-]"
        )
    return value


def validate_timeout(value: object) -> float:
    """Return a per-attempt timeout in seconds as a ``float``.

    Accepts a real number (not a ``bool``) that is finite and in ``(0, 300]``;
    anything else raises `ConfigurationError`.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigurationError(f"timeout must be a number of seconds, got {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ConfigurationError(f"timeout must be finite, got {seconds!r}")
    if not 0 < seconds <= MAX_TIMEOUT:
        raise ConfigurationError(
            f"timeout must be more than 0 and at most {MAX_TIMEOUT:g} seconds, got {seconds!r}"
        )
    return seconds
