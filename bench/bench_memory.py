"""B4b: a receiver answering with a 100 MB body must not raise the worker's RSS by more
than a few MB (not in CI).

    python bench/bench_memory.py [--attempts 20]

A raw server sends a 100 MB response to every POST. The worker delivers ``attempts``
messages to it; the script prints the process's RSS before and after (the baseline is
the same process before any delivery) and how much of each body crossed the socket.
"""

from __future__ import annotations

import argparse
import socket
import threading

from common import dispatcher_options, machine

import webhook_dispatch as wd

BODY_SIZE = 100 * 1024 * 1024


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class HugeBodyServer:
    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.sent = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/huge"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        chunk = b"x" * 65536
        with connection:
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BODY_SIZE)
                for _ in range(BODY_SIZE // len(chunk)):
                    connection.sendall(chunk)
                    self.sent += len(chunk)
            except OSError:
                pass  # the client hung up after its 16 KiB: as it should


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--attempts", type=int, default=20)
    args = parser.parse_args()
    server = HugeBodyServer()
    with wd.Dispatcher(**dispatcher_options(retry=wd.RetryPolicy.fixed([0]))) as dispatcher:
        dispatcher.subscribe(server.url)
        dispatcher.publish("warm.up", {})
        dispatcher.run_until_idle()
        before = rss_mib()
        dispatcher.publish_many(("order.created", {"n": n}) for n in range(args.attempts))
        dispatcher.run_until_idle()
        after = rss_mib()
        kept = {
            len(a.response_body) for m in dispatcher.messages() for a in dispatcher.attempts(m.id)
        }
    print(machine())
    print(f"{'measure':<52} {'value':>12}")
    print(f"{'RSS after one warm-up delivery (baseline)':<52} {before:>9.1f} MiB")
    print(f"{f'RSS after {args.attempts} more 100 MB responses':<52} {after:>9.1f} MiB")
    print(f"{'RSS growth':<52} {after - before:>9.1f} MiB")
    print(f"{'response body kept per attempt':<52} {max(kept):>10,} B")
    print(
        f"{'bytes the server managed to send, all attempts':<52} {server.sent / 2**20:>9.1f} MiB "
        f"(of {(args.attempts + 1) * 100:,} MiB offered)"
    )


if __name__ == "__main__":
    main()
