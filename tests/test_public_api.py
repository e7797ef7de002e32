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
