"""Text that is safe to store and to print: no NUL or other control characters.

PostgreSQL refuses NUL in text (one NUL fails the write of a whole batch), and control characters
printed to a terminal act on it (an escape sequence in an audit reason can rewrite the screen).
Newlines and tabs are ordinary text.
"""

from __future__ import annotations

CONTROL = frozenset(chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)] if chr(c) not in "\n\r\t")


def has_control(text: str) -> bool:
    return any(ch in CONTROL for ch in text)


def terminal_safe(text: str) -> str:
    """`text` with each control character shown as its escape (\\x1b), so it prints as what it is."""
    return "".join(ch.encode("unicode_escape").decode() if ch in CONTROL else ch for ch in text)
