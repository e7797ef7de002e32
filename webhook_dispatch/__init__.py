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
from .auth import (
    ApiKeyHeader,
    BasicAuth,
    BearerToken,
    EndpointAuth,
    JWTAuth,
    OAuth2ClientCredentials,
    register_auth,
)
from .clock import Clock, SystemClock
from .dispatcher import AsyncDispatcher, Dispatcher
from .errors import (
    AuthError,
    BlockedAddress,
    BlockedEndpoint,
    ConfigurationError,
    DrainIncomplete,
    InvalidAuth,
    InvalidEventType,
    InvalidFilter,
    InvalidHeader,
    InvalidPayload,
    InvalidSchema,
    InvalidSecret,
    InvalidSignature,
    InvalidStoreURL,
    InvalidTenant,
    InvalidURL,
    NotFound,
    PayloadTooLarge,
    SchemaError,
    StopTimeout,
    StoreError,
    StoreUnavailable,
    TenantLimitExceeded,
    UnsentDeliveriesWarning,
    WebhookDispatchError,
)
from .events import Hooks, OperationalEvent
from .health import AutoDisable
from .metrics import PrometheusMetrics
from .models import (
    ALL_TENANTS,
    Attempt,
    AttemptTrigger,
    Delivery,
    DeliveryStatus,
    ErrorKind,
    EventType,
    Message,
    RetrySchedule,
    Subscription,
    Tenant,
)
from .netguard import NetworkPolicy
from .options import DispatcherOptions, EndpointOptions
from .paging import Page
from .retry import DEFAULT_SCHEDULE, RetryPolicy, ScheduleWait, Verdict
from .signing import (
    Signer,
    generate_keypair,
    generate_secret,
    public_key,
    register_signer,
    sign,
    verify,
)
from .stores import Stats, Store, open_store

__all__ = [
    "ALL_TENANTS",
    "ApiKeyHeader",
    "AsyncDispatcher",
    "Attempt",
    "AttemptTrigger",
    "AuthError",
    "AutoDisable",
    "BasicAuth",
    "BearerToken",
    "BlockedAddress",
    "BlockedEndpoint",
    "Clock",
    "ConfigurationError",
    "DEFAULT_SCHEDULE",
    "Delivery",
    "DeliveryStatus",
    "Dispatcher",
    "DispatcherOptions",
    "DrainIncomplete",
    "EndpointAuth",
    "EndpointOptions",
    "ErrorKind",
    "EventType",
    "Hooks",
    "InvalidAuth",
    "InvalidEventType",
    "InvalidFilter",
    "InvalidHeader",
    "InvalidPayload",
    "InvalidSchema",
    "InvalidSecret",
    "InvalidSignature",
    "InvalidStoreURL",
    "InvalidTenant",
    "InvalidURL",
    "JWTAuth",
    "Message",
    "NetworkPolicy",
    "NotFound",
    "OAuth2ClientCredentials",
    "OperationalEvent",
    "Page",
    "PayloadTooLarge",
    "PrometheusMetrics",
    "RetryPolicy",
    "RetrySchedule",
    "ScheduleWait",
    "SchemaError",
    "Signer",
    "Stats",
    "StopTimeout",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Subscription",
    "SystemClock",
    "Tenant",
    "TenantLimitExceeded",
    "UnsentDeliveriesWarning",
    "Verdict",
    "WebhookDispatchError",
    "__version__",
    "generate_keypair",
    "generate_secret",
    "open_store",
    "public_key",
    "register_auth",
    "register_signer",
    "sign",
    "verify",
]
