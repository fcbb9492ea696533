"""What `paas logs -f` takes of each batch: lines past the request's cursors, noted."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from paas.cli.client import LogKey, take_new
from paas.common.logruns import lines_of_runs, runs_of_lines
from paas.proto import paas_pb2 as pb


def one_by_one(
    batch: list[pb.LogLine], cursors: dict[LogKey, int], skip: dict[LogKey, int]
) -> list[int]:
    """The plain way, to check take_new by: each line against its instance's cursors."""
    out = []
    for line in batch:
        key = (line.node, line.instance)
        if line.seq:
            if line.seq <= skip.get(key, 0):
                continue
            cursors[key] = max(cursors.get(key, 0), line.seq)
        out.append(line.seq)
    return out


_keys = st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["web.1", "web.2"]))


@given(
    st.lists(st.lists(st.tuples(_keys, st.integers(0, 12)), max_size=12), max_size=4),
    st.dictionaries(_keys, st.integers(0, 8)),
)
def test_take_new_takes_what_the_plain_way_takes(
    batches: list[list[tuple[tuple[str, str], int]]], skip: dict[LogKey, int]
) -> None:
    cursors: dict[LogKey, int] = {}
    plain: dict[LogKey, int] = {}
    for raw in batches:
        batch = [pb.LogLine(node=n, instance=i, seq=q) for (n, i), q in raw]
        taken = lines_of_runs(take_new(runs_of_lines(batch), cursors, skip))
        assert [x.seq for x in taken] == one_by_one(batch, plain, skip)
        assert cursors == plain


def test_a_run_past_the_cursors_is_taken_whole_and_its_highest_seq_noted() -> None:
    batch = [pb.LogRun(node="a", instance="web.1", first_seq=4, texts=["d", "e", "f"])]
    cursors: dict[LogKey, int] = {("a", "web.1"): 2}
    assert take_new(batch, cursors, {("a", "web.1"): 3}) == batch
    assert cursors == {("a", "web.1"): 6}
    (rest,) = take_new(batch, cursors, {("a", "web.1"): 5})
    assert (rest.first_seq, list(rest.texts)) == (6, ["f"])
    assert take_new(batch, cursors, {("a", "web.1"): 6}) == []
