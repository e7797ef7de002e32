"""``manage.py webhook_dispatch_worker``: deliver webhooks with the settings' dispatcher."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from webhook_dispatch.contrib._worker import redact, run_until_signalled
from webhook_dispatch.contrib.django import build_dispatcher, store_url


class Command(BaseCommand):
    """Run a delivery worker until SIGTERM or Ctrl-C (or, with --until-idle, until
    nothing is due)."""

    help = (
        "Deliver webhooks from the store configured in settings.WEBHOOK_DISPATCH until "
        "stopped (SIGTERM or Ctrl-C let the attempts in flight finish first)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """--concurrency and --until-idle."""
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="attempts in flight (default: OPTIONS['concurrency'], else 64)",
        )
        parser.add_argument(
            "--until-idle",
            action="store_true",
            help="deliver what is due now, then exit (cron jobs, tests)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the worker."""
        overrides = {}
        if options["concurrency"] is not None:
            overrides["concurrency"] = options["concurrency"]
        dispatcher = build_dispatcher(**overrides)
        if options["until_idle"]:
            try:
                attempts = dispatcher.run_until_idle()
            finally:
                dispatcher.close()
            self.stdout.write(f"webhook_dispatch_worker: {attempts} attempt(s) made")
            return
        self.stdout.write(
            f"webhook_dispatch_worker: delivering from {redact(store_url())} "
            "(Ctrl-C or SIGTERM stops it)"
        )
        self.stdout.flush()
        run_until_signalled(dispatcher)
        self.stdout.write("webhook_dispatch_worker: stopped; attempts in flight were recorded")
