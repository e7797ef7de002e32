"""Store URLs are shown with their passwords hidden: the one redaction rule, and the store
errors and reprs that use it."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import webhook_dispatch as wd
from webhook_dispatch._redact import redact_in, redact_store_url
from webhook_dispatch.stores import open_store

USER, HOST, DATABASE = "app", "db.example.internal", "orders"


def _kv_quoted(password: str) -> str:
    return "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"


# Each way a password travels in a store URL or DSN, written raw and percent-encoded.
FORMS: dict[str, Callable[[str], str]] = {
    "userinfo": lambda pw: f"postgresql://{USER}:{pw}@{HOST}:5432/{DATABASE}?sslmode=require",
    "userinfo encoded": lambda pw: (
        f"postgresql://{USER}:{urllib.parse.quote(pw, safe='')}@{HOST}:5432/{DATABASE}"
    ),
    "no user": lambda pw: f"postgres://:{pw}@{HOST}/{DATABASE}",
    "no user encoded": lambda pw: (
        f"postgres://:{urllib.parse.quote(pw, safe='')}@{HOST}/{DATABASE}"
    ),
    "query": lambda pw: (
        f"postgresql://{USER}@{HOST}:5432/{DATABASE}?sslmode=require&password={pw}"
        "&application_name=api"
    ),
    "query encoded": lambda pw: (
        f"postgresql://{HOST}/{DATABASE}?PassWord={urllib.parse.quote(pw, safe='')}&schema=hooks"
    ),
    "query encoded key": lambda pw: (
        f"postgresql://{HOST}/{DATABASE}?pass%77ord={urllib.parse.quote_plus(pw)}"
    ),
    "keywords": lambda pw: (
        f"host={HOST} port=5432 dbname={DATABASE} user={USER} password={_kv_quoted(pw)} "
        "sslmode=require"
    ),
    "keywords, password first": lambda pw: (
        f"password = {_kv_quoted(pw)} host={HOST} dbname={DATABASE}"
    ),
    "missing colon": lambda pw: f"postgresql//{USER}:{pw}@{HOST}/{DATABASE}",
    "one slash": lambda pw: f"postgresql:/{USER}:{pw}@{HOST}/{DATABASE}",
}

# Printable text, heavy on the characters URLs and DSNs give a meaning to.
passwords = st.text(
    st.one_of(
        st.sampled_from("@:/?&=%# '\"\\+;,[]"),
        st.characters(min_codepoint=0x21, max_codepoint=0x7E),
        st.characters(blacklist_categories=("Cc", "Cs", "Co", "Cn", "Zl", "Zp")),
    ),
    min_size=4,
    max_size=40,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(form=st.sampled_from(sorted(FORMS)), password=passwords)
@example(form="userinfo", password="p@ss:w/rd?x=1&y")
@example(form="query", password="a&b=c d%zz")
@example(form="keywords", password="it's a \\secret")
@example(form="missing colon", password="s3cret")
def test_no_password_survives_and_the_rest_stays_readable(form: str, password: str) -> None:
    make = FORMS[form]
    encoded = urllib.parse.quote(password, safe="")
    surroundings = make("***")
    assume(password not in surroundings and encoded not in surroundings)
    url = make(password)

    shown = redact_store_url(url)

    assert password not in shown
    assert encoded not in shown
    assert urllib.parse.quote_plus(password) not in shown
    assert HOST in shown and DATABASE in shown
    if not form.startswith("keywords"):
        assert shown.startswith("postgres")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cret@h:5432/db", "postgresql://app:***@h:5432/db"),
        ("postgresql://:s3cret@h/db", "postgresql://:***@h/db"),
        (
            "postgresql://app@h/db?PASSWORD=s3cret&sslmode=require",
            "postgresql://app@h/db?PASSWORD=***&sslmode=require",
        ),
        ("postgresql://h/db?sslpassword=s3cret", "postgresql://h/db?sslpassword=***"),
        ("host=h password=s3cret dbname=db", "host=h password=*** dbname=db"),
        ("host=h password='s3 cr\\'et' dbname=db", "host=h password=*** dbname=db"),
        ("postgresql//app:s3cret@h/db", "postgresql//app:***@h/db"),
        # '@' in another parameter's value is not taken for the end of the password
        (
            "postgresql://app:s3cret@h/db?application_name=me@work",
            "postgresql://app:***@h/db?application_name=me@work",
        ),
        ("postgresql://app@h/db", "postgresql://app@h/db"),
        ("sqlite:///relative/file.db", "sqlite:///relative/file.db"),
        ("sqlite:////abs/file.db", "sqlite:////abs/file.db"),
        ("memory://", "memory://"),
        ("", ""),
    ],
)
def test_what_is_hidden_and_what_is_shown(url: str, shown: str) -> None:
    assert redact_store_url(url) == shown


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_text_is_redacted_without_raising(text: str) -> None:
    shown = redact_store_url(text)
    assert isinstance(shown, str) and shown.isprintable()
    assert isinstance(redact_in(f'bad "{text}"', text), str)


@pytest.mark.parametrize(
    "value", [None, 42, b"postgresql://app:s3cret@h/db", "\x00", "postgresql://\udcff:s3cret@h"]
)
def test_odd_inputs_give_text_and_never_the_password(value: object) -> None:
    shown = redact_store_url(value)
    assert isinstance(shown, str) and "s3cret" not in shown


def test_very_long_urls_are_shortened_after_redaction() -> None:
    url = "postgresql://app:s3cret@h/" + "d" * 1_000_000 + "?password=" + "x" * 100
    shown = redact_store_url(url)
    assert shown.startswith("postgresql://app:***@h/ddd") and shown.endswith("...")
    assert len(shown) <= 1000
    many = "postgresql://" + "a:@" * 100_000 + "?password=&" * 10_000
    assert isinstance(redact_store_url(many), str)


def test_driver_messages_lose_the_pieces_of_a_password_they_quote() -> None:
    dsn = "host=h password=sec ret"
    assert redact_in('missing "=" after "ret" in connection info string', dsn) == (
        'missing "=" after "***" in connection info string'
    )
    url = "postgresql//app:s3cret@h/db"
    assert (
        redact_in(f'missing "=" after "{url}"', url)
        == 'missing "=" after "postgresql//app:***@h/db"'
    )
    assert redact_in("nothing quoted", url) == "nothing quoted"


# -- through the public surfaces -------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "postgresql//u:s3cret@h/db",  # no scheme separator
        "postgresql:u:s3cret@h/db",
        "memory://u:s3cret@h",
        "nosuch://u:s3cret@h/db",
        "sqlite://u:s3cret@h/db",  # a host
        "sqlite:///file.db?password=s3cret",  # a query
        "SQLITE//u:s3cret@h/file.db",
    ],
)
def test_invalid_store_urls_do_not_repeat_the_password(url: str) -> None:
    with pytest.raises(wd.InvalidStoreURL) as caught:
        open_store(url)
    assert "s3cret" not in str(caught.value)
    assert "s3cret" not in repr(caught.value)


def test_the_error_still_says_which_url_was_wrong() -> None:
    with pytest.raises(wd.InvalidStoreURL, match="postgresql//u:\\*\\*\\*@h/db"):
        open_store("postgresql//u:s3cret@h/db")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:s3cret@h:notaport/db",
        "postgresql://u@h:notaport/db?password=s3cret",
        "postgresql://u:s3cret%zz@h/db",  # bad percent-encoding, quoted back by libpq
        "postgresql://u@h/db?password=s3cret&oops",
        "postgresql://u:s3cret@[::1/db",  # bad IPv6 literal
        "postgresql://u:s3/cret@h/db",  # libpq would read 's3' as the port
        "postgresql://u:s3cret@ss@h/db",  # ... and 'ss@h' as the host
    ],
)
def test_postgres_url_errors_do_not_repeat_the_password(url: str) -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(wd.InvalidStoreURL) as caught:
        open_store(url)
    text = str(caught.value)
    assert "s3" not in text and "cret" not in text  # nor any piece of it


def test_postgres_keyword_dsn_errors_do_not_repeat_the_password() -> None:
    pytest.importorskip("psycopg")
    from webhook_dispatch.stores.postgres import PostgresStore

    for dsn in (
        "host=h password=s3c ret",
        "host=h password='s3cret",
        "host=h port=x password=s3cret",
    ):
        with pytest.raises(wd.InvalidStoreURL) as caught:
            PostgresStore(dsn)
        assert "s3c" not in str(caught.value) and '"ret"' not in str(caught.value)


def test_framework_worker_commands_redact_the_same_way() -> None:
    from webhook_dispatch.contrib._worker import redact

    for url in ("postgresql://h/db?password=s3cret", "postgresql://:s3cret@h/db"):
        assert redact(url) == redact_store_url(url)
        assert "s3cret" not in redact(url)
