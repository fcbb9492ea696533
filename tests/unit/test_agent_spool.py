"""The on-disk log spool: lines written off the loop, rotated, read back, recovered after a
restart; and history that goes past the in-memory buffer into it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paas.agent import logcursor
from paas.agent.logbuffer import LogHub, Split
from paas.agent.logcursor import read_after
from paas.agent.logline import LogLine, line_runs
from paas.agent.servicer import process_matcher, read_history
from paas.agent.spool import Found, Query, Spool, Verdict
from paas.agent.spoolfiles import FORMAT, Exclusion, Span, decode, encode, encode_all, encode_run
from paas.common.logformat import lost_count


def line(
    seq: int, text: str = "", instance: str = "web.1", run: int = 1, app_id: str = ""
) -> LogLine:
    return LogLine(
        time.time(),
        "shop",
        instance,
        "stdout",
        "node-1",
        seq,
        text or f"line {seq}",
        run,
        app_id=app_id,
    )


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    opened = Spool(tmp_path / "logs", "node-1")
    await opened.open()
    yield opened
    await opened.close()


def test_a_record_keeps_every_field_and_any_text() -> None:
    for text in ["plain", "tabs\tin\tit", "new\nline", "bad \ufffd bytes", "", "back\\slash\\n"]:
        original = LogLine(1.5, "shop", "web.3", "stderr", "n", 7, text, 2, True, "3f2a-1")
        assert decode(encode(original).encode()[:-1], "n") == original
    assert decode(b"torn\trecord", "n") is None


def test_a_record_keeps_the_very_timestamp_so_it_sorts_as_the_line_in_memory() -> None:
    original = LogLine(1700000000.1234567, "shop", "web.3", "stdout", "n", 7, "x", 2)
    assert decode(encode(original).encode()[:-1], "n") == original


async def test_lines_written_on_the_loop_are_read_back_newest_last(spool: Spool) -> None:
    for seq in range(1, 101):
        spool.write(line(seq))
    spool.write(line(1, instance="worker.1"))
    found = await spool.read([Query("shop", "web.1", below=91, count=5)])
    assert [x.seq for x in found[("shop", "web.1")].lines] == [86, 87, 88, 89, 90]
    assert found[("shop", "web.1")].complete
    everything = await spool.read([Query("shop", "web.1", count=1000)])
    assert len(everything[("shop", "web.1")].lines) == 100
    assert not everything[("shop", "web.1")].complete  # it ran out before 1000
    assert spool.last("shop", "web.1") == (100, 1)
    assert set(spool.instances("shop")) == {"web.1", "worker.1"}


async def test_a_verdict_skips_and_stops(spool: Spool) -> None:
    for seq in range(1, 31):
        spool.write(line(seq, run=1 + seq // 10))  # runs 1, 2, 3 (seq 30 is run 4)

    def run_2(found: LogLine) -> Verdict:
        if found.run > 2:
            return Verdict.SKIP
        return Verdict.KEEP if found.run == 2 else Verdict.STOP

    found = (await spool.read([Query("shop", "web.1", count=100, verdict=run_2)]))[
        ("shop", "web.1")
    ]
    assert [x.seq for x in found.lines] == list(range(10, 20))
    assert found.complete


async def test_files_rotate_and_the_spool_stays_within_its_size(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "logs", "node-1", file_bytes=10_000, files=3)
    await spool.open()
    try:
        for seq in range(1, 2001):
            spool.write(line(seq, "x" * 50))
            if seq % 100 == 0:
                await spool.flush()
        await spool.flush()
        files = sorted(path.name for path in (tmp_path / "logs").glob("*.log"))
        assert len(files) == 3
        assert spool.size <= 3 * (10_000 + 100 * 100)
        found = (await spool.read([Query("shop", "web.1", count=5000)]))[("shop", "web.1")]
        assert not found.complete  # the oldest lines are gone
        seqs = [x.seq for x in found.lines]
        assert seqs == list(range(seqs[0], 2001)) and seqs[0] > 1
    finally:
        await spool.close()


async def test_a_new_spool_finds_where_each_instance_stopped_and_cuts_a_torn_end(
    tmp_path: Path,
) -> None:
    first = Spool(tmp_path / "logs", "node-1", file_bytes=5_000, files=4)
    await first.open()
    for seq in range(1, 201):
        first.write(line(seq, run=3))
    await first.close()
    current = max((tmp_path / "logs").glob("*.log"))
    with current.open("ab") as file:
        file.write(b"\tshop\tweb.1\t12.0\tstdout\t201\t3\t0\thalf a rec")  # the agent died here

    second = Spool(tmp_path / "logs", "node-1", file_bytes=5_000, files=4)
    await second.open()
    try:
        assert second.last("shop", "web.1") == (200, 3)
        second.write(line(201, "after the restart", run=4))
        found = (await second.read([Query("shop", "web.1", count=3)]))[("shop", "web.1")]
        assert [x.text for x in found.lines] == ["line 199", "line 200", "after the restart"]
    finally:
        await second.close()


async def test_a_full_backlog_drops_lines_counts_them_and_the_spool_says_where(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "logs", "node-1", backlog_bytes=2_000)
    await spool.open()
    try:
        for seq in range(1, 101):  # in one loop turn: the writer gets nothing until we yield
            spool.write(line(seq))
        assert spool.dropped_total > 0
        kept = 100 - spool.dropped_total
        spool.write(line(101))  # dropped as well: the backlog is still full
        await spool.flush()
        spool.write(line(102))
        found = (await spool.read([Query("shop", "web.1", count=1000)]))[("shop", "web.1")]
        texts = [x.text for x in found.lines]
        assert texts[:kept] == [f"line {seq}" for seq in range(1, kept + 1)]
        assert texts[kept:] == [
            f"{101 - kept} lines not written to disk (the disk writer fell behind)",
            "line 102",
        ]
        assert found.lines[kept].seq == 0
    finally:
        await spool.close()


async def test_history_goes_past_the_buffer_into_the_spool(spool: Spool) -> None:
    hub = LogHub("node-1", lines=10, spool=spool)
    buffer = hub.buffer("shop", "web.1")
    buffer.begin_run()
    for i in range(1, 51):
        buffer.append("stdout", f"line {i}")
    lines, last = await read_history(hub, "shop", process_matcher(""), 30)
    assert [x.text for x in lines] == [f"line {i}" for i in range(21, 51)]
    assert last == {"web.1": 50}
    everything, _ = await read_history(hub, "shop", process_matcher(""), 1000)
    assert [x.seq for x in everything] == list(range(1, 51))  # no notice: nothing is lost


async def test_lines_written_while_history_is_read_come_neither_twice_nor_missing(
    spool: Spool,
) -> None:
    """The next run writes while the spool is flushed for what the buffer no longer
    holds: the spool's part ends where the buffer's began when it was read."""
    hub = LogHub("node-1", lines=10, spool=spool)
    buffer = hub.buffer("shop", "web.1")
    buffer.begin_run()
    for i in range(20):
        buffer.append("stdout", f"run 1 line {i}")
    buffer.end_run()
    buffer.begin_run()
    buffer.append("stdout", "run 2 line 0")  # the buffer holds the end of run 1 and run 2

    async def next_run() -> None:
        for i in itertools.count(1):
            buffer.append("stdout", f"run 2 line {i}")
            await asyncio.sleep(0)  # a line each turn of the loop, as a pump hands them on

    writing = asyncio.create_task(next_run())
    try:
        previous, _ = await read_history(hub, "shop", process_matcher("web.1"), 100, previous=True)
        everything, last = await read_history(hub, "shop", process_matcher("web.1"), 1000)
    finally:
        writing.cancel()
    assert [x.text for x in previous] == [f"run 1 line {i}" for i in range(20)]
    seqs = [x.seq for x in everything]  # the last 1000 (or all), each once, none left out
    assert seqs == list(range(max(1, last["web.1"] - 999), last["web.1"] + 1))


async def test_previous_reads_the_last_finished_run_from_disk_after_a_restart(
    tmp_path: Path,
) -> None:
    first = Spool(tmp_path / "logs", "node-1")
    hub = LogHub("node-1", lines=5, spool=first)
    await hub.open()
    buffer = hub.buffer("shop", "web.3")
    for run in (1, 2):
        buffer.begin_run()
        for i in range(20):
            buffer.append("stdout", f"run {run} line {i}")
        buffer.end_run()
    await hub.close()

    second = Spool(tmp_path / "logs", "node-1")
    hub = LogHub("node-1", lines=5, spool=second)  # the agent restarted: memory is empty
    await hub.open()
    try:
        lines, _ = await read_history(hub, "shop", process_matcher("web.3"), 100, previous=True)
        assert [x.text for x in lines] == [f"run 2 line {i}" for i in range(20)]
        again = hub.buffer("shop", "web.3")
        assert (again.last_seq, again.begin_run()) == (40, 3)  # seq and run go on
    finally:
        await hub.close()


async def test_history_says_when_older_lines_are_gone(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "logs", "node-1", file_bytes=2_000, files=2)
    hub = LogHub("node-1", lines=10, spool=spool)
    await hub.open()
    try:
        buffer = hub.buffer("shop", "web.1")
        for i in range(1, 301):
            buffer.append("stdout", f"line {i:03}")
            if i % 20 == 0:
                await spool.flush()
        lines, _ = await read_history(hub, "shop", process_matcher(""), 1000)
        notice, first, *rest = lines
        assert notice.seq == 0 and notice.instance == "web.1"
        assert notice.text == f"{first.seq - 1} earlier lines of web.1 are no longer kept"
        assert [x.seq for x in [first, *rest]] == list(range(first.seq, 301))
    finally:
        await hub.close()


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 5)), min_size=1, max_size=30))
def test_a_span_adds_a_run_of_lines_as_it_adds_each(seq_runs: list[tuple[int, int]]) -> None:
    lines = [LogLine(1.0, "shop", "web.1", "stdout", "n", seq, "x", run) for seq, run in seq_runs]
    one_by_one, at_once = Span(), Span()
    for line in lines:
        one_by_one.add(line.seq, line.run)
    at_once.add_all(lines)
    assert at_once == one_by_one


async def test_a_disk_that_refuses_writes_is_said_in_the_history_and_writing_resumes(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk (ENOSPC from write(2), injected) loses lines with a notice, never
    silently, and the spool writes again once the disk takes writes again."""
    import errno
    import os

    real_write = os.write
    full = True

    def write(fd: int, data: bytes | memoryview) -> int:
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr("paas.agent.spool.os.write", write)
    hub = LogHub("node-1", lines=5, spool=spool)
    buffer = hub.buffer("shop", "web.1")
    for seq in range(1, 21):
        buffer.append("stdout", f"line {seq}")
    await spool.flush()
    assert spool.unwritten == 20
    assert "No space left on device" in spool.failure
    lines, _ = await read_history(hub, "shop", process_matcher(""), 20)
    texts = [x.text for x in lines]
    assert "cannot write (" in texts[0] and "20 lines are not on disk" in texts[0]
    assert texts[-5:] == [f"line {seq}" for seq in range(16, 21)]  # the buffer still has these

    full = False
    buffer.append("stdout", "line 21")
    await spool.flush()
    assert spool.failure == ""
    found = await spool.read([Query("shop", "web.1", count=10)])
    assert [x.text for x in found[("shop", "web.1")].lines] == ["line 21"]


# ------------------------------------------------------------------ app ids


def seqs_of(found: dict[tuple[str, str], Found], instance: str = "web.1") -> list[int]:
    return [x.seq for x in found[("shop", instance)].lines]


def on_disk(directory: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(directory.glob("*.log")))


async def test_a_query_with_an_app_id_reads_only_that_app_and_without_one_every_app_of_the_name(
    spool: Spool,
) -> None:
    for seq in range(1, 6):
        spool.write(line(seq, app_id="old-shop"))  # an app destroyed, then made again
    for seq in range(6, 11):
        spool.write(line(seq, app_id="new-shop"))
    await spool.flush()
    old = await spool.read([Query("shop", "web.1", app_id="old-shop")])
    new = await spool.read([Query("shop", "web.1", app_id="new-shop")])
    either = await spool.read([Query("shop", "web.1")])
    assert seqs_of(old) == [1, 2, 3, 4, 5]
    assert seqs_of(new) == [6, 7, 8, 9, 10]
    assert seqs_of(either) == list(range(1, 11))
    assert (await spool.read([Query("shop", "web.1", app_id="other")]))[
        ("shop", "web.1")
    ].lines == []
    assert spool.instances("shop", "new-shop")["web.1"].first_seq == 6
    assert spool.instances("shop")["web.1"].first_seq == 1
    assert spool.instances("shop", "other") == {}
    assert spool.app_ids() == {"old-shop", "new-shop"}


async def test_forget_deletes_an_app_s_lines_from_every_file_and_keeps_the_rest(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "logs"
    spool = Spool(directory, "node-1", file_bytes=4_000, files=10)
    await spool.open()
    try:
        for seq in range(1, 101):  # a file of only "gone" lines, then files of both
            spool.write(line(seq, "gone " + "x" * 40, instance="web.2", app_id="gone"))
            if seq % 10 == 0:
                await spool.flush()
        for seq in range(1, 201):
            spool.write(line(seq, app_id="kept"))
            spool.write(line(100 + seq, "gone " + "x" * 40, instance="web.2", app_id="gone"))
            if seq % 10 == 0:
                await spool.flush()
        await spool.flush()
        files_before = len(list(directory.glob("*.log")))
        assert files_before > 3 and b"gone" in on_disk(directory)

        await spool.forget({"gone"})

        assert b"gone" not in on_disk(directory)  # deleted, not only hidden
        assert len(list(directory.glob("*.log"))) < files_before  # its own file went whole
        assert spool.app_ids() == {"kept"}
        assert spool.instances("shop") == {"web.1": spool.instances("shop")["web.1"]}
        found = await spool.read([Query("shop", "web.1", count=1000), Query("shop", "web.2")])
        assert seqs_of(found) == list(range(1, 201))
        assert found[("shop", "web.2")].lines == []
        spool.write(line(201, "after", app_id="kept"))  # writing goes on at the end
        found = await spool.read([Query("shop", "web.1", count=2)])
        assert [x.text for x in found[("shop", "web.1")].lines] == ["line 200", "after"]
    finally:
        await spool.close()

    again = Spool(directory, "node-1", file_bytes=4_000, files=10)  # the index on disk agrees
    await again.open()
    try:
        assert again.app_ids() == {"kept"}
        found = await again.read([Query("shop", "web.1", count=1000)])
        assert seqs_of(found) == [*range(1, 201), 201]
    finally:
        await again.close()


async def test_lines_of_an_app_being_forgotten_are_not_read_from_the_moment_it_is_asked(
    spool: Spool,
) -> None:
    for seq in range(1, 11):
        spool.write(line(seq, app_id="gone"))
    spool.write(line(1, instance="web.2", app_id="kept"))
    await spool.flush()
    forgetting = asyncio.ensure_future(spool.forget({"gone"}))
    await asyncio.sleep(0)  # one turn: forget has begun, the writer thread has not finished
    assert spool.instances("shop") == {"web.2": spool.instances("shop")["web.2"]}
    assert spool.app_ids() == {"kept"}
    await forgetting
    assert spool.app_ids() == {"kept"}


async def test_lines_handed_over_before_forget_are_deleted_with_the_rest(spool: Spool) -> None:
    for seq in range(1, 11):
        spool.write(line(seq, app_id="gone"))  # not yet handed to the writer thread
    await spool.forget({"gone"})
    assert spool.app_ids() == set()
    assert b"gone" not in on_disk(spool.directory)


async def test_clear_deletes_every_line_and_the_spool_writes_on(spool: Spool) -> None:
    for seq in range(1, 11):
        spool.write(line(seq, app_id="a"))
    await spool.flush()
    spool.write(line(11, app_id="a"))  # handed over after the flush, before the clear
    await spool.clear()
    assert spool.app_ids() == set() and spool.instances("shop") == {}
    assert on_disk(spool.directory) == b""
    spool.write(line(1, "fresh", app_id="b"))
    found = await spool.read([Query("shop", "web.1")])
    assert [x.text for x in found[("shop", "web.1")].lines] == ["fresh"]


async def test_a_spool_of_another_format_is_deleted_on_open(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    # What an agent before app ids wrote: app, instance, time, stream, seq, run, flags, text.
    (directory / "000001.log").write_bytes(b"shop\tweb.1\t12.0\tstdout\t1\t1\t0\told line\n")
    spool = Spool(directory, "node-1")
    await spool.open()
    try:
        assert spool.instances("shop") == {} and spool.app_ids() == set()
        assert (directory / "FORMAT").read_text().strip() == FORMAT
        assert b"old line" not in on_disk(directory)
    finally:
        await spool.close()


async def test_a_flush_whose_caller_gave_up_does_not_stop_the_writer(spool: Spool) -> None:
    """A reader cancelled while it waits for the spool (a client that hung up) must not
    kill the writer thread: every later flush would wait forever."""
    spool.write(line(1))
    with spool._lock:  # the writer thread blocks on it while it writes
        waiting = asyncio.ensure_future(spool.flush())
        await asyncio.sleep(0)  # the flush is queued
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
    spool.write(line(2))
    await asyncio.wait_for(spool.flush(), 10)
    assert seqs_of(await spool.read([Query("shop", "web.1")])) == [1, 2]


def test_a_rewrite_waits_for_the_reads_in_progress_and_reads_wait_for_it() -> None:
    exclusion = Exclusion()
    events: list[str] = []
    reading = threading.Event()
    done_reading = threading.Event()

    def reader() -> None:
        with exclusion.reading():
            reading.set()
            done_reading.wait(10)
            events.append("read")

    def rewriter() -> None:
        with exclusion.rewriting():
            events.append("rewrite")

    first = threading.Thread(target=reader)
    first.start()
    assert reading.wait(10)
    second = threading.Thread(target=rewriter)
    second.start()
    deadline = time.monotonic() + 10
    while not exclusion._waiting and time.monotonic() < deadline:  # the rewrite is waiting
        time.sleep(0.001)
    assert exclusion._waiting == 1 and events == []
    done_reading.set()
    first.join(10)
    second.join(10)
    assert events == ["read", "rewrite"]


async def test_history_of_an_app_id_leaves_out_an_earlier_app_of_the_same_name(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "logs", "node-1")
    hub = LogHub("node-1", lines=5, spool=spool)
    await hub.open()
    old = hub.buffer("shop", "web.1", "old-id")
    for i in range(1, 21):
        old.append("stdout", f"old {i}")
    new = hub.buffer("shop", "web.1", "new-id")
    for i in range(1, 21):
        new.append("stdout", f"new {i}")
    mine, _ = await read_history(hub, "shop", process_matcher(""), 1000, app_id="new-id")
    assert [x.text for x in mine] == [f"new {i}" for i in range(1, 21)]  # from disk, then memory
    theirs, _ = await read_history(hub, "shop", process_matcher(""), 1000, app_id="old-id")
    assert [x.text for x in theirs] == [f"old {i}" for i in range(1, 21)]
    # Without an app id: the app that has the name now, from memory and from disk.
    by_name, _ = await read_history(hub, "shop", process_matcher(""), 1000)
    assert [x.text for x in by_name] == [f"new {i}" for i in range(1, 21)]
    hub.retire("shop", "web.1")
    await hub.close()
    restarted = LogHub("node-1", lines=5, spool=Spool(spool.directory, "node-1"))
    await restarted.open()  # memory is empty: the newest lines on disk say which app
    try:
        by_name, _ = await read_history(restarted, "shop", process_matcher(""), 1000)
        assert [x.text for x in by_name] == [f"new {i}" for i in range(1, 21)]
    finally:
        await restarted.close()


_texts = st.text(alphabet=st.sampled_from("ab\n\t{}é\u2028"), max_size=6)
_runs = st.lists(
    st.tuples(
        st.sampled_from(["web.1", "web.2"]),
        st.sampled_from(["stdout", "stderr", "paas"]),
        st.sampled_from([1.5, 1796161738.810406]),
        st.integers(0, 3),
        st.booleans(),
        st.lists(_texts, min_size=1, max_size=4),
    ),
    max_size=6,
)


@given(_runs)
def test_records_made_a_run_at_a_time_are_the_records_made_one_by_one(
    runs: list[tuple[str, str, float, int, bool, list[str]]],
) -> None:
    seq = itertools.count(1)
    lines = [
        LogLine(stamp, "shop", instance, stream, "node-1", next(seq), text, run, continued, "id1")
        for instance, stream, stamp, run, continued, texts in runs
        for text in texts
    ]
    made = encode_all(lines)
    assert made == "".join(map(encode, lines))
    records = made.encode().split(b"\n")[:-1] if made else []
    assert [decode(record, "node-1") for record in records] == lines


@given(_runs)
def test_records_of_a_run_made_at_once_are_the_records_made_one_by_one(
    runs: list[tuple[str, str, float, int, bool, list[str]]],
) -> None:
    seq = itertools.count(1)
    for instance, stream, stamp, run, pieces, texts in runs:
        lines = [
            LogLine(stamp, "shop", instance, stream, "node-1", next(seq), text, run,
                    pieces and i % 2 == 0, "id1")
            for i, text in enumerate(texts)
        ]  # fmt: skip
        (packed,) = line_runs(lines)
        assert encode_run(packed) == "".join(map(encode, lines))
        span = Span()
        span.add_run(packed)
        everything = Span()
        everything.add_all(lines)
        assert span == everything


async def write_interleaved(spool: Spool, total: int) -> None:
    """Lines 1..total of web.1 and of web.2 (app id "a1"), in runs of 1 to 37 lines of
    one instance at a time, handed over a few runs at a time (so batches mix them)."""
    seqs = {"web.1": 0, "web.2": 0}
    sizes = itertools.cycle([1, 37, 5, 12, 30, 2])
    turn = itertools.cycle(["web.1", "web.2", "web.1"])
    runs = 0
    while min(seqs.values()) < total:
        instance = next(turn)
        for _ in range(next(sizes)):
            if seqs[instance] < total:
                seqs[instance] += 1
                text = f"x{seqs[instance]}" if instance == "web.1" else f"é€{seqs[instance]}"
                spool.write(line(seqs[instance], text, instance, app_id="a1"))
        runs += 1
        if runs % 4 == 0:
            await spool.flush()
    await spool.flush()


async def test_a_forward_read_starts_at_the_cursor_and_keeps_to_its_instance(
    tmp_path: Path,
) -> None:
    # Small files: the lines of each instance span several, and a read starts in the one
    # holding the line after the cursor.
    spool = Spool(tmp_path / "logs", "node-1", file_bytes=40_000, files=20)
    await spool.open()
    try:
        await write_interleaved(spool, 3000)
        assert len(list((tmp_path / "logs").glob("*.log"))) > 3
        for after in [0, 1, 1023, 1024, 1500, 2047, 2998]:
            below = min(3001, after + 700)
            got = await spool.read_forward("a1", "shop", "web.2", after, below)
            assert got is not None, after
            seqs = [x.seq for x in got]
            # Oldest first from after + 1, without a gap, to `below` or the file's end.
            assert seqs == list(range(after + 1, after + 1 + len(seqs))), after
            assert seqs[-1] < below and len(seqs) > 0
            assert all(x.instance == "web.2" and x.text == f"é€{x.seq}" for x in got)
        # The same lines as the backward read, when both are asked for what one file has.
        back = await spool.read([Query("shop", "web.1", below=2501, count=20, app_id="a1")])
        forward = await spool.read_forward("a1", "shop", "web.1", 2480, 2501)
        assert forward is not None
        assert forward[-20:] == back[("shop", "web.1")].lines[-len(forward[-20:]) :]
        # Nothing to be had forward: another app id, a hidden one, an empty range.
        assert await spool.read_forward("a2", "shop", "web.2", 10, 100) is None
        assert await spool.read_forward("", "shop", "web.2", 10, 100) is None
        assert await spool.read_forward("a1", "shop", "web.2", 10, 11) is None
    finally:
        await spool.close()


async def test_no_forward_read_where_the_writer_keeps_no_marks(tmp_path: Path) -> None:
    first = Spool(tmp_path / "logs", "node-1", file_bytes=1 << 20, files=4)
    await first.open()
    await write_interleaved(first, 500)
    assert await first.read_forward("a1", "shop", "web.1", 100, 200) is not None
    # A rewrite (another app forgotten) leaves the rewritten file without marks.
    first.write(line(1, "doomed", "web.9", app_id="gone"))
    await first.forget({"gone"})
    assert await first.read_forward("a1", "shop", "web.1", 100, 200) is None
    await first.close()
    # A spool opened on files an earlier agent wrote has no marks for them: the backward
    # read serves (read_after falls back to it), and new files get marks again.
    second = Spool(tmp_path / "logs", "node-1", file_bytes=1 << 20, files=4)
    await second.open()
    try:
        assert await second.read_forward("a1", "shop", "web.1", 100, 200) is None
        found = await second.read([Query("shop", "web.1", below=201, count=100, app_id="a1")])
        assert [x.seq for x in found[("shop", "web.1")].lines] == list(range(101, 201))
    finally:
        await second.close()


async def test_a_reader_far_behind_is_caught_up_forward_with_the_loss_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Through read_after, as a follower that fell behind reads: the spool's oldest file
    # rotated away under it, then chunk after chunk forward to the ring buffer.
    hub = LogHub("node-1", 100, spool=Spool(tmp_path / "logs", "node-1", 20_000, files=3))
    assert hub.spool is not None
    await hub.spool.open()
    # Chunks of 200 lines: many reads, most of them forward from a mark.
    monkeypatch.setattr(logcursor, "SPOOL_CHUNK", 200)
    spool, forward = hub.spool, []
    read_forward = spool.read_forward

    async def counted(*args: Any) -> list[LogLine] | None:
        found = await read_forward(*args)
        forward.append(found is not None)
        return found

    monkeypatch.setattr(spool, "read_forward", counted)
    try:
        buffer = hub.buffer("shop", "web.1", app_id="a1")
        for start in range(0, 3000, 50):
            buffer.extend("stdout", Split([f"x{seq}" for seq in range(start + 1, start + 51)]))
            await hub.spool.flush()
        cursor, got, lost = 0, [], 0
        for _ in range(1000):
            chunk = await read_after(hub, buffer, "shop", "web.1", "a1", cursor, 500)
            if not chunk.lines:
                break
            got += [x.seq for x in chunk.lines if x.seq]
            lost += sum(lost_count(x.text) for x in chunk.lines if not x.seq)
            cursor = chunk.cursor
        assert got == list(range(got[0], 3001)), "in order, no gap, to the newest"
        assert lost == got[0] - 1 > 0, "what rotated away is counted exactly"
        assert sum(forward) >= 3, f"forward reads: {forward}"
    finally:
        await hub.spool.close()


@pytest.mark.parametrize("reopened", [False, True])
async def test_a_gap_at_a_chunk_boundary_is_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reopened: bool
) -> None:
    # Lines 101-105 were never written (the spool's notice says so); a chunk ends at
    # line 100, the next starts after the gap: the loss is told once, read forward
    # from the writer's marks or (a spool reopened: no marks) backwards.
    writer = Spool(tmp_path / "logs", "node-1")
    await writer.open()
    for seq in range(1, 101):
        writer.write(line(seq, app_id="a1"))
    writer.write(line(0, "5 lines not written to disk", app_id="a1"))
    for seq in range(106, 201):
        writer.write(line(seq, app_id="a1"))
    await writer.flush()
    if reopened:
        await writer.close()
        writer = Spool(tmp_path / "logs", "node-1")
        await writer.open()
    hub = LogHub("node-1", 100, spool=writer)
    monkeypatch.setattr(logcursor, "SPOOL_CHUNK", 55)
    try:
        cursor, got, lost = 50, [], 0
        while True:
            chunk = await read_after(hub, None, "shop", "web.1", "a1", cursor, 1000)
            if not chunk.lines:
                break
            got += [x.seq for x in chunk.lines if x.seq]
            lost += sum(lost_count(x.text) for x in chunk.lines if not x.seq)
            cursor = chunk.cursor
        assert got == [*range(51, 101), *range(106, 201)]
        assert lost == 5
    finally:
        await writer.close()
