"""Formation syntax as Heroku's CLI takes it, and the checks on applying it."""

from __future__ import annotations

import pytest

from paas.common.formation import (
    MAX_INSTANCES_PER_TYPE,
    Change,
    FormationError,
    Op,
    apply_changes,
    describe,
    parse_changes,
)

TYPES = ["web", "worker", "clock"]


@pytest.mark.parametrize(
    ("word", "change"),
    [
        ("web=10", Change("web", Op.SET, 10)),
        ("worker+2", Change("worker", Op.ADD, 2)),
        ("clock-1", Change("clock", Op.SUB, 1)),
        ("web=0", Change("web", Op.SET, 0)),
        ("my-type=3", Change("my-type", Op.SET, 3)),
        ("my-type-1", Change("my-type", Op.SUB, 1)),
    ],
)
def test_words_parse_as_heroku_does(word: str, change: Change) -> None:
    assert parse_changes([word]) == [change]


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("web=abc", "invalid count 'abc'"),
        ("web=-1", "invalid count '-1'"),
        ("web", "expected TYPE=N"),
        ("=3", "expected TYPE=N"),
        ("web=", "invalid count ''"),
        (f"web={MAX_INSTANCES_PER_TYPE + 1}", "over the maximum"),
        ("we b=1", "invalid process type"),
        ("web=1.5", "invalid count"),
        ("web=\N{ARABIC-INDIC DIGIT THREE}", "invalid count '\N{ARABIC-INDIC DIGIT THREE}'"),
        ("web=\N{SUPERSCRIPT TWO}", "invalid count '\N{SUPERSCRIPT TWO}'"),
        ("web+\N{FULLWIDTH DIGIT ONE}", "invalid count"),
        ("web=" + "9" * 5000, "invalid count"),
        ("web=+1", "invalid count"),
        ("web= 1", "invalid count"),
        ("web=1\n", "invalid count"),
        ("web=1_0", "invalid count"),
        ("web\n=1", "invalid process type"),
    ],
)
def test_malformed_words_are_refused_naming_the_problem(word: str, message: str) -> None:
    with pytest.raises(FormationError, match=message):
        parse_changes([word])


def test_a_type_given_twice_is_refused() -> None:
    with pytest.raises(FormationError, match="more than once"):
        parse_changes(["web=1", "web+1"])


def test_nothing_given_is_refused() -> None:
    with pytest.raises(FormationError, match="no formation"):
        parse_changes([])


def test_changes_apply_together() -> None:
    changes = parse_changes(["web=10", "worker+2", "clock-1"])
    assert apply_changes({"worker": 1, "clock": 1}, changes, TYPES) == {
        "web": 10,
        "worker": 3,
        "clock": 0,
    }


def test_unknown_type_names_the_procfile_types() -> None:
    with pytest.raises(
        FormationError, match=r"unknown process type 'wbe' \(Procfile has: clock, web, worker\)"
    ):
        apply_changes({}, parse_changes(["wbe=1"]), TYPES)


def test_scaling_below_zero_is_refused() -> None:
    with pytest.raises(FormationError, match="below 0"):
        apply_changes({"web": 1}, parse_changes(["web-2"]), TYPES)


def test_adding_past_the_maximum_is_refused() -> None:
    with pytest.raises(FormationError, match="maximum"):
        apply_changes({"web": MAX_INSTANCES_PER_TYPE}, parse_changes(["web+1"]), TYPES)


def test_an_app_without_release_cannot_scale() -> None:
    with pytest.raises(FormationError, match="deploy a Procfile first"):
        apply_changes({}, parse_changes(["web=1"]), [])


def test_a_refused_change_leaves_the_formation_untouched() -> None:
    formation = {"web": 2}
    with pytest.raises(FormationError):
        apply_changes(formation, parse_changes(["web=5", "nope=1"]), TYPES)
    assert formation == {"web": 2}


def test_describe_prints_heroku_style() -> None:
    assert describe({"worker": 3, "web": 10}) == "web@10 worker@3"
