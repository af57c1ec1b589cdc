"""``python -m asyncbus``: the command line (see `asyncbus.cli`)."""

from __future__ import annotations

import sys

from asyncbus.cli import main

if __name__ == "__main__":
    sys.exit(main())
