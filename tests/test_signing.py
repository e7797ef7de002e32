"""Tests for webhook_dispatch.signing: known answers, interop, rotation, hostile input."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from webhook_dispatch.errors import ConfigurationError, InvalidSecret, InvalidSignature
from webhook_dispatch.signing import (
    SIGNATURE_HEADERS,
    WEBHOOK_ID_HEADER,
    WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER,
    StripeSigner,
    generate_keypair,
    generate_secret,
    parse_secret,
    sign,
    sign_all,
    verify,
)

# The committed copy comes first so CI never depends on the shared checkout.
VECTOR_FILES = (
    Path(__file__).resolve().parent / "vectors" / "signatures.json",
    Path(__file__).resolve().parents[2] / "shared" / "vectors" / "signatures.json",
)


def load_vectors() -> dict[str, Any] | None:
    for path in VECTOR_FILES:
        if path.is_file():
            loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return loaded
    return None


VECTORS = load_vectors()
MISSING_VECTORS = pytest.mark.skip(
    reason=f"signature vectors not found at any of {[str(path) for path in VECTOR_FILES]}"
)
HMAC_VECTORS: list[Any] = (
    VECTORS["standard_webhooks_hmac"] if VECTORS else [pytest.param({}, marks=MISSING_VECTORS)]
)
UNPADDED_SECRETS: list[Any] = (
    VECTORS["standard_webhooks_secret_padding"]["unpadded_examples"]
    if VECTORS
    else [pytest.param("", marks=MISSING_VECTORS)]
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'


def headers_for(
    msg_id: str = MSG_ID,
    timestamp: int = TIMESTAMP,
    signature: str | None = None,
    *,
    secret: str = SECRET,
    body: bytes = BODY,
) -> dict[str, str]:
    if signature is None:
        signature = sign(secret, msg_id, timestamp, body)
    return {
        WEBHOOK_ID_HEADER: msg_id,
        WEBHOOK_TIMESTAMP_HEADER: str(timestamp),
        WEBHOOK_SIGNATURE_HEADER: signature,
    }


def b64_secret(key: bytes, *, prefix: bool = True, padded: bool = True) -> str:
    encoded = base64.b64encode(key).decode("ascii")
    if not padded:
        encoded = encoded.rstrip("=")
    return ("whsec_" + encoded) if prefix else encoded


# --- known answers -------------------------------------------------------------------


@pytest.mark.parametrize("vector", HMAC_VECTORS)
def test_sign_matches_known_answer(vector: dict[str, Any]) -> None:
    body = vector["payload"].encode()
    assert (
        sign(vector["secret"], vector["msg_id"], vector["timestamp"], body) == (vector["signature"])
    )


@pytest.mark.parametrize("vector", HMAC_VECTORS)
def test_verify_accepts_known_answer(vector: dict[str, Any]) -> None:
    headers = {
        "webhook-id": vector["msg_id"],
        "webhook-timestamp": str(vector["timestamp"]),
        "webhook-signature": vector["signature"],
    }
    verify(vector["payload"].encode(), headers, vector["secret"], now=vector["timestamp"])
    verify(vector["payload"], headers, vector["secret"], now=vector["timestamp"])


@pytest.mark.parametrize("vector", HMAC_VECTORS)
def test_known_answer_without_prefix(vector: dict[str, Any]) -> None:
    bare = vector["secret"].removeprefix("whsec_")
    body = vector["payload"].encode()
    assert sign(bare, vector["msg_id"], vector["timestamp"], body) == vector["signature"]


# --- secrets ---------------------------------------------------------------------------


@pytest.mark.parametrize("unpadded", UNPADDED_SECRETS)
def test_unpadded_secrets_are_accepted(unpadded: str) -> None:
    key = parse_secret(unpadded)
    padded = unpadded + "=" * (-len(unpadded) % 4)
    assert key == base64.b64decode(padded)
    assert parse_secret("whsec_" + unpadded) == key
    assert parse_secret(padded) == key
    assert parse_secret("whsec_" + padded) == key


@pytest.mark.parametrize("unpadded", UNPADDED_SECRETS)
def test_unpadded_secret_signs_and_verifies(unpadded: str) -> None:
    signature = sign(unpadded, MSG_ID, TIMESTAMP, BODY)
    padded = "whsec_" + unpadded + "=" * (-len(unpadded) % 4)
    assert sign(padded, MSG_ID, TIMESTAMP, BODY) == signature
    verify(BODY, headers_for(signature=signature), padded, now=TIMESTAMP)


def test_padded_secret_with_and_without_prefix_and_padding_sign_identically() -> None:
    key = bytes(range(25))  # 25 bytes: the base64 form ends in "=="
    forms = {
        b64_secret(key, prefix=prefix, padded=padded)
        for prefix in (True, False)
        for padded in (True, False)
    }
    assert len(forms) == 4
    signatures = {sign(form, MSG_ID, TIMESTAMP, BODY) for form in forms}
    assert len(signatures) == 1
    assert {parse_secret(form) for form in forms} == {key}


def test_generate_secret_shape() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 24
    assert len(parse_secret(secret)) == 24


@pytest.mark.parametrize("nbytes", [24, 25, 32, 63, 64])
def test_generate_secret_length(nbytes: int) -> None:
    secret = generate_secret(nbytes)
    assert secret.startswith("whsec_")
    assert len(parse_secret(secret)) == nbytes
    verify(BODY, headers_for(secret=secret), secret, now=TIMESTAMP)


def test_generate_secret_is_unique() -> None:
    assert len({generate_secret() for _ in range(200)}) == 200


@pytest.mark.parametrize("nbytes", [0, 1, 16, 23, 65, 1024, -24, True, 24.0, "24", None])
def test_generate_secret_refuses_bad_nbytes(nbytes: Any) -> None:
    with pytest.raises(InvalidSecret):
        generate_secret(nbytes)


BAD_SECRETS: list[Any] = [
    "",
    "whsec_",
    "whsec_whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    " whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n",
    "whsec_MfKQ9r8GKYqr TwjUPD8ILPZIo2LaLaSw",
    "whsec_MfKQ9r8GKYqr\tTwjUPD8ILPZIo2LaLaSw",
    "whsec_MfKQ9r8GKYqr-TwjUPD8ILPZIo2LaLaSw",  # URL-safe alphabet
    "whsec_MfKQ9r8GKYqr_TwjUPD8ILPZIo2LaLaSw",
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw===",
    "whsec_MfKQ9r8GKYq=rTwjUPD8ILPZIo2LaLaSw",
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwB",  # length 1 mod 4: cannot be base64
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\u0661",  # a non-ASCII digit
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\u00e9",
    "====",
    "whsec_" + base64.b64encode(b"k" * 15).decode(),  # too short
    "whsec_" + base64.b64encode(b"k" * 129).decode(),  # too long
    "whsec_" + "A" * 100_000,
    "sk_live_plain_text_password",
    "It's a Secret to Everybody",
    None,
    123,
    b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    {"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
]


def assert_secret_not_leaked(error: Exception, secret: Any) -> None:
    text = str(error)
    if isinstance(secret, str):
        body = secret.removeprefix("whsec_").strip()
        if len(body) >= 6:
            assert body not in text
            assert body[:12] not in text
    if isinstance(secret, (str, bytes)) and len(secret) >= 6:
        assert repr(secret) not in text


@pytest.mark.parametrize("secret", BAD_SECRETS)
def test_bad_secret_is_refused_without_leaking_it(secret: Any) -> None:
    with pytest.raises(InvalidSecret) as caught:
        parse_secret(secret)
    assert_secret_not_leaked(caught.value, secret)


@pytest.mark.parametrize("secret", BAD_SECRETS)
def test_bad_secret_passed_to_sign_and_verify_is_a_caller_bug(secret: Any) -> None:
    with pytest.raises(InvalidSecret) as caught:
        sign(secret, MSG_ID, TIMESTAMP, BODY)
    assert_secret_not_leaked(caught.value, secret)
    with pytest.raises(InvalidSecret) as caught:
        verify(BODY, headers_for(), secret, now=TIMESTAMP)
    assert_secret_not_leaked(caught.value, secret)
    with pytest.raises(InvalidSecret):
        verify(BODY, headers_for(), [SECRET, secret], now=TIMESTAMP)


def test_no_secrets_is_a_caller_bug() -> None:
    with pytest.raises(InvalidSecret):
        verify(BODY, headers_for(), [], now=TIMESTAMP)
    with pytest.raises(InvalidSecret):
        sign_all([], MSG_ID, TIMESTAMP, BODY)


def test_bad_secret_is_reported_even_for_garbage_requests() -> None:
    with pytest.raises(InvalidSecret):
        verify(BODY, {}, "not a secret!", now=TIMESTAMP)


# --- interop with the standardwebhooks reference package -------------------------------


def test_reference_package_verifies_our_signature() -> None:
    secret = generate_secret()
    timestamp = int(time.time())
    body = '{"type":"order.created","data":{"id":"ord_1"}}'
    headers = headers_for("msg_interop", timestamp, secret=secret, body=body.encode())
    assert Webhook(secret).verify(body.encode(), headers) == json.loads(body)


@pytest.mark.parametrize("secret", [SECRET, OTHER_SECRET, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
def test_we_verify_the_reference_package_signature(secret: str) -> None:
    moment = datetime.fromtimestamp(TIMESTAMP, tz=timezone.utc)
    signature = Webhook(secret).sign(MSG_ID, moment, BODY.decode())
    assert signature == sign(secret, MSG_ID, TIMESTAMP, BODY)
    verify(BODY, headers_for(signature=signature), secret, now=moment)


@settings(max_examples=50, deadline=None)
@given(
    key=st.binary(min_size=24, max_size=64),
    msg_id=st.from_regex(r"msg_[A-Za-z0-9]{1,40}", fullmatch=True),
    body=st.text(),
)
def test_interop_round_trip_both_ways(key: bytes, msg_id: str, body: str) -> None:
    secret = b64_secret(key)
    reference = Webhook(secret)
    timestamp = int(time.time())
    ours = headers_for(msg_id, timestamp, secret=secret, body=body.encode())
    reference.verify(body, ours, json_parse=False)
    theirs = reference.sign(msg_id, datetime.fromtimestamp(timestamp, tz=timezone.utc), body)
    verify(body, headers_for(msg_id, timestamp, theirs), secret, now=timestamp)
    verify(body.encode(), headers_for(msg_id, timestamp, theirs), secret, now=timestamp)


def test_reference_package_rejects_our_signature_with_wrong_secret() -> None:
    timestamp = int(time.time())
    headers = headers_for("msg_1", timestamp, secret=SECRET)
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER_SECRET).verify(BODY, headers)


# --- rotation ----------------------------------------------------------------------------


def test_sign_all_has_one_signature_per_secret_in_order() -> None:
    header = sign_all([SECRET, OTHER_SECRET], MSG_ID, TIMESTAMP, BODY)
    assert header.split(" ") == [
        sign(SECRET, MSG_ID, TIMESTAMP, BODY),
        sign(OTHER_SECRET, MSG_ID, TIMESTAMP, BODY),
    ]
    assert sign_all([SECRET], MSG_ID, TIMESTAMP, BODY) == sign(SECRET, MSG_ID, TIMESTAMP, BODY)
    assert sign_all(SECRET, MSG_ID, TIMESTAMP, BODY) == sign(SECRET, MSG_ID, TIMESTAMP, BODY)


@pytest.mark.parametrize("receiver_secret", [SECRET, OTHER_SECRET])
def test_rotation_header_verifies_with_either_secret(receiver_secret: str) -> None:
    header = sign_all([SECRET, OTHER_SECRET], MSG_ID, TIMESTAMP, BODY)
    verify(BODY, headers_for(signature=header), receiver_secret, now=TIMESTAMP)


def test_rotation_header_interop_with_reference_package() -> None:
    timestamp = int(time.time())
    header = sign_all([SECRET, OTHER_SECRET], "msg_rot", timestamp, BODY)
    for secret in (SECRET, OTHER_SECRET):
        Webhook(secret).verify(BODY, headers_for("msg_rot", timestamp, header), json_parse=False)


def test_receiver_with_several_secrets_accepts_one_match() -> None:
    third = generate_secret()
    header = sign(OTHER_SECRET, MSG_ID, TIMESTAMP, BODY)
    verify(BODY, headers_for(signature=header), [third, OTHER_SECRET], now=TIMESTAMP)
    verify(BODY, headers_for(signature=header), (OTHER_SECRET,), now=TIMESTAMP)


def test_several_signatures_one_matching_is_accepted() -> None:
    others = [sign(generate_secret(), MSG_ID, TIMESTAMP, BODY) for _ in range(3)]
    good = sign(SECRET, MSG_ID, TIMESTAMP, BODY)
    header = " ".join([*others[:2], good, others[2]])
    verify(BODY, headers_for(signature=header), SECRET, now=TIMESTAMP)


def test_several_signatures_none_matching_is_refused() -> None:
    header = " ".join(sign(generate_secret(), MSG_ID, TIMESTAMP, BODY) for _ in range(4))
    with pytest.raises(InvalidSignature, match="no v1 signature"):
        verify(BODY, headers_for(signature=header), [SECRET, OTHER_SECRET], now=TIMESTAMP)


def test_other_versions_are_ignored() -> None:
    good = sign(SECRET, MSG_ID, TIMESTAMP, BODY)
    payload = good.removeprefix("v1,")
    verify(BODY, headers_for(signature=f"v1a,{payload} v2,xyz {good}"), SECRET, now=TIMESTAMP)
    for only_other in (f"v1a,{payload}", f"V1,{payload}", f"v2,{payload}", payload):
        with pytest.raises(InvalidSignature):
            verify(BODY, headers_for(signature=only_other), SECRET, now=TIMESTAMP)


def test_extra_whitespace_between_signatures_is_tolerated() -> None:
    good = sign(SECRET, MSG_ID, TIMESTAMP, BODY)
    verify(BODY, headers_for(signature=f"  v1,AAAA   {good}  "), SECRET, now=TIMESTAMP)


# --- timestamps ---------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0, 1, 299, 300, -1, -299, -300])
def test_timestamp_within_tolerance_is_accepted(offset: int) -> None:
    verify(BODY, headers_for(), SECRET, now=TIMESTAMP + offset)


def test_timestamp_too_old() -> None:
    with pytest.raises(InvalidSignature, match="too old"):
        verify(BODY, headers_for(), SECRET, now=TIMESTAMP + 301)


def test_timestamp_too_new() -> None:
    with pytest.raises(InvalidSignature, match="too new"):
        verify(BODY, headers_for(), SECRET, now=TIMESTAMP - 301)


def test_custom_tolerance() -> None:
    verify(BODY, headers_for(), SECRET, tolerance=10, now=TIMESTAMP + 10)
    with pytest.raises(InvalidSignature, match="too old"):
        verify(BODY, headers_for(), SECRET, tolerance=10, now=TIMESTAMP + 11)
    with pytest.raises(InvalidSignature, match="too new"):
        verify(BODY, headers_for(), SECRET, tolerance=0, now=TIMESTAMP - 1)
    verify(BODY, headers_for(), SECRET, tolerance=0, now=TIMESTAMP)


def test_now_as_datetime() -> None:
    aware = datetime.fromtimestamp(TIMESTAMP, tz=timezone.utc)
    verify(BODY, headers_for(), SECRET, now=aware)
    verify(BODY, headers_for(), SECRET, now=aware.astimezone(timezone(timedelta(hours=-7))))
    verify(BODY, headers_for(), SECRET, now=aware.replace(tzinfo=None))  # naive = UTC
    with pytest.raises(InvalidSignature, match="too old"):
        verify(BODY, headers_for(), SECRET, now=aware + timedelta(minutes=6))


def test_now_defaults_to_the_system_clock() -> None:
    timestamp = int(time.time())
    verify(BODY, headers_for(timestamp=timestamp), SECRET)
    with pytest.raises(InvalidSignature, match="too old"):
        verify(BODY, headers_for(timestamp=TIMESTAMP), SECRET)


@pytest.mark.parametrize(
    "timestamp",
    [
        "",
        "-1",
        "-1614265330",
        "+1614265330",
        "1614265330.0",
        "1.6e9",
        "0x60376ff2",
        "1_614_265_330",
        "\u0661\u0666\u0661\u0664",  # Arabic-Indic digits, which int() would accept
        "1614265330 1614265330",
        "nan",
        "9" * 19,
        "9" * 5000,
        "9" * 100_000,
    ],
)
def test_malformed_timestamp_is_refused(timestamp: str) -> None:
    headers = headers_for()
    headers[WEBHOOK_TIMESTAMP_HEADER] = timestamp
    with pytest.raises(InvalidSignature):
        verify(BODY, headers, SECRET, now=TIMESTAMP)


@pytest.mark.parametrize("timestamp", [0, 1, 10**17])
def test_far_away_timestamp_is_refused(timestamp: int) -> None:
    with pytest.raises(InvalidSignature, match=r"too (old|new)"):
        verify(BODY, headers_for(timestamp=timestamp), SECRET, now=TIMESTAMP)


def test_leading_zeros_mean_the_same_second() -> None:
    headers = headers_for()
    headers[WEBHOOK_TIMESTAMP_HEADER] = "00" + str(TIMESTAMP)
    verify(BODY, headers, SECRET, now=TIMESTAMP)


@pytest.mark.parametrize("tolerance", [-1, float("nan"), float("inf"), "300", None, True])
def test_bad_tolerance_is_a_caller_bug(tolerance: Any) -> None:
    with pytest.raises(ConfigurationError):
        verify(BODY, headers_for(), SECRET, tolerance, now=TIMESTAMP)


@pytest.mark.parametrize("now", ["yesterday", float("nan"), float("inf"), [], True])
def test_bad_now_is_a_caller_bug(now: Any) -> None:
    with pytest.raises(ConfigurationError):
        verify(BODY, headers_for(), SECRET, now=now)


def number_id(value: object) -> str:
    # pytest's default id is str(), which raises for ints of more than 4,300 digits.
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"{'-' if value < 0 else ''}int_of_{value.bit_length()}_bits"
    return repr(value)


@pytest.mark.parametrize(
    "now",
    [
        10**400,
        -(10**400),
        10**5000,
        10**20,
        10**18,
        -(10**18),
        1e18,
        1e300,
        -1e300,
        float("-inf"),
        False,
    ],
    ids=number_id,
)
def test_out_of_range_now_is_a_caller_bug(now: Any) -> None:
    with pytest.raises(ConfigurationError, match="now must be"):
        verify(BODY, headers_for(), SECRET, now=now)


@pytest.mark.parametrize("tolerance", [10**400, 10**5000, 1e300, sys.float_info.max], ids=number_id)
@pytest.mark.parametrize("timestamp", [0, TIMESTAMP, 10**18 - 1])
def test_huge_tolerance_accepts_every_timestamp(tolerance: Any, timestamp: int) -> None:
    verify(BODY, headers_for(timestamp=timestamp), SECRET, tolerance, now=TIMESTAMP)


@pytest.mark.parametrize(
    "tolerance",
    [-(10**400), -1e-9, float("-inf"), False, 1j, Decimal(300), Fraction(300)],
    ids=number_id,
)
def test_more_bad_tolerances_are_a_caller_bug(tolerance: Any) -> None:
    with pytest.raises(ConfigurationError, match="tolerance must be"):
        verify(BODY, headers_for(), SECRET, tolerance, now=TIMESTAMP)


@pytest.mark.parametrize("timestamp", ["9" * 400, "1" + "0" * 399, str(10**18), "9" * 19])
@pytest.mark.parametrize("tolerance", [300, 10**400], ids=number_id)
def test_huge_timestamp_header_is_an_invalid_signature(timestamp: str, tolerance: int) -> None:
    headers = headers_for()
    headers[WEBHOOK_TIMESTAMP_HEADER] = timestamp
    with pytest.raises(InvalidSignature, match="at most 18 digits"):
        verify(BODY, headers, SECRET, tolerance, now=TIMESTAMP)


any_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),
    st.booleans(),
)


@settings(max_examples=500, deadline=None)
@given(
    now=any_numbers,
    tolerance=any_numbers,
    timestamp=st.one_of(st.integers(min_value=0, max_value=10**18 - 1), st.just(TIMESTAMP)),
)
def test_any_number_gets_a_typed_answer(now: Any, tolerance: Any, timestamp: int) -> None:
    # Every int, float and bool for now and tolerance: ConfigurationError exactly when the
    # argument is outside its documented domain, otherwise the timestamp is judged, and
    # nothing else (OverflowError, ValueError from str()) ever escapes.
    headers = headers_for(timestamp=timestamp)
    now_usable = not isinstance(now, bool) and -(10**18) < now < 10**18
    tolerance_usable = not isinstance(tolerance, bool) and 0 <= tolerance < math.inf
    if not (now_usable and tolerance_usable):
        with pytest.raises(ConfigurationError):
            verify(BODY, headers, SECRET, tolerance, now=now)
        return
    distance = abs(Fraction(now) - timestamp)  # exact, unlike the float verify() uses
    try:
        verify(BODY, headers, SECRET, tolerance, now=now)
    except InvalidSignature:
        assert distance > Fraction(tolerance) - 1  # exact: tolerance + 1 rounds at 2**53
    else:
        assert distance < Fraction(tolerance) + 1


BAD_SIGNING_TIMESTAMPS = [
    10**400,
    -(10**400),
    10**18,
    -1,
    True,
    1614265330.0,
    float("nan"),
    float("inf"),
    "1614265330",
    None,
]


@pytest.mark.parametrize("timestamp", BAD_SIGNING_TIMESTAMPS, ids=number_id)
def test_signing_with_an_unverifiable_timestamp_is_a_caller_bug(timestamp: Any) -> None:
    ed25519_key = generate_keypair()[0]
    with pytest.raises(ConfigurationError, match="timestamp must be"):
        sign(SECRET, MSG_ID, timestamp, BODY)
    with pytest.raises(ConfigurationError, match="timestamp must be"):
        sign(ed25519_key, MSG_ID, timestamp, BODY)
    with pytest.raises(ConfigurationError, match="timestamp must be"):
        sign_all([SECRET, OTHER_SECRET], MSG_ID, timestamp, BODY)
    with pytest.raises(ConfigurationError, match="timestamp must be"):
        StripeSigner().sign([SECRET], MSG_ID, timestamp, BODY)


def test_error_messages_never_spell_out_a_huge_number() -> None:
    with pytest.raises(ConfigurationError) as caught:
        sign(SECRET, MSG_ID, 10**5000, BODY)
    assert "about 5000 digits" in str(caught.value)
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("timestamp", [0, 10**18 - 1])
def test_signing_accepts_the_whole_verifiable_range(timestamp: int) -> None:
    verify(BODY, headers_for(timestamp=timestamp), SECRET, now=timestamp)
    StripeSigner().sign([SECRET], MSG_ID, timestamp, BODY)


# --- headers and tampering ---------------------------------------------------------------


@pytest.mark.parametrize("missing", SIGNATURE_HEADERS)
def test_missing_header(missing: str) -> None:
    headers = headers_for()
    del headers[missing]
    with pytest.raises(InvalidSignature, match=f"{missing} header is missing"):
        verify(BODY, headers, SECRET, now=TIMESTAMP)


@pytest.mark.parametrize("emptied", SIGNATURE_HEADERS)
@pytest.mark.parametrize("value", ["", "   ", "\t"])
def test_empty_header(emptied: str, value: str) -> None:
    headers = headers_for()
    headers[emptied] = value
    with pytest.raises(InvalidSignature):
        verify(BODY, headers, SECRET, now=TIMESTAMP)


def test_header_names_are_case_insensitive() -> None:
    headers = {name.upper(): value for name, value in headers_for().items()}
    verify(BODY, headers, SECRET, now=TIMESTAMP)
    headers = {name.title(): value for name, value in headers_for().items()}
    verify(BODY, headers, SECRET, now=TIMESTAMP)


def test_non_ascii_lookalike_header_name_does_not_count() -> None:
    headers = headers_for()
    headers["webhoo\u212a-id"] = headers.pop(WEBHOOK_ID_HEADER)  # KELVIN SIGN lowers to "k"
    with pytest.raises(InvalidSignature, match="webhook-id header is missing"):
        verify(BODY, headers, SECRET, now=TIMESTAMP)


def test_httpx_headers() -> None:
    verify(BODY, httpx.Headers(headers_for()), SECRET, now=TIMESTAMP)
    request = httpx.Request("POST", "https://example.com/hook", headers=headers_for(), content=BODY)
    verify(request.content, request.headers, SECRET, now=TIMESTAMP)


def test_list_of_pairs_and_raw_asgi_headers() -> None:
    pairs = list(headers_for().items())
    verify(BODY, pairs, SECRET, now=TIMESTAMP)
    raw = [(name.encode(), value.encode()) for name, value in pairs]
    verify(BODY, [(b"content-type", b"application/json"), *raw], SECRET, now=TIMESTAMP)


def test_duplicate_id_or_timestamp_is_refused() -> None:
    pairs = list(headers_for().items())
    for name in (WEBHOOK_ID_HEADER, WEBHOOK_TIMESTAMP_HEADER):
        doubled = [*pairs, (name.upper(), dict(pairs)[name])]
        with pytest.raises(InvalidSignature, match="more than once"):
            verify(BODY, doubled, SECRET, now=TIMESTAMP)
        with pytest.raises(InvalidSignature, match="more than once"):
            verify(BODY, httpx.Headers(doubled), SECRET, now=TIMESTAMP)


def test_several_signature_headers_are_combined() -> None:
    headers = [*headers_for(signature="v1,AAAA").items()]
    headers.append((WEBHOOK_SIGNATURE_HEADER, sign(SECRET, MSG_ID, TIMESTAMP, BODY)))
    verify(BODY, headers, SECRET, now=TIMESTAMP)


def test_tampered_body() -> None:
    headers = headers_for()
    for body in (BODY + b" ", BODY[:-1], b"", BODY.replace(b"2", b"3")):
        with pytest.raises(InvalidSignature, match="no v1 signature"):
            verify(body, headers, SECRET, now=TIMESTAMP)


def test_tampered_id() -> None:
    headers = headers_for()
    headers[WEBHOOK_ID_HEADER] = MSG_ID + "x"
    with pytest.raises(InvalidSignature, match="no v1 signature"):
        verify(BODY, headers, SECRET, now=TIMESTAMP)


def test_tampered_timestamp() -> None:
    headers = headers_for()
    headers[WEBHOOK_TIMESTAMP_HEADER] = str(TIMESTAMP + 1)
    with pytest.raises(InvalidSignature, match="no v1 signature"):
        verify(BODY, headers, SECRET, now=TIMESTAMP)


def test_wrong_secret() -> None:
    with pytest.raises(InvalidSignature) as caught:
        verify(BODY, headers_for(), OTHER_SECRET, now=TIMESTAMP)
    assert_secret_not_leaked(caught.value, OTHER_SECRET)
    assert_secret_not_leaked(caught.value, SECRET)


@pytest.mark.parametrize(
    "signature",
    [
        "v1,",
        "v1",
        ",",
        "v1,!!!!",
        "v1,AAAA",
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE",  # right MAC, padding dropped
        "v1,g0hM9SsE-OTPJTGt_tmIKtSyZlE3uFJELVlNIOLJ1OE=",  # URL-safe alphabet
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=,extra",
        "v1," + "A" * 8000,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= " + "x" * 9000,  # too long
    ],
)
def test_malformed_signatures_are_refused(signature: str) -> None:
    with pytest.raises(InvalidSignature):
        verify(BODY, headers_for(signature=signature), SECRET, now=TIMESTAMP)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (WEBHOOK_ID_HEADER, "msg_\u00e9"),
        (WEBHOOK_ID_HEADER, "msg_1\r\nx-injected: 1"),
        (WEBHOOK_ID_HEADER, "msg\x00"),
        (WEBHOOK_ID_HEADER, "m" * 100_000),
        (WEBHOOK_SIGNATURE_HEADER, "v1,\u00e9"),
        (WEBHOOK_TIMESTAMP_HEADER, "\u00b9"),
    ],
)
def test_hostile_header_values_are_refused(name: str, value: str) -> None:
    headers = headers_for()
    headers[name] = value
    with pytest.raises(InvalidSignature):
        verify(BODY, headers, SECRET, now=TIMESTAMP)


def test_non_ascii_bytes_header_is_refused() -> None:
    raw = [(k.encode(), v.encode()) for k, v in headers_for().items()]
    raw[0] = (raw[0][0], "msg_\u00e9".encode())
    with pytest.raises(InvalidSignature, match="not ASCII"):
        verify(BODY, raw, SECRET, now=TIMESTAMP)


@pytest.mark.parametrize(
    "headers",
    [None, 42, "webhook-id", b"webhook-id", [("a",)], [("a", "b", "c")], ["ab"], [None], object()],
)
def test_unusable_header_containers_are_refused(headers: Any) -> None:
    with pytest.raises(InvalidSignature):
        verify(BODY, headers, SECRET, now=TIMESTAMP)


@pytest.mark.parametrize("value", [None, 1614265330, 1.5, ["v1,x"]])
def test_non_text_header_values_are_refused(value: Any) -> None:
    headers: dict[str, Any] = headers_for()
    headers[WEBHOOK_TIMESTAMP_HEADER] = value
    with pytest.raises(InvalidSignature):
        verify(BODY, headers, SECRET, now=TIMESTAMP)


def test_body_types() -> None:
    headers = headers_for()
    verify(BODY, headers, SECRET, now=TIMESTAMP)
    verify(BODY.decode(), headers, SECRET, now=TIMESTAMP)
    verify(bytearray(BODY), headers, SECRET, now=TIMESTAMP)  # type: ignore[arg-type]
    verify(memoryview(BODY), headers, SECRET, now=TIMESTAMP)  # type: ignore[arg-type]
    for bad in (None, 42, {"test": 2432232314}, "\ud800"):
        with pytest.raises(InvalidSignature):
            verify(bad, headers, SECRET, now=TIMESTAMP)  # type: ignore[arg-type]


def test_non_utf8_body_bytes_verify() -> None:
    body = b"\xff\xfe binary \x00"
    verify(body, headers_for(body=body), SECRET, now=TIMESTAMP)


# --- properties ------------------------------------------------------------------------------

secret_keys = st.binary(min_size=16, max_size=128)
message_ids = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=80
)
timestamps = st.integers(min_value=0, max_value=10**12)


@settings(deadline=None)
@given(
    key=secret_keys,
    prefix=st.booleans(),
    padded=st.booleans(),
    msg_id=message_ids,
    timestamp=timestamps,
    body=st.binary(max_size=4096),
)
def test_round_trip(
    key: bytes, prefix: bool, padded: bool, msg_id: str, timestamp: int, body: bytes
) -> None:
    secret = b64_secret(key, prefix=prefix, padded=padded)
    assert parse_secret(secret) == key
    signature = sign(secret, msg_id, timestamp, body)
    assert signature.startswith("v1,")
    assert len(base64.b64decode(signature[3:], validate=True)) == 32
    assert signature == sign(b64_secret(key), msg_id, timestamp, body)
    verify(body, headers_for(msg_id, timestamp, signature), secret, now=timestamp)


@settings(deadline=None)
@given(key=secret_keys, msg_id=message_ids, timestamp=timestamps, body=st.text(max_size=500))
def test_round_trip_text_body(key: bytes, msg_id: str, timestamp: int, body: str) -> None:
    secret = b64_secret(key)
    signature = sign(secret, msg_id, timestamp, body.encode())
    verify(body, headers_for(msg_id, timestamp, signature), secret, now=timestamp)


@settings(deadline=None)
@given(key=secret_keys, body=st.binary(max_size=256), other=st.binary(max_size=256))
def test_any_other_body_is_refused(key: bytes, body: bytes, other: bytes) -> None:
    secret = b64_secret(key)
    headers = headers_for(body=body, secret=secret)
    if other == body:
        verify(other, headers, secret, now=TIMESTAMP)
    else:
        with pytest.raises(InvalidSignature):
            verify(other, headers, secret, now=TIMESTAMP)


NOW = int(time.time())
VALID = headers_for(timestamp=NOW)

header_names = st.one_of(
    st.sampled_from([*SIGNATURE_HEADERS, *(name.upper() for name in SIGNATURE_HEADERS)]),
    st.sampled_from([name.encode() for name in SIGNATURE_HEADERS]),
    st.text(max_size=30),
    st.binary(max_size=30),
    st.none(),
    st.integers(),
)
header_values = st.one_of(
    st.sampled_from(list(VALID.values())),
    st.sampled_from([value.encode() for value in VALID.values()]),
    st.text(),
    st.text(alphabet="v1a, =+/0123456789ABCDEFxyz\t"),
    st.binary(),
    st.integers().map(str),
    st.integers(),
    st.floats(),
    st.none(),
    st.lists(st.text(), max_size=3),
)
header_containers = st.one_of(
    st.dictionaries(header_names, header_values, max_size=8),
    st.lists(st.tuples(header_names, header_values), max_size=8),
    st.lists(st.one_of(header_values, st.tuples(header_values)), max_size=4),
    # a valid request with one header replaced by something hostile
    st.tuples(st.sampled_from(SIGNATURE_HEADERS), header_values).map(
        lambda change: {**VALID, change[0]: change[1]}
    ),
    header_values,
)
bodies = st.one_of(st.binary(max_size=200), st.text(max_size=200), st.just(BODY), st.none())


@settings(max_examples=500, deadline=None)
@given(headers=header_containers, body=bodies)
def test_fuzzed_headers_raise_only_invalid_signature(headers: Any, body: Any) -> None:
    # Returning normally is fine (the fuzz may rebuild a valid request); any exception
    # other than InvalidSignature fails the test.
    with contextlib.suppress(InvalidSignature):
        verify(body, headers, SECRET, now=NOW)
