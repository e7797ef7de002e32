"""Worker memory and throughput with a large SQLite backlog (not run in CI).

    python bench/bench_worker.py [--pending 100000] [--seconds 10]

Fills a SQLite file with N pending deliveries, then runs a worker in a fresh process
against a no-op transport (no network: this measures the worker and the store) and
prints its peak RSS and deliveries/s, beside the RSS of an idle Python process that
imported the library (the baseline measured in the same run).
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import webhook_dispatch as wd

CHILD = textwrap.dedent(
    """
    import resource, sys, time
    import httpx
    import webhook_dispatch as wd

    store, seconds, work = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "work"
    if work:
        transport = httpx.MockTransport(lambda request: httpx.Response(200))
        with wd.Dispatcher(store, transport=transport, concurrency=64) as d:
            d.start()
            time.sleep(seconds)
            d.stop()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(peak_kib)
    """
)


def run_child(store: str, seconds: float, work: bool) -> int:
    output = subprocess.run(
        [sys.executable, "-c", CHILD, store, str(seconds), "work" if work else "idle"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(output.strip().splitlines()[-1])


def succeeded(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        (count,) = connection.execute(
            "SELECT count(*) FROM deliveries WHERE status = 'succeeded'"
        ).fetchone()
    return int(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bench.db"
        store = f"sqlite:///{path}"
        started = time.perf_counter()
        with wd.Dispatcher(store) as dispatcher:
            dispatcher.subscribe("https://receiver.example/hooks")
            batch = 1000
            for start in range(0, args.pending, batch):
                count = min(batch, args.pending - start)
                dispatcher.publish_many(("order.created", {"n": start + n}) for n in range(count))
        fill = time.perf_counter() - started

        idle_kib = run_child(store, 0, work=False)
        work_kib = run_child(store, args.seconds, work=True)
        delivered = succeeded(path)

    print(
        f"machine: {os.cpu_count()} cpus, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}"
    )
    print(f"filled {args.pending:,} pending deliveries in {fill:.1f} s")
    print(f"{'measure':<44} {'value':>12}")
    print(f"{'idle process RSS (import only, baseline)':<44} {idle_kib / 1024:>9.1f} MiB")
    print(f"{'worker peak RSS with the backlog':<44} {work_kib / 1024:>9.1f} MiB")
    print(f"{'worker RSS above baseline':<44} {(work_kib - idle_kib) / 1024:>9.1f} MiB")
    print(f"{'deliveries recorded in ' + str(args.seconds) + ' s':<44} {delivered:>12,}")
    print(f"{'deliveries/s (no-op transport)':<44} {delivered / args.seconds:>12,.0f}")


if __name__ == "__main__":
    main()
