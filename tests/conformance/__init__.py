"""The conformance suite: the same tests against every transport, on both loops.

``conftest.py`` describes each transport (URL and capability flags) and gives
every test a private bus; ``member.py`` is a bus member in a process of its own.
"""
