"""A FastAPI application that publishes a webhook when an order is created; a separate
worker process delivers it.

    python ../receiver.py --verify-with standardwebhooks        # terminal 1
    uvicorn app:app --port 8000                                 # terminal 2
    webhook-dispatch worker --app webhooks:make_dispatcher      # terminal 3
    curl -X POST 'http://127.0.0.1:8000/orders?total=4200'

At startup it subscribes $WEBHOOK_URL (default http://127.0.0.1:8001/hooks, where
receiver.py listens) under the key "example-receiver", so restarting it changes nothing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from webhooks import make_dispatcher

from webhook_dispatch.contrib.fastapi import DispatcherDep, WebhookDispatch

DEMO_SECRET = "whsec_hjx0T3soa2HrlClN7fwgWzx8647el1lB"  # for local experiments only
URL = os.environ.get("WEBHOOK_URL", "http://127.0.0.1:8001/hooks")
SECRET = os.environ.get("WEBHOOK_SECRET", DEMO_SECRET)

# worker=False: `webhook-dispatch worker --app webhooks:make_dispatcher` delivers.
webhooks = WebhookDispatch(dispatcher=make_dispatcher(), worker=False)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    async with webhooks.lifespan(app) as state:
        await webhooks.dispatcher.subscribe(
            URL, event_types=["order.*"], secret=SECRET, key="example-receiver"
        )
        yield state


app = FastAPI(lifespan=lifespan)


@app.post("/orders")
async def create_order(total: int, dispatcher: DispatcherDep) -> dict[str, Any]:
    order = {"id": f"ord_{uuid.uuid4().hex[:8]}", "total": total}
    # ... save the order in your database here ...
    message = await dispatcher.publish("order.created", order)
    return {"order": order, "webhook_id": message.id}
