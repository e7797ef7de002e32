"""A FastAPI application that publishes a webhook when an order is created; the worker
runs inside the application (in its event loop), started and stopped by the lifespan.

    uvicorn fastapi_app:app --port 8000
    curl -X POST 'http://127.0.0.1:8000/orders?total=4200'

At startup it subscribes $WEBHOOK_URL (default http://127.0.0.1:8001/hooks, where
receiver.py listens) unless already subscribed. The store is $WEBHOOK_DISPATCH_STORE,
else webhooks.db in the current directory.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from webhook_dispatch.contrib.fastapi import DispatcherDep, WebhookDispatch

DEMO_SECRET = "whsec_hjx0T3soa2HrlClN7fwgWzx8647el1lB"  # for local experiments only
URL = os.environ.get("WEBHOOK_URL", "http://127.0.0.1:8001/hooks")
SECRET = os.environ.get("WEBHOOK_SECRET", DEMO_SECRET)
STORE = os.environ.get("WEBHOOK_DISPATCH_STORE", "sqlite:///webhooks.db")

# allow_private_networks: the example receiver is on 127.0.0.1 (refused by default).
webhooks = WebhookDispatch(STORE, allow_private_networks=True)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    async with webhooks.lifespan(app) as state:
        dispatcher = webhooks.dispatcher
        if not any(s.url == URL for s in await dispatcher.subscriptions()):
            await dispatcher.subscribe(URL, event_types=["order.*"], secret=SECRET)
        yield state


app = FastAPI(lifespan=lifespan)


@app.post("/orders")
async def create_order(total: int, dispatcher: DispatcherDep) -> dict[str, Any]:
    order = {"id": f"ord_{uuid.uuid4().hex[:8]}", "total": total}
    # ... save the order in your database here ...
    message = await dispatcher.publish("order.created", order)
    return {"order": order, "webhook_id": message.id}
