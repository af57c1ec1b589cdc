"""The sans-I/O core: wire format, reassembly, sequence tracking, topic matching.

Nothing in this package touches sockets, asyncio, ``os`` or a clock: bytes and
``now: float`` go in, frames and events come out. ``tests/test_layers.py``
enforces the import rule.
"""

from __future__ import annotations
