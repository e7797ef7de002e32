"""B3: the cost of `Dispatcher.publish` as an application pays it: validation, one JSON
serialization, subscription matching and the store transaction (not run in CI).

    python bench/bench_publish.py [--calls 2000]

Reports p50/p99 per call on memory and SQLite with one matching subscription, and one
publish fanned out to 1,000 subscriptions. The baseline in the same run is the bare
store call (`store.publish` with a ready-made message), so the difference is the
dispatcher's own work.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import machine

import webhook_dispatch as wd
from webhook_dispatch.models import Message, new_id


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99)]


def per_call(store: str, calls: int) -> tuple[list[float], list[float]]:
    with wd.Dispatcher(store) as dispatcher:
        subscription = dispatcher.subscribe("https://receiver.example/hooks")
        for n in range(200):  # warm-up
            dispatcher.publish("order.created", {"n": n})
        publish = []
        for n in range(calls):
            started = time.perf_counter()
            dispatcher.publish("order.created", {"id": f"ord_{n}", "total": 1250, "lines": [1, 2]})
            publish.append(time.perf_counter() - started)
        bare = []
        now = dispatcher.clock.now()
        for _ in range(calls):
            message = Message(
                id=new_id("msg"), event_type="order.created", payload=b'{"n":1}', created_at=now
            )
            started = time.perf_counter()
            dispatcher.store.publish(message, [subscription.id], now)
            bare.append(time.perf_counter() - started)
    return publish, bare


def fan_out(store: str) -> float:
    with wd.Dispatcher(store) as dispatcher:
        for n in range(1000):
            dispatcher.subscribe(f"https://receiver{n}.example/hooks")
        dispatcher.publish("order.created", {"warm": True})
        samples = []
        for n in range(5):
            started = time.perf_counter()
            dispatcher.publish("order.created", {"n": n})
            samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    print(machine())
    print(f"{'store':<8} {'measure':<46} {'p50':>10} {'p99':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, url in (("memory", "memory://"), ("sqlite", f"sqlite:///{Path(tmp) / 'p.db'}")):
            publish, bare = per_call(url, args.calls)
            for label, samples in (
                ("Dispatcher.publish, 1 subscription (µs)", publish),
                ("bare store.publish baseline (µs)", bare),
            ):
                p50, p99 = percentiles(samples)
                print(f"{name:<8} {label:<46} {p50 * 1e6:>10.1f} {p99 * 1e6:>10.1f}")
            fan_url = url if name == "memory" else f"sqlite:///{Path(tmp) / 'fan.db'}"
            print(
                f"{name:<8} {'publish fanned out to 1,000 subscriptions (ms)':<46} "
                f"{fan_out(fan_url) * 1e3:>10.1f}"
            )
    print("targets: SQLite publish p50 under 250 µs; fan-out to 1,000 under 20 ms")


if __name__ == "__main__":
    main()
