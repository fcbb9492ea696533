"""The instance lifecycle's decisions, as plain values: states, edges, backoff, exits.

The states and the one table of the transitions between them, the delays
between crash restarts, and how an exit is told (its words, and whether it is a
crash). Every function here decides and does no I/O: it never touches a
process, a clock or the network (a random source is given to Backoff), so
supervisor.py does and this module is unit-tested as a table.

    pending → starting → up → (exit) crashed → backoff → starting …
    stopping → stopped

An instance whose slug is not on the node yet waits in pending (the reason says
it is fetched); a fetch that fails goes pending → backoff and, when the backoff
ends, back to pending to fetch again, as a crashed run goes back to starting.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from paas.common.processes import describe_exit
from paas.proto import paas_pb2 as pb


class State(Enum):
    """Instance states, with the numbers of proto InstanceState."""

    PENDING = pb.PENDING
    STARTING = pb.STARTING
    UP = pb.UP
    CRASHED = pb.CRASHED
    BACKOFF = pb.BACKOFF
    STOPPING = pb.STOPPING
    STOPPED = pb.STOPPED

    @property
    def label(self) -> str:
        return self.name.lower()


TRANSITIONS: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.STARTING, State.BACKOFF, State.STOPPED}),
    State.STARTING: frozenset({State.UP, State.CRASHED, State.STOPPING}),
    State.UP: frozenset({State.CRASHED, State.STOPPING}),
    State.CRASHED: frozenset({State.PENDING, State.STARTING, State.BACKOFF, State.STOPPED}),
    State.BACKOFF: frozenset({State.PENDING, State.STARTING, State.STOPPED}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.STOPPED: frozenset(),
}


class TransitionError(RuntimeError):
    """An edge TRANSITIONS does not have: a bug in the supervisor, never input."""


def check_transition(current: State, target: State) -> None:
    """Raise TransitionError unless `current` → `target` is an edge of TRANSITIONS."""
    if target not in TRANSITIONS[current]:
        raise TransitionError(f"no transition from {current.label} to {target.label}")


def seconds(value: float) -> str:
    """`4`, `0.5`, `12`: a duration as lifecycle lines show it."""
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


@dataclass
class Backoff:
    """Delays between crash restarts: 0, then base doubling with jitter, up to cap."""

    base: float = 1.0
    cap: float = 300.0
    reset_after: float = 600.0
    jitter: float = 0.2  # +-20 %
    attempts: int = 0
    rand: Callable[[], float] = field(default=random.random, repr=False)

    def next_delay(self, uptime: float) -> float:
        """The wait before the next start, after a run that was up for `uptime` seconds."""
        if uptime >= self.reset_after:
            self.attempts = 0
        attempt, self.attempts = self.attempts, self.attempts + 1
        if attempt == 0:
            return 0.0
        delay = self.base * 2 ** min(attempt - 1, 32)
        delay *= 1 + self.jitter * (2 * self.rand() - 1)
        return float(min(self.cap, delay))


def exit_reason(returncode: int) -> str:
    """Why a run ended, for InstanceStatus.reason: the exit, and what the shell's codes mean."""
    described = describe_exit(returncode)
    if returncode == 127:
        return f"{described}: command not found (its last output says which)"
    if returncode == 126:
        return f"{described}: command not executable"
    return described


@dataclass(frozen=True)
class Ending:
    """How one run ended, told: its last_exit, the lines to log, and whether it crashed."""

    last_exit: str  # `exit 1`, `signal 9 (SIGKILL)`
    lines: tuple[str, ...]  # lifecycle lines, in order
    crashed: bool  # False: it was stopped (the stop's reason stands)
    reason: str  # why it crashed ("" when stopped)


def classify_exit(returncode: int, *, stopping: bool, failure: str = "") -> Ending:
    """Sort an exit: stopped on request, or crashed (by itself, or ended by the agent
    for `failure`, as a boot timeout)."""
    last_exit = describe_exit(returncode)
    if returncode < 0:
        lines = [f"Process exited on {last_exit}"]
    else:
        lines = [f"Process exited with status {returncode}"]
    if stopping:
        # Asked to stop: whatever the status, this is no crash.
        return Ending(last_exit, tuple(lines), crashed=False, reason="")
    if failure:
        # The agent ended it (the failure was logged when it did).
        return Ending(last_exit, tuple(lines), crashed=True, reason=failure)
    # It ended by itself: say what the shell's code means, if it means more.
    reason = exit_reason(returncode)
    if reason != last_exit:
        lines.append(reason)
    return Ending(last_exit, tuple(lines), crashed=True, reason=reason)
