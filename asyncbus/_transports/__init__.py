"""Transports: thin I/O adapters that move datagrams between sockets and protocols.

They follow asyncio's transport/protocol contract and make no protocol
decisions; the wire format and the bus logic live elsewhere.
"""

from __future__ import annotations
