"""Waiting for a rollout (cli/rollout_wait.py) and the config/releases/rollback commands,
against a fake scheduler replica: progress on one line on a terminal, one line
elsewhere, exit 0 for a release that succeeded and 1 for one that failed."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from paas.cli.client import SchedulerClient
from paas.cli.main import run
from paas.cli.rollout_wait import wait_for_release
from paas.proto import paas_pb2 as pb
from tests.unit.test_cli_client import Replica


def rolling(replaced: int, instances: int = 3) -> pb.Release:
    return pb.Release(
        app="shop",
        version=5,
        previous=4,
        status=pb.RELEASE_ROLLING,
        instances=instances,
        replaced=replaced,
    )


SUCCEEDED = pb.Release(app="shop", version=5, previous=4, status=pb.RELEASE_SUCCEEDED)
FAILED = pb.Release(
    app="shop",
    version=5,
    previous=4,
    status=pb.RELEASE_FAILED,
    status_reason="web.2 crashed with status 1: ModuleNotFoundError",
)


@pytest.fixture
async def replica() -> AsyncIterator[Replica]:
    started = Replica()
    await started.server.start()
    yield started
    await started.server.stop(None)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_on_a_terminal_progress_is_one_line_rewritten_then_success_is_exit_0(
    replica: Replica,
) -> None:
    replica.fake.release_answers = [rolling(1), rolling(2), SUCCEEDED]
    out = Terminal()
    async with SchedulerClient([replica.address]) as client:
        code = await wait_for_release(client, "shop", 5, out, tty=True, interval=0.01)
    assert code == 0
    text = out.getvalue()
    assert "\r\x1b[2KRolling out v5: 1/3 replaced\r\x1b[2KRolling out v5: 2/3 replaced" in text
    assert text.count("\n") == 1, "progress stays on one line"
    assert text.endswith("v5 of shop is rolled out\n")
    assert [r.version for r in replica.fake.release_requests] == [5, 5, 5]


async def test_elsewhere_one_waiting_line_then_a_failure_is_exit_1_with_the_reason(
    replica: Replica,
) -> None:
    replica.fake.release_answers = [rolling(0), rolling(1), FAILED]
    out = io.StringIO()
    async with SchedulerClient([replica.address]) as client:
        code = await wait_for_release(client, "shop", 5, out, tty=False, interval=0.01)
    assert code == 1
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue()
    assert lines[0].startswith("Rolling out v5 of shop; waiting until it is done")
    assert lines[1] == (
        "v5 of shop failed: web.2 crashed with status 1: ModuleNotFoundError; v4 stays in force"
    )


async def test_a_release_already_rolled_out_says_so_at_once(replica: Replica) -> None:
    replica.fake.release_answers = [SUCCEEDED]
    out = Terminal()
    async with SchedulerClient([replica.address]) as client:
        assert await wait_for_release(client, "shop", 5, out, tty=True, interval=0.01) == 0
    assert out.getvalue() == "v5 of shop is rolled out\n"


# ------------------------------------------------------------------ the commands


@pytest.fixture
def at_replica(replica: Replica, monkeypatch: pytest.MonkeyPatch) -> Replica:
    monkeypatch.setenv("PAAS_SCHEDULER", replica.address)
    monkeypatch.setenv("PAAS_INSECURE", "1")
    monkeypatch.setenv("PAAS_APP", "shop")
    monkeypatch.delenv("PAAS_CREDENTIALS", raising=False)
    return replica


async def run_off_loop(argv: list[str]) -> int:
    """`run` calls asyncio.run: in a thread, while this loop serves the replica."""
    return await asyncio.to_thread(run, argv)


async def test_config_set_sends_one_request_and_exits_1_when_its_rollout_fails(
    at_replica: Replica, capsys: pytest.CaptureFixture[str]
) -> None:
    at_replica.fake.release_answers = [rolling(0), FAILED]
    assert await run_off_loop(["config", "set", "A=1", "B=two words"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "Set A, B on shop: v2\n"
    assert captured.err.splitlines()[-1].startswith("v5 of shop failed: web.2 crashed")
    (sent,) = at_replica.fake.config_requests
    assert dict(sent.set) == {"A": "1", "B": "two words"} and list(sent.unset) == []


async def test_no_wait_returns_once_the_release_is_made(
    at_replica: Replica, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_off_loop(["config", "unset", "A", "B", "--no-wait"]) == 0
    assert await run_off_loop(["rollback", "v1", "--no-wait"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "Unset A, B on shop: v2",
        "Rollback to v1 of shop: v2",
    ]
    assert list(at_replica.fake.config_requests[0].unset) == ["A", "B"]
    assert [r.version for r in at_replica.fake.rollbacks] == [1]
    assert at_replica.fake.release_requests == [], "no waiting"


async def test_rollback_waits_by_default_and_succeeds(
    at_replica: Replica, capsys: pytest.CaptureFixture[str]
) -> None:
    at_replica.fake.release_answers = [SUCCEEDED]
    assert await run_off_loop(["rollback"]) == 0
    assert at_replica.fake.rollbacks[0].version == 0, "the one before the current"
    assert capsys.readouterr().err.splitlines()[-1] == "v5 of shop is rolled out"


async def test_config_load_sets_the_file_literally_in_one_request(
    at_replica: Replica, tmp_path: Path
) -> None:
    env = tmp_path / "app.env"
    env.write_text("export A='x y'\nB=${HOME}\n# comment\nC=\"q\\nr\"\n")
    assert await run_off_loop(["config", "load", str(env), "--no-wait"]) == 0
    (sent,) = at_replica.fake.config_requests
    assert dict(sent.set) == {"A": "x y", "B": "${HOME}", "C": "q\nr"}


async def test_config_prints_aligned_shell_quoted_and_json(
    at_replica: Replica, capsys: pytest.CaptureFixture[str]
) -> None:
    at_replica.fake.release_answers = [
        pb.Release(app="shop", version=3, env={"LONG_NAME": "a b", "X": "it's", "E": ""})
    ]
    assert await run_off_loop(["config"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "E:         ",
        "LONG_NAME: a b",
        "X:         it's",
    ]
    assert await run_off_loop(["config", "--shell"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "E=''",
        "LONG_NAME='a b'",
        "X='it'\"'\"'s'",
    ]
    assert await run_off_loop(["config", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"E": "", "LONG_NAME": "a b", "X": "it's"}
    assert await run_off_loop(["config", "get", "X"]) == 0
    assert capsys.readouterr().out == "it's\n"
    assert await run_off_loop(["config", "get", "NOPE"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: config var NOPE is not set on shop (`paas config`)"]


async def test_releases_lists_newest_first_and_info_shows_keys_not_values(
    at_replica: Replica, capsys: pytest.CaptureFixture[str]
) -> None:
    at_replica.fake.releases = [
        pb.Release(app="shop", version=3, description="Set FOO config vars", by="alice",
                   created_at=1796137445.0, status=pb.RELEASE_FAILED,
                   status_reason="web.1 crashed"),
        pb.Release(app="shop", version=2, description="Deploy 3f2a9c1b0d4e", by="alice",
                   created_at=1796137000.0, status=pb.RELEASE_SUCCEEDED),
    ]  # fmt: skip
    assert await run_off_loop(["releases", "-n", "5"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["version", "description", "by", "created", "(UTC)", "status"]
    body = [row for row in rows[1:] if row and not row[0].startswith("─")]
    assert body[0] == ["v3", "Set", "FOO", "config", "vars", "alice", "2026-12-01", "15:04:05",
                       "failed:", "web.1", "crashed"]  # fmt: skip
    assert body[1][0] == "v2" and body[1][-1] == "succeeded"
    assert await run_off_loop(["releases", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["version"] for r in listed] == [3, 2] and listed[0]["status"] == "failed"

    at_replica.fake.release_answers = [
        pb.Release(app="shop", version=3, description="Set FOO config vars", by="alice",
                   env={"FOO": "secret-value"}, commands={"web": "python3 serve.py"},
                   slug=pb.Slug(digest="ab" * 32, size=2048), previous=2,
                   status=pb.RELEASE_SUCCEEDED),
    ]  # fmt: skip
    assert await run_off_loop(["releases", "info", "v3"]) == 0
    text = capsys.readouterr().out
    assert "version:     v3" in text and "code:        slug abababababab (2.0 KiB)" in text
    assert "  web: python3 serve.py" in text and "config vars: FOO" in text
    assert "secret-value" not in text
    assert at_replica.fake.release_requests[-1].version == 3


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["config", "set"], "no KEY=VALUE given"),
        (["config", "set", "FOO"], "expected KEY=VALUE, got 'FOO'"),
        (["config", "set", "1X=1"], "invalid config var name '1X'"),
        (["config", "set", "PORT=1"], "config var PORT is reserved"),
        (["config", "set", "PAAS_X=1"], "config var PAAS_X is reserved"),
        (["config", "set", "A=1", "A=1"], "config var A is given more than once"),
        (["config", "unset"], "no config var given"),
        (["config", "unset", "A", "A"], "config var A is given more than once"),
        (["config", "unset", "A B"], "invalid config var name 'A B'"),
        (["config", "get", "a-b"], "invalid config var name 'a-b'"),
        (["releases", "info", "vv"], "invalid release version 'vv'"),
        (["releases", "info", "v0"], "invalid release version 'v0'"),
        (["rollback", "v-1"], "invalid release version 'v-1'"),
    ],
)
async def test_bad_input_is_one_line_exit_1_with_nothing_sent(
    at_replica: Replica, argv: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_off_loop(argv) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"error: {captured.err[7:].strip()}"]
    assert problem in captured.err and captured.out == ""
    assert at_replica.fake.calls == 0
