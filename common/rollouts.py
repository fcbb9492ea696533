"""The rolling replacement settings that the CLI and the scheduler both check.

Pure and dependency-free: paas.toml's `max_parallel` and `min_healthy` mean the
same to `paas deploy` (cli/appconfig.py) and to the scheduler
(scheduler/settings.py, scheduler/rollout.py).
"""

from __future__ import annotations

import math

MAX_MIN_HEALTHY = 3600.0  # seconds
# Seconds a new copy must stay up, its health check passing, before its old one
# stops (the agent keeps checking it that long; the rollout waits that long).
DEFAULT_MIN_HEALTHY = 3.0


def max_parallel(value: str, count: int) -> int:
    """Replacements in flight of a type of `count` instances: "2", "25%" (of `count`,
    rounded up), "" (1); at least 1. ValueError naming the value for anything else
    ("0", "0%", "150%", "two")."""
    text = value
    if not text:
        return 1
    if text.endswith("%"):
        digits = text[:-1]
        if not (digits.isascii() and digits.isdigit()) or not 1 <= int(digits) <= 100:
            raise ValueError(
                f'max_parallel must be a count from 1 or "1%" to "100%", got {value!r}'
            )
        return max(1, math.ceil(count * int(digits) / 100))
    if not (text.isascii() and text.isdigit()) or int(text) < 1 or len(text) > 9:
        raise ValueError(f'max_parallel must be a count from 1 or "1%" to "100%", got {value!r}')
    return int(text)
