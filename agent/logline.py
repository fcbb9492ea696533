"""One line of one instance: the record the log buffers, the spool and the Agent API share.

A NamedTuple, not a frozen dataclass: every line of output makes one, and this is
the cheapest immutable record Python has (a frozen dataclass costs 4x as much).
"""

from __future__ import annotations

from operator import itemgetter
from typing import NamedTuple


class LogLine(NamedTuple):
    """One line of one instance, as the Agent API's LogLine carries it."""

    timestamp: float  # unix seconds
    app: str
    instance: str  # "web.3"
    stream: str  # "stdout", "stderr" or "paas"
    node: str
    seq: int  # per instance, increasing from 1; 0 for notices about loss
    text: str
    run: int = 0  # which run (process start) of the instance wrote it, from 1
    continued: bool = False  # a piece of an over-long line; the next piece follows
    # The app's id (Assignment.app_id): a re-created app of the same name has another.
    # "" when the scheduler gave none, and in notices made for a reader.
    app_id: str = ""


# Fields by position, for steps over many lines made in C (map, groupby, filter).
SEQ = itemgetter(5)
TEXT = itemgetter(6)
RUN = itemgetter(7)
