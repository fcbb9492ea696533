"""Reading an instance forward from a cursor: spool first for what the buffer lost,
then the buffer, with an exact count of what left retention."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from paas.agent.logbuffer import LogHub
from paas.agent.logcursor import read_after
from paas.agent.spool import Spool
from paas.common.logformat import lost_count, lost_notice


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[LogHub]:
    found = LogHub("node-1", lines=10, spool=Spool(tmp_path / "logs", "node-1"))
    await found.open()
    yield found
    await found.close()


async def test_a_follower_far_behind_is_served_from_the_spool_then_the_buffer(
    hub: LogHub,
) -> None:
    buffer = hub.buffer("shop", "web.1", "id-1")
    for i in range(1, 101):
        buffer.append("stdout", f"line {i}")
    cursor, seqs = 3, []
    while True:
        chunk = await read_after(hub, buffer, "shop", "web.1", "id-1", cursor, limit=30)
        if not chunk.lines:
            break
        assert all(line.seq for line in chunk.lines), "nothing left retention: no notice"
        seqs += [line.seq for line in chunk.lines]
        cursor = chunk.cursor
    assert seqs == list(range(4, 101))
    assert cursor == 100


async def test_lines_that_left_retention_are_counted_exactly_where_the_gap_is() -> None:
    hub = LogHub("node-1", lines=10)  # no spool: only the buffer's ten lines are kept
    buffer = hub.buffer("shop", "web.1", "id-1")
    for i in range(1, 26):
        buffer.append("stdout", f"line {i}")
    chunk = await read_after(hub, buffer, "shop", "web.1", "id-1", 3, limit=100)
    assert [line.text for line in chunk.lines] == [
        "12 lines of web.1 were no longer kept when this reader got to them"
    ]
    assert chunk.lines[0].seq == 0 and chunk.cursor == 15
    rest = await read_after(hub, buffer, "shop", "web.1", "id-1", chunk.cursor, limit=100)
    assert [line.seq for line in rest.lines] == list(range(16, 26))


async def test_an_instance_only_the_spool_holds_is_read_from_it(hub: LogHub) -> None:
    buffer = hub.buffer("shop", "web.1", "id-1")
    for i in range(1, 21):
        buffer.append("stdout", f"line {i}")
    assert hub.spool is not None
    await hub.spool.flush()
    chunk = await read_after(hub, None, "shop", "web.1", "id-1", 15, limit=100)
    assert [line.seq for line in chunk.lines] == [16, 17, 18, 19, 20]


def test_every_notice_of_loss_an_agent_writes_gives_its_count_back() -> None:
    assert lost_count(lost_notice(12, "web.1")) == 12
    assert lost_count("7 earlier lines of web.1 are no longer kept") == 7
    assert lost_count("3 lines not written to disk (the disk writer fell behind)") == 3
    assert lost_count("State changed from starting to up") == 0
    assert lost_count("line 12 lines of") == 0
