"""Times given on the command line: `paas logs --since 10m` or an ISO-8601 moment.

Pure: text and the current time in, unix seconds out, or a `TimeSpecError`
whose message says what was expected.
"""

from __future__ import annotations

import re
from datetime import datetime

from paas.cli.errors import CLIError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# 90s, 10m, 1.5h, 2d, and sums of them: 1h30m. ASCII digits only ([0-9], not \d,
# which takes `٣` too), matched whole.
_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?[smhd])+")
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")


class TimeSpecError(CLIError, ValueError):
    """A time that does not parse; the message shows the forms that do."""


def parse_duration(text: str) -> float:
    """`90d`, `1h30m` -> seconds (above zero); `--ttl` takes these."""
    spec = text.strip()
    if not _DURATION.fullmatch(spec):
        raise TimeSpecError(f"invalid duration {text!r}: expected e.g. 30s, 10m, 1h, 90d, 1h30m")
    seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(spec))
    if seconds <= 0:
        raise TimeSpecError(f"invalid duration {text!r}: it must be longer than zero")
    return seconds


def parse_since(text: str, now: float) -> float:
    """`10m` -> ten minutes before `now`; `2026-01-31T12:00:00Z` -> that moment.

    An ISO time without a zone is local time. A moment after `now` is refused:
    it would select nothing.
    """
    spec = text.strip()
    if _DURATION.fullmatch(spec):
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(spec))
        return now - seconds
    try:
        moment = datetime.fromisoformat(spec)
    except ValueError:
        raise TimeSpecError(
            f"invalid time {text!r}: expected a duration like 30s, 10m, 1h, 2d "
            "or an ISO-8601 time like 2026-01-31T12:00:00Z"
        ) from None
    unix = moment.timestamp()  # naive: local time, as a person at this terminal means it
    if unix > now:
        raise TimeSpecError(f"invalid time {text!r}: it is in the future")
    return unix
