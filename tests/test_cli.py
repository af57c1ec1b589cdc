"""The ``asyncbus`` command line, run as real processes (``python -m asyncbus``).

Every test has a bus of its own (a free port on the loopback multicast group), waits for
readiness through ``--ready-fd`` or a printed line (never by sleeping), and bounds every
wait. See ``tests/_cli_support.py``.
"""

from __future__ import annotations

import base64
import json
import os
import pty
import select
import signal
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from asyncbus.cli import main

from ._cli_support import (
    CLI,
    TIMEOUT,
    bus_url,
    cli_command,
    cli_environment,
    listening,
    publish,
    run_cli,
)

if TYPE_CHECKING:
    from pathlib import Path

    from ._cli_support import Argument

LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])


def _one_error_line(stderr: bytes) -> str:
    """Return stderr's only line, checking it is one of our error lines.

    :param stderr: what the process wrote on stderr.
    :return: the line.
    """
    lines = stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("asyncbus: error: "), lines
    return lines[0]


class TestHelp:
    def test_python_m_asyncbus_help(self) -> None:
        done = run_cli("--help")
        assert done.returncode == 0, done.stderr
        usage = done.stdout.decode()
        assert usage.startswith("usage: asyncbus")
        for command in ("pub", "sub", "chat", "demo"):
            assert command in usage

        assert "demo-subscriber" not in usage  # the demo's children are not for people
        assert done.stderr == b""

    @pytest.mark.parametrize("command", ["pub", "sub", "chat", "demo"])
    def test_command_help(self, command: str) -> None:
        done = run_cli(command, "--help")
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode().startswith(f"usage: asyncbus {command}")
        assert "--url" in done.stdout.decode()

    def test_main_in_process(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--version"]) == 0
        assert capsys.readouterr().out.startswith("asyncbus ")
        assert main(["sub"]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.splitlines() == [
            "asyncbus: error: the following arguments are required: PATTERN "
            "(see 'asyncbus sub --help')"
        ]


class TestPubSub:
    @LOOPS
    def test_text(self, loop: str) -> None:
        url = bus_url()
        with listening("sub", "greetings", "--url", url, "--count", "2", "--loop", loop) as sub:
            done = run_cli("pub", "greetings", "hello world", "--url", url, "--repeat", "2")
            assert done.returncode == 0, done.stderr
            assert done.stdout == done.stderr == b""
            assert sub.wait() == 0, sub.output()

        assert sub.lines == {"stdout": ["greetings hello world"] * 2, "stderr": []}

    def test_glob_pattern_and_exact_count(self) -> None:
        url = bus_url()
        with listening("sub", "sensors/*", "--url", url, "--count", "2") as sub:
            publish(url, "other", b"not this one")
            publish(url, "sensors/a", b"1", b"2", b"3", b"4")
            assert sub.wait() == 0, sub.output()

        assert sub.lines["stdout"] == ["sensors/a 1", "sensors/a 2"]

    def test_regex_pattern(self) -> None:
        url = bus_url()
        with listening(
            "sub", "SENS(OR|ING)_[0-9]+", "--regex", "--url", url, "--count", "1"
        ) as sub:
            publish(url, "SENSOR_X", b"no")
            publish(url, "SENSING_12", b"yes")
            assert sub.wait() == 0, sub.output()

        assert sub.lines["stdout"] == ["SENSING_12 yes"]

    def test_text_escapes_binary_and_control_characters(self) -> None:
        url = bus_url()
        with listening("sub", "t", "--url", url, "--count", "2") as sub:
            publish(url, "t", b"line\nbreak \x1b[31mred\ttab", b"\xff\xfe bytes")
            assert sub.wait() == 0, sub.output()

        assert sub.lines["stdout"] == [
            "t line\\nbreak \\x1b[31mred\ttab",  # one line, and no terminal escapes
            "t \\xff\\xfe bytes",
        ]

    @LOOPS
    def test_json(self, loop: str) -> None:
        url = bus_url()
        with listening("sub", "j*", "--json", "--url", url, "--count", "4", "--loop", loop) as sub:
            assert run_cli("pub", "json", "héllo\n", "--url", url).returncode == 0
            # Raw argv bytes that are not UTF-8 are published as they are.
            assert run_cli("pub", "json", b"\xff\xfe", "--url", url).returncode == 0
            publish(url, "jay", b"\x00\x01\x80binary", b"")
            assert sub.wait() == 0, sub.output()

        records = [json.loads(line) for line in sub.lines["stdout"]]
        assert [record["topic"] for record in records] == ["json", "json", "jay", "jay"]
        assert [(record["data"], record["encoding"]) for record in records] == [
            ("héllo\n", "utf-8"),
            (base64.b64encode(b"\xff\xfe").decode(), "base64"),
            (base64.b64encode(b"\x00\x01\x80binary").decode(), "base64"),
            ("", "utf-8"),
        ]
        for record in records:
            assert set(record) == {"topic", "data", "encoding", "seq", "sender", "received_at"}
            assert isinstance(record["seq"], int)
            assert record["sender"].startswith("127.0.0.1:")

        assert all(line.isascii() for line in sub.lines["stdout"])
        assert records[2]["sender"] == records[3]["sender"]  # one bus published both
        assert records[3]["seq"] == records[2]["seq"] + 1

    def test_verbose_says_ready_on_stderr(self) -> None:
        url = bus_url()
        with CLI("sub", "t", "--url", url, "--count", "1", "--verbose") as sub:
            line = sub.expect("ready", stream="stderr")
            assert line.startswith("asyncbus: ready: listening on udpm://")
            assert run_cli("pub", "t", "x", "--url", url).returncode == 0
            assert sub.wait() == 0, sub.output()

        assert sub.lines["stdout"] == ["t x"]

    def test_url_from_environment(self) -> None:
        url = bus_url()
        with CLI("sub", "t", "--count", "1", "-v", env={"ASYNCBUS_URL": url}) as sub:
            assert url in sub.expect("ready", stream="stderr")
            done = run_cli("pub", "t", "via env", env={"ASYNCBUS_URL": url})
            assert done.returncode == 0, done.stderr
            assert sub.wait() == 0, sub.output()

        assert sub.lines["stdout"] == ["t via env"]


class TestSubTimeout:
    def test_nothing_arrives(self) -> None:
        done = run_cli("sub", "t", "--url", bus_url(), "--timeout", "0.2")
        assert done.returncode == 1
        assert done.stdout == b""
        assert "timed out after 0.2 s" in _one_error_line(done.stderr)

    def test_fewer_than_count(self) -> None:
        url = bus_url()
        with listening("sub", "t", "--url", url, "--count", "3", "--timeout", "0.5") as sub:
            publish(url, "t", b"only one")
            assert sub.wait() == 1, sub.output()

        assert sub.lines["stdout"] == ["t only one"]
        assert len(sub.lines["stderr"]) == 1
        assert "(received 1)" in sub.lines["stderr"][0]

    def test_without_count_a_message_is_success(self) -> None:
        url = bus_url()
        with listening("sub", "t", "--url", url, "--timeout", "0.5") as sub:
            publish(url, "t", b"one", b"two")
            assert sub.wait() == 0, sub.output()

        assert sub.lines == {"stdout": ["t one", "t two"], "stderr": []}


class TestSignals:
    @LOOPS
    def test_ctrl_c_exits_130_quietly(self, loop: str) -> None:
        with listening("sub", "t", "--url", bus_url(), "--loop", loop) as sub:
            sub.process.send_signal(signal.SIGINT)
            assert sub.wait() == 130, sub.output()

        assert sub.lines == {"stdout": [], "stderr": []}

    def test_reader_gone_exits_quietly(self) -> None:
        url = bus_url()
        with CLI("sub", "t", "--url", url, ready_fd=True, follow_stdout=False) as sub:
            sub.wait_ready()
            publish(url, "t", b"first")
            stdout = sub.process.stdout
            assert stdout is not None
            readable, _, _ = select.select([stdout], [], [], TIMEOUT)
            assert readable
            assert stdout.readline() == b"t first\n"
            stdout.close()  # like `asyncbus sub t | head -1`
            publish(url, "t", *[b"more"] * 20)
            assert sub.wait() == 141, sub.output()

        assert sub.lines["stderr"] == []


class TestChat:
    def test_two_people(self) -> None:
        url = bus_url()
        with CLI("chat", "alice", "--url", url) as alice:
            alice.expect("joined 'chat'", stream="stderr")
            with CLI("chat", "bob", "--url", url) as bob:
                bob.expect("joined 'chat'", stream="stderr")
                alice.expect("* bob joined")
                alice.send("hello from alice")
                bob.expect("alice: hello from alice")
                bob.send("hi from bob")
                alice.expect("bob: hi from bob")
                alice.close_stdin()
                assert alice.wait() == 0, alice.output()
                bob.expect("* alice left")
                bob.close_stdin()
                assert bob.wait() == 0, bob.output()

        # Each saw the other's lines and never its own.
        assert alice.lines["stdout"] == ["* bob joined", "bob: hi from bob"]
        assert bob.lines["stdout"] == ["alice: hello from alice", "* alice left"]
        for person in (alice, bob):
            assert len(person.lines["stderr"]) == 1, person.output()

    def test_room_and_stdin_from_a_file(self, tmp_path: Path) -> None:
        # A regular file cannot be watched by epoll: this takes the thread reader.
        script = tmp_path / "lines.txt"
        script.write_bytes(b"first line\n\n   \nlast line, no newline")
        url = bus_url()
        with listening("sub", "room*", "--url", url, "--count", "4") as watcher:
            with script.open("rb") as stdin:
                done = run_cli("chat", "carol", "--room", "room 1", "--url", url, stdin=stdin)

            assert done.returncode == 0, done.stderr
            assert done.stdout == b""
            assert watcher.wait() == 0, watcher.output()

        assert watcher.lines["stdout"] == [
            "room 1 * carol joined",
            "room 1 carol: first line",
            "room 1 carol: last line, no newline",
            "room 1 * carol left",
        ]

    def test_terminal(self) -> None:
        # On a terminal (stdin, stdout and stderr one open file) stdin is read by a
        # thread: epoll would make the terminal, and so stdout, non-blocking.
        url = bus_url()
        controller, terminal = pty.openpty()
        try:
            with listening("sub", "chat", "--url", url, "--count", "3") as watcher:
                erin = subprocess.Popen(
                    cli_command("chat", "erin", "--url", url),
                    stdin=terminal,
                    stdout=terminal,
                    stderr=terminal,
                    env=cli_environment(),
                )
                try:
                    screen = _read_terminal(controller, b"Ctrl-D to leave\r\n")
                    os.write(controller, b"typed on a terminal\n\x04")  # \x04: Ctrl-D
                    assert erin.wait(TIMEOUT) == 0
                finally:
                    erin.kill()
                    erin.wait(TIMEOUT)

                assert watcher.wait() == 0, watcher.output()
        finally:
            os.close(controller)
            os.close(terminal)

        assert b"asyncbus: joined 'chat'" in screen
        assert watcher.lines["stdout"] == [
            "chat * erin joined",
            "chat erin: typed on a terminal",
            "chat * erin left",
        ]

    def test_ctrl_c_still_says_goodbye(self) -> None:
        url = bus_url()
        with listening("sub", "chat", "--url", url, "--count", "2") as watcher:
            with CLI("chat", "frank", "--url", url) as frank:
                frank.expect("joined 'chat'", stream="stderr")
                frank.process.send_signal(signal.SIGINT)
                assert frank.wait() == 130, frank.output()

            assert watcher.wait() == 0, watcher.output()

        assert watcher.lines["stdout"] == ["chat * frank joined", "chat * frank left"]
        assert len(frank.lines["stderr"]) == 1, frank.output()  # no traceback

    def test_stdin_at_end_from_the_start(self) -> None:
        url = bus_url()
        with listening("sub", "chat", "--url", url, "--count", "2") as watcher:
            done = run_cli("chat", "dave", "--url", url, stdin=subprocess.DEVNULL)
            assert done.returncode == 0, done.stderr
            assert watcher.wait() == 0, watcher.output()

        assert watcher.lines["stdout"] == ["chat * dave joined", "chat * dave left"]


def _read_terminal(controller: int, until: bytes) -> bytes:
    """Read what a program writes to a terminal until ``until`` appears.

    :param controller: the controlling side of the pseudo-terminal.
    :param until: the text to wait for.
    :return: everything read.
    """
    screen = b""
    deadline = time.monotonic() + TIMEOUT
    while until not in screen:
        readable, _, _ = select.select([controller], [], [], deadline - time.monotonic())
        assert readable, f"the terminal never showed {until!r}: {screen!r}"
        screen += os.read(controller, 4096)

    return screen


def _processes_using(url: str) -> set[int]:
    """Return the processes with ``url`` on their command line (but not ``--verbose``).

    :param url: a bus URL unique to one test.
    :return: their process ids: the demo's subscribers.
    """
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    words = cmdline.read().split(b"\0")
            except OSError:
                continue  # gone already

            if url.encode() in words and b"demo-subscriber" in words:
                found.add(int(entry))

    return found


class TestDemo:
    def test_default_run(self) -> None:
        done = run_cli("demo", "--url", bus_url())
        assert done.returncode == 0, done.stderr
        assert done.stderr == b""
        lines = done.stdout.decode().splitlines()
        assert lines[0].startswith("3 subscriber processes, 20000 messages of 64 B on 'demo'")
        assert lines[1].startswith("publisher: 20000 messages in ")
        rows = {line.split()[0]: line for line in lines[3:7]}
        assert set(rows) == {"1", "2", "3", "all"}
        assert "/20000" in rows["1"]
        assert "/60000" in rows["all"]

    @LOOPS
    def test_json_report(self, loop: str) -> None:
        done = run_cli(
            *("demo", "--url", bus_url(), "--json", "--loop", loop),
            *("--subscribers", "2", "--messages", "3000", "--size", "200"),
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["publisher"]["sent"] == 3000
        assert len(report["subscribers"]) == 2
        for entry in report["subscribers"]:
            assert entry["reported"], entry
            assert entry["expected"] == 3000
            assert entry["end_marker"], entry
            assert 0 < entry["unique"] <= 3000
            assert entry["unique"] + entry["lost"] == 3000
            assert entry["foreign"] == 0
            assert entry["msg_per_s"] > 0
            for counter in ("gaps", "kernel_drops", "overflow_drops", "incomplete"):
                assert entry["bus"][counter] >= 0

        total = report["total"]
        assert total["expected"] == 6000
        assert total["received"] + total["lost"] == 6000

    def test_ctrl_c_stops_every_process(self) -> None:
        url = bus_url()
        with CLI("demo", "--url", url, "--messages", "100000000", "--verbose") as demo:
            demo.expect("publishing", stream="stderr")
            children = _processes_using(url)
            assert len(children) == 3, children
            demo.process.send_signal(signal.SIGINT)
            assert demo.wait() == 130, demo.output()

        assert demo.lines["stdout"] == []
        assert _processes_using(url) == set() <= children

    def test_without_flow_control_loss_is_reported_not_fatal(self) -> None:
        done = run_cli(
            *("demo", "--url", bus_url(), "--json", "--window", "0"),
            *("--subscribers", "2", "--messages", "5000"),
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["window"] == 0
        for entry in report["subscribers"]:
            assert entry["unique"] + entry["lost"] == 5000


BAD_INPUT: list[tuple[str, list[Argument], dict[str, str]]] = [
    ("unknown-scheme", ["pub", "t", "x", "--url", "carrier-pigeon://coop"], {}),
    ("unknown-url-option", ["sub", "t", "--url", "udpm://239.255.76.67:7667?colour=red"], {}),
    (
        "unknown-interface",
        ["pub", "t", "x", "--url", "udpm://239.255.76.67:7667?ttl=1&interface=nosuchif0"],
        {},
    ),
    ("bad-port", ["pub", "t", "x", "--url", "udpm://239.255.76.67:99999?ttl=0"], {}),
    ("bad-url-from-environment", ["pub", "t", "x"], {"ASYNCBUS_URL": "nonsense"}),
    ("topic-too-long", ["pub", "x" * 64, "data"], {}),
    ("topic-too-long-in-utf8", ["pub", "é" * 32, "data"], {}),
    ("empty-topic", ["pub", "", "data"], {}),
    ("topic-not-utf8", ["sub", b"caf\xe9"], {}),
    ("sub-topic-too-long", ["sub", "y" * 64], {}),
    ("room-too-long", ["chat", "alice", "--room", "z" * 64], {}),
    ("demo-topic-too-long", ["demo", "--topic", "d" * 64], {}),
    ("empty-chat-name", ["chat", " "], {}),
    ("bad-regex", ["sub", "(unclosed", "--regex"], {}),
    ("count-zero", ["sub", "t", "--count", "0"], {}),
    ("negative-timeout", ["sub", "t", "--timeout", "-1"], {}),
    ("nan-interval", ["pub", "t", "x", "--interval", "nan"], {}),
    ("repeat-not-a-number", ["pub", "t", "x", "--repeat", "many"], {}),
    ("demo-size-below-header", ["demo", "--size", "4"], {}),
    ("demo-zero-rate", ["demo", "--rate", "0"], {}),
    ("closed-ready-fd", ["sub", "t", "--ready-fd", "999"], {}),
    ("unknown-command", ["frobnicate"], {}),
    ("missing-argument", ["pub", "t"], {}),
    ("no-command", [], {}),
]


@pytest.mark.parametrize(
    ("args", "env"), [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT]
)
def test_bad_input_is_one_line_and_status_2(args: list[Argument], env: dict[str, str]) -> None:
    done = run_cli(*args, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stdout == b""
    _one_error_line(done.stderr)


def test_unusable_interface_address_is_one_line() -> None:
    # 192.0.2.1 (TEST-NET-1, RFC 5737) is no interface here: rejected when the URL is read
    # (status 2) or when the socket is set up (status 1), but never with a traceback.
    done = run_cli("pub", "t", "x", "--url", "udpm://239.255.76.67:7667?ttl=1&interface=192.0.2.1")
    assert done.returncode in (1, 2), done.stderr
    _one_error_line(done.stderr)
