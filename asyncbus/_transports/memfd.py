"""Sealed memfd segments: create them (publisher) and map them safely (receiver).

Linux only. A publisher's segment is a memfd (``memfd_create``) it maps
read-write once and then seals with ``F_SEAL_SHRINK | F_SEAL_GROW |
F_SEAL_FUTURE_WRITE | F_SEAL_SEAL``:

* nobody can shrink it, so a receiver's mapping can never fault (``SIGBUS``);
* nobody can grow it or change the seals;
* ``F_SEAL_FUTURE_WRITE`` (Linux 5.1) refuses every *new* writable mapping and
  every ``write()``, while the publisher's own mapping, made before the seal,
  stays writable. That is what lets the publisher reuse a segment (writing
  the next payload through its mapping) while receivers can only read:
  ``F_SEAL_WRITE`` would freeze the memfd for good, and a fresh memfd per
  message faults in new pages, which measured 4x slower.

A receiver checks that a descriptor really is such a memfd before it maps it,
read-only and shared.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import stat
from typing import Final

from .._exceptions import RemoteProtocolError

__all__ = ["SEALS", "WritableSegment", "map_segment"]

F_SEAL_FUTURE_WRITE: Final = 0x0010  # linux/fcntl.h (Linux 5.1); Python's fcntl lacks it
SEALS: Final = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_SEAL
# What a receiver needs: the size cannot change, and nobody but the writer who
# mapped it first can write (F_SEAL_WRITE: nobody at all).
_REQUIRED: Final = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
_NO_NEW_WRITERS: Final = fcntl.F_SEAL_WRITE | F_SEAL_FUTURE_WRITE


class WritableSegment:
    """A publisher's segment: a sealed memfd and its writable mapping.

    :ivar fd: the memfd (close-on-exec), sent to receivers.
    :ivar capacity: its size in bytes.
    :ivar view: a writable memoryview of all of it.
    """

    __slots__ = ("_map", "capacity", "fd", "view")

    def __init__(self, capacity: int, name: str = "asyncbus") -> None:
        """Create, size, map and seal a memfd.

        :param capacity: its size in bytes.
        :param name: the memfd's name (shown in ``/proc/PID/fd``).
        :raises OSError: if the kernel refuses (no memfd, no memory, too many files).
        """
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, capacity)
            self._map = mmap.mmap(fd, capacity, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise

        try:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        except BaseException:
            self._map.close()
            os.close(fd)
            raise

        self.fd = fd
        self.capacity = capacity
        self.view = memoryview(self._map)

    def close(self) -> None:
        """Unmap and close (receivers keep their own mappings)."""
        if self.fd < 0:
            return

        self.view.release()
        with contextlib.suppress(BufferError):
            # A user's loan view that outlived its loan keeps the mapping until it goes.
            self._map.close()

        os.close(self.fd)
        self.fd = -1

    def __repr__(self) -> str:
        return f"<WritableSegment fd={self.fd} capacity={self.capacity}>"


def map_segment(fd: int, size: int) -> mmap.mmap:
    """Map the first ``size`` bytes of a received segment, read-only.

    The caller still owns ``fd`` (the mapping holds its own reference).

    :param fd: the descriptor that came with a SEGMENT frame.
    :param size: the payload length the frame gives.
    :return: a read-only shared mapping of exactly ``size`` bytes.
    :raises RemoteProtocolError: if ``fd`` is not a memfd sealed against
        shrinking, growing and new writers, or is shorter than ``size``.
    :raises OSError: if the kernel refuses to map it (no memory, too many maps).
    """
    try:
        info = os.fstat(fd)
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as exc:
        # EINVAL: not a file that can be sealed (not memfd or shmem).
        raise RemoteProtocolError(f"a segment must be a sealed memfd: {exc.strerror}") from exc

    if not stat.S_ISREG(info.st_mode):
        raise RemoteProtocolError("a segment must be a memfd, not a special file")

    if seals & _REQUIRED != _REQUIRED or not seals & _NO_NEW_WRITERS:
        raise RemoteProtocolError(
            f"a segment must be sealed against shrink, grow and write (seals {seals:#x})"
        )

    if info.st_size < size:
        raise RemoteProtocolError(f"a segment of {info.st_size} bytes cannot hold {size}")

    return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
