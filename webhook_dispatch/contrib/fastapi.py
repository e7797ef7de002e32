"""FastAPI integration: the Starlette lifespan helper, and `DispatcherDep`, an annotated
dependency that hands the application's `AsyncDispatcher` to a route.

```python
from webhook_dispatch.contrib.fastapi import DispatcherDep, WebhookDispatch

webhooks = WebhookDispatch("sqlite:///webhooks.db")
app = FastAPI(lifespan=webhooks.lifespan)

@app.post("/orders")
async def create_order(dispatcher: DispatcherDep) -> dict[str, str]:
    message = await dispatcher.publish("order.created", {"id": "ord_1"})
    return {"webhook_id": message.id}
```
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from ..dispatcher import AsyncDispatcher
from .starlette import STATE_KEY, WebhookDispatch, get_dispatcher

__all__ = ["STATE_KEY", "DispatcherDep", "WebhookDispatch", "get_dispatcher"]

DispatcherDep = Annotated[AsyncDispatcher, Depends(get_dispatcher)]
"""A route parameter annotated ``DispatcherDep`` receives the application's `AsyncDispatcher`."""
