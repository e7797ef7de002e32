"""The public names: `__all__` is sorted and complete, and each has a docstring."""

from __future__ import annotations

import inspect
import types

import pytest

import webhook_dispatch as wd
from webhook_dispatch import errors, testing

MODULES = [wd, errors, testing]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_all_is_sorted(module: types.ModuleType) -> None:
    assert list(module.__all__) == sorted(module.__all__)


def _defined_for(value: object, module: types.ModuleType) -> bool:
    """The package re-exports names from its submodules; a submodule exports its own."""
    origin = str(getattr(value, "__module__", ""))
    if module is wd:
        return origin.startswith("webhook_dispatch")
    return origin == module.__name__


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_all_is_complete(module: types.ModuleType) -> None:
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and _defined_for(value, module)
        and (inspect.isclass(value) or inspect.isfunction(value))
    }
    assert public <= set(module.__all__), public - set(module.__all__)
    assert all(hasattr(module, name) for name in module.__all__)


def test_every_public_name_has_a_docstring() -> None:
    for name in wd.__all__:
        value = getattr(wd, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), name


def test_version_matches_package_metadata() -> None:
    from importlib.metadata import version

    assert wd.__version__ == version("webhook-dispatch")


def test_new_id_is_the_ulid_layout_in_crockford_base32(monkeypatch: pytest.MonkeyPatch) -> None:
    """Known answers: the millisecond clock in the first ten characters, 80 random bits in
    the last sixteen, Crockford's alphabet (no i, l, o, u); ids sort by time."""
    from webhook_dispatch import models

    monkeypatch.setattr(models.time, "time", lambda: 1_700_000_000.123)
    monkeypatch.setattr(models.os, "urandom", lambda n: bytes(range(1, n + 1)))
    # 1,700,000,000,123 ms then bytes 01..0a, five bits a character (a reference encoder).
    assert models.new_id("msg") == "msg_01hf7yat3v041061050r3gg28a"
    monkeypatch.setattr(models.os, "urandom", lambda n: b"\xff" * n)
    assert models.new_id("x") == "x_01hf7yat3vzzzzzzzzzzzzzzzz"
    monkeypatch.setattr(models.time, "time", lambda: 1_700_000_000.124)
    monkeypatch.setattr(models.os, "urandom", lambda n: bytes(n))
    later = models.new_id("x")
    assert later == "x_01hf7yat3w0000000000000000" and later > "x_01hf7yat3vzzzzzzzzzzzzzzzz"
