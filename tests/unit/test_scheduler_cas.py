"""The one compare-and-swap retry helper: again on a lost race, at most CONFLICT_RETRIES times."""

from __future__ import annotations

import pytest

from paas.scheduler.cas import CONFLICT_RETRIES, retry_conflicts
from paas.scheduler.store import ConflictError, StoreError


class Attempts:
    """An attempt that loses `losses` races, then returns how many calls it took."""

    def __init__(self, losses: int, error: Exception | None = None) -> None:
        self.losses = losses
        self.calls = 0
        self.error = error

    async def __call__(self) -> int:
        self.calls += 1
        if self.error is not None:
            raise self.error
        if self.calls <= self.losses:
            raise ConflictError("the compare failed")
        return self.calls


async def test_a_first_attempt_that_wins_is_the_only_one() -> None:
    attempt = Attempts(losses=0)
    assert await retry_conflicts(attempt, "the app") == 1
    assert attempt.calls == 1


async def test_lost_races_are_tried_again_until_one_wins() -> None:
    attempt = Attempts(losses=CONFLICT_RETRIES - 1)
    assert await retry_conflicts(attempt, "the app") == CONFLICT_RETRIES


async def test_after_the_last_lost_race_the_error_names_what_changed() -> None:
    attempt = Attempts(losses=CONFLICT_RETRIES)
    with pytest.raises(ConflictError, match="the formation changed concurrently too often"):
        await retry_conflicts(attempt, "the formation")
    assert attempt.calls == CONFLICT_RETRIES


async def test_any_other_error_is_not_tried_again() -> None:
    attempt = Attempts(losses=0, error=StoreError("etcd is unreachable"))
    with pytest.raises(StoreError, match="unreachable"):
        await retry_conflicts(attempt, "the app")
    assert attempt.calls == 1
