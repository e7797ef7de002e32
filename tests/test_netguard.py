"""The SSRF guard: address classification, literal spellings, pinning against DNS
rebinding, and what a refused delivery looks like. Names resolve through resolvers the
tests control; nothing leaves 127.0.0.0/8."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import webhook_dispatch as wd
from webhook_dispatch.engine import outcome_from_exception
from webhook_dispatch.netguard import (
    BlockedAddress,
    GuardedResolver,
    NetworkPolicy,
    embedded_ipv4,
    parse_host_literal,
    parse_networks,
    refusal_reason,
)
from webhook_dispatch.transport import HTTPTransport

REFUSED = [
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "100.127.255.255",
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",
    "239.255.255.250",
    "255.255.255.255",
    "240.0.0.1",
    "192.0.2.10",
    "198.51.100.7",
    "203.0.113.9",
    "198.18.0.1",
    "198.19.255.255",
    "192.0.0.8",
    "::",
    "::1",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "fec0::1",
    "ff02::1",
    "2001:db8::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::1",
    "2002:7f00:1::1",
    "2002:c0a8:101::1",
    "2002:808:808::1",  # 6to4 is refused whatever it carries (not globally reachable)
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    "::127.0.0.1",
]
ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.128.0.1",
    "172.32.0.1",
    "192.169.0.1",
    "2606:4700:4700::1111",
    "2a00:1450:4001::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
]


@pytest.mark.parametrize("text", REFUSED)
def test_refused_addresses(text: str) -> None:
    address = ipaddress.ip_address(text)
    assert refusal_reason(address) is not None
    assert NetworkPolicy().check_address(address) is not None
    assert NetworkPolicy(allow_private_networks=True).check_address(address) is None


@pytest.mark.parametrize("text", ALLOWED)
def test_public_addresses_are_allowed(text: str) -> None:
    assert refusal_reason(ipaddress.ip_address(text)) is None


def test_reasons_name_the_range() -> None:
    assert refusal_reason(ipaddress.ip_address("127.0.0.1")) == "Loopback"
    assert "metadata" in str(refusal_reason(ipaddress.ip_address("169.254.169.254")))
    assert refusal_reason(ipaddress.ip_address("100.64.1.1")) == "Shared Address Space"
    assert "embedded in IPv6" in str(refusal_reason(ipaddress.ip_address("::ffff:10.0.0.1")))


# Every block of the IANA IPv4 and IPv6 Special-Purpose Address Registries, with an
# address in it and the reason (the block's registry name) the guard must give; blocks
# the registries call globally reachable are in REGISTRY_REACHABLE instead.
REGISTRY_REFUSED = [
    ("0.0.0.1", '"This network"'),
    ("0.255.255.255", '"This network"'),
    ("0.0.0.0", '"This host on this network"'),
    ("10.0.0.1", "Private-Use"),
    ("10.255.255.255", "Private-Use"),
    ("100.64.0.1", "Shared Address Space"),
    ("100.127.255.255", "Shared Address Space"),
    ("127.0.0.1", "Loopback"),
    ("127.255.255.255", "Loopback"),
    ("169.254.0.1", "Link Local"),
    ("169.254.255.255", "Link Local"),
    ("172.16.0.1", "Private-Use"),
    ("172.31.255.255", "Private-Use"),
    ("192.0.0.8", "IPv4 dummy address"),
    ("192.0.0.1", "IPv4 Service Continuity Prefix"),
    ("192.0.0.7", "IPv4 Service Continuity Prefix"),
    ("192.0.0.11", "IETF Protocol Assignments"),
    ("192.0.0.255", "IETF Protocol Assignments"),
    ("192.0.0.170", "NAT64/DNS64 Discovery"),
    ("192.0.0.171", "NAT64/DNS64 Discovery"),
    ("192.0.2.1", "Documentation (TEST-NET-1)"),
    ("192.88.99.1", "Deprecated (6to4 Relay Anycast)"),
    ("192.88.99.2", "6a44-relay anycast address"),
    ("192.88.99.255", "Deprecated (6to4 Relay Anycast)"),
    ("192.168.0.1", "Private-Use"),
    ("198.18.0.1", "Benchmarking"),
    ("198.19.255.255", "Benchmarking"),
    ("198.51.100.1", "Documentation (TEST-NET-2)"),
    ("203.0.113.1", "Documentation (TEST-NET-3)"),
    ("240.0.0.1", "Reserved"),
    ("255.255.255.254", "Reserved"),
    ("255.255.255.255", "Limited Broadcast"),
    ("::1", "Loopback Address"),
    ("::", "Unspecified Address"),
    ("::ffff:10.0.0.1", "Private-Use, embedded in IPv6"),
    ("::ffff:127.0.0.1", "Loopback, embedded in IPv6"),
    ("64:ff9b::a00:1", "Private-Use, embedded in IPv6"),
    ("64:ff9b:1::1", "IPv4-IPv6 Translat."),
    ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", "IPv4-IPv6 Translat."),
    ("100::1", "Discard-Only Address Block"),
    ("100::ffff:ffff:ffff:ffff", "Discard-Only Address Block"),
    ("100:0:0:1::1", "Dummy IPv6 Prefix"),
    ("2001:1::4", "IETF Protocol Assignments"),
    ("2001:1ff:ffff::1", "IETF Protocol Assignments"),
    ("2001::1", "TEREDO"),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "TEREDO"),
    ("2001:2::1", "Benchmarking"),
    ("2001:10::1", "Deprecated (previously ORCHID)"),
    ("2001:db8::1", "Documentation"),
    ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "Documentation"),
    ("2002::1", "6to4"),
    ("2002:808:808::1", "6to4"),
    ("3fff::1", "Documentation"),
    ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", "Documentation"),
    ("5f00::1", "Segment Routing (SRv6) SIDs"),
    ("fc00::1", "Unique-Local"),
    ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "Unique-Local"),
    ("fe80::1", "Link-Local Unicast"),
    ("febf:ffff::1", "Link-Local Unicast"),
]
# The library's own refusals beyond those registries.
OWN_REFUSED = [
    ("224.0.0.1", "Multicast"),
    ("239.255.255.250", "Multicast"),
    ("ff02::1", "Multicast"),
    ("ff0e::1", "Multicast"),
    ("169.254.169.254", "Link Local (cloud metadata service)"),
    ("100.100.100.200", "Shared Address Space (Alibaba Cloud metadata service)"),
    ("fd00:ec2::254", "Unique-Local (AWS metadata service)"),
    ("::127.0.0.1", "IPv4-compatible Address (deprecated)"),
    ("::8.8.8.8", "IPv4-compatible Address (deprecated)"),
    ("fec0::1", "Site-Local (deprecated)"),
    ("::2:0:0:1", "Reserved by IETF"),
    ("100:0:0:2::1", "Reserved by IETF"),
    ("400::1", "Reserved by IETF"),
    ("1fff::1", "Reserved by IETF"),
    ("4000::1", "Reserved by IETF"),
    ("e000::1", "Reserved by IETF"),
    ("fe00::1", "Reserved by IETF"),
]
REGISTRY_REACHABLE = [
    "192.0.0.9",  # Port Control Protocol Anycast
    "192.0.0.10",  # Traversal Using Relays around NAT Anycast
    "192.31.196.1",  # AS112-v4
    "192.52.193.1",  # AMT
    "192.175.48.1",  # Direct Delegation AS112 Service
    "64:ff9b::808:808",  # IPv4-IPv6 Translat. (NAT64), judged by 8.8.8.8 inside
    "2001:1::1",  # Port Control Protocol Anycast
    "2001:1::2",  # Traversal Using Relays around NAT Anycast
    "2001:1::3",  # DNS-SD Service Registration Protocol Anycast
    "2001:3::1",  # AMT
    "2001:4:112::1",  # AS112-v6
    "2001:20::1",  # ORCHIDv2
    "2001:30::1",  # Drone Remote ID Protocol Entity Tags (DETs) Prefix
    "2620:4f:8000::1",  # Direct Delegation AS112 Service
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "2a00:1450:4001::200e", "::ffff:8.8.8.8"]


@pytest.mark.parametrize(("text", "reason"), REGISTRY_REFUSED + OWN_REFUSED)
def test_every_special_purpose_block_is_refused_with_its_name(text: str, reason: str) -> None:
    address = ipaddress.ip_address(text)
    assert refusal_reason(address) == reason
    assert NetworkPolicy().check_address(address) == reason


@pytest.mark.parametrize("text", REGISTRY_REACHABLE + PUBLIC)
def test_globally_reachable_blocks_and_public_addresses_are_allowed(text: str) -> None:
    assert refusal_reason(ipaddress.ip_address(text)) is None


def test_the_verdict_does_not_ask_pythons_ipaddress_flags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The flags (is_private, is_global, ...) change between Python versions (3fff::/20
    is allowed by 3.11's): the guard must not consult them at all."""

    def consulted(self: object) -> bool:
        raise AssertionError("the guard consulted a version-dependent ipaddress flag")

    for cls in (ipaddress.IPv4Address, ipaddress.IPv6Address):
        for flag in (
            "is_private",
            "is_global",
            "is_reserved",
            "is_multicast",
            "is_loopback",
            "is_link_local",
            "is_unspecified",
        ):
            monkeypatch.setattr(cls, flag, property(consulted))
    for text, reason in REGISTRY_REFUSED + OWN_REFUSED:
        assert refusal_reason(ipaddress.ip_address(text)) == reason
    for text in REGISTRY_REACHABLE + PUBLIC:
        assert refusal_reason(ipaddress.ip_address(text)) is None


@settings(max_examples=300, deadline=None)
@given(value=st.integers(min_value=0, max_value=2**32 - 1))
def test_mapped_and_nat64_spellings_get_the_ipv4_verdict(value: int) -> None:
    inner = ipaddress.IPv4Address(value)
    expected = refusal_reason(inner)
    for spelled in (ipaddress.IPv6Address(0xFFFF << 32 | value), _nat64(value)):
        reason = refusal_reason(spelled)
        assert reason == (None if expected is None else f"{expected}, embedded in IPv6")


def _nat64(value: int) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | value)


@settings(max_examples=300, deadline=None)
@given(value=st.integers(min_value=0, max_value=2**128 - 1))
def test_outside_global_unicast_only_ipv4_spellings_can_be_allowed(value: int) -> None:
    address = ipaddress.IPv6Address(value)
    spells_ipv4 = address.ipv4_mapped is not None or address in _NAT64_BLOCK
    if address not in _GLOBAL_UNICAST and not spells_ipv4:
        assert refusal_reason(address) is not None


_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_NAT64_BLOCK = ipaddress.ip_network("64:ff9b::/96")


def test_embedded_ipv4() -> None:
    def embedded(text: str) -> str:
        return str(embedded_ipv4(ipaddress.IPv6Address(text)))

    assert embedded("::ffff:7f00:1") == "127.0.0.1"
    assert embedded("64:ff9b::a00:1") == "10.0.0.1"
    assert embedded("2002:a00:1::") == "10.0.0.1"
    assert embedded_ipv4(ipaddress.IPv6Address("2606:4700::1")) is None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7F000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("::1", "::1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("8.8.8.8", "8.8.8.8"),
    ],
)
def test_literal_spellings(host: str, expected: str) -> None:
    assert str(parse_host_literal(host)) == expected


@pytest.mark.parametrize(
    "host", ["example.com", "0x7g.1", "256.1.1.1", "1.2.3.4.5", "08.1.1.1", "", "a.1"]
)
def test_names_are_not_literals(host: str) -> None:
    assert parse_host_literal(host) is None


def test_allowed_networks_open_only_their_range() -> None:
    policy = NetworkPolicy(allowed_networks=parse_networks(["10.1.0.0/16", "fd00::/8"]))
    assert policy.check_address(ipaddress.ip_address("10.1.2.3")) is None
    assert policy.check_address(ipaddress.ip_address("::ffff:10.1.2.3")) is None
    assert policy.check_address(ipaddress.ip_address("fd00::5")) is None
    assert policy.check_address(ipaddress.ip_address("10.2.0.1")) is not None
    assert policy.check_address(ipaddress.ip_address("127.0.0.1")) is not None


@pytest.mark.parametrize(
    "networks", ["10.0.0.0/8", ["10.0.0.1/8"], ["10.0.0.0/33"], ["not a network"], [10], None]
)
def test_bad_allowed_networks(networks: object) -> None:
    with pytest.raises(wd.ConfigurationError):
        wd.Dispatcher(allowed_networks=networks)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://017700000001/",
        "http://127.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[fd00::1]/",
        "http://0.0.0.0:8080/",
    ],
)
def test_literal_urls_are_refused_at_subscribe(url: str) -> None:
    with wd.Dispatcher() as dispatcher:
        with pytest.raises(wd.InvalidURL, match="network guard"):
            dispatcher.subscribe(url)
        assert dispatcher.subscriptions() == []
    with wd.Dispatcher(allow_private_networks=True) as open_dispatcher:
        open_dispatcher.subscribe(url)


def test_allowed_networks_open_a_literal_at_subscribe() -> None:
    with wd.Dispatcher(allowed_networks=["10.0.0.0/8"]) as dispatcher:
        dispatcher.subscribe("http://10.1.2.3/hook")
        with pytest.raises(wd.InvalidURL):
            dispatcher.subscribe("http://192.168.0.1/hook")


def test_https_only_refuses_http_at_subscribe() -> None:
    with wd.Dispatcher(https_only=True) as dispatcher:
        with pytest.raises(wd.InvalidURL, match="https"):
            dispatcher.subscribe("http://example.com/hook")
        dispatcher.subscribe("https://example.com/hook")


# -- real sockets ----------------------------------------------------------------------
class _Recorder(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.hits += 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        return None


def _serve(host: str, port: int = 0) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer((host, port), _Recorder)
    server.daemon_threads = True
    server.hits = 0  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def good_and_bad() -> Iterator[tuple[http.server.ThreadingHTTPServer, socket.socket, int]]:
    """A receiver on 127.0.0.2 and, on the same port of 127.0.0.1, a listener that must
    never see a connection."""
    good = _serve("127.0.0.2")
    port = good.server_address[1]
    bad = socket.create_server(("127.0.0.1", port))
    bad.setblocking(False)
    try:
        yield good, bad, port
    finally:
        good.shutdown()
        good.server_close()
        bad.close()


def _bad_was_contacted(bad: socket.socket) -> bool:
    try:
        connection, _ = bad.accept()
    except BlockingIOError:
        return False
    connection.close()
    return True


def _resolver(*answers: list[str]) -> tuple[list[str], object]:
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return answers[min(len(calls), len(answers)) - 1]

    return calls, resolve


def test_name_resolving_to_loopback_is_blocked_and_not_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="webhook_dispatch")
    server = _serve("127.0.0.1")
    try:
        port = server.server_address[1]
        calls, resolve = _resolver(["127.0.0.1"])
        transport = HTTPTransport(network_policy=NetworkPolicy(), resolve=resolve)  # type: ignore[arg-type]
        with wd.Dispatcher(transport=transport, retry=wd.RetryPolicy.fixed([0, 0, 0])) as d:
            d.subscribe(f"http://hooks.internal.test:{port}/hook")
            message = d.publish("order.created", {"id": 1})
            assert d.run_until_idle() == 1
            [attempt] = d.attempts(message.id)
            [delivery] = d.deliveries(message_id=message.id)
        assert attempt.error_kind is wd.ErrorKind.BLOCKED
        assert attempt.status_code is None
        assert "blocked address" in str(attempt.error)
        assert "hooks.internal.test" in str(attempt.error) and "127.0.0.1" in str(attempt.error)
        assert attempt.error == (
            "BlockedAddress: blocked address: hooks.internal.test resolves to 127.0.0.1 "
            "(Loopback), refused by the network guard"
        )
        assert delivery.status is wd.DeliveryStatus.FAILED
        assert calls == ["hooks.internal.test"]
        assert server.hits == 0  # type: ignore[attr-defined]
        [warning] = [r for r in caplog.records if "network guard" in r.getMessage()]
        assert warning.levelno == logging.WARNING
        text = warning.getMessage()
        assert attempt.subscription_id in text and "127.0.0.1 (Loopback)" in text
        assert "allow_private_networks=True" in text and "--allow-private-networks" in text
    finally:
        server.shutdown()
        server.server_close()


def test_blocked_through_the_httpx_interface_is_recorded_the_same_way() -> None:
    """With auth= the attempt goes through `handle_async_request` (an auth flow), not the
    bytes fast path: the guard's refusal is recorded identically."""
    server = _serve("127.0.0.1")
    try:
        port = server.server_address[1]
        _, resolve = _resolver(["127.0.0.1"])
        transport = HTTPTransport(network_policy=NetworkPolicy(), resolve=resolve)  # type: ignore[arg-type]
        with wd.Dispatcher(transport=transport) as d:
            d.subscribe(f"http://hooks.internal.test:{port}/hook", auth=wd.BearerToken("t" * 24))
            message = d.publish("order.created", {"id": 1})
            d.run_until_idle()
            [attempt] = d.attempts(message.id)
            [delivery] = d.deliveries(message_id=message.id)
        assert attempt.error_kind is wd.ErrorKind.BLOCKED
        assert attempt.error == (
            "BlockedAddress: blocked address: hooks.internal.test resolves to 127.0.0.1 "
            "(Loopback), refused by the network guard"
        )
        assert delivery.status is wd.DeliveryStatus.FAILED
        assert server.hits == 0  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def test_a_users_httpx_client_over_the_transport_gets_a_library_error() -> None:
    """BlockedAddress is in the library's tree (and a ConnectionError), so callers catch
    it with the library's other errors; it passes through httpx's client unchanged."""
    _, resolve = _resolver(["10.0.0.1", "169.254.169.254"])
    transport = HTTPTransport(network_policy=NetworkPolicy(), resolve=resolve)  # type: ignore[arg-type]

    async def scenario() -> BaseException:
        async with httpx.AsyncClient(transport=transport) as client:
            try:
                await client.post("http://metadata.test/latest", content=b"{}")
            except Exception as exc:
                return exc
        raise AssertionError("the request was sent")

    error = asyncio.run(scenario())
    assert isinstance(error, BlockedAddress)
    assert isinstance(error, wd.WebhookDispatchError)
    assert isinstance(error, ConnectionError)
    assert error.host == "metadata.test"
    assert error.refused == (
        ("10.0.0.1", "Private-Use"),
        ("169.254.169.254", "Link Local (cloud metadata service)"),
    )


def test_name_resolving_to_loopback_is_allowed_with_the_option() -> None:
    server = _serve("127.0.0.1")
    try:
        port = server.server_address[1]
        _, resolve = _resolver(["127.0.0.1"])
        policy = NetworkPolicy(allow_private_networks=True)
        transport = HTTPTransport(network_policy=policy, resolve=resolve)  # type: ignore[arg-type]
        with wd.Dispatcher(transport=transport) as d:
            d.subscribe(f"http://hooks.internal.test:{port}/hook")
            message = d.publish("order.created", {"id": 1})
            d.run_until_idle()
            [attempt] = d.attempts(message.id)
        assert attempt.status_code == 200
        assert server.hits == 1  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


async def _post(transport: HTTPTransport, url: str) -> int:
    response = await transport.handle_async_request(httpx.Request("POST", url, content=b"{}"))
    await response.aread()
    await response.aclose()
    return response.status_code


def test_rebinding_cannot_reach_a_refused_address(
    good_and_bad: tuple[http.server.ThreadingHTTPServer, socket.socket, int],
) -> None:
    good, bad, port = good_and_bad
    # First lookup: an allowed address; every later one: loopback (the rebinding attack).
    calls, resolve = _resolver(["127.0.0.2"], ["127.0.0.1"])
    policy = NetworkPolicy(allowed_networks=parse_networks(["127.0.0.2/32"]))
    transport = HTTPTransport(network_policy=policy, resolve=resolve)  # type: ignore[arg-type]
    url = f"http://rebind.test:{port}/hook"

    async def scenario() -> None:
        assert await _post(transport, url) == 200
        await transport.aclose()  # a fresh pool and DNS cache: the name is looked up again
        with pytest.raises(BlockedAddress, match=r"127\.0\.0\.1"):
            await _post(transport, url)
        await transport.aclose()

    asyncio.run(scenario())
    assert len(calls) == 2
    assert good.hits == 1  # type: ignore[attr-defined]
    assert not _bad_was_contacted(bad)


def test_mixed_answers_connect_only_to_allowed_addresses(
    good_and_bad: tuple[http.server.ThreadingHTTPServer, socket.socket, int],
) -> None:
    good, bad, port = good_and_bad
    _, resolve = _resolver(["127.0.0.1", "127.0.0.2", "127.0.0.1"])
    policy = NetworkPolicy(allowed_networks=parse_networks(["127.0.0.2/32"]))
    transport = HTTPTransport(network_policy=policy, resolve=resolve)  # type: ignore[arg-type]

    async def scenario() -> None:
        for _ in range(5):
            assert await _post(transport, f"http://mixed.test:{port}/hook") == 200
            await transport.aclose()

    asyncio.run(scenario())
    assert good.hits == 5  # type: ignore[attr-defined]
    assert not _bad_was_contacted(bad)


def test_refuse_mixed_answers_blocks_the_whole_name_at_delivery(
    good_and_bad: tuple[http.server.ThreadingHTTPServer, socket.socket, int],
) -> None:
    """The stricter rule, through the dispatcher option: a name with one refused address
    is refused at subscribe and, when stored anyway, at delivery; nothing is contacted."""
    good, bad, port = good_and_bad
    calls, resolve = _resolver(["127.0.0.1", "127.0.0.2"])
    url = f"http://mixed.test:{port}/hook"
    options = wd.DispatcherOptions(
        allowed_networks=["127.0.0.2/32"], refuse_mixed_answers=True, resolve=resolve
    )
    with wd.Dispatcher(options=options) as dispatcher:
        with pytest.raises(wd.BlockedEndpoint) as refused:
            dispatcher.subscribe(url)
        assert refused.value.refused == (("127.0.0.1", "Loopback"),)
        dispatcher.subscribe(url, resolve_host=False)
        message = dispatcher.publish("order.created", {"id": 1})
        dispatcher.run_until_idle()
        [attempt] = dispatcher.attempts(message.id)
        [delivery] = dispatcher.deliveries(message_id=message.id)
    assert attempt.error_kind is wd.ErrorKind.BLOCKED
    assert attempt.error == (
        "BlockedAddress: blocked: mixed.test: resolves to 127.0.0.1 (Loopback) besides 1 "
        "allowed address, and refuse_mixed_answers refuses a name with any refused address"
    )
    assert delivery.status is wd.DeliveryStatus.FAILED
    assert len(calls) == 2  # subscribe's check, then the attempt
    assert good.hits == 0  # type: ignore[attr-defined]
    assert not _bad_was_contacted(bad)


def test_by_default_a_mixed_answer_is_delivered_to_its_allowed_address(
    good_and_bad: tuple[http.server.ThreadingHTTPServer, socket.socket, int],
) -> None:
    good, bad, port = good_and_bad
    _, resolve = _resolver(["127.0.0.1", "127.0.0.2"])
    with wd.Dispatcher(allowed_networks=["127.0.0.2/32"], resolve=resolve) as dispatcher:
        dispatcher.subscribe(f"http://mixed.test:{port}/hook")
        message = dispatcher.publish("order.created", {"id": 1})
        dispatcher.run_until_idle()
        [attempt] = dispatcher.attempts(message.id)
    assert attempt.status_code == 200
    assert good.hits == 1  # type: ignore[attr-defined]
    assert not _bad_was_contacted(bad)


@pytest.mark.parametrize(
    ("answer", "lenient", "strict"),
    [
        (["8.8.8.8"], ["8.8.8.8"], ["8.8.8.8"]),
        (["8.8.8.8", "10.0.0.1"], ["8.8.8.8"], None),
        (["3fff::1", "2606:4700::1111"], ["2606:4700::1111"], None),
        (["::ffff:10.0.0.1", "1.1.1.1", "8.8.8.8"], ["1.1.1.1", "8.8.8.8"], None),
        (["10.0.0.1"], None, None),
    ],
)
def test_guarded_resolver_under_both_rules(
    answer: list[str], lenient: list[str] | None, strict: list[str] | None
) -> None:
    for policy, expected in (
        (NetworkPolicy(), lenient),
        (NetworkPolicy(refuse_mixed_answers=True), strict),
    ):
        _, resolve = _resolver(answer)
        resolver = GuardedResolver(policy, resolve)  # type: ignore[arg-type]
        if expected is None:
            with pytest.raises(BlockedAddress) as caught:
                asyncio.run(resolver.resolve("mixed.test", 443))
            refused = [address for address, _ in caught.value.refused]
            parsed = [ipaddress.ip_address(text) for text in answer]
            assert refused == [str(address) for address in parsed if refusal_reason(address)]
        else:
            assert asyncio.run(resolver.resolve("mixed.test", 443)) == expected


def test_the_option_reaches_the_network_policy() -> None:
    assert wd.DispatcherOptions().network_policy.refuse_mixed_answers is False
    options = wd.DispatcherOptions(refuse_mixed_answers=True)
    assert options.network_policy.refuse_mixed_answers is True


def test_guarded_resolver_returns_only_allowed_addresses() -> None:
    calls, resolve = _resolver(["8.8.8.8", "10.0.0.1", "2001:4860:4860::8888", "::1"])
    resolver = GuardedResolver(NetworkPolicy(), resolve)  # type: ignore[arg-type]
    results = asyncio.run(resolver.resolve("api.example.com.", 443))
    assert results == ["8.8.8.8", "2001:4860:4860::8888"]
    assert calls == ["api.example.com"]  # looked up once, without the trailing dot


def test_guarded_resolver_refusing_every_address_names_them() -> None:
    _, resolve = _resolver(["10.0.0.1", "169.254.169.254"])
    resolver = GuardedResolver(NetworkPolicy(), resolve)  # type: ignore[arg-type]
    with pytest.raises(BlockedAddress, match=r"10\.0\.0\.1.*169\.254\.169\.254"):
        asyncio.run(resolver.resolve("metadata.test", 80))


def test_literal_ip_subscription_from_an_open_dispatcher_is_blocked_by_a_guarded_one(
    tmp_path: Path,
) -> None:
    """IP-literal hosts never reach the resolver: the transport checks them itself."""
    server = _serve("127.0.0.1")
    store = f"sqlite:///{tmp_path / 'hooks.db'}"
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        with wd.Dispatcher(store, allow_private_networks=True) as d:
            d.subscribe(url)
        with wd.Dispatcher(store) as guarded:
            message = guarded.publish("order.created", {"id": 1})
            guarded.run_until_idle()
            [attempt] = guarded.attempts(message.id)
        assert attempt.error_kind is wd.ErrorKind.BLOCKED
        assert server.hits == 0  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def test_https_only_blocks_an_http_subscription_at_delivery(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'hooks.db'}"
    with wd.Dispatcher(store) as d:
        d.subscribe("http://hooks.example.com/hook")
    with wd.Dispatcher(store, https_only=True) as strict:
        message = strict.publish("order.created", {"id": 1})
        strict.run_until_idle()
        [attempt] = strict.attempts(message.id)
        [delivery] = strict.deliveries(message_id=message.id)
    assert attempt.error_kind is wd.ErrorKind.BLOCKED
    assert "https_only" in str(attempt.error)
    assert attempt.error == (
        "BlockedAddress: blocked: hooks.example.com: only https endpoints are allowed (https_only)"
    )
    assert delivery.status is wd.DeliveryStatus.FAILED


def test_blocked_is_classified_as_not_retried() -> None:
    outcome = outcome_from_exception(BlockedAddress("h", [("127.0.0.1", "loopback")]))
    assert outcome.error_kind is wd.ErrorKind.BLOCKED
