"""The example programs run for real, and the docs show them as they are.

* Each file in ``examples/`` runs as its own process against a private bus
  (``ASYNCBUS_URL``: a random group and a free port, so nothing else on the host
  interferes) and must exit 0 with the expected output and no warnings.
* A fenced ``python`` block that follows ``<!-- example: examples/NAME.py -->`` in
  ``README.md`` or ``docs/**/*.md`` must equal that file byte for byte, and every
  example file must be shown somewhere.
* The hex dumps and sizes in ``docs/protocol.md`` must be what the codec produces.
* ``docs/reference.md`` must document every name in ``asyncbus.__all__``.
"""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import asyncbus
from asyncbus._core import lcm

from .conftest import require

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN = {
    f"examples/{name}"
    for name in (
        "publisher.py",
        "subscriber.py",
        "hello.py",
        "patterns.py",
        "unix_bus.py",
        "fd_bus.py",
        "pass_fd.py",  # run by tests/test_sockio.py
    )
}
TIMEOUT = 30.0  # seconds for one example process; they take well under one

_MARKER = re.compile(
    r"<!-- example: (?P<path>examples/[\w.-]+\.py) -->\n+```python\n(?P<code>.*?)^```$",
    re.DOTALL | re.MULTILINE,
)


def _loopback_multicast() -> bool:
    """Tell whether this host delivers IPv4 multicast on ``lo`` to an unprivileged socket."""
    group, port = "239.255.76.68", _free_port()
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        receiver.bind((group, port))
        membership = socket.inet_aton(group) + socket.inet_aton("127.0.0.1")
        try:
            receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        except OSError:
            return False

        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        sender.sendto(b"probe", (group, port))
        return bool(select.select([receiver], [], [], 2.0)[0])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def env() -> dict[str, str]:
    """The environment for an example: a private bus URL and this checkout on the path."""
    require(_loopback_multicast(), "this host does not deliver multicast on lo (no IPv4 on lo?)")
    pid = os.getpid()
    group = f"239.255.{pid >> 8 & 255}.{pid & 255 or 1}"  # a group of our own; the port is free
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "ASYNCBUS_URL": f"udpm://{group}:{_free_port()}?ttl=0",
        "PYTHONPATH": path,
        "PYTHONUNBUFFERED": "1",
    }


def _start(name: str, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(EXAMPLES / name), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """Read one line of ``proc``'s stdout, failing after ``timeout`` seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            pytest.fail(f"{proc.args!r} printed no line within {timeout} s; got {line!r}")

        byte = os.read(fd, 1)  # unbuffered, so communicate() later sees the rest
        if not byte:
            pytest.fail(f"{proc.args!r} exited before printing a line; got {line!r}")

        line += byte

    return line.decode()


def _finish(proc: subprocess.Popen[bytes]) -> list[str]:
    """Wait for ``proc`` to exit cleanly and return its stdout lines."""
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{proc.args!r} did not exit within {TIMEOUT} s:\n{out.decode()}{err.decode()}")

    stderr = err.decode()
    assert proc.returncode == 0, f"{proc.args!r} exited {proc.returncode}:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    assert "Warning" not in stderr, stderr
    return out.decode().splitlines()


class TestExamplesRun:
    def test_publisher_to_subscriber(self, env: dict[str, str]) -> None:
        with _start("subscriber.py", "greetings", "--count", "3", env=env) as subscriber:
            try:
                ready = _read_line(subscriber, TIMEOUT)
                assert ready.startswith(f"listening on {env['ASYNCBUS_URL']}"), ready
                with _start("publisher.py", "--count", "3", "--interval", "0", env=env) as pub:
                    published = _finish(pub)

                received = _finish(subscriber)
            finally:
                subscriber.kill()  # no-op once it has exited

        assert published == [f"published 'hello {n}' on 'greetings'" for n in range(3)]
        assert len(received) == 4, received
        for n, line in enumerate(received[:3]):
            assert re.fullmatch(rf"greetings #{n} from 127\.0\.0\.1:\d+: hello {n}", line), line

        assert received[3] == "losses: gaps=0 kernel_drops=0"

    def test_hello(self, env: dict[str, str]) -> None:
        with _start("hello.py", env=env) as proc:
            lines = _finish(proc)

        assert lines == [f"greetings: hello {n}" for n in range(3)]

    def test_patterns(self, env: dict[str, str]) -> None:
        with _start("patterns.py", env=env) as proc:
            lines = _finish(proc)

        assert lines == [
            "     exact: ['status'] dropped=0",
            "      glob: ['sensors/temp1', 'sensors/temp2', 'sensors/humidity'] dropped=0",
            "     regex: ['sensors/temp1', 'sensors/temp2'] dropped=0",
            "  compiled: ['sensors/humidity', 'status'] dropped=0",
            "tiny queue: ['sensors/temp2', 'sensors/humidity'] dropped=1",
            "published=4",
        ]


class TestUNIXExample:
    @pytest.mark.parametrize("scheme", ["unix", "seqpacket"])
    def test_unix_bus(self, scheme: str) -> None:
        url = f"{scheme}:@asyncbus-example-test-{os.getpid()}"
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
        with _start("unix_bus.py", "subscribe", "--url", url, env=env) as subscriber:
            try:
                with _start("unix_bus.py", "publish", "--url", url, env=env) as publisher:
                    published = _finish(publisher)

                received = _finish(subscriber)
            finally:
                subscriber.kill()  # no-op once it has exited

        assert publisher.pid is not None
        assert published == [f"published 5, pid {publisher.pid}, send_drops=0"]
        assert received == [
            *(f"#{n} job {n} from pid {publisher.pid}, my user: True" for n in range(5)),
            "gaps=0",
        ]


class TestFDExample:
    @pytest.mark.parametrize("scheme", ["unix", "seqpacket"])
    def test_fd_bus(self, scheme: str) -> None:
        url = f"{scheme}:@asyncbus-fd-example-test-{os.getpid()}"
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
        with _start("fd_bus.py", "receive", "--url", url, env=env) as receiver:
            try:
                with _start("fd_bus.py", "send", "--url", url, env=env) as sender:
                    sent = _finish(sender)

                received = _finish(receiver)
            finally:
                receiver.kill()  # no-op once it has exited

        assert received == [
            "config: exposure=4ms (close-on-exec: True)",
            "frame: 16777216 bytes, first 7, last 9, memoryview",
        ]
        assert sent == [f"reply: thanks from pid {receiver.pid}"]


def _shown() -> dict[str, list[tuple[Path, str]]]:
    """Map each example path to the code blocks that claim to show it."""
    shown: dict[str, list[tuple[Path, str]]] = {}
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for match in _MARKER.finditer(text):
            shown.setdefault(match["path"], []).append((doc, match["code"]))

        markers = text.count("<!-- example:")
        found = sum(1 for _ in _MARKER.finditer(text))
        assert markers == found, f"{doc}: an example marker is not followed by a python block"

    return shown


class TestDocsShowExamples:
    def test_blocks_match_files(self) -> None:
        shown = _shown()
        assert shown, "no example markers found in the docs"
        for path, blocks in shown.items():
            source = (ROOT / path).read_text(encoding="utf-8")
            for doc, code in blocks:
                assert code == source, f"{doc.relative_to(ROOT)} shows a stale copy of {path}"

    def test_every_example_is_shown_and_run(self) -> None:
        files = {f"examples/{p.name}" for p in EXAMPLES.glob("*.py")}
        assert files == set(_shown()), "every example must appear in the docs, and only those"
        assert files == RUN, "every example must have a test in TestExamplesRun"


class TestProtocolDoc:
    @pytest.mark.parametrize(
        ("seq", "payload", "dumps"),
        [
            pytest.param(7, b"hi", [(0, 15)], id="short"),
            pytest.param(8, bytes(k % 256 for k in range(100_000)), [(0, 29), (1, 24)], id="frag"),
        ],
    )
    def test_hex_dumps_are_what_encode_produces(
        self, seq: int, payload: bytes, dumps: list[tuple[int, int]]
    ) -> None:
        text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
        datagrams = lcm.encode(lcm.encode_channel("chat"), seq, payload)
        assert len(datagrams) == len(dumps)
        for index, length in dumps:
            dump = datagrams[index][:length].hex(" ")
            assert f"```text\n{dump}\n```" in text, f"protocol.md lacks {dump}"

    def test_sizes_quoted_match_the_codec(self) -> None:
        text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8").replace("\u202f", " ")
        for number in (lcm.MAX_SHORT_PAYLOAD, lcm.FRAGMENT_PAYLOAD, lcm.MAX_FRAGMENTS):
            assert f"{number:,}".replace(",", " ") in text, number

        assert lcm.MAX_CHANNEL_BYTES == 63
        assert lcm.FRAGMENT_HEADER.size == 20
        assert lcm.SHORT_HEADER.size + lcm.MAX_SHORT_PAYLOAD == 65_507
        assert lcm.FRAGMENT_HEADER.size + lcm.FRAGMENT_PAYLOAD == 65_507


class TestReferenceDoc:
    def test_every_public_name_is_in_the_api_reference(self) -> None:
        text = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
        shown = set(re.findall(r"^::: asyncbus\.(\w+)$", text, re.MULTILINE))
        public = set(asyncbus.__all__) - {"__version__"}
        assert shown == public, f"missing: {public - shown}; not public: {shown - public}"
