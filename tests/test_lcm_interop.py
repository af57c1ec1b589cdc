"""asyncbus and the real ``lcm`` package (PyPI) see each other's messages, both ways.

Every test runs in a private network namespace of its own (``tests/netns.py``), with
each peer a separate process started by ``tests/peers/driver.py`` and coordinated by
``READY`` lines on pipes:

* with LCM's offline setup (``lo`` up, multicast on, a ``224.0.0.0/4`` route on it):
  LCM -> asyncbus and asyncbus -> LCM, for small messages, the largest short message,
  the smallest fragmented one and a fragmented message of 3.5 MiB; and a raw socket
  that shows asyncbus's datagrams are LCM's byte for byte (the sequence number aside);
* with only ``lo`` up and no route at all: ``lcm.LCM()`` cannot start, while two
  asyncbus processes exchange the same messages;
* on what looks like a networked host (``lo`` up, the default route on another
  interface, ``d0``): LCM sends through ``d0`` and, with ``ttl=0``, its datagrams are
  looped back on ``d0`` only, so asyncbus hears them only because it also joins the
  group on the routed interface. The other way is an expected failure for now: asyncbus
  sends on ``lo`` only, and LCM's subscriber joined on ``d0``.

Payloads are deterministic (SHAKE-256 of the message's identity) and compared by
SHA-256. Delivery is deterministic too: every receive buffer in the namespace holds a
test's whole burst (asyncbus and the raw listener get theirs with ``SO_RCVBUFFORCE``
as root, LCM with ``recv_buf_size`` up to ``net.core.rmem_max``), and each test checks
that the kernel dropped nothing (``RcvbufErrors`` of the namespace is 0).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.netns import (
    NETWORKED_HOST,
    Peer,
    PeersReport,
    run_peers,
    setup_unavailable_reason,
    unavailable_reason,
)
from tests.peers.common import PlannedMessage, plan_to_json

pytestmark = pytest.mark.netns

URL = "udpm://239.255.76.67:7667?ttl=0"  # LCM's default group and port, host-local
GROUP = "239.255.76.67:7667"
# Receive buffers, which the kernel doubles: asyncbus's (SO_RCVBUFFORCE as root) is not
# its default, to show the URL option works; LCM's (SO_RCVBUF) is capped by rmem_max.
ASYNCBUS_RECV_BUF_SIZE = 12 * 2**20
LCM_RECV_BUF_SIZE = 4 * 2**20
LCM_URL = f"{URL}&recv_buf_size={LCM_RECV_BUF_SIZE}"
TIMEOUT = 30.0  # seconds for one namespace; a passing test takes well under one
DEADLINE = 15.0  # seconds a subscriber waits for the whole plan

# LCM's limits (lcm_udpm.c, Linux): a message goes in one LC02 datagram when
# channel + NUL + payload fit in LCM_SHORT_MESSAGE_MAX_SIZE, else in LC03 fragments
# of at most LCM_FRAGMENT_MAX_PAYLOAD bytes after the 20-byte header.
LCM_SHORT_MESSAGE_MAX_SIZE = 65_499
LCM_FRAGMENT_MAX_PAYLOAD = 65_487
# Receive-buffer memory one 65,507-byte datagram takes on lo (skb truesize): 31 of them
# fill a 2 MiB buffer, about 67,650 bytes each.
DATAGRAM_TRUESIZE = 70_000

EDGE = "INTEROP_EDGE"
PLAN = [
    PlannedMessage(0, "INTEROP_SMALL", 13),
    PlannedMessage(1, "INTEROP_EMPTY", 0),
    PlannedMessage(2, "INTEROP_" + "C" * 55, 100),  # the longest channel: 63 bytes
    PlannedMessage(3, EDGE, LCM_SHORT_MESSAGE_MAX_SIZE - len(EDGE) - 1),  # largest LC02
    PlannedMessage(4, EDGE, LCM_SHORT_MESSAGE_MAX_SIZE - len(EDGE)),  # smallest LC03: 2
    PlannedMessage(5, "INTEROP_BIG", 3 * 2**20 + 2**19 + 7),  # 3.5 MiB: 57 fragments
    PlannedMessage(6, "INTEROP_SMALL", 1),  # after the big one: nothing was lost in between
]
LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
LOOP_CLASSES = {"asyncio": "asyncio.unix_events._UnixSelectorEventLoop", "uvloop": "uvloop.Loop"}
LOSS_COUNTERS = ("malformed", "kernel_drops", "gaps", "incomplete", "overflow_drops")


def lcm_datagrams(message: PlannedMessage) -> int:
    """How many datagrams LCM sends ``message`` in."""
    length = len(message.channel.encode()) + 1 + message.size
    if length <= LCM_SHORT_MESSAGE_MAX_SIZE:
        return 1

    return math.ceil(length / LCM_FRAGMENT_MAX_PAYLOAD)


PLAN_DATAGRAMS = sum(map(lcm_datagrams, PLAN))
BURST_BYTES = PLAN_DATAGRAMS * DATAGRAM_TRUESIZE  # receive buffer needed to never drop


def rmem_max() -> int:
    return int(Path("/proc/sys/net/core/rmem_max").read_text())


@pytest.fixture(autouse=True)
def _namespaces() -> None:
    require(unavailable_reason() is None, str(unavailable_reason()))


@pytest.fixture
def _lcm() -> None:
    require(importlib.util.find_spec("lcm"), "the `lcm` package is missing: pip install lcm")


@pytest.fixture
def _lcm_receive_buffer(_lcm: None) -> None:
    # LCM sets its buffer with SO_RCVBUF, which the kernel caps at rmem_max (then doubles);
    # this sysctl is global, so it cannot be raised from inside a namespace.
    got = 2 * min(LCM_RECV_BUF_SIZE, rmem_max())
    require(
        got >= BURST_BYTES,
        f"net.core.rmem_max is {rmem_max()}: LCM's receive buffer would hold {got} bytes of "
        f"the {BURST_BYTES} this test sends at once; run `sysctl -w net.core.rmem_max="
        f"{LCM_RECV_BUF_SIZE}` outside any network namespace",
    )


def lcm_peer(role: str, url: str = URL) -> list[str]:
    return [sys.executable, "-m", "tests.peers.lcm_peer", role, "--url", url]


def asyncbus_peer(role: str, loop: str) -> list[str]:
    # The publisher too gets a big buffer: its own datagrams reach its socket (and are
    # dropped there by asyncbus); RcvbufErrors counts every socket in the namespace.
    url = f"{URL}&recv_buf_size={ASYNCBUS_RECV_BUF_SIZE}"
    argv = [sys.executable, "-W", "error", "-m", "tests.peers.asyncbus_peer", role]
    return [*argv, "--url", url, "--loop", loop]


def with_plan(argv: list[str]) -> list[str]:
    return [*argv, "--plan", plan_to_json(PLAN), "--deadline", str(DEADLINE)]


def wire_peer(datagrams: int) -> list[str]:
    argv = [sys.executable, "-m", "tests.peers.wire_peer", "subscribe", "--url", URL]
    return [*argv, "--datagrams", str(datagrams), "--deadline", str(DEADLINE)]


def expected() -> list[dict[str, Any]]:
    return [message.describe() for message in PLAN]


INDEX = {(m.channel, m.size): m.index for m in PLAN}  # the plan's (channel, size) are unique
SEQ_MODULUS = 2**32  # sequence numbers are u32 on the wire and wrap


def in_plan_order(received: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Received messages sorted as planned (lo keeps order, but don't depend on it)."""
    return sorted(received, key=lambda r: INDEX.get((r["channel"], r["size"]), -1))


def identities(received: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Channel, size and digest of each message, without ``seq`` and ``sender``."""
    return [{k: r[k] for k in ("channel", "size", "sha256")} for r in received]


def check_consecutive(seqs: list[int]) -> None:
    """One sequence number per message, in publishing order, counting up by one (mod 2**32)."""
    assert [(seq - seqs[0]) % SEQ_MODULUS for seq in seqs] == list(range(len(seqs))), seqs


def wire_messages(datagrams: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The raw listener's datagrams by sender, then by message in plan order.

    Each message is ``{"seq", "channel", "datagrams"}``, its datagrams in fragment order
    and without the source (which is the key).
    """
    by_seq: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for datagram in datagrams:
        key = (datagram.pop("source"), datagram["seq"])
        by_seq.setdefault(key, []).append(datagram)

    senders: dict[str, list[dict[str, Any]]] = {}
    for (sender, seq), parts in by_seq.items():
        parts.sort(key=lambda d: d.get("fragment", 0))
        channel = parts[0]["channel"]
        size = parts[0].get("size", parts[0]["length"] - 8 - len(channel.encode()) - 1)
        message = {"seq": seq, "channel": channel, "size": size, "datagrams": parts}
        senders.setdefault(sender, []).append(message)

    for messages in senders.values():
        messages.sort(key=lambda m: INDEX[m["channel"], m["size"]])

    return senders


def check_asyncbus_peer(report: PeersReport, name: str, loop: str) -> None:
    """Check that an asyncbus peer ran on ``loop`` cleanly and saw no loss."""
    result = report.result(name)
    assert result["loop"] == LOOP_CLASSES[loop]
    assert result["errors"] == [], f"errors reached {name}'s loop exception handler:\n{report}"
    assert report.peers[name]["stderr"] == "", f"{name} wrote to stderr:\n{report}"
    lost = {key: result["statistics"][key] for key in LOSS_COUNTERS}
    assert lost == dict.fromkeys(LOSS_COUNTERS, 0), f"{name} counted losses:\n{report}"
    # the URL's recv_buf_size reached the socket (root: SO_RCVBUFFORCE; the kernel doubles)
    assert result["url"].endswith(f"recv_buf_size={ASYNCBUS_RECV_BUF_SIZE}"), result["url"]
    receivers = [size for address, size in result["sockets"] if address == GROUP]
    assert receivers == [2 * ASYNCBUS_RECV_BUF_SIZE], result["sockets"]


def check_no_kernel_drops(report: PeersReport) -> None:
    """No receive buffer in the namespace overflowed: delivery did not depend on timing."""
    assert report.udp["RcvbufErrors"] == 0, f"the kernel dropped datagrams:\n{report}"


def received_by(report: PeersReport, name: str) -> list[dict[str, Any]]:
    """What subscriber ``name`` received, in plan order, after checking that it was all."""
    received = in_plan_order(report.result(name)["received"])
    assert identities(received) == expected(), f"{name} did not get the plan:\n{report}"
    return received


@pytest.mark.usefixtures("_lcm")
@LOOPS
def test_lcm_to_asyncbus(loop: str) -> None:
    """An LCM publisher reaches an asyncbus subscriber; seq and sender are LCM's own."""
    report = run_peers(
        [
            Peer("wire", wire_peer(PLAN_DATAGRAMS), wait="ready"),
            Peer("asyncbus", with_plan(asyncbus_peer("subscribe", loop)), wait="ready"),
            Peer("lcm", with_plan(lcm_peer("publish"))),
        ],
        multicast_route=True,
        timeout=TIMEOUT,
    )
    received = received_by(report, "asyncbus")
    check_asyncbus_peer(report, "asyncbus", loop)
    # msg.seq and msg.sender are those of the LCM datagrams a raw socket saw
    [(sender, wire)] = wire_messages(report.result("wire")["datagrams"]).items()
    assert [(r["sender"], r["seq"], r["channel"]) for r in received] == [
        (sender, m["seq"], m["channel"]) for m in wire
    ]
    check_no_kernel_drops(report)


@pytest.mark.usefixtures("_lcm_receive_buffer")
@LOOPS
def test_asyncbus_to_lcm(loop: str) -> None:
    """An asyncbus publisher reaches an LCM subscriber, fragmented messages included."""
    report = run_peers(
        [
            Peer("lcm", with_plan(lcm_peer("subscribe", LCM_URL)), wait="ready"),
            Peer("asyncbus", with_plan(asyncbus_peer("publish", loop))),
        ],
        multicast_route=True,
        timeout=TIMEOUT,
    )
    received_by(report, "lcm")
    check_asyncbus_peer(report, "asyncbus", loop)
    rcvbuf = report.result("lcm")["rcvbuf"]
    assert rcvbuf >= BURST_BYTES, f"LCM's receive buffer is {rcvbuf} bytes"
    assert report.peers["lcm"]["stderr"] == "", f"LCM complained:\n{report}"
    check_no_kernel_drops(report)


@pytest.mark.usefixtures("_lcm")
@LOOPS
def test_datagrams_are_lcms_byte_for_byte(loop: str) -> None:
    """For the same messages asyncbus sends the very datagrams LCM sends, seq aside."""
    report = run_peers(
        [
            Peer("wire", wire_peer(2 * PLAN_DATAGRAMS), wait="ready"),
            Peer("lcm", with_plan(lcm_peer("publish")), wait="exit"),
            Peer("asyncbus", with_plan(asyncbus_peer("publish", loop)), wait="exit"),
        ],
        multicast_route=True,
        timeout=TIMEOUT,
    )
    check_asyncbus_peer(report, "asyncbus", loop)
    senders = wire_messages(report.result("wire")["datagrams"])
    assert len(senders) == 2, str(report)
    [lcm_sender] = set(senders) & set(report.result("lcm")["senders"])
    from_lcm = senders.pop(lcm_sender)
    [from_asyncbus] = senders.values()
    for messages in (from_lcm, from_asyncbus):
        check_consecutive([m["seq"] for m in messages])
        for message in messages:
            for datagram in message["datagrams"]:
                del datagram["seq"]  # the one field allowed to differ

    assert [m["datagrams"] for m in from_asyncbus] == [m["datagrams"] for m in from_lcm]
    check_no_kernel_drops(report)


@pytest.mark.usefixtures("_lcm")
@LOOPS
def test_asyncbus_without_a_route(loop: str) -> None:
    """With only ``lo`` up and no route, LCM cannot start but asyncbus works across processes."""
    report = run_peers(
        [
            Peer("lcm", lcm_peer("probe"), wait="exit"),
            Peer("subscriber", with_plan(asyncbus_peer("subscribe", loop)), wait="ready"),
            Peer("publisher", with_plan(asyncbus_peer("publish", loop))),
        ],
        multicast_route=False,
        timeout=TIMEOUT,
    )
    probe = report.result("lcm")
    assert probe["ok"] is False, f"lcm.LCM() started without a multicast route:\n{report}"
    assert "LCM requires a valid multicast route" in report.peers["lcm"]["stderr"], str(report)
    received = received_by(report, "subscriber")
    check_asyncbus_peer(report, "subscriber", loop)
    check_asyncbus_peer(report, "publisher", loop)
    check_consecutive([r["seq"] for r in received])
    assert {r["sender"].split(":")[0] for r in received} == {"127.0.0.1"}
    check_no_kernel_drops(report)


@pytest.fixture
def _networked_host() -> None:
    require(
        setup_unavailable_reason(NETWORKED_HOST) is None,
        str(setup_unavailable_reason(NETWORKED_HOST)),
    )


@pytest.mark.usefixtures("_lcm_receive_buffer", "_networked_host")
@LOOPS
def test_lcm_on_a_networked_host(loop: str) -> None:
    """With the group routed via ``d0``, not ``lo``, asyncbus and LCM still hear each other.

    LCM sends through ``d0`` (its route), and with ``ttl=0`` the kernel loops its datagrams
    back on ``d0`` only: an asyncbus subscriber that joined on ``lo`` alone would hear
    nothing. Each direction runs in a namespace of its own, so that no subscriber of the
    other direction holds a membership the direction under test would lean on (an
    asyncbus subscriber's join on ``lo`` would let LCM hear asyncbus by accident).
    asyncbus publishes on ``lo``; LCM's subscriber joined on ``d0`` hears it because
    asyncbus's send socket makes ``lo`` a member of the group (see ``open_udpm_sockets``).
    """
    lcm_to_asyncbus = run_peers(
        [
            Peer("asyncbus", with_plan(asyncbus_peer("subscribe", loop)), wait="ready"),
            Peer("lcm", with_plan(lcm_peer("publish"))),
        ],
        multicast_route=False,
        setup=NETWORKED_HOST,
        timeout=TIMEOUT,
    )
    received = received_by(lcm_to_asyncbus, "asyncbus")
    check_asyncbus_peer(lcm_to_asyncbus, "asyncbus", loop)
    # LCM's send socket is bound to 0.0.0.0 and a port; d0's address is the source
    [lcm_socket] = lcm_to_asyncbus.result("lcm")["senders"]
    lcm_port = lcm_socket.rsplit(":", 1)[1]
    assert {r["sender"] for r in received} == {f"192.0.2.1:{lcm_port}"}, str(lcm_to_asyncbus)
    check_consecutive([r["seq"] for r in received])
    check_no_kernel_drops(lcm_to_asyncbus)

    asyncbus_to_lcm = run_peers(
        [
            Peer("lcm", with_plan(lcm_peer("subscribe", LCM_URL)), wait="ready"),
            Peer("asyncbus", with_plan(asyncbus_peer("publish", loop))),
        ],
        multicast_route=False,
        setup=NETWORKED_HOST,
        timeout=TIMEOUT,
    )
    check_asyncbus_peer(asyncbus_to_lcm, "asyncbus", loop)
    sends_from = [a for a, _ in asyncbus_to_lcm.result("asyncbus")["sockets"] if a != GROUP]
    assert sends_from and sends_from[0].startswith("127."), sends_from  # it sent on lo
    received_by(asyncbus_to_lcm, "lcm")
    assert asyncbus_to_lcm.peers["lcm"]["stderr"] == "", f"LCM complained:\n{asyncbus_to_lcm}"
    check_no_kernel_drops(asyncbus_to_lcm)
