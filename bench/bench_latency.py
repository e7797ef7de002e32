"""B2: publish -> request received, in-process, idle and under load (not run in CI).

    python bench/bench_latency.py [--probes 200] [--load-messages 400]

A receiver thread in this process timestamps each request on the same clock as
`publish()`. Idle: one probe at a time with a started worker on SQLite. Under load: the
same probes while a B1-sized backlog (load-messages x 50 subscriptions on nginx or the
fallback receiver) is being delivered. The baseline measured in the same run is a raw
aiohttp POST to the same probe receiver (the floor any sender pays).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from common import dispatcher_options, free_port, machine, receiver, wait_for_port

import webhook_dispatch as wd


class ProbeReceiver:
    """An aiohttp server on its own thread that records when each webhook-id arrived."""

    def __init__(self) -> None:
        self.port = free_port()
        self.arrived: dict[str, float] = {}
        self.events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        wait_for_port(self.port)

    def expect(self, key: str) -> threading.Event:
        """An event set when ``key`` arrives (already set if it arrived before this call:
        a fast delivery can beat the publisher here)."""
        with self._lock:
            event = self.events[key] = threading.Event()
            if key in self.arrived:
                event.set()
            return event

    async def _handle(self, request: web.Request) -> web.Response:
        now = time.perf_counter()
        await request.read()
        key = request.headers.get("webhook-id") or request.headers.get("x-probe", "")
        with self._lock:
            self.arrived[key] = now
            event = self.events.get(key)
        if event is not None:
            event.set()
        return web.Response(text="ok")

    def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        asyncio.run(self._run(app))

    async def _run(self, app: web.Application) -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        await asyncio.Event().wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/probe"


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


def probe(
    dispatcher: wd.Dispatcher, probes: ProbeReceiver, count: int, *, wait: float = 10
) -> list[float]:
    latencies = []
    for n in range(count):
        key = f"probe-{time.monotonic_ns()}-{n}"
        started = time.perf_counter()
        message = dispatcher.publish("probe.sent", {"n": n}, idempotency_key=key)
        event = probes.expect(message.id)
        if not event.wait(wait):
            raise RuntimeError("a probe never arrived")
        latencies.append(probes.arrived[message.id] - started)
        time.sleep(0.002)
    return latencies


async def raw_floor(url: str, count: int) -> list[float]:
    samples = []
    async with aiohttp.ClientSession() as session:
        for n in range(count):
            started = time.perf_counter()
            async with session.post(url, data=b"{}", headers={"x-probe": f"raw-{n}"}) as reply:
                await reply.read()
            samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--loaded-probes", type=int, default=20)
    parser.add_argument("--load-messages", type=int, default=400)
    args = parser.parse_args()

    probes = ProbeReceiver()
    floor = asyncio.run(raw_floor(probes.url, args.probes))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        store = f"sqlite:///{directory / 'latency.db'}"
        with (
            receiver(directory) as (base, name),
            wd.Dispatcher(store, **dispatcher_options()) as dispatcher,
        ):
            dispatcher.subscribe(probes.url, event_types=["probe.*"])
            dispatcher.start()
            idle = probe(dispatcher, probes, args.probes)

            for n in range(50):
                dispatcher.subscribe(f"{base}/hooks/{n}", event_types=["order.*"])
            dispatcher.publish_many(("order.created", {"n": n}) for n in range(args.load_messages))
            loaded = probe(dispatcher, probes, args.loaded_probes, wait=300)
            backlog = dispatcher.stats().pending
            dispatcher.stop()

    print(machine())
    print(
        f"load receiver: {name}; {args.probes} probes idle, {args.loaded_probes} under load; "
        "SQLite store, signing on"
    )
    print(f"{'path':<48} {'p50 ms':>8} {'p99 ms':>8}")
    for label, samples in (
        ("raw aiohttp POST to the probe receiver (floor)", floor),
        ("B2 publish -> received, idle", idle),
        ("B2 publish -> received, under B1 load", loaded),
    ):
        p50, p99 = percentiles(samples)
        print(f"{label:<48} {p50:>8.2f} {p99:>8.2f}")
    print(f"pending deliveries when the loaded probes ended: {backlog:,}")
    print("target: idle p50 under 5 ms")


if __name__ == "__main__":
    main()
