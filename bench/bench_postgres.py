"""PostgreSQL store: deliveries/s with 1, 2 and 3 worker processes, and publish->received
latency across processes (LISTEN/NOTIFY wake-up).

Each worker process sends through a no-op transport (``httpx.MockTransport`` answering
200 at once, recording when each ``webhook-id`` arrived), so the figures measure the
store and the engine, not an HTTP server. Not run in CI.

    WEBHOOK_DISPATCH_TEST_POSTGRES=postgresql://postgres@127.0.0.1:5432/test \\
        python bench/bench_postgres.py [--messages 6000] [--latency-samples 300]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import psycopg

import webhook_dispatch as wd

WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import httpx
    import webhook_dispatch as wd

    store, folder, poll = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    arrivals = []

    def answer(request):
        arrivals.append((request.headers["webhook-id"], time.time()))
        return httpx.Response(200)

    with wd.Dispatcher(store, transport=httpx.MockTransport(answer), poll_interval=poll) as d:
        (folder / f"ready-{sys.argv[4]}").touch()
        while not (folder / "go").exists():
            time.sleep(0.005)
        d.start()
        while not (folder / "stop").exists():
            time.sleep(0.02)
        d.stop()
    with open(folder / f"arrivals-{sys.argv[4]}.json", "w") as out:
        json.dump(arrivals, out)
    """
)


def run_workers(
    url: str, count: int, poll: float, folder: Path
) -> tuple[list[subprocess.Popen[bytes]], Path]:
    processes = [
        subprocess.Popen([sys.executable, "-c", WORKER, url, str(folder), str(poll), str(n)])
        for n in range(count)
    ]
    while len(list(folder.glob("ready-*"))) < count:
        time.sleep(0.01)
    return processes, folder


def collect(processes: list[subprocess.Popen[bytes]], folder: Path) -> list[tuple[str, float]]:
    (folder / "stop").touch()
    for process in processes:
        process.wait(timeout=60)
    arrivals: list[tuple[str, float]] = []
    for path in folder.glob("arrivals-*.json"):
        arrivals.extend((webhook_id, at) for webhook_id, at in json.loads(path.read_text()))
    return arrivals


def succeeded(dsn: str, schema: str) -> int:
    with psycopg.connect(dsn) as connection:
        row = connection.execute(
            f"SELECT count(*) FROM {schema}.deliveries WHERE status = 'succeeded'"
        ).fetchone()
    return int(row[0]) if row else 0


def throughput(dsn: str, workers: int, messages: int) -> tuple[float, int]:
    """Deliveries/s from the first arrival to the last, and how many were sent twice."""
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    url = f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"
    try:
        with wd.Dispatcher(url) as dispatcher:
            dispatcher.subscribe("https://receiver.example/hooks")
            for start in range(0, messages, 1000):
                dispatcher.publish_many(
                    ("order.created", {"n": n}) for n in range(start, min(messages, start + 1000))
                )
        with tempfile.TemporaryDirectory() as tmp:
            processes, folder = run_workers(url, workers, 1.0, Path(tmp))
            (folder / "go").touch()
            while succeeded(dsn, schema) < messages:
                time.sleep(0.05)
            arrivals = collect(processes, folder)
        times = sorted(at for _, at in arrivals)
        doubled = len(arrivals) - len({webhook_id for webhook_id, _ in arrivals})
        return len(arrivals) / (times[-1] - times[0]), doubled
    finally:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def latency(dsn: str, workers: int, samples: int) -> list[float]:
    """Seconds from calling publish() here to the request reaching another process."""
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    url = f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"
    try:
        with wd.Dispatcher(url) as dispatcher, tempfile.TemporaryDirectory() as tmp:
            dispatcher.subscribe("https://receiver.example/hooks")
            # A long poll: only NOTIFY can wake the idle workers quickly.
            processes, folder = run_workers(url, workers, 10.0, Path(tmp))
            (folder / "go").touch()
            time.sleep(1.5)  # every worker idle and listening
            published: dict[str, float] = {}
            for _ in range(samples):
                started = time.time()
                message = dispatcher.publish("order.created", {"at": started})
                published[message.id] = started
                time.sleep(0.01)
            while succeeded(dsn, schema) < samples:
                time.sleep(0.05)
            arrivals = collect(processes, folder)
        return sorted(at - published[webhook_id] for webhook_id, at in arrivals)
    finally:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--latency-samples", type=int, default=300)
    args = parser.parse_args()
    dsn = os.environ.get("WEBHOOK_DISPATCH_TEST_POSTGRES")
    if not dsn:
        sys.exit("set WEBHOOK_DISPATCH_TEST_POSTGRES=postgresql://user@host:5432/dbname")

    print(f"PostgreSQL store, no-op transport, {args.messages} messages, {os.cpu_count()} CPUs")
    print(f"{'workers':>8} {'deliveries/s':>13} {'scaling':>8} {'sent twice':>11}")
    base = None
    for workers in (1, 2, 3):
        rate, doubled = throughput(dsn, workers, args.messages)
        base = base or rate
        print(f"{workers:>8} {rate:>13,.0f} {rate / base:>7.2f}x {doubled:>11}")

    delays = latency(dsn, 3, args.latency_samples)
    p50 = statistics.median(delays) * 1000
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))] * 1000
    print(
        f"\npublish -> received in another process (3 idle workers, poll 10 s, "
        f"{len(delays)} samples): p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )


if __name__ == "__main__":
    main()
