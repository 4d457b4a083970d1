"""Text the platform wrote (a batch's failure reason, its state), made safe to show on the owner's terminal."""

from __future__ import annotations

import unicodedata

MAX_CHARS = 2_000  # a reason longer than this is cut: the platform could otherwise fill the owner's screen


def shown(value: object) -> str:
    """`str(value)` with every control or format character (newline, ESC, bidi overrides) written as its escape
    (`\\n`, `\\x1b`, `\\u202e`), cut to MAX_CHARS: one line that can neither move the cursor nor forge another."""
    text = str(value)[:MAX_CHARS]
    return "".join(c.encode("unicode_escape").decode() if unicodedata.category(c)[0] == "C" else c for c in text)
