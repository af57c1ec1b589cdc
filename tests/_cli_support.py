"""Run the ``asyncbus`` command line as real processes, for ``tests/test_cli.py``.

Nothing here sleeps to wait: readiness comes from ``--ready-fd`` pipes and from lines the
commands print, each waited for with a bound (:data:`TIMEOUT`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

import asyncbus

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from types import TracebackType

GROUP = "239.255.76.67"  # LCM's default group; every test gets its own port
TIMEOUT = 30.0  # seconds one step may take on a loaded 2-core CI machine

Stream = Literal["stdout", "stderr"]
Argument = str | bytes


def free_port() -> int:
    """Return a UDP port nobody on this host uses right now.

    :return: the port, for a bus URL of its own.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("", 0))
        port: int = probe.getsockname()[1]
        return port


def bus_url() -> str:
    """Return the URL of a loopback multicast bus that no other test uses.

    :return: ``udpm://239.255.76.67:PORT?ttl=0`` with a free port.
    """
    return f"udpm://{GROUP}:{free_port()}?ttl=0"


def cli_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the environment for a CLI process: this checkout importable, no stray URL.

    :param extra: variables to add.
    :return: the environment.
    """
    root = str(Path(asyncbus.__path__[0]).parent)
    env = {key: value for key, value in os.environ.items() if key != "ASYNCBUS_URL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def cli_command(*args: Argument) -> list[Argument]:
    """Return the command line running ``python -m asyncbus ARGS``.

    ``ResourceWarning`` is enabled, so a leaked socket shows up on stderr (and the tests
    check that stderr has nothing they do not expect).

    :param args: the arguments.
    :return: the command.
    """
    return [sys.executable, "-W", "error::ResourceWarning", "-m", "asyncbus", *args]


def run_cli(
    *args: Argument,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m asyncbus ARGS`` to the end.

    :param args: the arguments.
    :param stdin: its stdin (default ``/dev/null``).
    :param env: variables to add to its environment.
    :param timeout: seconds it may take.
    :return: the finished process, with stdout and stderr.
    """
    return subprocess.run(
        cli_command(*args),
        stdin=stdin,
        capture_output=True,
        env=cli_environment(env),
        timeout=timeout,
        check=False,
    )


def publish(url: str, topic: str, *payloads: bytes) -> None:
    """Publish ``payloads`` on ``topic`` with the API, from this process.

    :param url: the bus.
    :param topic: the topic.
    :param payloads: the messages.
    """

    async def send() -> None:
        async with asyncbus.connect(url) as bus:
            for payload in payloads:
                await bus.publish(topic, payload)

    asyncio.run(send())


class CLI:
    """A running ``python -m asyncbus ...`` whose output is read line by line as it comes.

    Use it as a context manager: leaving kills the process if it still runs, and closes
    every pipe.
    """

    def __init__(
        self,
        *args: Argument,
        ready_fd: bool = False,
        stdin: int | IO[bytes] | None = subprocess.PIPE,
        env: Mapping[str, str] | None = None,
        follow_stdout: bool = True,
    ) -> None:
        """Start the process.

        :param args: the arguments.
        :param ready_fd: append ``--ready-fd FD`` with a pipe for :meth:`wait_ready`.
        :param stdin: its stdin (default: a pipe, see :meth:`send`).
        :param env: variables to add to its environment.
        :param follow_stdout: read stdout in a thread, for :meth:`expect`; without, the
            test reads ``process.stdout`` itself.
        """
        self._ready: int | None = None
        pass_fds: tuple[int, ...] = ()
        if ready_fd:
            self._ready, write_end = os.pipe()
            args = (*args, "--ready-fd", str(write_end))
            pass_fds = (write_end,)

        try:
            self.process = subprocess.Popen(
                cli_command(*args),
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=cli_environment(env),
                pass_fds=pass_fds,
            )
        finally:
            for fd in pass_fds:
                os.close(fd)

        self.lines: dict[Stream, list[str]] = {"stdout": [], "stderr": []}
        self._queues: dict[Stream, queue.SimpleQueue[str | None]] = {
            "stdout": queue.SimpleQueue(),
            "stderr": queue.SimpleQueue(),
        }
        self._ended: dict[Stream, bool] = {"stdout": False, "stderr": False}
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._threads = [
            threading.Thread(target=self._follow, args=(self.process.stderr, "stderr")),
        ]
        if follow_stdout:
            self._threads.append(
                threading.Thread(target=self._follow, args=(self.process.stdout, "stdout"))
            )
        else:
            self._ended["stdout"] = True

        for thread in self._threads:
            thread.start()

    def _follow(self, pipe: IO[bytes], stream: Stream) -> None:
        for line in pipe:
            self._queues[stream].put(line.decode("utf-8", "backslashreplace").rstrip("\n"))

        self._queues[stream].put(None)

    def __enter__(self) -> CLI:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Kill the process if it still runs, reap it and close every pipe."""
        if self.process.poll() is None:
            self.process.kill()

        self.process.wait(TIMEOUT)
        if self.process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()

        for thread in self._threads:
            thread.join(TIMEOUT)

        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()

        if self._ready is not None:
            os.close(self._ready)
            self._ready = None

    def wait_ready(self, timeout: float = TIMEOUT) -> None:
        """Wait until the process writes ``ready`` to its ``--ready-fd``.

        :param timeout: seconds to wait at most.
        :raises AssertionError: if it does not, or exits first.
        """
        assert self._ready is not None, "start it with ready_fd=True"
        received = b""
        deadline = time.monotonic() + timeout
        while b"ready\n" not in received:
            left = deadline - time.monotonic()
            readable, _, _ = select.select([self._ready], [], [], max(left, 0))
            chunk = os.read(self._ready, 64) if readable else b""
            if not chunk:
                self.process.kill()
                raise AssertionError(f"never ready ({received!r}): {self.output()}")

            received += chunk

    def expect(self, needle: str, stream: Stream = "stdout", timeout: float = TIMEOUT) -> str:
        """Read lines from ``stream`` until one contains ``needle``.

        :param needle: the text to look for.
        :param stream: ``stdout`` or ``stderr``.
        :param timeout: seconds to wait at most.
        :return: the line.
        :raises AssertionError: if no such line comes in time, or the stream ends.
        """
        deadline = time.monotonic() + timeout
        while True:
            line = self._next(stream, deadline)
            if line is None:
                raise AssertionError(f"no {needle!r} on {stream}: {self.output()}")

            if needle in line:
                return line

    def _next(self, stream: Stream, deadline: float) -> str | None:
        if self._ended[stream]:
            return None

        try:
            line = self._queues[stream].get(timeout=max(deadline - time.monotonic(), 0))
        except queue.Empty:
            return None

        if line is None:
            self._ended[stream] = True
            return None

        self.lines[stream].append(line)
        return line

    def send(self, line: str) -> None:
        """Write ``line`` and a newline to the process's stdin.

        :param line: the text.
        """
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def close_stdin(self) -> None:
        """Close the process's stdin: end of input."""
        assert self.process.stdin is not None
        self.process.stdin.close()

    def wait(self, timeout: float = TIMEOUT) -> int:
        """Wait for the process to exit and for the end of its output.

        :param timeout: seconds to wait at most.
        :return: its exit status.
        :raises subprocess.TimeoutExpired: if it does not exit in time.
        """
        status = self.process.wait(timeout)
        deadline = time.monotonic() + timeout
        for stream in self._queues:
            while self._next(stream, deadline) is not None:
                pass

        return status

    def output(self) -> str:
        """Describe what the process printed so far, for assertion messages.

        :return: its stdout and stderr lines.
        """
        return f"stdout={self.lines['stdout']!r} stderr={self.lines['stderr']!r}"


@contextlib.contextmanager
def listening(*args: Argument) -> Iterator[CLI]:
    """Start ``asyncbus ARGS --ready-fd FD`` and wait until it is subscribed.

    :param args: the arguments, e.g. ``("sub", "t", "--url", url, "--count", "1")``.
    :return: a context manager yielding the running process.
    """
    with CLI(*args, ready_fd=True) as cli:
        cli.wait_ready()
        yield cli
