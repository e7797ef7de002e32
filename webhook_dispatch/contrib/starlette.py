"""Starlette (and FastAPI) integration: a lifespan that opens an `AsyncDispatcher` and runs
its worker in the application's event loop, and `get_dispatcher` to reach it from routes.

```python
webhooks = WebhookDispatch("sqlite:///webhooks.db")
app = Starlette(routes=[...], lifespan=webhooks.lifespan)

async def create_order(request):
    await get_dispatcher(request).publish("order.created", {"id": "ord_1"})
```
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.requests import HTTPConnection

from ..dispatcher import AsyncDispatcher
from ..errors import ConfigurationError
from ..stores import Store

__all__ = ["STATE_KEY", "WebhookDispatch", "get_dispatcher"]

STATE_KEY = "webhook_dispatcher"
"""The name the dispatcher has in the lifespan state and on ``app.state``."""


class WebhookDispatch:
    """Opens an `AsyncDispatcher` for the application's lifetime.

    ``WebhookDispatch(store, **options)`` builds the dispatcher at startup (``options``
    are `AsyncDispatcher` keyword arguments); ``WebhookDispatch(dispatcher=...)`` uses
    one you built (tests pass one with a ``transport=``). With ``worker=True`` (the
    default) the worker runs as a task of the application's event loop from startup to
    shutdown, where attempts in flight finish before the dispatcher closes. Set
    ``worker=False`` when separate ``webhook-dispatch worker`` processes deliver.

    Pass `lifespan` as the application's ``lifespan=``, or enter it from your own.
    """

    def __init__(
        self,
        store: str | Store = "memory://",
        *,
        worker: bool = True,
        dispatcher: AsyncDispatcher | None = None,
        **options: Any,
    ) -> None:
        if dispatcher is not None and (options or store != "memory://"):
            raise ConfigurationError("pass either dispatcher= or a store and options, not both")
        self._store = store
        self._options = options
        self._given = dispatcher
        self._worker = worker
        self._dispatcher: AsyncDispatcher | None = None

    @property
    def dispatcher(self) -> AsyncDispatcher:
        """The running dispatcher (between startup and shutdown)."""
        if self._dispatcher is None:
            raise ConfigurationError(
                "the webhook dispatcher is not running: pass WebhookDispatch.lifespan as the "
                "application's lifespan= (and, in tests, enter 'with TestClient(app)')"
            )
        return self._dispatcher

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[dict[str, Any]]:
        """Open the dispatcher (and start its worker) for the application's lifetime;
        yields the lifespan state ``{"webhook_dispatcher": dispatcher}``."""
        dispatcher = self._given or AsyncDispatcher(self._store, **self._options)
        self._dispatcher = dispatcher
        state = getattr(app, "state", None)
        if state is not None:
            setattr(state, STATE_KEY, dispatcher)
        try:
            if self._worker:
                dispatcher.start()
            yield {STATE_KEY: dispatcher}
        finally:
            self._dispatcher = None
            if state is not None and getattr(state, STATE_KEY, None) is dispatcher:
                delattr(state, STATE_KEY)
            await dispatcher.aclose()


def get_dispatcher(request: HTTPConnection) -> AsyncDispatcher:
    """The application's `AsyncDispatcher`, for a route or a FastAPI dependency.

    Looks in the request's lifespan state, then on ``app.state``."""
    dispatcher = getattr(request.state, STATE_KEY, None)
    if dispatcher is None:
        dispatcher = getattr(request.app.state, STATE_KEY, None)
    if not isinstance(dispatcher, AsyncDispatcher):
        raise ConfigurationError(
            "no webhook dispatcher on this application: pass WebhookDispatch(...).lifespan "
            "as its lifespan="
        )
    return dispatcher
