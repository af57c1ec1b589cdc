"""Run Python programs inside a private network namespace (Linux, root).

A test gets a namespace of its own with :func:`run_in_netns` (any command) or
:func:`run_peers` (several peer processes started in order by
``tests/peers/driver.py`` inside one namespace, coordinated by ``READY`` lines on
pipes). The namespace comes from ``unshare --net``: it starts with only a ``lo`` that
is down, and it disappears when its last process exits. Three setups:

* ``multicast_route=False``: ``lo`` up and nothing else -- no route at all, the state
  of an offline machine's loopback in which asyncbus must work and LCM cannot start;
* ``multicast_route=True``: also ``lo`` multicast on and a ``224.0.0.0/4`` route on it,
  the setup LCM's documentation asks for on an offline machine;
* ``setup=NETWORKED_HOST``: ``lo`` up as above (multicast not routed to it), plus an
  interface ``d0`` with address 192.0.2.1/24 (documentation range) that holds the
  default route, as on a host with a network connection. ``d0`` is one end of a veth
  pair whose other end is up but unaddressed: the ``dummy`` driver would do, but not
  every kernel has it, and every kernel with namespaces has veth. Nothing leaves the
  namespace either way, and with ``ttl=0`` multicast is only looped back on ``d0``.

The whole process group is killed if the command outlives its timeout, so a hung
peer cannot outlive the test.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
LO_UP = ("ip link set lo up",)
MULTICAST_ROUTE = ("ip link set lo multicast on", "ip route add 224.0.0.0/4 dev lo")
NETWORKED_HOST = (
    "ip link add d0 type veth peer name d0peer",
    "ip link set d0peer up",
    "ip addr add 192.0.2.1/24 dev d0",
    "ip link set d0 up",
    "ip link set d0 multicast on",
    "ip route add default dev d0",
)
PROBE_TIMEOUT = 10.0  # seconds for `unshare --net true`


@functools.cache
def unavailable_reason() -> str | None:
    """Why this host cannot make network namespaces, or None if it can."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"

    if os.geteuid() != 0:
        return "creating a network namespace needs root (run as root, as CI does)"

    if shutil.which("unshare") is None:
        return "`unshare` is missing: apt-get install util-linux"

    if shutil.which("ip") is None:
        return "`ip` is missing: apt-get install iproute2"

    probe = subprocess.run(
        ["unshare", "--net", "true"],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT,
        check=False,
    )
    if probe.returncode != 0:
        return f"`unshare --net` fails here (a container without CAP_SYS_ADMIN?): {probe.stderr}"

    return None


@functools.cache
def setup_unavailable_reason(setup: tuple[str, ...]) -> str | None:
    """Why ``setup`` (e.g. :data:`NETWORKED_HOST`) fails in a new namespace, or None."""
    reason = unavailable_reason()
    if reason is not None:
        return reason

    script = " && ".join((*LO_UP, *setup))
    probe = subprocess.run(
        ["unshare", "--net", "--", "/bin/sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT,
        check=False,
    )
    if probe.returncode != 0:
        return f"this kernel cannot set up the namespace ({script}): {probe.stderr.strip()}"

    return None


class NetnsTimeout(AssertionError):
    """The command in the namespace outlived its timeout and was killed with its children."""


def run_in_netns(
    argv: list[str], *, multicast_route: bool, timeout: float, setup: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (from the repository root, with it on ``PYTHONPATH``) in a new namespace.

    :param argv: the command; ``sys.executable`` for Python.
    :param multicast_route: add LCM's multicast route on ``lo`` (see the module docstring).
    :param timeout: seconds before the command and all its children are killed.
    :param setup: more shell commands to run first, e.g. :data:`NETWORKED_HOST`.
    :return: the finished process, stdout and stderr as text.
    :raises NetnsTimeout: the command did not finish in time.
    """
    commands = LO_UP + (MULTICAST_ROUTE if multicast_route else ()) + setup
    script = " && ".join((*commands, 'exec "$@"'))
    command = ["unshare", "--net", "--", "/bin/sh", "-c", script, "netns", *argv]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # A session of its own, so a timeout kills the namespace's every process at once.
    with subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise NetnsTimeout(
                f"killed after {timeout} s: {command}\nstdout: {stdout}\nstderr: {stderr}"
            ) from None
        except BaseException:  # e.g. KeyboardInterrupt: leave nothing running
            os.killpg(process.pid, signal.SIGKILL)
            raise

    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@dataclass(frozen=True)
class Peer:
    """One process for :func:`run_peers`.

    :param name: key of its report.
    :param argv: its command line.
    :param wait: before starting the next peer, wait for this one's ``READY`` line
        (``"ready"``), for it to exit (``"exit"``), or for nothing (``None``).
    """

    name: str
    argv: list[str]
    wait: str | None = None


@dataclass(frozen=True)
class PeersReport:
    """What ``tests/peers/driver.py`` reported: every peer's output and the UDP counters."""

    error: str | None
    peers: dict[str, dict[str, Any]]
    udp: dict[str, int]
    stderr: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def result(self, name: str) -> dict[str, Any]:
        """The ``RESULT`` of peer ``name``, which must have exited 0 with no error around.

        :raises AssertionError: with the whole report, so a failure shows every peer.
        """
        peer = self.peers[name]
        ok = self.error is None and peer["returncode"] == 0 and peer["result"] is not None
        assert ok, f"peer {name!r} failed:\n{self}"
        result: dict[str, Any] = peer["result"]
        return result

    def __str__(self) -> str:
        """The report as indented JSON, long lists in results cut short."""
        peers = {
            name: peer | {"result": _abridged(peer["result"])} for name, peer in self.peers.items()
        }
        report = {"error": self.error, "udp": self.udp, "peers": peers, "stderr": self.stderr}
        return json.dumps(report, indent=2)


def _abridged(value: Any, limit: int = 8) -> Any:
    if isinstance(value, dict):
        return {key: _abridged(item, limit) for key, item in value.items()}

    if isinstance(value, list) and len(value) > limit:
        return [*value[:limit], f"... {len(value) - limit} more"]

    return value


def run_peers(
    peers: list[Peer], *, multicast_route: bool, timeout: float, setup: tuple[str, ...] = ()
) -> PeersReport:
    """Run ``peers`` inside one new namespace and return what each of them reported.

    :param peers: started in order (see :class:`Peer`); all run in the same namespace.
    :param multicast_route: add LCM's multicast route on ``lo``.
    :param timeout: seconds for the whole run; the driver kills its peers a little
        earlier so that their output still comes back.
    :param setup: more shell commands to set the namespace up (see :func:`run_in_netns`).
    :return: the driver's report.
    :raises NetnsTimeout: the driver itself hung and was killed.
    :raises AssertionError: the driver crashed.
    """
    spec = {
        "timeout": max(timeout - 5.0, timeout / 2),
        "peers": [{"name": p.name, "argv": p.argv, "wait": p.wait} for p in peers],
    }
    argv = [sys.executable, "-m", "tests.peers.driver", json.dumps(spec)]
    done = run_in_netns(argv, multicast_route=multicast_route, timeout=timeout, setup=setup)
    assert done.returncode == 0, f"driver failed ({done.returncode}): {done.stderr}{done.stdout}"
    raw = json.loads(done.stdout)
    return PeersReport(raw["error"], raw["peers"], raw["udp"], done.stderr, raw)
