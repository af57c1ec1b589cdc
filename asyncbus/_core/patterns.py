"""Topic patterns: exact names, globs and anchored regular expressions (sans-I/O).

A subscription names what it wants in one of three ways:

* an exact topic (``"sensors/imu"``): a string with none of ``*?[``;
* a glob (``"sensors/*"``): a string with any of ``*?[``, matched with
  `fnmatch` rules against the whole topic (``*`` also crosses ``/``);
* a regular expression, as LCM subscribes: a compiled `re.Pattern`, or a
  string with ``regex=True``; it must match the *whole* topic, as LCM anchors
  its channel regexes with ``^`` and ``$``.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Final

__all__ = ["TopicPattern"]

_GLOB_CHARS: Final = frozenset("*?[")


class TopicPattern:
    """A compiled topic pattern.

    :ivar text: the pattern as the user wrote it.
    :ivar exact: the topic name for an exact pattern, else ``None``.
    :ivar kind: ``"exact"``, ``"glob"`` or ``"regex"``.
    """

    __slots__ = ("_regex", "exact", "kind", "text")

    def __init__(self, pattern: str | re.Pattern[str], *, regex: bool = False) -> None:
        """Compile a pattern.

        :param pattern: an exact topic, a glob, or a regular expression.
        :param regex: treat a ``str`` pattern as a regular expression.
        :raises TypeError: if ``pattern`` is neither ``str`` nor ``re.Pattern``.
        :raises ValueError: if the pattern is empty or not a valid regex.
        """
        if isinstance(pattern, re.Pattern):
            if not isinstance(pattern.pattern, str):
                raise TypeError("a topic regex must be a str pattern, not bytes")

            self.text: str = pattern.pattern
            self.exact: str | None = None
            self.kind: str = "regex"
            self._regex: re.Pattern[str] | None = pattern
            return

        if not isinstance(pattern, str):
            raise TypeError(
                f"a topic pattern must be str or re.Pattern, not {type(pattern).__name__}"
            )

        if not pattern:
            raise ValueError("a topic pattern must not be empty")

        self.text = pattern
        self.kind = "regex" if regex else "glob"
        if regex:
            try:
                self._regex = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid topic regex {pattern!r}: {exc}") from exc

            self.exact = None
        elif _GLOB_CHARS.isdisjoint(pattern):
            self._regex = None
            self.exact = pattern
            self.kind = "exact"
        else:
            self._regex = re.compile(fnmatch.translate(pattern))
            self.exact = None

    @classmethod
    def exactly(cls, topic: str) -> TopicPattern:
        """Return a pattern matching only ``topic``, even if it holds ``*?[``.

        :param topic: the topic name.
        :return: an exact pattern.
        """
        pattern = cls.__new__(cls)
        pattern.text = pattern.exact = topic
        pattern.kind = "exact"
        pattern._regex = None
        return pattern

    def matches(self, topic: str) -> bool:
        """Tell whether ``topic`` matches this pattern.

        :param topic: a topic name.
        :return: ``True`` if the whole topic matches.
        """
        if self._regex is None:
            return topic == self.exact

        return self._regex.fullmatch(topic) is not None

    def __repr__(self) -> str:
        return f"TopicPattern({self.text!r}, {self.kind})"
