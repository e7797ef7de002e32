"""A webhook receiver for trying the examples: it verifies every request's signature with
``wd.verify`` (as your customers would) and prints what arrived.

    python receiver.py            # http://127.0.0.1:8001/hooks
    python receiver.py --port 0   # any free port; the URL is printed
    python receiver.py --verify-with standardwebhooks
                                  # verify with the Standard Webhooks reference package
                                  # (pip install standardwebhooks), not this library

The secret comes from $WEBHOOK_SECRET, else the demo secret the other examples use.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os

import webhook_dispatch as wd

DEMO_SECRET = "whsec_hjx0T3soa2HrlClN7fwgWzx8647el1lB"  # for local experiments only
SECRET = os.environ.get("WEBHOOK_SECRET", DEMO_SECRET)


def verify_with_webhook_dispatch(body: bytes, headers: dict[str, str]) -> None:
    wd.verify(body, headers, SECRET)


def verify_with_standardwebhooks(body: bytes, headers: dict[str, str]) -> None:
    import standardwebhooks

    try:
        standardwebhooks.Webhook(SECRET).verify(body, headers)
    except standardwebhooks.WebhookVerificationError as exc:
        raise wd.InvalidSignature(str(exc)) from None


VERIFY = verify_with_webhook_dispatch


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            VERIFY(body, {name.lower(): value for name, value in self.headers.items()})
        except wd.InvalidSignature as exc:
            print(f"REJECTED {self.headers.get('webhook-id')}: {exc}", flush=True)
            self.send_response(401)
        else:
            event = json.loads(body)
            print(
                f"verified {self.headers['webhook-id']} {event['type']} {event['data']}",
                flush=True,
            )
            self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per webhook is enough


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument(
        "--verify-with",
        choices=["webhook_dispatch", "standardwebhooks"],
        default="webhook_dispatch",
    )
    args = parser.parse_args()
    port = args.port
    global VERIFY
    if args.verify_with == "standardwebhooks":
        VERIFY = verify_with_standardwebhooks
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    print(f"listening on http://127.0.0.1:{server.server_port}/hooks", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
