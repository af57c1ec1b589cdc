"""Peer programs for multi-process tests: each runs as ``python -m tests.peers.NAME``."""
