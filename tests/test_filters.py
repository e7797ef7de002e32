"""Payload filters: Convoy's JSON syntax, checked at subscribe time, compiled once, and
applied at publish to the body as sent, on every store and with tenants."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import webhook_dispatch as wd
from webhook_dispatch.filters import (
    MAX_FILTER_SIZE,
    MAX_REGEX_LENGTH,
    MAX_REGEX_SUBJECT,
    FilterIndex,
    compile_filter,
)
from webhook_dispatch.testing import FakeClock, MockReceiver

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def receiver() -> MockReceiver:
    return MockReceiver([200])


@pytest.fixture
def dispatcher(store_url: str, receiver: MockReceiver) -> Iterator[wd.Dispatcher]:
    with wd.Dispatcher(store_url, transport=receiver, clock=FakeClock(T0)) as d:
        yield d


def _hosts(receiver: MockReceiver) -> list[str]:
    return sorted(r.url.split("/")[2] for r in receiver.requests)


# -- the syntax: Convoy's documented examples ---------------------------------------------
CONVOY_CASES: list[tuple[dict[str, Any], dict[str, Any], bool]] = [
    ({"event_type": "created"}, {"event_type": "created"}, True),
    ({"event_type": "created"}, {"event_type": "deleted"}, False),
    ({"event": {"type": "created"}}, {"event": {"type": "created", "n": 1}}, True),
    ({"event": {"type": "created"}}, {"event": {"type": "x"}}, False),
    ({"dish": {"ingredients": "rice"}}, {"dish": {"ingredients": ["beans", "rice"]}}, True),
    ({"dish": {"ingredients": "rice"}}, {"dish": {"ingredients": ["beans"]}}, False),
    ({"event": {"$neq": "created"}}, {"event": "deleted"}, True),
    ({"event": {"$neq": "created"}}, {"event": "created"}, False),
    ({"$or": [{"cities": "london"}, {"type": "weekly"}]}, {"cities": ["lagos", "london"]}, True),
    ({"$or": [{"cities": "london"}, {"type": "weekly"}]}, {"type": "weekly"}, True),
    ({"$or": [{"cities": "london"}, {"type": "weekly"}]}, {"type": "daily"}, False),
    (
        {"$and": [{"age": {"$gte": 10}}, {"$or": [{"type": "weekly"}, {"cities": "lagos"}]}]},
        {"age": 12, "cities": ["lagos"]},
        True,
    ),
    (
        {"$and": [{"age": {"$gte": 10}}, {"$or": [{"type": "weekly"}, {"cities": "lagos"}]}]},
        {"age": 9, "type": "weekly"},
        False,
    ),
    ({"operation": {"$in": ["created", "deleted"]}}, {"operation": "deleted"}, True),
    ({"operation": {"$in": ["created", "deleted"]}}, {"operation": "updated"}, False),
    ({"operation": {"$nin": ["updated", "truncated"]}}, {"operation": "created"}, True),
    ({"operation": {"$nin": ["updated", "truncated"]}}, {"operation": "updated"}, False),
    ({"age": {"$gt": 1}}, {"age": 2}, True),
    ({"age": {"$gt": 1}}, {"age": 1}, False),
    ({"age": {"$lt": 1}}, {"age": 0.5}, True),
    ({"age": {"$lte": 1}}, {"age": 1.0}, True),
    ({"email": {"$regex": "^[a-z]+@example\\.com$"}}, {"email": "ada@example.com"}, True),
    ({"email": {"$regex": "^[a-z]+@example\\.com$"}}, {"email": "ada@evil.com"}, False),
    ({"coupon": {"$exist": True}}, {"coupon": None}, True),
    ({"coupon": {"$exist": True}}, {}, False),
    ({"coupon": {"$exist": False}}, {}, True),
]


@pytest.mark.parametrize(("document", "body", "expected"), CONVOY_CASES)
def test_convoy_examples(document: dict[str, Any], body: dict[str, Any], expected: bool) -> None:
    assert compile_filter(document).matches(body) is expected


def test_dotted_keys_are_nested_paths_and_cross_arrays() -> None:
    nested = compile_filter({"data": {"customer": {"tier": "gold"}}})
    dotted = compile_filter({"data.customer.tier": "gold"})
    body = {"data": {"customer": {"tier": "gold"}}}
    assert nested.matches(body) and dotted.matches(body)
    items = compile_filter({"data.items.sku": "B"})
    assert items.matches({"data": {"items": [{"sku": "A"}, {"sku": "B"}]}})
    assert not items.matches({"data": {"items": [{"sku": "A"}]}})


def test_json_equality_is_strict_about_types() -> None:
    assert not compile_filter({"flag": 1}).matches({"flag": True})
    assert not compile_filter({"flag": True}).matches({"flag": 1})
    assert compile_filter({"n": 1}).matches({"n": 1.0})
    assert not compile_filter({"n": "1"}).matches({"n": 1})
    assert not compile_filter({"n": {"$gt": 0}}).matches({"n": "5"})
    assert compile_filter({"day": {"$gte": "2024-05-01"}}).matches({"day": "2024-06-01"})
    assert compile_filter({"tags": ["a", "b"]}).matches({"tags": ["a", "b"]})
    assert not compile_filter({"tags": ["a", "b"]}).matches({"tags": ["b", "a"]})
    assert compile_filter({"n": None}).matches({"n": None})
    assert not compile_filter({"n": None}).matches({})


def test_not_negates_and_operators_combine() -> None:
    outside = compile_filter({"n": {"$not": {"$gte": 1, "$lt": 5}}})
    assert [outside.matches({"n": n}) for n in (0, 1, 4, 5)] == [True, False, False, True]
    between = compile_filter({"n": {"$gte": 1, "$lt": 5}})
    assert [between.matches({"n": n}) for n in (0, 1, 4, 5)] == [False, True, True, False]
    assert compile_filter({"$not": {"kind": "test"}}).matches({"kind": "live"})


def test_missing_fields_satisfy_only_negative_operators() -> None:
    assert compile_filter({"x": {"$neq": 1}}).matches({})
    assert compile_filter({"x": {"$nin": [1]}}).matches({})
    assert not compile_filter({"x": {"$in": [1]}}).matches({})
    assert not compile_filter({"x": {"$gt": 0}}).matches({})
    assert not compile_filter({"x": {"$regex": "."}}).matches({})


# -- checks at subscribe time ------------------------------------------------------------
BAD_FILTERS: list[tuple[Any, str]] = [
    ([{"a": 1}], ""),
    ({}, ""),
    ({"a": {"$gt": True}}, "a.$gt"),
    ({"a": {"$gt": [1]}}, "a.$gt"),
    ({"a": {"$in": "x"}}, "a.$in"),
    ({"a": {"$exist": "yes"}}, "a.$exist"),
    ({"a": {"$regex": 5}}, "a.$regex"),
    ({"a": {"$regex": "("}}, "a.$regex"),
    ({"a": {"$foo": 1}}, "a.$foo"),
    ({"data": {"amount": {"$gtee": 1}}}, "data.amount.$gtee"),
    ({"$or": []}, "$or"),
    ({"$or": [1]}, "$or[0]"),
    ({"$and": [{"a": 1}, {"b": {"$lt": None}}]}, "$and[1].b.$lt"),
    ({"$not": [1]}, "$not"),
    ({"a": {}}, "a"),
    ({"a..b": 1}, "a..b"),
    ({"$.venues.$.name": "x"}, "$.venues.$.name"),
    ({"a": float("nan")}, ""),
    ({"a": object()}, ""),
]


@pytest.mark.parametrize(("document", "path"), BAD_FILTERS)
def test_bad_filters_name_the_path(document: Any, path: str) -> None:
    with pytest.raises(wd.InvalidFilter) as raised:
        compile_filter(document)
    assert raised.value.path == path
    assert isinstance(raised.value, wd.ConfigurationError)
    if path:
        assert f"(at {path})" in str(raised.value)


@pytest.mark.parametrize(
    "pattern",
    ["(a+)+$", "(a*)*b", "(\\w+\\s?)+$", "(a|a)*b", "(a|ab)*c", "(\\w|\\d\\w)+!", "(x)\\1"],
)
def test_regexes_that_could_backtrack_for_ever_are_refused(pattern: str) -> None:
    with pytest.raises(wd.InvalidFilter, match="refused"):
        compile_filter({"a": {"$regex": pattern}})


@pytest.mark.parametrize("pattern", ["^ord_[0-9]+$", "(cat|dog)+", "\\d{3}-\\d{4}", "a.*b"])
def test_ordinary_regexes_pass(pattern: str) -> None:
    compile_filter({"a": {"$regex": pattern}})


def test_a_regex_is_tried_on_bounded_strings_only() -> None:
    ends_with_x = compile_filter({"a": {"$regex": "x$"}})
    assert ends_with_x.matches({"a": "y" * (MAX_REGEX_SUBJECT - 1) + "x"})
    assert not ends_with_x.matches({"a": "y" * MAX_REGEX_SUBJECT + "x"})


def test_size_limits() -> None:
    with pytest.raises(wd.InvalidFilter, match="limit"):
        compile_filter({"a": {"$regex": "a" * (MAX_REGEX_LENGTH + 1)}})
    with pytest.raises(wd.InvalidFilter, match="limit"):
        compile_filter({"a": {"$in": ["x" * 100] * (MAX_FILTER_SIZE // 100)}})
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(40):
        deep = {"k": deep}
    with pytest.raises(wd.InvalidFilter, match="deeper"):
        compile_filter(deep)


def test_a_bad_filter_stores_nothing(dispatcher: wd.Dispatcher) -> None:
    version = dispatcher.store.subscriptions_version()
    with pytest.raises(wd.InvalidFilter, match=re.escape("(at data.amount.$gtee)")):
        dispatcher.subscribe("https://a.example/h", filter={"data": {"amount": {"$gtee": 1}}})
    assert list(dispatcher.subscriptions()) == []
    assert dispatcher.store.subscriptions_version() == version


# -- through the public API, on every store ----------------------------------------------
def test_publish_sends_only_to_subscriptions_whose_filter_matches(
    dispatcher: wd.Dispatcher, receiver: MockReceiver
) -> None:
    big = dispatcher.subscribe(
        "https://big.example/h", filter={"data": {"amount": {"$gte": 100}}}, tenant="acme"
    )
    assert big.filter is not None
    assert big.filter.document == {"data": {"amount": {"$gte": 100}}}
    dispatcher.subscribe("https://all.example/h", tenant="acme")
    dispatcher.subscribe(  # another tenant's filter that would match: never reached
        "https://other.example/h", filter={"data": {"amount": {"$gte": 0}}}, tenant="globex"
    )
    large = dispatcher.publish("order.paid", {"amount": 150}, tenant="acme")
    small = dispatcher.publish("order.paid", {"amount": 5}, tenant="acme")
    assert dispatcher.run_until_idle() == 3
    assert _hosts(receiver) == ["all.example", "all.example", "big.example"]
    assert [d.message_id for d in dispatcher.deliveries(subscription_id=big.id)] == [large.id]
    assert small.id not in {d.message_id for d in dispatcher.deliveries(subscription_id=big.id)}
    assert dispatcher.get_subscription(big.id).filter == big.filter


def test_filters_see_the_envelope_or_the_bare_payload(
    store_url: str, receiver: MockReceiver
) -> None:
    with wd.Dispatcher(store_url, transport=receiver, envelope=False) as bare:
        bare.subscribe("https://bare.example/h", filter={"amount": {"$gte": 100}})
        bare.subscribe("https://typed.example/h", filter={"type": "order.paid"})
        bare.publish("order.paid", {"amount": 150})
        bare.run_until_idle()
    assert _hosts(receiver) == ["bare.example"]


def test_the_event_type_is_in_the_enveloped_body(
    dispatcher: wd.Dispatcher, receiver: MockReceiver
) -> None:
    dispatcher.subscribe(
        "https://h.example/h", event_types=["order.*"], filter={"type": "order.paid"}
    )
    dispatcher.publish("order.paid", {})
    dispatcher.publish("order.refunded", {})
    assert dispatcher.run_until_idle() == 1
    assert json.loads(receiver.requests[0].body)["type"] == "order.paid"


def test_a_message_that_is_not_json_never_matches_a_filter(
    dispatcher: wd.Dispatcher, receiver: MockReceiver
) -> None:
    dispatcher.subscribe("https://filtered.example/h", filter={"a": {"$exist": False}})
    dispatcher.subscribe("https://plain.example/h")
    dispatcher.publish("doc.raw", b"<a/>", content_type="application/xml")
    assert dispatcher.run_until_idle() == 1
    assert _hosts(receiver) == ["plain.example"]


def test_update_changes_and_removes_a_filter_in_every_publisher(store_url: str) -> None:
    if store_url == "memory://":
        pytest.skip("a memory store is one process's own")
    receiver = MockReceiver([200])
    with (
        wd.Dispatcher(store_url, transport=receiver) as one,
        wd.Dispatcher(store_url, transport=receiver) as other,
    ):
        sub = one.subscribe("https://h.example/h", filter={"data": {"n": 1}}, tenant="t")
        assert other.publish("e.x", {"n": 2}, tenant="t") is not None
        updated = one.update(sub.id, filter={"data": {"n": 2}})
        assert updated.filter is not None and updated.filter.document == {"data": {"n": 2}}
        other.publish("e.x", {"n": 2}, tenant="t")
        one.update(sub.id, filter=None)
        other.publish("e.x", {"n": 3}, tenant="t")
        one.run_until_idle()
    bodies = [json.loads(r.body)["data"]["n"] for r in receiver.requests]
    assert sorted(bodies) == [2, 3]


def test_update_checks_everything_before_storing(dispatcher: wd.Dispatcher) -> None:
    sub = dispatcher.subscribe("https://h.example/h", event_types=["a.b"])
    with pytest.raises(wd.InvalidFilter):
        dispatcher.update(sub.id, event_types=["c.d"], filter={"$bad": 1})
    with pytest.raises(wd.InvalidURL):
        dispatcher.update(sub.id, url="ftp://h.example/", event_types=["c.d"])
    with pytest.raises(wd.ConfigurationError, match="rotate_secret"):
        dispatcher.update(sub.id, secret=wd.generate_secret())
    assert dispatcher.get_subscription(sub.id) == sub
    moved = dispatcher.update(sub.id, url="https://new.example/h", event_types=["c.*"])
    assert (moved.url, moved.event_types) == ("https://new.example/h", ("c.*",))
    assert dispatcher.get_subscription(sub.id) == moved


async def test_async_face_takes_filters(store_url: str) -> None:
    receiver = MockReceiver([200])
    async with wd.AsyncDispatcher(store_url, transport=receiver) as dispatcher:
        sub = await dispatcher.subscribe("https://h.example/h", filter={"data": {"ok": True}})
        await dispatcher.publish("e.x", {"ok": True})
        await dispatcher.publish("e.x", {"ok": False})
        await dispatcher.update(sub.id, filter={"data": {"ok": False}})
        await dispatcher.publish("e.x", {"ok": False})
        assert await dispatcher.run_until_idle() == 2
    assert [json.loads(r.body)["data"]["ok"] for r in receiver.requests] == [True, False]


# -- property: the compiled filter agrees with a plain interpreter -----------------------
def _reference(document: dict[str, Any], values: list[Any]) -> bool:
    """The documented semantics, interpreted directly: every key of the object holds at
    the values found where it stands."""
    return all(_reference_entry(key, value, values) for key, value in document.items())


def _flatten(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        out.extend(value if isinstance(value, list) else [value])
    return out


def _normal(value: Any) -> Any:
    """A value in a form where Python's == is JSON equality."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", float(value))
    if isinstance(value, list):
        return ("array", tuple(_normal(item) for item in value))
    if isinstance(value, dict):
        return ("object", frozenset((k, _normal(v)) for k, v in value.items()))
    return (type(value).__name__, value)


def _equal(a: Any, b: Any) -> bool:
    return bool(_normal(a) == _normal(b))


def _eq(values: list[Any], operand: Any) -> bool:
    if isinstance(operand, (list, dict)):
        return any(_equal(v, operand) for v in values)
    return any(_equal(v, operand) for v in _flatten(values))


def _reference_entry(key: str, operand: Any, values: list[Any]) -> bool:
    if key == "$and":
        return all(_reference(part, values) for part in operand)
    if key == "$or":
        return any(_reference(part, values) for part in operand)
    if key == "$not":
        return not _reference(operand, values)
    if key == "$eq":
        return _eq(values, operand)
    if key == "$neq":
        return not _eq(values, operand)
    if key == "$in":
        return any(_eq(values, o) for o in operand)
    if key == "$nin":
        return not any(_eq(values, o) for o in operand)
    if key == "$exist":
        return bool(values) == operand
    if key in ("$gt", "$gte", "$lt", "$lte"):
        kind = str if isinstance(operand, str) else (int, float)
        compare = {
            "$gt": lambda v: v > operand,
            "$gte": lambda v: v >= operand,
            "$lt": lambda v: v < operand,
            "$lte": lambda v: v <= operand,
        }[key]
        return any(
            isinstance(v, kind) and not isinstance(v, bool) and compare(v) for v in _flatten(values)
        )
    if key == "$regex":
        return any(
            isinstance(v, str) and len(v) <= MAX_REGEX_SUBJECT and re.search(operand, v)
            for v in _flatten(values)
        )
    found = values
    for segment in key.split("."):
        found = [
            container[segment]
            for value in found
            for container in (value if isinstance(value, list) else [value])
            if isinstance(container, dict) and segment in container
        ]
    if isinstance(operand, dict):
        return _reference(operand, found)
    return _eq(found, operand)


_NAMES = st.sampled_from(["a", "b", "c"])
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.5, 2.0]),
    st.sampled_from(["x", "y", "xy"]),
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(_NAMES, inner, max_size=3)
    ),
    max_leaves=8,
)
_PATHS = st.sampled_from(["a", "b", "a.b", "c.a"])
_NUMBERS_OR_TEXT = st.one_of(st.integers(-3, 3), st.sampled_from(["x", "xy"]))


def _operators() -> st.SearchStrategy[dict[str, Any]]:
    comparisons = st.sampled_from(["$gt", "$gte", "$lt", "$lte"])
    return st.one_of(
        st.builds(lambda v: {"$eq": v}, _SCALARS),
        st.builds(lambda v: {"$neq": v}, _SCALARS),
        st.builds(lambda k, v: {k: v}, comparisons, _NUMBERS_OR_TEXT),
        st.builds(lambda v: {"$in": v}, st.lists(_SCALARS, max_size=3)),
        st.builds(lambda v: {"$nin": v}, st.lists(_SCALARS, max_size=3)),
        st.builds(lambda v: {"$exist": v}, st.booleans()),
        st.builds(lambda v: {"$regex": v}, st.sampled_from(["^x", "y$", "xy", "[0-9]"])),
    )


_FILTERS: st.SearchStrategy[dict[str, Any]] = st.recursive(
    st.one_of(
        st.dictionaries(_PATHS, _SCALARS, min_size=1, max_size=2),
        st.dictionaries(_PATHS, _operators(), min_size=1, max_size=2),
    ),
    lambda inner: st.one_of(
        st.builds(lambda parts: {"$or": parts}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda parts: {"$and": parts}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda part: {"$not": part}, inner),
        st.dictionaries(_NAMES, inner, min_size=1, max_size=2),
    ),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_FILTERS, st.dictionaries(_NAMES, _JSON, max_size=3))
def test_compiled_filters_agree_with_the_reference(
    document: dict[str, Any], body: dict[str, Any]
) -> None:
    assert compile_filter(document).matches(body) is _reference(document, [body])


@settings(max_examples=200, deadline=None)
@given(_FILTERS)
def test_filters_survive_the_store_round_trip(document: dict[str, Any]) -> None:
    compiled = compile_filter(document)
    again = compile_filter(json.loads(json.dumps(compiled.document)))
    assert again == compiled and hash(again) == hash(compiled)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_FILTERS, min_size=1, max_size=6), st.dictionaries(_NAMES, _JSON, max_size=3))
def test_the_filter_index_finds_exactly_the_matching_filters(
    documents: list[dict[str, Any]], body: dict[str, Any]
) -> None:
    index = FilterIndex()
    compiled = [compile_filter(document) for document in documents]
    for number, one in enumerate(compiled):
        index.add(f"sub_{number}", one)
    expected = {f"sub_{number}" for number, one in enumerate(compiled) if one.matches(body)}
    assert index.matching(body) == expected


def test_the_filter_index_narrows_equalities_to_one_lookup() -> None:
    index = FilterIndex()
    evaluated: list[str] = []
    for number in range(100):
        one = compile_filter({"data": {"customer": f"c_{number}", "amount": {"$gte": 1}}})
        test = one._test

        def counting(values: list[Any], name: str = f"sub_{number}", test: Any = test) -> bool:
            evaluated.append(name)
            return bool(test(values))

        one._test = counting
        index.add(f"sub_{number}", one)
    assert index.matching({"data": {"customer": "c_7", "amount": 5}}) == {"sub_7"}
    assert evaluated == ["sub_7"]
