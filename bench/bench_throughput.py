"""End-to-end delivery throughput against baselines measured in the same run (not in CI).

    python bench/bench_throughput.py [--messages 400] [--subscriptions 50] [--reps 3]

Starts a loopback receiver (nginx when installed, else a small aiohttp server), shows the
receiver's own capacity with a raw client, then times, as medians over ``--reps``:

- baseline (a): raw aiohttp POST loop, 32 connections, no persistence, no signing;
- baseline (b): the hand-rolled way: one shared httpx.AsyncClient, asyncio.gather under a
  semaphore of 32, each POST wrapped in tenacity's AsyncRetrying, no persistence;
- B1: webhook_dispatch, SQLite store, signing on: ``messages`` events fanned out to
  ``subscriptions`` endpoints, from the first publish to the last attempt recorded.

Every path sends the same number of requests (messages x subscriptions).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
import tenacity
from common import dispatcher_options, machine, receiver

import webhook_dispatch as wd
from webhook_dispatch.paging import every

BODY = b'{"type":"order.created","timestamp":"2030-01-01T00:00:00Z","data":{"id":"ord_1"}}'


async def raw_aiohttp(urls: list[str], total: int, connections: int = 32) -> float:
    """Baseline (a): the practical ceiling, nothing but POSTs."""
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        counter = iter(range(total))

        async def loop() -> None:
            for n in counter:
                async with session.post(urls[n % len(urls)], data=BODY) as response:
                    await response.read()

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(connections)))
        return total / (time.perf_counter() - started)


async def hand_rolled(urls: list[str], total: int, concurrency: int = 32) -> float:
    """Baseline (b): shared AsyncClient, gather under a semaphore, tenacity retries."""
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=15) as client:

        async def send(n: int) -> None:
            async with semaphore:
                async for attempt in tenacity.AsyncRetrying(
                    stop=tenacity.stop_after_attempt(3),
                    wait=tenacity.wait_exponential(max=2),
                    reraise=True,
                ):
                    with attempt:
                        response = await client.post(urls[n % len(urls)], content=BODY)
                        response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(send(n) for n in range(total)))
        return total / (time.perf_counter() - started)


def webhook_dispatch_run(
    urls: list[str], messages: int, directory: Path, *, durable: bool = True
) -> float:
    """B1: durable SQLite store (or, for comparison, the memory store), signing on,
    fan-out to every subscription."""
    path = directory / f"b1-{time.monotonic_ns()}.db"
    store = f"sqlite:///{path}" if durable else "memory://"
    with wd.Dispatcher(store, **dispatcher_options()) as dispatcher:
        for url in urls:
            dispatcher.subscribe(url)
        total = messages * len(urls)
        started = time.perf_counter()
        dispatcher.publish_many(("order.created", {"n": n}) for n in range(messages))
        dispatcher.run_until_idle()
        elapsed = time.perf_counter() - started
        done = sum(1 for _ in every(dispatcher.deliveries, status="succeeded"))
    path.unlink(missing_ok=True)
    if done != total:
        raise RuntimeError(f"only {done} of {total} deliveries succeeded")
    return total / elapsed


def median_of(reps: int, run: Callable[[], float]) -> tuple[float, list[float]]:
    samples = [run() for _ in range(reps)]
    return statistics.median(samples), samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--subscriptions", type=int, default=50)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--python-receiver", action="store_true", help="skip nginx")
    args = parser.parse_args()

    total = args.messages * args.subscriptions
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        with receiver(directory, prefer_nginx=not args.python_receiver) as (base, name):
            urls = [f"{base}/hooks/{n}" for n in range(args.subscriptions)]

            def run_async(factory: Callable[[], Awaitable[float]]) -> float:
                return asyncio.run(factory())  # type: ignore[arg-type]

            capacity, _ = median_of(
                args.reps, lambda: run_async(lambda: raw_aiohttp(urls, total, 64))
            )
            a, a_samples = median_of(args.reps, lambda: run_async(lambda: raw_aiohttp(urls, total)))
            b, b_samples = median_of(args.reps, lambda: run_async(lambda: hand_rolled(urls, total)))
            b1, b1_samples = median_of(
                args.reps, lambda: webhook_dispatch_run(urls, args.messages, directory)
            )
            memory, memory_samples = median_of(
                args.reps,
                lambda: webhook_dispatch_run(urls, args.messages, directory, durable=False),
            )

    print(machine())
    print(
        f"receiver: {name}, "
        f"{total:,} requests per run ({args.messages} messages x {args.subscriptions} "
        f"subscriptions), median of {args.reps}"
    )
    rows = [
        ("receiver capacity (raw aiohttp, 64 conns)", capacity, None),
        ("(a) raw aiohttp, 32 connections", a, a_samples),
        ("(b) httpx.AsyncClient + gather + tenacity", b, b_samples),
        ("B1 webhook_dispatch, SQLite, signed", b1, b1_samples),
        ("webhook_dispatch, memory store (not durable)", memory, memory_samples),
    ]
    print(f"{'path':<44} {'req/s':>9}  samples")
    for name, value, samples in rows:
        shown = ", ".join(f"{s:,.0f}" for s in samples) if samples else ""
        print(f"{name:<44} {value:>9,.0f}  {shown}")
    print(f"B1 / (a) = {b1 / a:.2f}x   (target >= 0.5x)")
    print(f"B1 / (b) = {b1 / b:.2f}x   (target >= 3x)")
    print(f"memory store / (a) = {memory / a:.2f}x   (the engine without a durable store)")


if __name__ == "__main__":
    main()
