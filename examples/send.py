"""A plain script that sends one webhook and waits for the outcome.

    python send.py

It subscribes $WEBHOOK_URL (default http://127.0.0.1:8001/hooks, where receiver.py
listens) once, publishes an ``order.created`` event, delivers it, and prints the
attempts. The store is $WEBHOOK_DISPATCH_STORE, else webhooks.db in this directory.
"""

from __future__ import annotations

import os
import sys

import webhook_dispatch as wd

DEMO_SECRET = "whsec_hjx0T3soa2HrlClN7fwgWzx8647el1lB"  # for local experiments only
URL = os.environ.get("WEBHOOK_URL", "http://127.0.0.1:8001/hooks")
SECRET = os.environ.get("WEBHOOK_SECRET", DEMO_SECRET)
STORE = os.environ.get("WEBHOOK_DISPATCH_STORE", "sqlite:///webhooks.db")


def main() -> int:
    # allow_private_networks: the receiver is on 127.0.0.1, which is refused by default.
    with wd.Dispatcher(STORE, allow_private_networks=True) as dispatcher:
        if not any(s.url == URL for s in dispatcher.subscriptions()):
            dispatcher.subscribe(URL, event_types=["order.*"], secret=SECRET)
        message = dispatcher.publish("order.created", {"id": "ord_1", "total": 4200})
        dispatcher.run_until_idle()

        for attempt in dispatcher.attempts(message.id):
            outcome = attempt.status_code or attempt.error
            print(f"attempt {attempt.number}: {outcome} in {attempt.duration * 1000:.1f} ms")
        [delivery] = dispatcher.deliveries(message_id=message.id)
        print(f"{message.id} to {URL}: {delivery.status.value}")
        return 0 if delivery.status == wd.DeliveryStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
