"""Benchmark: log lines per second from a process's stdout to a follower, against a floor.

The process (`emit.py`) prints numbered lines of about 100 bytes, each with the
time it was written, as fast as it can (or at a fixed `--rate`) for
`--seconds`, then one `done N` line, and idles.

- Floor, measured in the same run: the same command started straight from this
  Python process, its stdout read from the pipe line by line by one reader.
- paas: the same command as the only instance of an app on a LocalCluster of 1
  agent, read by a follower of the scheduler's Logs stream (`follow`, straight
  over gRPC, as `paas logs -f` reads it), end to end through the agent (pipe,
  buffer, spool, Agent API) and the scheduler (merge, time-order window).
  With `--cli`, also through the real `paas logs -f` printing to a pipe.

For each: lines per second at the reader (lines received over the time from
the first to the last), the latency of a line from its write (the time in it)
to its arrival at the reader, p50 and p99, and what was lost (counted from the
stream's own "N lines dropped" notices; loss is never silent). The ratio is
paas over the floor; the goal is at least 1/3.

    .venv/bin/python bench/logs.py                  # flat out, 5 s
    .venv/bin/python bench/logs.py --rate 20000     # a fixed rate: latency when it keeps up
    .venv/bin/python bench/logs.py --cli            # also through `paas logs -f`
    .venv/bin/python bench/logs.py --catch-up       # also a follower stopped for 10 s

Catch-up (`--catch-up`): the real `paas logs -f` is stopped (SIGSTOP) while a
process writes flat out for STOPPED seconds, then continued: the lines per second
it reads while it catches up (out of the agent's buffer and spool), whether it
got every line, and the writer's own rate (lines it wrote a second) against the
same writer with no follower at all (the goal: no more than 10 % slower).

Every process it starts is stopped before it exits, and it checks with psutil
that none is left; a leftover is killed, named and makes the exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from paas.cli.client import SchedulerClient
from paas.cli.localcluster import LocalCluster
from paas.common.formation import parse_changes
from paas.common.logformat import lost_count
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from paas.proto.paas_pb2_grpc import SchedulerAsyncStub

APP = "bench"
GOAL = 1 / 3
# The agent's CPU seconds per line it takes off the pipe and sends on.
AGENT_CPU_GOAL = 2e-6
# A stopped follower may slow the writer by at most this much.
SLOWDOWN_GOAL = 0.10
# How long the catch-up's follower is stopped while the writer writes.
STOPPED = 10.0
# After emit.py is done, how long a follower that lost its `done` line may still read.
LATE = 5.0

# Lines: "<n> <unix time> <padding>", about 100 bytes; the last one "done <count>".
EMIT = '''\
"""Print numbered, time-stamped lines as fast as possible (or at RATE a second)."""
import sys
import time

seconds, rate = float(sys.argv[1]), float(sys.argv[2])
pad = "x" * 72
write, now = sys.stdout.write, time.time
n = 0
start = now()
end = start + seconds
if rate <= 0:
    while now() < end:
        for _ in range(100):
            n += 1
            write(f"{n} {now():.6f} {pad}\\n")
else:
    step = max(1, int(rate / 1000))  # a burst every millisecond or so
    while True:
        t = now()
        if t >= end:
            break
        due = int((t - start) * rate)
        while n < due:
            for _ in range(min(step, due - n)):
                n += 1
                write(f"{n} {now():.6f} {pad}\\n")
            sys.stdout.flush()
        time.sleep(0.001)
sys.stdout.write(f"done {n}\\n")
sys.stdout.flush()
time.sleep(100000)
'''
LINE = re.compile(r"(\d+) (\d+\.\d+) x+")
DONE = re.compile(r"done (\d+)")
# Loss notices: a follower's queue overflowing (before cursors), a ring buffer's
# earlier lines; lines that left retention are counted by lost_count.
DROPPED = re.compile(r"(\d+) (?:lines dropped|earlier lines dropped)")


class BenchError(RuntimeError):
    """The benchmark could not measure what it set out to; the message says why."""


@dataclass
class Reading:
    """What one reader saw of one run of emit.py."""

    lines: int = 0
    first: float = 0.0  # arrival time of the first line
    last: float = 0.0
    latencies: list[float] = field(default_factory=list)
    emitted: int = 0  # what emit.py says it wrote
    done: bool = False  # whether its `done` line came
    dropped: int = 0  # what notices in the stream say was lost
    writer_cpu: float = 0.0  # emit.py's own CPU seconds a line (the floor's run only)

    def see(self, text: str, arrived: float) -> bool:
        """Account for one line; True once the `done` line has come."""
        match = LINE.fullmatch(text)
        if match:
            if not self.lines:
                self.first = arrived
            self.lines += 1
            self.last = arrived
            self.latencies.append(arrived - float(match.group(2)))
            return False
        done = DONE.fullmatch(text)
        if done:
            self.emitted, self.done = int(done.group(1)), True
            return True
        dropped = DROPPED.match(text)
        self.dropped += int(dropped.group(1)) if dropped else lost_count(text)
        return False

    @property
    def rate(self) -> float:
        return self.lines / (self.last - self.first) if self.last > self.first else 0.0

    def quantile(self, q: float) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else 0.0
        return statistics.quantiles(self.latencies, n=100)[int(q * 100) - 1]

    def describe(self) -> str:
        lost = self.emitted - self.lines + (0 if self.done else 1)  # the `done` line too
        return (
            f"{self.rate:>10,.0f} lines/s  ({self.lines:,} of {self.emitted:,} lines; "
            f"latency p50 {self.quantile(0.5) * 1000:.1f} ms, "
            f"p99 {self.quantile(0.99) * 1000:.1f} ms; "
            f"{lost:,} not delivered, {self.dropped:,} of them in drop notices)"
        )


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def command(seconds: float, rate: float) -> str:
    return f"exec python3 emit.py {seconds:g} {rate:g}"


# ---------------------------------------------------------------- the floor


async def measure_floor(app_dir: Path, seconds: float, rate: float, limit: float) -> Reading:
    """emit.py started from here; one reader takes its lines off the pipe."""
    process = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        command(seconds, rate),
        cwd=app_dir,
        stdout=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    assert process.stdout is not None
    reading = Reading()
    clock = time.time
    try:
        async with asyncio.timeout(limit):
            while raw := await process.stdout.readline():
                if reading.see(raw.decode().rstrip("\n"), clock()):
                    break
        # What making a line costs the writer itself: a yardstick of this machine's
        # speed for the agent's CPU a line, measured in the same run.
        reading.writer_cpu = cpu_seconds(psutil.Process(process.pid)) / max(1, reading.emitted)
    except TimeoutError:
        raise BenchError(f"the floor's emit.py did not finish within {limit:g} s") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        await process.wait()
    return reading


# ---------------------------------------------------------------- through paas


async def follow_grpc(stub: SchedulerAsyncStub, ready: asyncio.Event, reading: Reading) -> None:
    """A Logs follower straight over gRPC, as `paas logs -f` is one (lines as runs)."""
    clock = time.time
    call = stub.Logs(pb.LogsRequest(app=APP, process="emit", lines=1, follow=True, packed=True))
    try:
        ready.set()
        async for batch in call:
            now = clock()
            if any(reading.see(text, now) for run in batch.runs for text in run.texts):
                break
    finally:
        call.cancel()


async def follow_cli(
    scheduler: str, credentials: dict[str, str], ready: asyncio.Event, reading: Reading
) -> None:
    """The real `paas logs -f`, printing plain lines into a pipe that we read."""
    env = dict(os.environ, PAAS_SCHEDULER=scheduler, PAAS_APP=APP, NO_COLOR="1")
    env.update(credentials)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "paas", "logs", "-f", "-n", "1", "-p", "emit",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    errors = asyncio.create_task(process.stderr.read())
    clock = time.time
    try:
        first = await process.stdout.readline()  # the CLI is connected: history came
        if not first:
            raise BenchError("`paas logs -f` ended before it printed anything")
        ready.set()
        while raw := await process.stdout.readline():
            text = raw.decode().rstrip("\n").partition("]: ")[2]
            if reading.see(text, clock()):
                break
        else:
            await process.wait()
            said = (await errors).decode().strip().splitlines()
            raise BenchError(
                f"`paas logs -f` exited ({process.returncode}) before the last line: "
                f"{said[-1] if said else 'no message'}"
            )
    finally:
        errors.cancel()
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def emitted(stub: SchedulerAsyncStub, since: float, process: str = "emit") -> int:
    """How many lines emit.py, started after `since`, says it wrote (0 while it writes),
    from the log history (an earlier measurement's `done` line is older)."""
    request = pb.LogsRequest(app=APP, process=process, lines=5, since=since)
    for line in [line async for batch in stub.Logs(request, timeout=10) for line in batch.lines]:
        done = DONE.fullmatch(line.text)
        if done:
            return int(done.group(1))
    return 0


async def measure_paas(cluster: LocalCluster, app_dir: Path, reader: str, limit: float) -> Reading:
    """Scale emit to 1 while a follower reads; scale it back to 0 once it has `done`.

    If the follower lost the `done` line itself (it fell behind, and a notice says
    so), the history tells how many lines there were; it gets LATE seconds more.
    """
    reading = Reading()
    async with cluster.client() as client:
        ready = asyncio.Event()
        async with cluster.channel() as channel:
            stub: SchedulerAsyncStub = pb_grpc.SchedulerStub(channel)
            following = asyncio.create_task(
                follow_grpc(stub, ready, reading)
                if reader == "grpc"
                else follow_cli(
                    cluster.scheduler_address, cluster.credentials_env(), ready, reading
                )
            )
            try:
                async with asyncio.timeout(30):
                    await ready.wait()
                await asyncio.sleep(0.5)  # the follower's agent stream is open by now
                started = time.time()
                await client.scale(APP, parse_changes(["emit=1"]))
                async with asyncio.timeout(limit):
                    while not following.done() and not await emitted(stub, started):
                        await asyncio.wait({following}, timeout=0.5)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(following), LATE)
                if following.done():
                    following.result()  # its error, if it failed
                if not reading.emitted:
                    reading.emitted = await emitted(stub, started)
            except TimeoutError:
                raise BenchError(f"emit.py did not finish within {limit:g} s") from None
            finally:
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await following
                await client.scale(APP, parse_changes(["emit=0"]))
                await wait_stopped(client)
    return reading


async def writer_rate(cluster: LocalCluster, limit: float) -> float:
    """Lines a second the catch-up writer (STOPPED seconds flat out) writes, no follower."""
    async with cluster.client() as client:
        async with cluster.channel() as channel:
            stub: SchedulerAsyncStub = pb_grpc.SchedulerStub(channel)
            started = time.time()
            await client.scale(APP, parse_changes(["flat=1"]))
            try:
                async with asyncio.timeout(limit):
                    # Polling the history: nothing else says when the writer is done.
                    while not (count := await emitted(stub, started, "flat")):  # noqa: ASYNC110
                        await asyncio.sleep(0.5)
            except TimeoutError:
                raise BenchError(f"the writer did not finish within {limit:g} s") from None
            finally:
                await client.scale(APP, parse_changes(["flat=0"]))
                await wait_stopped(client)
    return count / STOPPED


async def measure_catch_up(cluster: LocalCluster, limit: float) -> tuple[float, Reading, float]:
    """`paas logs -f` stopped while the writer writes STOPPED seconds, then continued:
    the writer's rate meanwhile, what the follower read, and how long it took (from
    the moment it was continued to the `done` line)."""
    env = dict(os.environ, PAAS_SCHEDULER=cluster.scheduler_address, PAAS_APP=APP, NO_COLOR="1")
    env.update(cluster.credentials_env())
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "paas", "logs", "-f", "-n", "1", "-p", "flat",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip
    assert process.stdout is not None
    reading = Reading()
    clock = time.time
    try:
        async with cluster.client() as client:
            async with cluster.channel() as channel:
                stub: SchedulerAsyncStub = pb_grpc.SchedulerStub(channel)
                async with asyncio.timeout(30):
                    await process.stdout.readline()  # connected: its history came
                await asyncio.sleep(0.5)  # its agent stream is open by now
                os.kill(process.pid, signal.SIGSTOP)
                started = time.time()
                await client.scale(APP, parse_changes(["flat=1"]))
                try:
                    async with asyncio.timeout(limit):
                        while not (count := await emitted(stub, started, "flat")):  # noqa: ASYNC110
                            await asyncio.sleep(0.5)
                    os.kill(process.pid, signal.SIGCONT)
                    resumed = clock()
                    async with asyncio.timeout(limit):
                        while raw := await process.stdout.readline():
                            text = raw.decode().rstrip("\n").partition("]: ")[2]
                            if reading.see(text, clock()):
                                break
                except TimeoutError:
                    raise BenchError(f"the catch-up did not finish within {limit:g} s") from None
                finally:
                    await client.scale(APP, parse_changes(["flat=0"]))
                    await wait_stopped(client)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)
            process.kill()
        await process.wait()
    return count / STOPPED, reading, reading.last - resumed


async def wait_stopped(client: SchedulerClient) -> None:
    for _ in range(150):
        if not list(await client.list_instances(APP)):
            return
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def cluster_with_app(
    app_dir: Path, logs: Path, tls: bool = True
) -> AsyncIterator[LocalCluster]:
    async with LocalCluster(agents=1, stop_grace=2.0, log_to=logs, tls=tls) as cluster:
        async with cluster.client() as client:
            await client.create_app(APP)
            procfile = (app_dir / "Procfile").read_text()
            await client.deploy(APP, str(app_dir), procfile, {})
        yield cluster


# ---------------------------------------------------------------- leftovers


def leftovers(app_dir: Path) -> list[psutil.Process]:
    """Processes of this run still alive: descendants of this one, or working in the app."""
    found = {proc.pid: proc for proc in psutil.Process().children(recursive=True)}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if Path(proc.cwd()) == app_dir:
                found.setdefault(proc.pid, proc)
    alive = []
    for proc in found.values():
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    return alive


def check_leftovers(app_dir: Path) -> list[str]:
    """Kill and name what is left; an empty list means nothing was."""
    deadline = time.monotonic() + 5.0
    left = leftovers(app_dir)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = leftovers(app_dir)
    names = []
    for proc in left:
        with contextlib.suppress(psutil.Error):
            names.append(f"{proc.pid} ({' '.join(proc.cmdline())[:80]})")
            proc.kill()
    return names


# ---------------------------------------------------------------- main


async def bench(args: argparse.Namespace, root: Path) -> None:
    app_dir = root / "app"
    app_dir.mkdir()
    (app_dir / "emit.py").write_text(EMIT)
    (app_dir / "Procfile").write_text(
        f"emit: {command(args.seconds, args.rate)}\nflat: {command(STOPPED, 0)}\n"
    )
    pace = f"{args.rate:,.0f} lines/s" if args.rate > 0 else "as fast as it can"
    print(f"paas bench logs: one process printing ~100-byte lines {pace} for {args.seconds:g} s")
    await measure_floor(app_dir, 0.5, args.rate, args.timeout)  # warm the page cache
    floor = await measure_floor(app_dir, args.seconds, args.rate, args.timeout)
    print(f"floor:      {floor.describe()}  (one Python reader on the pipe)")
    print(f"           CPU per line emitted: the writer itself {floor.writer_cpu * 1e6:.1f} us")
    readers = ["grpc", "cli"] if args.cli else ["grpc"]
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.tls]
    results: dict[tuple[str, bool], Reading] = {}
    agent_cpu: dict[tuple[str, bool], float] = {}
    for tls in modes:
        label = "TLS on" if tls else "TLS off"
        logs = root / ("logs-tls" if tls else "logs-plain")
        async with cluster_with_app(app_dir, logs, tls) as cluster:
            parts = {
                "agent": psutil.Process(cluster.agent_process("node-1").pid),
                "scheduler": psutil.Process(cluster.scheduler_process(0).pid),
            }
            for reader in readers:
                before = {name: cpu_seconds(proc) for name, proc in parts.items()}
                reading = await measure_paas(cluster, app_dir, reader, args.timeout)
                results[(reader, tls)] = reading
                where = "Logs follow over gRPC" if reader == "grpc" else "`paas logs -f` to a pipe"
                print(f"paas {reader:<5} {reading.describe()}  ({where}, {label})")
                # CPU time per line taken off the pipe: what the machine's load does not move.
                taken = max(1, reading.emitted)
                per_line = {
                    name: (cpu_seconds(proc) - before[name]) / taken for name, proc in parts.items()
                }
                agent_cpu[(reader, tls)] = per_line["agent"]
                costs = ", ".join(f"{name} {cost * 1e6:.1f} us" for name, cost in per_line.items())
                print(f"           CPU per line emitted: {costs}")
            if args.catch_up:
                alone = await writer_rate(cluster, args.timeout)
                stopped, caught, took = await measure_catch_up(cluster, args.timeout)
                slower = 1 - stopped / alone if alone else 0.0
                verdict = "met" if slower <= SLOWDOWN_GOAL else "missed"
                print(
                    f"catch-up:  {caught.lines / took if took > 0 else 0.0:>10,.0f} lines/s  "
                    f"({caught.lines:,} of {caught.emitted:,} lines in {took:.1f} s after "
                    f"`paas logs -f` was stopped {STOPPED:g} s; "
                    f"{caught.dropped:,} in loss notices; {label})"
                )
                unaccounted = caught.emitted - caught.lines - caught.dropped
                print(
                    "               every line arrived or was counted in a notice"
                    if unaccounted == 0
                    else f"               {unaccounted:,} lines neither arrived nor were counted"
                )
                print(
                    f"writer:    {alone:>10,.0f} lines/s alone, {stopped:,.0f} with a stopped "
                    f"follower: slowed by {slower * 100:+.1f} % (goal: at most "
                    f"{SLOWDOWN_GOAL * 100:.0f} %, {verdict}; {label})"
                )
    for (reader, tls), reading in results.items():
        ratio = reading.rate / floor.rate if floor.rate else 0.0
        verdict = "met" if ratio >= GOAL else "missed"
        label = "TLS on" if tls else "TLS off"
        print(
            f"ratio ({reader}, {label}): {ratio:.3f} of the floor "
            f"(goal: at least {GOAL:.2f}, {verdict})"
        )
    for (reader, tls), cost in agent_cpu.items():
        verdict = "met" if cost <= AGENT_CPU_GOAL else "missed"
        label = "TLS on" if tls else "TLS off"
        times = cost / floor.writer_cpu if floor.writer_cpu else 0.0
        print(
            f"agent CPU ({reader}, {label}): {cost * 1e6:.1f} us a line (goal: at most "
            f"{AGENT_CPU_GOAL * 1e6:g} us, {verdict}), {times:.2f}x what writing it costs "
            "emit.py here"
        )
    for reader in readers:
        on, off = results.get((reader, True)), results.get((reader, False))
        if on is not None and off is not None and off.rate:
            share = on.rate / off.rate
            print(f"TLS cost ({reader}): with TLS, {share:.2f}x the lines/s without")


@contextlib.contextmanager
def work_dir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="paas-bench-logs-"))
    failed = True
    try:
        yield path
        failed = False
    finally:
        if failed or keep:
            print(f"kept {path} (app, cluster logs)", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/logs.py",
        description="Lines per second from a process's stdout to a `paas logs -f` reader, "
        "against the same process read straight from a pipe.",
    )
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="how long the process prints (default: 5)"
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="lines per second (default: 0, as fast as it can)"
    )
    parser.add_argument(
        "--cli", action="store_true", help="also measure through the real `paas logs -f`"
    )
    parser.add_argument(
        "--catch-up",
        action="store_true",
        help=f"also a `paas logs -f` stopped {STOPPED:g} s while a process writes flat out",
    )
    parser.add_argument(
        "--tls",
        choices=("on", "off", "both"),
        default="both",
        help="the cluster with TLS, without, or both in the same run (default: both)",
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for each measurement"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (app, cluster logs)"
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rate < 0:
        parser.error("--seconds must be above 0 and --rate at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    status = 0
    with work_dir(args.keep) as root:
        try:
            asyncio.run(bench(args, root))
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
        except KeyboardInterrupt:
            status = 130
        finally:
            left = check_leftovers((root / "app").resolve())
            if left:
                print(
                    f"error: {len(left)} processes were left behind and are now killed: "
                    + ", ".join(left),
                    file=sys.stderr,
                )
                status = 1
            else:
                print("cleanup: no process left behind")
        if status:
            raise SystemExit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
