"""The error tree: every exception the package defines descends from
`WebhookDispatchError`, carries typed context, and is drawn truly in `errors`' docstring."""

from __future__ import annotations

import ast
import builtins
import importlib
import importlib.util
import pickle
import pkgutil
import re
import sqlite3
import types
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

import webhook_dispatch as wd
from webhook_dispatch import errors
from webhook_dispatch.auth import EndpointAuth, OAuth2ClientCredentials, register_auth
from webhook_dispatch.stores.sqlite import SCHEMA_VERSION, SQLiteStore

ERROR_CLASSES = [getattr(errors, name) for name in errors.__all__]


def _package_modules() -> list[types.ModuleType]:
    modules = [wd]
    for info in pkgutil.walk_packages(wd.__path__, "webhook_dispatch."):
        if info.name.endswith("__main__"):  # running it is the CLI
            continue
        modules.append(importlib.import_module(info.name))
    return modules


MODULES = _package_modules()
PUBLIC_MODULES = [
    module
    for module in MODULES
    if not any(part.startswith("_") for part in module.__name__.split("."))
]
# Exported by a module that did not define them, on purpose.
DELIBERATE_REEXPORTS = {
    ("webhook_dispatch.netguard", "BlockedAddress"),  # beside the guard that raises it
    ("webhook_dispatch.contrib.fastapi", "WebhookDispatch"),  # FastAPI is Starlette
    ("webhook_dispatch.contrib.fastapi", "get_dispatcher"),
}


def _is_class(value: object) -> bool:
    # Not isinstance(): Django's lazy settings object resolves itself on __class__.
    return issubclass(type(value), type)


def _defined_here(value: object, module: types.ModuleType) -> bool:
    return (_is_class(value) or type(value) is types.FunctionType) and (
        getattr(value, "__module__", None) == module.__name__
    )


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_every_exception_class_descends_from_the_root(module: types.ModuleType) -> None:
    defined = [
        value
        for value in list(vars(module).values())
        if _is_class(value) and issubclass(value, BaseException) and _defined_here(value, module)
    ]
    for cls in defined:
        assert issubclass(cls, wd.WebhookDispatchError), cls


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_every_all_entry_is_public_and_importable(module: types.ModuleType) -> None:
    names = vars(module).get("__all__")
    if names is None:
        return  # Django's management command modules follow Django's layout
    assert len(set(names)) == len(names), "duplicate names"
    for name in names:
        assert not name.startswith("_") or (module is wd and name == "__version__"), name
        value = getattr(module, name)
        assert not isinstance(value, types.ModuleType), name
        if _is_class(value) or type(value) is types.FunctionType:
            origin = str(getattr(value, "__module__", ""))
            is_package = hasattr(module, "__path__")
            assert (
                origin == module.__name__
                or (is_package and origin.startswith(module.__name__ + "."))
                or (module.__name__, name) in DELIBERATE_REEXPORTS
            ), f"{name} comes from {origin}"
            assert getattr(value, "__name__", name) == name, f"{name} is an alias"


def test_every_error_is_exported_by_the_package() -> None:
    assert set(errors.__all__) <= set(wd.__all__)
    for name in errors.__all__:
        assert getattr(wd, name) is getattr(errors, name)


def _tree() -> dict[str, tuple[str | None, str | None, set[str]]]:
    """name -> (parent, built-in named in parentheses, attributes) from the docstring."""
    assert errors.__doc__ is not None
    drawing = errors.__doc__.split("```")[1]
    line_pattern = re.compile(r"^((?:│   |    )*)(?:├── |└── )(\w+)(?: \((\w+)\))?")
    found: dict[str, tuple[str | None, str | None, set[str]]] = {}
    stack: list[str] = []
    last = ""
    for line in drawing.strip("\n").splitlines():
        attributes = set(re.findall(r"\s\.(\w+)", line))
        if not found:
            last = line.split()[0]
            found[last] = (None, None, attributes)
            stack = [last]
            continue
        match = line_pattern.match(line)
        if match is None:  # a description continued on the next line
            found[last][2].update(attributes)
            continue
        depth = len(match.group(1)) // 4 + 1
        del stack[depth:]
        last = match.group(2)
        found[last] = (stack[-1], match.group(3), attributes)
        stack.append(last)
    return found


def test_the_docstring_draws_the_real_tree() -> None:
    tree = _tree()
    assert set(tree) == {cls.__name__ for cls in ERROR_CLASSES}
    for cls in ERROR_CLASSES:
        parent, builtin, attributes = tree[cls.__name__]
        in_the_package = [base for base in cls.__bases__ if base.__module__ == errors.__name__]
        assert [base.__name__ for base in in_the_package] == ([parent] if parent else []), cls
        others = [base.__name__ for base in cls.__bases__ if base not in in_the_package]
        root_base = ["Exception"] if parent is None else []
        assert others == ([builtin] if builtin else root_base), cls
        assert builtin is None or getattr(builtins, builtin) in cls.__bases__
        annotated = {
            name for klass in cls.__mro__ for name in vars(klass).get("__annotations__", {})
        }
        assert attributes <= annotated, (cls, attributes - annotated)


def _example(cls: type[errors.WebhookDispatchError]) -> errors.WebhookDispatchError:
    if cls is errors.BlockedAddress:
        return errors.BlockedAddress("hooks.example.com", [("10.0.0.1", "private (RFC 1918)")])
    return cls("something went wrong")


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_context_is_none_unless_given(cls: type[errors.WebhookDispatchError]) -> None:
    error = _example(cls)
    assert error.subscription is None
    assert error.message is None
    own = {
        name
        for klass in cls.__mro__[:-3]  # not WebhookDispatchError's, Exception's, object's
        for name in vars(klass).get("__annotations__", {})
    } - {"host", "refused", "reason"}
    for name in own:
        assert getattr(error, name) is None, name


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_errors_survive_pickling(cls: type[errors.WebhookDispatchError]) -> None:
    """Logging handlers and process pools pickle exceptions."""
    error = _example(cls)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)


def test_blocked_address_keeps_its_context_through_pickling() -> None:
    error = errors.BlockedAddress("hooks.example.com", (), reason="only https endpoints")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.host, copy.refused, copy.reason) == (
        "hooks.example.com",
        (),
        "only https endpoints",
    )
    assert str(copy) == "blocked: hooks.example.com: only https endpoints"


def test_unknown_context_keywords_are_refused() -> None:
    """Context is typed: a misspelled keyword is an error, not a silent new attribute."""
    with pytest.raises(TypeError):
        wd.StoreError("x", pth="/tmp/db")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        wd.WebhookDispatchError("x", size=3)  # type: ignore[call-arg]


def test_payload_too_large_says_how_large() -> None:
    with (
        wd.Dispatcher(max_payload_size=100) as dispatcher,
        pytest.raises(wd.PayloadTooLarge) as caught,
    ):
        dispatcher.publish("order.created", {"x": "y" * 200})
    assert caught.value.limit == 100
    assert caught.value.size is not None and caught.value.size > 100


def test_schema_error_names_the_versions_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "hooks.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as connection:
        connection.execute(
            "UPDATE webhook_dispatch_meta SET value = ? WHERE key = 'schema_version'",
            (SCHEMA_VERSION + 1,),
        )
    connection.close()
    with pytest.raises(wd.SchemaError) as caught:
        SQLiteStore(path)
    assert caught.value.found_version == SCHEMA_VERSION + 1
    assert caught.value.supported_version == SCHEMA_VERSION
    assert caught.value.path == str(path)


def _runtime_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Top-level import statements outside ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    for statement in tree.body:
        if isinstance(statement, ast.If) and ast.unparse(statement.test) == "TYPE_CHECKING":
            continue
        found.extend(
            node for node in ast.walk(statement) if isinstance(node, (ast.Import, ast.ImportFrom))
        )
    return found


def test_errors_imports_nothing_from_the_package() -> None:
    """Any module can import the tree first: no import cycle can run through it."""
    path = Path(errors.__file__)
    for node in _runtime_imports(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, ast.unparse(node)
            assert not (node.module or "").startswith("webhook_dispatch"), ast.unparse(node)
        else:
            assert not any(a.name.startswith("webhook_dispatch") for a in node.names)
    # And it loads on its own, outside the package.
    spec = importlib.util.spec_from_file_location("standalone_errors", path)
    assert spec is not None and spec.loader is not None
    standalone = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standalone)
    assert issubclass(standalone.InvalidURL, standalone.WebhookDispatchError)


def test_subscription_validators_raise_configuration_errors() -> None:
    moment = datetime(2030, 1, 1, tzinfo=timezone.utc)
    fields: dict[str, Any] = {
        "id": "sub_1",
        "url": "https://a.example/h",
        "secret": "s",
        "created_at": moment,
        "updated_at": moment,
    }
    for option, value in [
        ("rate_limit", "fast"),
        ("rate_limit", 0),
        ("max_in_flight", 1.5),
        ("max_in_flight", -1),
        ("max_in_flight", True),
    ]:
        with pytest.raises(wd.ConfigurationError, match=option):
            wd.Subscription(**{**fields, option: value})


class _Unstorable(EndpointAuth):
    """A custom auth that forgot to_dict()."""

    type_name = "test.unstorable"

    def auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
        yield request


def test_a_custom_auth_without_to_dict_is_refused_and_nothing_stored(tmp_path: Path) -> None:
    register_auth(_Unstorable)
    with wd.Dispatcher(f"sqlite:///{tmp_path / 'hooks.db'}") as dispatcher:
        with pytest.raises(wd.InvalidAuth, match="to_dict"):
            dispatcher.subscribe("https://hooks.example.com/h", auth=_Unstorable())
        assert dispatcher.subscriptions() == []


def test_oauth2_with_a_sync_client_is_a_configuration_error() -> None:
    auth = OAuth2ClientCredentials(
        "https://auth.example.com/token", client_id="id", client_secret="s" * 16
    )
    with pytest.raises(wd.InvalidAuth, match="async"):
        next(auth.sync_auth_flow(httpx.Request("POST", "https://hooks.example.com/h")))
