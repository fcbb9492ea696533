"""The slug GC's choices and the budget's arithmetic (slugpolicy.py), the chunk plan
(slugstore.py, store.py) and the size flag: pure, no etcd."""

from __future__ import annotations

import argparse

import pytest

from paas.cli.argtypes import byte_size
from paas.common.slugs import CHUNK_SIZE
from paas.scheduler.slugpolicy import (
    budget_problem,
    releases_to_drop,
    slugs_to_drop,
    usage_by_app,
)
from paas.scheduler.slugstore import chunk_count
from paas.scheduler.store import (
    ETCD_REQUEST_LIMIT,
    ReleaseRecord,
    SlugRecord,
    SlugRef,
    chunks_per_txn,
)

MiB = 1024 * 1024


def release(app: str, version: int, digest: str = "") -> ReleaseRecord:
    slug = SlugRef(digest, MiB) if digest else None
    return ReleaseRecord(app, version, "" if slug else "/srv", {}, {}, 0.0, slug=slug)


def stored(digest: str, size: int = MiB, created_at: float = 0.0) -> SlugRecord:
    return SlugRecord(digest, size, chunk_count(size), created_at)


def test_releases_beyond_the_kept_ones_go_but_never_the_current() -> None:
    releases = [release("shop", v) for v in range(1, 6)] + [release("api", 1)]
    assert releases_to_drop(releases, {"shop": 5, "api": 1}, keep=2) == [
        ("shop", 1), ("shop", 2), ("shop", 3)
    ]  # fmt: skip
    # A rolled-back app keeps its current release even when it is old.
    assert ("shop", 1) not in releases_to_drop(releases, {"shop": 1, "api": 1}, keep=2)
    assert releases_to_drop(releases, {"shop": 5, "api": 1}, keep=0) == [
        ("shop", v) for v in range(1, 5)
    ]


def test_releases_of_an_app_not_read_are_kept() -> None:
    # Created after the apps were read: its first release is its current one.
    assert releases_to_drop([release("new", 1), release("new", 2)], {}, keep=1) == []


def test_a_slug_goes_when_no_kept_release_names_it_and_its_grace_is_over() -> None:
    slugs = {"a": stored("a", created_at=0), "b": stored("b", created_at=0),
             "new": stored("new", created_at=990)}  # fmt: skip
    kept = [release("shop", 2, "b"), release("api", 1, "b"), release("x", 1)]
    assert slugs_to_drop(slugs, kept, now=1000, grace=60) == ["a"]
    assert slugs_to_drop(slugs, kept, now=1000, grace=0) == ["a", "new"]


def test_usage_counts_a_shared_slug_for_each_app_and_loose_ones_apart() -> None:
    slugs = {"a": stored("a", 3 * MiB), "b": stored("b", MiB), "c": stored("c", 2 * MiB)}
    releases = [release("shop", 1, "a"), release("shop", 2, "b"), release("api", 1, "b")]
    assert usage_by_app(slugs, releases) == {"shop": 4 * MiB, "api": MiB, "": 2 * MiB}


def test_the_budget_refusal_says_what_is_used_and_by_whom() -> None:
    slugs = {"a": stored("a", 600 * MiB), "b": stored("b", 380 * MiB)}
    releases = [release("shop", 1, "a"), release("api", 1, "b")]
    assert budget_problem(44 * MiB, slugs, releases, budget=1024 * MiB) is None
    problem = budget_problem(45 * MiB, slugs, releases, budget=1024 * MiB)
    assert problem == (
        "slug budget 1.0 GiB would be exceeded by this slug of 45.0 MiB: 980.0 MiB used "
        "(shop 600.0 MiB, api 380.0 MiB)"
    )
    reserved = budget_problem(MiB, slugs, releases, budget=1024 * MiB, reserved=44 * MiB)
    assert reserved is not None and "uploads under way 44.0 MiB" in reserved


def test_chunks_fit_below_etcds_request_limit() -> None:
    per_txn = chunks_per_txn(CHUNK_SIZE)
    assert per_txn == 2 and per_txn * CHUNK_SIZE < ETCD_REQUEST_LIMIT
    assert chunks_per_txn(2 * MiB) == 1  # never zero: one chunk a txn at least
    assert [chunk_count(n) for n in (1, CHUNK_SIZE, CHUNK_SIZE + 1)] == [1, 1, 2]


@pytest.mark.parametrize(
    ("text", "size"),
    [("4096", 4096), ("512KiB", 512 * 1024), ("100MiB", 100 * MiB), ("1GiB", 1024 * MiB),
     ("100M", 100 * MiB), ("2g", 2048 * MiB)],
)  # fmt: skip
def test_sizes_as_people_write_them(text: str, size: int) -> None:
    assert byte_size(text) == size


@pytest.mark.parametrize(
    "text", ["", "0", "-1", "1.5GiB", "10 MB", "1TiB", "\N{ARABIC-INDIC DIGIT THREE}"]
)
def test_sizes_that_are_not(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        byte_size(text)


def test_the_slug_flags_of_paas_scheduler() -> None:
    from paas.cli.main import build_parser

    base = ["scheduler", "--etcd", "127.0.0.1:2379", "--listen", "127.0.0.1:7070"]
    args = build_parser().parse_args(
        [*base, "--max-slug-size", "50MiB", "--slug-budget", "2GiB", "--keep-releases", "3",
         "--slug-grace", "30"]
    )  # fmt: skip
    assert (args.max_slug_size, args.slug_budget, args.keep_releases, args.slug_grace) == (
        50 * MiB, 2048 * MiB, 3, 30.0
    )  # fmt: skip
    defaults = build_parser().parse_args(base)
    assert defaults.slug_budget is None  # SchedulerConfig's default (1 GiB) then applies
