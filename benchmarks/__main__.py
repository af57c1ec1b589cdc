"""``python -m benchmarks``: see :mod:`benchmarks.cli`."""

from __future__ import annotations

# Worker processes are started with "spawn", which runs this module again as
# ``__mp_main__``: the guard keeps them from running the command line, and the
# import under it keeps them from importing more than their own worker module.
if __name__ == "__main__":
    from .cli import main

    raise SystemExit(main())
