"""Adapters: where the sans-I/O core, a transport and the event loop meet.

One module per transport family: `udpm` for UDP multicast, `unix` for the
AF_UNIX buses. Each is an asyncio protocol that decodes frames with the core,
drives the core's timers from the loop's clock, and hands whole messages to the
subscription router.
"""

from __future__ import annotations
