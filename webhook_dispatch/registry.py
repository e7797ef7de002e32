"""Event types, event-type patterns, and the index that maps an event type to subscriptions.

Pure logic, no I/O: validation, the reference matcher, and a segment trie for fast lookup.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence

from .errors import InvalidEventType

__all__ = [
    "MAX_EVENT_TYPE_LENGTH",
    "Registry",
    "normalize_patterns",
    "pattern_matches",
    "validate_event_type",
    "validate_pattern",
]

MAX_EVENT_TYPE_LENGTH = 255
"""Longest event type or pattern accepted, in characters."""

_SEGMENT = re.compile(r"[A-Za-z0-9_]+")
_EVENT_TYPE = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")
_ONE_SEGMENT = "*"
_ONE_OR_MORE_SEGMENTS = "**"
_CATCH_ALL = "*"
_ECHO_LIMIT = 60
_CACHE_LIMIT = 4096


def _echo(value: str) -> str:
    """Quote a user-supplied value for an error message, truncated so messages stay short."""
    if len(value) > _ECHO_LIMIT:
        return repr(value[:_ECHO_LIMIT]) + f"... ({len(value)} characters)"
    return repr(value)


def _explain_bad_dotted_name(value: str, what: str) -> str:
    """Say precisely why ``value`` is not a dotted name (called only once it is known bad)."""
    if value.startswith("."):
        return f"{what} {_echo(value)} starts with a dot"
    if value.endswith("."):
        return f"{what} {_echo(value)} ends with a dot"
    if ".." in value:
        return f"{what} {_echo(value)} has an empty segment ('..')"
    return (
        f"{what} {_echo(value)} may only contain letters, digits and '_' in dot-separated segments"
    )


def _check_text(value: object, what: str) -> str:
    """Refuse non-strings, empty strings and over-long strings; return the string."""
    if not isinstance(value, str):
        raise InvalidEventType(f"{what} must be a str, got {type(value).__name__}")
    if not value:
        raise InvalidEventType(f"{what} must not be empty")
    if len(value) > MAX_EVENT_TYPE_LENGTH:
        raise InvalidEventType(
            f"{what} {_echo(value)} is longer than {MAX_EVENT_TYPE_LENGTH} characters"
        )
    return value


def validate_event_type(event_type: object) -> str:
    """Return ``event_type`` if it is a valid event type, else raise `InvalidEventType`.

    An event type is one or more segments of ``[A-Za-z0-9_]+`` joined by ``.``
    (for example ``order.created``), at most 255 characters. Wildcards are for
    patterns only.
    """
    text = _check_text(event_type, "event type")
    if _EVENT_TYPE.fullmatch(text):
        return text
    if "*" in text:
        raise InvalidEventType(
            f"event type {_echo(text)} contains a wildcard; wildcards are only allowed "
            "in subscription patterns"
        )
    raise InvalidEventType(_explain_bad_dotted_name(text, "event type"))


def validate_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a valid event-type pattern, else raise `InvalidEventType`.

    A pattern is an event type in which any segment may be ``*`` (exactly one
    segment) and the last segment may be ``**`` (one or more segments). The
    pattern ``*`` or ``**`` on its own matches every event type.
    """
    text = _check_text(pattern, "pattern")
    if text in (_ONE_SEGMENT, _ONE_OR_MORE_SEGMENTS) or _EVENT_TYPE.fullmatch(text):
        return text
    segments = text.split(".")
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment == _ONE_SEGMENT or _SEGMENT.fullmatch(segment):
            continue
        if segment == _ONE_OR_MORE_SEGMENTS:
            if index == last:
                continue
            raise InvalidEventType(
                f"pattern {_echo(text)} uses '**' before the last segment; "
                "'**' may only end a pattern"
            )
        if segment and "*" in segment:
            raise InvalidEventType(
                f"pattern {_echo(text)} has segment {_echo(segment)}; a wildcard must be "
                "a whole segment ('*' or a final '**')"
            )
        raise InvalidEventType(_explain_bad_dotted_name(text, "pattern"))
    return text


def _means_everything(pattern: str) -> bool:
    return pattern in (_ONE_SEGMENT, _ONE_OR_MORE_SEGMENTS)


def normalize_patterns(patterns: Iterable[str] | str | None) -> tuple[str, ...]:
    """Validate a subscription's patterns and return them in canonical form.

    ``None`` means every event type and gives ``("*",)``. A bare string is refused
    (pass a list: ``["order.*"]``), as is an empty collection. Duplicates are
    dropped, keeping first occurrences in order, and if any pattern matches
    every event type the result is ``("*",)``.
    """
    if patterns is None:
        return (_CATCH_ALL,)
    if isinstance(patterns, (str, bytes)):
        raise InvalidEventType(
            f"event types must be a list of patterns, not a single {type(patterns).__name__} "
            f"(write [{_echo(str(patterns))}])"
        )
    try:
        items = list(patterns)
    except TypeError:
        raise InvalidEventType(
            f"event types must be a list of patterns or None, got {type(patterns).__name__}"
        ) from None
    if not items:
        raise InvalidEventType(
            "event types must not be empty; pass None or ['*'] to receive every event"
        )
    unique: dict[str, None] = {}
    for item in items:
        pattern = validate_pattern(item)
        if _means_everything(pattern):
            return (_CATCH_ALL,)
        unique.setdefault(pattern, None)
    return tuple(unique)


def pattern_matches(pattern: str, event_type: str) -> bool:
    """Return whether ``pattern`` matches ``event_type``: the reference semantics.

    Both arguments are validated first (`InvalidEventType` if malformed). ``*``
    matches exactly one segment, a final ``**`` one or more, and the pattern
    ``*`` or ``**`` alone matches everything. `Registry` gives the same answers,
    only faster.
    """
    validate_pattern(pattern)
    validate_event_type(event_type)
    if _means_everything(pattern):
        return True
    pattern_segments = pattern.split(".")
    event_segments = event_type.split(".")
    for index, wanted in enumerate(pattern_segments):
        if wanted == _ONE_OR_MORE_SEGMENTS:
            return len(event_segments) > index
        if index >= len(event_segments):
            return False
        if wanted != _ONE_SEGMENT and wanted != event_segments[index]:
            return False
    return len(event_segments) == len(pattern_segments)


class _Node:
    """One trie node: the state after consuming some pattern segments."""

    __slots__ = ("children", "ending_here", "one_or_more", "star")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.star: _Node | None = None
        # ids whose pattern is this path followed by a final '**'
        self.one_or_more: set[str] = set()
        # ids whose pattern is exactly this path
        self.ending_here: set[str] = set()

    def is_empty(self) -> bool:
        return not (self.children or self.star or self.one_or_more or self.ending_here)


class Registry:
    """An index from event-type patterns to subscription ids.

    Lookups walk a trie keyed by segment, so their cost depends on the event type
    and on how many patterns overlap it, not on the number of subscriptions.
    Results are cached per event type until the next `add` or `remove`. Safe to
    share between threads.

    >>> registry = Registry()
    >>> registry.add("sub_1", ["order.*"])
    >>> registry.add("sub_2", ["*"])
    >>> registry.match("order.created")
    ['sub_1', 'sub_2']
    """

    def __init__(self) -> None:
        self._root = _Node()
        self._catch_all: set[str] = set()
        self._patterns: dict[str, tuple[str, ...]] = {}
        # position of each id in first-added order, so results are deterministic
        self._position: dict[str, int] = {}
        self._next_position = 0
        self._cache: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def add(self, subscription_id: str, patterns: Sequence[str]) -> None:
        """Index ``subscription_id`` under ``patterns``, replacing any earlier entry.

        Patterns are validated and normalized as by `normalize_patterns`. A
        replaced id keeps its place in the result order.
        """
        normalized = normalize_patterns(patterns)
        with self._lock:
            if subscription_id in self._patterns:
                self._unindex(subscription_id)
            else:
                self._position[subscription_id] = self._next_position
                self._next_position += 1
            self._patterns[subscription_id] = normalized
            for pattern in normalized:
                self._index(subscription_id, pattern)
            self._cache.clear()

    def remove(self, subscription_id: str) -> None:
        """Forget ``subscription_id``; do nothing if it is not indexed."""
        with self._lock:
            if subscription_id not in self._patterns:
                return
            self._unindex(subscription_id)
            del self._patterns[subscription_id]
            del self._position[subscription_id]
            self._cache.clear()

    def match(self, event_type: str) -> list[str]:
        """Return the ids whose patterns match ``event_type``, each once, in first-added order.

        Raises `InvalidEventType` if ``event_type`` is malformed.
        """
        with self._lock:
            cached = self._cache.get(event_type)
            if cached is None:
                validate_event_type(event_type)
                cached = self._lookup(event_type)
                if len(self._cache) >= _CACHE_LIMIT:
                    # drop the oldest entry: dicts keep insertion order
                    del self._cache[next(iter(self._cache))]
                self._cache[event_type] = cached
        return list(cached)

    def patterns(self, subscription_id: str) -> tuple[str, ...]:
        """Return the normalized patterns indexed for ``subscription_id`` (KeyError if absent)."""
        with self._lock:
            return self._patterns[subscription_id]

    def __len__(self) -> int:
        """Number of indexed subscription ids."""
        return len(self._patterns)

    def __contains__(self, subscription_id: object) -> bool:
        """Whether ``subscription_id`` is indexed."""
        return subscription_id in self._patterns

    def __repr__(self) -> str:
        return f"<Registry subscriptions={len(self._patterns)}>"

    def _index(self, subscription_id: str, pattern: str) -> None:
        if _means_everything(pattern):
            self._catch_all.add(subscription_id)
            return
        node = self._root
        segments = pattern.split(".")
        for segment in segments[:-1]:
            node = self._child(node, segment)
        last = segments[-1]
        if last == _ONE_OR_MORE_SEGMENTS:
            node.one_or_more.add(subscription_id)
        else:
            self._child(node, last).ending_here.add(subscription_id)

    @staticmethod
    def _child(node: _Node, segment: str) -> _Node:
        if segment == _ONE_SEGMENT:
            if node.star is None:
                node.star = _Node()
            return node.star
        child = node.children.get(segment)
        if child is None:
            child = node.children[segment] = _Node()
        return child

    def _unindex(self, subscription_id: str) -> None:
        for pattern in self._patterns[subscription_id]:
            self._unindex_pattern(subscription_id, pattern)

    def _unindex_pattern(self, subscription_id: str, pattern: str) -> None:
        if _means_everything(pattern):
            self._catch_all.discard(subscription_id)
            return
        segments = pattern.split(".")
        last = segments[-1]
        path_segments = segments[:-1] if last == _ONE_OR_MORE_SEGMENTS else segments
        # (parent, segment leading to child) pairs, so empty nodes can be pruned
        path: list[tuple[_Node, str]] = []
        node = self._root
        for segment in path_segments:
            step = node.star if segment == _ONE_SEGMENT else node.children.get(segment)
            if step is None:  # pragma: no cover - indexed patterns always have a path
                return
            path.append((node, segment))
            node = step
        if last == _ONE_OR_MORE_SEGMENTS:
            node.one_or_more.discard(subscription_id)
        else:
            node.ending_here.discard(subscription_id)
        for parent, segment in reversed(path):
            if not node.is_empty():
                break
            if segment == _ONE_SEGMENT:
                parent.star = None
            else:
                del parent.children[segment]
            node = parent

    def _lookup(self, event_type: str) -> tuple[str, ...]:
        found: set[str] = set(self._catch_all)
        frontier = [self._root]
        for segment in event_type.split("."):
            next_frontier: list[_Node] = []
            for node in frontier:
                # a final '**' here swallows this segment and all that follow
                found.update(node.one_or_more)
                exact = node.children.get(segment)
                if exact is not None:
                    next_frontier.append(exact)
                if node.star is not None:
                    next_frontier.append(node.star)
            if not next_frontier:
                break
            frontier = next_frontier
        else:
            for node in frontier:
                found.update(node.ending_here)
        position = self._position
        return tuple(sorted(found, key=position.__getitem__))
