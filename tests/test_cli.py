"""The ``webhook-dispatch`` command: every subcommand in-process against a SQLite file,
plus the demo and a worker run as real subprocesses."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import webhook_dispatch as wd
from webhook_dispatch._receiver import LoopbackReceiver
from webhook_dispatch.cli import format_table, main, parse_moment
from webhook_dispatch.testing import MockReceiver

if TYPE_CHECKING:
    from conftest import Processes


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("WEBHOOK_DISPATCH_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    return "sqlite:///" + (tmp_path / "cli.db").as_posix()


class Runner:
    """Calls `main` in-process and keeps every output, to search for leaked secrets."""

    def __init__(self, capsys: pytest.CaptureFixture[str], store: str) -> None:
        self.capsys = capsys
        self.store = store
        self.outputs: list[str] = []

    def __call__(self, *argv: str, store: bool = True) -> tuple[int, str, str]:
        args = [*argv, "--store", self.store] if store else list(argv)
        code = main(args)
        captured = self.capsys.readouterr()
        self.outputs += [captured.out, captured.err]
        return code, captured.out, captured.err

    def json(self, *argv: str) -> list[dict[str, object]]:
        code, out, err = self(*argv, "--json")
        assert code == 0, err
        data = json.loads(out)
        assert isinstance(data, list)
        return data


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], store: str) -> Runner:
    return Runner(capsys, store)


def _deliver(
    store: str, *events: str, script: list[int], routes: dict[str, list[int]] | None = None
) -> list[wd.Message]:
    """Publish ``events`` into ``store`` and attempt them once against a scripted receiver."""
    receiver = MockReceiver(script, default=script[-1], routes=routes)
    with wd.Dispatcher(store, transport=receiver, retry=wd.RetryPolicy.fixed([0])) as dispatcher:
        messages = [dispatcher.publish(event, {"n": n}) for n, event in enumerate(events)]
        dispatcher.run_until_idle()
    return messages


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"webhook-dispatch {wd.__version__}"


def test_subscription_lifecycle(cli: Runner) -> None:
    code, out, _ = cli(
        "subscriptions",
        "add",
        "https://hooks.example.com/in",
        "--event-type",
        "order.*",
        "--event-type",
        "invoice.paid",
        "--header",
        "X-Tenant: 42",
    )
    assert code == 0
    sub_id = out.split()[2]
    assert sub_id.startswith("sub_")

    [listed] = cli.json("subscriptions", "list")
    assert listed["id"] == sub_id
    assert listed["event_types"] == ["order.*", "invoice.paid"]
    assert listed["header_names"] == ["X-Tenant"]
    assert listed["enabled"] is True

    assert cli("subscriptions", "disable", sub_id, "--reason", "maintenance")[0] == 0
    code, out, _ = cli("subscriptions", "list")
    assert "disabled" in out and f"{sub_id} disabled: maintenance" in out
    assert cli.json("subscriptions", "list")[0]["disabled_reason"] == "maintenance"

    assert cli("subscriptions", "enable", sub_id)[0] == 0
    assert cli.json("subscriptions", "list")[0]["enabled"] is True

    assert cli("subscriptions", "remove", sub_id)[0] == 0
    assert cli.json("subscriptions", "list") == []
    assert cli("subscriptions", "list")[1].strip() == "no subscriptions"


def test_secret_is_printed_once_and_never_again(cli: Runner) -> None:
    code, out, _ = cli("subscriptions", "add", "https://hooks.example.com/in")
    assert code == 0
    secret = next(line.split()[1] for line in out.splitlines() if line.startswith("secret:"))
    assert secret.startswith("whsec_")
    assert out.count(secret) == 1
    first_output_count = len(cli.outputs)

    [message] = _deliver(cli.store, "order.created", script=[503])
    [delivery] = cli.json("deliveries", "list")
    cli("subscriptions", "list")
    cli.json("subscriptions", "list")
    cli("messages", "list")
    cli.json("messages", "list")
    cli("deliveries", "list")
    cli("attempts", message.id)
    cli.json("attempts", message.id)
    cli("retry", str(delivery["id"]))
    sub_id = cli.json("subscriptions", "list")[0]["id"]
    cli("recover", str(sub_id), "--since", "1h")
    cli("subscriptions", "disable", str(sub_id))
    cli("purge", "--older-than", "30d")

    later = cli.outputs[first_output_count:]
    assert all(secret not in output for output in later)
    assert all("whsec_" not in output for output in later)


def test_given_secret_is_not_echoed(cli: Runner) -> None:
    secret = wd.generate_secret()
    code, out, _ = cli("subscriptions", "add", "https://hooks.example.com/in", "--secret", secret)
    assert code == 0
    assert secret not in out and "whsec_" not in out


def test_messages_list(cli: Runner) -> None:
    cli("subscriptions", "add", "https://hooks.example.com/in")
    _deliver(cli.store, "order.created", "order.created", "user.signup", script=[200])

    messages = cli.json("messages", "list")
    assert [m["event_type"] for m in messages] == ["user.signup", "order.created", "order.created"]
    payload = json.loads(str(messages[0]["payload"]))
    assert payload["type"] == "user.signup" and payload["data"] == {"n": 2}
    datetime.fromisoformat(str(messages[0]["created_at"]).replace("Z", "+00:00"))

    assert len(cli.json("messages", "list", "--event-type", "order.created")) == 2
    assert len(cli.json("messages", "list", "--limit", "1")) == 1

    _, out, _ = cli("messages", "list")
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "EVENT", "TYPE", "CREATED", "(UTC)", "BYTES"]
    assert len(rows) == 3 and all(row.startswith("msg_") for row in rows)
    assert max(len(line) for line in out.splitlines()) <= 100


def test_list_commands_page_with_limit_and_cursor(cli: Runner) -> None:
    for n in range(3):
        cli("subscriptions", "add", f"https://hooks{n}.example.com/in")
    _deliver(cli.store, *["order.created"] * 5, script=[200])
    pages: dict[str, list[str]] = {}
    for listing in ("subscriptions", "messages", "deliveries"):
        ids: list[str] = []
        cursor: list[str] = []
        while True:
            code, out, err = cli(listing, "list", "--limit", "2", *cursor, "--json")
            assert code == 0, err
            ids += [str(row["id"]) for row in json.loads(out)]
            if "--cursor" not in err:
                break
            cursor = ["--cursor", err.split("--cursor", 1)[1].split()[0]]
        pages[listing] = ids
    assert len(pages["subscriptions"]) == len(set(pages["subscriptions"])) == 3
    assert len(pages["messages"]) == len(set(pages["messages"])) == 5
    assert len(pages["deliveries"]) == len(set(pages["deliveries"])) == 15
    code, _, err = cli("deliveries", "list", "--cursor", "bogus")
    assert code == 2 and "cursor" in err


def test_deliveries_list_filters(cli: Runner) -> None:
    cli("subscriptions", "add", "https://ok.example.com/in")
    cli("subscriptions", "add", "https://bad.example.com/in")
    ok_id, bad_id = (s["id"] for s in cli.json("subscriptions", "list"))
    first, second = _deliver(
        cli.store,
        "order.created",
        "order.paid",
        script=[200],
        routes={"https://bad.example.com/in": [404, 200]},
    )

    assert len(cli.json("deliveries", "list")) == 4
    failed = cli.json("deliveries", "list", "--status", "failed")
    assert len(failed) == 1
    assert failed[0]["last_status_code"] == 404
    assert failed[0]["next_attempt_at"] is None
    assert len(cli.json("deliveries", "list", "--subscription", str(ok_id))) == 2
    by_message = cli.json("deliveries", "list", "--message", first.id)
    assert {d["subscription_id"] for d in by_message} == {ok_id, bad_id}

    _, out, _ = cli("deliveries", "list", "--message", second.id)
    assert out.splitlines()[0].split() == ["ID", "SUBSCRIPTION", "STATUS", "TRIES", "LAST", "NEXT"]
    assert "succeeded" in out
    assert max(len(line) for line in out.splitlines()) <= 100
    assert cli("deliveries", "list", "--status", "exhausted")[1].strip() == "no deliveries"

    with pytest.raises(SystemExit) as exit_info:
        cli("deliveries", "list", "--status", "lost")
    assert exit_info.value.code == 2


def test_attempts(cli: Runner) -> None:
    cli("subscriptions", "add", "https://hooks.example.com/in")
    [message] = _deliver(cli.store, "order.created", script=[503])

    code, out, _ = cli("attempts", message.id)
    assert code == 0
    assert message.id in out and "order.created" in out
    assert "exhausted" in out and "503" in out and "scheduled" in out

    [attempt] = cli.json("attempts", message.id)
    assert attempt["status_code"] == 503
    assert attempt["number"] == 1
    assert attempt["trigger"] == "scheduled"
    assert attempt["url"] == "https://hooks.example.com/in"
    assert isinstance(attempt["response_body"], str)


def test_retry_and_recover(cli: Runner) -> None:
    cli("subscriptions", "add", "https://hooks.example.com/in")
    [sub] = cli.json("subscriptions", "list")
    _deliver(cli.store, "order.created", "order.paid", script=[500])
    first, second = cli.json("deliveries", "list")
    assert first["status"] == second["status"] == "exhausted"

    code, out, _ = cli("retry", str(first["id"]))
    assert code == 0 and "scheduled for one manual attempt" in out
    retried = cli.json("deliveries", "list", "--status", "pending")
    assert [d["id"] for d in retried] == [first["id"]]
    assert retried[0]["next_trigger"] == "manual"

    code, out, _ = cli("recover", str(sub["id"]), "--since", "1h")
    assert code == 0
    assert "scheduled 1 delivery" in out and str(second["id"]) in out
    assert len(cli.json("deliveries", "list", "--status", "pending")) == 2

    future = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    code, out, _ = cli("recover", str(sub["id"]), "--since", future)
    assert code == 0 and "scheduled 0 deliveries" in out

    code, _, err = cli("recover", str(sub["id"]), "--since", "1h", "--until", "2h")
    assert code == 2 and err.startswith("error:")


def test_purge(cli: Runner) -> None:
    cli("subscriptions", "add", "https://hooks.example.com/in")
    _deliver(cli.store, "order.created", script=[200])

    code, out, _ = cli("purge", "--older-than", "30d")
    assert code == 0 and "purged 0 finished messages" in out
    assert len(cli.json("messages", "list")) == 1

    time.sleep(0.01)
    code, out, _ = cli("purge", "--older-than", "0s", "--dry-run")
    assert code == 0 and "would purge 1 finished message " in out
    assert len(cli.json("messages", "list")) == 1
    code, out, err = cli("purge", "--older-than", "0s")
    assert code == 0 and "purged 1 finished message " in out
    assert "[##############################] 1/1 messages" in err
    assert cli.json("messages", "list") == []


class _Terminal(io.StringIO):
    """Standard input that says it is a terminal, with the user's answer in it."""

    def isatty(self) -> bool:
        return True


def test_purge_asks_on_a_terminal(cli: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    cli("subscriptions", "add", "https://hooks.example.com/in")
    _deliver(cli.store, "order.created", script=[200])
    time.sleep(0.01)
    monkeypatch.setattr(sys, "stdin", _Terminal("n\n"))
    code, out, _ = cli("purge", "--older-than", "0s")
    assert code == 1 and "purge 1 finished message created" in out and "nothing purged" in out
    assert len(cli.json("messages", "list")) == 1
    monkeypatch.setattr(sys, "stdin", _Terminal("y\n"))
    code, out, _ = cli("purge", "--older-than", "0s")
    assert code == 0 and "purged 1 finished message " in out
    _deliver(cli.store, "order.created", script=[200])
    time.sleep(0.01)
    monkeypatch.setattr(sys, "stdin", _Terminal(""))  # --yes: nothing is read
    code, out, _ = cli("purge", "--older-than", "0s", "--yes")
    assert code == 0 and "purged 1 finished message " in out


@pytest.mark.parametrize(
    "argv",
    [
        ["attempts", "msg_00000000000000000000000000"],
        ["retry", "dlv_00000000000000000000000000"],
        ["recover", "sub_00000000000000000000000000", "--since", "1d"],
        ["subscriptions", "disable", "sub_00000000000000000000000000"],
        ["subscriptions", "enable", "sub_00000000000000000000000000"],
        ["subscriptions", "remove", "sub_00000000000000000000000000"],
    ],
)
def test_unknown_id_exits_2(cli: Runner, argv: list[str]) -> None:
    code, out, err = cli(*argv)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize(
    "store_url", ["bogus://x", "webhooks.db", "sqlite:///no/such/dir/x.db", "memory://junk"]
)
def test_bad_store_url_exits_2(cli: Runner, store_url: str) -> None:
    code, _, err = cli("subscriptions", "list", "--store", store_url, store=False)
    assert code == 2
    assert err.startswith("error: ")


def test_invalid_input_exits_2(cli: Runner) -> None:
    code, _, err = cli("subscriptions", "add", "ftp://hooks.example.com/in")
    assert code == 2 and err.startswith("error: ")
    bad_secret = "whsec_not-a-valid-secret!"
    code, _, err = cli("subscriptions", "add", "https://a.example", "--secret", bad_secret)
    assert code == 2 and err.startswith("error: ")
    assert bad_secret not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["subscriptions", "add", "https://a.example", "--header", "no colon"],
        ["recover", "sub_x", "--since", "yesterday"],
        ["purge", "--older-than", "soon"],
        ["messages", "list", "--limit", "0"],
        ["subscriptions"],
        [],
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], store: str, argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_store_from_environment_and_before_the_command(
    cli: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli("subscriptions", "add", "https://hooks.example.com/in")
    monkeypatch.setenv("WEBHOOK_DISPATCH_STORE", cli.store)
    code, out, _ = cli("subscriptions", "list", "--json", store=False)
    assert code == 0 and len(json.loads(out)) == 1
    monkeypatch.delenv("WEBHOOK_DISPATCH_STORE")
    code, out, _ = cli("--store", cli.store, "subscriptions", "list", "--json", store=False)
    assert code == 0 and len(json.loads(out)) == 1


def test_default_store_is_webhooks_db_in_the_working_directory(cli: Runner, tmp_path: Path) -> None:
    code, _, _ = cli("subscriptions", "add", "https://h.example/in", store=False)
    assert code == 0
    assert (tmp_path / "webhooks.db").exists()
    code, out, _ = cli("subscriptions", "list", store=False)
    assert code == 0 and "https://h.example/in" in out


@pytest.mark.parametrize(
    "command",
    [
        ["subscriptions", "list"],
        ["stats"],
        ["messages", "list"],
        ["deliveries", "list"],
        ["attempts", "msg_1"],
        ["retry", "dlv_1"],
        ["purge"],
        ["catalog", "export"],
        ["replay", "sub_1", "--since", "1h"],
    ],
)
def test_inspection_and_repair_commands_never_create_a_store(
    cli: Runner, tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "typo.db"
    code, out, err = cli(*command, "--store", f"sqlite:///{missing}", store=False)
    assert code == 2 and out == ""
    assert f"no store at '{missing}'" in err and "creates none" in err
    assert not missing.exists()
    assert not list(tmp_path.glob("typo.db*"))


def test_format_table_aligns_columns() -> None:
    lines = format_table(("ID", "N", "NAME"), [("a", 1, "x"), ("bbb", 22, "")], right={1})
    assert lines == ["ID    N  NAME", "a     1  x", "bbb  22"]


def test_parse_moment() -> None:
    now = datetime(2030, 1, 1, 12, tzinfo=timezone.utc)
    assert parse_moment("2h", now) == now - timedelta(hours=2)
    assert parse_moment("1h30m", now) == now - timedelta(minutes=90)
    assert parse_moment("7d", now) == now - timedelta(days=7)
    assert parse_moment("2029-12-31T00:00:00Z", now) == datetime(2029, 12, 31, tzinfo=timezone.utc)
    assert parse_moment("2029-12-31T01:00:00+01:00", now) == datetime(
        2029, 12, 31, tzinfo=timezone.utc
    )
    assert parse_moment("2029-12-31", now) == datetime(2029, 12, 31, tzinfo=timezone.utc)


def test_demo_in_process_with_a_given_store(cli: Runner) -> None:
    code, out, err = cli("demo")
    assert code == 0, err
    assert "signatures verified by receiver: 8/8" in out
    deliveries = cli.json("deliveries", "list")
    assert len(deliveries) == 6
    assert "whsec_" not in "".join(cli.outputs)

    code, _, err = cli("demo")
    assert code == 2
    assert err.startswith("error: the demo needs a store without subscriptions")


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("WEBHOOK_DISPATCH_STORE", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.mark.slow
def test_demo_subprocess(tmp_path: Path, processes: Processes) -> None:
    # No wall-clock budget here: exit status 0 means the demo settled within its own
    # deadline (it exits 1 naming the deliveries still pending otherwise).
    result = processes.run(
        [sys.executable, "-m", "webhook_dispatch", "demo"],
        cwd=tmp_path,
        env=_clean_env(),
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "webhook-dispatch demo: store sqlite:///" in out
    assert "receiver http://127.0.0.1:" in out
    assert "TIME" in out and "ENDPOINT" in out and "OUTCOME" in out
    assert "healthy  4 delivered, 0 failed" in out
    assert "flaky    1 delivered, 0 failed (3 attempts)" in out
    assert "gone     0 delivered, 1 failed" in out
    assert "signatures verified by receiver: 8/8" in out
    assert "subscription 'gone' disabled: " in out
    assert "whsec_" not in out + result.stderr
    assert list(tmp_path.iterdir()) == []  # the temporary store went away


@pytest.fixture
def loopback() -> Iterator[LoopbackReceiver]:
    with LoopbackReceiver() as receiver:
        yield receiver


@pytest.mark.slow
def test_worker_subprocess_delivers_and_stops_on_sigterm(
    tmp_path: Path, loopback: LoopbackReceiver, processes: Processes
) -> None:
    store = "sqlite:///" + (tmp_path / "worker.db").as_posix()
    secret = wd.generate_secret()
    loopback.route("/hook", [200], secret=secret)
    with wd.Dispatcher(store, allow_private_networks=True) as dispatcher:
        dispatcher.subscribe(loopback.url("/hook"), secret=secret)

    worker = processes.start(
        [
            sys.executable,
            "-m",
            "webhook_dispatch",
            "worker",
            "--store",
            store,
            "--concurrency",
            "4",
            "--allow-private-networks",
        ],
        cwd=tmp_path,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first_line = processes.read_line(worker)
    assert "worker" in first_line and "concurrency 4" in first_line

    with wd.Dispatcher(store) as dispatcher:
        message = dispatcher.publish("order.created", {"id": "ord_1"})
    # A safety net against a hang, not a budget: the worker is running and idle.
    deadline = time.monotonic() + 120
    while not loopback.requests_to("/hook") and time.monotonic() < deadline:
        time.sleep(0.05)
    [received] = loopback.requests_to("/hook")
    assert received.webhook_id == message.id
    assert received.verified is True

    stopped = processes.terminate(worker)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout
    assert "Traceback" not in stopped.stderr
    with wd.Dispatcher(store) as dispatcher:
        [delivery] = dispatcher.deliveries(message_id=message.id)
        assert delivery.status is wd.DeliveryStatus.SUCCEEDED


# -- store passwords are never printed ---------------------------------------------------------
STORE_PASSWORD = "s3cret-pw"


def _store_with_password(dsn: str, schema: str, form: str) -> str:
    """The test server's URL with ``STORE_PASSWORD`` in it (its trust auth ignores it)."""
    parts = urllib.parse.urlsplit(dsn)
    where = f"{parts.hostname}:{parts.port or 5432}{parts.path}"
    user = parts.username or "postgres"
    if form == "userinfo":
        return f"postgresql://{user}:{STORE_PASSWORD}@{where}?schema={schema}"
    if form == "no user":
        return f"postgresql://:{STORE_PASSWORD}@{where}?user={user}&schema={schema}"
    return f"postgresql://{user}@{where}?password={STORE_PASSWORD}&schema={schema}"


class _WatchedOutput(io.StringIO):
    """A stdout that tells when a line containing ``needle`` has been written."""

    def __init__(self, needle: str) -> None:
        super().__init__()
        self.needle = needle
        self.seen = threading.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.needle in self.getvalue():
            self.seen.set()
        return written


FORMS = ["userinfo", "no user", "query"]


@pytest.mark.postgres
@pytest.mark.parametrize("form", FORMS)
def test_worker_startup_line_hides_the_store_password(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    postgres_dsn: str,
    postgres_schema: str,
    form: str,
) -> None:
    url = _store_with_password(postgres_dsn, postgres_schema, form)
    output = _WatchedOutput("(Ctrl-C or SIGTERM stops it)")
    monkeypatch.setattr(sys, "stdout", output)
    finished = threading.Event()
    earlier_threads = set(threading.enumerate())

    def idle() -> bool:
        # A new LISTEN thread: the worker runs and waits for work, so Ctrl-C lands in
        # run() and not halfway through building its event loop.
        return any(
            thread.name == "webhook-dispatch-listen" and thread not in earlier_threads
            for thread in threading.enumerate()
        )

    def interrupt_once_started() -> None:
        while not finished.wait(0.02):
            if output.seen.is_set() and idle():
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
                return

    # The worker swaps its own handler in and back out; a stray late SIGINT lands here.
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    stopper = threading.Thread(target=interrupt_once_started, daemon=True)
    stopper.start()
    try:
        code = main(["worker", "--store", url, "--concurrency", "2"])
    finally:
        finished.set()
        stopper.join()
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err
    out = output.getvalue()
    assert code == 0, err
    [startup] = [line for line in out.splitlines() if "stops it" in line]
    assert startup.startswith("webhook-dispatch worker ")
    assert f"{urllib.parse.urlsplit(postgres_dsn).hostname}:" in startup and "***" in startup
    assert postgres_schema in startup
    assert STORE_PASSWORD not in out + err
    assert "webhook-dispatch worker stopped" in out


@pytest.mark.postgres
@pytest.mark.parametrize("form", FORMS)
def test_demo_lines_hide_the_store_password(
    cli: Runner, postgres_dsn: str, postgres_schema: str, form: str
) -> None:
    url = _store_with_password(postgres_dsn, postgres_schema, form)
    code, out, err = cli("demo", "--store", url, store=False)
    assert code == 0, err
    assert "webhook-dispatch demo: store postgresql://" in out and "***" in out
    assert "inspect: webhook-dispatch deliveries list --store postgresql://" in out
    code, _, err = cli("demo", "--store", url, store=False)  # now the store has subscriptions
    assert code == 2 and "the demo needs a store without subscriptions" in err
    assert STORE_PASSWORD not in "".join(cli.outputs)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # Well-formed, but port 1 on loopback is closed: the command ran and failed (1).
        (f"postgresql://app:{STORE_PASSWORD}@127.0.0.1:1/db?connect_timeout=2", 1),
        (f"postgresql://:{STORE_PASSWORD}@127.0.0.1:1/db?connect_timeout=2", 1),
        (f"postgresql://app@127.0.0.1:1/db?connect_timeout=2&password={STORE_PASSWORD}", 1),
        # Not a store URL at all: a bad value on the command line (2).
        (f"postgresql//app:{STORE_PASSWORD}@127.0.0.1:1/db", 2),
        (f"host=127.0.0.1 port=1 dbname=db password={STORE_PASSWORD}", 2),
    ],
)
def test_store_errors_from_every_command_hide_the_password(
    cli: Runner, url: str, expected: int
) -> None:
    if "://" in url:
        pytest.importorskip("psycopg")
    # The store fails at once, before any command runs.
    for command in (["worker"], ["demo"], ["stats"], ["subscriptions", "list"]):
        code, out, err = cli(*command, "--store", url, store=False)
        assert code == expected and err.startswith("error: "), (command, err)
        assert STORE_PASSWORD not in out + err


def test_tenant_commands_and_filters(cli: Runner, store: str) -> None:
    code, out, err = cli(
        "tenants", "set", "acme", "--max-subscriptions", "2", "--metadata", "plan=pro"
    )
    assert code == 0, err
    assert json.loads(out)["max_subscriptions"] == 2
    code, out, _ = cli("subscriptions", "add", "https://acme.example/h", "--tenant", "acme")
    assert code == 0 and "tenant:      acme" in out
    cli("subscriptions", "add", "https://ops.example/h")
    with wd.Dispatcher(store, transport=MockReceiver()) as dispatcher:
        dispatcher.publish("order.created", {}, tenant="acme")
        dispatcher.publish("order.created", {})
    assert [s["url"] for s in cli.json("subscriptions", "list", "--tenant", "acme")] == [
        "https://acme.example/h"
    ]
    assert len(cli.json("messages", "list", "--tenant", "acme")) == 1
    assert len(cli.json("deliveries", "list", "--tenant", "acme")) == 1
    assert len(cli.json("messages", "list")) == 2
    (listed,) = cli.json("tenants", "list")
    assert (listed["id"], listed["subscriptions"], listed["pending"]) == ("acme", 1, 1)
    code, out, _ = cli("stats", "--tenant", "acme", "--json")
    assert json.loads(out)["pending"] == 1
    code, _, err = cli("tenants", "delete", "acme")
    assert code == 2 and "without --yes" in err
    code, out, err = cli("tenants", "delete", "acme", "--yes")
    assert code == 0 and "1 messages" in out and "deleting tenant acme" in err
    assert cli.json("tenants", "list") == []
    assert len(cli.json("messages", "list")) == 1
    code, _, err = cli("subscriptions", "list", "--tenant", "bad id")
    assert code == 2 and "characters outside" in err


def test_subscriptions_add_takes_a_filter(cli: Runner) -> None:
    document = {"data": {"amount": {"$gte": 100}}}
    code, out, _ = cli(
        "subscriptions", "add", "https://h.example/in", "--filter", json.dumps(document)
    )
    assert code == 0 and f"filter:      {json.dumps(document)}" in out
    assert cli.json("subscriptions", "list")[0]["filter"] == document
    code, _, err = cli(
        "subscriptions", "add", "https://h.example/in", "--filter", '{"a": {"$gtx": 1}}'
    )
    assert code == 2 and "unknown operator '$gtx'" in err and "(at a.$gtx)" in err
    with pytest.raises(SystemExit) as exited:
        cli("subscriptions", "add", "https://h.example/in", "--filter", "{bad")
    assert exited.value.code == 2 and "not JSON" in cli.capsys.readouterr().err
    assert len(cli.json("subscriptions", "list")) == 1


def test_worker_says_what_it_does_and_logs_json(tmp_path: Path, processes: Processes) -> None:
    """The startup line names the retry policy, the guard and the retention; a refused
    endpoint is a WARNING, and ``--log-format json`` makes it one JSON object with the
    attempt's fields."""
    store = "sqlite:///" + (tmp_path / "worker.db").as_posix()
    with wd.Dispatcher(store, allow_private_networks=True) as dispatcher:
        sub = dispatcher.subscribe("http://127.0.0.1:9/hook")
    # Published with the defaults the worker runs with (a publisher allowing private
    # networks would make the worker refuse to start: see test_worker_refuses_...).
    with wd.Dispatcher(store) as dispatcher:
        message = dispatcher.publish("order.created", {"id": "ord_1"})
    worker = processes.start(
        [
            sys.executable,
            "-m",
            "webhook_dispatch",
            "worker",
            "--store",
            store,
            "--log-format",
            "json",
        ],
        cwd=tmp_path,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first = processes.read_line(worker)
    assert "retry 10 attempts (0s, 5s, 5m" in first and "network guard on" in first
    assert "retention 30d" in first and "log level info" in first
    logged = json.loads(processes.read_line(worker))
    assert logged["level"] == "warning" and "network guard" in logged["message"]
    assert logged["subscription_id"] == sub.id and logged["message_id"] == message.id
    assert logged["delivery_status"] == "failed"
    stopped = processes.terminate(worker)
    assert stopped.returncode == 0


@pytest.mark.slow
def test_worker_logs_progress_lines_while_it_runs(
    tmp_path: Path, loopback: LoopbackReceiver, processes: Processes
) -> None:
    """``--progress-every``: each line counts what happened since the previous one, so
    the lines add up to every attempt made; and says where the store stands."""
    store = "sqlite:///" + (tmp_path / "worker.db").as_posix()
    loopback.route("/ok", [200])
    loopback.route("/flaky", [503, 200])
    with wd.Dispatcher(store, allow_private_networks=True) as d:
        d.subscribe(loopback.url("/ok"))
        d.subscribe(loopback.url("/flaky"), retry=[0, 0])  # the endpoint's own schedule
        for number in range(3):
            d.publish("order.created", {"id": number})
    worker = processes.start(
        [
            sys.executable,
            "-m",
            "webhook_dispatch",
            "worker",
            "--store",
            store,
            "--allow-private-networks",
            "--log-format",
            "json",
            "--progress-every",
            "0.2",
        ],
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert "webhook-dispatch worker" in processes.read_line(worker)
    totals = {"attempts": 0, "delivered": 0, "retrying": 0, "given_up": 0}
    last: dict[str, Any] = {}
    while not (totals["delivered"] == 6 and last.get("pending") == 0):
        line = processes.read_line(worker)
        assert line, "the worker exited"
        record = json.loads(line)
        if not record["message"].startswith("progress: "):
            continue  # the retried attempt's own INFO line
        last = record
        for name in totals:
            totals[name] += record[name]
        assert record["level"] == "info" and record["in_flight"] >= 0
    # /flaky answered 503 once: one attempt to retry, then its second attempt succeeded.
    assert totals == {"attempts": 7, "delivered": 6, "retrying": 1, "given_up": 0}
    assert last["oldest_pending_seconds"] is None
    assert processes.terminate(worker).returncode == 0


def test_exit_codes_tell_a_failure_from_a_wrong_command_line(cli: Runner) -> None:
    """0 done; 1 the command ran and failed (an unknown id); 2 the command line is wrong
    (a bad value, an unknown option)."""
    assert cli("subscriptions", "add", "https://h.example/in")[0] == 0
    code, _, err = cli("retry", "dlv_01aaaaaaaaaaaaaaaaaaaaaaaa")
    assert code == 1 and err.startswith("error: ")
    code, _, err = cli("subscriptions", "add", "ftp://h.example/in")
    assert code == 2 and err.startswith("error: ")
    with pytest.raises(SystemExit) as exited:
        cli("subscriptions", "list", "--no-such-option")
    assert exited.value.code == 2


def test_every_action_speaks_json_for_scripts(cli: Runner, store: str) -> None:
    """``--json`` on the commands that change things: one JSON object saying what was
    done, with no progress bar on stderr."""
    cli("subscriptions", "add", "https://h.example/a")
    [message] = _deliver(store, "order.created", script=[500])
    with wd.Dispatcher(store) as dispatcher:
        [delivery] = dispatcher.deliveries(message_id=message.id)
        sub = delivery.subscription_id

    def run(*argv: str) -> dict[str, Any]:
        code, out, err = cli(*argv, "--json")
        assert code == 0 and err == "", (argv, err)
        document = json.loads(out)
        assert isinstance(document, dict)
        return document

    added = run("subscriptions", "add", "https://h.example/b", "--event-type", "order.*")
    assert added["subscription"]["url"] == "https://h.example/b"
    assert added["secret"].startswith("whsec_")  # generated: shown this once
    assert "secret" not in added["subscription"]
    retried = run("retry", delivery.id)
    assert retried["scheduled"] is True and retried["delivery"]["id"] == delivery.id
    assert run("subscriptions", "disable", sub, "--reason", "maintenance")["enabled"] is False
    assert run("subscriptions", "enable", sub)["enabled"] is True
    assert run("resend", message.id, sub)["message_id"] == message.id
    recovered = run("recover", sub, "--since", "1h")
    assert recovered["subscription_id"] == sub and isinstance(recovered["deliveries"], list)
    assert run("replay", sub, "--since", "1h")["queued"] >= 0
    dry = run("purge", "--older-than", "1s", "--dry-run")
    assert dry == {"dry_run": True, "messages": 0, "before": dry["before"]}
    assert run("purge", "--older-than", "1s", "--yes")["messages"] == 0
    assert run("subscriptions", "remove", sub) == {"removed": sub, "url": "https://h.example/a"}
    cli("tenants", "set", "acme")
    assert run("tenants", "delete", "acme", "--yes") == {"deleted": "acme", "messages": 0}


def _doctor(cli: Runner, *argv: str) -> tuple[int, dict[str, dict[str, Any]]]:
    code, out, err = cli("doctor", "--json", *argv)
    document = json.loads(out)
    assert document["ok"] is (code == 0), err
    checks: dict[str, dict[str, Any]] = {}
    for check in document["checks"]:
        checks[check["name"]] = check
    return code, checks


def test_doctor_names_each_endpoint_the_guard_would_refuse(cli: Runner, store: str) -> None:
    with wd.Dispatcher(store, allow_private_networks=True) as dispatcher:
        local = dispatcher.subscribe("http://localhost:8000/hook")  # /etc/hosts: loopback
        nowhere = dispatcher.subscribe("https://nowhere.invalid/hook")  # never resolves
        dispatcher.subscribe("https://93.184.216.34/hook")  # a public literal: fine
        metadata = dispatcher.subscribe("http://169.254.169.254/latest")
        dispatcher.disable(metadata.id, reason="test")
    code, checks = _doctor(cli)
    assert code == 1
    assert checks["store"]["status"] == "ok" and "schema version" in checks["store"]["detail"]
    assert checks["store file"]["status"] == "ok"  # created readable by its owner only
    refused = checks[f"endpoint {local.id}"]
    assert refused["status"] == "problem" and "127.0.0.1 (Loopback)" in refused["detail"]
    assert "allow_private_networks=True" in refused["fix"]
    assert checks[f"endpoint {nowhere.id}"]["status"] == "warning"
    assert len([name for name in checks if name.startswith("endpoint ")]) == 2  # not disabled
    assert checks["disabled"]["status"] == "warning"
    assert checks["secrets"]["status"] == "warning"  # no encryption at rest: said plainly
    # Judged as a worker allowing private networks would: the endpoint is fine then.
    code, checks = _doctor(cli, "--allow-private-networks")
    assert f"endpoint {local.id}" not in checks and checks["network guard"]["status"] == "warning"


def test_doctor_finds_a_store_others_can_read_and_settings_that_differ(
    cli: Runner, store: str
) -> None:
    with wd.Dispatcher(store, retry=wd.RetryPolicy.fixed([0, 1])) as dispatcher:
        dispatcher.subscribe("https://93.184.216.34/hook")
        dispatcher.publish("order.created", {"id": 1})
    path = Path(store.removeprefix("sqlite:///"))
    path.chmod(0o644)
    code, checks = _doctor(cli)
    assert code == 1
    assert checks["store file"]["status"] == "problem"
    assert checks["store file"]["fix"] == f"chmod 600 {path}"
    assert checks["settings"]["status"] == "problem" and "retry:" in checks["settings"]["detail"]
    assert checks["endpoints"] == {
        "name": "endpoints",
        "status": "ok",
        "detail": "1 enabled endpoint reachable",
        "fix": None,
    }
    path.chmod(0o600)


def test_doctor_reports_a_missing_store_as_a_problem(cli: Runner) -> None:
    code, out, _ = cli("doctor")
    assert code == 1
    assert out.splitlines()[0].startswith("problem  store  no store at")
    assert out.splitlines()[-1] == "doctor: 1 problem, 0 warnings"
