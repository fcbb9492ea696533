"""One-off runs, the pure parts: where a run goes, what it runs, what is refused,
how its exit and a release phase's outcome are told."""

from __future__ import annotations

import argparse

import pytest

from paas.agent.oneoff import exit_of
from paas.cli.errors import CommandError
from paas.cli.run import parse_env, prepare
from paas.common.errors import InvalidInput
from paas.proto import paas_pb2 as pb
from paas.scheduler.errors import NotFound
from paas.scheduler.release_phase import outcome
from paas.scheduler.runs import RunNode, choose_node
from paas.scheduler.runs_api import command_of
from paas.scheduler.store import ReleaseRecord
from paas.scheduler.validate import check_run_input


def node(name: str, load: int = 0, capacity: int = 2, **kw: bool) -> RunNode:
    return RunNode(
        name=name,
        ready=kw.get("ready", True),
        draining=kw.get("draining", False),
        capacity=capacity,
        load=load,
    )


def test_a_run_goes_to_the_node_with_the_most_room() -> None:
    chosen = choose_node([node("a", load=1), node("b"), node("c", load=2)])
    assert isinstance(chosen, RunNode) and chosen.name == "b"


def test_a_run_never_goes_to_a_full_lost_or_draining_node() -> None:
    nodes = [node("a", load=2), node("b", ready=False), node("c", draining=True)]
    assert choose_node(nodes) == "no node has room for a one-off (1 ready node(s), all full)"
    assert choose_node([node("b", ready=False)]) == "no node is ready to run it"


def test_a_pinned_run_goes_there_or_says_why_not() -> None:
    nodes = [node("a", load=2), node("b", ready=False), node("c", draining=True), node("d")]
    chosen = choose_node(nodes, "d")
    assert isinstance(chosen, RunNode) and chosen.name == "d"
    assert choose_node(nodes, "a") == "node a is full (2 of its capacity of 2)"
    assert choose_node(nodes, "b") == "node b is lost"
    assert choose_node(nodes, "c") == "node c is draining"
    assert choose_node(nodes, "z") == "unknown node 'z' (nodes: a, b, c, d)"


RELEASE = ReleaseRecord(
    app="shop",
    version=3,
    dir="",
    commands={"web": "gunicorn app", "worker": "python worker.py"},
    env={},
    created_at=0.0,
)


@pytest.mark.parametrize(
    ("words", "type_", "expected"),
    [
        (["worker"], "", ("python worker.py", "worker")),
        (["sh", "-c", "exit 3"], "", ("sh -c 'exit 3'", "run")),
        (["echo $PORT"], "", ("echo $PORT", "run")),
        (["bash"], "web", ("bash", "web")),
        (["worker"], "web", ("python worker.py", "web")),
    ],
)
def test_what_a_run_runs(words: list[str], type_: str, expected: tuple[str, str]) -> None:
    assert command_of(words, RELEASE, type_) == expected


def test_an_unknown_type_names_the_procfile_s() -> None:
    with pytest.raises(NotFound, match=r"unknown process type 'wbe' \(Procfile has: web, worker\)"):
        command_of(["true"], RELEASE, "wbe")


def start(**fields: object) -> pb.RunInput:
    base: dict[str, object] = {"app": "shop", "command": ["true"]}
    base.update(fields)
    return pb.RunInput(start=pb.RunStart(**base))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("message", "first", "error"),
    [
        (start(command=[]), True, "no command to run"),
        (start(command=["", " "]), True, "no command to run"),
        (start(command=["a\0b"]), True, "NUL"),
        (start(command=["x" * 40000]), True, "at most 32 KiB"),
        (start(env={"PORT": "1"}), True, "config var PORT is reserved"),
        (start(env={"PAAS_APP": "x"}), True, "config var PAAS_APP is reserved"),
        (start(env={"1X": "x"}), True, "invalid config var name"),
        (start(env={"X": "a\0"}), True, "NUL"),
        (start(type="Web!"), True, "process type"),
        (start(node="no such/node"), True, "node"),
        (start(app="Bad"), True, "app"),
        (start(columns=-1), True, "columns"),
        (pb.RunInput(stdin=b"x"), True, "starts with what to run"),
        (start(), False, "one RunStart"),
        (pb.RunInput(signal=11), False, "signal 11 cannot be sent"),
        (pb.RunInput(stdin=b"x" * 70000), False, "at most 65536 bytes"),
        (pb.RunInput(output_taken=5), False, "the scheduler's to set"),
    ],
)
def test_the_scheduler_refuses_a_bad_run(message: pb.RunInput, first: bool, error: str) -> None:
    with pytest.raises(InvalidInput, match=error):
        check_run_input(message, first=first)


def test_a_good_run_passes() -> None:
    check_run_input(start(env={"DEBUG": "1"}, type="web", node="node-1"), first=True)
    check_run_input(pb.RunInput(stdin=b"hello", signal=2), first=False)
    check_run_input(pb.RunInput(eof=True), first=False)


def test_the_cli_refuses_a_run_without_a_command_or_with_a_bad_env() -> None:
    args = argparse.Namespace(
        app="shop", command=["--"], detach=False, type=None, env=[], node=None
    )
    with pytest.raises(CommandError, match="no command to run"):
        prepare(args)
    with pytest.raises(CommandError, match="--env DYNO"):
        parse_env(["DYNO=x"])
    with pytest.raises(CommandError, match="use KEY=VALUE"):
        parse_env(["JUSTAKEY"])
    assert parse_env(["A=1", "B=x=y"]) == {"A": "1", "B": "x=y"}
    args.command = ["--", "sh", "-c", "exit 3"]
    assert list(prepare(args).command) == ["sh", "-c", "exit 3"]


def test_an_exit_by_signal_is_128_plus_the_signal() -> None:
    assert exit_of(3, []).code == 3
    killed = exit_of(-9, ["last"])
    assert (killed.code, killed.signal, killed.text) == (137, 9, "signal 9 (SIGKILL)")


def test_the_release_phase_outcome_is_one_line() -> None:
    ok = pb.RunOutput(exit=pb.RunExit(code=0, text="exit 0"))
    assert outcome(ok) is None
    failed = pb.RunOutput(exit=pb.RunExit(code=2, text="exit 2", last_lines=["a", "b", " "]))
    assert outcome(failed) == "release phase failed: exit 2: b"
    silent = pb.RunOutput(exit=pb.RunExit(code=1, text="exit 1"))
    assert outcome(silent) == "release phase failed: exit 1"
    lost = pb.RunOutput(lost="node node-2 was lost; the run's outcome is unknown")
    assert (
        outcome(lost) == "release phase failed: node node-2 was lost; the run's outcome is unknown"
    )
