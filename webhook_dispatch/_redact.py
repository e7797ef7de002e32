"""Store URLs and DSNs with their passwords hidden, for every line or error that shows one.

One rule for the CLI, the stores' errors and reprs: where a URL is ambiguous, hide more.
"""

from __future__ import annotations

import bisect
import re
import urllib.parse
from typing import Literal

import attrs

__all__ = ["MASK", "Secret", "find_secrets", "redact_in", "redact_store_url"]

MASK = "***"
"""What a hidden password is shown as."""
MAX_SHOWN = 1000
"""Longest redacted URL shown; the rest becomes ``...`` (a URL is not a place for data)."""

_SECRET_KEYS = frozenset({"password", "sslpassword"})
# libpq's connection keywords (and the store's own ``schema``): where a password written
# without quotes or percent-encoding is taken to end.
_KNOWN_KEYS = _SECRET_KEYS | frozenset(
    {
        "application_name",
        "channel_binding",
        "client_encoding",
        "connect_timeout",
        "dbname",
        "fallback_application_name",
        "gssdelegation",
        "gssencmode",
        "gsslib",
        "host",
        "hostaddr",
        "keepalives",
        "keepalives_count",
        "keepalives_idle",
        "keepalives_interval",
        "krbsrvname",
        "load_balance_hosts",
        "max_protocol_version",
        "min_protocol_version",
        "options",
        "passfile",
        "port",
        "replication",
        "require_auth",
        "requirepeer",
        "requiressl",
        "schema",
        "service",
        "ssl_max_protocol_version",
        "ssl_min_protocol_version",
        "sslcert",
        "sslcertmode",
        "sslcompression",
        "sslcrl",
        "sslcrldir",
        "sslkey",
        "sslkeylogfile",
        "sslmode",
        "sslnegotiation",
        "sslrootcert",
        "sslsni",
        "target_session_attrs",
        "tcp_user_timeout",
        "user",
    }
)
# Every pattern here is linear in the input: this runs inside error paths on any string.
_QUERY_PARAMETER = re.compile(r"[?&]([^=&?#]*)=")
_KEYWORD = re.compile(r"(?:^|(?<=\s))([A-Za-z_][A-Za-z0-9_]*)\s*=\s*")
_KEYWORD_FORM = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_]*\s*=")
_SCHEME_SLASHES = re.compile(r"\s*(?:[A-Za-z][A-Za-z0-9+.\-]*:?)?//")
_QUOTED = re.compile(r"\"([^\"]*)\"|'([^']*)'")


@attrs.frozen
class Secret:
    """One password found in a store URL: where it is and the values it may stand for."""

    start: int
    end: int
    place: Literal["userinfo", "query", "keyword"]
    values: tuple[str, ...]
    """The text as written and as a driver decodes it (percent-encoding, quoting)."""


def redact_store_url(url: object) -> str:
    """``url`` (a store URL or libpq ``key=value`` DSN) with every password shown as ``***``.

    Hides ``user:password@``, ``:password@``, ``password=`` (and ``sslpassword=``) in a
    query string in any case or percent-encoding, and ``password=...`` keywords, quoted or
    not. Non-printable characters are escaped and very long URLs shortened. Never raises,
    whatever it is given, so error paths may call it.
    """
    if not isinstance(url, str):
        return f"<{type(url).__name__}, not a store URL>"
    try:
        shown = _printable(_masked(url, find_secrets(url), 0, len(url)))
    except Exception:  # a bug here must not turn an error message into a crash
        return "<store URL hidden>"
    return shown if len(shown) <= MAX_SHOWN else shown[: MAX_SHOWN - 3] + "..."


def redact_in(text: str, url: str) -> str:
    """``text`` (a driver's message about ``url``) without the passwords in ``url``.

    Drivers quote pieces of the URL they could not parse (``missing "=" after "..."``):
    a quoted piece that overlaps a password is masked, and so is every password value
    anywhere in ``text``. Never raises.
    """
    try:
        secrets = find_secrets(url)
        values = sorted({v for s in secrets for v in s.values if v}, key=len, reverse=True)

        def quoted(match: re.Match[str]) -> str:
            content = match.group(1) if match.group(1) is not None else match.group(2)
            quote = match.group(0)[0]
            return f"{quote}{_redacted_piece(content, url, secrets, values)}{quote}"

        result = _QUOTED.sub(quoted, text)
        for value in values:
            result = result.replace(value, MASK)
    except Exception:  # never let the message about one error become another error
        return "(details hidden: they may contain a password)"
    return result


def find_secrets(url: str) -> list[Secret]:
    """Every password in ``url``, in order of position (overlapping finds may repeat)."""
    keyword_form = _KEYWORD_FORM.match(url) is not None
    query = [
        (match.start(), match.end(), _decoded_key(match.group(1)))
        for match in _QUERY_PARAMETER.finditer(url)
    ]
    known_query_starts = [start for start, _, key in query if key in _KNOWN_KEYS]
    keywords = [(m.start(), m.end(), m.group(1).lower()) for m in _KEYWORD.finditer(url)]
    known_keyword_starts = [start for start, _, key in keywords if key in _KNOWN_KEYS]

    secrets: list[Secret] = []
    userinfo = _userinfo_secret(url, keyword_form, known_query_starts)
    if userinfo is not None:
        secrets.append(userinfo)
    for _, value_start, key in query:
        if key in _SECRET_KEYS:
            # Unencoded, a password may hold '&': it ends only where a known key begins.
            end = _next_after(known_query_starts, value_start, len(url))
            if end > value_start:
                raw = url[value_start:end]
                values = (raw, _unquote(raw), _unquote(raw, plus=True))
                secrets.append(Secret(value_start, end, "query", values))
    for _, value_start, key in keywords:
        if key in _SECRET_KEYS:
            secret = _keyword_secret(url, value_start, known_keyword_starts)
            if secret is not None:
                secrets.append(secret)
    return sorted(secrets, key=lambda secret: (secret.start, secret.end))


# -- finding -------------------------------------------------------------------------
def _userinfo_secret(url: str, keyword_form: bool, known_query_starts: list[int]) -> Secret | None:
    slashes = _SCHEME_SLASHES.match(url)
    if slashes is not None:
        begin = slashes.end()
    elif keyword_form:
        # A URL may still hide in a keyword's value (libpq expands dbname=postgresql://...).
        found = url.find("://")
        if found < 0:
            return None
        begin = found + 3
    else:
        # No '//' at all ('user:pw@host', 'postgresql:/u:pw@host'): the first ':' starts it.
        colon = url.find(":")
        if colon < 0:
            return None
        begin = colon
    at = _userinfo_end(url, begin, known_query_starts)
    if at is None:
        return None
    colon = url.find(":", begin, at)
    if colon < 0 or any(char in url[begin:colon] for char in "/?#"):
        return None  # only a user name, or the '@' is past the host
    start = colon + 1
    if start >= at:
        return None
    raw = url[start:at]
    return Secret(start, at, "userinfo", (raw, _unquote(raw)))


def _userinfo_end(url: str, begin: int, known_query_starts: list[int]) -> int | None:
    """The '@' closing the userinfo: the last one before the query string (an unencoded
    password may hold '@'), else the first one (the password itself held '?key=')."""
    query = _next_after(known_query_starts, begin - 1, len(url))
    last = url.rfind("@", begin, query)
    if last < 0:
        last = url.find("@", begin)
    return last if last >= 0 else None


def _keyword_secret(url: str, value_start: int, known_keyword_starts: list[int]) -> Secret | None:
    if url.startswith("'", value_start):
        index = value_start + 1
        content: list[str] = []
        while index < len(url) and url[index] != "'":
            if url[index] == "\\" and index + 1 < len(url):
                index += 1
            content.append(url[index])
            index += 1
        end = min(index + 1, len(url))
        return Secret(value_start, end, "keyword", (url[value_start:end], "".join(content)))
    # libpq ends an unquoted value at a space; a password that had one ends at the next key.
    end = _next_after(known_keyword_starts, value_start, len(url))
    while end > value_start and url[end - 1].isspace():
        end -= 1
    if end <= value_start:
        return None
    raw = url[value_start:end]
    return Secret(value_start, end, "keyword", (raw,))


def _next_after(starts: list[int], position: int, default: int) -> int:
    index = bisect.bisect_right(starts, position)
    return starts[index] if index < len(starts) else default


def _decoded_key(key: str) -> str:
    return _unquote(key, plus=True).strip().lower()


def _unquote(text: str, *, plus: bool = False) -> str:
    if plus:
        return urllib.parse.unquote_plus(text, errors="replace")
    return urllib.parse.unquote(text, errors="replace")


# -- showing -----------------------------------------------------------------------------
def _masked(url: str, secrets: list[Secret], start: int, end: int) -> str:
    """``url[start:end]`` with every part inside a secret replaced by one ``***``."""
    pieces: list[str] = []
    position = start
    for secret in secrets:
        if secret.end <= position or secret.start >= end:
            continue
        if secret.start > position:
            pieces.append(url[position : secret.start])
        if not pieces or pieces[-1] != MASK:
            pieces.append(MASK)
        position = max(position, min(secret.end, end))
    pieces.append(url[position:end])
    return "".join(pieces)


def _redacted_piece(content: str, url: str, secrets: list[Secret], values: list[str]) -> str:
    if not content:
        return content
    spans = _merged(secrets)
    starts = [start for start, _ in spans]
    found = url.find(content)
    for _ in range(1000):  # bounded: a message quoting 'a' from a long URL stays fast
        if found < 0:
            break
        index = bisect.bisect_right(starts, found + len(content) - 1) - 1
        if index >= 0 and spans[index][1] > found:
            return _masked(url, secrets, found, found + len(content))
        found = url.find(content, found + 1)
    if any(value in content or content in value for value in values):
        return MASK
    return content


def _merged(secrets: list[Secret]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for secret in secrets:  # sorted by start
        if spans and secret.start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], secret.end))
        else:
            spans.append((secret.start, secret.end))
    return spans


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)
