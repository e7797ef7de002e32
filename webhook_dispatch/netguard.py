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
from typing import NamedTuple, Union

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
    "judge_addresses",
    "lookup_within",
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


class _Range(NamedTuple):
    """One special-purpose block: its name, and whether the registry calls it globally
    reachable (None: "N/A" or a terminated entry, refused like False)."""

    network: IPNetwork
    name: str
    globally_reachable: bool | None


# The IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890), entry for entry,
# as of 2025-04 (the latest entry, 100:0:0:1::/64): the name is the refusal reason, and
# only entries the registry calls globally reachable are allowed. Spelled out rather
# than taken from ipaddress's is_private/is_global, which differ between Python versions.
_IANA_IPV4 = (
    ("0.0.0.0/8", '"This network"', False),
    ("0.0.0.0/32", '"This host on this network"', False),
    ("10.0.0.0/8", "Private-Use", False),
    ("100.64.0.0/10", "Shared Address Space", False),
    ("127.0.0.0/8", "Loopback", False),
    ("169.254.0.0/16", "Link Local", False),
    ("172.16.0.0/12", "Private-Use", False),
    ("192.0.0.0/24", "IETF Protocol Assignments", False),
    ("192.0.0.0/29", "IPv4 Service Continuity Prefix", False),
    ("192.0.0.8/32", "IPv4 dummy address", False),
    ("192.0.0.9/32", "Port Control Protocol Anycast", True),
    ("192.0.0.10/32", "Traversal Using Relays around NAT Anycast", True),
    ("192.0.0.170/32", "NAT64/DNS64 Discovery", False),
    ("192.0.0.171/32", "NAT64/DNS64 Discovery", False),
    ("192.0.2.0/24", "Documentation (TEST-NET-1)", False),
    ("192.31.196.0/24", "AS112-v4", True),
    ("192.52.193.0/24", "AMT", True),
    ("192.88.99.0/24", "Deprecated (6to4 Relay Anycast)", None),
    ("192.88.99.2/32", "6a44-relay anycast address", False),
    ("192.168.0.0/16", "Private-Use", False),
    ("192.175.48.0/24", "Direct Delegation AS112 Service", True),
    ("198.18.0.0/15", "Benchmarking", False),
    ("198.51.100.0/24", "Documentation (TEST-NET-2)", False),
    ("203.0.113.0/24", "Documentation (TEST-NET-3)", False),
    ("240.0.0.0/4", "Reserved", False),
    ("255.255.255.255/32", "Limited Broadcast", False),
)
_IANA_IPV6 = (
    ("::1/128", "Loopback Address", False),
    ("::/128", "Unspecified Address", False),
    # Judged by the IPv4 address inside before this table is read (see refusal_reason);
    # listed so that nothing in the block is ever allowed by omission.
    ("::ffff:0:0/96", "IPv4-mapped Address", False),
    ("64:ff9b::/96", "IPv4-IPv6 Translat.", True),
    ("64:ff9b:1::/48", "IPv4-IPv6 Translat.", False),
    ("100::/64", "Discard-Only Address Block", False),
    ("100:0:0:1::/64", "Dummy IPv6 Prefix", False),
    ("2001::/23", "IETF Protocol Assignments", False),
    ("2001::/32", "TEREDO", None),
    ("2001:1::1/128", "Port Control Protocol Anycast", True),
    ("2001:1::2/128", "Traversal Using Relays around NAT Anycast", True),
    ("2001:1::3/128", "DNS-SD Service Registration Protocol Anycast", True),
    ("2001:2::/48", "Benchmarking", False),
    ("2001:3::/32", "AMT", True),
    ("2001:4:112::/48", "AS112-v6", True),
    ("2001:10::/28", "Deprecated (previously ORCHID)", None),
    ("2001:20::/28", "ORCHIDv2", True),
    ("2001:30::/28", "Drone Remote ID Protocol Entity Tags (DETs) Prefix", True),
    ("2001:db8::/32", "Documentation", False),
    ("2002::/16", "6to4", None),
    ("2620:4f:8000::/48", "Direct Delegation AS112 Service", True),
    ("3fff::/20", "Documentation", False),
    ("5f00::/16", "Segment Routing (SRv6) SIDs", False),
    ("fc00::/7", "Unique-Local", False),
    ("fe80::/10", "Link-Local Unicast", False),
)
# Refused beyond the special-purpose registries: multicast (its own registries), the
# deprecated IPv6 blocks, IPv6 outside global unicast 2000::/3 (the IPv6 Address Space
# registry's "Reserved by IETF" blocks), and the cloud metadata services, named as such.
_IPV6_RESERVED_BY_IETF = (
    "::/8",
    "100::/8",
    "200::/7",
    "400::/6",
    "800::/5",
    "1000::/4",
    "4000::/3",
    "6000::/3",
    "8000::/3",
    "a000::/3",
    "c000::/3",
    "e000::/4",
    "f000::/5",
    "f800::/6",
    "fe00::/9",
)
_OWN_REFUSALS = (
    ("224.0.0.0/4", "Multicast", False),
    ("169.254.169.254/32", "Link Local (cloud metadata service)", False),
    ("100.100.100.200/32", "Shared Address Space (Alibaba Cloud metadata service)", False),
    ("fd00:ec2::254/128", "Unique-Local (AWS metadata service)", False),
    ("::/96", "IPv4-compatible Address (deprecated)", False),
    ("fec0::/10", "Site-Local (deprecated)", False),
    ("ff00::/8", "Multicast", False),
    *((cidr, "Reserved by IETF", False) for cidr in _IPV6_RESERVED_BY_IETF),
)

_RangeTable = tuple[tuple[int, dict[int, _Range]], ...]


def _range_table(version: int) -> _RangeTable:
    """Every block of one IP version by prefix length, longest first, so the first hit
    is the most specific entry (as the registries mean it: 192.0.0.9/32 inside
    192.0.0.0/24)."""
    by_length: dict[int, dict[int, _Range]] = {}
    for cidr, name, reachable in (*_IANA_IPV4, *_IANA_IPV6, *_OWN_REFUSALS):
        network = ipaddress.ip_network(cidr)
        if network.version == version:
            entries = by_length.setdefault(network.prefixlen, {})
            entries[int(network.network_address)] = _Range(network, name, reachable)
    return tuple(sorted(by_length.items(), reverse=True))


_RANGES = {4: _range_table(4), 6: _range_table(6)}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_TEREDO = ipaddress.ip_network("2001::/32")


def _special_range(address: IPAddress) -> _Range | None:
    """The most specific block ``address`` lies in, or None for ordinary unicast."""
    value = int(address)
    for prefixlen, entries in _RANGES[address.version]:
        host_bits = address.max_prefixlen - prefixlen
        found = entries.get(value >> host_bits << host_bits)
        if found is not None:
            return found
    return None


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
    """Why the guard refuses ``address`` by default, or None if it may be connected to.

    The reason is the name of the IANA special-purpose block the address lies in
    (``"Loopback"``, ``"Private-Use"``, ``"Documentation"``, ...): every block the
    registries do not call globally reachable is refused, and so are multicast, the
    deprecated IPv6 blocks, IPv6 outside ``2000::/3`` and the cloud metadata services.
    IPv4-mapped (``::ffff:0:0/96``) and NAT64 (``64:ff9b::/96``) addresses are judged by
    the IPv4 address inside, which is where the connection goes (``"Private-Use, embedded
    in IPv6"``); 6to4 and Teredo addresses are refused as such. The answer is the same on
    every Python version.
    """
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped
        if inner is None and address in _NAT64:
            inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if inner is not None:
            reason = refusal_reason(inner)
            return None if reason is None else f"{reason}, embedded in IPv6"
    special = _special_range(address)
    if special is None or special.globally_reachable is True:
        return None
    return special.name


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

    A name that resolves to some allowed and some refused addresses is used through the
    allowed ones only (the refused ones are dropped, never connected to); with
    ``refuse_mixed_answers`` such a name is refused as a whole, at delivery and at
    subscribe, as if every address were refused.
    """

    allow_private_networks: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()
    https_only: bool = False
    refuse_mixed_answers: bool = False

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
    so the address checked is the address used. If none is allowed (or, under the
    policy's ``refuse_mixed_answers``, any is refused) it raises `BlockedAddress`,
    naming the host and the refused addresses.
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
        """Resolve ``host`` once and return only its allowed addresses (raising
        `BlockedAddress` for a mixed answer too when the policy has
        ``refuse_mixed_answers``)."""
        name = host.rstrip(".") or host
        allowed = _admit(name, await self._lookup(name, port), self._policy)
        if not allowed:
            raise httpx.ConnectError(f"{name} did not resolve to any address")
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


def _admit(name: str, addresses: Iterable[str], policy: NetworkPolicy) -> list[str]:
    """The addresses of ``name`` a connection may use. Raises `BlockedAddress` when every
    one is refused, or, under ``refuse_mixed_answers``, when any one is. The one rule
    for a resolved name, at delivery (`GuardedResolver`) and at subscribe (`_judge`); an
    empty answer returns ``[]`` (a name that does not resolve)."""
    allowed, refused = _screen(policy, addresses)
    if refused and not allowed:
        raise BlockedAddress(name, refused)
    if refused and policy.refuse_mixed_answers:
        shown = ", ".join(f"{address} ({why})" for address, why in refused[:4])
        more = f" and {len(refused) - 4} more" if len(refused) > 4 else ""
        raise BlockedAddress(
            name,
            refused,
            reason=(
                f"resolves to {shown}{more} besides {len(allowed)} allowed "
                f"address{'es' if len(allowed) > 1 else ''}, and refuse_mixed_answers "
                "refuses a name with any refused address"
            ),
        )
    return allowed


def judge_addresses(name: str, addresses: Sequence[str], policy: NetworkPolicy) -> None:
    """Raise `BlockedAddress` when the guard would refuse every connection to ``name``
    with this answer (under ``refuse_mixed_answers``, any refused address)."""
    _admit(name, addresses, policy)


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
    try:
        addresses = lookup_within(name, port, resolve=resolve, timeout=timeout)
    except OSError:  # too slow, or not resolvable
        return
    judge_addresses(name, addresses, policy)


def lookup_within(
    name: str,
    port: int = 0,
    *,
    resolve: ResolveFunction | None = None,
    timeout: float | None = None,
) -> Sequence[str]:
    """The addresses ``name`` resolves to; `OSError` when it does not resolve, or gives
    no answer within ``timeout`` seconds (default `LOOKUP_TIMEOUT`). The lookup runs on
    a daemon thread, left to finish on its own after a timeout."""
    answer: concurrent.futures.Future[Sequence[str]] = concurrent.futures.Future()

    def lookup() -> None:
        try:
            answer.set_result(_lookup_blocking(name, port, resolve))
        except BaseException as exc:  # handed to the waiting caller
            answer.set_exception(exc)

    threading.Thread(target=lookup, name="webhook-dispatch-lookup", daemon=True).start()
    bound = LOOKUP_TIMEOUT if timeout is None else timeout
    try:
        return answer.result(bound)
    except concurrent.futures.TimeoutError:
        raise OSError(f"no answer in {bound:g} s") from None


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
    judge_addresses(name, addresses, policy)
