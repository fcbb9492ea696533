"""The agent's LogBatch building: the same lines as making each LogLine in full, as
lines or packed as runs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from paas.agent.logline import LineRun, LogLine, line_runs
from paas.agent.servicer import bounded_parts, run_parts, to_batch, to_runs
from paas.common.logbatch import BATCH_BYTES, BATCH_LINES
from paas.common.logruns import lines_of_runs
from paas.proto import paas_pb2 as pb

lines = st.builds(
    LogLine,
    timestamp=st.sampled_from([1.5, 1.5, 2.25]),
    app=st.just("shop"),
    instance=st.sampled_from(["web.1", "web.2"]),
    stream=st.sampled_from(["stdout", "stderr", "paas"]),
    node=st.just("node-1"),
    seq=st.integers(0, 10**9),
    text=st.text(max_size=20),
    run=st.integers(0, 3),
    continued=st.booleans(),
)


@given(st.lists(lines, max_size=40))
def test_a_batch_holds_each_line_with_every_field(records: list[LogLine]) -> None:
    expected = pb.LogBatch(
        lines=[
            pb.LogLine(
                timestamp=r.timestamp,
                app=r.app,
                instance=r.instance,
                stream=r.stream,
                node=r.node,
                seq=r.seq,
                text=r.text,
                run=r.run,
                continued=r.continued,
            )
            for r in records
        ]
    )
    assert to_batch(records) == expected


# Seqs from a small range, so that stretches with seqs one after another come often.
close_lines = lines.map(lambda line: line._replace(seq=line.seq % 8))


@given(st.lists(close_lines, max_size=40))
def test_runs_hold_the_same_lines_in_the_same_order(records: list[LogLine]) -> None:
    batch = to_runs(line_runs(records))
    assert not batch.lines
    assert lines_of_runs(batch.runs) == list(to_batch(records).lines)
    for run in batch.runs:
        assert run.first_seq or len(run.texts) == 1, "a notice is a run of one"


def test_lines_read_together_are_one_run_and_a_gap_or_a_notice_cuts_it() -> None:
    def read(seq: int, text: str, stream: str = "stdout", continued: bool = False) -> LogLine:
        return LogLine(1.5, "shop", "web.1", stream, "node-1", seq, text, 2, continued)

    records = [read(4, "a"), read(5, "b", continued=True), read(6, "c"), read(8, "d")]
    records += [read(0, "3 lines lost", "paas"), read(9, "e"), read(10, "f")]
    runs = to_runs(line_runs(records)).runs
    assert [(r.first_seq, list(r.texts), list(r.continued)) for r in runs] == [
        (4, ["a", "b", "c"], [1]),
        (8, ["d"], []),
        (0, ["3 lines lost"], []),
        (9, ["e", "f"], []),
    ]
    assert (runs[0].app, runs[0].instance, runs[0].node, runs[0].run) == (
        "shop",
        "web.1",
        "node-1",
        2,
    )


@given(st.lists(st.integers(1, 9), max_size=10), st.integers(1, 12))
def test_parts_hold_every_line_once_in_order_within_their_limit(
    sizes: list[int], limit: int
) -> None:
    runs, seq = [], 1
    for count in sizes:
        runs.append(
            LineRun(1.0, "shop", "web.1", "stdout", "n", seq, [str(seq + i) for i in range(count)])
        )
        seq += count
    parts = list(run_parts(runs, limit))
    assert all(0 < sum(len(r.texts) for r in part) <= limit for part in parts)
    assert all(len(part) > 0 for part in parts)
    got = [line.seq for part in parts for run in part for line in run.lines()]
    assert got == list(range(1, seq))


def test_a_batch_over_its_bounds_is_cut_into_parts_within_them_and_loses_nothing() -> None:
    wide = LineRun(1.0, "shop", "web.1", "stdout", "n", 1, ["x" * 9000] * 300)
    many = LineRun(2.0, "shop", "web.1", "stdout", "n", 301, ["y"] * (BATCH_LINES + 5))
    parts = list(bounded_parts([wide, many]))
    assert len(parts) > 2
    for part in parts:
        assert sum(len(run.texts) for run in part) <= BATCH_LINES
        assert sum(len(text) for run in part for text in run.texts) <= BATCH_BYTES
    got = [line.seq for part in parts for run in part for line in run.lines()]
    assert got == list(range(1, 301 + BATCH_LINES + 5))
    small = [LineRun(1.0, "shop", "web.1", "stdout", "n", 1, ["a", "b"])]
    assert list(bounded_parts(small)) == [small], "within bounds: as it is"
