"""Shared fixtures: a real loopback receiver, PostgreSQL schemas, and subprocesses that
never outlive their test (the ``dispatcher``/``fake_clock``/``mock_receiver`` fixtures come
from webhook_dispatch's own pytest plugin)."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from webhook_dispatch._receiver import LoopbackReceiver


@pytest.fixture
def loopback() -> Iterator[LoopbackReceiver]:
    """A real HTTP server on 127.0.0.1 with scriptable paths."""
    with LoopbackReceiver() as receiver:
        yield receiver


# -- PostgreSQL ------------------------------------------------------------------------
POSTGRES_ENV = "WEBHOOK_DISPATCH_TEST_POSTGRES"


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The DSN of the test server from ``WEBHOOK_DISPATCH_TEST_POSTGRES``.

    Unset: the test is skipped. Set but unreachable: the test fails, so CI cannot pass
    by silently skipping the PostgreSQL tests.
    """
    dsn = os.environ.get(POSTGRES_ENV)
    if not dsn:
        pytest.skip(
            f"PostgreSQL tests need {POSTGRES_ENV}=postgresql://user@host:5432/dbname "
            "(a database the tests may create and drop schemas in)"
        )
    try:
        import psycopg
    except ImportError:
        pytest.fail(f"{POSTGRES_ENV} is set but psycopg is missing: pip install '.[postgres]'")
    try:
        with psycopg.connect(dsn, connect_timeout=5) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(f"{POSTGRES_ENV} is set but the server is unreachable: {exc}")
    return dsn


def drop_schema(dsn: str, schema: str) -> None:
    """Drop a test schema and everything in it (ignores a server that went away)."""
    import psycopg

    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    except psycopg.OperationalError:
        pass


@pytest.fixture
def postgres_schema(postgres_dsn: str) -> Iterator[str]:
    """A fresh, randomly named schema for one test, dropped afterwards."""
    schema = f"wd_test_{uuid.uuid4().hex[:12]}"
    yield schema
    drop_schema(postgres_dsn, schema)


@pytest.fixture
def postgres_url(postgres_dsn: str, postgres_schema: str) -> str:
    """A ``postgresql://`` store URL naming this test's own schema."""
    separator = "&" if "?" in postgres_dsn else "?"
    return f"{postgres_dsn}{separator}schema={postgres_schema}"


STORES = ["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
"""Every store kind, for tests that must hold on each (PostgreSQL skips without a server
outside CI)."""


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL of each kind in turn: ``memory://``, a fresh SQLite file, and this
    test's own PostgreSQL schema."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


# -- subprocesses ----------------------------------------------------------------------
Completed = subprocess.CompletedProcess[Any]


class Processes:
    """The subprocesses one test starts, each the leader of its own process group.

    Leaving the ``with`` block (the ``processes`` fixture's teardown, whether the test
    passed or raised) kills every group with SIGKILL and reaps the leaders, so neither a
    worker nor anything it spawned outlives the test.
    """

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def start(self, args: Sequence[str], **options: Any) -> subprocess.Popen[Any]:
        """`subprocess.Popen` in a new session (so its children can be killed with it)."""
        options.setdefault("start_new_session", True)
        process: subprocess.Popen[Any] = subprocess.Popen(args, **options)
        self.started.append(process)
        return process

    def kill(self, process: subprocess.Popen[Any]) -> None:
        """SIGKILL the process and its group now, and reap it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            process.kill()  # not a group leader (started with start_new_session=False)
        process.wait()
        _wait_until_group_gone(process.pid)

    def finish(
        self,
        process: subprocess.Popen[Any],
        *,
        progress: Callable[[], object] | None = None,
        stall: float = 60,
        limit: float = 900,
    ) -> str:
        """Wait for the process to exit by itself, reading its output meanwhile (a full
        pipe would stall it); assert it exited 0 and return the output.

        With ``progress``, the wait fails only when ``progress()`` stood still for
        ``stall`` seconds (see `wait_while_progressing`); ``limit`` is a safety net.
        """
        outputs: list[Any] = []

        def exited() -> bool:
            try:
                out, _ = process.communicate(timeout=0.1)
            except subprocess.TimeoutExpired:
                return False  # what it wrote so far is kept for the next call
            outputs.append(out)
            return True

        try:
            self.wait_while_progressing(
                exited, progress, f"{process.args[:3]} to exit", stall=stall, limit=limit
            )
        except AssertionError as exc:
            self.kill(process)
            out, _ = process.communicate()
            raise AssertionError(f"{exc}:\n{_text(out)}") from None
        text = _text(outputs[0])
        assert process.returncode == 0, f"exited {process.returncode}:\n{text}"
        return text

    def run(self, args: Sequence[str], *, limit: float = 600, **options: Any) -> Completed:
        """Start the process and wait for it to exit (`subprocess.run` with a group kill);
        ``limit`` is a safety net against a hang, not a budget."""
        options.setdefault("stdout", subprocess.PIPE)
        options.setdefault("stderr", subprocess.PIPE)
        process = self.start(args, **options)
        try:
            out, err = process.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            self.kill(process)
            out, err = process.communicate()
            raise AssertionError(f"{args} still running after {limit:g}s:\n{_text(out)}") from None
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    def read_line(self, process: subprocess.Popen[Any], *, limit: float = 120) -> Any:
        """The next line of the process's stdout (empty at its end); fails, rather than
        hangs, when none comes within ``limit`` seconds (a safety net)."""
        stream = process.stdout
        assert stream is not None, "started without stdout=subprocess.PIPE"
        lines: queue.Queue[Any] = queue.Queue()
        # A daemon thread: if no line comes, teardown's kill ends the read with EOF.
        threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
        try:
            return lines.get(timeout=limit)
        except queue.Empty:
            raise AssertionError(f"no line from {process.args} in {limit:g}s") from None

    def terminate(self, process: subprocess.Popen[Any], *, limit: float = 60) -> Completed:
        """Send SIGTERM and wait for the process to exit (SIGKILL to its group after
        ``limit`` seconds, a safety net); its status and output."""
        process.send_signal(signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            self.kill(process)
            out, err = process.communicate()
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    def wait_while_progressing(
        self,
        done: Callable[[], bool],
        progress: Callable[[], object] | None,
        what: str,
        *,
        stall: float = 60,
        limit: float = 900,
    ) -> None:
        """Wait until ``done()``; fail only when ``progress()`` (a count, a tuple of
        counts) has not changed for ``stall`` seconds, or after ``limit`` seconds in all
        (without ``progress``, only ``limit`` applies).

        How long the work takes depends on the machine's load; whether it still moves
        does not. ``limit`` is a safety net far above any normal run, against work that
        moves forever.
        """
        started = moved = time.monotonic()
        seen = progress() if progress is not None else None
        while not done():
            now = time.monotonic()
            if progress is not None:
                current = progress()
                if current != seen:
                    seen, moved = current, now
                assert now - moved < stall, (
                    f"no progress for {stall:g}s waiting for {what} ({seen})"
                )
            assert now - started < limit, f"still waiting for {what} after {limit:g}s ({seen})"
            time.sleep(0.02)

    def close(self) -> None:
        """Kill every group started here, running or not (a leader that exited may
        leave children behind), and reap the leaders."""
        while self.started:
            process = self.started.pop()
            self.kill(process)
            # Closes the pipes; a grandchild that left the group could hold them open.
            with contextlib.suppress(ValueError, OSError, subprocess.TimeoutExpired):
                process.communicate(timeout=10)


def _group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes in group ``pgid``, read from ``/proc``; empty
    where there is no ``/proc``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def _wait_until_group_gone(pgid: int, *, limit: float = 30) -> None:
    """SIGKILL is delivered asynchronously: a grandchild may still be running for a
    moment after ``killpg`` returns. Wait until none is (``limit`` is a safety net)."""
    deadline = time.monotonic() + limit
    while _group_members(pgid) and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        time.sleep(0.01)


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


@pytest.fixture
def processes() -> Iterator[Processes]:
    """Start subprocesses with ``processes.start(args, ...)``; all are killed, with their
    children, when the test ends, pass or fail."""
    with Processes() as group:
        yield group
