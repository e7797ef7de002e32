"""The event catalog: definitions shared through the store, payload validation at
publish, strict mode, and OpenAPI 3.1 / AsyncAPI 3.0 exports checked against the
specifications' own JSON Schemas."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import webhook_dispatch as wd
from webhook_dispatch.catalog import Catalog, new_event_type
from webhook_dispatch.cli import main
from webhook_dispatch.testing import FakeClock, MockReceiver

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
ORDER = {
    "type": "object",
    "required": ["id", "amount"],
    "properties": {
        "id": {"type": "string", "pattern": "^ord_"},
        "amount": {"type": "integer", "minimum": 0},
        "lines": {"type": "array", "items": {"type": "object", "required": ["sku"]}},
    },
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def dispatcher(store_url: str, clock: FakeClock) -> Iterator[wd.Dispatcher]:
    with wd.Dispatcher(store_url, transport=MockReceiver([200]), clock=clock) as d:
        yield d


# -- definitions -------------------------------------------------------------------------
def test_define_list_replace_and_remove(dispatcher: wd.Dispatcher, clock: FakeClock) -> None:
    paid = dispatcher.define_event_type(
        "order.paid",
        description="An order was paid.",
        schema=ORDER,
        examples=[{"id": "ord_1", "amount": 5}],
    )
    dispatcher.define_event_type("order.created")
    assert [entry.name for entry in dispatcher.event_types()] == ["order.created", "order.paid"]
    stored = dispatcher.event_types()[1]
    assert stored == paid
    assert stored.schema == ORDER and stored.examples == ({"id": "ord_1", "amount": 5},)
    clock.advance(timedelta(minutes=1))
    again = dispatcher.define_event_type("order.paid", description="Paid.", deprecated=True)
    assert again.created_at == paid.created_at and again.updated_at == T0 + timedelta(minutes=1)
    assert dispatcher.event_types()[1] == again and again.schema is None
    dispatcher.remove_event_type("order.created")
    assert [entry.name for entry in dispatcher.event_types()] == ["order.paid"]
    with pytest.raises(wd.NotFound):
        dispatcher.remove_event_type("order.created")


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"name": "order created"}, wd.InvalidEventType),
        ({"name": "order.*"}, wd.InvalidEventType),
        ({"name": "webhook_dispatch.endpoint.disabled"}, wd.InvalidEventType),
        ({"schema": ["not", "an", "object"]}, wd.InvalidSchema),
        ({"schema": {"type": "nonsense"}}, wd.InvalidSchema),
        ({"schema": {"properties": {"a": {"minimum": "zero"}}}}, wd.InvalidSchema),
        ({"description": 5}, wd.InvalidSchema),
        ({"description": "x" * 5000}, wd.InvalidSchema),
        ({"schema": ORDER, "examples": [{"id": "ord_1", "amount": -1}]}, wd.InvalidPayload),
        ({"examples": [{"when": datetime.now()}]}, wd.InvalidPayload),
        ({"examples": "not a list"}, wd.InvalidPayload),
    ],
)
def test_bad_definitions_are_refused_and_nothing_stored(
    dispatcher: wd.Dispatcher, arguments: dict[str, Any], error: type[Exception]
) -> None:
    call = {"name": "order.paid", **arguments}
    with pytest.raises(error):
        dispatcher.define_event_type(call.pop("name"), **call)
    assert dispatcher.event_types() == []


def test_an_example_failing_its_schema_names_the_path(dispatcher: wd.Dispatcher) -> None:
    with pytest.raises(wd.InvalidPayload) as raised:
        dispatcher.define_event_type(
            "order.paid", schema=ORDER, examples=[{"id": "x", "amount": 1}]
        )
    assert raised.value.path == "data.id" and "example 0" in str(raised.value)


def test_the_catalog_is_shared_by_every_process_on_the_store(store_url: str) -> None:
    if store_url == "memory://":
        pytest.skip("a memory store is one process's own")
    with wd.Dispatcher(store_url) as publisher, wd.Dispatcher(store_url) as operator:
        publisher.subscribe("https://h.example/x")
        publisher.publish("order.paid", {"amount": -1})  # no schema yet: accepted
        operator.define_event_type("order.paid", schema=ORDER)
        with pytest.raises(wd.InvalidPayload):
            publisher.publish("order.paid", {"amount": -1})
        operator.remove_event_type("order.paid")
        publisher.publish("order.paid", {"amount": -1})


# -- validation at publish ---------------------------------------------------------------
def test_publish_validates_the_payload_and_stores_nothing_when_it_fails(
    dispatcher: wd.Dispatcher,
) -> None:
    dispatcher.define_event_type("order.paid", schema=ORDER)
    dispatcher.subscribe("https://h.example/x", tenant="acme")
    good = dispatcher.publish("order.paid", {"id": "ord_1", "amount": 5}, tenant="acme")
    with pytest.raises(wd.InvalidPayload) as raised:
        dispatcher.publish("order.paid", {"id": "ord_2", "amount": 5, "lines": [{}]}, tenant="acme")
    assert raised.value.path == "data.lines[0]"
    assert "order.paid" in str(raised.value) and "sku" in str(raised.value)
    with pytest.raises(wd.InvalidPayload):
        dispatcher.publish_many(
            [("order.paid", {"id": "ord_3", "amount": 1}), ("order.paid", {"id": "ord_4"})]
        )
    with pytest.raises(wd.InvalidPayload, match="must be JSON"):
        dispatcher.publish("order.paid", b"<order/>", content_type="application/xml")
    assert [m.id for m in dispatcher.messages()] == [good.id]
    assert dispatcher.publish("order.other", {"anything": True}).event_type == "order.other"


def test_without_the_envelope_the_whole_body_is_validated(store_url: str) -> None:
    with wd.Dispatcher(store_url, envelope=False) as dispatcher:
        dispatcher.define_event_type("order.paid", schema=ORDER)
        dispatcher.publish("order.paid", {"id": "ord_1", "amount": 1})
        with pytest.raises(wd.InvalidPayload) as raised:
            dispatcher.publish("order.paid", {"id": "ord_1"})
    assert "amount" in str(raised.value)


async def test_the_async_face_validates_too(store_url: str) -> None:
    async with wd.AsyncDispatcher(store_url) as dispatcher:
        await dispatcher.define_event_type("order.paid", schema=ORDER)
        assert [e.name for e in await dispatcher.event_types()] == ["order.paid"]
        with pytest.raises(wd.InvalidPayload):
            await dispatcher.publish("order.paid", {"id": 5, "amount": 1})
        document = await dispatcher.export_openapi()
        assert "order.paid" in document["webhooks"]


# -- strict mode -------------------------------------------------------------------------
def test_strict_mode_refuses_unknown_types_and_patterns(store_url: str) -> None:
    with wd.Dispatcher(store_url, strict_event_types=True) as dispatcher:
        dispatcher.define_event_type("order.paid")
        dispatcher.define_event_type("order.refunded")
        with pytest.raises(wd.InvalidEventType, match="not in the event catalog"):
            dispatcher.publish("order.shipped", {})
        with pytest.raises(wd.InvalidEventType, match="matches no event type"):
            dispatcher.subscribe("https://h.example/x", event_types=["invoice.*"])
        sub = dispatcher.subscribe("https://h.example/x", event_types=["order.*"])
        dispatcher.subscribe("https://h.example/all")  # every event: always allowed
        dispatcher.subscribe("https://ops.example/x", event_types=["webhook_dispatch.**"])
        with pytest.raises(wd.InvalidEventType):
            dispatcher.update(sub.id, event_types=["invoice.paid"])
        assert dispatcher.get_subscription(sub.id).event_types == ("order.*",)
        dispatcher.publish("order.paid", {})
        assert len(list(dispatcher.subscriptions())) == 3


def test_strict_mode_is_off_by_default(dispatcher: wd.Dispatcher) -> None:
    dispatcher.subscribe("https://h.example/x", event_types=["never.defined"])
    dispatcher.publish("never.defined", {})


# -- property: fastjsonschema agrees with jsonschema, the reference validator ------------
_LEAF_SCHEMAS = st.one_of(
    st.builds(
        lambda t: {"type": t},
        st.sampled_from(["string", "integer", "number", "boolean", "null", "object", "array"]),
    ),
    st.builds(lambda n: {"minimum": n}, st.integers(-2, 2)),
    st.builds(lambda n: {"maximum": n}, st.integers(-2, 2)),
    st.builds(lambda n: {"minLength": n}, st.integers(0, 3)),
    st.builds(lambda p: {"pattern": p}, st.sampled_from(["^a", "b$", "[0-9]"])),
    st.builds(
        lambda values: {"enum": values},
        st.lists(
            st.one_of(st.integers(-1, 1), st.sampled_from(["a", "b"])), min_size=1, max_size=3
        ),
    ),
)
_SCHEMAS = st.recursive(
    _LEAF_SCHEMAS,
    lambda inner: st.one_of(
        st.builds(
            lambda props, required: {
                "type": "object",
                "properties": props,
                "required": sorted(set(required) & set(props)),
            },
            st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3),
            st.lists(st.sampled_from(["a", "b", "c"]), max_size=3),
        ),
        st.builds(lambda items: {"type": "array", "items": items}, inner),
        st.builds(lambda parts: {"anyOf": parts}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda part: {"not": part}, inner),
    ),
    max_leaves=6,
)
_INSTANCES = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([0.5, "a", "ab", "b", "1"])
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3),
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_SCHEMAS, _INSTANCES)
def test_payload_checks_agree_with_the_reference_validator(
    schema: dict[str, Any], instance: Any
) -> None:
    entry = new_event_type(
        "a.b", description="", schema=schema, examples=(), deprecated=False, now=T0, existing=None
    )
    expected = jsonschema.Draft7Validator(schema).is_valid(instance)
    try:
        Catalog([entry]).check_payload("a.b", instance)
    except wd.InvalidPayload:
        accepted = False
    else:
        accepted = True
    assert accepted is expected


# -- exports -----------------------------------------------------------------------------
def _define_shop(dispatcher: wd.Dispatcher) -> None:
    dispatcher.define_event_type(
        "order.paid",
        description="A customer paid an order.",
        schema=ORDER,
        examples=[{"id": "ord_1", "amount": 1250}],
    )
    dispatcher.define_event_type("order.legacy", description="Old.", deprecated=True)


def test_openapi_export_is_a_valid_openapi_3_1_document(dispatcher: wd.Dispatcher) -> None:
    from openapi_spec_validator import validate

    _define_shop(dispatcher)
    document = dispatcher.export_openapi(title="Shop webhooks", version="2.1.0")
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert document["info"] == {"title": "Shop webhooks", "version": "2.1.0"}
    paid = document["webhooks"]["order.paid"]["post"]
    body = paid["requestBody"]["content"]["application/json"]
    assert body["schema"]["properties"]["data"] == ORDER
    assert body["schema"]["properties"]["type"] == {"const": "order.paid"}
    assert body["examples"]["example1"]["value"]["data"] == {"id": "ord_1", "amount": 1250}
    assert {p["name"] for p in paid["parameters"]} == {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
    assert all(p["in"] == "header" and p["required"] for p in paid["parameters"])
    assert document["webhooks"]["order.legacy"]["post"]["deprecated"] is True
    json.dumps(document)  # plain JSON all the way down


def _asyncapi_schema() -> dict[str, Any]:
    path = os.environ.get("WEBHOOK_DISPATCH_ASYNCAPI_SCHEMA")
    if not path:
        pytest.skip(
            "the AsyncAPI 3.0 JSON Schema comes from npm's @asyncapi/specs: set "
            "WEBHOOK_DISPATCH_ASYNCAPI_SCHEMA to its schemas/3.0.0.json (.ci/run does)"
        )
    loaded: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    return loaded


def test_asyncapi_export_is_a_valid_asyncapi_3_0_document(dispatcher: wd.Dispatcher) -> None:
    schema = _asyncapi_schema()
    _define_shop(dispatcher)
    document = dispatcher.export_asyncapi(title="Shop webhooks", version="2.1.0")
    jsonschema.validate(document, schema, cls=jsonschema.Draft7Validator)
    assert document["asyncapi"] == "3.0.0"
    message = document["components"]["messages"]["order.paid"]
    assert message["payload"]["properties"]["data"] == ORDER
    assert set(message["headers"]["required"]) == {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
    operation = document["operations"]["send.order.paid"]
    assert operation["action"] == "send"
    assert operation["channel"] == {"$ref": "#/channels/order.paid"}
    broken = json.loads(json.dumps(document))
    broken["operations"]["send.order.paid"]["action"] = "shout"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema, cls=jsonschema.Draft7Validator)


def test_an_empty_catalog_exports_valid_documents(dispatcher: wd.Dispatcher) -> None:
    from openapi_spec_validator import validate

    validate(dispatcher.export_openapi())
    assert dispatcher.export_openapi()["webhooks"] == {}


def test_cli_catalog_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WEBHOOK_DISPATCH_STORE", raising=False)
    store = f"sqlite:///{tmp_path}/cli.db"
    with wd.Dispatcher(store) as dispatcher:
        _define_shop(dispatcher)
    assert (
        main(["catalog", "export", "--format", "openapi", "--store", store, "--title", "Shop"]) == 0
    )
    document = json.loads(capsys.readouterr().out)
    assert document["info"]["title"] == "Shop" and "order.paid" in document["webhooks"]
    assert main(["catalog", "export", "--format", "asyncapi", "--store", store]) == 0
    assert json.loads(capsys.readouterr().out)["asyncapi"] == "3.0.0"
    assert main(["catalog", "list", "--store", store]) == 0
    out = capsys.readouterr().out
    assert "order.paid" in out and "A customer paid an order." in out and "deprecated" in out
