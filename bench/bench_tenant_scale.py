"""B7: publishing with 100,000 tenants x 2 subscriptions, on SQLite and PostgreSQL (not run
in CI; no worker is started, only the publishing side is measured).

    python bench/bench_tenant_scale.py [--tenants 100000] [--backend sqlite|postgres|both]
        [--runs 3] [--publishes 2000] [--trials 5]
        [--postgres postgresql://postgres@127.0.0.1:5432/test]

The store is seeded once per backend through `subscribe()` (``--seed-processes`` processes,
each its own Dispatcher; PostgreSQL seeding connections run with
``synchronous_commit=off`` through the store URL's libpq ``options``): two subscriptions
per tenant, plus two untenanted ones. No raw SQL touches the store's tables. SQLite is a
file in a temporary directory; PostgreSQL gets its own database (``CREATE DATABASE``,
dropped at the end) on the server ``--postgres`` (or $WEBHOOK_DISPATCH_TEST_POSTGRES) names.

Each run opens a new Dispatcher (empty per-tenant cache) on the seeded store and measures:

1. publish latency: ``--publishes`` first publishes, each to a different tenant (cold: its
   index is loaded), then as many to random tenants among those (warm: cached). Every
   tenant publish alternates with an untenanted one, the baseline of the same moment.
2. one change elsewhere: a child process adds one subscription to one cached tenant, then
   this process disables one of another's; publishes to the other cached tenants follow.
   Index loads are counted by wrapping ``dispatcher.store.subscription_patterns`` (what a
   reload calls): one change must cost one reload, not one per cached tenant.
3. cross-process match: the child subscribes a cached tenant to a new event type and
   writes `time.time()` when `subscribe()` returns; this process publishes that type to
   the tenant every millisecond until a publish creates a delivery (``--trials`` per run).

Then one more child process publishes once to every tenant (`publish_many`, batches of
500, shuffled) and reports its RSS before and after, and its peak (VmHWM). Latency figures
are medians over the runs; the cross-process delays are pooled over all trials. With the
defaults it takes about 13 minutes on 2 cores, most of it seeding (PostgreSQL ~6 min).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from common import dispatcher_options, machine

import webhook_dispatch as wd
from webhook_dispatch.dispatcher import TENANT_CACHE_SIZE

TARGET_P50_US = {"sqlite": 500.0, "postgres": 2000.0}
TARGET_MATCH_S = 1.0
TARGET_RSS_MB = 200.0
SEED_PROCESSES = {"sqlite": 1, "postgres": 2}
"""SQLite writers only queue for its one lock; PostgreSQL's overlap a little."""
PATTERNS = (["order.*"], ["order.created", "customer.*"])
"""The two subscriptions every tenant (and the untenanted baseline) has."""

# Shared by the child processes below (each runs with ``python -c``).
PRELUDE = textwrap.dedent(
    """
    import json, random, sys, time
    import webhook_dispatch as wd

    PATTERNS = (["order.*"], ["order.created", "customer.*"])

    def tenant_name(n):
        return f"tenant-{n:06d}"
    """
)

SEEDER = PRELUDE + textwrap.dedent(
    """
    store, start, step, count = sys.argv[1], *map(int, sys.argv[2:5])
    with wd.Dispatcher(store, allow_private_networks=True) as dispatcher:
        for n in range(start, count, step):
            for k, patterns in enumerate(PATTERNS):
                dispatcher.subscribe(
                    f"http://127.0.0.1:9/hook/{n}/{k}", event_types=patterns, tenant=tenant_name(n)
                )
    """
)

CHANGER = PRELUDE + textwrap.dedent(
    """
    # One line in ("tenant event_type"), one subscribe(), one time.time() out.
    with wd.Dispatcher(sys.argv[1], allow_private_networks=True) as dispatcher:
        print("ready", flush=True)
        for line in sys.stdin:
            tenant, event_type = line.split()
            dispatcher.subscribe(
                "http://127.0.0.1:9/hook/changed", event_types=[event_type], tenant=tenant
            )
            print(repr(time.time()), flush=True)
    """
)

RSS_PUBLISHER = PRELUDE + textwrap.dedent(
    """
    def status():
        found = {}
        with open("/proc/self/status") as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(value.split()[0]) / 1024
        return found

    store, count = sys.argv[1], int(sys.argv[2])
    tenants = [tenant_name(n) for n in range(count)]
    random.Random(7).shuffle(tenants)
    with wd.Dispatcher(store, allow_private_networks=True) as dispatcher:
        dispatcher.publish_many(("order.created", {"n": 0}, None, t) for t in tenants[:100])
        before = status()
        started = time.perf_counter()
        for first in range(0, count, 500):
            dispatcher.publish_many(
                ("order.created", {"n": n}, None, tenant)
                for n, tenant in enumerate(tenants[first : first + 500], first)
            )
        elapsed = time.perf_counter() - started
        after = status()
        # Private, read only for the report: how many tenant indexes the cache holds.
        cached = len(dispatcher._core._registries)
    print(json.dumps({"before": before, "after": after, "elapsed": elapsed, "cached": cached}))
    """
)


def tenant_name(n: int) -> str:
    return f"tenant-{n:06d}"


def percentiles_us(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1e6, p99 * 1e6


def python(script: str, *args: object, **popen: Any) -> subprocess.Popen[str]:
    """A child process running ``script``; it imports the webhook_dispatch this one did
    (``-c`` puts the working directory first on sys.path)."""
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=Path(wd.__file__).parent.parent,
        text=True,
        **popen,
    )


@contextlib.contextmanager
def children() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes appended to the yielded list are killed on the way out, whatever happens."""
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait()


def seed(store: str, tenants: int, processes: int, *, seeding_store: str) -> float:
    """Two subscriptions per tenant (and two untenanted) through subscribe(); seconds taken."""
    started = time.perf_counter()
    with wd.Dispatcher(store, **dispatcher_options()) as dispatcher:  # creates the schema
        for k, patterns in enumerate(PATTERNS):
            dispatcher.subscribe(f"http://127.0.0.1:9/hook/untenanted/{k}", event_types=patterns)
    with children() as seeders:
        for start in range(processes):
            seeders.append(python(SEEDER, seeding_store, start, processes, tenants))
        for process in seeders:
            if process.wait() != 0:
                raise RuntimeError("a seeding process failed")
    return time.perf_counter() - started


class Changer:
    """The other process: subscribes on request and answers with time.time()."""

    def __init__(self, store: str, started: list[subprocess.Popen[str]]) -> None:
        self.process = python(CHANGER, store, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        started.append(self.process)
        if self._line() != "ready":
            raise RuntimeError("the changer process did not start")

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the changer process died")
        return line.strip()

    def send(self, tenant: str, event_type: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{tenant} {event_type}\n")
        self.process.stdin.flush()

    def subscribed_at(self) -> float:
        """When the child's subscribe() returned (time.time() there)."""
        return float(self._line())

    def subscribe(self, tenant: str, event_type: str) -> None:
        self.send(tenant, event_type)
        self.subscribed_at()


class LoadCounter:
    """Counts the store's subscription_patterns calls: the dispatcher's per-tenant index loads."""

    def __init__(self, dispatcher: wd.Dispatcher) -> None:
        self.count = 0
        store = dispatcher.store
        original: Callable[..., Any] = store.subscription_patterns

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return original(*args, **kwargs)

        store.subscription_patterns = counted  # type: ignore[method-assign]


def alternating(
    dispatcher: wd.Dispatcher, tenants: list[str], baseline: list[float]
) -> list[float]:
    """Publish to each tenant in turn, each followed by an untenanted publish (timed into
    ``baseline``); the tenant publishes' durations."""
    samples: list[float] = []
    for n, tenant in enumerate(tenants):
        for target, into in ((tenant, samples), (None, baseline)):
            started = time.perf_counter()
            dispatcher.publish("order.created", {"n": n}, tenant=target)
            into.append(time.perf_counter() - started)
    return samples


def timed(dispatcher: wd.Dispatcher, tenants: Sequence[str | None]) -> list[float]:
    samples = []
    for n, tenant in enumerate(tenants):
        started = time.perf_counter()
        dispatcher.publish("order.created", {"n": n}, tenant=tenant)
        samples.append(time.perf_counter() - started)
    return samples


def match_delay(dispatcher: wd.Dispatcher, changer: Changer, tenant: str, event_type: str) -> float:
    """Seconds from the child's subscribe() returning to a publish here creating a
    delivery for it (inf when none did within 10 s)."""
    first = dispatcher.publish(event_type, {}, tenant=tenant)
    if dispatcher.deliveries(message_id=first.id):
        raise RuntimeError(f"{event_type} matched before it was subscribed to")
    changer.send(tenant, event_type)
    deadline = time.time() + 10
    matched_at = float("inf")
    while time.time() < deadline:
        message = dispatcher.publish(event_type, {}, tenant=tenant)
        done = time.time()
        if dispatcher.deliveries(message_id=message.id):
            matched_at = done
            break
        time.sleep(0.001)
    return matched_at - changer.subscribed_at()


def one_run(store: str, changer: Changer, run: int, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(run)
    count = min(args.publishes, args.tenants)
    chosen = [tenant_name(n) for n in rng.sample(range(args.tenants), count)]
    result: dict[str, Any] = {}
    with wd.Dispatcher(store, **dispatcher_options()) as dispatcher:
        loads = LoadCounter(dispatcher)
        timed(dispatcher, [None] * 50)  # connections, imports, the untenanted index
        baseline: list[float] = []
        loaded = loads.count
        result["cold"] = alternating(dispatcher, chosen, baseline)
        result["cold loads"] = loads.count - loaded
        warm_tenants = [rng.choice(chosen) for _ in range(count)]
        loaded = loads.count
        result["warm"] = alternating(dispatcher, warm_tenants, baseline)
        result["warm loads"] = loads.count - loaded
        result["baseline"] = baseline

        # One change in another process, then one here; the others stay cached.
        others = chosen[2:]
        sample = min(500, len(others))
        loaded = loads.count
        changer.subscribe(chosen[0], f"b7.changed.r{run}")
        timed(dispatcher, [chosen[0]])
        result["after remote change"] = timed(dispatcher, rng.sample(others, sample))
        result["remote change loads"] = loads.count - loaded
        subscription = dispatcher.subscriptions(tenant=chosen[1], limit=1)[0]
        loaded = loads.count
        dispatcher.disable(subscription.id)
        timed(dispatcher, [chosen[1]])
        result["after local change"] = timed(dispatcher, rng.sample(others, sample))
        result["local change loads"] = loads.count - loaded
        dispatcher.enable(subscription.id)

        result["match"] = [
            match_delay(dispatcher, changer, rng.choice(others), f"b7.probe.r{run}.t{trial}")
            for trial in range(args.trials)
        ]
    return result


def rss(store: str, tenants: int, started: list[subprocess.Popen[str]]) -> dict[str, Any]:
    process = python(RSS_PUBLISHER, store, tenants, stdout=subprocess.PIPE)
    started.append(process)
    output, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError("the RSS publisher failed")
    report: dict[str, Any] = json.loads(output)
    return report


@contextlib.contextmanager
def postgres_database(dsn: str) -> Iterator[tuple[str, str]]:
    """A database of its own on the server ``dsn`` names, dropped at the end: yields (store
    URL, the seeding store URL with synchronous_commit=off)."""
    import psycopg

    name = f"b7_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        parts = urllib.parse.urlsplit(dsn)
        query = urllib.parse.parse_qsl(parts.query)
        store = urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))
        seeding = urllib.parse.urlencode([*query, ("options", "-csynchronous_commit=off")])
        yield store, urllib.parse.urlunsplit(parts._replace(path=f"/{name}", query=seeding))
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def backend_store(backend: str, args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    if backend == "postgres":
        with postgres_database(args.postgres) as urls:
            yield urls
    else:
        with tempfile.TemporaryDirectory() as tmp:
            store = f"sqlite:///{Path(tmp) / 'b7.db'}"
            yield store, store


def measure(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    with backend_store(backend, args) as (store, seeding_store):
        processes = args.seed_processes or SEED_PROCESSES[backend]
        seconds = seed(store, args.tenants, processes, seeding_store=seeding_store)
        runs = []
        with children() as started:
            changer = Changer(store, started)
            for run in range(args.runs):
                runs.append(one_run(store, changer, run, args))
            memory = rss(store, args.tenants, started)
    return {"seed": seconds, "seeders": processes, "runs": runs, "rss": memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=100_000)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--publishes", type=int, default=2000)
    parser.add_argument("--trials", type=int, default=5, help="cross-process trials per run")
    parser.add_argument(
        "--seed-processes",
        type=int,
        help="processes calling subscribe() to seed (default: 1 on SQLite, 2 on PostgreSQL)",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "WEBHOOK_DISPATCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
        ),
        help="a server to create (and drop) the benchmark's database on",
    )
    args = parser.parse_args()
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    results = {backend: measure(backend, args) for backend in backends}

    print(machine())
    print(
        f"B7: {args.tenants:,} tenants x {len(PATTERNS)} subscriptions (+{len(PATTERNS)} "
        "untenanted), seeded through subscribe(): "
        + ", ".join(f"{b} {r['seed']:.0f} s ({r['seeders']} processes)" for b, r in results.items())
    )
    print(
        f"no worker; each run a new Dispatcher (tenant cache {TENANT_CACHE_SIZE:,}); "
        f"{min(args.publishes, args.tenants):,} publishes per path per run; "
        f"medians of {args.runs} runs; 'vs base' = p50 / untenanted p50 of the same run"
    )
    print(f"{'backend':<9} {'publish to':<46} {'p50 us':>8} {'p99 us':>8} {'vs base':>8}")
    paths = (
        ("baseline", "untenanted (baseline, interleaved)"),
        ("cold", "cold tenant (first publish, index loaded)"),
        ("warm", "warm tenant (index cached)"),
        ("after remote change", "warm, after 1 sub added by another process"),
        ("after local change", "warm, after 1 sub disabled in this process"),
    )
    p50s: dict[tuple[str, str], float] = {}
    for backend, result in results.items():
        for key, label in paths:
            figures = [percentiles_us(run[key]) for run in result["runs"]]
            ratios = [
                percentiles_us(run[key])[0] / percentiles_us(run["baseline"])[0]
                for run in result["runs"]
            ]
            p50 = p50s[backend, key] = statistics.median(f[0] for f in figures)
            p99 = statistics.median(f[1] for f in figures)
            print(
                f"{backend:<9} {label:<46} {p50:>8.0f} {p99:>8.0f} "
                f"{statistics.median(ratios):>7.2f}x"
            )

    sample = len(next(iter(results.values()))["runs"][0]["after local change"])
    print("\nindex loads (subscription_patterns calls), per run:")
    for backend, result in results.items():
        for key, what in (
            ("cold loads", "cold phase"),
            ("warm loads", "warm phase"),
            ("remote change loads", f"1 remote change + {sample} publishes to other tenants"),
            ("local change loads", f"1 local change + {sample} publishes to other tenants"),
        ):
            counts = "/".join(str(run[key]) for run in result["runs"])
            print(f"{backend:<9} {what:<54} {counts}")

    print("\ncross-process: child's subscribe() returned -> a publish here created a delivery")
    delays: dict[str, list[float]] = {}
    for backend, result in results.items():
        delays[backend] = sorted(d for run in result["runs"] for d in run["match"])
        found = delays[backend]
        print(
            f"{backend:<9} {len(found)} trials: median {statistics.median(found) * 1000:.1f} ms, "
            f"max {found[-1] * 1000:.1f} ms (publishing every ~1 ms to a cached tenant)"
        )

    print(f"\nRSS of a process publishing once to each of the {args.tenants:,} tenants:")
    for backend, result in results.items():
        memory = result["rss"]
        print(
            f"{backend:<9} before {memory['before']['VmRSS']:.0f} MB, after "
            f"{memory['after']['VmRSS']:.0f} MB, peak (VmHWM) {memory['after']['VmHWM']:.0f} MB; "
            f"{memory['cached']:,} tenant indexes cached; "
            f"{args.tenants / memory['elapsed']:,.0f} cold publishes/s (publish_many)"
        )

    print("\ntargets:")
    for backend, result in results.items():
        p50 = p50s[backend, "warm"]
        cold = p50s[backend, "cold"]
        target = TARGET_P50_US[backend]
        peak = result["rss"]["after"]["VmHWM"]
        reloads = max(
            max(run["remote change loads"], run["local change loads"]) for run in result["runs"]
        )
        checks = (
            (f"publish p50 < {target:.0f} us, warm tenant ({p50:.0f})", p50 < target),
            (f"publish p50 < {target:.0f} us, cold tenant ({cold:.0f})", cold < target),
            (
                f"remote subscription matched < {TARGET_MATCH_S:.0f} s "
                f"(max {delays[backend][-1] * 1000:.1f} ms)",
                delays[backend][-1] < TARGET_MATCH_S,
            ),
            (f"one change reloads one tenant (at most {reloads})", reloads <= 1),
            (f"publisher RSS < {TARGET_RSS_MB:.0f} MB (peak {peak:.0f})", peak < TARGET_RSS_MB),
        )
        for text, met in checks:
            print(f"{backend:<9} {'met   ' if met else 'MISSED'} {text}")


if __name__ == "__main__":
    main()
