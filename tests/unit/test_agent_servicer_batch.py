"""The agent's LogBatch building: the same lines as making each LogLine in full."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from paas.agent.logline import LogLine
from paas.agent.servicer import to_batch
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
