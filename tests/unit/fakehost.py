"""Fakes of the supervisor's seam (paas.agent.processes): a clock that only moves when
told (or when everything waits on it), and processes that are futures.

    clock = FakeClock()
    processes = FakeProcesses(clock)
    instance = Instance(assignment, ..., processes=processes, clock=clock)
    instance.start()
    await clock.run_until(lambda: instance.state is State.UP)
    processes.children[-1].exit(1)          # the process "crashes"
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import signal
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from paas.agent.orphans import Carrier
from paas.agent.processes import SpawnError
from paas.agent.usage import Usage

# Loop turns that let every task go as far as it can without time passing.
SETTLE_TURNS = 100
WALL_START = 1_800_000_000.0


class FakeClock:
    """Virtual time: `sleep` and `wait` end only when the clock is advanced past them."""

    def __init__(self) -> None:
        self.elapsed = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return WALL_START + self.elapsed

    def monotonic(self) -> float:
        return self.elapsed

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.elapsed + seconds, next(self._seq), wake))
        await wake

    async def wait(self, awaitable: Awaitable[Any], timeout: float) -> bool:  # noqa: ASYNC109
        task = asyncio.ensure_future(awaitable)
        timer = asyncio.ensure_future(self.sleep(timeout))
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not task.done():
                task.cancel()
        if task.done() and not task.cancelled():
            task.result()
            return True
        return False

    async def settle(self) -> None:
        """Let every task run until it waits (on this clock, or on a fake process)."""
        for _ in range(SETTLE_TURNS):
            await asyncio.sleep(0)

    def _next_wake(self) -> float | None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)  # cancelled meanwhile
        return self._sleepers[0][0] if self._sleepers else None

    def _wake_due(self) -> None:
        while self._sleepers and self._sleepers[0][0] <= self.elapsed:
            _, _, wake = heapq.heappop(self._sleepers)
            if not wake.done():
                wake.set_result(None)

    async def advance(self, seconds: float) -> None:
        """Move time on by `seconds`, waking each sleeper at its own moment."""
        target = self.elapsed + seconds
        await self.settle()
        while (when := self._next_wake()) is not None and when <= target:
            self.elapsed = max(self.elapsed, when)
            self._wake_due()
            await self.settle()
        self.elapsed = target
        await self.settle()

    async def run_until(self, condition: Callable[[], bool], limit: float = 3600.0) -> None:
        """Jump from one wake-up to the next until `condition` holds (at most `limit` s)."""
        deadline = self.elapsed + limit
        while True:
            await self.settle()
            if condition():
                return
            when = self._next_wake()
            if when is None or when > deadline:
                raise AssertionError(
                    f"condition not met by {self.elapsed:.2f}s (virtual); nothing left to wake"
                )
            self.elapsed = max(self.elapsed, when)
            self._wake_due()


@dataclass(frozen=True)
class Sent:
    """A signal the supervisor sent to a group, and when (the clock's monotonic seconds)."""

    pgid: int
    signum: int
    at: float


@dataclass
class FakeChild:
    """A 'process': its output is fed by the test, its exit is a future."""

    pid: int
    command: str
    env: dict[str, str]
    stdout: asyncio.StreamReader = field(default_factory=asyncio.StreamReader)
    stderr: asyncio.StreamReader = field(default_factory=asyncio.StreamReader)
    exited: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    returncode: int | None = None
    ignores_sigterm: bool = False
    closed: bool = False

    def write(self, text: str, stream: str = "stdout") -> None:
        (self.stdout if stream == "stdout" else self.stderr).feed_data(text.encode())

    def exit(self, returncode: int) -> None:
        if self.returncode is not None:
            return
        self.returncode = returncode
        self.stdout.feed_eof()
        self.stderr.feed_eof()
        self.exited.set_result(None)

    def cut_off(self, stream: str) -> bool:
        return False  # its pipes end with its exit

    def close(self) -> None:
        self.closed = True


class FakeProcesses:
    """Processes as the kernel would treat them, minus the kernel.

    SIGKILL ends a child at once (-9); SIGTERM ends it (-15) unless it ignores it.
    A port accepts connections once it is in `listening`; until then a connection
    attempt takes its whole timeout.
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.children: list[FakeChild] = []
        self.sent: list[Sent] = []
        self.listening: set[int] = set()
        self.healthy: set[tuple[int, str]] = set()  # (port, path) answering 2xx
        self.spawn_error = ""  # when set, spawn fails with it
        self.ignore_sigterm = False  # children spawned from now on ignore SIGTERM
        self._pids = itertools.count(1000)

    def child(self, pgid: int) -> FakeChild:
        return next(child for child in self.children if child.pid == pgid)

    async def spawn(self, command: str, *, cwd: str | None, env: dict[str, str]) -> FakeChild:
        await asyncio.sleep(0)
        if self.spawn_error:
            raise SpawnError(self.spawn_error)
        child = FakeChild(next(self._pids), command, env, ignores_sigterm=self.ignore_sigterm)
        self.children.append(child)
        return child

    def signal_group(self, pgid: int, signum: int) -> None:
        self.sent.append(Sent(pgid, signum, self.clock.monotonic()))
        child = self.child(pgid)
        if signum == signal.SIGKILL:
            child.exit(-signal.SIGKILL)
        elif signum == signal.SIGTERM and not child.ignores_sigterm:
            child.exit(-signal.SIGTERM)

    def signals(self, pgid: int) -> list[tuple[signal.Signals, float]]:
        return [(signal.Signals(s.signum), s.at) for s in self.sent if s.pgid == pgid]

    async def alive(self, pgid: int, pids: Collection[int] = ()) -> bool:
        await asyncio.sleep(0)
        return self.child(pgid).returncode is None

    async def terminate_escaped(self, token: str, pgid: int) -> list[Carrier]:
        await asyncio.sleep(0)
        return []

    async def sweep(self, token: str) -> list[Carrier]:
        await asyncio.sleep(0)
        return []

    async def accepts(self, port: int, timeout: float) -> bool:  # noqa: ASYNC109
        if port in self.listening:
            await asyncio.sleep(0)
            return True
        await self.clock.sleep(timeout)  # as a connect whose SYN nobody answers
        return port in self.listening

    async def answers(self, port: int, path: str, timeout: float) -> bool:  # noqa: ASYNC109
        """A fake HTTP check: the port answers `path` once it is in `healthy`."""
        if (port, path) in self.healthy:
            await asyncio.sleep(0)
            return True
        await self.clock.sleep(timeout)
        return (port, path) in self.healthy

    async def usage(self, pgids: set[int]) -> dict[int, Usage]:
        return {pgid: Usage(0.0, 0) for pgid in pgids}
