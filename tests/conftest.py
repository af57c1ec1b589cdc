"""Shared test machinery.

* Every async test runs twice: on the default asyncio loop and on uvloop
  (``pytest_asyncio_loop_factories``).
* Every test fails if it leaks a file descriptor, if anything reaches the
  loop's exception handler, or on any warning (``filterwarnings = error``,
  which covers ``ResourceWarning`` from unclosed sockets).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import pytest
import pytest_asyncio
import uvloop

# libuv opens a pipe with the first uvloop loop of a process and keeps it for the
# process's life; open it now so the fd-leak check does not blame the first test.
uvloop.new_event_loop().close()


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def _open_fds() -> dict[int, str]:
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the fd of the listdir itself, gone by now
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")

    return fds


@pytest.fixture(autouse=True)
def _no_fd_leaks() -> Iterator[None]:
    """Fail a test that leaves more file descriptors open than it found."""
    # One full collection per test, after it: the previous test's collection left
    # nothing for a second one here to find (each costs 20-50 ms; 2,000 tests).
    before = _open_fds()
    yield
    gc.collect()
    after = _open_fds()
    leaked = {fd: target for fd, target in after.items() if before.get(fd) != target}
    # pytest-asyncio creates the test's loop after this fixture starts and closes it
    # before this runs again; anything still open now belongs to the test.
    assert not leaked, f"file descriptors leaked: {leaked}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and asyncio.iscoroutinefunction(item.obj):
            item.fixturenames.append("_no_loop_errors")


@pytest_asyncio.fixture
async def _no_loop_errors() -> AsyncIterator[None]:
    """Fail an async test whose loop's exception handler was called."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield
    # Let callbacks scheduled by the test's last actions run before judging.
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert not errors, f"errors reached the loop's exception handler: {errors}"


def require(condition: object, reason: str) -> None:
    """Skip the test with ``reason`` when ``condition`` is false; in CI, fail instead.

    Tests that need the kernel (multicast, namespaces, root) must run for real in CI
    (``CI=true``), so a missing capability there is an error, never a silent skip.
    """
    if condition:
        return

    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"CI must be able to run this test, but: {reason}")

    pytest.skip(reason)
