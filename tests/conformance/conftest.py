"""The ``transport`` fixture: every conformance test runs once per transport.

A test that takes ``transport`` is parametrized over `KINDS` (ids ``udpm``,
``unix-abstract``, ``unix-directory``, ``seqpacket-abstract``,
``seqpacket-directory``), and the root conftest runs each on asyncio and uvloop.
``@pytest.mark.transports(flag=value, ...)`` keeps the kinds whose capability
flags (`Kind`) have those values, so a test of what only some transports can do
is written once and never skipped on the others.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator

import pytest

from tests._bus_support import NO_LOOPBACK_MULTICAST, free_url, loopback_multicast_works
from tests.conformance._support import CAPABILITIES, KINDS, Kind, Transport
from tests.conftest import require


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "transports(**flags): run only on the transports whose capability flags "
        "(tests/conformance/_support.py, Kind) have these values",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "transport" not in metafunc.fixturenames:
        return

    flags: dict[str, bool] = {}
    for mark in metafunc.definition.iter_markers("transports"):
        flags.update(mark.kwargs)

    unknown = sorted(set(flags) - set(CAPABILITIES))
    if unknown:
        raise pytest.UsageError(f"unknown capability flags {unknown}; known: {CAPABILITIES}")

    kinds = [k for k in KINDS if all(getattr(k, flag) == value for flag, value in flags.items())]
    metafunc.parametrize("transport", kinds, ids=[k.id for k in kinds], indirect=True)


def _seqpacket_works() -> bool:
    try:
        socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET).close()
    except OSError:
        return False

    return True


@pytest.fixture
def transport(request: pytest.FixtureRequest) -> Iterator[Transport]:
    """A private bus of one transport kind: a fresh port, abstract name or directory."""
    kind: Kind = request.param
    fields = {name: getattr(kind, name) for name in Kind.__dataclass_fields__}
    if kind.scheme == "udpm":
        require(loopback_multicast_works(), NO_LOOPBACK_MULTICAST)
        yield Transport(**fields, base=free_url().partition("?")[0])
        return

    if kind.scheme == "seqpacket":
        require(_seqpacket_works(), "this kernel has no AF_UNIX SOCK_SEQPACKET (Linux has)")

    if kind.abstract:
        require(sys.platform.startswith("linux"), "abstract unix sockets exist on Linux only")
        name = f"ct-{secrets.token_hex(6)}"
        yield Transport(**fields, base=f"{kind.scheme}:@{name}", name=name)
        return

    # Short: a socket path (directory, "/", member name) must fit 108 bytes.
    directory = tempfile.mkdtemp(prefix="ab-", dir="/tmp")
    try:
        yield Transport(**fields, base=f"{kind.scheme}://{directory}", directory=directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
