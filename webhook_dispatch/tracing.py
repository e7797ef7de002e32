"""OpenTelemetry spans per attempt, following the HTTP client semantic conventions
(span "POST", ``http.request.method``, ``url.full`` without credentials,
``server.address``, ``http.response.status_code``, ``error.type``).

Needs the ``[otel]`` extra (``opentelemetry-api``); the application configures the SDK.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx

from .errors import ConfigurationError
from .models import Attempt
from .stores.base import Claim

__all__ = ["AttemptTracer", "safe_url"]


def safe_url(url: str) -> str:
    """``url`` without user name and password (semantic conventions: never record them)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return ""
    if parsed.userinfo:
        parsed = parsed.copy_with(username=None, password=None)
    return str(parsed)


class AttemptTracer:
    """Wraps each attempt in a CLIENT span. ``provider`` is an OpenTelemetry
    ``TracerProvider``; None uses the global one."""

    def __init__(self, provider: Any = None) -> None:
        try:
            from opentelemetry import trace
        except ImportError:  # pragma: no cover - exercised only without the extra
            raise ConfigurationError(
                "tracing needs OpenTelemetry: pip install 'webhook-dispatch[otel]'"
            ) from None
        from ._version import __version__

        self._trace = trace
        self._tracer = trace.get_tracer("webhook_dispatch", __version__, tracer_provider=provider)

    @contextlib.contextmanager
    def span(self, claim: Claim) -> Iterator[Any]:
        """A span around one attempt of ``claim``; `finish` it with the attempt."""
        url = httpx.URL(claim.subscription.url)
        attributes: dict[str, Any] = {
            "http.request.method": "POST",
            "url.full": safe_url(claim.subscription.url),
            "server.address": url.host,
            "webhook_dispatch.message_id": claim.message.id,
            "webhook_dispatch.subscription_id": claim.subscription.id,
            "webhook_dispatch.delivery_id": claim.delivery.id,
            "webhook_dispatch.event_type": claim.message.event_type,
            "http.request.resend_count": claim.delivery.attempt_count,
        }
        if url.port is not None:
            attributes["server.port"] = url.port
        else:
            attributes["server.port"] = 443 if url.scheme == "https" else 80
        with self._tracer.start_as_current_span(
            "POST", kind=self._trace.SpanKind.CLIENT, attributes=attributes
        ) as span:
            yield span

    def finish(self, span: Any, attempt: Attempt) -> None:
        """Record the attempt's outcome on its span."""
        status = self._trace.Status
        code = self._trace.StatusCode
        if attempt.status_code is not None:
            span.set_attribute("http.response.status_code", attempt.status_code)
            if attempt.status_code >= 400 or attempt.status_code < 200:
                span.set_attribute("error.type", str(attempt.status_code))
                span.set_status(status(code.ERROR))
        else:
            kind = attempt.error_kind.value if attempt.error_kind is not None else "_OTHER"
            span.set_attribute("error.type", kind)
            span.set_status(status(code.ERROR, attempt.error))
