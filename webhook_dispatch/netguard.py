"""The SSRF guard: which IP addresses an endpoint may be reached at, and a resolver that
pins every connection to an address that was checked.

Classification is pure (`refusal_reason`, `NetworkPolicy.check_address`); `GuardedResolver`
resolves a name once, drops refused addresses and hands the transport only the allowed ones, so
the address connected to is the address checked and DNS rebinding has nothing to slip into.
`check_resolved_host` (and its async twin) asks the same question ahead of time, when an
endpoint is registered, within a time bound.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import ipaddress
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Union

import attrs
import httpx

from .errors import BlockedAddress, ConfigurationError

# BlockedAddress lives in the error tree (`errors`); it is exported here too, beside the
# guard that raises it, where it was first defined.
__all__ = [
    "BlockedAddress",
    "GuardedResolver",
    "IPAddress",
    "IPNetwork",
    "LOOKUP_TIMEOUT",
    "NetworkPolicy",
    "ResolveFunction",
    "check_literal_host",
    "check_resolved_host",
    "check_resolved_host_async",
    "embedded_ipv4",
    "parse_host_literal",
    "parse_networks",
    "refusal_reason",
]

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]  # noqa: UP007
"""An IPv4 or IPv6 address."""

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]  # noqa: UP007
"""An IPv4 or IPv6 network (CIDR)."""

ResolveFunction = Callable[[str, int], Union[Sequence[str], Awaitable[Sequence[str]]]]  # noqa: UP007
"""``resolve(host, port) -> ["192.0.2.1", ...]`` (or an awaitable of it): a name lookup
`GuardedResolver` can use instead of the system resolver (tests inject one)."""

LOOKUP_TIMEOUT = 2.0
"""Seconds `check_resolved_host` waits for a name's addresses; a name that takes longer
is treated as one that does not resolve."""


def _networks(*specs: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(cidr), reason) for cidr, reason in specs)


# Checked in order; the first match names the reason. Python's is_private/is_global
# changed between versions, so the ranges are spelled out here.
_REFUSED_V4 = _networks(
    ("0.0.0.0/8", "unspecified ('this network')"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "carrier-grade NAT (RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
)
_REFUSED_V6 = _networks(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("100::/64", "discard-only"),
    ("2001:db8::/32", "documentation"),
    ("2001:2::/48", "benchmarking"),
    ("2001:10::/28", "ORCHID"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_TEREDO = ipaddress.ip_network("2001::/32")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if any: IPv4-mapped (``::ffff:a.b.c.d``),
    NAT64 (``64:ff9b::/96``), 6to4 (``2002::/16``) or Teredo (``2001::/32``, the client)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _TEREDO and address.teredo is not None:
        return address.teredo[1]
    return None


def refusal_reason(address: IPAddress) -> str | None:
    """Why the guard refuses ``address`` by default (``"loopback"``, ...), or None if it is
    a public unicast address. IPv6 addresses embedding an IPv4 one are judged by it."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            reason = refusal_reason(inner)
            return None if reason is None else f"{reason}, embedded in IPv6"
        table = _REFUSED_V6
    else:
        table = _REFUSED_V4
    for network, reason in table:
        if address in network:
            return reason
    if address.is_reserved or address.is_multicast or not address.is_global:
        return "reserved or not globally routable"
    return None


def _inet_aton_part(text: str) -> int | None:
    if not text:
        return None
    try:
        if text[:2].lower() == "0x":
            return int(text[2:], 16) if text[2:] else 0
        if len(text) > 1 and text.startswith("0"):
            return int(text[1:], 8)
        return int(text, 10) if text.isdigit() else None
    except ValueError:
        return None


def parse_host_literal(host: str) -> IPAddress | None:
    """The IP address a URL host spells, in any form a C resolver accepts, or None for a
    name. Beyond dotted quads and IPv6 (brackets optional) this reads the inet_aton forms:
    ``2130706433``, ``0x7f.1``, ``017700000001``, ``127.1`` all mean 127.0.0.1."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.rstrip(".") if ":" not in text else text
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text.partition("%")[0])
        except ValueError:
            return None
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers = [_inet_aton_part(part) for part in parts]
    if any(number is None for number in numbers):
        return None
    values = [number for number in numbers if number is not None]
    # a, a.b (8.24 bits), a.b.c (8.8.16 bits), a.b.c.d: the last part fills the rest.
    last_bits = 32 - 8 * (len(values) - 1)
    if any(value > 255 for value in values[:-1]) or values[-1] >= 1 << last_bits:
        return None
    value = 0
    for number in values[:-1]:
        value = (value << 8) | number
    value = (value << last_bits) | values[-1]
    return ipaddress.IPv4Address(value)


def parse_networks(networks: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse CIDR strings (``"10.0.0.0/8"``, ``"fd00::/8"``, a bare address for one host).

    Raises `ConfigurationError` for anything else, including a lone string (it would be
    read character by character) and networks with host bits set.
    """
    if isinstance(networks, (str, bytes)) or not isinstance(networks, Iterable):
        raise ConfigurationError(
            "allowed_networks must be a list of CIDR strings such as ['10.0.0.0/8']"
        )
    parsed: list[IPNetwork] = []
    for network in networks:
        if not isinstance(network, str):
            raise ConfigurationError(
                f"allowed_networks entries must be str, got {type(network).__name__}"
            )
        try:
            parsed.append(ipaddress.ip_network(network.strip(), strict=True))
        except ValueError as error:
            shown = network if len(network) <= 60 else network[:60] + "..."
            raise ConfigurationError(
                f"allowed_networks entry {shown!r} is not a CIDR network: {error}"
            ) from None
    return tuple(parsed)


@attrs.frozen
class NetworkPolicy:
    """Which addresses deliveries may connect to.

    By default every address `refusal_reason` names is refused. ``allowed_networks``
    opens chosen CIDRs (an internal endpoint, a test server); ``allow_private_networks``
    turns the address check off. ``https_only`` refuses plain-http endpoints.
    """

    allow_private_networks: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()
    https_only: bool = False

    @property
    def checks_addresses(self) -> bool:
        """False when every address is allowed (``allow_private_networks``)."""
        return not self.allow_private_networks

    def check_address(self, address: IPAddress) -> str | None:
        """None if ``address`` may be connected to, else why not."""
        if self.allow_private_networks:
            return None
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address):
            inner = embedded_ipv4(address)
            if inner is not None:
                candidates.append(inner)
        for network in self.allowed_networks:
            if any(c.version == network.version and c in network for c in candidates):
                return None
        return refusal_reason(address)

    def check_scheme(self, scheme: str) -> str | None:
        """None if a URL with ``scheme`` may be used, else why not."""
        if self.https_only and scheme != "https":
            return "only https endpoints are allowed (https_only)"
        return None


def check_literal_host(host: str, policy: NetworkPolicy) -> None:
    """Raise `BlockedAddress` when ``host`` is an IP literal (any spelling) that ``policy``
    refuses; names pass (they are checked once resolved)."""
    literal = parse_host_literal(host)
    if literal is None:
        return
    reason = policy.check_address(literal)
    if reason is not None:
        raise BlockedAddress(host, [(str(literal), reason)])


class GuardedResolver:
    """Resolves a host name once and returns only the addresses ``policy`` allows.

    The lookup goes through ``resolve`` when given, else the event loop's resolver;
    refused addresses are dropped and the transport connects to one of those returned,
    so the address checked is the address used. If none is allowed it raises
    `BlockedAddress`, naming the host and the refused addresses.
    """

    def __init__(self, policy: NetworkPolicy, resolve: ResolveFunction | None = None) -> None:
        self._policy = policy
        self._resolve = resolve

    async def _lookup(self, host: str, port: int) -> Sequence[str]:
        literal = parse_host_literal(host)
        if literal is not None:
            return [str(literal)]
        if self._resolve is not None:
            found = self._resolve(host, port)
            return await found if isinstance(found, Awaitable) else found
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpx.ConnectError(f"cannot resolve {host}: {exc}") from exc
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def resolve(self, host: str, port: int = 0) -> list[str]:
        """Resolve ``host`` once and return only its allowed addresses."""
        name = host.rstrip(".") or host
        allowed, refused = _screen(self._policy, await self._lookup(name, port))
        if not allowed:
            if not refused:
                raise httpx.ConnectError(f"{name} did not resolve to any address")
            raise BlockedAddress(name, refused)
        return allowed


def _screen(
    policy: NetworkPolicy, addresses: Iterable[str]
) -> tuple[list[str], list[tuple[str, str]]]:
    """``addresses`` split into those ``policy`` allows and ``(address, why)`` for the rest."""
    allowed: list[str] = []
    refused: list[tuple[str, str]] = []
    for text in addresses:
        address = ipaddress.ip_address(text)
        reason = policy.check_address(address)
        if reason is None:
            allowed.append(str(address))
        else:
            refused.append((str(address), reason))
    return allowed, refused


def _name_to_check(host: str, policy: NetworkPolicy) -> str | None:
    """The name `check_resolved_host` looks up, or None when there is nothing to look up
    (the guard is off, or ``host`` is an IP literal: `check_literal_host` judges those)."""
    if not policy.checks_addresses or parse_host_literal(host) is not None:
        return None
    return host.rstrip(".") or host


def _judge(name: str, addresses: Sequence[str], policy: NetworkPolicy) -> None:
    """Raise `BlockedAddress` when every one of ``addresses`` is refused, as the guard
    would refuse the connection (an empty answer is a name that does not resolve)."""
    allowed, refused = _screen(policy, addresses)
    if refused and not allowed:
        raise BlockedAddress(name, refused)


async def _awaited(found: Awaitable[Sequence[str]]) -> Sequence[str]:
    return await found


def _lookup_blocking(name: str, port: int, resolve: ResolveFunction | None) -> Sequence[str]:
    if resolve is None:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))
    found = resolve(name, port)
    return asyncio.run(_awaited(found)) if isinstance(found, Awaitable) else found


async def _lookup_async(name: str, port: int, resolve: ResolveFunction | None) -> Sequence[str]:
    if resolve is None:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))
    found: Sequence[str] | Awaitable[Sequence[str]]
    if inspect.iscoroutinefunction(resolve):
        found = resolve(name, port)
    else:  # a plain function may block: off the loop, so the time bound holds
        call: Callable[[str, int], Sequence[str] | Awaitable[Sequence[str]]] = resolve
        found = await asyncio.to_thread(call, name, port)
    return await found if isinstance(found, Awaitable) else found


def check_resolved_host(
    host: str,
    policy: NetworkPolicy,
    *,
    port: int = 0,
    resolve: ResolveFunction | None = None,
    timeout: float | None = None,
) -> None:
    """Raise `BlockedAddress` when the name ``host`` resolves only to addresses ``policy``
    refuses, so that the guard would refuse every connection to it.

    Returns quietly when some address is allowed, when the name does not resolve (it may
    resolve where the worker runs) and when no answer comes within ``timeout`` seconds
    (default `LOOKUP_TIMEOUT`): the lookup runs on a daemon thread, which is left to
    finish on its own. IP literals and a policy that checks nothing are not looked up.
    ``resolve`` replaces the system resolver, as in `GuardedResolver`.
    """
    name = _name_to_check(host, policy)
    if name is None:
        return
    answer: concurrent.futures.Future[Sequence[str]] = concurrent.futures.Future()

    def lookup() -> None:
        try:
            answer.set_result(_lookup_blocking(name, port, resolve))
        except BaseException as exc:  # handed to the waiting caller
            answer.set_exception(exc)

    threading.Thread(target=lookup, name="webhook-dispatch-lookup", daemon=True).start()
    try:
        addresses = answer.result(LOOKUP_TIMEOUT if timeout is None else timeout)
    except (concurrent.futures.TimeoutError, OSError):  # too slow, or not resolvable
        return
    _judge(name, addresses, policy)


async def check_resolved_host_async(
    host: str,
    policy: NetworkPolicy,
    *,
    port: int = 0,
    resolve: ResolveFunction | None = None,
    timeout: float | None = None,
) -> None:
    """`check_resolved_host` on the running event loop (``loop.getaddrinfo``)."""
    name = _name_to_check(host, policy)
    if name is None:
        return
    bound = LOOKUP_TIMEOUT if timeout is None else timeout
    try:
        addresses = await asyncio.wait_for(_lookup_async(name, port, resolve), bound)
    except (asyncio.TimeoutError, OSError):  # too slow, or not resolvable
        return
    _judge(name, addresses, policy)
