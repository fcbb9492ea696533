"""Log buffers: lines cut from raw pipe bytes, bounded ring buffers, followers that never block."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from paas.agent.logbuffer import (
    MAX_LINE,
    LineSplitter,
    LogBuffer,
    LogHub,
    Piece,
    Split,
    Subscription,
    pump,
)
from paas.agent.logline import LineRun, LogLine


def texts(pieces: list[Piece]) -> list[str]:
    return [piece.text for piece in pieces]


def lines_of(runs: list[LineRun]) -> list[LogLine]:
    return [line for run in runs for line in run.lines()]


def test_lines_are_cut_at_newlines_across_chunks() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"hel") == []
    assert texts(splitter.feed(b"lo\nwor")) == ["hello"]
    assert texts(splitter.feed(b"ld\r\n\nlast")) == ["world", ""]
    assert splitter.flush() == [Piece("last", False)]
    assert splitter.flush() == []


def test_bad_utf8_is_replaced_and_a_split_character_survives() -> None:
    splitter = LineSplitter()
    snowman = "☃".encode()
    assert texts(splitter.feed(b"a\xffb\n" + snowman[:1])) == ["a\ufffdb"]
    assert texts(splitter.feed(snowman[1:] + b"\n")) == ["☃"]


def test_a_long_line_is_split_into_continued_pieces_and_the_partial_stays_bounded() -> None:
    splitter = LineSplitter()
    out: list[Piece] = []
    for _ in range(30):
        out += splitter.feed(b"x" * 1000)  # 30 000 characters and no newline
        assert len(splitter._partial.encode()) <= MAX_LINE
    out += splitter.feed(b"\n")
    assert [(len(p.text), p.continued) for p in out] == [
        (MAX_LINE, True),
        (MAX_LINE, True),
        (30000 - 2 * MAX_LINE, False),
    ]
    whole = LineSplitter().feed(b"y" * (MAX_LINE * 2 + 5) + b"\n")
    assert [(len(p.text), p.continued) for p in whole] == [
        (MAX_LINE, True),
        (MAX_LINE, True),
        (5, False),
    ]
    exact = LineSplitter().feed(b"z" * MAX_LINE + b"\n")
    assert [(len(p.text), p.continued) for p in exact] == [(MAX_LINE, False)]


def test_a_line_is_cut_at_heroku_s_10000_bytes_of_utf8_never_inside_a_character() -> None:
    assert MAX_LINE == 10_000

    def cut(text: str) -> list[tuple[int, bool]]:
        pieces = LineSplitter().feed(text.encode() + b"\n")
        assert "".join(texts(pieces)) == text
        return [(len(p.text.encode()), p.continued) for p in pieces]

    assert cut("x" * 10_000) == [(10_000, False)]
    assert cut("x" * 10_001) == [(10_000, True), (1, False)]
    assert cut("é" * 6000) == [(10_000, True), (2_000, False)]  # 2 bytes each
    # 3-byte snowmen: 3333 of them are 9999 bytes, the 3334th would straddle the limit.
    assert cut("☃" * 4000) == [(9_999, True), (2_001, False)]
    assert cut("a" + "☃" * 3333) == [(10_000, False)]
    assert cut("ab" + "☃" * 3333) == [(9_998, True), (3, False)]
    assert cut("🎉" * 2501) == [(10_000, True), (4, False)]  # 4 bytes each


def test_a_long_line_without_a_newline_is_cut_by_bytes_as_it_comes() -> None:
    splitter = LineSplitter()
    out: list[Piece] = []
    for _ in range(20):
        out += splitter.feed("☃".encode() * 500)  # 30 000 bytes in all, no newline
        assert len(splitter._partial.encode()) <= MAX_LINE
    out += splitter.feed(b"\n")
    assert "".join(texts(out)) == "☃" * 10_000
    assert [(len(p.text.encode()), p.continued) for p in out] == [
        (9_999, True),
        (9_999, True),
        (9_999, True),
        (3, False),
    ]


@given(
    st.lists(st.text(alphabet="abé☃🎉\n", max_size=60), max_size=8),
    st.integers(min_value=4, max_value=24),
)
def test_pieces_are_never_over_the_limit_and_join_back_into_each_line(
    chunks: list[str], limit: int
) -> None:
    splitter = LineSplitter(max_line=limit)
    pieces: list[Piece] = []
    for chunk in chunks:
        pieces += splitter.feed(chunk.encode())
        assert len(splitter._partial.encode()) <= limit
    pieces += splitter.flush()
    assert all(len(p.text.encode()) <= limit for p in pieces)
    lines: list[str] = []
    joined = ""
    for piece in pieces:
        joined += piece.text
        if not piece.continued:
            lines.append(joined)
            joined = ""
    text = "".join(chunks)
    expected = text.split("\n")
    if expected and expected[-1] == "":
        expected.pop()  # the text ended with a newline: no last partial line
    assert lines == expected


def test_a_buffer_keeps_its_last_lines_with_increasing_seq_and_counts_the_rest() -> None:
    buffer = LogBuffer("shop", "web.1", "node-1", limit=3)
    for i in range(5):
        buffer.append("stdout", f"line {i}")
    assert len(buffer) == 3
    assert buffer.dropped == 2
    assert [(line.seq, line.text) for line in buffer.tail(3)] == [
        (3, "line 2"),
        (4, "line 3"),
        (5, "line 4"),
    ]
    assert [line.text for line in buffer.tail(1)] == ["line 4"]
    notice, *rest = buffer.tail(10)
    assert notice.stream == "paas" and notice.seq == 0
    assert "2 earlier lines dropped" in notice.text
    assert len(rest) == 3


def test_lines_carry_their_run_and_the_last_output_of_a_run_is_at_hand() -> None:
    buffer = LogBuffer("shop", "web.1", "node-1", limit=100)
    buffer.append("paas", "State changed from pending to starting")
    assert buffer.begin_run() == 1
    for i in range(15):
        buffer.append("stdout" if i % 2 else "stderr", f"first {i}")
    buffer.end_run()
    buffer.append("paas", "Process exited with status 1")
    buffer.begin_run()
    buffer.append("stdout", "second 0")
    assert [line.run for line in buffer.lines()][:2] == [0, 1]
    assert buffer.lines()[-1].run == 2
    assert buffer.finished_run == 1
    assert buffer.last_output(1, 3) == ["first 12", "first 13", "first 14"]
    assert buffer.last_output(2, 10) == ["second 0"]
    assert buffer.last_output(3, 10) == []


def test_select_filters_and_reports_loss_only_when_it_may_have_mattered() -> None:
    buffer = LogBuffer("shop", "web.1", "node-1", limit=4)
    for i in range(6):
        buffer.append("stdout", f"line {i}")
    odd = buffer.select(10, lambda line: line.seq % 2 == 1)  # seq 3 is the oldest kept
    assert [line.text for line in odd][1:] == ["line 2", "line 4"]
    assert odd[0].seq == 0 and "2 earlier lines dropped" in odd[0].text
    even = buffer.select(10, lambda line: line.seq % 2 == 0)
    assert [line.text for line in even] == ["line 3", "line 5"]  # seq 3 did not match: no notice
    late = buffer.select(10, lambda line: line.seq > 4)
    assert [line.text for line in late] == ["line 4", "line 5"]  # nothing lost that it wanted


def test_the_hub_keeps_removed_instances_readable_and_bounded() -> None:
    hub = LogHub("node-1", lines=100, retired_buffers=2, retired_lines=2)
    for name in ("web.1", "web.2", "web.3"):
        buffer = hub.buffer("shop", name)
        for i in range(5):
            buffer.append("stdout", f"{name} {i}")
        hub.retire("shop", name)
    names = sorted(b.instance for b in hub.buffers("shop"))
    assert names == ["web.2", "web.3"]  # the oldest removed one is forgotten
    web3 = next(b for b in hub.buffers("shop") if b.instance == "web.3")
    assert [line.text for line in web3.tail(2)] == ["web.3 3", "web.3 4"]
    assert hub.buffers("other") == []

    back = hub.buffer("shop", "web.3")  # the instance returns: same buffer, seq goes on
    assert back is web3
    assert back.append("stdout", "again").seq == 6


async def test_a_follower_gets_live_lines_of_what_it_wants() -> None:
    hub = LogHub("node-1", lines=100)
    follower = hub.subscribe(lambda line: line.instance.startswith("web."), app="shop")
    hub.buffer("shop", "worker.1").append("stdout", "not for it")
    hub.buffer("shop", "web.1").append("stdout", "for it")
    (line,) = lines_of(await asyncio.wait_for(follower.get_many(1), 5))
    assert (line.instance, line.text, line.node, line.seq) == ("web.1", "for it", "node-1", 1)
    hub.unsubscribe(follower)
    hub.buffer("shop", "web.1").append("stdout", "after")
    assert len(follower) == 0


async def test_a_slow_follower_never_blocks_the_producer_and_pauses_instead_of_dropping() -> None:
    hub = LogHub("node-1", lines=10_000)
    slow = hub.subscribe(lambda line: True, app="shop", maxsize=4)
    buffer = hub.buffer("shop", "web.1")
    for i in range(100):
        buffer.append("stdout", f"line {i}")  # never waits for the follower
    assert len(buffer) == 100
    assert slow.behind and slow.pauses == 1
    received = lines_of(await asyncio.wait_for(slow.get_many(10), 5))
    assert [line.text for line in received] == ["line 0", "line 1", "line 2", "line 3"]
    # Paused: nothing more is queued, and nothing is lost: the buffer has the rest,
    # from where the follower got to.
    assert await asyncio.wait_for(slow.get_many(10), 5) == []
    assert [line.text for line in buffer.after(received[-1].seq, 3)] == [
        "line 4",
        "line 5",
        "line 6",
    ]
    slow.resume()
    buffer.append("stdout", "line 100")
    assert [line.text for line in lines_of(await asyncio.wait_for(slow.get_many(10), 5))] == [
        "line 100"
    ]


async def test_a_paused_follower_knows_where_an_instance_it_never_saw_began() -> None:
    hub = LogHub("node-1", lines=100)
    follower = hub.subscribe(lambda line: True, app="shop", maxsize=1)
    hub.buffer("shop", "web.1").append("stdout", "queued")
    for i in range(3):
        hub.buffer("shop", "web.2").append("stdout", f"while paused {i}")
    assert follower.behind
    assert follower.first_seq == {"web.1": 1, "web.2": 1}


def test_a_buffer_serves_the_lines_after_a_cursor_in_order() -> None:
    buffer = LogBuffer("shop", "web.1", "node-1", limit=10)
    for i in range(1, 26):
        buffer.append("stdout", f"line {i}")
    assert buffer.oldest_seq == 16
    assert [line.seq for line in buffer.after(17, 3)] == [18, 19, 20]
    assert [line.seq for line in buffer.after(23, 100)] == [24, 25]
    assert [line.seq for line in buffer.after(3, 2)] == [16, 17]
    assert buffer.after(25, 10) == []


async def test_pump_copies_a_pipe_line_by_line_until_eof() -> None:
    reader = asyncio.StreamReader()
    buffer = LogBuffer("shop", "worker.1", "node-1", limit=10)
    task = asyncio.create_task(pump(reader, "stderr", buffer))
    reader.feed_data(b"one\ntw")
    reader.feed_data(b"o\nthree")
    reader.feed_eof()
    await asyncio.wait_for(task, 5)
    assert [(line.stream, line.seq, line.text) for line in buffer.tail(10)] == [
        ("stderr", 1, "one"),
        ("stderr", 2, "two"),
        ("stderr", 3, "three"),
    ]


def test_an_app_re_created_under_the_same_name_gets_a_fresh_buffer_and_seq() -> None:
    hub = LogHub("node-1", lines=100)
    old = hub.buffer("shop", "web.1", "old-id")
    old.append("stdout", "old line")
    assert hub.buffer("shop", "web.1", "old-id") is old
    new = hub.buffer("shop", "web.1", "new-id")  # the slot's next instance is the new app's
    assert new is not old and new.lines() == []
    line = new.append("stdout", "new line")
    assert (line.seq, line.app_id) == (1, "new-id")  # another app: its own count
    old.append("stdout", "the old instance's last words")  # detached: it publishes nothing
    assert [b.app_id for b in hub.buffers("shop")] == ["new-id"]
    assert hub.buffers("shop", "old-id") == []

    hub.retire("shop", "web.1")
    again = hub.buffer("shop", "web.1", "third-id")  # a retired buffer of another id: fresh too
    assert again.lines() == [] and again.last_seq == 0
    hub.retire("shop", "web.1")
    back = hub.buffer("shop", "web.1", "third-id")  # the same app again: the same buffer
    assert back is again


async def test_forgetting_apps_drops_their_buffers_and_stops_their_lines() -> None:
    hub = LogHub("node-1", lines=100)
    follower = hub.subscribe(lambda line: True, app="shop")
    running = hub.buffer("shop", "web.1", "gone")
    hub.buffer("shop", "web.2", "gone").append("stdout", "retired")
    hub.retire("shop", "web.2")
    hub.buffer("shop", "web.3", "kept").append("stdout", "kept")
    assert hub.app_ids() == {"gone", "kept"}
    await hub.forget_apps({"gone"})
    assert hub.app_ids() == {"kept"}
    assert [b.instance for b in hub.buffers("shop")] == ["web.3"]
    running.append("stdout", "still stopping")  # its instance may write until it stops
    assert [line.text for line in lines_of(follower.take(10))] == ["retired", "kept"]


async def test_forgetting_everything_leaves_no_line_and_ends_every_follower() -> None:
    hub = LogHub("node-1", lines=100)
    follower = hub.subscribe(lambda line: True, app="shop")
    waiting = asyncio.ensure_future(follower.get_many(10))
    hub.buffer("shop", "web.1", "a").append("stdout", "x")
    assert [line.text for line in lines_of(await waiting)] == ["x"]
    hub.buffer("shop", "web.2").append("stdout", "no id")
    hub.retire("shop", "web.2")
    waiting = asyncio.ensure_future(follower.get_many(10))
    await hub.forget_everything()
    assert [line.text for line in lines_of(await asyncio.wait_for(waiting, 5))] == ["no id"]
    assert await asyncio.wait_for(follower.get_many(10), 5) == []  # ended: no waiting
    assert hub.buffers("shop") == [] and hub.app_ids() == set()


# Reads of a pipe: how many lines each brings (0: an empty read), which are pieces,
# and now and then a run restarting or a lifecycle line appended alone.
_reads = st.lists(
    st.tuples(
        st.integers(0, 9),
        st.sampled_from(["stdout", "stderr", "append", "restart"]),
        st.integers(0, 3),
    ),
    max_size=25,
)


Kept = tuple[int, str, str, int, bool]  # seq, text, stream, run, continued


def kept_of(lines: list[LogLine]) -> list[Kept]:
    return [(x.seq, x.text, x.stream, x.run, x.continued) for x in lines]


@given(_reads, st.integers(1, 20), st.integers(0, 60), st.integers(0, 30))
def test_a_buffer_of_runs_keeps_what_a_ring_of_lines_would(
    reads: list[tuple[int, str, int]], limit: int, cursor: int, count: int
) -> None:
    buffer = LogBuffer("shop", "web.1", "node-1", limit, app_id="a1")
    published: list[LineRun] = []
    buffer._publish = published.append
    ring: list[Kept] = []  # the plain way: every line, in order (the last `limit` kept)
    run = 0
    for lines, what, piece in reads:
        if what == "restart":
            run = buffer.begin_run()
        elif what == "append":
            text = f"event {len(ring)}"
            buffer.append("paas", text, continued=piece == 0)
            ring.append((len(ring) + 1, text, "paas", run, piece == 0))
        else:
            texts = [f"{what} {len(ring) + i}" for i in range(lines)]
            pieces = tuple(i for i in range(lines) if i % 4 == piece)
            buffer.extend(what, Split(texts, pieces))
            first = len(ring) + 1
            ring += [(first + i, t, what, run, i in pieces) for i, t in enumerate(texts)]
    kept = ring[-limit:]
    assert kept_of(buffer.lines()) == kept
    assert len(buffer) == len(kept) and buffer.last_seq == len(ring)
    assert buffer.dropped == len(ring) - len(kept)
    assert buffer.oldest_seq == (kept[0][0] if kept else len(ring) + 1)
    assert kept_of(buffer.after(cursor, count)) == [x for x in kept if x[0] > cursor][:count]
    assert sum(len(r.texts) for r in buffer.runs()) == len(kept)
    assert kept_of([x for r in published for x in r.lines()]) == ring, "each line published once"
    assert [r.text_size() for r in published] == [sum(map(len, r.texts)) for r in published]
    newest_run = kept[-1][3] if kept else 0
    outputs = [x[1] for x in kept if x[3] == newest_run and x[2] != "paas"]
    assert buffer.last_output(newest_run, count) == (outputs[-count:] if count else [])
    selected = kept_of(buffer.select(count))
    if count and len(ring) > len(kept) and len(kept) < count:
        assert selected[0][0] == 0 and "earlier lines dropped" in selected[0][1]
        selected = selected[1:]
    assert selected == (kept[-count:] if count else [])


@given(st.lists(st.integers(1, 9), max_size=12), st.lists(st.integers(1, 12), max_size=12))
def test_a_follower_takes_whole_runs_and_cuts_one_only_where_its_limit_falls(
    sizes: list[int], limits: list[int]
) -> None:
    follower = Subscription(lambda run: True, "node-1", maxsize=1000)
    seq = 1
    for count in sizes:
        follower.offer(LineRun(1.0, "shop", "web.1", "stdout", "node-1", seq, ["x"] * count))
        seq += count
    taken: list[int] = []
    for limit in [*limits, 1000]:
        before = len(follower)
        part = follower.take(limit)
        lines = sum(len(run.texts) for run in part)
        assert lines == min(limit, before) and len(follower) == before - lines
        taken += [x.seq for x in lines_of(part)]
    assert taken == list(range(1, seq)), "every line once, in order"


@given(st.lists(st.text(alphabet="ab\r\n☃", max_size=30), max_size=8), st.integers(4, 12))
def test_a_split_counts_the_characters_of_its_texts_where_it_says_so(
    chunks: list[str], limit: int
) -> None:
    splitter = LineSplitter(max_line=limit)
    for chunk in chunks:
        split = splitter.split(chunk.encode())
        assert split.chars in (-1, sum(map(len, split.texts)))
    assert LineSplitter().split(b"ab\ncd\nef").chars == 4
