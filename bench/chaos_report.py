"""The chaos report: every fault scenario of ``tests/chaos`` at full size, one table.

    python bench/chaos_report.py [--quick] [--only receivers,kills,...] [--seed N]

Runs on 127.0.0.1 only. Full size: 5,000 messages to a misbehaving receiver, 3,000
through a worker killed with SIGKILL five times, the store faults (PostgreSQL restart
when ``WEBHOOK_DISPATCH_TEST_POSTGRES`` is set and ``pg_ctlcluster`` is usable, SQLite
locked, disk full), clock jumps, and the 100-subscription load at 20,000 messages
(mixed phase; the healthy share also runs alone first, for the throughput ratio).
``--quick`` uses the CI sizes. Exits non-zero when any row shows a loss, a wrong attempt
record, a stored publish that raised, or a duplicate a kill does not explain.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "chaos"))

import chaos_scenarios as chaos

Scenario = Callable[[Path, bool, int], "chaos.Result | str"]


def _postgres(workdir: Path, quick: bool, seed: int) -> chaos.Result | str:
    reason = chaos.postgres_unavailable_reason()
    if reason is not None:
        return reason
    return chaos.postgres_restart(workdir, messages=2000 if quick else 5000, seed=seed)


SCENARIOS: dict[str, Scenario] = {
    "receivers": lambda w, q, s: chaos.receivers(w, messages=5000, seed=s),
    "kills": lambda w, q, s: chaos.worker_kills(
        w, messages=2500 if q else 3000, kills=4 if q else 5, seed=s
    ),
    "postgres": _postgres,
    "locked": lambda w, q, s: chaos.sqlite_locked(w, messages=1500, seed=s),
    "disk-full": lambda w, q, s: chaos.disk_full(w, messages=1000, seed=s),
    "clock": lambda w, q, s: chaos.clock_jumps(w, messages=600 if q else 2000, seed=s),
    "load": lambda w, q, s: chaos.load(w, messages=4000 if q else 20000),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the CI sizes")
    parser.add_argument("--only", default="", help=f"comma-separated: {','.join(SCENARIOS)}")
    parser.add_argument("--seed", type=int, default=1, help="seed for scripts and kill points")
    args = parser.parse_args()
    chosen = [name for name in SCENARIOS if not args.only or name in args.only.split(",")]
    results: list[chaos.Result] = []
    skipped: list[str] = []
    for name in chosen:
        started = time.monotonic()
        print(f"== {name} ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix=f"chaos-{name}-") as workdir:
            try:
                outcome = SCENARIOS[name](Path(workdir), args.quick, args.seed)
            finally:
                chaos.kill_leftover_workers()
        if isinstance(outcome, str):
            skipped.append(f"{name}: skipped ({outcome})")
            continue
        outcome.figures.setdefault("scenario seconds", round(time.monotonic() - started, 1))
        results.append(outcome)
    print(chaos.table(results))
    print()
    for result in results:
        print(f"{result.fault}:")
        for figure, value in result.figures.items():
            print(f"  {figure}: {value}")
        for note in result.notes[:10]:
            print(f"  ! {note}")
    for line in skipped:
        print(line)
    return 0 if all(result.ok for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
