"""`paas logs --since`: a duration back from now, or an ISO-8601 moment."""

from __future__ import annotations

from datetime import datetime

import pytest

from paas.cli.timespec import TimeSpecError, parse_since

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("1h", 3600), ("2d", 172800), ("1h30m", 5400),
     ("1.5h", 5400), ("0s", 0), (" 5m ", 300)],
)  # fmt: skip
def test_a_duration_counts_back_from_now(text: str, seconds: float) -> None:
    assert parse_since(text, NOW) == NOW - seconds


@pytest.mark.parametrize(
    "text", ["2026-01-31T12:00:00Z", "2026-01-31T12:00:00+00:00", "2026-01-31T13:00:00+01:00"]
)
def test_an_iso_time_with_a_zone_is_that_moment(text: str) -> None:
    assert parse_since(text, NOW) == datetime.fromisoformat("2026-01-31T12:00:00+00:00").timestamp()


def test_an_iso_time_without_a_zone_is_local_time() -> None:
    assert parse_since("2026-01-31T12:00:00", NOW) == datetime(2026, 1, 31, 12).timestamp()
    assert parse_since("2026-01-31", NOW) == datetime(2026, 1, 31).timestamp()


@pytest.mark.parametrize(
    "text",
    ["", "10", "10x", "m10", "-5m", "yesterday", "1h 30m", "2026-13-01",
     "\N{ARABIC-INDIC DIGIT THREE}m", "1\N{SUPERSCRIPT TWO}m", "\N{FULLWIDTH DIGIT ONE}h",
     "1.\N{DEVANAGARI DIGIT FIVE}h", "10m\n5s", "\N{ARABIC-INDIC DIGIT TWO}026-01-31"],
)  # fmt: skip
def test_anything_else_is_refused_showing_what_would_do(text: str) -> None:
    with pytest.raises(TimeSpecError, match="expected a duration like 30s, 10m, 1h, 2d or an ISO"):
        parse_since(text, NOW)


def test_a_moment_in_the_future_is_refused() -> None:
    with pytest.raises(TimeSpecError, match="in the future"):
        parse_since("2100-01-01T00:00:00Z", NOW)
