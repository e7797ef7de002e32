"""The network guard at subscribe time: a host name that resolves only to addresses the
guard refuses is refused by `subscribe` and `update(url=...)`, with the guard's reason,
instead of failing every delivery later. Names resolve through resolvers the tests
inject, except ``localhost`` (from /etc/hosts); nothing is looked up on the internet."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import pickle
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

import webhook_dispatch as wd
from webhook_dispatch import netguard
from webhook_dispatch.cli import main
from webhook_dispatch.netguard import NetworkPolicy
from webhook_dispatch.testing import MockReceiver
from webhook_dispatch.transport import HTTPTransport

PUBLIC = "93.184.215.14"  # a public unicast address (never connected to here)


def _answers(table: dict[str, list[str]]) -> tuple[list[tuple[str, int]], Callable[..., list[str]]]:
    """A resolver answering from ``table`` (a name missing from it does not resolve),
    and the list of lookups it was asked for."""
    calls: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append((host, port))
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return calls, resolve


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    return f"sqlite:///{tmp_path / 'hooks.db'}"


# -- refused, with the guard's reason, and nothing stored ---------------------------
def test_localhost_is_refused_with_the_guards_reason_and_nothing_stored(store: str) -> None:
    with wd.Dispatcher(store) as dispatcher:
        with pytest.raises(wd.BlockedEndpoint) as caught:
            dispatcher.subscribe("http://localhost:8000/hook")
        assert dispatcher.subscriptions() == []
    error = caught.value
    assert isinstance(error, wd.InvalidURL) and isinstance(error, wd.ConfigurationError)
    assert error.host == "localhost"
    assert ("127.0.0.1", "Loopback") in error.refused
    # /etc/hosts may name ::1 too, which the IPv6 registry calls "Loopback Address"
    assert {why for _, why in error.refused} <= {"Loopback", "Loopback Address"}
    text = str(error)
    assert "'localhost' resolves to 127.0.0.1 (Loopback)" in text
    assert "allow_private_networks=True" in text and "allowed_networks=" in text
    assert "resolve_host=False" in text and "--no-resolve-host" in text


def test_the_refusal_keeps_its_context_through_pickling() -> None:
    with wd.Dispatcher() as dispatcher, pytest.raises(wd.BlockedEndpoint) as caught:
        dispatcher.subscribe("http://localhost:8000/hook")
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (copy.host, copy.refused, str(copy)) == (
        caught.value.host,
        caught.value.refused,
        str(caught.value),
    )


def test_the_async_face_refuses_localhost_too(store: str) -> None:
    async def scenario() -> None:
        async with wd.AsyncDispatcher(store) as dispatcher:
            with pytest.raises(wd.BlockedEndpoint, match=r"127\.0\.0\.1 \(Loopback\)"):
                await dispatcher.subscribe("http://localhost:8000/hook", event_types=["a.b"])
            assert await dispatcher.subscriptions() == []

    asyncio.run(scenario())


def test_update_to_a_refused_name_is_refused_and_nothing_changes(store: str) -> None:
    _, resolve = _answers({"hooks.example.com": [PUBLIC], "localhost": ["127.0.0.1"]})
    with wd.Dispatcher(store, resolve=resolve) as dispatcher:
        subscription = dispatcher.subscribe("https://hooks.example.com/in")
        with pytest.raises(wd.BlockedEndpoint, match="Loopback"):
            dispatcher.update(subscription.id, url="http://localhost:9/x", timeout=5.0)
        assert dispatcher.get_subscription(subscription.id).url == subscription.url
        moved = dispatcher.update(subscription.id, url="http://localhost:9/x", resolve_host=False)
        assert moved.url == "http://localhost:9/x"


def test_update_on_the_async_face(store: str) -> None:
    _, resolve = _answers({"hooks.example.com": [PUBLIC], "metadata.test": ["169.254.169.254"]})

    async def scenario() -> None:
        async with wd.AsyncDispatcher(store, resolve=resolve) as dispatcher:
            subscription = await dispatcher.subscribe("https://hooks.example.com/in")
            with pytest.raises(wd.BlockedEndpoint, match="cloud metadata"):
                await dispatcher.update(subscription.id, url="http://metadata.test/latest")
            assert (await dispatcher.get_subscription(subscription.id)).url == subscription.url
            kept = await dispatcher.update(subscription.id, timeout=3.0)  # no url: no lookup
            assert kept.timeout == 3.0
            moved = await dispatcher.update(
                subscription.id, url="http://metadata.test/latest", resolve_host=False
            )
            assert moved.url == "http://metadata.test/latest"

    asyncio.run(scenario())


def test_a_keyed_subscription_is_checked_before_it_converges() -> None:
    _, resolve = _answers({"hooks.example.com": [PUBLIC], "internal.test": ["10.0.0.5"]})
    with wd.Dispatcher(resolve=resolve) as dispatcher:
        first = dispatcher.subscribe("https://hooks.example.com/in", key="main")
        with pytest.raises(wd.BlockedEndpoint, match="private"):
            dispatcher.subscribe("http://internal.test/in", key="main")
        assert dispatcher.subscriptions() == [first]


# -- what the resolver answers --------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (["10.0.0.5"], "Private-Use"),
        (["169.254.169.254"], "Link Local (cloud metadata service)"),
        (["::1"], "Loopback Address"),
        (["::ffff:192.168.1.1"], "Private-Use, embedded in IPv6"),
        (["100.64.0.1", "fd00::1"], "Shared Address Space"),
        (["3fff::1"], "Documentation"),
    ],
)
def test_a_name_resolving_only_to_refused_addresses_is_refused(
    answer: list[str], reason: str
) -> None:
    calls, resolve = _answers({"hooks.internal.test": answer})
    with wd.Dispatcher(resolve=resolve) as dispatcher:
        with pytest.raises(wd.BlockedEndpoint) as caught:
            dispatcher.subscribe("https://hooks.internal.test/in")
        assert dispatcher.subscriptions() == []
    assert caught.value.host == "hooks.internal.test"
    assert caught.value.refused[0] == (str(ipaddress.ip_address(answer[0])), reason)
    assert len(caught.value.refused) == len(answer)
    assert calls == [("hooks.internal.test", 443)]


@pytest.mark.parametrize(
    "answer",
    [[PUBLIC], ["2606:2800:21f:cb07:6820:80da:af6b:8b2c"], ["10.0.0.5", PUBLIC]],
    ids=["v4", "v6", "mixed"],
)
def test_a_name_with_an_allowed_address_is_accepted(answer: list[str]) -> None:
    """As at delivery: when any address is allowed, the guard connects to it."""
    _, resolve = _answers({"hooks.example.com": answer})
    with wd.Dispatcher(resolve=resolve) as dispatcher:
        subscription = dispatcher.subscribe("https://hooks.example.com/in")
        assert dispatcher.subscriptions() == [subscription]


MIXED = ["10.0.0.5", PUBLIC, "169.254.169.254"]


def test_refuse_mixed_answers_refuses_a_name_with_any_refused_address(store: str) -> None:
    _, resolve = _answers({"hooks.example.com": MIXED, "clean.example.com": [PUBLIC]})
    with wd.Dispatcher(store, resolve=resolve, refuse_mixed_answers=True) as dispatcher:
        with pytest.raises(wd.BlockedEndpoint) as caught:
            dispatcher.subscribe("https://hooks.example.com/in")
        assert dispatcher.subscriptions() == []
        clean = dispatcher.subscribe("https://clean.example.com/in")
        with pytest.raises(wd.BlockedEndpoint):
            dispatcher.update(clean.id, url="https://hooks.example.com/in")
        assert dispatcher.get_subscription(clean.id).url == "https://clean.example.com/in"
    assert caught.value.host == "hooks.example.com"
    assert caught.value.refused == (
        ("10.0.0.5", "Private-Use"),
        ("169.254.169.254", "Link Local (cloud metadata service)"),
    )


def test_refuse_mixed_answers_on_the_async_face(store: str) -> None:
    _, resolve = _answers({"hooks.example.com": MIXED})

    async def scenario() -> None:
        async with wd.AsyncDispatcher(store, resolve=resolve, refuse_mixed_answers=True) as d:
            with pytest.raises(wd.BlockedEndpoint, match=r"10\.0\.0\.5 \(Private-Use\)"):
                await d.subscribe("https://hooks.example.com/in")
            assert await d.subscriptions() == []
        async with wd.AsyncDispatcher(store, resolve=resolve) as lenient:
            await lenient.subscribe("https://hooks.example.com/in")  # the default rule

    asyncio.run(scenario())


@pytest.mark.parametrize("strict", [False, True], ids=["default", "refuse_mixed_answers"])
@pytest.mark.parametrize(
    ("answer", "refused_by_default", "refused_when_strict"),
    [
        ([PUBLIC], False, False),
        (["10.0.0.5", PUBLIC], False, True),
        (["3fff::1", "2606:4700::1111"], False, True),
        (["10.0.0.5"], True, True),
        ([], False, False),
    ],
    ids=["public", "mixed-v4", "mixed-v6", "refused", "empty"],
)
def test_check_resolved_host_under_both_rules(
    strict: bool, answer: list[str], refused_by_default: bool, refused_when_strict: bool
) -> None:
    policy = NetworkPolicy(refuse_mixed_answers=strict)
    refused = refused_when_strict if strict else refused_by_default
    _, resolve = _answers({"hooks.example.com": answer})

    async def check_async() -> None:
        await netguard.check_resolved_host_async("hooks.example.com", policy, resolve=resolve)

    for run in (
        lambda: netguard.check_resolved_host("hooks.example.com", policy, resolve=resolve),
        lambda: asyncio.run(check_async()),
    ):
        if refused:
            with pytest.raises(wd.BlockedAddress):
                run()
        else:
            run()


def test_a_name_that_does_not_resolve_is_accepted() -> None:
    """It may resolve only where the worker runs."""
    calls, resolve = _answers({})
    with wd.Dispatcher(resolve=resolve) as dispatcher:
        dispatcher.subscribe("https://hooks.only-there.test/in")
        assert len(dispatcher.subscriptions()) == 1
    assert calls == [("hooks.only-there.test", 443)]


def test_an_empty_answer_is_accepted() -> None:
    with wd.Dispatcher(resolve=lambda host, port: []) as dispatcher:
        dispatcher.subscribe("https://hooks.example.com/in")
        assert len(dispatcher.subscriptions()) == 1


def test_an_async_resolver_is_awaited_on_both_faces() -> None:
    async def resolve(host: str, port: int) -> list[str]:
        await asyncio.sleep(0)
        return ["192.168.7.7"]

    with (
        wd.Dispatcher(resolve=resolve) as dispatcher,
        pytest.raises(wd.BlockedEndpoint, match=r"192\.168\.7\.7"),
    ):
        dispatcher.subscribe("https://hooks.internal.test/in")

    async def scenario() -> None:
        async with wd.AsyncDispatcher(resolve=resolve) as dispatcher:
            with pytest.raises(wd.BlockedEndpoint, match=r"192\.168\.7\.7"):
                await dispatcher.subscribe("https://hooks.internal.test/in")

    asyncio.run(scenario())


def test_the_lookup_uses_the_ascii_name_and_the_urls_port() -> None:
    calls, resolve = _answers({})
    with wd.Dispatcher(resolve=resolve) as dispatcher:
        dispatcher.subscribe("https://bücher.example/in")
        dispatcher.subscribe("http://hooks.example.com.:8080/in")
        dispatcher.subscribe("http://plain.example/in")
    assert calls == [
        ("xn--bcher-kva.example", 443),
        ("hooks.example.com", 8080),
        ("plain.example", 80),
    ]


# -- the options that open it ---------------------------------------------------------
def test_allow_private_networks_accepts_localhost_without_a_lookup() -> None:
    calls, resolve = _answers({"localhost": ["127.0.0.1"]})
    with wd.Dispatcher(allow_private_networks=True, resolve=resolve) as dispatcher:
        dispatcher.subscribe("http://localhost:8000/hook")
        assert len(dispatcher.subscriptions()) == 1
    assert calls == []  # the guard checks nothing, so nothing is looked up
    with wd.Dispatcher(allow_private_networks=True) as real_dns:
        real_dns.subscribe("http://localhost:8000/hook")


def test_allowed_networks_are_honoured() -> None:
    _, resolve = _answers(
        {"billing.internal.test": ["10.20.3.4"], "other.internal.test": ["10.99.0.1"]}
    )
    with wd.Dispatcher(allowed_networks=["10.20.0.0/16"], resolve=resolve) as dispatcher:
        dispatcher.subscribe("http://billing.internal.test/hooks")
        with pytest.raises(wd.BlockedEndpoint, match=r"10\.99\.0\.1 \(Private-Use"):
            dispatcher.subscribe("http://other.internal.test/hooks")
        assert len(dispatcher.subscriptions()) == 1
    with wd.Dispatcher(allowed_networks=["127.0.0.0/8"]) as loopback:
        loopback.subscribe("http://localhost:8000/hook")


def test_resolve_host_false_skips_the_lookup_but_not_the_literal_check() -> None:
    calls, resolve = _answers({"hooks.internal.test": ["10.0.0.5"]})
    with wd.Dispatcher(resolve=resolve) as dispatcher:
        dispatcher.subscribe("http://hooks.internal.test/in", resolve_host=False)
        dispatcher.subscribe("http://localhost:8000/hook", resolve_host=False)
        with pytest.raises(wd.BlockedEndpoint, match="network guard") as caught:
            dispatcher.subscribe("http://10.0.0.5/in", resolve_host=False)
        assert len(dispatcher.subscriptions()) == 2
    assert calls == []
    assert caught.value.host == "10.0.0.5"
    assert caught.value.refused == (("10.0.0.5", "Private-Use"),)

    async def scenario() -> None:
        async with wd.AsyncDispatcher(resolve=resolve) as async_dispatcher:
            await async_dispatcher.subscribe("http://localhost:8000/hook", resolve_host=False)

    asyncio.run(scenario())


@pytest.mark.parametrize("value", ["no", 0, None])
def test_resolve_host_must_be_a_bool(value: object) -> None:
    with wd.Dispatcher() as dispatcher:
        with pytest.raises(wd.ConfigurationError, match="resolve_host"):
            dispatcher.subscribe("https://hooks.example.com/in", resolve_host=value)  # type: ignore[arg-type]
        assert dispatcher.subscriptions() == []


def test_a_mock_transport_delivers_anywhere_so_names_are_not_looked_up() -> None:
    calls, resolve = _answers({"localhost": ["127.0.0.1"]})
    receiver = MockReceiver()
    with wd.Dispatcher(transport=receiver, resolve=resolve) as dispatcher:
        dispatcher.subscribe("http://localhost:8000/hook")
        dispatcher.publish("order.created", {"id": 1})
        dispatcher.run_until_idle()
    assert calls == []
    assert len(receiver.requests) == 1


def test_an_http_transport_of_ones_own_keeps_the_check() -> None:
    _, resolve = _answers({"hooks.internal.test": ["10.0.0.5"]})
    transport = HTTPTransport(network_policy=NetworkPolicy())
    with (
        wd.Dispatcher(transport=transport, resolve=resolve) as dispatcher,
        pytest.raises(wd.BlockedEndpoint, match="private"),
    ):
        dispatcher.subscribe("http://hooks.internal.test/in")


def test_the_default_transport_resolves_through_the_same_resolver() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        calls, resolve = _answers({"hooks.internal.test": ["127.0.0.1"]})
        with wd.Dispatcher(allowed_networks=["127.0.0.1/32"], resolve=resolve) as dispatcher:
            dispatcher.subscribe(f"http://hooks.internal.test:{port}/hook")
            message = dispatcher.publish("order.created", {"id": 1})
            dispatcher.run_until_idle()
            [attempt] = dispatcher.attempts(message.id)
        assert attempt.status_code == 200
        assert calls == [("hooks.internal.test", port)] * 2  # subscribe, then the attempt
    finally:
        server.shutdown()
        server.server_close()


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


# -- a slow resolver is bounded -------------------------------------------------------
@pytest.fixture
def stuck() -> Iterator[tuple[threading.Event, threading.Event, Callable[..., Sequence[str]]]]:
    """A resolver that blocks until released (at teardown, or after 30 s at worst),
    answering a refused address if it ever answers."""
    started = threading.Event()
    release = threading.Event()

    def resolve(host: str, port: int) -> Sequence[str]:
        started.set()
        release.wait(30)
        return ["10.0.0.5"]

    try:
        yield started, release, resolve
    finally:
        release.set()


def test_a_slow_lookup_does_not_hang_subscribe(
    monkeypatch: pytest.MonkeyPatch,
    stuck: tuple[threading.Event, threading.Event, Callable[..., Sequence[str]]],
) -> None:
    """Past the bound the name counts as one that does not resolve (the bound is made
    short here; nothing is timed)."""
    started, release, resolve = stuck
    monkeypatch.setattr(netguard, "LOOKUP_TIMEOUT", 0.05)
    with wd.Dispatcher(resolve=resolve) as dispatcher:
        subscription = dispatcher.subscribe("https://slow.example.test/in")
        assert started.wait(10)
        assert not release.is_set()  # returned while the lookup was still blocked
        assert dispatcher.subscriptions() == [subscription]


def test_a_slow_lookup_does_not_hang_the_async_face(
    monkeypatch: pytest.MonkeyPatch,
    stuck: tuple[threading.Event, threading.Event, Callable[..., Sequence[str]]],
) -> None:
    started, release, blocking = stuck
    monkeypatch.setattr(netguard, "LOOKUP_TIMEOUT", 0.05)

    async def scenario() -> None:
        never = asyncio.Event()

        async def waits_forever(host: str, port: int) -> list[str]:
            await never.wait()
            return ["10.0.0.5"]

        async with wd.AsyncDispatcher(resolve=waits_forever) as dispatcher:
            await dispatcher.subscribe("https://slow.example.test/in")
            assert len(await dispatcher.subscriptions()) == 1
        # A plain function that blocks runs off the loop, so the bound holds for it too.
        async with wd.AsyncDispatcher(resolve=blocking) as dispatcher:
            await dispatcher.subscribe("https://slow.example.test/in")
            assert started.wait(10)
            assert not release.is_set()
            release.set()  # let the thread end before the loop's executor shuts down

    asyncio.run(scenario())


# -- the command line -----------------------------------------------------------------
def test_cli_add_refuses_localhost_and_the_flag_skips_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WEBHOOK_DISPATCH_STORE", raising=False)
    store = f"sqlite:///{tmp_path / 'cli.db'}"
    code = main(["subscriptions", "add", "http://localhost:9/x", "--store", store])
    captured = capsys.readouterr()
    assert code == 2
    assert "localhost" in captured.err and "127.0.0.1 (Loopback)" in captured.err
    assert "--no-resolve-host" in captured.err and "--allow-private-networks" in captured.err
    with wd.Dispatcher(store) as dispatcher:
        assert dispatcher.subscriptions() == []

    code = main(
        ["subscriptions", "add", "http://localhost:9/x", "--no-resolve-host", "--store", store]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "created subscription" in captured.out
    assert (
        main(
            [
                "subscriptions",
                "add",
                "http://localhost:9/y",
                "--allow-private-networks",
                "--store",
                store,
            ]
        )
        == 0
    )
    capsys.readouterr()
    with wd.Dispatcher(store) as dispatcher:
        assert [s.url for s in dispatcher.subscriptions()] == [
            "http://localhost:9/x",
            "http://localhost:9/y",
        ]
