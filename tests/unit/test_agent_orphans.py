"""The pure parts of catching escaped processes: tokens in an environment block, the
bounded registry of whose children are whose, and sweeps sharing one scan."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Collection

import pytest

from paas.agent import orphans
from paas.agent.orphans import REMEMBERED, Carrier, OwnChildren, Sweeper, token_in
from paas.agent.states import exit_reason


def test_a_token_is_found_only_as_a_whole_variable() -> None:
    block = b"HOME=/root\0PAAS_RUN_ID=node-1-abc\0X_PAAS_RUN_ID=nope\0"
    assert token_in(block, "PAAS_RUN_ID") == "node-1-abc"
    assert token_in(b"PAAS_RUN_ID=first\0PAAS_RUN_ID=second", "PAAS_RUN_ID") == "first"
    assert token_in(b"X_PAAS_RUN_ID=nope\0", "PAAS_RUN_ID") is None
    assert token_in(b"PAAS_RUN_ID=unterminated", "PAAS_RUN_ID") == "unterminated"
    assert token_in(b"", "PAAS_RUN_ID") is None


def test_the_registry_of_instance_processes_stays_bounded() -> None:
    children = OwnChildren()
    for pid in range(REMEMBERED + 500):
        children.mark([Carrier(pid=pid, token="t", pgid=pid, sid=pid)])
        children.add_group(100_000 + pid)
    assert len(children.orphans) == REMEMBERED and len(children.groups) == REMEMBERED
    newest = REMEMBERED + 499
    assert children.is_instance_process(newest, 1, 1)
    assert not children.is_instance_process(0, 1, 1)  # the oldest were forgotten
    children.forget(newest)
    assert newest not in children.orphans


def test_no_zombie_is_reaped_while_a_spawn_is_in_flight() -> None:
    children = OwnChildren()
    with children.spawning():
        assert children.in_flight == 1
        with pytest.raises(RuntimeError), children.spawning():
            raise RuntimeError("the spawn failed")
        assert children.in_flight == 1
    assert children.in_flight == 0


async def test_sweeps_asked_for_while_one_runs_share_the_next_scan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scans: list[frozenset[str]] = []
    started, release = threading.Event(), threading.Event()

    def fake_kill(var: str, tokens: Collection[str]) -> list[Carrier]:
        scans.append(frozenset(tokens))
        started.set()
        if len(scans) == 1:
            release.wait(10)  # the first scan is slow; three more sweeps queue meanwhile
        return [Carrier(pid=1000 + i, token=t, pgid=1, sid=1) for i, t in enumerate(tokens)]

    monkeypatch.setattr(orphans, "kill_carriers", fake_kill)
    sweeper = Sweeper(children=OwnChildren())
    first = asyncio.create_task(sweeper.sweep("a"))
    assert await asyncio.to_thread(started.wait, 10)
    later = [asyncio.create_task(sweeper.sweep(token)) for token in ("b", "c", "c")]
    await asyncio.sleep(0)  # each has asked for its sweep
    release.set()
    assert [c.token for c in await first] == ["a"]
    results = await asyncio.gather(*later)
    assert scans == [frozenset({"a"}), frozenset({"b", "c"})]
    assert [[c.token for c in found] for found in results] == [["b"], ["c"], ["c"]]


def test_exit_reasons_say_what_the_shell_codes_mean() -> None:
    assert exit_reason(1) == "exit 1"
    assert exit_reason(127).startswith("exit 127: command not found")
    assert exit_reason(126) == "exit 126: command not executable"
    assert exit_reason(-9) == "signal 9 (SIGKILL)"
