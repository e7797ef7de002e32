"""Running a worker in the foreground for the framework commands: SIGTERM and SIGINT stop
it gracefully, as they do ``webhook-dispatch worker``."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from .._redact import redact_store_url
from ..dispatcher import Dispatcher

__all__ = ["redact", "run_until_signalled"]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_until_signalled(dispatcher: Dispatcher) -> None:
    """Run ``dispatcher``'s worker until SIGTERM, SIGINT or Ctrl-C; attempts in flight
    finish and are recorded before this returns. Closes the dispatcher."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # SIGINT explicitly too: shells start background jobs with it ignored.
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, _interrupt)
    try:
        dispatcher.run()
    except KeyboardInterrupt:
        pass  # arrived outside run()'s own handler; close() below still stops gracefully
    finally:
        try:
            dispatcher.close()
        finally:
            for signum, handler in previous.items():
                if handler is not None:  # None: set outside Python, cannot be restored
                    signal.signal(signum, handler)


def redact(url: str) -> str:
    """A store URL with its password hidden, for printing."""
    return redact_store_url(url)
