"""The instance state machine without a process: transitions, backoff, the boot timeout,
how exits are told and how a stop escalates, on a fake clock and fake processes
(fakehost.py). Real processes are in tests/integration/test_agent_supervisor.py."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Callable

import pytest

from paas.agent.config import AgentConfig
from paas.agent.logbuffer import LogHub
from paas.agent.ports import Lease, PortsExhausted
from paas.agent.states import (
    TRANSITIONS,
    Backoff,
    State,
    TransitionError,
    check_transition,
    classify_exit,
)
from paas.agent.supervisor import Instance
from paas.proto import paas_pb2 as pb
from tests.unit.fakehost import FakeChild, FakeClock, FakeProcesses

PORT = 5003


class Harness:
    """One Instance on a fake clock and fake processes, with what it reported."""

    def __init__(
        self,
        kind: str = "worker",
        *,
        boot_timeout: float = 60.0,
        stop_grace: float = 30.0,
        port_for: Callable[[], Lease] | None = None,
    ) -> None:
        self.clock = FakeClock()
        self.processes = FakeProcesses(self.clock)
        self.config = AgentConfig(
            join=[], name="node-1", boot_timeout=boot_timeout, stop_grace=stop_grace
        )
        self.buffer = LogHub("node-1", 1000).buffer("shop", f"{kind}.1")
        self.reported: list[State] = []
        self.reported_at: list[float] = []  # the clock's monotonic seconds of each report
        self.reasons: list[str] = []
        assignment = pb.Assignment(
            app="shop", name=f"{kind}.1", type=kind, incarnation=1, command="serve"
        )
        self.instance = Instance(
            assignment,
            config=self.config,
            buffer=self.buffer,
            port_for=port_for or (lambda: Lease(PORT)),
            base_env={},
            report=self._report,
            processes=self.processes,
            clock=self.clock,
        )

    def _report(self, instance: Instance) -> None:
        self.reported.append(instance.state)
        self.reported_at.append(self.clock.monotonic())
        self.reasons.append(instance.reason)

    def first_at(self, state: State) -> float:
        """When `state` was first reported."""
        return self.reported_at[self.reported.index(state)]

    def first_reason(self, state: State) -> str:
        """The reason given when `state` was first reported."""
        return self.reasons[self.reported.index(state)]

    @property
    def state(self) -> State:
        return self.instance.state

    @property
    def child(self) -> FakeChild:
        return self.processes.children[-1]

    def texts(self) -> list[str]:
        return [line.text for line in self.buffer.lines()]

    async def until(self, state: State, limit: float = 3600.0) -> None:
        """Until the instance is in `state`, or has passed through it, from now on."""
        mark = len(self.reported)
        await self.clock.run_until(
            lambda: self.state is state or state in self.reported[mark:], limit
        )

    async def stop(self, reason: str = "stop asked") -> None:
        """Stop, driving the fake clock until the instance is stopped."""
        task = asyncio.ensure_future(self.instance.stop(reason))
        await self.clock.run_until(task.done)
        await task


def edges() -> list[tuple[State, State]]:
    return [(a, b) for a, targets in TRANSITIONS.items() for b in sorted(targets, key=str)]


# ------------------------------------------------------------------ transitions


@pytest.mark.parametrize(("current", "target"), edges(), ids=lambda s: s.label)
def test_every_edge_of_the_table_is_allowed(current: State, target: State) -> None:
    check_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [(a, b) for a, b in itertools.product(State, State) if b not in TRANSITIONS[a] and a is not b],
    ids=lambda s: s.label,
)
def test_every_other_edge_is_refused(current: State, target: State) -> None:
    with pytest.raises(TransitionError, match=f"from {current.label} to {target.label}"):
        check_transition(current, target)


def test_the_table_covers_every_state_and_stopped_is_final() -> None:
    assert set(TRANSITIONS) == set(State)
    assert TRANSITIONS[State.STOPPED] == frozenset()


async def test_an_instance_refuses_an_edge_the_table_lacks() -> None:
    harness = Harness()
    with pytest.raises(
        TransitionError, match=r"<Instance shop/worker.1 #1 pending>.*pending to up"
    ):
        harness.instance._to(State.UP)
    assert harness.state is State.PENDING and harness.reported == []


async def test_a_worker_goes_up_crashes_restarts_and_stops_along_the_table() -> None:
    harness = Harness()
    harness.instance.start()
    await harness.until(State.UP)
    first = harness.child
    assert first.env["PORT"] == str(PORT) and first.env["DYNO"] == "worker.1"
    first.exit(1)
    await harness.clock.run_until(lambda: len(harness.processes.children) == 2)
    await harness.until(State.UP)
    await harness.stop()
    assert harness.reported[0] is State.STARTING
    for before, after in itertools.pairwise([State.PENDING, *harness.reported]):
        if before is not after:  # a status report without a change (the spawn's pid)
            assert after in TRANSITIONS[before], (before, after)
    assert harness.state is State.STOPPED and harness.instance.restarts == 1
    assert harness.instance.reason == "stop asked"


# ------------------------------------------------------------------ backoff


def test_backoff_restarts_at_once_first_then_doubles_from_one_second() -> None:
    backoff = Backoff(rand=lambda: 0.5)  # jitter 0
    assert [backoff.next_delay(0.0) for _ in range(6)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0]


def test_backoff_jitter_is_within_twenty_percent() -> None:
    low, high = Backoff(rand=lambda: 0.0), Backoff(rand=lambda: 1.0)
    assert [low.next_delay(0.0) for _ in range(3)] == [0.0, 0.8, 1.6]
    assert [high.next_delay(0.0) for _ in range(3)] == [0.0, 1.2, 2.4]


def test_backoff_is_capped_at_five_minutes() -> None:
    backoff = Backoff(rand=lambda: 1.0)
    delays = [backoff.next_delay(0.0) for _ in range(100)]
    assert max(delays) == 300.0 and delays[-1] == 300.0


def test_backoff_starts_over_after_ten_minutes_up() -> None:
    backoff = Backoff(rand=lambda: 0.5)
    for _ in range(5):
        backoff.next_delay(0.0)
    assert backoff.next_delay(599.0) == 16.0  # not up long enough
    assert backoff.next_delay(600.0) == 0.0  # up for the reset period: at once again
    assert backoff.next_delay(0.0) == 1.0


async def test_a_crash_loop_restarts_at_once_then_waits_one_second_then_two() -> None:
    harness = Harness()
    harness.instance._backoff.rand = lambda: 0.5
    harness.instance.start()
    starts: list[float] = []
    for _ in range(4):
        await harness.clock.run_until(lambda: len(harness.processes.children) > len(starts))
        starts.append(harness.clock.monotonic())
        await harness.until(State.UP)
        harness.child.exit(1)
    assert [round(b - a, 3) for a, b in itertools.pairwise(starts)] == [0.0, 1.0, 2.0]
    texts = harness.texts()
    assert "Restarting now" in texts and "Restarting in 1s" in texts and "Restarting in 2s" in texts
    await harness.until(State.BACKOFF)
    assert harness.instance.reason == "restarting in 4s"
    await harness.stop()
    assert harness.state is State.STOPPED and harness.instance.restarts == 3


async def test_backoff_shows_when_the_next_start_is() -> None:
    harness = Harness()
    harness.instance._backoff.rand = lambda: 0.5
    harness.instance.start()
    await harness.until(State.UP)
    harness.child.exit(1)
    await harness.clock.run_until(lambda: len(harness.processes.children) == 2)
    harness.child.exit(1)
    await harness.until(State.BACKOFF)
    status = harness.instance.status()
    assert status.reason == "restarting in 1s"
    assert status.next_start == pytest.approx(harness.clock.now() + 1.0)
    await harness.stop()


# ------------------------------------------------------------------ the boot timeout


async def test_a_web_instance_that_never_listens_is_crashed_after_the_boot_timeout() -> None:
    harness = Harness("web", boot_timeout=60.0)
    harness.instance.start()
    await harness.until(State.CRASHED)
    reason = f"boot timeout: did not listen on {PORT} within 60s"
    assert harness.first_reason(State.CRASHED) == reason
    assert 60.0 <= harness.first_at(State.CRASHED) < 61.5
    first = harness.processes.children[0]
    # Killed at the deadline (and its group once more with the crash), never asked to stop.
    assert set(harness.processes.signals(first.pid)) == {
        (signal.SIGKILL, harness.first_at(State.CRASHED))
    }
    assert State.UP not in harness.reported
    assert reason in harness.texts()
    assert harness.instance.last_exit == "signal 9 (SIGKILL)"
    await harness.stop()


async def test_a_web_instance_is_up_once_it_listens_on_its_port() -> None:
    harness = Harness("web", boot_timeout=60.0)
    harness.instance.start()
    await harness.clock.run_until(lambda: bool(harness.processes.children))
    await harness.clock.advance(5.0)
    assert harness.state is State.STARTING
    harness.processes.listening.add(PORT)
    await harness.until(State.UP, limit=5.0)
    assert harness.clock.monotonic() < 60.0
    await harness.stop()


async def web_up() -> Harness:
    """A web instance up: its process listens on its port."""
    harness = Harness("web")
    harness.instance.start()
    await harness.clock.run_until(lambda: bool(harness.processes.children))
    harness.processes.listening.add(PORT)
    await harness.until(State.UP, limit=5.0)
    return harness


async def test_a_web_instance_that_stops_listening_soon_after_up_is_killed_as_unhealthy() -> None:
    harness = await web_up()
    up_at = harness.first_at(State.UP)
    harness.processes.listening.discard(PORT)  # it went up, then stopped answering
    await harness.until(State.CRASHED, limit=10.0)
    reason = f"unhealthy: did not listen on {PORT} at 2 checks in a row within 3s of going up"
    assert harness.first_reason(State.CRASHED) == reason
    assert reason in harness.texts()
    first = harness.processes.children[0]
    assert signal.SIGKILL in {signum for signum, _ in harness.processes.signals(first.pid)}
    # Both checks end within min_healthy: a copy that fails them is gone before the
    # rollout would promote it.
    assert harness.first_at(State.CRASHED) - up_at <= 3.0
    await harness.stop()


async def test_a_web_instance_that_answers_through_min_healthy_is_not_checked_after() -> None:
    harness = await web_up()
    await harness.clock.advance(3.5)  # past min_healthy (3 s by default), answering
    harness.processes.listening.discard(PORT)
    await harness.clock.advance(60.0)
    assert harness.state is State.UP
    assert State.CRASHED not in harness.reported
    assert harness.processes.signals(harness.child.pid) == []
    await harness.stop()


async def test_one_failed_check_after_up_is_forgiven() -> None:
    harness = await web_up()
    harness.processes.listening.discard(PORT)
    await harness.clock.advance(1.6)  # the check at 0.5 s fails, taking its whole 1 s
    harness.processes.listening.add(PORT)  # the next, at 2 s, passes
    await harness.clock.advance(30.0)
    assert harness.state is State.UP
    assert State.CRASHED not in harness.reported
    await harness.stop()


async def test_a_worker_needs_no_port_to_be_up() -> None:
    harness = Harness("worker")
    harness.instance.start()
    await harness.until(State.UP, limit=0.0)
    await harness.stop()


# ------------------------------------------------------------------ how an exit is told


@pytest.mark.parametrize(
    ("returncode", "last_exit", "lines", "reason"),
    [
        (0, "exit 0", ["Process exited with status 0"], "exit 0"),
        (1, "exit 1", ["Process exited with status 1"], "exit 1"),
        (
            127,
            "exit 127",
            [
                "Process exited with status 127",
                "exit 127: command not found (its last output says which)",
            ],
            "exit 127: command not found (its last output says which)",
        ),
        (
            126,
            "exit 126",
            ["Process exited with status 126", "exit 126: command not executable"],
            "exit 126: command not executable",
        ),
        (-9, "signal 9 (SIGKILL)", ["Process exited on signal 9 (SIGKILL)"], "signal 9 (SIGKILL)"),
        (
            -11,
            "signal 11 (SIGSEGV)",
            ["Process exited on signal 11 (SIGSEGV)"],
            "signal 11 (SIGSEGV)",
        ),
        (-200, "signal 200", ["Process exited on signal 200"], "signal 200"),
    ],
)
def test_an_exit_by_itself_is_a_crash_told_by_its_code_or_signal(
    returncode: int, last_exit: str, lines: list[str], reason: str
) -> None:
    ending = classify_exit(returncode, stopping=False)
    assert ending.crashed and ending.last_exit == last_exit
    assert list(ending.lines) == lines and ending.reason == reason


@pytest.mark.parametrize("returncode", [0, 1, -15, -9])
def test_an_exit_while_stopping_is_no_crash(returncode: int) -> None:
    ending = classify_exit(returncode, stopping=True)
    assert not ending.crashed and ending.reason == ""
    assert len(ending.lines) == 1 and ending.lines[0].startswith("Process exited")


def test_an_exit_the_agent_caused_is_a_crash_for_its_reason() -> None:
    ending = classify_exit(
        -9, stopping=False, failure="boot timeout: did not listen on 5 within 1s"
    )
    assert ending.crashed and ending.reason.startswith("boot timeout")
    assert ending.lines == ("Process exited on signal 9 (SIGKILL)",)


async def test_a_crashed_instance_keeps_its_exit_and_last_lines() -> None:
    harness = Harness()
    harness.instance._backoff.attempts = 1  # the next restart waits
    harness.instance.start()
    await harness.until(State.UP)
    started = harness.clock.now()
    harness.child.write("booting\nfailed: no database\n", "stderr")
    await harness.clock.advance(2.5)
    harness.child.exit(3)
    await harness.until(State.BACKOFF)
    status = harness.instance.status()
    assert status.last_exit == "exit 3" and status.pid == 0
    assert list(status.last_lines) == ["booting", "failed: no database"]
    assert status.ran_for == 2.5 and status.exited_at == started + 2.5
    assert harness.child.closed
    await harness.stop()


async def test_a_stopped_instance_is_stopped_not_crashed() -> None:
    harness = Harness()
    harness.instance.start()
    await harness.until(State.UP)
    await harness.stop("no longer assigned to this node")
    assert State.CRASHED not in harness.reported
    assert harness.reported[-2:] == [State.STOPPING, State.STOPPED]
    assert harness.instance.reason == "no longer assigned to this node"
    assert harness.instance.last_exit == "signal 15 (SIGTERM)"


async def test_a_spawn_failure_is_a_crash_with_its_reason() -> None:
    harness = Harness()
    harness.processes.spawn_error = "cannot start: [Errno 2] No such file or directory: '/gone'"
    harness.instance.start()
    await harness.until(State.CRASHED)
    assert harness.first_reason(State.CRASHED).startswith("cannot start: [Errno 2]")
    await harness.stop()


async def test_no_free_port_is_a_crash_naming_the_range() -> None:
    def exhausted() -> Lease:
        raise PortsExhausted("no free port in 5000-5001: widen the agent's --ports range")

    harness = Harness("web", port_for=exhausted)
    harness.instance.start()
    await harness.until(State.CRASHED)
    assert "--ports" in harness.first_reason(State.CRASHED) and not harness.processes.children
    await harness.stop()


async def test_a_port_that_moved_is_said_in_the_log() -> None:
    leases = iter([Lease(PORT), Lease(5017, taken=PORT)])
    harness = Harness(port_for=lambda: next(leases))
    harness.instance.start()
    await harness.until(State.UP)
    harness.child.exit(1)
    await harness.clock.run_until(lambda: len(harness.processes.children) == 2)
    assert harness.child.env["PORT"] == "5017" and harness.instance.port == 5017
    assert f"port {PORT} is taken by another process; using 5017" in harness.texts()
    await harness.stop()


# ------------------------------------------------------------------ stop escalation


async def test_stop_sends_sigterm_to_the_group_and_nothing_more_if_it_exits() -> None:
    harness = Harness(stop_grace=30.0)
    harness.instance.start()
    await harness.until(State.UP)
    pgid = harness.child.pid
    await harness.stop()
    assert harness.processes.signals(pgid) == [(signal.SIGTERM, 0.0)]
    assert "Stopping all processes with SIGTERM" in harness.texts()
    assert not any("SIGKILL" in text for text in harness.texts())


async def test_stop_sends_sigkill_to_the_group_after_the_grace() -> None:
    harness = Harness(stop_grace=30.0)
    harness.processes.ignore_sigterm = True
    harness.instance.start()
    await harness.until(State.UP)
    await harness.clock.advance(7.0)
    pgid = harness.child.pid
    await harness.stop()
    assert harness.processes.signals(pgid) == [(signal.SIGTERM, 7.0), (signal.SIGKILL, 37.0)]
    texts = harness.texts()
    assert (
        "Error R12 (Exit timeout) -> At least one process failed to exit within 30s of SIGTERM"
        in texts
    )
    assert "Stopping remaining processes with SIGKILL" in texts
    assert harness.state is State.STOPPED
    assert harness.instance.last_exit == "signal 9 (SIGKILL)"


async def test_a_stop_while_starting_ends_the_boot_wait() -> None:
    harness = Harness("web")
    harness.instance.start()
    await harness.clock.run_until(lambda: bool(harness.processes.children))
    await harness.stop()
    assert State.UP not in harness.reported
    assert harness.reported[-2:] == [State.STOPPING, State.STOPPED]


async def test_a_stop_in_backoff_starts_nothing_more() -> None:
    harness = Harness()
    harness.instance._backoff.attempts = 1
    harness.instance.start()
    await harness.until(State.UP)
    harness.child.exit(1)
    await harness.until(State.BACKOFF)
    await harness.stop()
    assert len(harness.processes.children) == 1 and harness.state is State.STOPPED


async def test_a_pending_instance_stops_without_a_process() -> None:
    harness = Harness()
    await harness.instance.stop("never started")
    assert harness.reported == [State.STOPPED] and not harness.processes.children
