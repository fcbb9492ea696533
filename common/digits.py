"""Whole numbers as a person types them: ASCII digits and nothing else.

`str.isdigit()` is true for `٣` (Arabic-Indic three) and `²` (superscript two);
`int()` takes the first as 3 and raises on the second, and a long enough string
of digits makes `int()` raise too (Python's 4300-digit limit). None of them is
a count anyone means, so every parse of a whole number from user text in
paas.common and paas.cli goes through `parse_digits`.

    parse_digits("10")    # 10
    parse_digits("٣")     # None
"""

from __future__ import annotations

import re

# More than this many digits is no count, port or index paas takes (int64 has 19).
MAX_DIGITS = 18
_DIGITS = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")


def parse_digits(text: str) -> int | None:
    """`text` as a whole number if it is 1 to MAX_DIGITS ASCII digits, else None."""
    return int(text) if _DIGITS.fullmatch(text) else None
