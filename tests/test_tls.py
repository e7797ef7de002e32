"""Per-subscription TLS against an HTTPS server on 127.0.0.1: a private CA bundle, and
mutual TLS with a client certificate. Certificates are made here with cryptography."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import webhook_dispatch as wd

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402


def _name(common_name: str) -> Any:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, issuer_key: Any, issuer: str, key: Any, *, ca: bool) -> Any:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, certificate: Any = None, key: Any = None) -> str:
    data = b""
    if certificate is not None:
        data += certificate.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    path.write_bytes(data)
    return str(path)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        peer = self.connection.getpeercert()  # type: ignore[attr-defined]
        self.server.clients.append(peer)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[dict[str, Any]]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Test CA", ca_key, "Test CA", ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _certificate("localhost", ca_key, "Test CA", server_key, ca=False)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _certificate("webhook-sender", ca_key, "Test CA", client_key, ca=False)
    files = {
        "ca": _write(tmp_path / "ca.pem", ca),
        "server": _write(tmp_path / "server.pem", server_cert, server_key),
        "client_cert": _write(tmp_path / "client.pem", client_cert),
        "client_key": _write(tmp_path / "client.key", key=client_key),
        "client_both": _write(tmp_path / "client-both.pem", client_cert, client_key),
    }
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files["server"])
    context.load_verify_locations(files["ca"])
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.clients = []  # type: ignore[attr-defined]
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    files["url"] = f"https://localhost:{server.server_address[1]}/hook"
    files["server_obj"] = server
    yield files
    server.shutdown()
    server.server_close()


def _attempt(url: str, **tls: str) -> wd.Attempt:
    with wd.Dispatcher(allow_private_networks=True, retry=wd.RetryPolicy.fixed([0])) as d:
        d.subscribe(url, **tls)
        message = d.publish("order.created", {"id": 1})
        d.run_until_idle()
        [attempt] = d.attempts(message.id)
        return attempt


def test_private_ca_is_not_trusted_by_default(pki: dict[str, Any]) -> None:
    attempt = _attempt(pki["url"])
    assert attempt.error_kind is wd.ErrorKind.TLS


def test_ca_bundle_without_client_certificate_is_refused_by_the_server(
    pki: dict[str, Any],
) -> None:
    attempt = _attempt(pki["url"], ca_bundle=pki["ca"])
    assert attempt.status_code is None
    assert pki["server_obj"].clients == []


@pytest.mark.parametrize("separate_key", [True, False])
def test_mutual_tls(pki: dict[str, Any], separate_key: bool) -> None:
    if separate_key:
        tls = {"client_cert": pki["client_cert"], "client_key": pki["client_key"]}
    else:
        tls = {"client_cert": pki["client_both"]}
    attempt = _attempt(pki["url"], ca_bundle=pki["ca"], **tls)
    assert attempt.status_code == 200
    [peer] = pki["server_obj"].clients
    assert dict(item[0] for item in peer["subject"])["commonName"] == "webhook-sender"


def test_tls_settings_are_stored(pki: dict[str, Any], tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'hooks.db'}"
    with wd.Dispatcher(store, allow_private_networks=True) as d:
        created = d.subscribe(
            pki["url"],
            ca_bundle=pki["ca"],
            client_cert=pki["client_cert"],
            client_key=pki["client_key"],
        )
    with wd.Dispatcher(store, allow_private_networks=True) as reopened:
        stored = reopened.get_subscription(created.id)
        assert (stored.ca_bundle, stored.client_cert, stored.client_key) == (
            pki["ca"],
            pki["client_cert"],
            pki["client_key"],
        )
        message = reopened.publish("order.created", {})
        reopened.run_until_idle()
        assert reopened.attempts(message.id)[0].status_code == 200


def test_mismatched_client_key_is_refused_at_subscribe(pki: dict[str, Any], tmp_path: Path) -> None:
    other = _write(tmp_path / "other.key", key=ec.generate_private_key(ec.SECP256R1()))
    with wd.Dispatcher(allow_private_networks=True) as d:
        with pytest.raises(wd.ConfigurationError, match="client_cert"):
            d.subscribe(pki["url"], client_cert=pki["client_cert"], client_key=other)
        assert d.subscriptions() == []
