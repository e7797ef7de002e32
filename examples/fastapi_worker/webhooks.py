"""The application's webhook configuration, written once and used by both processes:

- the FastAPI app (``app.py``) publishes through it;
- the worker delivers with it: ``webhook-dispatch worker --app webhooks:make_dispatcher``.

Everything here (the retry schedule, the hook) is Python, not data in the store: a worker
started with only ``--store`` would refuse to start, because its settings would differ
from what the app publishes with.
"""

from __future__ import annotations

import logging
import os

import webhook_dispatch as wd

STORE = os.environ.get("WEBHOOK_DISPATCH_STORE", "sqlite:///webhooks.db")

# Tries now, then 2 s, 10 s and 60 s after each failure: four attempts, then given up.
RETRY = wd.RetryPolicy.fixed([0, 2, 10, 60])

logger = logging.getLogger("shop.webhooks")


def report_given_up(event: wd.OperationalEvent) -> None:
    """Runs in the worker when a delivery is given up."""
    logger.warning("gave up on a webhook to %s: %s", event.subscription_id, event.reason)


def make_dispatcher() -> wd.AsyncDispatcher:
    """The one place the dispatcher's options are written."""
    return wd.AsyncDispatcher(
        STORE,
        retry=RETRY,
        on_delivery_failed=report_given_up,
        # The example receiver is on 127.0.0.1, which the network guard refuses by default.
        allow_private_networks=True,
    )
