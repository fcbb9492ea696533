"""The merge's decisions: the time-order window (tables and properties), the inbox's
bound and its loss notices, and the cursors that keep a resumed node from repeating."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paas.common.logruns import lines_of_runs, runs_of_lines
from paas.proto import paas_pb2 as pb
from paas.scheduler.logmerge import (
    Arrival,
    Cursors,
    Inbox,
    Pushed,
    TimeOrderWindow,
    latest_run,
)

W = 0.15  # the window of every test
START = 1.0  # when the tables' windows open
WARM = START + 2 * W + 0.01  # by then every source had its time to be heard


def line(stamp: float, node: str = "a", instance: str = "web.1", seq: int = 0) -> pb.LogRun:
    """A line, as the merge has them: a run of one (seq 0: a notice)."""
    return pb.LogRun(
        timestamp=stamp, node=node, instance=instance, first_seq=seq, texts=[f"{stamp}"]
    )


def names(runs: list[pb.LogRun]) -> list[str]:
    """`a@1.0` for the line of node a stamped 1.0: what a table expects to come out."""
    return [f"{x.node}@{x.timestamp:g}" for x in lines_of_runs(runs)]


# --- the window, step by step -----------------------------------------------------


@dataclass(frozen=True)
class Push:
    at: float
    source: str
    stamps: list[float]
    pushed: Pushed = Pushed.HELD


@dataclass(frozen=True)
class Release:
    at: float
    out: list[str] = field(default_factory=list)


WINDOW_CASES: dict[str, list[Push | Release]] = {
    "test_lines_of_two_nodes_interleave_by_stamp": [
        Push(1.00, "a", [0.99, 1.00]),
        Push(1.00, "b", [0.995]),
        Release(1.00 + W, ["a@0.99", "b@0.995", "a@1"]),
    ],
    "test_nothing_comes_out_before_its_window_is_over": [
        Push(1.00, "a", [1.00]),
        Push(1.01, "b", [1.01]),
        Release(1.00 + W - 0.001),
        Release(1.00 + W, ["a@1"]),
        Release(1.01 + W, ["b@1.01"]),
    ],
    "test_release_takes_every_held_line_up_to_the_newest_stamp_of_a_ripe_batch": [
        # b's line is stamped before a's newest, though it came later: it goes out with it.
        Push(1.00, "a", [1.00, 1.05]),
        Push(1.10, "b", [1.02]),
        Release(1.00 + W, ["a@1", "b@1.02", "a@1.05"]),
    ],
    "test_a_line_stamped_later_than_its_batch_waits_for_a_batch_that_late": [
        Push(1.00, "a", [1.00]),
        Push(1.05, "b", [1.30]),  # b's clock runs ahead
        Release(1.00 + W, ["a@1"]),
        Release(1.05 + W, ["b@1.3"]),
    ],
    "test_before_every_source_had_time_to_be_heard_one_source_waits_too": [
        Push(1.10, "a", [1.10]),
        Release(1.10 + W, ["a@1.1"]),
        Push(WARM - 0.02, "a", [1.29]),
        Release(WARM - 0.02 + W, ["a@1.29"]),
    ],
    "test_one_source_alone_passes_through": [
        Push(WARM, "a", [1.31], Pushed.PASSED),
        Push(WARM + 0.01, "a", [1.32], Pushed.PASSED),
        Release(3.00),
    ],
    "test_two_sources_within_twice_the_window_are_not_alone": [
        Push(2.00, "a", [2.00], Pushed.PASSED),
        Push(2.20, "b", [2.20]),
        Push(2.25, "a", [2.25]),
        Release(2.25 + W, ["b@2.2", "a@2.25"]),
    ],
    "test_a_source_quiet_for_twice_the_window_no_longer_counts": [
        Push(2.00, "a", [2.00], Pushed.PASSED),
        Push(2.20, "b", [2.20]),
        Release(2.20 + W, ["b@2.2"]),
        Push(2.20 + 2 * W + 0.01, "b", [2.51], Pushed.PASSED),
    ],
    "test_alone_again_with_lines_held_lets_them_all_out_at_once": [
        Push(2.00, "a", [2.00], Pushed.PASSED),
        Push(2.10, "b", [2.10]),
        Push(2.45, "b", [2.45]),  # a quiet since 2.00: b is alone, but 2.10 is held
        Release(2.45, ["b@2.1", "b@2.45"]),
        Push(2.46, "b", [2.46], Pushed.PASSED),
    ],
}


@pytest.mark.parametrize("steps", list(WINDOW_CASES.values()), ids=list(WINDOW_CASES))
def test_window(steps: list[Push | Release]) -> None:
    window = TimeOrderWindow(now=START, window=W)
    for step in steps:
        if isinstance(step, Push):
            lines = [line(s, node=step.source) for s in step.stamps]
            assert window.push(step.source, lines, step.at) is step.pushed, step
        else:
            assert names(window.release(step.at)) == step.out, step


def test_one_instance_is_never_reordered_even_if_its_clock_stepped_back() -> None:
    window = TimeOrderWindow(now=START, window=W)
    window.push("a", [line(1.05, seq=1), line(1.00, seq=2)], 1.05)
    window.push("b", [line(1.03, node="b")], 1.05)
    # a's second line counts as 1.05 (its instance's newest so far): after b's 1.03.
    assert names(window.release(1.05 + W)) == ["b@1.03", "a@1.05", "a@1"]


def test_the_clock_step_of_one_instance_does_not_hold_back_another() -> None:
    window = TimeOrderWindow(now=START, window=W)
    window.push("a", [line(1.20, instance="web.1"), line(1.00, instance="web.2")], 1.2)
    window.push("b", [line(1.10, node="b")], 1.2)
    assert names(window.release(1.2 + W)) == ["a@1", "b@1.1", "a@1.2"]


def test_wake_at_is_when_the_oldest_held_batch_is_ripe() -> None:
    window = TimeOrderWindow(now=START, window=W)
    assert window.wake_at() is None
    window.push("a", [line(1.0)], 1.0)
    window.push("b", [line(1.1, node="b")], 1.1)
    assert window.wake_at() == pytest.approx(1.0 + W)
    assert names(window.release(window.wake_at() or 0)) == ["a@1"]
    assert window.wake_at() == pytest.approx(1.1 + W)
    assert names(window.release(window.wake_at() or 0)) == ["b@1.1"]
    assert window.wake_at() is None
    assert len(window) == 0


# --- the window, over random arrivals ---------------------------------------------

SOURCES = ("a", "b", "c")


Batches = list[tuple[float, str, list[pb.LogRun]]]


def arrivals(seed: int, steady: bool = False) -> Batches:
    """Random batches of one to three sources, all in arrival order. A line reaches the
    window at most W after its stamp; each source's lines are in stamp order. Steady:
    two or three sources, each sending at least every W for the same two seconds.

    Drawn from a seed, not strategy by strategy: a thousand small draws per example
    would make this test take seconds instead of a small part of one.
    """
    rng = random.Random(seed)
    out: Batches = []
    seq = itertools.count(1)
    for source in rng.sample(SOURCES, rng.randint(2 if steady else 1, len(SOURCES))):
        last = 0.0
        for at in _arrival_times(rng, steady):
            low = max(at - W, last)
            lines = [
                line(low + spot * (at - low), source, rng.choice(("web.1", "web.2")), next(seq))
                for spot in sorted(rng.random() for _ in range(rng.randint(1, 6)))
            ]
            last = lines[-1].timestamp
            out.append((at, source, lines))
    return sorted(out, key=lambda a: a[0])  # stable: each source keeps its order


def _arrival_times(rng: random.Random, steady: bool) -> list[float]:
    times = [0.0]
    if steady:
        while times[-1] < 2.0:
            times.append(times[-1] + rng.uniform(0, W))
    else:
        for _ in range(rng.randint(0, 11)):
            times.append(times[-1] + rng.choice((0, 0.001, 0.01, 0.1, 0.2, 0.4)))
    return times


def run(window: TimeOrderWindow, batches: Batches) -> list[pb.LogLine]:
    """Drive `window` as the follow loop does: push each arrival, release when it says;
    the lines that came out."""
    out: list[pb.LogRun] = []
    for at, source, lines in batches:
        while (wake := window.wake_at()) is not None and wake < at:
            out += window.release(wake)
        if window.push(source, lines, at) is Pushed.PASSED:
            out += lines
        out += window.release(at)
    while (wake := window.wake_at()) is not None:
        out += window.release(wake)
    assert len(window) == 0
    return lines_of_runs(out)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32))
def test_every_line_comes_out_once_per_instance_in_order_and_nodes_in_time_order(
    seed: int,
) -> None:
    batches = arrivals(seed)
    out = run(TimeOrderWindow(now=0.0, window=W), batches)
    pushed = [x.seq for _, _, runs in batches for x in lines_of_runs(runs)]
    assert sorted(x.seq for x in out) == sorted(pushed)
    for key in {(x.node, x.instance) for x in out}:
        seqs = [x.seq for x in out if (x.node, x.instance) == key]
        assert seqs == sorted(seqs), key
    # Lines of different nodes further apart than the window go out in time order.
    newest: dict[str, float] = {}
    for x in out:
        for node, stamp in newest.items():
            if node != x.node:
                assert stamp <= x.timestamp + W, (node, stamp, x)
        newest[x.node] = max(newest.get(x.node, x.timestamp), x.timestamp)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32))
def test_while_every_node_sends_lines_that_come_within_the_window_go_out_in_time_order(
    seed: int,
) -> None:
    batches = arrivals(seed, steady=True)
    out = run(TimeOrderWindow(now=0.0, window=W), batches)
    assert len(out) == sum(len(lines) for _, _, lines in batches)
    stamps = [x.timestamp for x in out]
    assert stamps == sorted(stamps)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32))
def test_with_clocks_stepping_anywhere_lines_still_come_out_once_and_per_instance_in_order(
    seed: int,
) -> None:
    batches = arrivals(seed)
    rng = random.Random(seed)
    for _, _, lines in batches:
        for x in lines:
            x.timestamp += rng.choice((0.0, 0.0, rng.uniform(-5, 5)))
    out = run(TimeOrderWindow(now=0.0, window=W), batches)
    assert sorted(x.seq for x in out) == sorted(
        x.seq for _, _, ls in batches for x in lines_of_runs(ls)
    )
    for key in {(x.node, x.instance) for x in out}:
        seqs = [x.seq for x in out if (x.node, x.instance) == key]
        assert seqs == sorted(seqs), key


# --- the inbox ----------------------------------------------------------------------


def test_the_inbox_drops_nothing_and_says_when_a_source_must_wait() -> None:
    inbox = Inbox(limit=3)
    assert inbox.has_room("a")
    inbox.put(Arrival("a", [line(1), line(2)]))
    assert inbox.has_room("a")
    inbox.put(Arrival("a", [line(3), line(4)]))  # over its share: taken, but a waits now
    assert not inbox.has_room("a")
    assert inbox.has_room("b"), "one source's lag keeps no other out"
    inbox.put(Arrival("b", [line(5)]))
    assert len(inbox) == 5
    assert names(list(inbox.take().runs)) == ["a@1", "a@2"]
    assert inbox.has_room("a")
    assert [names(list(inbox.take().runs)) for _ in range(2)] == [["a@3", "a@4"], ["a@5"]]
    assert not inbox and len(inbox) == 0


def test_a_whole_batch_stays_the_same_message() -> None:
    batch = pb.LogBatch(runs=[line(1)])
    inbox = Inbox()
    inbox.put(Arrival("a", batch.runs, batch))
    assert inbox.take().whole is batch


# --- cursors --------------------------------------------------------------------------


def test_cursors_drop_what_the_reader_had_and_note_what_is_new() -> None:
    cursors = Cursors([pb.LogCursor(node="a", instance="web.1", seq=2)])
    lines = [line(1, seq=1), line(2, seq=2), line(3, seq=3), line(4, instance="web.2", seq=1)]
    assert [x.first_seq for x in cursors.fresh(lines)] == [3, 1]
    assert cursors.fresh(lines) == []
    assert sorted((c.instance, c.seq) for c in cursors.of_node("a")) == [("web.1", 3), ("web.2", 1)]
    assert cursors.of_node("b") == []


def test_notices_are_never_repeats() -> None:
    cursors = Cursors()
    notices = [line(1, seq=0), line(2, seq=0)]
    assert cursors.fresh(notices) == notices
    assert cursors.fresh(notices) == notices


def test_noting_history_not_sent_keeps_it_from_coming_back() -> None:
    cursors = Cursors()
    cursors.note([line(1, seq=5), line(2, seq=3)])
    assert [c.seq for c in cursors.of_node("a")] == [5]
    assert cursors.fresh([line(3, seq=4), line(4, seq=6)]) == [line(4, seq=6)]


def test_a_run_the_reader_had_in_part_comes_cut_to_the_rest() -> None:
    cursors = Cursors([pb.LogCursor(node="a", instance="web.1", seq=4)])
    run = pb.LogRun(
        node="a", instance="web.1", first_seq=3, texts=["c", "d", "e", "f"], continued=[1, 2]
    )
    (rest,) = cursors.fresh([run])
    assert (rest.first_seq, list(rest.texts), list(rest.continued)) == (5, ["e", "f"], [0])
    assert list(run.texts) == ["c", "d", "e", "f"], "the run that came is left as it is"
    assert [c.seq for c in cursors.of_node("a")] == [6]
    assert cursors.fresh([run]) == []


def fresh_one_by_one(seen: dict[tuple[str, str], int], lines: list[pb.LogLine]) -> list[int]:
    """The plain way, to check Cursors.fresh by: each line against its instance's cursor."""
    out = []
    for x in lines:
        if x.seq:
            if x.seq <= seen.get((x.node, x.instance), 0):
                continue
            seen[(x.node, x.instance)] = x.seq
        out.append(x.seq)
    return out


@given(
    st.lists(
        st.lists(
            st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["web.1", "web.2"]),
                      st.integers(0, 12)),
            max_size=12,
        ),
        max_size=4,
    )
)  # fmt: skip
def test_fresh_takes_what_the_plain_way_takes(batches: list[list[tuple[str, str, int]]]) -> None:
    cursors = Cursors()
    seen: dict[tuple[str, str], int] = {}
    for batch in batches:
        lines = [pb.LogLine(node=n, instance=i, seq=q, text=str(q)) for n, i, q in batch]
        fresh = lines_of_runs(cursors.fresh(runs_of_lines(lines)))
        assert [x.seq for x in fresh] == fresh_one_by_one(seen, lines)


# --- previous runs ----------------------------------------------------------------------


def test_previous_shows_the_run_that_ended_last_and_every_notice() -> None:
    on_a = [line(1.0, "a", seq=1), line(5.0, "a", seq=2), line(6.0, "a", seq=0)]
    on_b = [line(2.0, "b", seq=1), line(3.0, "b", seq=2), line(7.0, "b", seq=0)]
    assert [names(x) for x in latest_run([on_a, on_b])] == [["a@1", "a@5", "a@6"], ["b@7"]]
    assert latest_run([]) == []


def test_cursors_kept_as_a_mapping_resume_the_whole_stream_in_order() -> None:
    cursors = Cursors.of({("b", "web.1"): 4, ("a", "web.2"): 7})
    assert cursors.fresh([line(1, "b", seq=4)]) == []
    assert [(c.node, c.instance, c.seq) for c in cursors.all()] == [
        ("a", "web.2", 7),
        ("b", "web.1", 4),
    ]
