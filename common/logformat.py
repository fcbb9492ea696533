"""How a log line looks, as Heroku users know it.

2026-11-28T19:47:03.123456+00:00 app[web.3]: listening on 5003
2026-11-28T19:47:04.000001+00:00 paas[scheduler]: Scaled to web@10
"""

from __future__ import annotations

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


def format_line(unix: float, stream: str, instance: str, text: str) -> str:
    return f"{timestamp(unix)} {source(stream)}[{instance}]: {text}"
