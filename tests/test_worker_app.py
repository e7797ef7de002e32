"""``webhook-dispatch worker --app package.module:dispatcher``: the worker (and every
inspection command) runs the application's own dispatcher, and a worker started without
it refuses to run when the publishers are configured differently."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import webhook_dispatch as wd
from webhook_dispatch import _settings
from webhook_dispatch._receiver import LoopbackReceiver
from webhook_dispatch.cli import load_app, main

if TYPE_CHECKING:
    from conftest import Processes

APP = """
import os
from pathlib import Path

import webhook_dispatch as wd

STORE = os.environ["SHOP_STORE"]
OPTIONS = dict(
    allow_private_networks=True,
    retry=wd.RetryPolicy.fixed([0]),  # one attempt: the worker's default would retry in 5 s
)


def given_up(event):
    Path(os.environ["SHOP_HOOK_FILE"]).write_text(event.delivery.id)


dispatcher = wd.Dispatcher(STORE, on_delivery_failed=given_up, **OPTIONS)


def make_async():
    return wd.AsyncDispatcher(STORE, on_delivery_failed=given_up, **OPTIONS)


async def make_in_a_coroutine():
    return dispatcher


class Holder:
    inner = dispatcher


not_a_dispatcher = 42
in_memory = wd.Dispatcher("memory://")
"""


class App:
    """The application module, importable here and by the worker (cwd = its folder)."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.name = f"shop_{uuid.uuid4().hex[:8]}"
        self.folder = folder
        self.store = "sqlite:///" + (folder / "shop.db").as_posix()
        self.hook_file = folder / "given-up.txt"
        (folder / f"{self.name}.py").write_text(textwrap.dedent(APP))
        monkeypatch.setenv("SHOP_STORE", self.store)
        monkeypatch.setenv("SHOP_HOOK_FILE", str(self.hook_file))
        monkeypatch.syspath_prepend(str(folder))
        self.module: Any = importlib.import_module(self.name)

    def env(self, **extra: str) -> dict[str, str]:
        import os

        env = dict(os.environ)
        env.pop("WEBHOOK_DISPATCH_STORE", None)
        env.pop("WEBHOOK_DISPATCH_APP", None)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        return env

    def cli(self, processes: Processes, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return processes.run(
            [sys.executable, "-m", "webhook_dispatch", *args],
            cwd=self.folder,
            env=self.env(**env),
            text=True,
        )

    def close(self) -> None:
        self.module.dispatcher.close()
        self.module.in_memory.close()
        sys.modules.pop(self.name, None)


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    shop = App(tmp_path, monkeypatch)
    yield shop
    shop.close()


@pytest.fixture
def receiver() -> Iterator[LoopbackReceiver]:
    with LoopbackReceiver() as loopback:
        yield loopback


def publish_one(app: App, receiver: LoopbackReceiver, status: int) -> wd.Message:
    """Subscribe the receiver (answering ``status``) and publish one event, through the
    application's own dispatcher."""
    dispatcher: wd.Dispatcher = app.module.dispatcher
    secret = wd.generate_secret()
    receiver.route("/hook", [status], secret=secret)
    dispatcher.subscribe(receiver.url("/hook"), secret=secret)
    return dispatcher.publish("order.created", {"id": "ord_1"})


# -- loading ---------------------------------------------------------------------------
def test_load_app_finds_an_attribute_a_default_a_path_and_a_factory(app: App) -> None:
    assert load_app(f"{app.name}:dispatcher") is app.module.dispatcher
    assert load_app(app.name) is app.module.dispatcher  # "dispatcher" by default
    assert load_app(f"{app.name}:Holder.inner") is app.module.dispatcher
    made = load_app(f"{app.name}:make_async")
    try:
        assert isinstance(made, wd.AsyncDispatcher)
        assert made.options.retry == app.module.dispatcher.options.retry
    finally:
        import asyncio

        asyncio.run(made.aclose())


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("", "needs 'package.module:attribute'"),
        ("no_such_module_here:dispatcher", "no module named 'no_such_module_here'"),
        ("{app}:missing", "has no attribute 'missing'"),
        ("{app}:not_a_dispatcher", "is a int, not a webhook_dispatch.Dispatcher"),
        ("{app}:make_in_a_coroutine", "is an async function"),
        ("{app}:bad-name", "is not an attribute name"),
        ("bad module:dispatcher", "is not a module name"),
    ],
)
def test_load_app_says_what_it_could_not_find(app: App, spec: str, says: str) -> None:
    with pytest.raises(wd.ConfigurationError, match=".*".join(map(_escape, says.split("*")))):
        load_app(spec.format(app=app.name))


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_an_import_error_inside_the_application_is_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing dependency of the application is not reported as a missing --app."""
    name = f"broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import a_dependency_nobody_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="a_dependency_nobody_installed"):
        load_app(f"{name}:dispatcher")
    sys.modules.pop(name, None)


# -- the worker ------------------------------------------------------------------------
@pytest.mark.slow
def test_worker_runs_the_applications_retry_policy_and_hooks(
    app: App, receiver: LoopbackReceiver, processes: Processes
) -> None:
    message = publish_one(app, receiver, 500)
    worker = processes.start(
        [sys.executable, "-m", "webhook_dispatch", "worker", "--app", f"{app.name}:dispatcher"],
        cwd=app.folder,
        env=app.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first = processes.read_line(worker)
    assert f"store app {app.name}:dispatcher, SQLiteStore(" in first
    assert "retry 1 attempts (0s)" in first and "network guard off" in first
    # The application's hook runs in the worker: the one attempt failed and was final.
    processes.wait_while_progressing(
        app.hook_file.exists, lambda: len(receiver.received), "the application's hook"
    )
    [delivery] = app.module.dispatcher.deliveries(message_id=message.id)
    assert app.hook_file.read_text() == delivery.id
    assert delivery.status is wd.DeliveryStatus.EXHAUSTED
    assert len(receiver.received) == 1  # the worker's own default would try 10 times
    assert processes.terminate(worker).returncode == 0


@pytest.mark.slow
def test_an_async_factory_app_delivers_too(
    app: App, receiver: LoopbackReceiver, processes: Processes
) -> None:
    message = publish_one(app, receiver, 200)
    worker = processes.start(
        [sys.executable, "-m", "webhook_dispatch", "worker"],
        cwd=app.folder,
        env=app.env(WEBHOOK_DISPATCH_APP=f"{app.name}:make_async"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert f"app {app.name}:make_async" in processes.read_line(worker)
    dispatcher: wd.Dispatcher = app.module.dispatcher

    def delivered() -> bool:
        [delivery] = dispatcher.deliveries(message_id=message.id)
        return delivery.status is wd.DeliveryStatus.SUCCEEDED

    processes.wait_while_progressing(delivered, lambda: len(receiver.received), "delivery")
    assert [r.verified for r in receiver.received] == [True]
    assert processes.terminate(worker).returncode == 0


def test_a_worker_without_the_app_refuses_to_start_when_publishers_differ(
    app: App, receiver: LoopbackReceiver, processes: Processes
) -> None:
    message = publish_one(app, receiver, 200)
    ran = app.cli(processes, "worker", "--store", app.store, "--allow-private-networks")
    assert ran.returncode == 1
    assert "refusing to start" in ran.stderr and "--app package.module:dispatcher" in ran.stderr
    assert "  - retry: publishers use" in ran.stderr
    assert f'  - hooks: publishers use {{"on_delivery_failed": "{app.name}.given_up"}}' in (
        ran.stderr
    )
    assert "network:" not in ran.stderr  # the same guard on both sides is not listed
    assert receiver.received == []
    [delivery] = app.module.dispatcher.deliveries(message_id=message.id)
    assert delivery.status is wd.DeliveryStatus.PENDING and delivery.attempt_count == 0


def test_a_worker_with_the_same_defaults_as_publishers_starts(
    tmp_path: Path, processes: Processes
) -> None:
    """Publishers and worker on the defaults: nothing differs, the worker starts."""
    store = "sqlite:///" + (tmp_path / "plain.db").as_posix()
    with wd.Dispatcher(store) as dispatcher:
        dispatcher.publish("order.created", {"id": 1})
    worker = processes.start(
        [sys.executable, "-m", "webhook_dispatch", "worker", "--store", store],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert "webhook-dispatch worker" in processes.read_line(worker)
    assert processes.terminate(worker).returncode == 0


# -- inspection commands and usage errors -----------------------------------------------
def test_inspection_commands_take_the_app_too(
    app: App, receiver: LoopbackReceiver, processes: Processes
) -> None:
    publish_one(app, receiver, 200)
    listed = app.cli(processes, "subscriptions", "list", "--json", "--app", app.name)
    assert listed.returncode == 0, listed.stderr
    [subscription] = json.loads(listed.stdout)
    assert subscription["url"] == receiver.url("/hook")
    by_env = app.cli(processes, "stats", "--json", WEBHOOK_DISPATCH_APP=app.name)
    assert by_env.returncode == 0 and json.loads(by_env.stdout)["pending"] == 1


def test_app_and_store_together_is_a_usage_error(
    app: App, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stats", "--app", app.name, "--store", app.store]) == 2
    assert "--store and --app both name a store" in capsys.readouterr().err
    code = main(["worker", "--app", app.name, "--allow-private-networks"])
    assert code == 2 and "the application's setting" in capsys.readouterr().err


def test_an_app_in_memory_is_refused(app: App, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--app", f"{app.name}:in_memory"]) == 2
    assert "keeps its deliveries in memory" in capsys.readouterr().err


def test_a_missing_app_exits_2_naming_it(app: App, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--app", f"{app.name}:nope"]) == 2
    assert "has no attribute 'nope'" in capsys.readouterr().err


# -- the settings publishers keep --------------------------------------------------------
def test_publishers_keep_their_settings_once_in_every_store(store_url: str) -> None:
    with wd.Dispatcher(store_url, retry=wd.RetryPolicy.fixed([0, 1])) as dispatcher:
        assert _settings.read(dispatcher.store) is None  # nothing published yet
        dispatcher.publish("order.created", {"id": 1})
        kept = _settings.read(dispatcher.store)
        assert kept is not None
        assert kept.settings == _settings.delivery_settings(dispatcher.options)
        assert kept.settings["retry"]["wait"]["delays"] == [0.0, 1.0]
        dispatcher.publish("order.created", {"id": 2})
        again = _settings.read(dispatcher.store)
        assert again is not None and again.written_at == kept.written_at  # not rewritten
        plain = _settings.delivery_settings(wd.DispatcherOptions())
        lines = _settings.differences(kept.settings, plain)
        assert [line.split(":")[0] for line in lines] == ["retry"]


def test_settings_name_functions_by_name() -> None:
    def on_attempt(event: object) -> None: ...

    ours = _settings.delivery_settings(wd.DispatcherOptions(on_attempt=on_attempt))
    assert ours["hooks"] == {
        "on_attempt": f"{__name__}.test_settings_name_functions_by_name.<locals>.on_attempt"
    }
    assert json.loads(json.dumps(ours)) == ours  # plain JSON, no addresses
    assert "0x" not in json.dumps(ours)
    assert _settings.differences(ours, ours) == []
    assert _settings.differences(ours, {**ours, "hooks": {}}) == [
        f"hooks: publishers use {json.dumps(ours['hooks'])}; this worker {{}}"
    ]


def test_an_outbox_publisher_keeps_its_settings_once_its_transaction_ends(
    tmp_path: Path,
) -> None:
    """Inside the application's own SQLite transaction (which holds the file's write
    lock) the settings are written on the side once it commits, without holding up the
    publish or the store."""
    import sqlite3
    import time

    path = tmp_path / "shop.db"
    with wd.Dispatcher(f"sqlite:///{path}", retry=wd.RetryPolicy.fixed([0, 3])) as dispatcher:
        app = sqlite3.connect(path)
        try:
            app.execute("BEGIN IMMEDIATE")
            dispatcher.publish("order.created", {"id": 1}, connection=app)
            assert _settings.read(dispatcher.store) is None  # the write waits for the lock
            app.commit()
        finally:
            app.close()
        deadline = time.monotonic() + 60  # a safety net: it comes once the lock is free
        while _settings.read(dispatcher.store) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        kept = _settings.read(dispatcher.store)
        assert kept is not None and kept.settings["retry"]["wait"]["delays"] == [0.0, 3.0]
