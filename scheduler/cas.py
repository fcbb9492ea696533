"""Compare-and-swap retries: read, decide, write if nothing changed meanwhile; else again.

    release = await retry_conflicts(attempt, "the app")

`attempt` reads what it needs afresh each time and writes with a compare on
what it read (the store raises ConflictError when the compare fails). After
CONFLICT_RETRIES lost races the caller gets a ConflictError saying so.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from paas.scheduler.store import ConflictError

T = TypeVar("T")

CONFLICT_RETRIES = 5


async def retry_conflicts(attempt: Callable[[], Awaitable[T]], what: str) -> T:
    """`attempt()` until it does not raise ConflictError, at most CONFLICT_RETRIES times.
    `what` names what changed in the final error ("the app", "the formation")."""
    for _ in range(CONFLICT_RETRIES):
        try:
            return await attempt()
        except ConflictError:
            continue
    raise ConflictError(f"{what} changed concurrently too often; try again")
