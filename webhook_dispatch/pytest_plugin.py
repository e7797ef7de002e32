"""pytest fixtures for testing code that publishes webhooks; loaded automatically by the
``pytest11`` entry point once webhook_dispatch is installed.

``fake_clock``, ``mock_receiver`` and ``dispatcher`` (memory store, wired to both), and,
when pytest-asyncio is installed, ``async_dispatcher``: the same for the async face.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from .dispatcher import AsyncDispatcher, Dispatcher
from .testing import FakeClock, MockReceiver

__all__ = ["dispatcher", "fake_clock", "mock_receiver"]

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the async fixture needs pytest-asyncio
    _HAVE_ASYNCIO_PLUGIN = False
else:
    _HAVE_ASYNCIO_PLUGIN = True


@pytest.fixture
def fake_clock() -> FakeClock:
    """A `FakeClock` at 2030-01-01T00:00:00Z."""
    return FakeClock()


@pytest.fixture
def mock_receiver(fake_clock: FakeClock) -> MockReceiver:
    """A `MockReceiver` answering 200 to everything; set ``mock_receiver`` attributes or
    build your own for scripts."""
    return MockReceiver(clock=fake_clock)


@pytest.fixture
def dispatcher(fake_clock: FakeClock, mock_receiver: MockReceiver) -> Iterator[Dispatcher]:
    """A `Dispatcher` on the memory store, sending to ``mock_receiver`` on ``fake_clock``."""
    with Dispatcher("memory://", clock=fake_clock, transport=mock_receiver) as instance:
        yield instance


if _HAVE_ASYNCIO_PLUGIN:

    @pytest_asyncio.fixture
    async def async_dispatcher(
        fake_clock: FakeClock, mock_receiver: MockReceiver
    ) -> AsyncIterator[AsyncDispatcher]:
        """An `AsyncDispatcher` on the memory store, sending to ``mock_receiver`` on
        ``fake_clock``, closed on the test's event loop (needs pytest-asyncio)."""
        async with AsyncDispatcher(
            "memory://", clock=fake_clock, transport=mock_receiver
        ) as instance:
            yield instance

    __all__ += ["async_dispatcher"]
