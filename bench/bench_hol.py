"""B5: head-of-line blocking. One subscription whose receiver never answers, next to 49
healthy ones: the healthy ones' throughput must stay within 10 % of B1 (not in CI).

    python bench/bench_hol.py [--messages 400] [--reps 3]

Both runs happen here, back to back: B1 (50 healthy subscriptions) and B5 (49 healthy and
one that accepts connections and never answers, default 15 s timeout). Throughput counts
healthy deliveries only, from the first publish to the last healthy attempt recorded.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from common import dispatcher_options, machine, receiver

import webhook_dispatch as wd
from webhook_dispatch.paging import every


class BlackHole:
    """Accepts TCP connections on 127.0.0.1, reads whatever arrives, never answers."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/never"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self._held.append(connection)  # keep it open; never reply

    def close(self) -> None:
        self._listener.close()
        for connection in self._held:
            connection.close()


def healthy_rate(urls: list[str], dead: str | None, messages: int, directory: Path) -> float:
    path = directory / f"hol-{time.monotonic_ns()}.db"
    with wd.Dispatcher(f"sqlite:///{path}", **dispatcher_options()) as dispatcher:
        healthy = [dispatcher.subscribe(url).id for url in urls]
        if dead is not None:
            dispatcher.subscribe(dead)
        expected = messages * len(healthy)
        started = time.perf_counter()
        dispatcher.publish_many(("order.created", {"n": n}) for n in range(messages))
        dispatcher.start()
        deadline = started + 600
        done = 0
        while time.perf_counter() < deadline:
            done = sum(
                1
                for s in healthy
                for _ in every(dispatcher.deliveries, subscription_id=s, status="succeeded")
            )
            if done >= expected:
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        dispatcher.stop(timeout=60)
    if done < expected:
        raise RuntimeError(f"only {done} of {expected} healthy deliveries in 600 s")
    return expected / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    hole = BlackHole()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        with receiver(directory) as (base, name):
            all_healthy = [f"{base}/hooks/{n}" for n in range(50)]
            b1 = [
                healthy_rate(all_healthy, None, args.messages, directory) for _ in range(args.reps)
            ]
            b5 = [
                healthy_rate(all_healthy[:49], hole.url, args.messages, directory)
                for _ in range(args.reps)
            ]
    hole.close()
    print(machine())
    print(f"receiver: {name}; {args.messages} messages; median of {args.reps}")
    print(f"{'run':<52} {'healthy deliveries/s':>20}")
    print(f"{'B1: 50 healthy subscriptions':<52} {statistics.median(b1):>20,.0f}")
    print(
        f"{'B5: 49 healthy + 1 never answering (15 s timeout)':<52} {statistics.median(b5):>20,.0f}"
    )
    ratio = statistics.median(b5) / statistics.median(b1)
    print(f"B5 / B1 = {ratio:.2f}   (target >= 0.90)")


if __name__ == "__main__":
    main()
