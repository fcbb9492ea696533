"""What the CLI prints: `--json` documents, tables and log lines."""

from __future__ import annotations

import io
import json

import pytest

from paas.cli import render
from paas.common.logformat import format_line
from paas.common.logruns import runs_of_lines
from paas.proto import paas_pb2 as pb

PS_KEYS = {"name", "type", "state", "node", "pid", "port", "restarts", "last_exit", "app",
           "release"}  # fmt: skip
NODE_KEYS = {"name", "state", "address", "instances"}


def views() -> list[pb.InstanceView]:
    return [
        pb.InstanceView(app="shop", name="web.10", type="web", node="node-2", state=pb.UP,
                        pid=4242, port=20001, restarts=0, since=1.0, release=3),
        pb.InstanceView(app="shop", name="web.2", type="web", node="node-1", state=pb.CRASHED,
                        restarts=4, last_exit="exit 1", release=3),
        pb.InstanceView(app="shop", name="worker.1", type="worker", node="node-3",
                        state=pb.PENDING, release=3),
    ]  # fmt: skip


def test_ps_json_is_one_array_with_the_documented_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    render.instances(views(), as_json=True)
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert isinstance(rows, list)
    assert captured.err == ""
    assert all(PS_KEYS <= set(row) for row in rows)
    assert [row["name"] for row in rows] == ["web.2", "web.10", "worker.1"]
    assert rows[1] | {"since": None} == rows[1] | {
        "app": "shop", "name": "web.10", "type": "web", "state": "up", "node": "node-2",
        "pid": 4242, "port": 20001, "restarts": 0, "last_exit": "", "release": 3,
        "since": None,
    }  # fmt: skip
    assert rows[0]["state"] == "crashed" and rows[0]["last_exit"] == "exit 1"


def test_ps_json_of_nothing_is_an_empty_array(capsys: pytest.CaptureFixture[str]) -> None:
    render.instances([], as_json=True)
    assert json.loads(capsys.readouterr().out) == []


def test_nodes_json_is_one_array_with_the_documented_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    render.nodes(
        [
            pb.Node(name="node-2", address="127.0.0.3:7071", state=pb.NODE_LOST, capacity=8),
            pb.Node(
                name="node-1",
                address="127.0.0.2:7071",
                state=pb.NODE_READY,
                capacity=8,
                instances=3,
                labels={"zone": "a"},
            ),
        ],
        as_json=True,
    )
    nodes = json.loads(capsys.readouterr().out)
    assert all(NODE_KEYS <= set(node) for node in nodes)
    assert [(n["name"], n["state"], n["instances"]) for n in nodes] == [
        ("node-1", "ready", 3),
        ("node-2", "lost", 0),
    ]
    assert nodes[0]["labels"] == {"zone": "a"}


# 2026-11-28T19:47:03.5Z
MOMENT = 1_795_895_223.5
ISO = "2026-11-28T19:47:03.500000+00:00"


def test_times_in_ps_json_are_iso_8601_utc_as_in_logs_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    render.instances(
        [pb.InstanceView(name="web.1", type="web", state=pb.BACKOFF, since=MOMENT,
                         started_at=MOMENT - 2, exited_at=MOMENT, ran_for=2.0,
                         next_start=MOMENT + 4)],
        as_json=True,
    )  # fmt: skip
    row = json.loads(capsys.readouterr().out)[0]
    assert row["since"] == ISO
    assert row["started_at"] == "2026-11-28T19:47:01.500000+00:00"
    assert row["exited_at"] == ISO
    assert row["next_start"] == "2026-11-28T19:47:07.500000+00:00"
    assert row["since_unix"] == MOMENT, "scripts that compute with it keep a number"
    assert row["ran_for"] == 2.0, "a duration stays seconds"
    log = render.log_dict(pb.LogLine(timestamp=MOMENT))
    assert log["timestamp"] == row["since"]


def test_a_time_that_never_was_is_null_not_1970(capsys: pytest.CaptureFixture[str]) -> None:
    render.instances([pb.InstanceView(name="web.1", type="web", state=pb.PENDING)], as_json=True)
    row = json.loads(capsys.readouterr().out)[0]
    assert [row[key] for key in ("since", "started_at", "exited_at", "next_start")] == [None] * 4
    assert row["since_unix"] == 0


def test_times_in_nodes_and_apps_json_are_iso_8601_utc_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    render.nodes([pb.Node(name="node-1", last_seen=MOMENT), pb.Node(name="node-2")], as_json=True)
    assert [n["last_seen"] for n in json.loads(capsys.readouterr().out)] == [ISO, None]
    render.apps([pb.App(name="shop", created_at=MOMENT), pb.App(name="zoo")], as_json=True)
    assert [a["created_at"] for a in json.loads(capsys.readouterr().out)] == [ISO, None]


@pytest.mark.parametrize("state", list(pb.InstanceState.values()))
def test_state_names_are_the_proto_names_in_lowercase(state: int) -> None:
    name = render.state_name(state)
    assert name == name.lower()
    assert name in {"unknown", "pending", "starting", "up", "crashed", "backoff", "stopping",
                    "stopped", "lost"}  # fmt: skip


def test_ps_table_lists_every_instance(capsys: pytest.CaptureFixture[str]) -> None:
    render.instances(views())
    out = capsys.readouterr().out
    for text in ("web.10", "web.2", "worker.1", "crashed", "exit 1", "4242", "node-3"):
        assert text in out
    assert "\x1b[" not in out, "no colour when stdout is not a terminal"


def test_log_lines_are_herokus_format_and_plain_when_piped() -> None:
    stream = io.StringIO()
    printer = render.LogPrinter(stream)
    printer.print(pb.LogLine(timestamp=1.5, instance="web.3", stream="stdout", text="hi \x1b"))
    printer.print(pb.LogLine(timestamp=2.0, instance="scheduler", stream="paas", text="Scaled"))
    assert stream.getvalue().splitlines() == [
        format_line(1.5, "stdout", "web.3", "hi \x1b"),
        format_line(2.0, "paas", "scheduler", "Scaled"),
    ]
    assert stream.getvalue().splitlines()[1].endswith(" paas[scheduler]: Scaled")


def test_ago_reads_like_a_person_would_say_it() -> None:
    assert render.ago(100.0, now=105.0) == "5s ago"
    assert render.ago(100.0, now=100.0 + 125) == "2m ago"
    assert render.ago(100.0, now=100.0 + 7200) == "2h ago"
    assert render.ago(0.0) == ""


# ---------------------------------------------------------------- forensics

NOW = 1_800_000_000.0


def view(state: pb.InstanceState.ValueType, **fields: object) -> pb.InstanceView:
    return pb.InstanceView(app="shop", name="web.3", type="web", node="node-2", state=state,
                           **fields)  # type: ignore[arg-type]  # fmt: skip


@pytest.mark.parametrize(
    ("instance", "text"),
    [
        (view(pb.UP, pid=7, started_at=NOW - 180, since=NOW - 170), "up 3m"),
        (view(pb.UP, pid=7, started_at=NOW - 5, restarts=2, last_exit="exit 1", ran_for=0.4),
         "up 5s (crashed 2x, last exit 1 after 0.4s)"),
        (view(pb.UP, pid=7, started_at=NOW - 4000, restarts=1, last_exit="signal 9 (SIGKILL)",
              ran_for=61), "up 1h6m (crashed 1x, last signal 9 (SIGKILL) after 1m)"),
        (view(pb.BACKOFF, restarts=3, last_exit="exit 1", ran_for=2.2, next_start=NOW + 40.2),
         "crashed 4x, exit 1 after 2.2s, next start in 40s"),
        (view(pb.BACKOFF, restarts=1, last_exit="exit 1", next_start=NOW - 0.5),
         "crashed 2x, exit 1, next start now"),
        (view(pb.CRASHED, last_exit="signal 9 (SIGKILL)", ran_for=60,
              reason="did not accept connections on $PORT within 60s"),
         "crashed 1x, signal 9 (SIGKILL) after 1m, did not accept connections on $PORT "
         "within 60s"),
        (view(pb.CRASHED, last_exit="exit 3", reason="exit 3"), "crashed 1x, exit 3"),
        (view(pb.STARTING, since=NOW - 4), "starting 4s"),
        (view(pb.STARTING, since=NOW - 4, restarts=1, last_exit="exit 1"),
         "starting 4s (crashed 1x, last exit 1)"),
        (view(pb.STOPPING, since=NOW - 2, reason="no longer assigned to this node"),
         "stopping 2s (no longer assigned to this node)"),
        (view(pb.STOPPED, since=NOW - 90, last_exit="exit 0", ran_for=3),
         "stopped 1m ago, exit 0 after 3.0s"),
        (view(pb.PENDING), "pending"),
        (view(pb.PENDING, reason="fetching slug 4.2 MiB"), "pending (fetching slug 4.2 MiB)"),
        (view(pb.BACKOFF, reason="slug not ready: slug 0123456789ab: digest mismatch",
              next_start=NOW + 8), "slug not ready: slug 0123456789ab: digest mismatch, next "
         "start in 8s"),
        (view(pb.LOST), "lost: node node-2 is not reporting"),
    ],
)  # fmt: skip
def test_ps_says_what_happened_the_way_a_person_reads_it(
    instance: pb.InstanceView, text: str
) -> None:
    # x stands for the multiplication sign the table shows
    assert render.status_text(instance, NOW).replace(render.TIMES, "x") == text


def test_the_crash_count_is_written_with_a_real_times_sign() -> None:
    assert (
        render.status_text(view(pb.BACKOFF, restarts=3), NOW) == "crashed 4\N{MULTIPLICATION SIGN}"
    )


def test_durations_are_short_and_to_the_point() -> None:
    assert [render.duration(s) for s in (0, 59.9, 60, 3599, 3600, 3660, 86400, 90000, -3)] == [
        "0s", "59s", "1m", "59m", "1h", "1h1m", "1d", "1d1h", "0s",
    ]  # fmt: skip


def test_ps_table_shows_cpu_and_memory_of_running_instances(
    capsys: pytest.CaptureFixture[str],
) -> None:
    render.instances([
        view(pb.UP, pid=42, port=20000, started_at=1.0, cpu_percent=12.34, rss_bytes=35 * 2**20),
        pb.InstanceView(app="shop", name="web.4", type="web", state=pb.BACKOFF, restarts=3,
                        last_exit="exit 1", node="node-1"),
    ])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header == ["name", "type", "node", "pid", "port", "cpu%", "rss", "MiB", "state"]
    assert lines[2].split()[:7] == ["web.3", "web", "node-2", "42", "20000", "12.3", "35.0"]
    assert lines[3].split()[:7] == ["web.4", "web", "node-1", "-", "-", "-", "-"]
    assert f"crashed 4{render.TIMES}, exit 1" in lines[3]


def test_ps_verbose_shows_the_last_output_of_the_run_that_exited(
    capsys: pytest.CaptureFixture[str],
) -> None:
    crashed = view(
        pb.BACKOFF, restarts=1, last_exit="exit 1", ran_for=0.5, since=NOW, exited_at=NOW,
        started_at=NOW - 0.5, next_start=NOW + 2, reason="restarting in 2s", release=3,
        last_lines=["Traceback (most recent call last):", "[red]ValueError: boom[/red]"],
    )  # fmt: skip
    render.instances([crashed], verbose=True)
    out = capsys.readouterr().out
    assert "web.3 on node-2" in out
    assert "restarting in 2s" in out
    assert "last exit:  exit 1 after 0.5s" in out
    assert "    | Traceback (most recent call last):\n" in out
    assert "    | [red]ValueError: boom[/red]\n" in out, "output is shown as is, not as markup"


def test_nodes_table_shows_cpu_and_memory_totals(capsys: pytest.CaptureFixture[str]) -> None:
    render.nodes([pb.Node(name="node-1", address="127.0.0.2:7071", state=pb.NODE_READY, capacity=8,
                          instances=2, cpu_percent=150.0, rss_bytes=3 * 2**30)])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:8] == [
        "name", "state", "address", "instances", "capacity", "cpu%", "rss", "MiB"
    ]  # fmt: skip
    assert lines[2].split()[:7] == ["node-1", "ready", "127.0.0.2:7071", "2", "8", "150.0",
                                    "3072.0"]  # fmt: skip


# ---------------------------------------------------------------- log lines


def piece(seq: int, text: str, continued: bool, instance: str = "web.1") -> pb.LogLine:
    return pb.LogLine(timestamp=float(seq), app="shop", instance=instance, stream="stdout",
                      node="node-1", seq=seq, text=text, continued=continued, run=1)  # fmt: skip


def test_pieces_of_an_over_long_line_are_printed_as_one_line() -> None:
    stream = io.StringIO()
    printer = render.LogPrinter(stream)
    printer.print(piece(1, "aaa", True))
    printer.print(piece(2, "other", False, instance="web.2"))
    printer.print(piece(3, "bbb", True))
    printer.print(piece(4, "cc", False))
    printer.print(piece(5, "next", False))
    assert stream.getvalue().splitlines() == [
        format_line(2.0, "stdout", "web.2", "other"),
        format_line(1.0, "stdout", "web.1", "aaabbbcc"),
        format_line(5.0, "stdout", "web.1", "next"),
    ]


@pytest.mark.parametrize("as_json", [False, True])
def test_a_batch_prints_what_its_lines_one_by_one_would(as_json: bool) -> None:
    lines = [
        piece(1, "aaa", True),
        piece(2, "other", False, instance="web.2"),
        piece(3, "bbb", True),
        piece(4, "cc", False),
        piece(5, "next", False),
        piece(6, "half", True),
    ]
    one_by_one, batched = io.StringIO(), io.StringIO()
    single = render.LogPrinter(one_by_one, as_json=as_json)
    for line in lines:
        single.print(line)
    render.LogPrinter(batched, as_json=as_json).print_batch(runs_of_lines(lines))
    assert batched.getvalue() == one_by_one.getvalue()
    assert batched.getvalue().count("\n") == (6 if as_json else 3)  # the half line waits


def test_a_batch_without_pieces_prints_what_its_lines_one_by_one_would() -> None:
    # Runs of lines read together (one time, stream and instance), as agents send them,
    # a scheduler event and a line with no instance among them; then a batch after a
    # piece that waits for its rest.
    lines = [
        piece(1, "a", False),
        piece(1, "b", False),
        piece(1, "c", False, instance="web.2"),
        piece(2, "d", False),
        piece(2, "e", False, instance=""),
        pb.LogLine(timestamp=2.0, stream="paas", instance="scheduler", text="Scaled"),
        pb.LogLine(timestamp=2.0, stream="stderr", instance="web.1", text="oops"),
    ]
    later = [piece(3, "half", True), piece(4, "rest", False), piece(5, "z", False)]
    one_by_one, batched = io.StringIO(), io.StringIO()
    single, printer = render.LogPrinter(one_by_one), render.LogPrinter(batched)
    for line in lines:
        single.print(line)
    printer.print_batch(runs_of_lines(lines))
    assert batched.getvalue() == one_by_one.getvalue()
    for line in later:
        single.print(line)
    printer.print_batch(runs_of_lines(later[:1]))
    printer.print_batch(runs_of_lines(later[1:]))  # a piece waits: this batch goes line by line
    assert batched.getvalue() == one_by_one.getvalue()
    assert batched.getvalue().endswith(format_line(5.0, "stdout", "web.1", "z") + "\n")
    assert "paas[scheduler]: Scaled" in batched.getvalue()
    assert "app[?]: e" in batched.getvalue()


@pytest.mark.parametrize("as_json", [False, True])
def test_a_run_prints_a_line_for_each_of_its_texts(as_json: bool) -> None:
    lines = [
        pb.LogLine(timestamp=7.0, app="shop", instance="web.1", stream="stdout", node="n",
                   seq=seq, text=text, run=2)
        for seq, text in ((4, "one"), (5, "two"), (6, "three"))
    ]  # fmt: skip
    runs = runs_of_lines(lines)
    assert [len(run.texts) for run in runs] == [3]
    one_by_one, batched = io.StringIO(), io.StringIO()
    single = render.LogPrinter(one_by_one, as_json=as_json)
    for line in lines:
        single.print(line)
    render.LogPrinter(batched, as_json=as_json).print_batch(runs)
    assert batched.getvalue() == one_by_one.getvalue()
    assert batched.getvalue().count("\n") == 3


def test_a_line_whose_rest_never_came_is_printed_at_the_end() -> None:
    stream = io.StringIO()
    printer = render.LogPrinter(stream)
    printer.print(piece(1, "half", True))
    assert stream.getvalue() == ""
    printer.flush()
    assert stream.getvalue().splitlines() == [format_line(1.0, "stdout", "web.1", "half")]


def test_rejoining_is_bounded() -> None:
    joiner = render.LineJoiner(limit=5)
    assert joiner.feed(piece(1, "abc", True)) is None
    joined = joiner.feed(piece(2, "def", True))
    assert joined is not None
    assert (joined.text, joined.seq, joined.continued) == ("abcdef", 2, False)
    assert joiner.feed(piece(3, "g", False)) == piece(3, "g", False)


def test_logs_json_is_one_object_per_line() -> None:
    stream = io.StringIO()
    printer = render.LogPrinter(stream, as_json=True)
    printer.print(piece(1, "aaa", True))
    printer.print(piece(2, 'bb "quoted" ü', False))
    printer.flush()
    objects = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert objects == [
        {"timestamp": "1970-01-01T00:00:01.000000+00:00", "app": "shop", "instance": "web.1",
         "stream": "stdout", "node": "node-1", "seq": 1, "run": 1, "continued": True,
         "text": "aaa"},
        {"timestamp": "1970-01-01T00:00:02.000000+00:00", "app": "shop", "instance": "web.1",
         "stream": "stdout", "node": "node-1", "seq": 2, "run": 1, "continued": False,
         "text": "bb \"quoted\" ü"},
    ]  # fmt: skip


def test_restart_and_stop_say_what_happens() -> None:
    assert render.restarting("shop", []) == "Nothing to restart: shop has no instances"
    assert render.restarting("shop", ["web.3"]) == "Restarting web.3 of shop"
    assert render.restarting("shop", ["web.1", "web.2"]) == (
        "Restarting 2 instances of shop one at a time, each once the one before is up again: "
        "web.1, web.2"
    )
    assert render.stopping("shop", "web.3") == (
        "Stopping web.3 of shop; the formation starts a new web in its place"
    )
