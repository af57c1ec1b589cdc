"""Child processes for ``tests/test_udpm.py``: real bus members in separate processes."""
