"""webhook_dispatch: send webhooks from Python, durable, signed and retried.

```python
import webhook_dispatch as wd

with wd.Dispatcher("sqlite:///webhooks.db") as d:
    d.subscribe("https://example.com/hooks", event_types=["order.*"])
    d.publish("order.created", {"id": "ord_1"})
    d.run_until_idle()
```
"""

from ._version import __version__
from .clock import Clock, SystemClock
from .dispatcher import AsyncDispatcher, Dispatcher
from .errors import (
    ConfigurationError,
    InvalidEventType,
    InvalidHeader,
    InvalidPayload,
    InvalidSecret,
    InvalidSignature,
    InvalidStoreURL,
    InvalidURL,
    NotFound,
    PayloadTooLarge,
    SchemaError,
    StoreError,
    StoreUnavailable,
    WebhookDispatchError,
)
from .models import (
    Attempt,
    AttemptTrigger,
    Delivery,
    DeliveryStatus,
    ErrorKind,
    Message,
    Subscription,
)
from .retry import DEFAULT_SCHEDULE, RetryPolicy, ScheduleWait
from .signing import generate_secret, sign, verify
from .stores import Store, open_store

__all__ = [
    "AsyncDispatcher",
    "Attempt",
    "AttemptTrigger",
    "Clock",
    "ConfigurationError",
    "DEFAULT_SCHEDULE",
    "Delivery",
    "DeliveryStatus",
    "Dispatcher",
    "ErrorKind",
    "InvalidEventType",
    "InvalidHeader",
    "InvalidPayload",
    "InvalidSecret",
    "InvalidSignature",
    "InvalidStoreURL",
    "InvalidURL",
    "Message",
    "NotFound",
    "PayloadTooLarge",
    "RetryPolicy",
    "ScheduleWait",
    "SchemaError",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Subscription",
    "SystemClock",
    "WebhookDispatchError",
    "__version__",
    "generate_secret",
    "open_store",
    "sign",
    "verify",
]
