"""Payload filters: a subscription receives a message only if its JSON body matches.

The syntax is Convoy's JSON filter language, checked when a subscription is made and
compiled once into nested closures; `Filter.matches` then runs no parsing at all.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from .errors import InvalidFilter

__all__ = [
    "MAX_FILTER_SIZE",
    "MAX_REGEX_LENGTH",
    "MAX_REGEX_SUBJECT",
    "Filter",
    "FilterIndex",
    "compile_filter",
]

MAX_FILTER_SIZE: Final = 16 * 1024
"""Largest filter document accepted, in bytes of compact JSON."""
MAX_REGEX_LENGTH: Final = 512
"""Longest ``$regex`` pattern accepted, in characters."""
MAX_REGEX_SUBJECT: Final = 4096
"""Longest string a ``$regex`` is tried on; a longer one does not match. Python's engine
backtracks, so even a refused-nothing pattern like ``.*x`` costs time quadratic in the
subject: this bounds what a crafted payload can make a publish spend."""
_MAX_DEPTH: Final = 32

# A test receives the values found at its place in the body (a list, since a path can
# go through arrays and find several) and says whether they satisfy it.
_Test = Callable[[list[Any]], bool]

_COMPARISONS = ("$gt", "$gte", "$lt", "$lte")
_LOGICAL = ("$and", "$or", "$not")
_OPERATORS = frozenset(("$eq", "$neq", "$in", "$nin", "$exist", "$regex", *_COMPARISONS))


class Filter:
    """A compiled payload filter. ``document`` is the filter as given (a dict).

    >>> f = compile_filter({"data": {"amount": {"$gte": 100}}})
    >>> f.matches({"data": {"amount": 250}}), f.matches({"data": {"amount": 5}})
    (True, False)
    """

    __slots__ = ("_test", "document")

    def __init__(self, document: Mapping[str, Any], test: _Test) -> None:
        self.document = document
        self._test = test

    def matches(self, body: Any) -> bool:
        """Whether ``body`` (a decoded JSON document) satisfies the filter."""
        return self._test([body])

    def __repr__(self) -> str:
        return f"Filter({json.dumps(self.document, sort_keys=True)[:80]})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Filter) and _same(self.document, other.document)

    def __hash__(self) -> int:
        return hash(json.dumps(self.document, sort_keys=True))


def compile_filter(document: object) -> Filter:
    """Check ``document`` and compile it, or raise `InvalidFilter` naming the bad path.

    A filter is a JSON object. Each key is a field of the body (``a.b`` is the field
    ``b`` of the object ``a``), whose value is either matched directly (equal, or
    contained in an array), an object of nested fields, or operators: ``$eq $neq $gt
    $gte $lt $lte $in $nin $exist $regex``. ``$and``/``$or`` take a list of filters and
    ``$not`` one, all applied at the level where they stand.
    """
    if isinstance(document, Filter):
        return document
    if not isinstance(document, Mapping):
        raise InvalidFilter(
            f"a filter must be a JSON object (a dict), got {type(document).__name__}", path=""
        )
    try:
        size = len(json.dumps(document, allow_nan=False, separators=(",", ":")))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidFilter(f"a filter must be plain JSON: {exc}", path="") from None
    if size > MAX_FILTER_SIZE:
        raise InvalidFilter(
            f"the filter is {size} bytes of JSON; the limit is {MAX_FILTER_SIZE}", path=""
        )
    if not document:
        raise InvalidFilter("an empty filter matches everything: pass filter=None", path="")
    plain = json.loads(json.dumps(document))  # tuples become lists, as a store keeps it
    return Filter(plain, _object(plain, "", 0))


# -- compiling --------------------------------------------------------------------------
def _where(path: str, key: str) -> str:
    return key if not path else f"{path}.{key}"


def _object(document: Mapping[str, Any], path: str, depth: int) -> _Test:
    """All of an object's conditions, at the values where it stands."""
    if depth > _MAX_DEPTH:
        raise InvalidFilter(f"the filter nests deeper than {_MAX_DEPTH} levels", path=path)
    if not document:
        raise InvalidFilter("an empty object matches nothing in particular", path=path)
    tests = [_entry(key, value, path, depth) for key, value in document.items()]
    if len(tests) == 1:
        return tests[0]
    return lambda values: all(test(values) for test in tests)


def _entry(key: str, value: Any, path: str, depth: int) -> _Test:
    where = _where(path, key)
    if key in _LOGICAL:
        return _logical(key, value, where, depth)
    if key in _OPERATORS:
        return _operator(key, value, where)
    if key.startswith("$"):
        if key.startswith("$."):
            raise InvalidFilter(
                f"array positional filters ({key!r}) are not supported; a field path "
                "already looks inside arrays",
                path=where,
            )
        known = ", ".join(sorted(_OPERATORS | set(_LOGICAL)))
        raise InvalidFilter(f"unknown operator {key!r} (known: {known})", path=where)
    segments = key.split(".")
    if not all(segments):
        raise InvalidFilter(f"field name {key!r} has an empty segment", path=where)
    if isinstance(value, Mapping):
        inner = _object(value, where, depth + 1)
    else:
        inner = _equals(value)
    return lambda values: inner(_descend(values, segments))


def _logical(key: str, value: Any, where: str, depth: int) -> _Test:
    if key == "$not":
        if not isinstance(value, Mapping):
            raise InvalidFilter("$not takes one filter object", path=where)
        negated = _object(value, where, depth + 1)
        return lambda values: not negated(values)
    if not isinstance(value, list) or not value:
        raise InvalidFilter(f"{key} takes a non-empty list of filter objects", path=where)
    parts = []
    for index, part in enumerate(value):
        if not isinstance(part, Mapping):
            raise InvalidFilter(f"{key} takes filter objects", path=f"{where}[{index}]")
        parts.append(_object(part, f"{where}[{index}]", depth + 1))
    if key == "$and":
        return lambda values: all(part(values) for part in parts)
    return lambda values: any(part(values) for part in parts)


def _operator(key: str, operand: Any, where: str) -> _Test:
    if key == "$eq":
        return _equals(operand)
    if key == "$neq":
        equal = _equals(operand)
        return lambda values: not equal(values)
    if key in ("$in", "$nin"):
        if not isinstance(operand, list):
            raise InvalidFilter(f"{key} takes a list of values", path=where)
        member = _member(operand)
        if key == "$in":
            return member
        return lambda values: not member(values)
    if key == "$exist":
        if not isinstance(operand, bool):
            raise InvalidFilter("$exist takes true or false", path=where)
        return (lambda values: bool(values)) if operand else (lambda values: not values)
    if key == "$regex":
        return _regex(operand, where)
    return _compare(key, operand, where)


def _equals(operand: Any) -> _Test:
    """Equal to ``operand``, or (a scalar operand) an element of an array equal to it."""
    if isinstance(operand, (list, dict)):
        return lambda values: any(_same(value, operand) for value in values)

    def equals(values: list[Any]) -> bool:
        for value in values:
            if isinstance(value, list):
                if any(_same(item, operand) for item in value):
                    return True
            elif _same(value, operand):
                return True
        return False

    return equals


def _member(operands: list[Any]) -> _Test:
    tests = [_equals(operand) for operand in operands]
    return lambda values: any(test(values) for test in tests)


def _compare(key: str, operand: Any, where: str) -> _Test:
    if isinstance(operand, bool) or not isinstance(operand, (int, float, str)):
        raise InvalidFilter(f"{key} takes a number or a string", path=where)
    kind = str if isinstance(operand, str) else _NUMBER
    holds: Callable[[Any], bool] = {
        "$gt": lambda value: value > operand,
        "$gte": lambda value: value >= operand,
        "$lt": lambda value: value < operand,
        "$lte": lambda value: value <= operand,
    }[key]

    def compare(values: list[Any]) -> bool:
        for value in values:
            for item in value if isinstance(value, list) else (value,):
                if isinstance(item, kind) and not isinstance(item, bool) and holds(item):
                    return True
        return False

    return compare


def _regex(operand: Any, where: str) -> _Test:
    if not isinstance(operand, str):
        raise InvalidFilter("$regex takes a string", path=where)
    if len(operand) > MAX_REGEX_LENGTH:
        raise InvalidFilter(
            f"$regex is {len(operand)} characters; the limit is {MAX_REGEX_LENGTH}", path=where
        )
    try:
        compiled = re.compile(operand)
    except re.error as exc:
        raise InvalidFilter(f"$regex does not compile: {exc}", path=where) from None
    danger = _backtracking_risk(operand)
    if danger is not None:
        raise InvalidFilter(f"$regex refused: {danger}", path=where)
    search = compiled.search

    def matches(values: list[Any]) -> bool:
        for value in values:
            for item in value if isinstance(value, list) else (value,):
                if (
                    isinstance(item, str)
                    and len(item) <= MAX_REGEX_SUBJECT
                    and search(item) is not None
                ):
                    return True
        return False

    return matches


_NUMBER = (int, float)


# -- narrowing: which filters could match a body -----------------------------------------
class FilterIndex:
    """The filters of many subscriptions, indexed by an equality each requires, so a
    publish evaluates only those that could match: ``{"data": {"customer": "c_42"}}``
    is looked up by the body's ``data.customer``, not tried against every body.

    A filter is indexed by the first condition every matching body must meet, an
    equality with a scalar (directly, ``$eq`` or ``$in``), at the top level or inside
    ``$and``; others are always evaluated. The index only narrows: `matching` still
    runs each candidate's whole filter.
    """

    __slots__ = ("_by_path", "_filters", "_unindexed")

    def __init__(self) -> None:
        self._filters: dict[str, Filter] = {}
        self._by_path: dict[tuple[str, ...], dict[Any, list[str]]] = {}
        self._unindexed: list[str] = []

    def add(self, subscription_id: str, compiled: Filter) -> None:
        """Index one subscription's filter (each id once)."""
        self._filters[subscription_id] = compiled
        required = _required_equality(compiled.document, ())
        if required is None:
            self._unindexed.append(subscription_id)
            return
        path, operands = required
        values = self._by_path.setdefault(path, {})
        for key in {_key(operand) for operand in operands}:
            values.setdefault(key, []).append(subscription_id)

    def __contains__(self, subscription_id: object) -> bool:
        return subscription_id in self._filters

    def __bool__(self) -> bool:
        return bool(self._filters)

    def matching(self, body: Any) -> set[str]:
        """The ids whose filter ``body`` matches."""
        candidates = list(self._unindexed)
        for path, values in self._by_path.items():
            seen: set[Any] = set()
            for found in _descend([body], path):
                for item in found if isinstance(found, list) else (found,):
                    if isinstance(item, (dict, list)):
                        continue
                    key = _key(item)
                    if key not in seen:
                        seen.add(key)
                        candidates.extend(values.get(key, ()))
        filters = self._filters
        return {candidate for candidate in candidates if filters[candidate].matches(body)}


def _required_equality(
    document: Mapping[str, Any], prefix: tuple[str, ...]
) -> tuple[tuple[str, ...], list[Any]] | None:
    """A path and the scalars one of which a matching body must hold there, or None."""
    for key, value in document.items():
        if key == "$and":
            for part in value:
                found = _required_equality(part, prefix)
                if found is not None:
                    return found
            continue
        if key.startswith("$"):
            continue
        path = prefix + tuple(key.split("."))
        if _is_scalar(value):
            return path, [value]
        if isinstance(value, Mapping):
            if "$eq" in value and _is_scalar(value["$eq"]):
                return path, [value["$eq"]]
            if "$in" in value and value["$in"] and all(_is_scalar(v) for v in value["$in"]):
                return path, list(value["$in"])
            if not any(name.startswith("$") for name in value):
                found = _required_equality(value, path)
                if found is not None:
                    return found
    return None


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float))


def _key(value: Any) -> Any:
    """Equal scalars (as `_same` sees them: 1 and 1.0, never true and 1) share a key."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", float(value))
    return (type(value).__name__, value)


# -- evaluating -------------------------------------------------------------------------
def _descend(values: list[Any], segments: Sequence[str]) -> list[Any]:
    """The values at ``segments`` below each of ``values``; a path crosses arrays by
    looking into each of their objects."""
    for segment in segments:
        found: list[Any] = []
        for value in values:
            if isinstance(value, dict):
                if segment in value:
                    found.append(value[segment])
            elif isinstance(value, list):
                found.extend(
                    item[segment] for item in value if isinstance(item, dict) and segment in item
                )
        values = found
        if not values:
            break
    return values


def _same(a: Any, b: Any) -> bool:
    """JSON equality: 1 equals 1.0, true is not 1, objects and arrays compare deeply."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, _NUMBER) and isinstance(b, _NUMBER):
        return a == b and not (isinstance(a, float) and math.isnan(a))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    return type(a) is type(b) and bool(a == b)


# -- regular expressions that could run for ever -----------------------------------------
if sys.version_info >= (3, 11):
    from re import _constants as _sre_constants
    from re import _parser as _sre_parser
else:  # pragma: no cover - Python 3.10
    import sre_constants as _sre_constants
    import sre_parse as _sre_parser

_REPEATS = (_sre_constants.MAX_REPEAT, _sre_constants.MIN_REPEAT)
_POSSESSIVE = getattr(_sre_constants, "POSSESSIVE_REPEAT", None)


def _backtracking_risk(pattern: str) -> str | None:
    """Why ``pattern`` could backtrack exponentially in Python's engine, or None.

    Refused: backreferences, a repeated part that itself repeats (``(a+)+``), and a
    repeated alternation whose branches can start alike (``(a|ab)*``). Lone repeats,
    classes and disjoint alternations (``(cat|dog)+``) pass."""
    return _scan(_sre_parser.parse(pattern), inside_repeat=False)


def _scan(items: Any, *, inside_repeat: bool) -> str | None:
    for op, argument in items:
        if op in (_sre_constants.GROUPREF, _sre_constants.GROUPREF_EXISTS):
            return "backreferences are not allowed"
        if op in _REPEATS:
            _, high, body = argument
            repeats = high > 1
            if repeats and inside_repeat:
                return "a repeated part inside another repeat can backtrack exponentially"
            found = _scan(body, inside_repeat=inside_repeat or repeats)
            if found:
                return found
        elif op == _sre_constants.SUBPATTERN:
            found = _scan(argument[-1], inside_repeat=inside_repeat)
            if found:
                return found
        elif op == _sre_constants.BRANCH:
            branches = argument[1]
            if inside_repeat and _overlapping(branches):
                return "a repeated alternation whose branches can start alike can backtrack"
            for branch in branches:
                found = _scan(branch, inside_repeat=inside_repeat)
                if found:
                    return found
        elif op in (_sre_constants.ASSERT, _sre_constants.ASSERT_NOT):
            found = _scan(argument[1], inside_repeat=inside_repeat)
            if found:
                return found
        elif _POSSESSIVE is not None and op == _POSSESSIVE:
            continue
    return None


def _overlapping(branches: Sequence[Any]) -> bool:
    """Whether two alternatives could begin with the same character (conservative)."""
    seen: set[int] = set()
    for branch in branches:
        first = _first_characters(branch)
        if first is None or first & seen:
            return True
        seen |= first
    return False


def _first_characters(items: Any) -> set[int] | None:
    """Code points an item list can start with, or None for "could be anything"."""
    for op, argument in items:
        if op == _sre_constants.LITERAL:
            return {argument}
        if op == _sre_constants.SUBPATTERN:
            return _first_characters(argument[-1])
        if op == _sre_constants.IN:
            characters: set[int] = set()
            for kind, value in argument:
                if kind == _sre_constants.LITERAL:
                    characters.add(value)
                elif kind == _sre_constants.RANGE and value[1] - value[0] < 256:
                    characters.update(range(value[0], value[1] + 1))
                else:
                    return None
            return characters
        if op == _sre_constants.AT:
            continue
        return None
    return None
