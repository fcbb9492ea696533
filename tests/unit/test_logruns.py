"""Lines packed as runs (common/logruns.py): the same lines back, cut and batched."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from paas.common.logruns import (
    last_lines,
    last_seq,
    lines_of_runs,
    past,
    run_batches,
    runs_of,
    runs_of_lines,
    size,
    tail,
)
from paas.proto import paas_pb2 as pb

lines = st.builds(
    pb.LogLine,
    timestamp=st.sampled_from([1.5, 2.25]),
    app=st.just("shop"),
    instance=st.sampled_from(["web.1", "web.2"]),
    stream=st.sampled_from(["stdout", "paas"]),
    node=st.sampled_from(["a", "b"]),
    seq=st.integers(0, 6),
    text=st.text(max_size=8),
    run=st.integers(0, 2),
    continued=st.booleans(),
)


def run_of(first: int, *texts: str, continued: tuple[int, ...] = ()) -> pb.LogRun:
    return pb.LogRun(
        timestamp=1.0, node="a", instance="web.1", first_seq=first, texts=texts, continued=continued
    )


@given(st.lists(lines, max_size=30))
def test_packed_and_unpacked_lines_are_the_same_lines(records: list[pb.LogLine]) -> None:
    runs = runs_of_lines(records)
    assert lines_of_runs(runs) == records
    assert size(runs) == len(records)
    for run in runs:
        texts = len(run.texts)
        assert run.first_seq or texts == 1, "a notice is a run of one"
        assert last_seq(run) == (run.first_seq + texts - 1 if run.first_seq else 0)
    # A batch in either form is the same runs.
    assert runs_of(pb.LogBatch(lines=records)) == runs
    assert runs_of(pb.LogBatch(runs=runs)) == runs


def test_lines_that_follow_each_other_pack_into_one_run() -> None:
    records = [
        pb.LogLine(
            timestamp=1.0, node="a", instance="web.1", stream="stdout", seq=seq, text=str(seq)
        )
        for seq in (3, 4, 5)
    ]
    (run,) = runs_of_lines(records)
    assert (run.first_seq, list(run.texts), last_seq(run)) == (3, ["3", "4", "5"], 5)


@given(st.lists(lines, max_size=30), st.integers(0, 40))
def test_last_lines_are_the_last_lines(records: list[pb.LogLine], count: int) -> None:
    kept = last_lines(runs_of_lines(records), count)
    assert lines_of_runs(kept) == records[len(records) - min(count, len(records)) :]


def test_a_tail_keeps_its_pieces_marks_and_seqs_and_leaves_the_run_alone() -> None:
    run = run_of(7, "a", "b", "c", continued=(0, 2))
    rest = tail(run, 1)
    assert (rest.first_seq, list(rest.texts), list(rest.continued)) == (8, ["b", "c"], [1])
    assert (run.first_seq, list(run.texts), list(run.continued)) == (7, ["a", "b", "c"], [0, 2])
    notice = tail(run_of(0, "lost"), 0)
    assert (notice.first_seq, list(notice.texts)) == (0, ["lost"])


def test_batches_of_runs_stay_within_their_bounds_and_keep_every_run_whole() -> None:
    runs = [run_of(1, *"abc"), run_of(4, *"de"), run_of(6, "f" * 50), run_of(7, *"ghij")]
    parts = list(run_batches(runs, max_lines=5, max_bytes=40))
    assert [[list(r.texts) for r in part] for part in parts] == [
        [list("abc"), list("de")],
        [["f" * 50]],  # over the bytes, but a run is never cut
        [list("ghij")],
    ]
    assert [r for part in parts for r in part] == runs
    assert list(run_batches([])) == []


def test_past_a_seq_is_the_run_a_tail_of_it_or_nothing() -> None:
    run = run_of(4, "d", "e", "f")
    assert past(run, 3) is run
    rest = past(run, 5)
    assert rest is not None and (rest.first_seq, list(rest.texts)) == (6, ["f"])
    assert past(run, 6) is None
    notice = run_of(0, "lost")
    assert past(notice, 100) is notice
