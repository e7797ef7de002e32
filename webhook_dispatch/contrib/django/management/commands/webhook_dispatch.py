"""``manage.py webhook_dispatch ...``: the ``webhook-dispatch`` command line on the store
configured in ``settings.WEBHOOK_DISPATCH`` (subscriptions, deliveries, attempts, retry,
recover, purge)."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from webhook_dispatch.cli import main
from webhook_dispatch.contrib.django import _open_shared_file, store_url


class Command(BaseCommand):
    """Pass the arguments to ``webhook-dispatch`` with ``--store`` from the settings."""

    help = (
        "Run a webhook-dispatch command (subscriptions add/list, deliveries list, attempts, "
        "retry, recover, purge) on the store in settings.WEBHOOK_DISPATCH; "
        "'manage.py webhook_dispatch -- --help' lists them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """Everything after the command name goes to ``webhook-dispatch``."""
        parser.add_argument("arguments", nargs=argparse.REMAINDER, metavar="ARGS")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command line."""
        arguments = list(options["arguments"])
        if arguments[:1] == ["--"]:
            arguments = arguments[1:]
        _open_shared_file()
        try:
            status = main(["--store", store_url(), *(arguments or ["--help"])])
        except SystemExit as exc:  # argparse: --help, or a usage error
            status = exc.code if isinstance(exc.code, int) else 2
        if status:
            raise CommandError(f"webhook-dispatch exited with status {status}", returncode=status)
