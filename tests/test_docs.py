"""Run the Python examples in docs/*.md and README.md, so the documentation cannot rot.

Every ```python block runs on its own in a fresh temporary directory. A block whose
first line is ``# not run`` is skipped (it needs a server or blocks forever); a block
whose first line names a ``test_*.py`` file is written to that file and run by pytest in
a subprocess, where the package's pytest plugin must provide its fixtures.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]

_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
_PYTEST_FILE = re.compile(r"#\s*(test_\w+\.py)\b")


def _blocks() -> list[tuple[str, str]]:
    found = []
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{document.relative_to(ROOT)}:{line}", match.group(1)))
    return found


BLOCKS = _blocks()


def _first_line(code: str) -> str:
    return code.lstrip().partition("\n")[0].strip()


def _params(kind: str) -> list[Any]:
    chosen = []
    for where, code in BLOCKS:
        first = _first_line(code)
        if first.startswith("# not run"):
            continue
        is_pytest_file = _PYTEST_FILE.match(first) is not None
        if (kind == "pytest") != is_pytest_file:
            continue
        chosen.append(pytest.param(code, id=where))
    return chosen


def test_most_examples_run() -> None:
    """Skipping is the exception: a docs change that skips everything fails here."""
    skipped = [where for where, code in BLOCKS if _first_line(code).startswith("# not run")]
    assert len(BLOCKS) >= 20
    assert len(skipped) <= len(BLOCKS) // 4, skipped


@pytest.mark.parametrize("code", _params("script"))
def test_example_runs(code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(code, "<docs example>", "exec"), namespace)


@pytest.mark.parametrize("code", _params("pytest"))
def test_pytest_example_passes(code: str, tmp_path: Path) -> None:
    name = _PYTEST_FILE.match(_first_line(code))
    assert name is not None
    (tmp_path / name.group(1)).write_text(code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name.group(1)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_respx_router_as_transport(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The respx recipe from docs/testing.md, checked directly: a router's handler in
    httpx.MockTransport receives signed requests and scripts their answers."""
    import httpx
    import respx

    import webhook_dispatch as wd

    monkeypatch.chdir(tmp_path)
    secret = wd.generate_secret()
    with respx.mock(base_url="https://example.com", assert_all_called=True) as mock:
        route = mock.post("/hooks").mock(
            side_effect=[httpx.Response(503), httpx.Response(429), httpx.Response(200)]
        )
        with wd.Dispatcher(
            "sqlite:///webhooks.db",
            transport=httpx.MockTransport(mock.handler),
            retry=wd.RetryPolicy.fixed([0, 0, 0]),
        ) as dispatcher:
            dispatcher.subscribe("https://example.com/hooks", secret=secret)
            message = dispatcher.publish("order.created", {"id": "ord_1"})
            assert dispatcher.run_until_idle() == 3
            assert [a.status_code for a in dispatcher.attempts(message.id)] == [503, 429, 200]

    assert route.call_count == 3
    for call in route.calls:
        assert call.request.headers["webhook-id"] == message.id
        wd.verify(call.request.content, call.request.headers, secret)


def test_the_readme_usage_runs_twice_in_a_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start-up code runs again: the Usage snippet, run twice on the same database file,
    keeps one subscription and delivers each run's event."""
    monkeypatch.chdir(tmp_path)
    [usage] = [code for where, code in BLOCKS if where.startswith("README.md") and "key=" in code]
    for _ in range(2):
        exec(compile(usage, "<README usage>", "exec"), {"__name__": "__main__"})
    import webhook_dispatch as wd

    with wd.Dispatcher(f"sqlite:///{tmp_path / 'webhooks.db'}") as dispatcher:
        assert len(list(dispatcher.subscriptions())) == 1
        assert len(list(dispatcher.messages())) == 2
