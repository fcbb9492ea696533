"""What the CLI prints: `--json` documents, tables and log lines."""

from __future__ import annotations

import io
import json

import pytest

from paas.cli import render
from paas.common.logformat import format_line
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
            pb.Node(name="node-2", address="127.0.0.3:7071", state="lost", capacity=8),
            pb.Node(
                name="node-1",
                address="127.0.0.2:7071",
                state="ready",
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
