"""Tests for event types, patterns and the subscription registry."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook_dispatch.errors import ConfigurationError, InvalidEventType
from webhook_dispatch.registry import (
    Registry,
    normalize_patterns,
    pattern_matches,
    validate_event_type,
    validate_pattern,
)

# ---------------------------------------------------------------- event types


@pytest.mark.parametrize(
    "event_type",
    ["order", "order.created", "a.b.c.d", "Order_2.created_at", "_", "9", "a" * 255],
)
def test_valid_event_types_are_returned_unchanged(event_type: str) -> None:
    assert validate_event_type(event_type) == event_type


BAD_EVENT_TYPES: list[object] = [
    None,
    42,
    b"order.created",
    ["order.created"],
    "",
    ".",
    "..",
    ".order",
    "order.",
    "order..created",
    "order.*",
    "*",
    "**",
    "order.**",
    "order-created",
    "order created",
    "order/created",
    "order.created\n",
    "ordér.created",
    "order:created",
    "a" * 256,
]


@pytest.mark.parametrize("event_type", BAD_EVENT_TYPES)
def test_bad_event_types_are_refused(event_type: object) -> None:
    with pytest.raises(InvalidEventType):
        validate_event_type(event_type)


def test_event_type_error_is_a_configuration_and_value_error() -> None:
    with pytest.raises(ConfigurationError):
        validate_event_type("bad type")
    with pytest.raises(ValueError, match="bad type"):
        validate_event_type("bad type")


@pytest.mark.parametrize(
    ("event_type", "fragment"),
    [
        (".order", "starts with a dot"),
        ("order.", "ends with a dot"),
        ("order..created", "empty segment"),
        ("order.*", "wildcard"),
        ("order-created", "letters, digits"),
        (7, "must be a str"),
        ("", "must not be empty"),
    ],
)
def test_event_type_errors_explain_the_problem(event_type: object, fragment: str) -> None:
    with pytest.raises(InvalidEventType, match=fragment):
        validate_event_type(event_type)


def test_long_bad_values_are_truncated_in_messages() -> None:
    with pytest.raises(InvalidEventType) as caught:
        validate_event_type("x-" * 500)
    assert len(str(caught.value)) < 200


# ---------------------------------------------------------------- patterns


@pytest.mark.parametrize(
    "pattern",
    ["order.created", "order.*", "*.created", "*.*", "order.**", "*.**", "a.*.c.**", "*", "**"],
)
def test_valid_patterns(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern


BAD_PATTERNS: list[object] = [
    None,
    3,
    "",
    ".",
    "order.",
    ".order",
    "order..created",
    "**.created",
    "order.**.created",
    "order.***",
    "order*",
    "ord*er.created",
    "order.cre*",
    "*order",
    "order.#",
    "order.>",
    "order created",
    "a." * 128,
]


@pytest.mark.parametrize("pattern", BAD_PATTERNS)
def test_bad_patterns_are_refused(pattern: object) -> None:
    with pytest.raises(InvalidEventType):
        validate_pattern(pattern)


def test_double_star_before_the_end_is_explained() -> None:
    with pytest.raises(InvalidEventType, match=r"'\*\*' may only end a pattern"):
        validate_pattern("a.**.b")


def test_partial_wildcard_is_explained() -> None:
    with pytest.raises(InvalidEventType, match="whole segment"):
        validate_pattern("order.cre*")


def test_normalize_none_means_everything() -> None:
    assert normalize_patterns(None) == ("*",)


@pytest.mark.parametrize("patterns", [["*"], ["**"], ["order.created", "**"], ["a.*", "*", "b"]])
def test_normalize_collapses_catch_all(patterns: list[str]) -> None:
    assert normalize_patterns(patterns) == ("*",)


def test_normalize_dedupes_keeping_order() -> None:
    given_patterns = ["b.*", "a.created", "b.*", "c.**", "a.created"]
    assert normalize_patterns(given_patterns) == ("b.*", "a.created", "c.**")


def test_normalize_accepts_any_iterable() -> None:
    assert normalize_patterns(p for p in ["a", "b"]) == ("a", "b")
    assert normalize_patterns(("a",)) == ("a",)


def test_normalize_refuses_a_bare_string() -> None:
    with pytest.raises(InvalidEventType, match="list"):
        normalize_patterns("order.created")


@pytest.mark.parametrize("patterns", [[], (), iter([])])
def test_normalize_refuses_empty(patterns: list[str]) -> None:
    with pytest.raises(InvalidEventType, match="empty"):
        normalize_patterns(patterns)


@pytest.mark.parametrize(
    "patterns", [["order.created", "bad pattern"], [None], [b"order"], 5, b"order"]
)
def test_normalize_refuses_bad_members_and_non_iterables(patterns: object) -> None:
    with pytest.raises(InvalidEventType):
        normalize_patterns(patterns)  # type: ignore[arg-type]


# ---------------------------------------------------------------- reference matcher


@pytest.mark.parametrize(
    ("pattern", "event_type", "expected"),
    [
        ("order.created", "order.created", True),
        ("order.created", "order.updated", False),
        ("order.created", "order.created.late", False),
        ("order.created", "order", False),
        ("order.*", "order.created", True),
        ("order.*", "order", False),
        ("order.*", "order.created.late", False),
        ("*.created", "order.created", True),
        ("*.created", "created", False),
        ("*.*", "a.b", True),
        ("*.*", "a", False),
        ("order.**", "order.created", True),
        ("order.**", "order.created.late.again", True),
        ("order.**", "order", False),
        ("order.**", "orders.created", False),
        ("*.**", "a", False),
        ("*.**", "a.b", True),
        ("a.*.c.**", "a.b.c.d", True),
        ("a.*.c.**", "a.b.c", False),
        ("*", "anything", True),
        ("*", "any.thing.at.all", True),
        ("**", "x.y", True),
        ("Order.created", "order.created", False),
    ],
)
def test_pattern_matches(pattern: str, event_type: str, expected: bool) -> None:
    assert pattern_matches(pattern, event_type) is expected


def test_pattern_matches_validates_its_inputs() -> None:
    with pytest.raises(InvalidEventType):
        pattern_matches("order.**.x", "order.a.x")
    with pytest.raises(InvalidEventType):
        pattern_matches("order.*", "order.")


# ---------------------------------------------------------------- registry


def test_exact_pattern() -> None:
    registry = Registry()
    registry.add("sub_1", ["order.created"])
    assert registry.match("order.created") == ["sub_1"]
    assert registry.match("order.updated") == []
    assert registry.match("order") == []
    assert registry.match("order.created.late") == []


def test_single_star() -> None:
    registry = Registry()
    registry.add("sub_1", ["order.*"])
    registry.add("sub_2", ["*.created"])
    assert registry.match("order.created") == ["sub_1", "sub_2"]
    assert registry.match("order.paid") == ["sub_1"]
    assert registry.match("invoice.created") == ["sub_2"]
    assert registry.match("order") == []
    assert registry.match("order.created.late") == []


def test_double_star() -> None:
    registry = Registry()
    registry.add("sub_1", ["order.**"])
    assert registry.match("order") == []
    assert registry.match("order.created") == ["sub_1"]
    assert registry.match("order.line.added") == ["sub_1"]
    assert registry.match("invoice.created") == []


def test_star_then_double_star() -> None:
    registry = Registry()
    registry.add("sub_1", ["*.**"])
    assert registry.match("order") == []
    assert registry.match("order.created") == ["sub_1"]


@pytest.mark.parametrize("patterns", [None, ["*"], ["**"], ["order.created", "*"]])
def test_catch_all(patterns: list[str] | None) -> None:
    registry = Registry()
    registry.add("sub_1", normalize_patterns(patterns))
    assert registry.match("order.created") == ["sub_1"]
    assert registry.match("x") == ["sub_1"]
    assert registry.match("a.b.c.d.e") == ["sub_1"]


def test_each_id_once_even_when_several_patterns_match() -> None:
    registry = Registry()
    registry.add("sub_1", ["order.created", "order.*", "*.created", "order.**"])
    assert registry.match("order.created") == ["sub_1"]


def test_results_follow_first_added_order() -> None:
    registry = Registry()
    ids = [f"sub_{n}" for n in (5, 1, 9, 3, 7)]
    for subscription_id in ids:
        registry.add(subscription_id, ["order.*"])
    registry.add("sub_0", ["*"])
    assert registry.match("order.created") == [*ids, "sub_0"]


def test_replace_keeps_position_and_drops_old_patterns() -> None:
    registry = Registry()
    registry.add("sub_1", ["order.created"])
    registry.add("sub_2", ["order.created"])
    registry.add("sub_1", ["order.*"])
    assert registry.match("order.created") == ["sub_1", "sub_2"]
    registry.add("sub_1", ["invoice.paid"])
    assert registry.match("order.created") == ["sub_2"]
    assert registry.match("order.updated") == []
    assert registry.match("invoice.paid") == ["sub_1"]
    assert len(registry) == 2
    assert registry.patterns("sub_1") == ("invoice.paid",)


def test_replace_catch_all_with_specific() -> None:
    registry = Registry()
    registry.add("sub_1", ["*"])
    registry.add("sub_1", ["order.created"])
    assert registry.match("invoice.paid") == []


def test_remove() -> None:
    registry = Registry()
    registry.add("sub_1", ["order.*", "*"])
    registry.add("sub_2", ["order.**"])
    assert "sub_1" in registry
    registry.remove("sub_1")
    assert "sub_1" not in registry
    assert registry.match("order.created") == ["sub_2"]
    registry.remove("sub_2")
    assert registry.match("order.created") == []
    assert len(registry) == 0


def test_remove_absent_is_a_no_op() -> None:
    registry = Registry()
    registry.remove("nope")
    registry.add("sub_1", ["a"])
    registry.remove("nope")
    assert registry.match("a") == ["sub_1"]


def test_remove_then_re_add_goes_to_the_end() -> None:
    registry = Registry()
    registry.add("sub_1", ["a"])
    registry.add("sub_2", ["a"])
    registry.remove("sub_1")
    registry.add("sub_1", ["a"])
    assert registry.match("a") == ["sub_2", "sub_1"]


def test_removing_everything_prunes_the_trie() -> None:
    registry = Registry()
    registry.add("sub_1", ["a.b.c", "a.*.c", "a.**", "x.*.**"])
    registry.add("sub_2", ["a.b"])
    registry.remove("sub_1")
    registry.remove("sub_2")
    root = registry._root
    assert root.is_empty()


def test_cache_is_invalidated_by_add_and_remove() -> None:
    registry = Registry()
    registry.add("sub_1", ["order.*"])
    assert registry.match("order.created") == ["sub_1"]
    registry.add("sub_2", ["order.created"])
    assert registry.match("order.created") == ["sub_1", "sub_2"]
    registry.remove("sub_1")
    assert registry.match("order.created") == ["sub_2"]


def test_match_returns_a_fresh_list() -> None:
    registry = Registry()
    registry.add("sub_1", ["a"])
    registry.match("a").append("intruder")
    assert registry.match("a") == ["sub_1"]


def test_match_refuses_bad_event_types() -> None:
    registry = Registry()
    registry.add("sub_1", ["*"])
    with pytest.raises(InvalidEventType):
        registry.match("order.*")
    with pytest.raises(InvalidEventType):
        registry.match("")


def test_add_validates_patterns_and_leaves_registry_unchanged_on_error() -> None:
    registry = Registry()
    registry.add("sub_1", ["a"])
    with pytest.raises(InvalidEventType):
        registry.add("sub_1", ["a.**.b"])
    with pytest.raises(InvalidEventType):
        registry.add("sub_2", [])
    with pytest.raises(InvalidEventType):
        registry.add("sub_2", "a")
    assert registry.match("a") == ["sub_1"]
    assert "sub_2" not in registry


def test_many_distinct_event_types_do_not_break_the_cache() -> None:
    registry = Registry()
    registry.add("sub_1", ["e.*"])
    for n in range(5000):
        assert registry.match(f"e.n{n}") == ["sub_1"]
    assert registry.match("e.n0") == ["sub_1"]


# ---------------------------------------------------------------- properties

SEGMENTS = ["a", "b", "c"]
event_types = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=5).map(".".join)


@st.composite
def patterns(draw: st.DrawFn) -> str:
    body = draw(st.lists(st.sampled_from([*SEGMENTS, "*"]), min_size=1, max_size=4))
    if draw(st.booleans()):
        body.append("**")
    if draw(st.integers(0, 20)) == 0:
        body = [draw(st.sampled_from(["*", "**"]))]
    return ".".join(body)


@settings(max_examples=300, deadline=None)
@given(
    subscriptions=st.lists(st.lists(patterns(), min_size=1, max_size=3), max_size=12),
    removed=st.sets(st.integers(0, 11)),
    probes=st.lists(event_types, min_size=1, max_size=10),
)
def test_registry_agrees_with_reference(
    subscriptions: list[list[str]], removed: set[int], probes: list[str]
) -> None:
    registry = Registry()
    for index, subscription_patterns in enumerate(subscriptions):
        registry.add(f"sub_{index}", subscription_patterns)
    for index in removed:
        registry.remove(f"sub_{index}")
    for event_type in probes:
        expected = [
            f"sub_{index}"
            for index, subscription_patterns in enumerate(subscriptions)
            if index not in removed
            and any(pattern_matches(p, event_type) for p in subscription_patterns)
        ]
        assert registry.match(event_type) == expected


@given(pattern=patterns())
def test_generated_patterns_are_valid(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern


# ---------------------------------------------------------------- scale


def test_ten_thousand_subscriptions() -> None:
    rng = random.Random(20240601)
    nouns = [f"n{n}" for n in range(40)]
    verbs = [f"v{n}" for n in range(15)]
    extras = ["x", "y", "z"]

    def random_pattern() -> str:
        shape = rng.randrange(7)
        if shape == 0:
            return f"{rng.choice(nouns)}.{rng.choice(verbs)}"
        if shape == 1:
            return f"{rng.choice(nouns)}.*"
        if shape == 2:
            return f"*.{rng.choice(verbs)}"
        if shape == 3:
            return f"{rng.choice(nouns)}.**"
        if shape == 4:
            return f"{rng.choice(nouns)}.*.{rng.choice(extras)}"
        if shape == 5:
            return f"*.{rng.choice(verbs)}.**"
        return "*" if rng.randrange(50) == 0 else f"{rng.choice(nouns)}.{rng.choice(verbs)}.x"

    def random_event_type() -> str:
        parts = [rng.choice(nouns), rng.choice(verbs)]
        parts += rng.sample(extras, rng.randrange(3))
        return ".".join(parts)

    subscriptions = {
        f"sub_{n}": [random_pattern() for _ in range(rng.randint(1, 3))] for n in range(10_000)
    }
    registry = Registry()
    for subscription_id, subscription_patterns in subscriptions.items():
        registry.add(subscription_id, subscription_patterns)
    assert len(registry) == 10_000

    probes = [random_event_type() for _ in range(1_000)]
    results = {event_type: registry.match(event_type) for event_type in probes}

    for event_type in rng.sample(sorted(results), 25):
        expected = [
            subscription_id
            for subscription_id, subscription_patterns in subscriptions.items()
            if any(pattern_matches(p, event_type) for p in subscription_patterns)
        ]
        assert results[event_type] == expected
