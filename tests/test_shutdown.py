"""Stopping a worker: attempts in flight get a grace period (by default their own
timeout); those still running after it are recorded as interrupted and due again at
once, so another worker takes them without waiting for the lease; the CLI worker exits
0 either way, and a second signal interrupts at once."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

import webhook_dispatch as wd
from webhook_dispatch.testing import MockReceiver

if TYPE_CHECKING:
    from conftest import Processes


class Stuck(httpx.AsyncBaseTransport):
    """Never answers (until ``released``); says when a request arrived."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.entered.set()
        while not self.released.is_set():  # noqa: ASYNC110 (set from another thread)
            await asyncio.sleep(0.005)
        return httpx.Response(200)


def _store(tmp_path: Path) -> str:
    return "sqlite:///" + (tmp_path / "stop.db").as_posix()


def _interrupted_and_free(store: str) -> wd.Delivery:
    """The one delivery is pending and due, its one attempt interrupted; another
    worker delivers it at once (its lease was released)."""
    with wd.Dispatcher(store, transport=MockReceiver([200])) as other:
        [delivery] = other.deliveries()
        assert delivery.status is wd.DeliveryStatus.PENDING
        assert delivery.next_attempt_at is not None
        assert delivery.next_attempt_at <= other.clock.now()
        [attempt] = other.attempts(delivery.message_id)
        assert attempt.error_kind is wd.ErrorKind.INTERRUPTED
        assert attempt.status_code is None and attempt.number == 1
        [subscription] = other.subscriptions()
        assert subscription.failing_since is None  # not the endpoint's fault
        assert other.run_until_idle() == 1  # no lease to wait for
        [after] = other.deliveries()
        assert after.status is wd.DeliveryStatus.SUCCEEDED and after.attempt_count == 2
    return delivery


def test_attempts_still_running_after_the_grace_period_are_interrupted(tmp_path: Path) -> None:
    store, stuck = _store(tmp_path), Stuck()
    with wd.Dispatcher(store, transport=stuck, grace=0.05) as dispatcher:
        dispatcher.subscribe("https://example.com/h", timeout=300)
        dispatcher.publish("order.created", {})
        dispatcher.start()
        assert stuck.entered.wait(timeout=60)
        dispatcher.stop()  # no timeout: the grace period bounds it
    stuck.released.set()
    _interrupted_and_free(store)


def test_interrupt_ends_the_default_grace_period(tmp_path: Path) -> None:
    """By default an attempt may run until its own timeout; `interrupt` (a second
    Ctrl-C) ends that wait now."""
    store, stuck = _store(tmp_path), Stuck()
    with wd.Dispatcher(store, transport=stuck) as dispatcher:
        dispatcher.subscribe("https://example.com/h", timeout=300)
        dispatcher.publish("order.created", {})
        dispatcher.start()
        assert stuck.entered.wait(timeout=60)
        with pytest.raises(wd.StopTimeout):
            dispatcher.stop(timeout=0.05)  # still waiting for the attempt
        dispatcher.interrupt()
        dispatcher.stop()
    stuck.released.set()
    _interrupted_and_free(store)


def test_without_a_grace_period_stop_waits_for_the_attempt(tmp_path: Path) -> None:
    store, stuck = _store(tmp_path), Stuck()
    with wd.Dispatcher(store, transport=stuck) as dispatcher:
        dispatcher.subscribe("https://example.com/h", timeout=300)
        dispatcher.publish("order.created", {})
        dispatcher.start()
        assert stuck.entered.wait(timeout=60)
        threading.Timer(0.05, stuck.released.set).start()
        dispatcher.stop()
        [delivery] = dispatcher.deliveries()
    assert delivery.status is wd.DeliveryStatus.SUCCEEDED


def test_grace_is_validated_before_any_io(tmp_path: Path) -> None:
    with pytest.raises(wd.ConfigurationError, match="grace"):
        wd.Dispatcher(_store(tmp_path), grace=-1)
    assert not (tmp_path / "stop.db").exists()


# -- the CLI worker ------------------------------------------------------------------------
@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A loopback port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"


def _start_worker(processes: Processes, store: str, *extra: str) -> subprocess.Popen[str]:
    worker = processes.start(
        [
            sys.executable,
            "-m",
            "webhook_dispatch",
            "worker",
            "--store",
            store,
            "--allow-private-networks",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert "grace on stop" in processes.read_line(worker)
    return worker


def _wait_until_in_flight(processes: Processes, store: str) -> None:
    with wd.Dispatcher(store) as dispatcher:

        def delivering() -> bool:
            [delivery] = dispatcher.deliveries()
            return delivery.status is wd.DeliveryStatus.DELIVERING

        processes.wait_while_progressing(delivering, None, "the attempt to start", limit=120)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["grace", "second signal"])
def test_the_cli_worker_interrupts_and_exits_0(
    tmp_path: Path, silent_endpoint: str, processes: Processes, how: str
) -> None:
    store = _store(tmp_path)
    with wd.Dispatcher(store, allow_private_networks=True) as dispatcher:
        dispatcher.subscribe(silent_endpoint, timeout=300)
        dispatcher.publish("order.created", {"id": 1})
    extra = ("--grace", "0.2") if how == "grace" else ()
    worker = _start_worker(processes, store, *extra, "--lease", "600")
    _wait_until_in_flight(processes, store)
    worker.send_signal(signal.SIGTERM)
    if how == "second signal":
        # Two signals sent at once arrive as one (POSIX does not queue them): send the
        # second once the worker says it is waiting for the attempt.
        line = ""
        while "stopping: 1 attempts in flight may run" not in line:
            line = processes.read_line(worker)
            assert line, "the worker exited before saying it waits"
        worker.send_signal(signal.SIGTERM)
    stopped = processes.terminate(worker)  # one more SIGTERM is harmless
    assert stopped.returncode == 0, stopped.stdout
    assert "interrupted the attempt of delivery" in stopped.stdout
    assert "webhook-dispatch worker stopped" in stopped.stdout
    # Due again at once, although the lease (600 s) is far from over.
    with wd.Dispatcher(store) as dispatcher:
        [delivery] = dispatcher.deliveries()
        assert delivery.status is wd.DeliveryStatus.PENDING
        assert delivery.next_attempt_at is not None
        assert delivery.next_attempt_at - dispatcher.clock.now() <= timedelta(0)
        [attempt] = dispatcher.attempts(delivery.message_id)
        assert attempt.error_kind is wd.ErrorKind.INTERRUPTED
