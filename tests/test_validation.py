"""Tests for the boundary checks on endpoint URLs, custom headers and timeouts."""

from __future__ import annotations

import math
from collections import OrderedDict
from decimal import Decimal
from fractions import Fraction

import pytest

from webhook_dispatch._validation import (
    RESERVED_HEADERS,
    validate_headers,
    validate_timeout,
    validate_url,
)
from webhook_dispatch.errors import ConfigurationError, InvalidHeader, InvalidURL

# ---------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("https://example.com/hooks", "https://example.com/hooks"),
        ("http://example.com", "http://example.com"),
        ("HTTPS://Example.COM/Hooks", "https://example.com/Hooks"),
        ("https://example.com:8443/a?b=c&d=e", "https://example.com:8443/a?b=c&d=e"),
        ("https://example.com:443/x", "https://example.com/x"),
        ("http://127.0.0.1:8080/hook", "http://127.0.0.1:8080/hook"),
        ("http://[::1]:8080/hook", "http://[::1]:8080/hook"),
        ("https://bücher.de/ü", "https://xn--bcher-kva.de/%C3%BC"),
        ("https://my_host.internal./x", "https://my_host.internal./x"),
        ("https://example.com/a%20b", "https://example.com/a%20b"),
    ],
)
def test_good_urls_are_normalized(url: str, normalized: str) -> None:
    assert validate_url(url) == normalized


def test_https_only_accepts_https() -> None:
    assert validate_url("https://example.com/", https_only=True) == "https://example.com/"


BAD_URLS: list[object] = [
    None,
    42,
    b"https://example.com/",
    "",
    "   ",
    "ftp://x",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "mailto:ops@example.com",
    "ws://example.com/socket",
    "gopher://example.com/",
    "http://user:pw@host/",
    "https://token@example.com/",
    "http://@host/",
    "http://:@host/",
    "http://exa mple.com",
    " https://example.com/",
    "https://example.com/ ",
    "https://example.com/a\tb",
    "https://example.com/a\r\nHost: evil",
    "https://example.com/\x00",
    "https://example.com/\x7f",
    "https://example.com/\u200b",
    "https://example.com/\u00a0",
    "https://example.com/\u202e",
    "http://",
    "https://",
    "//host",
    "//host/path",
    "example.com/hooks",
    "http:host",
    "http:///path",
    "https://example.com/#frag",
    "https://example.com/#",
    "https://example.com\\@evil.com/",
    "http://host:0/",
    "http://host:99999/",
    "http://host:port/",
    "http://256.1.1.1/",
    "http://[::1/",
    "http://[fe80::1%25eth0]/",
    "http://ex%41mple.com/",
    "http://a..b/",
    "https://xn--/",
    "https://" + "a" * 64 + ".com/",
    "https://example.com/" + "a" * 2048,
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_urls_are_refused(url: object) -> None:
    with pytest.raises(InvalidURL):
        validate_url(url)


def test_at_least_25_bad_urls() -> None:
    assert len(BAD_URLS) >= 25


def test_https_only_refuses_http() -> None:
    with pytest.raises(InvalidURL, match="https"):
        validate_url("http://example.com/", https_only=True)


def test_invalid_url_is_a_configuration_and_value_error() -> None:
    with pytest.raises(ConfigurationError):
        validate_url("ftp://x")
    with pytest.raises(ValueError, match="scheme"):
        validate_url("ftp://x")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        (3, "must be a str"),
        ("", "must not be empty"),
        ("ftp://x", "scheme 'ftp'"),
        ("//host", "no scheme"),
        ("http://", "no host"),
        ("http://user:pw@host/", "credentials"),
        ("https://example.com/#x", "fragment"),
        ("http://exa mple.com", "U\\+0020 at position 10"),
        ("http://host:0/", "port 0"),
        ("https://example.com/" + "a" * 3000, "limit is 2048"),
    ],
)
def test_url_errors_name_the_problem(url: object, fragment: str) -> None:
    with pytest.raises(InvalidURL, match=fragment):
        validate_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://user:hunter2@host/",
        "https://admin:hunter2@example.com:8443/path",
        "ftp://user:hunter2@example.com/",
        "https://hunter2@exa mple.com/",
        "https://user:hunter2@example.com/#frag",
        "http://user:hunter2@",
    ],
)
def test_url_errors_never_echo_credentials(url: str) -> None:
    with pytest.raises(InvalidURL) as caught:
        validate_url(url)
    assert "hunter2" not in str(caught.value)


def test_url_errors_do_not_echo_path_or_query_secrets() -> None:
    secret_path = "https://hooks.example.com/services/T000/B000/hunter2"
    with pytest.raises(InvalidURL) as caught:
        validate_url(secret_path.replace("https", "http"), https_only=True)
    assert "hunter2" not in str(caught.value)
    assert "hooks.example.com" in str(caught.value)
    with pytest.raises(InvalidURL) as caught:
        validate_url("https://example.com/?token=hunter2#x")
    assert "hunter2" not in str(caught.value)


# ---------------------------------------------------------------- headers


def test_none_headers_give_empty_dict() -> None:
    assert validate_headers(None) == {}


def test_good_headers_are_copied_with_their_spelling() -> None:
    given = OrderedDict(
        [
            ("X-Tenant", "42"),
            ("Authorization", "Bearer abc.def"),
            ("x-weird!#$%&'*+-.^_`|~", "a\tb c"),
            ("X-Latin", "caf\xe9"),
            ("X-Empty", ""),
            ("X-Long", "v" * 8192),
        ]
    )
    result = validate_headers(given)
    assert result == dict(given)
    assert type(result) is dict
    assert result is not given


def test_fifty_headers_are_allowed() -> None:
    headers = {f"X-H{n}": "v" for n in range(50)}
    assert validate_headers(headers) == headers


BAD_HEADERS: list[dict[object, object]] = [
    {"X-A": "a\r\nb"},
    {"X-A": "a\nb"},
    {"X-A": "a\rb"},
    {"X-A": "a\x00b"},
    {"X-A": "a\x01b"},
    {"X-A": "a\x7fb"},
    {"X-A": "snow\u2603man"},
    {"X-A": " leading"},
    {"X-A": "trailing\t"},
    {"X-A": "v" * 8193},
    {"X-A": 42},
    {"X-A": b"bytes"},
    {"X-A": None},
    {"": "v"},
    {"X A": "v"},
    {"X-A:": "v"},
    {"X-A\r\nInjected": "v"},
    {"X-(A)": "v"},
    {"X-Ä": "v"},
    {"X-" + "a" * 300: "v"},
    {42: "v"},
    {b"X-A": "v"},
    {"X-A": "1", "x-a": "2"},
    {f"X-H{n}": "v" for n in range(51)},
]


@pytest.mark.parametrize("headers", BAD_HEADERS)
def test_bad_headers_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(InvalidHeader):
        validate_headers(headers)


@pytest.mark.parametrize(
    "name",
    [*sorted(RESERVED_HEADERS), "Content-Type", "HOST", "User-Agent", "WEBHOOK-ID", "Te"],
)
def test_reserved_headers_are_refused_in_any_case(name: str) -> None:
    with pytest.raises(InvalidHeader, match="reserved"):
        validate_headers({name: "v"})


def test_reserved_header_list() -> None:
    assert {
        "content-type",
        "content-length",
        "host",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
        "keep-alive",
        "proxy-authorization",
        "expect",
        "trailer",
    } == RESERVED_HEADERS


@pytest.mark.parametrize("headers", [["X-A", "v"], "X-A: v", 5])
def test_headers_must_be_a_mapping(headers: object) -> None:
    with pytest.raises(InvalidHeader, match="mapping"):
        validate_headers(headers)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value", ["Bearer hunter2\r\n", "hunter2\x00", "hunter2 ", "hunter2\u2603", "hunter2" * 2000]
)
def test_header_errors_name_the_header_but_never_the_value(value: str) -> None:
    with pytest.raises(InvalidHeader) as caught:
        validate_headers({"X-Api-Key": value})
    assert "X-Api-Key" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_header_injection_message() -> None:
    with pytest.raises(InvalidHeader, match="CR, LF or NUL"):
        validate_headers({"X-A": "a\r\nb"})


def test_duplicate_header_message_names_both() -> None:
    with pytest.raises(InvalidHeader, match="'X-A' and 'x-a'"):
        validate_headers({"X-A": "1", "x-a": "2"})


# ---------------------------------------------------------------- timeouts


@pytest.mark.parametrize(
    ("value", "expected"),
    [(15, 15.0), (0.001, 0.001), (300, 300.0), (300.0, 300.0), (Fraction(1, 2), 0.5)],
)
def test_good_timeouts(value: object, expected: float) -> None:
    result = validate_timeout(value)
    assert result == expected
    assert type(result) is float


BAD_TIMEOUTS: list[object] = [
    True,
    False,
    None,
    "15",
    b"15",
    [15],
    Decimal("15"),
    complex(1, 0),
    math.nan,
    math.inf,
    -math.inf,
    0,
    0.0,
    -0.0,
    -1,
    -0.5,
    300.0001,
    301,
    10**400,
]


@pytest.mark.parametrize("value", BAD_TIMEOUTS)
def test_bad_timeouts_are_refused(value: object) -> None:
    with pytest.raises(ConfigurationError):
        validate_timeout(value)


def test_timeout_messages() -> None:
    with pytest.raises(ConfigurationError, match="bool"):
        validate_timeout(True)
    with pytest.raises(ConfigurationError, match="finite"):
        validate_timeout(math.nan)
    with pytest.raises(ConfigurationError, match="at most 300"):
        validate_timeout(301)
