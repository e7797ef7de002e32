"""B6: fair delivery between tenants (not run in CI).

    python bench/bench_tenants.py [--backlog 20000] [--probes 50] [--runs 3]
        [--store sqlite|postgres] [--workers 2] [--postgres URL]

Tenant "busy" has ``--backlog`` deliveries queued to its 50 endpoints (as B2 under load)
(nginx, or the fallback receiver); then ``--probes`` events are published, each for a
different quiet tenant with one endpoint on a probe receiver that timestamps arrivals
on the same clock as `publish()`. The same run measures the same rows with no tenants
at all for comparison (all 100 endpoints untenanted: they take turns as subscriptions,
not as tenants), and the busy tenant's own throughput both ways (the rate its backlog
drains at). Runs alternate between the two setups; medians are quoted.

``--store sqlite`` (the default) runs the worker in the publishing process on a SQLite
file. ``--store postgres`` uses a new schema on ``--postgres`` (or
$WEBHOOK_DISPATCH_TEST_POSTGRES) per run, and ``--workers`` worker processes
(``webhook-dispatch worker``), started for each run and stopped after it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from bench_latency import ProbeReceiver, percentiles
from common import dispatcher_options, machine, receiver

import webhook_dispatch as wd

ENDPOINTS = 50


@contextlib.contextmanager
def workers(url: str, count: int) -> Iterator[None]:
    """``count`` worker processes on ``url``, stopped (SIGTERM, then SIGKILL) after."""
    command = [
        sys.executable,
        "-m",
        "webhook_dispatch",
        "worker",
        "--store",
        url,
        "--concurrency",
        "64",
        "--allow-private-networks",
    ]
    started = [
        subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        yield
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def one_run(
    directory: Path,
    base: str,
    probes: ProbeReceiver,
    *,
    tenants: bool,
    backlog: int,
    count: int,
    postgres: str | None,
    worker_processes: int,
) -> tuple[list[float], float]:
    """Probe latencies (s) and the busy backlog's drain rate (deliveries/s)."""
    if postgres is None:
        store = f"sqlite:///{directory / f'b6-{time.monotonic_ns()}.db'}"
    else:
        joiner = "&" if "?" in postgres else "?"
        store = f"{postgres}{joiner}schema=b6_{uuid.uuid4().hex[:10]}"
    with wd.Dispatcher(store, **dispatcher_options()) as dispatcher:
        busy = "busy" if tenants else None
        for n in range(ENDPOINTS):
            dispatcher.subscribe(f"{base}/busy/{n}", event_types=["busy.*"], tenant=busy)
        quiet = [f"quiet{n}" if tenants else None for n in range(count)]
        for n, tenant in enumerate(quiet):
            dispatcher.subscribe(probes.url, event_types=[f"probe.n{n}"], tenant=tenant)
        batch = 1000
        for start in range(0, backlog // ENDPOINTS, batch):
            dispatcher.publish_many(
                ("busy.work", {"n": n}, None, busy)
                for n in range(start, min(start + batch, backlog // ENDPOINTS))
            )
        try:
            with contextlib.ExitStack() as running:
                if postgres is None:
                    dispatcher.start()
                    running.callback(dispatcher.stop)
                else:
                    running.enter_context(workers(store, worker_processes))
                measured = _measure(dispatcher, probes, quiet, backlog)
        finally:
            if postgres is not None:
                _drop_schema(postgres, store)
    return measured


def _drop_schema(postgres: str, store: str) -> None:
    import psycopg

    schema = store.rsplit("schema=", 1)[1]
    with psycopg.connect(postgres, autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _measure(
    dispatcher: wd.Dispatcher, probes: ProbeReceiver, quiet: list[str | None], backlog: int
) -> tuple[list[float], float]:
    """Once the workers run: the probes' latencies, then the backlog's drain rate."""
    started = time.perf_counter()
    time.sleep(0.5)  # the worker is well into the backlog
    latencies = []
    for n, tenant in enumerate(quiet):
        sent = time.perf_counter()
        message = dispatcher.publish(f"probe.n{n}", {"n": n}, tenant=tenant)
        event = probes.expect(message.id)
        if not event.wait(300):
            raise RuntimeError("a probe never arrived")
        latencies.append(probes.arrived[message.id] - sent)
        time.sleep(0.01)
    while dispatcher.stats().pending:
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    return latencies, backlog / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--probes", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--workers", type=int, default=2, help="PostgreSQL worker processes")
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "WEBHOOK_DISPATCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()
    postgres = args.postgres if args.store == "postgres" else None

    probes = ProbeReceiver()
    results: dict[bool, list[tuple[list[float], float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp, receiver(Path(tmp)) as (base, name):
        for _ in range(args.runs):
            for tenants in (False, True):  # alternating, in one sitting
                results[tenants].append(
                    one_run(
                        Path(tmp),
                        base,
                        probes,
                        tenants=tenants,
                        backlog=args.backlog,
                        count=args.probes,
                        postgres=postgres,
                        worker_processes=args.workers,
                    )
                )

    print(machine())
    print(
        f"busy receiver: {name}; backlog {args.backlog} deliveries to {ENDPOINTS} endpoints; "
        f"{args.probes} probes, each for its own quiet tenant; "
        + (
            "SQLite, in-process; "
            if postgres is None
            else f"PostgreSQL, {args.workers} worker processes; "
        )
        + f"medians of {args.runs} runs"
    )
    print(f"{'setup':<44} {'probe p50 ms':>13} {'probe p99 ms':>13} {'busy deliv/s':>13}")
    rates = {}
    for tenants, label in (
        (False, "no tenants (one queue of 100 endpoints)"),
        (True, "tenants (round robin)"),
    ):
        p50 = statistics.median(percentiles(r[0])[0] for r in results[tenants])
        p99 = statistics.median(percentiles(r[0])[1] for r in results[tenants])
        rates[tenants] = statistics.median(r[1] for r in results[tenants])
        print(f"{label:<44} {p50:>13.1f} {p99:>13.1f} {rates[tenants]:>13.0f}")
    print(f"busy tenant's throughput, tenants / no tenants: {rates[True] / rates[False]:.2f}")


if __name__ == "__main__":
    main()
