"""A worker process for the chaos suite: ``python chaos_worker.py '<json options>'``.

Runs a `Dispatcher` worker on a store until nothing is pending or being delivered and
the test has said publishing is over (``done_file`` exists), riding out store errors.
Prints its worker id first, so the test knows whose leases to look for after a kill.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from datetime import timedelta

import webhook_dispatch as wd
from webhook_dispatch.stores.sqlite import SQLiteStore


def _open_store(options: dict[str, object]) -> str | SQLiteStore:
    url = str(options["store"])
    busy_timeout = options.get("busy_timeout")
    if busy_timeout is not None and url.startswith("sqlite:///"):
        return SQLiteStore(url[len("sqlite:///") :], busy_timeout=float(str(busy_timeout)))
    return url


def main() -> int:
    options = json.loads(sys.argv[1])
    store = _open_store(options)
    delays = [float(d) for d in options["delays"]]
    done_file = options.get("done_file")
    extra: dict[str, object] = {}
    # One subscription gets the whole worker, where the Dispatcher has a per-subscription
    # cap of attempts in flight: the single-endpoint scenarios want every slot busy.
    # "auto" keeps the Dispatcher's default (the load scenario).
    per_subscription = options.get("per_subscription", "auto")
    if per_subscription != "auto" and (
        "default_max_in_flight" in inspect.signature(wd.Dispatcher).parameters
    ):
        extra["default_max_in_flight"] = per_subscription
    dispatcher = wd.Dispatcher(
        store,
        **extra,  # type: ignore[arg-type]
        retry=wd.RetryPolicy.fixed(delays),
        concurrency=int(options.get("concurrency", 64)),
        lease=timedelta(seconds=float(options.get("lease", 30))),
        poll_interval=float(options.get("poll_interval", 0.2)),
        allow_private_networks=True,
    )
    print(f"worker {dispatcher._core.worker.worker_id}", flush=True)
    # No deadline unless asked for: the test waits while requests keep arriving, and
    # kills this process if they stop.
    limit = options.get("deadline")
    deadline = None if limit is None else time.monotonic() + float(str(limit))
    idle_checks = 0
    try:
        dispatcher.start()
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.1)
            if done_file is not None:
                try:
                    open(str(done_file)).close()
                except FileNotFoundError:
                    continue
            try:
                busy = dispatcher.store.list_deliveries(
                    status=wd.DeliveryStatus.PENDING, limit=1
                ) or dispatcher.store.list_deliveries(status=wd.DeliveryStatus.DELIVERING, limit=1)
            except wd.StoreError as exc:
                print(f"store error while checking: {exc}", flush=True)
                continue
            idle_checks = 0 if busy else idle_checks + 1
            if idle_checks >= 3:
                return 0
        print("deadline passed with work left", flush=True)
        return 1
    finally:
        dispatcher.close()
        if not isinstance(store, str):
            store.close()


if __name__ == "__main__":
    sys.exit(main())
