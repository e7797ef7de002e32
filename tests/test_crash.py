"""Durability with real worker processes on one SQLite file: a worker killed with
SIGKILL loses nothing, and two workers never send one delivery twice."""

from __future__ import annotations

import collections
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import pytest

import webhook_dispatch as wd
from webhook_dispatch._receiver import LoopbackReceiver
from webhook_dispatch.paging import every

if TYPE_CHECKING:
    from conftest import Processes

pytestmark = pytest.mark.slow

# A worker process: drains the store and exits once nothing is pending or in flight. It
# has no deadline of its own: the test waits while deliveries progress, and kills it at
# teardown.
WORKER = textwrap.dedent(
    """
    import sys, time
    from datetime import timedelta
    import webhook_dispatch as wd

    store, lease = sys.argv[1], float(sys.argv[2])
    with wd.Dispatcher(store, lease=timedelta(seconds=lease), concurrency=16,
                       poll_interval=0.2, allow_private_networks=True) as d:
        while True:
            d.run_until_idle()
            if not d.deliveries(status="pending") and not d.deliveries(status="delivering"):
                break
            time.sleep(0.05)
    """
)


def start_worker(processes: Processes, store: str, lease: float) -> subprocess.Popen[bytes]:
    return processes.start(
        [sys.executable, "-c", WORKER, store, str(lease)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def drain(
    processes: Processes, workers: list[subprocess.Popen[bytes]], receiver: LoopbackReceiver
) -> None:
    """Wait for each worker to exit (status 0) while deliveries keep arriving."""
    for worker in workers:
        processes.finish(worker, progress=lambda: len(receiver.received))


@pytest.fixture
def receiver() -> Iterator[LoopbackReceiver]:
    with LoopbackReceiver(delay=0.002) as instance:
        yield instance


def publish(store: str, url: str, secret: str, count: int) -> list[str]:
    with wd.Dispatcher(store, allow_private_networks=True) as dispatcher:
        dispatcher.subscribe(url, secret=secret)
        messages = dispatcher.publish_many(("order.created", {"n": n}) for n in range(count))
    return [m.id for m in messages]


def test_kill_9_mid_delivery_loses_nothing(
    tmp_path: Path, receiver: LoopbackReceiver, processes: Processes
) -> None:
    store = f"sqlite:///{tmp_path / 'crash.db'}"
    secret = wd.generate_secret()
    ids = publish(store, receiver.route("/hooks", [200], secret=secret), secret, 2000)

    victim = start_worker(processes, store, lease=2.0)
    processes.wait_while_progressing(
        lambda: len(receiver.received) >= 300 or victim.poll() is not None,
        lambda: len(receiver.received),
        "300 deliveries",
    )
    assert victim.poll() is None, "the worker finished before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)
    received_before_restart = len(receiver.received)

    # What the dead worker held when it died: leased, attempt maybe sent, not recorded.
    with sqlite3.connect(tmp_path / "crash.db") as connection:
        in_flight = {
            message_id
            for (message_id,) in connection.execute(
                "SELECT message_id FROM deliveries WHERE status = 'delivering'"
            )
        }
    assert 0 < received_before_restart < 2000

    drain(processes, [start_worker(processes, store, lease=2.0)], receiver)

    counts = collections.Counter(r.webhook_id for r in receiver.received)
    assert set(counts) == set(ids), "every message arrived at least once"
    duplicates = {message_id for message_id, n in counts.items() if n > 1}
    print(f"in flight at kill: {len(in_flight)}, sent twice: {len(duplicates)}")
    assert duplicates <= in_flight, "only deliveries in flight at the kill were sent twice"
    assert all(r.verified for r in receiver.received)
    with wd.Dispatcher(store, allow_private_networks=True) as dispatcher:
        statuses = collections.Counter(d.status for d in every(dispatcher.deliveries))
    assert statuses == {wd.DeliveryStatus.SUCCEEDED: 2000}


def test_two_workers_on_one_file_send_each_delivery_once(
    tmp_path: Path, receiver: LoopbackReceiver, processes: Processes
) -> None:
    store = f"sqlite:///{tmp_path / 'pair.db'}"
    secret = wd.generate_secret()
    ids = publish(store, receiver.route("/hooks", [200], secret=secret), secret, 2000)

    drain(processes, [start_worker(processes, store, lease=60.0) for _ in range(2)], receiver)

    counts = collections.Counter(r.webhook_id for r in receiver.received)
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1, "a delivery was sent twice"
    with wd.Dispatcher(store, allow_private_networks=True) as dispatcher:
        attempts = [a for m in ids[:50] for a in dispatcher.attempts(m)]
    assert len(attempts) == 50


def test_restart_keeps_subscriptions_pending_retries_and_history(tmp_path: Path) -> None:
    from webhook_dispatch.testing import FakeClock, MockReceiver

    store = f"sqlite:///{tmp_path / 'restart.db'}"
    clock = FakeClock()
    receiver = MockReceiver([503, 503, 200], clock=clock)
    with wd.Dispatcher(store, clock=clock, transport=receiver) as dispatcher:
        subscription = dispatcher.subscribe("https://example.com/h", event_types=["order.*"])
        message = dispatcher.publish("order.created", {"id": 1})
        dispatcher.run_until_idle()
        due = dispatcher.next_due_at()
        assert due is not None
        clock.set(due)
        dispatcher.run_until_idle()  # second 503: the next try is ~5 minutes away
        due = dispatcher.next_due_at()
        assert due is not None
        wait = due - clock.now()
        assert timedelta(minutes=4) <= wait <= timedelta(minutes=6)

    with wd.Dispatcher(store, clock=clock, transport=receiver) as reopened:
        [kept] = reopened.subscriptions()
        assert kept.consecutive_failures == 2  # the failure run survives the restart too
        assert attrs.evolve(kept, failing_since=None, consecutive_failures=0) == subscription
        assert reopened.next_due_at() == due  # still due at the same moment
        assert [a.status_code for a in reopened.attempts(message.id)] == [503, 503]
        clock.set(due - timedelta(seconds=1))
        assert reopened.run_until_idle() == 0
        clock.set(due)
        assert reopened.run_until_idle() == 1
        assert [a.status_code for a in reopened.attempts(message.id)] == [503, 503, 200]
        assert reopened.deliveries()[0].status is wd.DeliveryStatus.SUCCEEDED
