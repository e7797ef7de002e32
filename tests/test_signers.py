"""Signature schemes: known-answer vectors for each, interop with independent verifiers
(the standardwebhooks package, cryptography, hand-written HMAC), per-subscription choice,
custom signers, and secret rotation across a restart."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

import webhook_dispatch as wd
from webhook_dispatch.signing import (
    Ed25519Signer,
    GitHubSigner,
    StandardSigner,
    StripeSigner,
    get_signer,
    signer_names,
)
from webhook_dispatch.testing import FakeClock, MockReceiver

ed25519 = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ed25519")

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "signatures.json").read_text(encoding="utf-8")
)


def _headers(msg_id: str, timestamp: int, signature: str) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


@pytest.mark.parametrize("vector", VECTORS["standard_webhooks_hmac"])
def test_standard_vectors(vector: dict[str, Any]) -> None:
    [(name, value)] = StandardSigner().sign(
        [vector["secret"]], vector["msg_id"], vector["timestamp"], vector["payload"].encode()
    )
    assert (name, value) == ("webhook-signature", vector["signature"])


@pytest.mark.parametrize("vector", VECTORS["standard_webhooks_ed25519"])
def test_ed25519_vectors(vector: dict[str, Any]) -> None:
    body = vector["payload"].encode()
    [(name, value)] = Ed25519Signer().sign(
        [vector["secret_key"]], vector["msg_id"], vector["timestamp"], body
    )
    assert (name, value) == ("webhook-signature", vector["signature"])
    assert wd.public_key(vector["secret_key"]) == vector["public_key"]
    headers = _headers(vector["msg_id"], vector["timestamp"], value)
    wd.verify(body, headers, vector["public_key"], now=vector["timestamp"])
    wd.verify(body, headers, vector["secret_key"], now=vector["timestamp"])
    with pytest.raises(wd.InvalidSignature, match="v1a"):
        wd.verify(body + b" ", headers, vector["public_key"], now=vector["timestamp"])


@pytest.mark.parametrize("vector", VECTORS["github_style"])
def test_github_vectors(vector: dict[str, Any]) -> None:
    [(name, value)] = GitHubSigner().sign(
        [vector["secret"]], "msg_x", 0, vector["payload"].encode()
    )
    assert name.lower() == vector["header"].lower()
    assert value == vector["signature"]


@pytest.mark.parametrize("vector", VECTORS["stripe_style"])
def test_stripe_vectors(vector: dict[str, Any]) -> None:
    [(name, value)] = StripeSigner().sign(
        [vector["secret"]], "msg_x", vector["timestamp"], vector["payload"].encode()
    )
    assert name.lower() == vector["header"].lower()
    assert value == vector["signature"]


def test_builtin_names() -> None:
    assert {"standard", "standard-ed25519", "github", "stripe"} <= set(signer_names())
    with pytest.raises(wd.ConfigurationError, match="unknown signature scheme"):
        get_signer("md5")


def test_v1a_signature_verifies_with_cryptography_directly() -> None:
    secret_key, public = wd.generate_keypair()
    assert secret_key.startswith("whsk_") and public.startswith("whpk_")
    body = b'{"a":1}'
    signature = wd.sign(secret_key, "msg_1", 1700000000, body)
    version, _, encoded = signature.partition(",")
    assert version == "v1a"
    key = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(public[5:]))
    key.verify(base64.b64decode(encoded), b"msg_1.1700000000." + body)  # raises if wrong


def test_bad_ed25519_keys() -> None:
    secret_key, _ = wd.generate_keypair()
    raw = base64.b64decode(secret_key[5:])
    mismatched = "whsk_" + base64.b64encode(raw[:32] + bytes(32)).decode()
    for bad in (mismatched, "whsk_", "whsk_!!!", "whsk_" + base64.b64encode(raw[:32]).decode()):
        with pytest.raises(wd.InvalidSecret) as caught:
            Ed25519Signer().check_secret(bad)
        assert bad[5:] not in str(caught.value) or not bad[5:]
    with pytest.raises(wd.InvalidSecret):
        wd.verify(b"", _headers("m", 0, "v1a,AAAA"), "whpk_AAAA", now=0)


def _deliver(signature: str, secret: str | None = None, **subscribe: Any) -> tuple[Any, Any]:
    clock = FakeClock(datetime.now(timezone.utc))  # real time: the reference package checks it
    receiver = MockReceiver(clock=clock)
    with wd.Dispatcher(clock=clock, transport=receiver) as dispatcher:
        subscription = dispatcher.subscribe(
            "https://hooks.example.com/", signature=signature, secret=secret, **subscribe
        )
        dispatcher.publish("order.created", {"id": 1})
        dispatcher.run_until_idle()
    return subscription, receiver.requests[0]


def test_standard_subscription_verifies_with_the_reference_package() -> None:
    subscription, request = _deliver("standard")
    Webhook(subscription.secret).verify(request.body, dict(request.headers))


def test_ed25519_subscription_signs_v1a() -> None:
    subscription, request = _deliver("standard-ed25519")
    assert subscription.secret.startswith("whsk_")
    assert request.headers["webhook-signature"].startswith("v1a,")
    wd.verify(request.body, request.headers, wd.public_key(subscription.secret), now=request.at)


def test_github_subscription_by_hand() -> None:
    secret = "It's a Secret to Everybody"
    _, request = _deliver("github", secret)
    expected = "sha256=" + hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-hub-signature-256"] == expected
    assert request.headers["webhook-id"] and request.headers["webhook-timestamp"]
    assert "webhook-signature" not in request.headers


def test_stripe_subscription_by_hand() -> None:
    secret = "whsec_plain_stripe_style_secret"
    _, request = _deliver("stripe", secret)
    parts = dict(item.split("=", 1) for item in request.headers["stripe-signature"].split(","))
    signed = f"{parts['t']}.".encode() + request.body
    assert parts["v1"] == hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    assert int(parts["t"]) == request.timestamp


@pytest.mark.parametrize(
    ("signature", "secret"),
    [
        ("standard", "It's a Secret to Everybody"),
        ("standard-ed25519", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ("github", "short"),
        ("stripe", "line\nbreak-in-the-secret"),
        ("stripe", " padded secret value "),
    ],
)
def test_secret_must_fit_the_scheme(signature: str, secret: str) -> None:
    with wd.Dispatcher() as dispatcher:
        with pytest.raises(wd.InvalidSecret) as caught:
            dispatcher.subscribe("https://hooks.example.com/", signature=signature, secret=secret)
        assert secret not in str(caught.value)
        assert dispatcher.subscriptions() == []


def test_custom_header_may_not_shadow_the_signature_header() -> None:
    with wd.Dispatcher() as dispatcher, pytest.raises(wd.InvalidHeader):
        dispatcher.subscribe(
            "https://hooks.example.com/",
            signature="github",
            headers={"X-Hub-Signature-256": "sha256=forged"},
        )


class UpperHexSigner:
    """A custom scheme: ``X-Signature: <HEX>`` over ``id.timestamp.body``."""

    name = "test-upper-hex"
    header_names = ("x-signature",)

    def check_secret(self, secret: str) -> None:
        if not isinstance(secret, str) or len(secret) < 16:
            raise wd.InvalidSecret("at least 16 characters")

    def generate_secret(self) -> str:
        return wd.generate_secret()

    def sign(
        self, secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
    ) -> list[tuple[str, str]]:
        signed = f"{msg_id}.{timestamp}.".encode() + body
        digest = hmac.new(secrets[0].encode(), signed, hashlib.sha256).hexdigest().upper()
        return [("X-Signature", digest)]


def test_custom_signer(tmp_path: Path) -> None:
    signer = wd.register_signer(UpperHexSigner(), replace=True)
    assert isinstance(signer, wd.Signer)
    subscription, request = _deliver("test-upper-hex", "0123456789abcdef!")
    signed = f"{request.webhook_id}.{request.timestamp}.".encode() + request.body
    expected = hmac.new(b"0123456789abcdef!", signed, hashlib.sha256).hexdigest().upper()
    assert request.headers["x-signature"] == expected
    assert subscription.signature == "test-upper-hex"
    with pytest.raises(wd.ConfigurationError, match="already registered"):
        wd.register_signer(UpperHexSigner())
    with pytest.raises(wd.ConfigurationError):
        wd.register_signer(object())  # type: ignore[arg-type]


# -- rotation ---------------------------------------------------------------------------
def test_rotation_survives_a_sqlite_restart(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'hooks.db'}"
    clock = FakeClock(datetime.now(timezone.utc))
    with wd.Dispatcher(store, clock=clock) as dispatcher:
        subscription = dispatcher.subscribe("https://hooks.example.com/")
        old = subscription.secret
        new = dispatcher.rotate_secret(subscription.id, grace=timedelta(hours=24))
    assert new != old

    receiver = MockReceiver(clock=clock)
    with wd.Dispatcher(store, clock=clock, transport=receiver) as reopened:
        stored = reopened.get_subscription(subscription.id)
        assert stored.secret == new
        assert [r.secret for r in stored.previous_secrets] == [old]
        reopened.publish("order.created", {"during": "grace"})
        reopened.run_until_idle()
        clock.advance(timedelta(hours=25))
        reopened.publish("order.created", {"after": "grace"})
        reopened.run_until_idle()

    during, after = receiver.requests
    assert len(during.headers["webhook-signature"].split()) == 2
    for secret in (old, new):
        wd.verify(during.body, during.headers, secret, now=during.at)
        Webhook(secret).verify(during.body, dict(during.headers.items()))
    assert len(after.headers["webhook-signature"].split()) == 1
    wd.verify(after.body, after.headers, new, now=after.at)
    with pytest.raises(wd.InvalidSignature):
        wd.verify(after.body, after.headers, old, now=after.at)


def test_rotation_for_other_schemes() -> None:
    clock = FakeClock()
    receiver = MockReceiver(clock=clock)
    with wd.Dispatcher(clock=clock, transport=receiver) as dispatcher:
        ed = dispatcher.subscribe("https://a.example.com/", signature="standard-ed25519")
        stripe = dispatcher.subscribe("https://b.example.com/", signature="stripe")
        github = dispatcher.subscribe("https://c.example.com/", signature="github")
        new_ed = dispatcher.rotate_secret(ed.id)
        new_stripe = dispatcher.rotate_secret(stripe.id)
        new_github = dispatcher.rotate_secret(github.id)
        assert new_ed.startswith("whsk_")
        with pytest.raises(wd.InvalidSecret):
            dispatcher.rotate_secret(ed.id, secret=wd.generate_secret())
        dispatcher.publish("order.created", {})
        dispatcher.run_until_idle()

    by_host = {httpx_host(r.url): r for r in receiver.requests}
    ed_request = by_host["a.example.com"]
    for key in (ed.secret, new_ed):
        wd.verify(ed_request.body, ed_request.headers, wd.public_key(key), now=ed_request.at)
    stripe_header = by_host["b.example.com"].headers["stripe-signature"]
    assert stripe_header.count("v1=") == 2  # old and new during the grace period
    github_request = by_host["c.example.com"]
    expected = hmac.new(new_github.encode(), github_request.body, hashlib.sha256).hexdigest()
    assert github_request.headers["x-hub-signature-256"] == f"sha256={expected}"
    assert new_stripe != stripe.secret


def httpx_host(url: str) -> str:
    import httpx

    return httpx.URL(url).host
