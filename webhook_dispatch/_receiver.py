"""A small real HTTP receiver on 127.0.0.1, for the demo, tests and examples.

Each path answers from its own script of status codes and records what arrived,
checking signatures when it knows the path's secret.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from .errors import InvalidSignature
from .signing import verify

__all__ = ["LoopbackReceiver", "Received"]


@attrs.frozen
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: Mapping[str, str]
    body: bytes
    status: int
    verified: bool | None
    at: float

    @property
    def webhook_id(self) -> str:
        """The ``webhook-id`` header."""
        return self.headers.get("webhook-id", "")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # The default listen backlog (5) drops connections when a worker opens dozens at
    # once; a dropped SYN costs the client a one-second retransmit.
    request_queue_size = 128
    owner: LoopbackReceiver


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, extra = self.server.owner._answer(self.path, headers, body)
        payload = b"ok" if 200 <= status < 300 else b"not now"
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        return None  # the receiver's log is `LoopbackReceiver.received`


class LoopbackReceiver:
    """An HTTP server on 127.0.0.1 (random port) that answers POSTs from per-path scripts.

    ``receiver.route("/flaky", [503, 503, 200], secret=...)`` makes ``/flaky`` answer
    503 twice then 200 from then on (the last entry repeats); unknown paths answer 200.
    Use as a context manager; ``url(path)`` gives the full URL.
    """

    def __init__(self, *, delay: float = 0.0) -> None:
        self._scripts: dict[str, list[int]] = {}
        self._secrets: dict[str, Sequence[str]] = {}
        self._headers: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self._delay = delay
        self.received: list[Received] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="loopback-receiver", daemon=True
        )

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return int(self._server.server_address[1])

    def url(self, path: str = "/") -> str:
        """The full URL of ``path`` on this receiver."""
        return f"http://127.0.0.1:{self.port}{path}"

    def route(
        self,
        path: str,
        statuses: Iterable[int],
        *,
        secret: str | Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Script ``path``; return its URL. The last status repeats once the script runs out."""
        with self._lock:
            self._scripts[path] = list(statuses) or [200]
            if secret is not None:
                self._secrets[path] = [secret] if isinstance(secret, str) else list(secret)
            self._headers[path] = dict(headers or {})
        return self.url(path)

    def set_secret(self, path: str, secret: str | Sequence[str]) -> None:
        """Verify signatures on ``path`` with ``secret`` from now on."""
        with self._lock:
            self._secrets[path] = [secret] if isinstance(secret, str) else list(secret)

    def _answer(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str]]:
        if self._delay:
            time.sleep(self._delay)
        with self._lock:
            script = self._scripts.get(path, [200])
            status = script.pop(0) if len(script) > 1 else script[0]
            secrets = self._secrets.get(path)
            extra = self._headers.get(path, {})
        verified: bool | None = None
        if secrets is not None:
            try:
                verify(body, headers, secrets)
                verified = True
            except InvalidSignature:
                verified = False
        record = Received(path, headers, body, status, verified, time.time())
        with self._lock:
            self.received.append(record)
        return status, extra

    def requests_to(self, path: str) -> list[Received]:
        """What arrived on ``path``, in order."""
        with self._lock:
            return [r for r in self.received if r.path == path]

    def start(self) -> LoopbackReceiver:
        """Start serving on a background thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LoopbackReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
