"""Every job this project runs: ``nox -s lint typecheck tests``, plus ``bench`` and ``docs``."""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"

PYTHON = "3.11"


def _system_packages(session: nox.Session) -> None:
    """Install iproute2, util-linux and gcc when running as root on Debian and any is missing.

    The network-namespace tests (LCM interop) need ``ip`` and ``unshare``; the C peer
    of the unix transports (``tests/test_unix_c_peer.py``) needs ``gcc``. Without root
    nothing can be installed: those tests skip with a reason (and fail in CI).
    """
    if os.geteuid() != 0 or (
        shutil.which("ip") and shutil.which("unshare") and shutil.which("gcc")
    ):
        return

    if not shutil.which("apt-get"):
        session.warn(
            "ip/unshare/gcc missing and no apt-get: network-namespace and C peer tests will skip"
        )
        return

    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env)
    session.run(
        "apt-get",
        "install",
        "-y",
        "-qq",
        "iproute2",
        "util-linux",
        "gcc",
        external=True,
        env=env,
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff: lint and formatting check."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", "asyncbus", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "asyncbus", "tests", "benchmarks", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package and the benchmarks."""
    session.install("-e", ".[typecheck]")
    session.run("mypy", "--strict", "asyncbus", "benchmarks")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite, on the default asyncio loop and on uvloop."""
    _system_packages(session)
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs, env={"PYTHONDEVMODE": "1"})


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks; pass ``-- --full`` for the full run (default: quick mode).

    ``.[bench]`` brings pyzmq and lcm (the peers) and matplotlib (the plots).
    """
    session.install("-e", ".[bench]")
    args = session.posargs or ["--quick"]
    session.run("python", "-m", "benchmarks", *args)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation; warnings are errors."""
    session.install("-e", ".[docs]")
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", os.path.join(session.create_tmp(), "site")
    )
