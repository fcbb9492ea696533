"""Benchmark: one agent supervising N small sleepers (N = 200), against a floor.

The agent is the real `paas agent` (its own process, with its reaper sidecar,
gRPC server and session), joined to a minimal fake scheduler in this process
that pushes one desired set of N `worker.i` instances running `sleep 1000`.

- Start: from pushing the desired set until the scheduler has received an `up`
  status for every instance. The floor, measured in the same run, is N
  `asyncio.create_subprocess_exec` spawns of `sleep 1000` from this one Python
  process (with stdout/stderr pipes and a new session, as a supervisor needs),
  until all are spawned. The ratio is the result.
- At rest: the agent's RSS and CPU% over a window (5 s) with the N instances up.
  The agent samples CPU and RSS of every instance's process group every 5 s
  (its default), so the window includes sampling; the cost of one such pass
  over the N groups, measured here with the agent's own code, is printed too.

    .venv/bin/python bench/supervise.py [--n 200] [--rest 5]

Every process it starts is stopped before it exits, and it checks with psutil
that none is left; a leftover is killed, named and makes the exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import psutil

from paas.agent.ports import can_bind
from paas.agent.supervisor import State
from paas.agent.usage import sample_groups
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc

APP = "bench"
COMMAND = "sleep 1000"


class BenchError(RuntimeError):
    """The benchmark could not measure what it set out to; the message says why."""


class FakeScheduler(pb_grpc.SchedulerServicer):
    """Scheduler.Session only: takes the agent's hello and statuses, sends desired sets."""

    def __init__(self) -> None:
        self.hello = asyncio.Event()
        self.states: dict[tuple[str, int], int] = {}  # (name, incarnation) -> state
        self.pids: dict[tuple[str, int], int] = {}
        self.up_since: dict[tuple[str, int], float] = {}  # the agent's wall-clock stamp
        self.changed = asyncio.Event()
        self._outgoing: asyncio.Queue[pb.SchedulerMessage] = asyncio.Queue()

    def push(self, generation: int, instances: list[pb.Assignment]) -> None:
        desired = pb.DesiredSet(generation=generation, instances=instances)
        self._outgoing.put_nowait(pb.SchedulerMessage(desired=desired))

    def count(self, state: int, incarnation: int) -> int:
        return sum(found == state and key[1] == incarnation for key, found in self.states.items())

    async def until(self, state: int, incarnation: int, n: int, timeout: float) -> float:  # noqa: ASYNC109
        """Wait until `n` instances of `incarnation` are in `state`; the monotonic time then."""
        deadline = time.monotonic() + timeout
        while self.count(state, incarnation) < n:
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(
                    f"only {self.count(state, incarnation)} of {n} instances reached state "
                    f"{State(state).label} within {timeout:g} s"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        return time.monotonic()

    async def Session(
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: Any
    ) -> AsyncIterator[pb.SchedulerMessage]:
        first = await anext(request_iterator)
        if not first.HasField("hello"):
            raise BenchError("the agent did not start its session with hello")
        self.hello.set()

        async def read() -> None:
            async for message in request_iterator:
                if message.HasField("status"):
                    status = message.status
                    key = (status.name, status.incarnation)
                    self.states[key] = status.state
                    if status.state == pb.UP:
                        self.up_since.setdefault(key, status.since)
                    if status.pid:
                        self.pids[key] = status.pid
                    self.changed.set()

        reader = asyncio.create_task(read())
        try:
            while not reader.done():
                getter = asyncio.create_task(self._outgoing.get())
                await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                yield getter.result()
        finally:
            reader.cancel()


def free_range(width: int) -> tuple[int, int]:
    rng = random.Random()
    for _ in range(200):
        low = rng.randrange(20000, 32000 - width)
        if all(can_bind(port) for port in range(low, low + width)):
            return low, low + width - 1
    raise BenchError(f"no {width} free ports in a row between 20000 and 32000")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ---------------------------------------------------------------- the floor


async def measure_floor(n: int) -> float:
    """Seconds to spawn `n` sleepers from this process; they are killed and waited for."""
    processes: list[asyncio.subprocess.Process] = []
    started = time.monotonic()
    try:
        for _ in range(n):
            processes.append(
                await asyncio.create_subprocess_exec(
                    *COMMAND.split(),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    start_new_session=True,
                )
            )
        return time.monotonic() - started
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        for process in processes:
            await process.wait()


# ---------------------------------------------------------------- the agent


async def start_agent(root: Path, scheduler_address: str, n: int) -> asyncio.subprocess.Process:
    low, high = free_range(n + 50)
    listen = f"127.0.0.1:{free_range(1)[0]}"
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "paas", "agent",
        "--join", scheduler_address, "--name", "bench-1", "--listen", listen,
        "--ports", f"{low}-{high}", "--capacity", str(max(n, 256)),
        "--state-dir", str(root / "state"), "--stop-grace", "10",
        "--log-level", "warning", "--insecure",  # the fake scheduler speaks plaintext
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


def assignments(n: int, incarnation: int) -> list[pb.Assignment]:
    return [
        pb.Assignment(
            app=APP,
            name=f"worker.{i}",
            type="worker",
            incarnation=incarnation,
            release=1,
            command=COMMAND,
            dir="/tmp",
        )
        for i in range(1, n + 1)
    ]


def sidecar_of(agent: psutil.Process) -> psutil.Process | None:
    for child in agent.children():
        with contextlib.suppress(psutil.Error):
            if "paas.agent.reaper" in " ".join(child.cmdline()):
                return child
    return None


async def at_rest(agent: psutil.Process, seconds: float) -> tuple[float, int, int]:
    """CPU% of the agent over `seconds`, its peak and final RSS (sampled every 0.5 s)."""
    agent.cpu_percent(None)
    peak = agent.memory_info().rss
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        peak = max(peak, agent.memory_info().rss)
    cpu = agent.cpu_percent(None)
    return cpu, peak, agent.memory_info().rss


async def bench(args: argparse.Namespace, root: Path, seen: set[int]) -> None:
    n: int = args.n
    print(
        f"paas bench supervise: one agent, {n} instances of `{COMMAND}`, "
        f"{args.rounds} rounds (medians)"
    )
    await measure_floor(min(n, 20))  # warm the page cache for both

    scheduler = FakeScheduler()  # type: ignore[abstract]  # only Session is served
    server = grpc.aio.server()
    pb_grpc.add_SchedulerServicer_to_server(scheduler, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    agent_process = await start_agent(root, f"127.0.0.1:{port}", n)
    seen.add(agent_process.pid)
    try:
        hello = asyncio.create_task(scheduler.hello.wait())
        exited = asyncio.create_task(agent_process.wait())
        await asyncio.wait({hello, exited}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        hello.cancel()
        exited.cancel()
        if not scheduler.hello.is_set():
            raise BenchError(
                f"the agent did not join (exit status {agent_process.returncode}); "
                "see its messages above"
            )
        agent = psutil.Process(agent_process.pid)
        idle_rss = agent.memory_info().rss

        floors: list[float] = []
        starts: list[float] = []
        stops: list[float] = []
        stamped: list[float] = []  # when the agent stamped the last one up
        for incarnation in range(1, args.rounds + 1):
            floors.append(await measure_floor(n))
            pushed, pushed_wall = time.monotonic(), time.time()
            scheduler.push(2 * incarnation - 1, assignments(n, incarnation))
            starts.append(await scheduler.until(pb.UP, incarnation, n, args.timeout) - pushed)
            stamped.append(
                max(since for (_, i), since in scheduler.up_since.items() if i == incarnation)
                - pushed_wall
            )
            seen.update(scheduler.pids.values())
            if incarnation == args.rounds:
                rest = await measure_rest(args, agent, idle_rss, scheduler, incarnation)
            stopping = time.monotonic()
            scheduler.push(2 * incarnation, [])
            stops.append(await scheduler.until(pb.STOPPED, incarnation, n, args.timeout) - stopping)
            print(
                f"  round {incarnation}: floor {floors[-1]:.2f} s, agent {starts[-1]:.2f} s "
                f"({starts[-1] / floors[-1]:.2f}x), stop {stops[-1]:.2f} s"
            )
        floor, start = statistics.median(floors), statistics.median(starts)
        print(
            f"floor: {n} spawns in {floor:6.2f} s "
            "(asyncio.create_subprocess_exec from one process, pipes, new session)"
        )
        print(
            f"agent: {n} instances up in {start:6.2f} s "
            "(desired set pushed until the scheduler has an `up` status for each)"
        )
        print(
            f"       the agent stamped the last one up at {statistics.median(stamped):.2f} s "
            "(its own clock: without the status reports' way back)"
        )
        print(f"ratio: {start / floor:.2f}x the floor")
        print(
            f"stop: {n} instances stopped in {statistics.median(stops):.2f} s "
            "(SIGTERM to each group, then each run's token swept)"
        )
        print("\n".join(rest))
    finally:
        if agent_process.returncode is None:
            agent_process.terminate()
            try:
                await asyncio.wait_for(agent_process.wait(), 60)
            except TimeoutError:
                agent_process.kill()
                await agent_process.wait()
        await server.stop(0)


async def measure_rest(
    args: argparse.Namespace,
    agent: psutil.Process,
    idle_rss: int,
    scheduler: FakeScheduler,
    incarnation: int,
) -> list[str]:
    """The agent's CPU and memory with the instances up, and one usage pass; as lines."""
    n: int = args.n
    cpu, peak, rss = await at_rest(agent, args.rest)
    sidecar = sidecar_of(agent)
    sidecar_rss = sidecar.memory_info().rss if sidecar else 0
    pgids = {pid for (_, found), pid in scheduler.pids.items() if found == incarnation}
    started = time.perf_counter()
    usage = await asyncio.to_thread(sample_groups, pgids)
    sample = time.perf_counter() - started
    if len(usage) != n:
        raise BenchError(f"sampled {len(usage)} groups, expected {n}")
    return [
        f"at rest over {args.rest:g} s with {n} up: agent CPU {cpu:.1f}%, "
        f"RSS {rss / 2**20:.1f} MiB (peak {peak / 2**20:.1f}, {idle_rss / 2**20:.1f} before "
        f"any instance); reaper sidecar RSS {sidecar_rss / 2**20:.1f} MiB",
        f"one usage pass over {n} process groups: {sample * 1000:.0f} ms "
        "(the agent runs it in a worker thread every 5 s)",
    ]


def check_leftovers(seen: set[int]) -> list[str]:
    """Kill and name what is left of this run; an empty list means nothing was."""
    deadline = time.monotonic() + 10.0
    while True:
        left = {pid for pid in seen if alive(pid)}
        left.update(p.pid for p in psutil.Process().children(recursive=True) if alive(p.pid))
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    names = []
    for pid in sorted(left):
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            names.append(f"{pid} ({' '.join(process.cmdline())[:60]})")
            process.kill()
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/supervise.py",
        description="One agent with N sleepers: time to start them all against the floor of "
        "N spawns from one process, then the agent's RSS and CPU at rest.",
    )
    parser.add_argument("--n", type=int, default=200, help="instances (default: 200)")
    parser.add_argument(
        "--rest", type=float, default=5.0, help="seconds measured at rest (default: 5)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="start/stop rounds (default: 5)")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="give up after this many seconds"
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.rest <= 0 or args.rounds < 1:
        parser.error("--n and --rounds must be at least 1 and --rest positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="paas-bench-supervise-"))
    seen: set[int] = set()
    code = 0
    try:
        asyncio.run(bench(args, root, seen))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    finally:
        left = check_leftovers(seen)
        if left:
            print(f"cleanup: killed processes left behind: {', '.join(left)}", file=sys.stderr)
            code = 1
        else:
            print("cleanup: no process left behind")
        shutil.rmtree(root, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
