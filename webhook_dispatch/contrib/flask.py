"""Flask integration: an extension holding one `Dispatcher` per application, configured
from ``app.config``, and the ``flask webhooks worker`` command.

```python
webhooks = WebhookDispatch()

def create_app():
    app = Flask(__name__)
    app.config["WEBHOOK_DISPATCH_STORE"] = "sqlite:///webhooks.db"
    webhooks.init_app(app)
    return app

@app.post("/orders")
def create_order():
    message = webhooks.publish("order.created", {"id": "ord_1"})
    return {"webhook_id": message.id}
```
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterable
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from ..cli import DEFAULT_STORE
from ..dispatcher import Dispatcher, EventSpec
from ..errors import ConfigurationError
from ..models import Message
from ._worker import redact, run_until_signalled

__all__ = ["EXTENSION_KEY", "WebhookDispatch"]

EXTENSION_KEY = "webhook_dispatch"
"""The extension's key in ``app.extensions``."""


class _AppState:
    """One application's dispatcher, built on first use."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.dispatcher: Dispatcher | None = None

    def build(self, **overrides: Any) -> Dispatcher:
        store = self.app.config["WEBHOOK_DISPATCH_STORE"]
        options = {**(self.app.config["WEBHOOK_DISPATCH_OPTIONS"] or {}), **overrides}
        return Dispatcher(store, **options)

    def get(self) -> Dispatcher:
        with self.lock:
            if self.dispatcher is None:
                self.dispatcher = self.build()
            return self.dispatcher

    def close(self) -> None:
        with self.lock:
            dispatcher, self.dispatcher = self.dispatcher, None
        if dispatcher is not None:
            dispatcher.close()


class WebhookDispatch:
    """The Flask extension: ``WebhookDispatch(app)`` or ``init_app(app)`` later.

    Reads ``WEBHOOK_DISPATCH_STORE`` (a store URL, default ``sqlite:///webhooks.db``)
    and ``WEBHOOK_DISPATCH_OPTIONS`` (`Dispatcher` keyword arguments, such as
    ``{"allow_private_networks": True}``) from ``app.config``. Each application gets
    one `Dispatcher`, built on first use and closed at interpreter exit, and the
    ``flask webhooks worker`` command that delivers.

    Publishing does not join a SQLAlchemy transaction by itself: with PostgreSQL, pass
    the session's psycopg connection as ``connection=`` (see the docs).
    """

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Configure ``app``: defaults in its config, the dispatcher holder in
        ``app.extensions``, the ``webhooks`` command group on its CLI."""
        app.config.setdefault("WEBHOOK_DISPATCH_STORE", DEFAULT_STORE)
        app.config.setdefault("WEBHOOK_DISPATCH_OPTIONS", {})
        state = _AppState(app)
        app.extensions[EXTENSION_KEY] = state
        app.cli.add_command(_commands)
        atexit.register(state.close)

    @staticmethod
    def _state(app: Flask | None = None) -> _AppState:
        target = app if app is not None else current_app
        state = target.extensions.get(EXTENSION_KEY)
        if not isinstance(state, _AppState):
            raise ConfigurationError("WebhookDispatch.init_app(app) has not been called")
        return state

    @property
    def dispatcher(self) -> Dispatcher:
        """The current application's `Dispatcher` (needs an application context)."""
        return self._state().get()

    def get_dispatcher(self, app: Flask) -> Dispatcher:
        """``app``'s `Dispatcher`, outside an application context."""
        return self._state(app).get()

    def publish(
        self,
        event_type: str,
        payload: Any,
        *,
        idempotency_key: str | None = None,
        content_type: str | None = None,
        connection: Any = None,
        tenant: str | None = None,
    ) -> Message:
        """`Dispatcher.publish` on the current application's dispatcher."""
        return self.dispatcher.publish(
            event_type,
            payload,
            idempotency_key=idempotency_key,
            content_type=content_type,
            connection=connection,
            tenant=tenant,
        )

    def publish_many(self, events: Iterable[EventSpec], *, connection: Any = None) -> list[Message]:
        """`Dispatcher.publish_many` on the current application's dispatcher."""
        return self.dispatcher.publish_many(events, connection=connection)

    def close(self, app: Flask | None = None) -> None:
        """Close the application's dispatcher; the next use builds a new one."""
        self._state(app).close()


_commands = AppGroup("webhooks", help="Deliver the webhooks this application publishes.")


@_commands.command("worker")
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="attempts in flight")
@click.option("--until-idle", is_flag=True, help="deliver what is due now, then exit")
def _worker_command(concurrency: int | None, until_idle: bool) -> None:
    """Deliver webhooks until SIGTERM or Ctrl-C (attempts in flight finish first)."""
    state = WebhookDispatch._state()
    # The application's own dispatcher unless another concurrency is asked for.
    owned = concurrency is not None
    dispatcher = state.build(concurrency=concurrency) if owned else state.get()
    if until_idle:
        try:
            attempts = dispatcher.run_until_idle()
        finally:
            if owned:
                dispatcher.close()
        click.echo(f"flask webhooks worker: {attempts} attempt(s) made")
        return
    store = state.app.config["WEBHOOK_DISPATCH_STORE"]
    store_text = redact(store) if isinstance(store, str) else repr(store)
    click.echo(f"flask webhooks worker: delivering from {store_text} (Ctrl-C or SIGTERM stops it)")
    run_until_signalled(dispatcher)
    if not owned:
        state.close()
    click.echo("flask webhooks worker: stopped; attempts in flight were recorded")
