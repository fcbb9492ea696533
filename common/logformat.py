"""How a log line looks, as Heroku users know it.

2026-11-28T19:47:03.123456+00:00 app[web.3]: listening on 5003
2026-11-28T19:47:04.000001+00:00 paas[scheduler]: Scaled to web@10
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache

# `stream` of lifecycle and scheduler events; app output is stdout or stderr.
PAAS_STREAM = "paas"
SCHEDULER_INSTANCE = "scheduler"


@lru_cache(maxsize=4096)
def timestamp(unix: float) -> str:
    # Cached: formatting costs more than the rest of printing a line, and the lines
    # an agent read together carry the same time.
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="microseconds")


def source(stream: str) -> str:
    return "paas" if stream == PAAS_STREAM else "app"


def line_prefix(unix: float, stream: str, instance: str) -> str:
    """What comes before a line's text: `2026-11-28T19:47:03.123456+00:00 app[web.3]: `."""
    return f"{timestamp(unix)} {source(stream)}[{instance}]: "


def format_line(unix: float, stream: str, instance: str, text: str) -> str:
    return line_prefix(unix, stream, instance) + text


# A notice (seq 0) that lines left retention before a reader got to them, as an agent
# words it; whoever counts losses (a drain's `dropped`) reads the count back from it.
_LOST = re.compile(
    r"(\d+) (?:earlier )?lines (?:of \S+ )?"
    r"(?:were no longer kept|are no longer kept|not written to disk)"
)


def lost_notice(count: int, instance: str) -> str:
    """The text of a notice that `count` lines of `instance` left retention unread."""
    return f"{count} lines of {instance} were no longer kept when this reader got to them"


def lost_count(text: str) -> int:
    """How many lost lines a notice's `text` counts (0: it is no notice of loss)."""
    found = _LOST.match(text)
    return int(found.group(1)) if found else 0
