"""Store benchmark: publish latency, batch and fan-out throughput, claim+record, memory.

Run ``python bench/bench_store.py`` (not part of CI). Each RSS figure comes from a fresh
child process so the stores do not share a high-water mark.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import attrs

from webhook_dispatch.models import (
    Attempt,
    AttemptTrigger,
    DeliveryStatus,
    Message,
    Subscription,
    new_id,
)
from webhook_dispatch.stores import AttemptRecord, Claim, Store, open_store

STORES = ("memory", "sqlite")
PAYLOAD = b'{"type":"order.created","timestamp":"2024-05-01T12:00:00Z","data":{"id":"ord_1"}}'


@contextmanager
def opened(kind: str) -> Iterator[Store]:
    with tempfile.TemporaryDirectory() as directory:
        url = "memory://" if kind == "memory" else f"sqlite:///{directory}/bench.db"
        store = open_store(url)
        try:
            yield store
        finally:
            store.close()


def now() -> datetime:
    return datetime.now(timezone.utc)


def subscription() -> Subscription:
    at = now()
    return Subscription(
        id=new_id("sub"),
        url="https://example.com/hooks",
        secret="whsec_" + "A" * 32,
        created_at=at,
        updated_at=at,
    )


def message() -> Message:
    return Message(id=new_id("msg"), event_type="order.created", payload=PAYLOAD, created_at=now())


def success(held: Claim, at: datetime) -> AttemptRecord:
    attempt = Attempt(
        id=new_id("att"),
        delivery_id=held.delivery.id,
        message_id=held.message.id,
        subscription_id=held.subscription.id,
        number=held.delivery.attempt_count + 1,
        trigger=AttemptTrigger.SCHEDULED,
        started_at=at,
        duration=0.01,
        url=held.subscription.url,
        status_code=200,
        webhook_timestamp=int(at.timestamp()),
    )
    delivery = attrs.evolve(
        held.delivery,
        status=DeliveryStatus.SUCCEEDED,
        attempt_count=attempt.number,
        next_attempt_at=None,
        last_status_code=200,
        updated_at=at,
    )
    return AttemptRecord(attempt, delivery)


def with_subscriptions(store: Store, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        sub = subscription()
        store.add_subscription(sub)
        ids.append(sub.id)
    return ids


def publish_latency(kind: str, calls: int = 1000, warmup: int = 200) -> tuple[float, float]:
    with opened(kind) as store:
        ids = with_subscriptions(store, 1)
        for _ in range(warmup):
            store.publish(message(), ids, now())
        samples = []
        for _ in range(calls):
            item, at = message(), now()
            start = time.perf_counter_ns()
            store.publish(item, ids, at)
            samples.append((time.perf_counter_ns() - start) / 1000)
        samples.sort()
        return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def publish_many_rate(kind: str, batches: int = 50, size: int = 100) -> float:
    with opened(kind) as store:
        ids = with_subscriptions(store, 1)
        store.publish_many([(message(), ids) for _ in range(size)], now())
        prepared = [[(message(), ids) for _ in range(size)] for _ in range(batches)]
        start = time.perf_counter()
        for batch in prepared:
            store.publish_many(batch, now())
        return batches * size / (time.perf_counter() - start)


def fan_out_ms(kind: str, subscribers: int = 1000, rounds: int = 5) -> float:
    with opened(kind) as store:
        ids = with_subscriptions(store, subscribers)
        store.publish(message(), ids, now())
        timings = []
        for _ in range(rounds):
            start = time.perf_counter()
            store.publish(message(), ids, now())
            timings.append((time.perf_counter() - start) * 1000)
        return statistics.median(timings)


def claim_record_rate(kind: str, deliveries: int = 10_000, batch: int = 100) -> float:
    with opened(kind) as store:
        ids = with_subscriptions(store, 1)
        for _ in range(deliveries // 1000):
            store.publish_many([(message(), ids) for _ in range(1000)], now())
        done = 0
        start = time.perf_counter()
        while True:
            at = now()
            claims = store.claim_due(
                at, limit=batch, lease_until=at + timedelta(minutes=1), worker_id="bench"
            )
            if not claims:
                break
            store.record([success(held, at) for held in claims], "bench")
            done += len(claims)
        return done / (time.perf_counter() - start)


def max_rss_mib() -> float:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def rss_child(kind: str, pending: int = 100_000, batch: int = 100, batches: int = 200) -> None:
    """In a fresh process: create ``pending`` deliveries, claim and record batches."""
    baseline = max_rss_mib()
    with opened(kind) as store:
        ids = with_subscriptions(store, 1)
        for _ in range(pending // 1000):
            store.publish_many([(message(), ids) for _ in range(1000)], now())
        for _ in range(batches):
            at = now()
            claims = store.claim_due(
                at, limit=batch, lease_until=at + timedelta(minutes=1), worker_id="bench"
            )
            store.record([success(held, at) for held in claims], "bench")
        print(f"{baseline:.1f} {max_rss_mib():.1f}")


def rss_in_child(kind: str) -> tuple[float, float]:
    output = subprocess.run(
        [sys.executable, __file__, "--rss", kind], check=True, capture_output=True, text=True
    ).stdout.split()
    return float(output[0]), float(output[1])


def row(label: str, measure: Callable[[str], str]) -> None:
    print(f"| {label:<44} | " + " | ".join(f"{measure(kind):>16}" for kind in STORES) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rss", choices=STORES, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.rss:
        rss_child(arguments.rss)
        return

    print(
        f"machine: {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )
    print()
    print(f"| {'measure':<44} | " + " | ".join(f"{kind:>16}" for kind in STORES) + " |")
    print(f"|{'-' * 46}|" + "|".join("-" * 18 for _ in STORES) + "|")
    latency = {kind: publish_latency(kind) for kind in STORES}
    row("publish, 1 subscription: p50 µs", lambda k: f"{latency[k][0]:.1f}")
    row("publish, 1 subscription: p99 µs", lambda k: f"{latency[k][1]:.1f}")
    row("publish_many (batches of 100): msgs/s", lambda k: f"{publish_many_rate(k):,.0f}")
    row("publish to 1,000 subscriptions: ms", lambda k: f"{fan_out_ms(k):.1f}")
    row("claim_due + record (batches of 100): dlv/s", lambda k: f"{claim_record_rate(k):,.0f}")
    rss = {kind: rss_in_child(kind) for kind in STORES}
    row("peak RSS, 100k pending + 200 claims: MiB", lambda k: f"{rss[k][1]:.1f}")
    row("  (of which the idle process: MiB)", lambda k: f"{rss[k][0]:.1f}")


if __name__ == "__main__":
    main()
