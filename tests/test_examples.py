"""The programs under examples/ run as docs/frameworks.md says, in subprocesses, against a
real loopback receiver that checks every signature. Every program is killed at teardown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from webhook_dispatch._receiver import LoopbackReceiver, Received

if TYPE_CHECKING:
    from conftest import Processes

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEMO_SECRET = "whsec_hjx0T3soa2HrlClN7fwgWzx8647el1lB"
# Safety nets against a hang, never budgets: the waits end as soon as the event happens.
LIMIT = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(receiver: LoopbackReceiver, path: str, count: int = 1) -> list[Received]:
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline:
        received = receiver.requests_to(path)
        if len(received) >= count:
            return received
        time.sleep(0.05)
    raise AssertionError(f"expected {count} request(s) on {path}, got {receiver.received}")


def wait_until_serving(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early: {process.communicate()[0]}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def run(
    processes: Processes, args: list[str], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    result = processes.run([sys.executable, *args], cwd=cwd, env=env, text=True, limit=LIMIT)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def start(
    processes: Processes, args: list[str], cwd: Path, env: dict[str, str]
) -> subprocess.Popen[str]:
    """A background program, its output merged into stdout."""
    return processes.start(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(processes: Processes, process: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM, then the exit status and everything it printed."""
    stopped = processes.terminate(process)
    return stopped.returncode, stopped.stdout


@pytest.fixture
def env(loopback: LoopbackReceiver) -> dict[str, str]:
    """The examples' environment: their default secret, the loopback receiver's URL."""
    loopback.route("/hooks", [200], secret=DEMO_SECRET)
    return {**os.environ, "WEBHOOK_URL": loopback.url("/hooks"), "PYTHONUNBUFFERED": "1"}


def test_the_plain_script_sends_a_verified_webhook(
    loopback: LoopbackReceiver, env: dict[str, str], processes: Processes, tmp_path: Path
) -> None:
    shutil.copy(EXAMPLES / "send.py", tmp_path)
    result = run(processes, ["send.py"], tmp_path, env)
    assert "attempt 1: 200" in result.stdout
    assert "succeeded" in result.stdout
    [request] = loopback.requests_to("/hooks")
    assert request.verified is True
    # A second run reuses the subscription and sends one more.
    run(processes, ["send.py"], tmp_path, env)
    assert len(wait_for(loopback, "/hooks", 2)) == 2


def test_the_example_receiver_verifies_what_the_script_sends(
    processes: Processes, tmp_path: Path
) -> None:
    for name in ("send.py", "receiver.py"):
        shutil.copy(EXAMPLES / name, tmp_path)
    port = free_port()
    receiver = start(processes, ["receiver.py", "--port", str(port)], tmp_path, dict(os.environ))
    first_line = processes.read_line(receiver)
    assert first_line.strip() == f"listening on http://127.0.0.1:{port}/hooks"
    env = {**os.environ, "WEBHOOK_URL": f"http://127.0.0.1:{port}/hooks"}
    result = run(processes, ["send.py"], tmp_path, env)
    assert "attempt 1: 204" in result.stdout
    _, output = stop(processes, receiver)
    assert "verified msg_" in output
    assert "order.created {'id': 'ord_1', 'total': 4200}" in output


def test_the_fastapi_app_delivers_from_its_lifespan_worker(
    loopback: LoopbackReceiver, env: dict[str, str], processes: Processes, tmp_path: Path
) -> None:
    pytest.importorskip("uvicorn")
    shutil.copy(EXAMPLES / "fastapi_app.py", tmp_path)
    port = free_port()
    server = start(
        processes, ["-m", "uvicorn", "fastapi_app:app", "--port", str(port)], tmp_path, env
    )
    base = f"http://127.0.0.1:{port}"
    wait_until_serving(f"{base}/docs", server)
    response = httpx.post(f"{base}/orders", params={"total": 4200}, timeout=10)
    assert response.status_code == 200
    [request] = wait_for(loopback, "/hooks")
    assert request.verified is True
    assert request.webhook_id == response.json()["webhook_id"]
    status, output = stop(processes, server)
    # The lifespan closed the dispatcher (uvicorn then re-raises SIGTERM on itself).
    assert "Application shutdown complete." in output
    assert status in (0, -signal.SIGTERM), output


def test_fastapi_app_and_a_worker_with_app_deliver_to_a_standardwebhooks_receiver(
    processes: Processes, tmp_path: Path
) -> None:
    """The newcomer's path: a FastAPI app publishes, ``webhook-dispatch worker --app``
    delivers with the app's own retry policy and hook, and the receiver verifies each
    signature with the ``standardwebhooks`` package."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("standardwebhooks")
    shutil.copytree(EXAMPLES / "fastapi_worker", tmp_path / "shop")
    shutil.copy(EXAMPLES / "receiver.py", tmp_path)
    folder = tmp_path / "shop"
    receiver_port, app_port = free_port(), free_port()
    base_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    base_env.pop("WEBHOOK_DISPATCH_STORE", None)
    receiver = start(
        processes,
        ["../receiver.py", "--port", str(receiver_port), "--verify-with", "standardwebhooks"],
        folder,
        base_env,
    )
    assert "listening on" in processes.read_line(receiver)
    env = {**base_env, "WEBHOOK_URL": f"http://127.0.0.1:{receiver_port}/hooks"}
    server = start(processes, ["-m", "uvicorn", "app:app", "--port", str(app_port)], folder, env)
    base = f"http://127.0.0.1:{app_port}"
    wait_until_serving(f"{base}/docs", server)
    worker = start(
        processes,
        ["-m", "webhook_dispatch", "worker", "--app", "webhooks:make_dispatcher"],
        folder,
        env,
    )
    startup = processes.read_line(worker)
    assert "store app webhooks:make_dispatcher" in startup, startup
    assert "retry 4 attempts (0s, 2s, 10s, 1m)" in startup
    response = httpx.post(f"{base}/orders", params={"total": 4200}, timeout=10)
    assert response.status_code == 200
    webhook_id = response.json()["webhook_id"]
    line = processes.read_line(receiver)
    assert line.startswith(f"verified {webhook_id} order.created"), line
    assert "'total': 4200" in line
    status, output = stop(processes, worker)
    assert status == 0, output
    # A worker without --app refuses: the app publishes with another retry policy.
    refused = processes.run(
        [sys.executable, "-m", "webhook_dispatch", "worker", "--allow-private-networks"],
        cwd=folder,
        env=env,
        text=True,
    )
    assert refused.returncode == 1 and "refusing to start" in refused.stderr
    assert "webhooks.report_given_up" in refused.stderr


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def django_env(request: pytest.FixtureRequest, env: dict[str, str]) -> dict[str, str]:
    """The Django example on SQLite, and on PostgreSQL (the outbox) when the test server
    is configured."""
    pytest.importorskip("django")
    if request.param == "sqlite":
        return env
    dsn = request.getfixturevalue("postgres_dsn")
    schema = request.getfixturevalue("postgres_schema")
    return {**env, "DATABASE_URL": dsn, "WEBHOOK_DISPATCH_SCHEMA": schema}


def _drop_django_tables(dsn: str) -> None:
    """The example's tables in the shared test database: dropped before and after."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("DROP TABLE IF EXISTS shop_order, django_migrations")


def test_the_django_project_sends_only_what_commits(
    request: pytest.FixtureRequest,
    loopback: LoopbackReceiver,
    django_env: dict[str, str],
    processes: Processes,
    tmp_path: Path,
) -> None:
    project = tmp_path / "django_shop"
    shutil.copytree(
        EXAMPLES / "django_shop", project, ignore=shutil.ignore_patterns("*.sqlite3", "*.db")
    )
    env = django_env
    if "DATABASE_URL" in env:
        request.addfinalizer(lambda: _drop_django_tables(env["DATABASE_URL"]))
        _drop_django_tables(env["DATABASE_URL"])
    run(processes, ["manage.py", "migrate", "--verbosity", "0"], project, env)
    run(
        processes,
        [
            "manage.py",
            "webhook_dispatch",
            "subscriptions",
            "add",
            env["WEBHOOK_URL"],
            "--event-type",
            "order.*",
            "--secret",
            DEMO_SECRET,
            "--allow-private-networks",
        ],
        project,
        env,
    )
    port = free_port()
    server = start(
        processes, ["manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"], project, env
    )
    worker = start(processes, ["manage.py", "webhook_dispatch_worker"], project, env)
    base = f"http://127.0.0.1:{port}"
    wait_until_serving(f"{base}/orders/", server)

    failed = httpx.post(f"{base}/orders/", data={"total": 1, "fail": "1"}, timeout=10)
    assert failed.status_code == 500
    created = httpx.post(f"{base}/orders/", data={"total": 4200}, timeout=10)
    assert created.status_code == 200, created.text

    [received] = wait_for(loopback, "/hooks")
    assert received.verified is True
    assert received.webhook_id == created.json()["webhook_id"]

    status, output = stop(processes, worker)
    assert status == 0, output
    assert "stopped; attempts in flight were recorded" in output
    stop(processes, server)
    # The store, not a pause, says the rolled-back order's event never existed: one
    # message, the committed one, and it was sent once.
    listed = run(
        processes, ["manage.py", "webhook_dispatch", "messages", "list", "--json"], project, env
    )
    assert [m["id"] for m in json.loads(listed.stdout)] == [received.webhook_id]
    assert len(loopback.requests_to("/hooks")) == 1
