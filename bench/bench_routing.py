"""B8: what routing costs a publish: payload filters (0, 10 and 1,000 filtered
subscriptions in one tenant) and, where the catalog has a schema, payload validation.

    python bench/bench_routing.py [--calls 300] [--rounds 5] [--store sqlite|memory|postgres]

Every configuration has its own store and publishes the same events; rounds alternate
between them, so a noisy machine slows them alike. Each event reaches exactly one
subscription (every filter names one customer), so the store writes the same one
delivery in every configuration and the difference is routing. Filters that require an
equality are looked up by it (`FilterIndex`); the ``$regex``-only case cannot be, and
shows the cost of evaluating every filter. Printed: the median
over rounds of each round's p50 and p99 per publish, and each p50 as a ratio of the
baseline's (one unfiltered subscription, no schema) in the same round.
Target: 1,000 filtered subscriptions, p50 under 2 ms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import machine

import webhook_dispatch as wd

TENANT = "acme"
ORDER_SCHEMA = {
    "type": "object",
    "required": ["customer", "amount", "currency"],
    "properties": {
        "customer": {"type": "string", "pattern": "^cust_[0-9]+$"},
        "amount": {"type": "integer", "minimum": 0},
        "currency": {"type": "string", "enum": ["EUR", "USD", "GBP"]},
        "lines": {"type": "array", "items": {"type": "object"}},
    },
}


def payload(n: int, customers: int) -> dict[str, Any]:
    return {
        "customer": f"cust_{n % customers}",
        "amount": 1250 + n,
        "currency": "EUR",
        "lines": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 2}],
    }


def simple(customer: int) -> dict[str, Any]:
    return {"data": {"customer": f"cust_{customer}"}}


def compound(customer: int) -> dict[str, Any]:
    return {
        "$and": [
            {"data.customer": f"cust_{customer}"},
            {"data": {"amount": {"$gte": 100}, "currency": {"$in": ["EUR", "USD"]}}},
            {"data.lines.sku": {"$regex": "^[A-Z]$"}},
        ]
    }


def regex_only(customer: int) -> dict[str, Any]:
    return {"data": {"customer": {"$regex": f"^cust_{customer}$"}}}


def setup(
    url: str, filters: int, make: Callable[[int], dict[str, Any]], schema: bool
) -> wd.Dispatcher:
    dispatcher = wd.Dispatcher(url)
    if schema:
        dispatcher.define_event_type("order.paid", schema=ORDER_SCHEMA)
    if filters == 0:
        dispatcher.subscribe("https://receiver.example/all", tenant=TENANT)
    for n in range(filters):
        dispatcher.subscribe(f"https://receiver{n}.example/h", tenant=TENANT, filter=make(n))
    for n in range(50):  # warm-up: the tenant's index is loaded and cached
        dispatcher.publish("order.paid", payload(n, max(filters, 1)), tenant=TENANT)
    return dispatcher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300, help="publishes per round and case")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--store", choices=["sqlite", "memory", "postgres"], default="sqlite")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    print(machine())
    cases: list[tuple[str, int, Callable[[int], dict[str, Any]], bool]] = [
        ("baseline: 1 subscription, no filter", 0, simple, False),
        ("10 filtered subscriptions", 10, simple, False),
        ("1,000 filtered subscriptions", 1000, simple, False),
        ("1,000 compound filters ($and, $in, $regex)", 1000, compound, False),
        ("1,000 $regex-only filters (not indexable)", 1000, regex_only, False),
        ("schema validation on, no filter", 0, simple, True),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        dispatchers = []
        for index, (_, filters, make, schema) in enumerate(cases):
            if args.store == "memory":
                url = "memory://"
            elif args.store == "sqlite":
                url = f"sqlite:///{Path(tmp) / f'r{index}.db'}"
            else:
                url = f"{args.postgres}?schema=bench_routing_{index}"
                with wd.Dispatcher(url) as reset:  # a schema of its own, emptied
                    for subscription in reset.subscriptions(limit=1000):
                        reset.unsubscribe(subscription.id)
            dispatchers.append(setup(url, filters, make, schema))
        p50s: list[list[float]] = [[] for _ in cases]
        p99s: list[list[float]] = [[] for _ in cases]
        ratios: list[list[float]] = [[] for _ in cases]
        for round_number in range(args.rounds):
            for index, (_, filters, _, _) in enumerate(cases):
                dispatcher = dispatchers[index]
                samples = []
                for n in range(args.calls):
                    body = payload(round_number * args.calls + n, max(filters, 1))
                    started = time.perf_counter()
                    dispatcher.publish("order.paid", body, tenant=TENANT)
                    samples.append(time.perf_counter() - started)
                samples.sort()
                p50s[index].append(statistics.median(samples))
                p99s[index].append(samples[int(len(samples) * 0.99)])
            for index in range(len(cases)):
                ratios[index].append(p50s[index][-1] / p50s[0][-1])
        for dispatcher in dispatchers:
            deliveries = dispatcher.stats(tenant=TENANT).pending
            dispatcher.close()
            assert deliveries >= args.rounds * args.calls, "every publish made one delivery"
    print(f"store: {args.store}; {args.rounds} rounds of {args.calls} publishes per case")
    print(f"{'case':<46} {'p50 µs':>9} {'p99 µs':>9} {'p50/baseline':>13}")
    for index, (label, *_rest) in enumerate(cases):
        print(
            f"{label:<46} {statistics.median(p50s[index]) * 1e6:>9.1f} "
            f"{statistics.median(p99s[index]) * 1e6:>9.1f} "
            f"{statistics.median(ratios[index]):>12.2f}x"
        )
    print("target: 1,000 filtered subscriptions, p50 under 2,000 µs")


if __name__ == "__main__":
    main()
