"""The chaos scenarios, shared by the ``chaos`` tests and ``bench/chaos_report.py``.

Each scenario injects one family of faults into a real run (worker processes, SQLite or
PostgreSQL, a misbehaving receiver on 127.0.0.1), then `audit` compares the store's
delivery and attempt records with the receiver's own log and returns a `Result`: one
row of the report table. The tests assert on the rows; the report prints them.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from chaos_receiver import (
    EXPECTED_ERRORS,
    EXPECTED_STATUS,
    RETRY_AFTER_SECONDS,
    SUCCESSES,
    Behaviour,
    ChaosReceiver,
    Request,
)

import webhook_dispatch as wd
from webhook_dispatch.paging import every
from webhook_dispatch.stores.sqlite import SQLiteStore
from webhook_dispatch.testing import FakeClock

HERE = Path(__file__).resolve().parent
WORKER_SCRIPT = HERE / "chaos_worker.py"
POSTGRES_ENV = "WEBHOOK_DISPATCH_TEST_POSTGRES"

# A short schedule: four attempts, 0.2 s apart; timeouts of one second.
DELAYS = (0.0, 0.2, 0.2, 0.2)
TIMEOUT = 1.0
SUCCESS_WEIGHTS = {
    Behaviour.OK: 6,
    Behaviour.SLOW_HEADERS: 1,
    Behaviour.SLOW_BODY: 1,
    Behaviour.HUGE_BODY: 1,
}
FAILURE_WEIGHTS = {
    Behaviour.ERROR_500: 3,
    Behaviour.RETRY_AFTER_503: 1.5,
    Behaviour.TOO_MANY_429: 1.5,
    Behaviour.RESET: 1.5,
    Behaviour.CLOSE: 1.5,
    Behaviour.GARBAGE: 1.5,
    Behaviour.HANG: 0.5,
}
SUCCEEDED, EXHAUSTED = wd.DeliveryStatus.SUCCEEDED, wd.DeliveryStatus.EXHAUSTED


@dataclasses.dataclass
class Result:
    """One row of the report, with the figures behind it."""

    fault: str
    messages: int = 0
    delivered: int = 0
    exhausted: int = 0
    """Deliveries exhausted where the script made every attempt fail."""
    lost: int = 0
    """Published messages (publish returned) that did not end as scripted."""
    wrong_records: int = 0
    """Attempt records missing, extra or disagreeing with the receiver's log."""
    duplicate_sends: int = 0
    """Requests the receiver got that no attempt record stands for."""
    explained: int = 0
    """Of those, how many were in flight in a worker killed with SIGKILL."""
    raised_but_stored: int = 0
    """Publishes that raised, yet their message is in the store."""
    attempts: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.wrong_records == 0
            and self.raised_but_stored == 0
            and self.duplicate_sends == self.explained
        )


# -- scripts ------------------------------------------------------------------------------
def plan_for(seed: int, n: int, attempts: int, fail_share: float = 0.15) -> list[Behaviour]:
    """Message ``n``'s script: some failures then a success, or ``attempts`` failures."""
    rng = random.Random(f"{seed}:{n}")
    failures = list(FAILURE_WEIGHTS), list(FAILURE_WEIGHTS.values())
    if rng.random() < fail_share:
        return rng.choices(*failures, k=attempts)
    before = rng.choices(range(attempts), weights=[8, 4, 2, 1][:attempts] or None)[0]
    plan = rng.choices(*failures, k=before)
    plan += rng.choices(list(SUCCESS_WEIGHTS), list(SUCCESS_WEIGHTS.values()))
    return plan


def scripted_end(plan: Sequence[Behaviour]) -> wd.DeliveryStatus:
    return SUCCEEDED if plan[-1] in SUCCESSES else EXHAUSTED


def behaviour_at(plan: Sequence[Behaviour], index: int) -> Behaviour:
    """The plan's answer to request ``index``; past its end, the last verdict repeats."""
    if index < len(plan):
        return plan[index]
    return Behaviour.OK if plan[-1] in SUCCESSES else Behaviour.ERROR_500


def message_number(body: bytes) -> int:
    return int(json.loads(body)["data"]["n"])


class Scripts:
    """Per path, message ``n`` -> plan; what the `ChaosReceiver` asks to decide."""

    def __init__(self) -> None:
        self.by_path: dict[str, Callable[[int], list[Behaviour]]] = {}
        self._cache: dict[tuple[str, int], list[Behaviour]] = {}
        self._lock = threading.Lock()

    def plan(self, path: str, n: int) -> list[Behaviour]:
        key = (path, n)
        with self._lock:
            found = self._cache.get(key)
        if found is None:
            found = self.by_path[path](n)
            with self._lock:
                self._cache[key] = found
        return found

    def decide(self, path: str, webhook_id: str, body: bytes, index: int) -> Behaviour:
        return behaviour_at(self.plan(path, message_number(body)), index)


# -- processes -----------------------------------------------------------------------------
# How long a run takes depends on the machine's load; whether it still moves does not. A
# wait fails when its progress (requests received, publishes made) stood still for STALL
# seconds; LIMIT is only a safety net against work that moves forever.
STALL = 120.0
LIMIT = 3600.0

_started: list[subprocess.Popen[bytes]] = []


def start_process(args: Sequence[str], **options: Any) -> subprocess.Popen[bytes]:
    """A subprocess in its own process group, killed with it by `kill_leftover_workers`."""
    process = subprocess.Popen(args, start_new_session=True, **options)
    _started.append(process)
    return process


def start_worker(**options: Any) -> subprocess.Popen[bytes]:
    options.setdefault("delays", DELAYS)
    options.setdefault("per_subscription", options.get("concurrency", 64))
    return start_process(
        [sys.executable, str(WORKER_SCRIPT), json.dumps(options, default=str)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=HERE,
    )


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process's group (a leader that exited may leave children) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def kill_leftover_workers() -> None:
    """Kill every process group this module started (those of a failed scenario still
    run), and reap the leaders."""
    while _started:
        process = _started.pop()
        kill(process)
        with contextlib.suppress(ValueError, OSError, subprocess.TimeoutExpired):
            process.communicate(timeout=10)  # closes the pipes


def finish(
    process: subprocess.Popen[bytes],
    progress: Callable[[], object],
    *,
    sample: Callable[[], None] | None = None,
) -> str:
    """Wait for the worker to exit by itself while ``progress()`` keeps changing, reading
    its output meanwhile (a full pipe would stall it) and calling ``sample()`` every
    tenth of a second; assert it exited 0, and return its output."""
    outputs: list[bytes] = []

    def exited() -> bool:
        if sample is not None:
            sample()
        try:
            output, _ = process.communicate(timeout=0.1)
        except subprocess.TimeoutExpired:
            return False  # what it wrote so far is kept for the next call
        outputs.append(output)
        return True

    try:
        wait_for(exited, "the worker to finish", progress=progress, interval=0)
    except AssertionError as exc:
        kill(process)
        output, _ = process.communicate()
        raise AssertionError(f"{exc}:\n{output.decode(errors='replace')[-3000:]}") from None
    text = outputs[0].decode(errors="replace")
    assert process.returncode == 0, f"worker exited {process.returncode}:\n{text[-3000:]}"
    return text


def wait_for(
    condition: Callable[[], bool],
    what: str,
    *,
    progress: Callable[[], object] | None = None,
    stall: float = STALL,
    limit: float = LIMIT,
    interval: float = 0.01,
) -> None:
    """Wait until ``condition()``; fail when ``progress()`` has not changed for ``stall``
    seconds, or after ``limit`` seconds in all (without ``progress``, only ``limit``)."""
    started = moved = time.monotonic()
    seen = progress() if progress is not None else None
    while not condition():
        now = time.monotonic()
        if progress is not None:
            current = progress()
            if current != seen:
                seen, moved = current, now
            if now - moved > stall:
                raise AssertionError(f"no progress for {stall:g}s waiting for {what} ({seen})")
        if now - started > limit:
            raise AssertionError(f"still waiting for {what} after {limit:g}s ({seen})")
        time.sleep(interval)


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


# -- the audit -----------------------------------------------------------------------------
def _matches(request: Request, attempt: wd.Attempt) -> bool:
    if request.timestamp != attempt.webhook_timestamp:
        return False
    if request.behaviour in EXPECTED_STATUS:
        return attempt.status_code == EXPECTED_STATUS[request.behaviour]
    return attempt.status_code is None and attempt.error_kind in EXPECTED_ERRORS[request.behaviour]


def audit(
    result: Result,
    store: str | wd.Store,
    log: Sequence[Request],
    *,
    expected: dict[tuple[str, str], wd.DeliveryStatus],
    paths: dict[str, str],
    in_flight: collections.Counter[str] | None = None,
    answered_at: dict[tuple[str, str, int], float] | None = None,
    raised: Sequence[str] = (),
) -> Result:
    """Compare the store with the receiver's log.

    ``expected`` maps (path, message id) of every published delivery to its scripted
    end; ``paths`` maps subscription ids to their receiver paths; ``in_flight`` counts,
    per delivery id, the SIGKILLs that caught it leased; ``raised`` are message ids whose
    publish raised (they must not be stored).
    """
    in_flight = in_flight or collections.Counter()
    requests: dict[tuple[str, str], list[Request]] = collections.defaultdict(list)
    for request in log:
        requests[(request.path, request.webhook_id)].append(request)
    problems: list[str] = []
    with wd.Dispatcher(store, allow_private_networks=True, retention=None) as dispatcher:
        deliveries = list(every(dispatcher.store.list_deliveries))
        attempts: dict[str, list[wd.Attempt]] = collections.defaultdict(list)
        for attempt in dispatcher.store.list_attempts():
            attempts[attempt.delivery_id].append(attempt)
        stored_messages = {d.message_id for d in deliveries}
    seen: set[tuple[str, str]] = set()
    retry_after_early = 0
    for delivery in deliveries:
        key = (paths[delivery.subscription_id], delivery.message_id)
        seen.add(key)
        received = requests.get(key, [])
        recorded = sorted(attempts[delivery.id], key=lambda a: a.number)
        result.attempts += len(recorded)
        wrong = 0
        if [a.number for a in recorded] != list(range(1, len(recorded) + 1)):
            wrong += 1
            problems.append(f"{key}: attempt numbers {[a.number for a in recorded]}")
        if delivery.attempt_count != len(recorded):
            wrong += 1
            problems.append(f"{key}: attempt_count {delivery.attempt_count}, {len(recorded)} kept")
        position, unrecorded = 0, 0
        for attempt in recorded:
            while position < len(received) and not _matches(received[position], attempt):
                position += 1
                unrecorded += 1
            if position == len(received):
                wrong += 1
                problems.append(
                    f"{key}: attempt {attempt.number} ({attempt.status_code or attempt.error_kind}"
                    f" at {attempt.webhook_timestamp}) not in the receiver's log "
                    f"{[(r.behaviour.value, r.timestamp) for r in received]}"
                )
                break
            position += 1
        unrecorded += len(received) - position
        if any(r.verified is False for r in received):
            wrong += 1
            problems.append(f"{key}: a request failed signature verification")
        if answered_at is not None:
            for earlier, later in itertools.pairwise(received):
                if earlier.behaviour is not Behaviour.RETRY_AFTER_503:
                    continue
                answered = answered_at.get((earlier.path, earlier.webhook_id, earlier.index))
                if answered is not None and later.arrived < answered + RETRY_AFTER_SECONDS - 0.05:
                    retry_after_early += 1
                    problems.append(
                        f"{key}: retried {later.arrived - answered:.3f}s after Retry-After: 1"
                    )
        result.wrong_records += wrong
        result.duplicate_sends += unrecorded
        result.explained += min(unrecorded, in_flight[delivery.id])
        scripted = expected.get(key)
        if delivery.status is SUCCEEDED:
            result.delivered += 1
        if delivery.status is EXHAUSTED and scripted is EXHAUSTED:
            result.exhausted += 1
        if delivery.status is not scripted:
            result.lost += 1
            problems.append(f"{key}: ended {delivery.status.value}, scripted {scripted}")
    missing = set(expected) - seen
    result.lost += len(missing)
    problems.extend(f"{key}: published, but no delivery stored" for key in sorted(missing)[:5])
    stored_but_raised = [m for m in raised if m in stored_messages]
    result.raised_but_stored += len(stored_but_raised)
    problems.extend(f"{m}: publish raised, yet it is stored" for m in stored_but_raised[:5])
    strays = {key for key in requests if key not in seen}
    if strays:
        result.wrong_records += len(strays)
        problems.append(f"{len(strays)} (path, webhook-id) pairs received with no delivery")
    result.figures["requests received"] = len(log)
    if retry_after_early:
        result.figures["retried before Retry-After"] = retry_after_early
        result.wrong_records += retry_after_early
    result.notes.extend(problems[:20])
    return result


# -- scenario plumbing -----------------------------------------------------------------------
@dataclasses.dataclass
class Setup:
    store: str
    receiver: ChaosReceiver
    scripts: Scripts
    paths: dict[str, str] = dataclasses.field(default_factory=dict)
    expected: dict[tuple[str, str], wd.DeliveryStatus] = dataclasses.field(default_factory=dict)
    event_of_path: dict[str, str] = dataclasses.field(default_factory=dict)

    def subscribe(
        self, path: str, plan: Callable[[int], list[Behaviour]], event_type: str = "chaos.*"
    ) -> None:
        self.scripts.by_path[path] = plan
        secret = wd.generate_secret()
        self.receiver.add_secret(path, secret)
        with wd.Dispatcher(self.store, allow_private_networks=True) as dispatcher:
            subscription = dispatcher.subscribe(
                self.receiver.url(path), event_types=[event_type], secret=secret, timeout=TIMEOUT
            )
        self.paths[subscription.id] = path
        self.event_of_path[path] = event_type

    def expect(self, messages: Sequence[wd.Message], numbers: Sequence[int]) -> None:
        for message, n in zip(messages, numbers, strict=True):
            for path, pattern in self.event_of_path.items():
                if _matches_pattern(pattern, message.event_type):
                    self.expected[(path, message.id)] = scripted_end(self.scripts.plan(path, n))

    def publish(
        self, dispatcher: wd.Dispatcher, event_type: str, numbers: Sequence[int]
    ) -> list[wd.Message]:
        messages = []
        for start in range(0, len(numbers), 1000):
            batch = numbers[start : start + 1000]
            messages += dispatcher.publish_many((event_type, {"n": n}) for n in batch)
        self.expect(messages, numbers)
        return messages


def _matches_pattern(pattern: str, event_type: str) -> bool:
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1]) and "." not in event_type[len(pattern) - 1 :]
    return pattern == event_type


@contextlib.contextmanager
def chaos_setup(store: str) -> Iterator[Setup]:
    scripts = Scripts()
    with ChaosReceiver(scripts.decide) as receiver:
        yield Setup(store, receiver, scripts)


def _seeded_plans(seed: int, attempts: int = len(DELAYS)) -> Callable[[int], list[Behaviour]]:
    return lambda n: plan_for(seed, n, attempts)


def _tally(log: Sequence[Request]) -> dict[str, int]:
    return dict(collections.Counter(r.behaviour.value for r in log).most_common())


# -- 1. receivers ------------------------------------------------------------------------------
def receivers(workdir: Path, *, messages: int = 5000, seed: int = 1) -> Result:
    """Every misbehaviour the chaos receiver knows, 5,000 messages, one worker process."""
    result = Result("receiver misbehaving (11 behaviours)")
    store = f"sqlite:///{workdir / 'receivers.db'}"
    with chaos_setup(store) as setup:
        setup.subscribe("/chaos", _seeded_plans(seed))
        with wd.Dispatcher(store, allow_private_networks=True) as dispatcher:
            setup.publish(dispatcher, "chaos.event", list(range(messages)))
        started = time.monotonic()
        finish(start_worker(store=store), progress=lambda: len(setup.receiver))
        result.figures["seconds"] = round(time.monotonic() - started, 1)
        log = setup.receiver.snapshot()
        result.messages = messages
        audit(
            result,
            store,
            log,
            expected=setup.expected,
            paths=setup.paths,
            answered_at=setup.receiver.answered_at,
        )
        result.figures["answers"] = _tally(log)
    return result


# -- 2. workers killed -------------------------------------------------------------------------
def worker_kills(workdir: Path, *, messages: int = 3000, kills: int = 4, seed: int = 2) -> Result:
    """SIGKILL the worker at seeded points while it delivers, restart it each time."""
    result = Result(f"worker SIGKILLed x{kills}, restarted")
    path = workdir / "kills.db"
    store = f"sqlite:///{path}"
    rng = random.Random(seed)
    # Each victim is killed once the receiver has seen this many requests from it, plus
    # a seeded pause of up to 50 ms, so kills land at any moment of an attempt.
    points = [rng.randrange(messages // 20, messages // 6) for _ in range(kills)]
    in_flight: collections.Counter[str] = collections.Counter()
    with chaos_setup(store) as setup:
        setup.subscribe("/kills", _seeded_plans(seed))
        with wd.Dispatcher(store, allow_private_networks=True) as dispatcher:
            setup.publish(dispatcher, "chaos.event", list(range(messages)))
        held_at_kill = []
        for point in points:
            victim = start_worker(store=store, lease=3.0)
            goal = len(setup.receiver) + point
            wait_for(
                lambda goal=goal: len(setup.receiver) >= goal,  # type: ignore[misc]
                f"{point} more requests",
                progress=lambda: len(setup.receiver),
            )
            time.sleep(rng.random() * 0.05)
            assert victim.poll() is None, "the worker finished before it could be killed"
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(timeout=60)
            with contextlib.closing(sqlite3.connect(path)) as db:
                held = [
                    row[0]
                    for row in db.execute(
                        "SELECT id FROM deliveries WHERE status = 'delivering' "
                        "AND lease_owner LIKE ?",
                        (f"%:{victim.pid}:%",),
                    )
                ]
            in_flight.update(held)
            held_at_kill.append(len(held))
        finish(start_worker(store=store, lease=3.0), progress=lambda: len(setup.receiver))
        result.messages = messages
        audit(
            result,
            store,
            setup.receiver.snapshot(),
            expected=setup.expected,
            paths=setup.paths,
            in_flight=in_flight,
            answered_at=setup.receiver.answered_at,
        )
        result.figures["kills after requests"] = points
        result.figures["leased by the victim at each kill"] = held_at_kill
    return result


# -- 3. the store ------------------------------------------------------------------------------
class Publisher(threading.Thread):
    """Publishes one message at a time until stopped, noting which returned and which raised."""

    def __init__(
        self, setup: Setup, store: str | wd.Store, first: int, pause: float = 0.005
    ) -> None:
        super().__init__(daemon=True)
        self.setup, self.store, self.next_n, self.pause = setup, store, first, pause
        self.returned: list[tuple[wd.Message, int]] = []
        self.raised: list[str] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self.stopping = threading.Event()

    def run(self) -> None:
        with wd.Dispatcher(self.store, allow_private_networks=True, retention=None) as d:
            core = d._core
            while not self.stopping.is_set():
                n, self.next_n = self.next_n, self.next_n + 1
                # Build first, so the id of a message whose publish raises is known.
                message = core.new_message(
                    "chaos.event", {"n": n}, idempotency_key=None, content_type=None
                )
                try:
                    core.publish(message)
                except wd.StoreError as exc:
                    self.raised.append(message.id)
                    self.errors[type(exc).__name__] += 1
                else:
                    self.returned.append((message, n))
                time.sleep(self.pause)

    def made(self) -> int:
        """How many publishes returned or raised so far: its progress."""
        return len(self.returned) + len(self.raised)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=60)
        self.setup.expect([m for m, _ in self.returned], [n for _, n in self.returned])


def sqlite_locked(
    workdir: Path,
    *,
    messages: int = 1500,
    lock_seconds: float = 3.0,
    busy_timeout: float = 1.0,
    seed: int = 3,
) -> Result:
    """Another process holds the SQLite write lock for seconds while the worker delivers
    and a publisher keeps publishing."""
    result = Result(f"SQLite write-locked {lock_seconds:g}s by another process")
    path = workdir / "locked.db"
    store = f"sqlite:///{path}"
    done = workdir / "locked.done"
    with chaos_setup(store) as setup:
        setup.subscribe("/locked", _seeded_plans(seed))
        with wd.Dispatcher(store, allow_private_networks=True) as dispatcher:
            setup.publish(dispatcher, "chaos.event", list(range(messages)))
        worker = start_worker(store=store, busy_timeout=busy_timeout, done_file=done)
        publisher_store = SQLiteStore(path, busy_timeout=busy_timeout)
        publisher = Publisher(setup, publisher_store, first=messages, pause=0.01)
        publisher.start()
        try:
            wait_for(
                lambda: len(setup.receiver) >= messages // 5,
                "deliveries to start",
                progress=lambda: len(setup.receiver),
            )
            locker = start_process(
                [
                    sys.executable,
                    "-c",
                    "import sqlite3, sys, time\n"
                    "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                    "db.execute('BEGIN EXCLUSIVE')\n"
                    "print('locked', flush=True)\n"
                    "time.sleep(float(sys.argv[2]))\n"
                    "db.execute('COMMIT')\n",
                    str(path),
                    str(lock_seconds),
                ],
                stdout=subprocess.PIPE,
            )
            assert locker.stdout is not None
            assert locker.stdout.readline().strip() == b"locked"
            received_at_lock = len(setup.receiver)
            locker.wait(timeout=lock_seconds + LIMIT)
            received_during_lock = len(setup.receiver) - received_at_lock
            time.sleep(0.5)
        finally:
            publisher.stop()
            done.touch()
        output = finish(worker, progress=lambda: len(setup.receiver))
        publisher_store.close()
        result.messages = messages + len(publisher.returned)
        audit(
            result,
            store,
            setup.receiver.snapshot(),
            expected=setup.expected,
            paths=setup.paths,
            raised=publisher.raised,
        )
        result.figures.update(
            {
                "publishes that raised": dict(publisher.errors),
                "publishes that returned during the run": len(publisher.returned),
                "requests while locked": received_during_lock,
                "worker backed off": output.count("failed ("),
            }
        )
        if not publisher.raised:
            result.notes.append("no publish raised: the lock did not outlast busy_timeout")
        if "failed (" not in output:
            result.notes.append("the worker never met the lock")
    return result


class _InjectedFullStore(SQLiteStore):
    """A SQLite store whose writes fail as on a full disk while ``full`` is set."""

    full = False

    def _check(self) -> None:
        if self.full:
            raise wd.StoreUnavailable(f"{self.path}: database or disk is full (injected)")

    def publish_many(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return super().publish_many(*args, **kwargs)

    def claim_due(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return super().claim_due(*args, **kwargs)

    def record(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return super().record(*args, **kwargs)


def _mount_small_filesystem(mountpoint: Path, size_mib: int) -> str | None:
    """Mount a ``size_mib`` file system at ``mountpoint``: a tmpfs, else an ext4 loop
    image; return which, or None when neither can be mounted here."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or os.geteuid() != 0:
        return None
    tmpfs = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
    )
    if tmpfs.returncode == 0:
        return "tmpfs"
    image = mountpoint.with_suffix(".img")
    if shutil.which("mkfs.ext4"):
        with open(image, "wb") as handle:
            handle.truncate(size_mib * 1024 * 1024)
        made = subprocess.run(["mkfs.ext4", "-q", str(image)], capture_output=True)
        if made.returncode == 0:
            loop = subprocess.run(
                ["mount", "-o", "loop", str(image), str(mountpoint)], capture_output=True
            )
            if loop.returncode == 0:
                return "ext4 loop image"
    image.unlink(missing_ok=True)
    return None


def _fill(ballast: Path, *, leave: int) -> None:
    """Write ``ballast`` until the file system is full, then give back ``leave`` bytes."""
    chunk = b"\0" * 65536
    with open(ballast, "wb", buffering=0) as handle:
        with contextlib.suppress(OSError):
            while True:
                handle.write(chunk)
        size = handle.seek(0, os.SEEK_END)
        handle.truncate(max(0, size - leave))


def _unmount(mountpoint: Path) -> None:
    if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
    mountpoint.with_suffix(".img").unlink(missing_ok=True)


def disk_full(
    workdir: Path, *, messages: int = 1000, seed: int = 4, method: str = "auto"
) -> Result:
    """The SQLite file's file system fills up while the worker delivers and a publisher
    publishes, then space comes back."""
    mountpoint = workdir / "small-fs"
    used = _mount_small_filesystem(mountpoint, 8) if method == "auto" else None
    if used is None:
        return _disk_full_injected(workdir, messages=messages, seed=seed)
    result = Result(f"disk full under SQLite ({used}, 8 MiB)")
    try:
        path = mountpoint / "full.db"
        store = f"sqlite:///{path}"
        done = workdir / "full.done"
        with chaos_setup(store) as setup:
            setup.subscribe("/full", _seeded_plans(seed))
            with wd.Dispatcher(store, allow_private_networks=True) as dispatcher:
                setup.publish(dispatcher, "chaos.event", list(range(messages)))
            worker = start_worker(store=store, done_file=done, busy_timeout=2.0)
            publisher = Publisher(setup, store, first=messages, pause=0.002)
            try:
                wait_for(
                    lambda: len(setup.receiver) >= messages // 5,
                    "deliveries",
                    progress=lambda: len(setup.receiver),
                )
                ballast = mountpoint / "ballast"
                _fill(ballast, leave=96 * 1024)
                publisher.start()
                wait_for(
                    lambda: len(publisher.raised) >= 20,
                    "publishes to fail: disk full",
                    progress=publisher.made,
                )
                received_when_full = len(setup.receiver)
                time.sleep(1.0)  # the worker meets the full disk too
                received_while_full = len(setup.receiver) - received_when_full
                ballast.unlink()
                freed_at = len(publisher.returned)
                wait_for(
                    lambda: len(publisher.returned) >= freed_at + 50,
                    "publishes",
                    progress=publisher.made,
                )
            finally:
                if publisher.is_alive():
                    publisher.stop()
                done.touch()
            output = finish(worker, progress=lambda: len(setup.receiver))
            result.messages = messages + len(publisher.returned)
            audit(
                result,
                store,
                setup.receiver.snapshot(),
                expected=setup.expected,
                paths=setup.paths,
                raised=publisher.raised,
            )
            result.figures.update(
                {
                    "publishes that raised": dict(publisher.errors),
                    "publishes that returned": len(publisher.returned),
                    "requests in the second the disk was full": received_while_full,
                    "worker backed off": output.count("failed ("),
                }
            )
    finally:
        _unmount(mountpoint)
    return result


def _disk_full_injected(workdir: Path, *, messages: int, seed: int) -> Result:
    """No mountable file system here: writes fail as on a full disk at the store boundary."""
    result = Result("disk full under SQLite (injected at the store boundary)")
    path = workdir / "injected.db"
    store = _InjectedFullStore(path)
    try:
        with chaos_setup(f"sqlite:///{path}") as setup:
            setup.subscribe("/full", _seeded_plans(seed))
            with wd.Dispatcher(
                store,
                allow_private_networks=True,
                retry=wd.RetryPolicy.fixed(DELAYS),
                poll_interval=0.2,
            ) as dispatcher:
                setup.publish(dispatcher, "chaos.event", list(range(messages)))
                publisher = Publisher(setup, store, first=messages, pause=0.005)
                dispatcher.start()
                wait_for(
                    lambda: len(setup.receiver) >= messages // 5,
                    "deliveries",
                    progress=lambda: len(setup.receiver),
                )
                publisher.start()
                time.sleep(0.2)
                store.full = True
                wait_for(
                    lambda: len(publisher.raised) >= 20,
                    "publishes to fail",
                    progress=publisher.made,
                )
                time.sleep(1.0)
                store.full = False
                time.sleep(0.5)
                publisher.stop()
                wait_for(
                    lambda: (
                        not store.list_deliveries(status=wd.DeliveryStatus.PENDING, limit=1)
                        and not store.list_deliveries(status=wd.DeliveryStatus.DELIVERING, limit=1)
                    ),
                    "the worker to finish",
                    progress=lambda: len(setup.receiver),
                )
                dispatcher.stop()
            result.messages = messages + len(publisher.returned)
            audit(
                result,
                store,
                setup.receiver.snapshot(),
                expected=setup.expected,
                paths=setup.paths,
                raised=publisher.raised,
            )
            result.figures["publishes that raised"] = dict(publisher.errors)
    finally:
        store.close()
    return result


def postgres_unavailable_reason() -> str | None:
    dsn = os.environ.get(POSTGRES_ENV)
    if not dsn:
        return f"set {POSTGRES_ENV} to run the PostgreSQL restart"
    if os.geteuid() != 0:
        return "restarting PostgreSQL needs root"
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        return "restarting PostgreSQL needs pg_ctlcluster (Debian's postgresql-common)"
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    host = psycopg.conninfo.conninfo_to_dict(dsn).get("host", "")
    if host not in ("127.0.0.1", "localhost", "::1", ""):
        return f"the test server ({host}) is not on this machine"
    if _local_cluster(dsn) is None:
        return "no pg_ctlcluster cluster listens on the test server's port"
    return None


def _local_cluster(dsn: str) -> tuple[str, str] | None:
    """The (version, name) of the pg_ctlcluster cluster listening on the DSN's port."""
    import psycopg

    port = str(psycopg.conninfo.conninfo_to_dict(dsn).get("port") or 5432)
    listing = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, timeout=120
    )
    for line in listing.stdout.splitlines():
        version, name, cluster_port, *_ = [*line.split(), "", "", ""]
        if cluster_port == port:
            return version, name
    return None


def _restart_postgres(dsn: str) -> None:
    import psycopg

    cluster = _local_cluster(dsn)
    assert cluster is not None
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "restart"],
        check=True,
        capture_output=True,
        timeout=300,  # a safety net: the restart waits for the server to stop and start
    )

    def up() -> bool:
        try:
            with psycopg.connect(dsn, connect_timeout=2) as connection:
                connection.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    wait_for(up, "PostgreSQL to come back", limit=300)


def postgres_restart(workdir: Path, *, messages: int = 2000, seed: int = 5) -> Result:
    """PostgreSQL restarted while two workers deliver and a publisher publishes."""
    import psycopg

    result = Result("PostgreSQL restarted mid-run (2 workers)")
    dsn = os.environ[POSTGRES_ENV]
    schema = f"wd_chaos_{uuid.uuid4().hex[:10]}"
    store = f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"
    done = workdir / "pg.done"
    try:
        with chaos_setup(store) as setup:
            setup.subscribe("/pg", _seeded_plans(seed))
            with wd.Dispatcher(store, allow_private_networks=True) as dispatcher:
                setup.publish(dispatcher, "chaos.event", list(range(messages)))
            workers = [start_worker(store=store, done_file=done) for _ in range(2)]
            publisher = Publisher(setup, store, first=messages, pause=0.005)
            publisher.start()
            try:
                wait_for(
                    lambda: len(setup.receiver) >= messages // 5,
                    "deliveries",
                    progress=lambda: len(setup.receiver),
                )
                received_at_restart = len(setup.receiver)
                _restart_postgres(dsn)
                time.sleep(1.0)
            finally:
                publisher.stop()
                done.touch()
            outputs = [finish(worker, progress=lambda: len(setup.receiver)) for worker in workers]
            result.messages = messages + len(publisher.returned)
            audit(
                result,
                store,
                setup.receiver.snapshot(),
                expected=setup.expected,
                paths=setup.paths,
                raised=publisher.raised,
            )
            result.figures.update(
                {
                    "requests before the restart": received_at_restart,
                    "publishes that raised": dict(publisher.errors),
                    "workers saw store errors": sum("fail" in o or "error" in o for o in outputs),
                }
            )
    finally:
        with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, autocommit=True) as db:
            db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return result


# -- 4. the clock ------------------------------------------------------------------------------
class ScriptedTransport(httpx.AsyncBaseTransport):
    """An in-process receiver for the clock scenario: answers from plans, after a short
    random pause (so attempts are in flight when the clock jumps), and logs like
    `ChaosReceiver`."""

    def __init__(self, scripts: Scripts, seed: int) -> None:
        self.scripts = scripts
        self.log: list[Request] = []
        self._seen: collections.Counter[tuple[str, str]] = collections.Counter()
        self._random = random.Random(seed)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        import asyncio

        body = await request.aread()
        path, webhook_id = request.url.path, request.headers["webhook-id"]
        index = self._seen[(path, webhook_id)]
        self._seen[(path, webhook_id)] += 1
        behaviour = self.scripts.decide(path, webhook_id, body, index)
        self.log.append(
            Request(
                path,
                webhook_id,
                index,
                behaviour,
                int(request.headers["webhook-timestamp"]),
                None,
                time.monotonic(),
            )
        )
        await asyncio.sleep(self._random.random() * 0.02)
        return httpx.Response(EXPECTED_STATUS[behaviour])


def clock_jumps(workdir: Path, *, messages: int = 600, seed: int = 6) -> Result:
    """The wall clock (a FakeClock) jumps hours back and forth at random while a worker
    runs; retries are scheduled minutes and hours apart."""
    result = Result("wall clock jumping +-2 h while delivering")
    store = f"sqlite:///{workdir / 'clock.db'}"
    clock = FakeClock()
    scripts = Scripts()
    failures = [Behaviour.ERROR_500, Behaviour.TOO_MANY_429, Behaviour.RETRY_AFTER_503]

    def plan(n: int) -> list[Behaviour]:
        rng = random.Random(f"{seed}:{n}")
        if rng.random() < 0.15:
            return rng.choices(failures, k=4)
        return [*rng.choices(failures, k=rng.randrange(4)), Behaviour.OK]

    scripts.by_path["/clock"] = plan
    transport = ScriptedTransport(scripts, seed)
    setup = Setup(store, None, scripts)  # type: ignore[arg-type]
    jumps = 0
    rng = random.Random(seed)
    with wd.Dispatcher(
        store,
        clock=clock,
        transport=transport,
        retry=wd.RetryPolicy.fixed([0, 60, 600, 3600]),
        poll_interval=0.05,
        concurrency=32,
    ) as dispatcher:
        subscription = dispatcher.subscribe("https://receiver.example/clock")
        setup.paths[subscription.id] = "/clock"
        setup.event_of_path["/clock"] = "chaos.*"
        setup.publish(dispatcher, "chaos.event", list(range(messages)))
        dispatcher.start()
        start = clock.now()
        stop_jumping = time.monotonic() + 3.0
        while time.monotonic() < stop_jumping:
            jump = timedelta(seconds=rng.uniform(-7200, 7200))
            clock.set(max(start - timedelta(hours=6), clock.now() + jump))
            jumps += 1
            time.sleep(rng.random() * 0.02)

        # Then let time run forward until every retry has been played out.
        def settled() -> bool:
            left = dispatcher.deliveries(status="pending", limit=1) + dispatcher.deliveries(
                status="delivering", limit=1
            )
            if left:
                clock.advance(timedelta(minutes=30))
            return not left

        wait_for(
            settled, "every retry to play out", progress=lambda: len(transport.log), interval=0.02
        )
        dispatcher.stop()
    result.messages = messages
    audit(result, store, transport.log, expected=setup.expected, paths=setup.paths)
    result.figures["clock jumps"] = jumps
    return result


# -- 5. load -----------------------------------------------------------------------------------
def _load_paths(subscriptions: int) -> tuple[list[str], dict[str, Behaviour]]:
    failing_count = subscriptions // 5
    healthy = [f"/healthy/{i}" for i in range(subscriptions - failing_count)]
    kinds = [Behaviour.ERROR_500, Behaviour.HANG, Behaviour.RESET, Behaviour.RETRY_AFTER_503]
    failing = {f"/failing/{i}": kinds[i % len(kinds)] for i in range(failing_count)}
    return healthy, failing


def load(
    workdir: Path,
    *,
    messages: int = 20000,
    subscriptions: int = 100,
    concurrency: int = 64,
) -> Result:
    """100 subscriptions (a fifth of them failing: 500, never answering, resetting,
    503 with Retry-After), one event type each, messages spread evenly. The healthy
    share is first delivered alone, then again mixed with the failing share."""
    healthy, failing = _load_paths(subscriptions)
    healthy_messages = messages * len(healthy) // subscriptions
    failing_messages = messages - healthy_messages
    result = Result(f"load: {subscriptions} subscriptions, {len(failing)} failing")
    store = f"sqlite:///{workdir / 'load.db'}"
    delays = (0.0, 0.5, 0.5)
    with chaos_setup(store) as setup:
        for i, path in enumerate(healthy):
            setup.subscribe(path, lambda n: [Behaviour.OK], event_type=f"load.h{i}")
        for i, (path, kind) in enumerate(failing.items()):
            setup.subscribe(path, lambda n, k=kind: [k] * 3, event_type=f"load.f{i}")  # type: ignore[misc]

        def publish(paths: Sequence[str], count: int, first: int) -> None:
            with wd.Dispatcher(store, allow_private_networks=True) as dispatcher:
                numbers = list(range(first, first + count))
                by_event: dict[str, list[int]] = collections.defaultdict(list)
                for i, n in enumerate(numbers):
                    by_event[setup.event_of_path[paths[i % len(paths)]]].append(n)
                for event_type, chunk in by_event.items():
                    setup.publish(dispatcher, event_type, chunk)

        def run_phase(name: str) -> tuple[float, dict[str, float]]:
            first = len(setup.receiver)
            # No deadline: never-answering endpoints drain two attempts at a time (the
            # failing cap), one timeout each, about 300 s at full size; the wait below
            # only needs requests to keep arriving.
            worker = start_worker(
                store=store, delays=delays, concurrency=concurrency, per_subscription="auto"
            )
            samples: list[int] = []
            started = time.monotonic()

            def sample() -> None:
                rss = rss_kib(worker.pid)
                if rss is not None:
                    samples.append(rss)

            finish(worker, progress=lambda: len(setup.receiver), sample=sample)
            elapsed = time.monotonic() - started
            log = setup.receiver.snapshot()[first:]
            healthy_log = [r for r in log if r.path.startswith("/healthy/")]
            span = healthy_log[-1].arrived - log[0].arrived if healthy_log else 0.0
            figures = {
                f"{name}: worker seconds": round(elapsed, 1),
                f"{name}: healthy deliveries/s": round(len(healthy_log) / span, 1) if span else 0.0,
                f"{name}: worker RSS peak MiB": round(max(samples) / 1024, 1) if samples else 0.0,
                f"{name}: worker RSS at 1/4 of the run MiB": (
                    round(samples[len(samples) // 4] / 1024, 1) if samples else 0.0
                ),
            }
            rate = len(healthy_log) / span if span else 0.0
            return rate, figures

        publish(healthy, healthy_messages, 0)
        alone, figures_alone = run_phase("healthy only")
        publish(healthy, healthy_messages, 10**7)
        publish(list(failing), failing_messages, 2 * 10**7)
        mixed, figures_mixed = run_phase("mixed")
        result.messages = 2 * healthy_messages + failing_messages
        audit(result, store, setup.receiver.snapshot(), expected=setup.expected, paths=setup.paths)
        result.figures.update(figures_alone)
        result.figures.update(figures_mixed)
        result.figures["healthy throughput mixed / alone"] = round(mixed / alone, 2) if alone else 0
    return result


# -- the table -------------------------------------------------------------------------------
COLUMNS = (
    "fault",
    "messages",
    "delivered",
    "exhausted as scripted",
    "lost",
    "wrong attempt records",
    "duplicate sends",
    "explained by in-flight kill",
)


def table(results: Sequence[Result]) -> str:
    rows = [
        (
            r.fault,
            str(r.messages),
            str(r.delivered),
            str(r.exhausted),
            str(r.lost),
            str(r.wrong_records + r.raised_but_stored),
            str(r.duplicate_sends),
            f"{r.explained} of {r.duplicate_sends}" if r.duplicate_sends else "-",
        )
        for r in results
    ]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    lines = [line(COLUMNS), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [line(row) for row in rows]
    return "\n".join(lines)


def check(result: Result) -> None:
    """Print the row and its figures (shown by ``pytest -s`` and in failures), then fail
    on any loss, wrong record, stored-though-raised publish or unexplained duplicate."""
    print()
    print(table([result]))
    for name, value in result.figures.items():
        print(f"  {name}: {value}")
    details = "\n".join(result.notes)
    assert result.lost == 0, f"{result.lost} messages lost\n{details}"
    assert result.wrong_records == 0, f"{result.wrong_records} wrong attempt records\n{details}"
    assert result.raised_but_stored == 0, f"publishes that raised were stored\n{details}"
    assert result.duplicate_sends == result.explained, (
        f"{result.duplicate_sends - result.explained} duplicate sends not explained by a kill"
        f"\n{details}"
    )
