"""The lifecycle of every instance on this node, as one explicit state machine each.

Owns the Instances (one per (app, name, release): a rollout runs the new copy
of web.3 beside the old one, each with its own port, sharing web.3's log
buffer), their runs, crash restarts with
backoff, the web health check and the graceful stop. Supervisor applies a
DesiredSet level-triggered: it starts what is missing, replaces what has a
newer incarnation and stops what is not in the set, whatever happened before.
Every transition writes a lifecycle line into the instance's log buffer and
pushes an InstanceStatus to the listeners (the session).

It never decides what should run (that is the scheduler's desired set), never
starts an assignment older than one it has seen, never talks gRPC, never
touches a process or the clock but through the seam (processes.py), and never
leaves a process behind: stopping ends the whole process group, a crashed
leader's leftovers are killed, what escaped the group is killed by the run's
token (orphans.py says which mechanism catches what), and the reaper is told
every group so that even the agent's own death ends them. The decisions
themselves (states, edges, backoff, how an exit is told) are in states.py.

An assignment with a slug runs in the slug cache's unpacked, verified copy of it
(slugcache.py): the instance is pending while the slug is fetched and backs off
with the reason when it cannot be had, and an UP instance that a new incarnation
with another slug replaces keeps serving until that slug is ready.

One run of an instance goes through named phases, and its facts (pid, times,
last lines, usage, exit) are kept in one `Run`:

    _spawn → _boot (web: listening on $PORT within the boot timeout) → _supervise
    (UP until it exits or is asked to stop) → _terminate (if asked) → _collect
    (leftovers, sweep, output) → _classify (crashed, or stopped)

    supervisor = Supervisor(config, LogHub("node-1", 10_000), PortPool(5000, 5999), reaper)
    supervisor.add_listener(lambda status: print(status.name, status.state))
    supervisor.apply(desired_set)      # returns at once; instances start in the background
    await supervisor.close()           # stops everything, gracefully
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from paas.agent.config import AgentConfig
from paas.agent.errors import SlugError
from paas.agent.logbuffer import LogBuffer, LogHub, pump
from paas.agent.orphans import AGENT_ID_VAR, RUN_ID_VAR, Carrier, new_token
from paas.agent.ports import Lease, PortError, PortPool
from paas.agent.processes import Child, Clock, HostProcesses, Processes, SpawnError, SystemClock
from paas.agent.processes import install_child_watcher as install_child_watcher
from paas.agent.reaper import Reaper
from paas.agent.slugcache import SlugCache
from paas.agent.states import TRANSITIONS as TRANSITIONS
from paas.agent.states import Backoff as Backoff
from paas.agent.states import State as State
from paas.agent.states import TransitionError, check_transition, classify_exit, seconds
from paas.common.errors import InvalidInput
from paas.common.logformat import PAAS_STREAM
from paas.common.rollouts import DEFAULT_MIN_HEALTHY
from paas.common.slugs import NOT_READY, short_digest
from paas.proto import paas_pb2 as pb

log = logging.getLogger(__name__)

# (app, instance name, release): during a rollout the new copy of web.3 (a newer
# release) runs beside the old one, each in a slot of its own with its own port.
Key = tuple[str, str, int]

WEB_TYPE = "web"  # the process type that gets traffic, so must listen on $PORT
LAST_LINES = 10  # output lines of a run kept with its exit, for `paas ps`
# Resource use is reported when CPU moves by this many points or RSS by this fraction.
USAGE_CPU_CHANGE = 1.0
USAGE_RSS_CHANGE = 0.05
HEALTH_INTERVAL = 0.05
# Once up, a checked type is checked again this often for its first min_healthy
# seconds (what a rollout waits before it stops the old copy), each check within
# those seconds; this many failed checks in a row and it is killed as unhealthy,
# as a boot timeout would be.
WATCH_INTERVAL = 0.5
WATCH_TIMEOUT = 1.0
WATCH_FAILURES = 2
GROUP_POLL_INTERVAL = 0.1
# After the leader exits, how long its output pipes may stay open (held by an
# escaped process) before they are closed anyway.
DRAIN_TIMEOUT = 2.0


def _pids(carriers: list[Carrier]) -> str:
    """ "1, 2, 3" and, past ten, " and N more"."""
    shown = ", ".join(str(carrier.pid) for carrier in carriers[:10])
    more = f" and {len(carriers) - 10} more" if len(carriers) > 10 else ""
    return shown + more


@dataclass
class Run:
    """The facts of one run of an instance, from its spawn to its exit."""

    id: str  # PAAS_RUN_ID, which every process of the run carries
    port: int
    log_run: int = 0  # the log buffer's number for its lines
    pid: int = 0  # the leader's, which is also the group's; 0 once it has exited
    started_at: float = 0.0  # unix seconds
    up_at: float | None = None  # the clock's monotonic seconds when it went UP
    exited_at: float = 0.0  # unix seconds
    returncode: int | None = None
    failure: str = ""  # why the agent ended it (a boot timeout); "" if it ended by itself
    last_lines: list[str] = field(default_factory=list)  # its last output, once exited
    cpu_percent: float = 0.0
    rss_bytes: int = 0

    @property
    def ran_for(self) -> float:
        """Seconds from its start to its exit (0 while it runs)."""
        return round(self.exited_at - self.started_at, 3) if self.exited_at else 0.0


class Instance:
    """One assignment (app, name, incarnation) and the runs of its process.

    `start()` runs the lifecycle in a task; `stop()` ends it and returns once
    the instance is STOPPED and its process group is gone. `run` is the current
    (or latest) run, `ended` the latest one that exited.
    """

    def __init__(
        self,
        assignment: pb.Assignment,
        *,
        config: AgentConfig,
        buffer: LogBuffer,
        port_for: Callable[[], Lease],
        base_env: dict[str, str],
        report: Callable[[Instance], None],
        processes: Processes | None = None,
        clock: Clock | None = None,
        agent_id: str = "",
        slugs: SlugCache | None = None,
    ) -> None:
        """`slugs`: where an assignment's slug is had (an instance with a slug and no
        cache never starts)."""
        self.assignment = assignment
        self.app = assignment.app
        self.name = assignment.name
        self.type = assignment.type
        self.incarnation = assignment.incarnation
        self.app_id = assignment.app_id
        self._processes: Processes = processes or HostProcesses()
        self._clock: Clock = clock or SystemClock()
        self.state = State.PENDING
        self.since = self._clock.now()
        self.reason = ""
        self.port = 0  # kept across runs
        self.restarts = 0
        self.last_exit = ""
        self.next_start = 0.0  # unix seconds, while in backoff
        self.run = Run(id="", port=0)
        self.ended: Run | None = None
        self.buffer = buffer
        # Per process type settings from the release; zero values mean the agent's.
        settings = assignment.settings
        self.stop_grace = settings.stop_grace or config.stop_grace
        self.boot_timeout = settings.boot_timeout or config.boot_timeout
        # An HTTP path that must answer 2xx/3xx on $PORT ("": a TCP accept will do).
        self.health_path = settings.health
        self.min_healthy = (
            settings.min_healthy if settings.HasField("min_healthy") else DEFAULT_MIN_HEALTHY
        )
        if settings.check == pb.ProcessSettings.CHECK_DEFAULT:
            self.port_check = self.type == WEB_TYPE or bool(self.health_path)
        else:
            self.port_check = settings.check == pb.ProcessSettings.CHECK_PORT
        self._port_for = port_for
        self._base_env = base_env
        self._report = report
        self._agent_id = agent_id or new_token(config.name)
        self._run_prefix = config.name
        self._backoff = Backoff(
            config.restart_base,
            settings.backoff_cap or config.restart_cap,
            settings.backoff_reset or config.restart_reset_after,
        )
        # A slug that cannot be had is retried like a crash, but never at once.
        self._slug_backoff = Backoff(
            config.restart_base,
            settings.backoff_cap or config.restart_cap,
            settings.backoff_reset or config.restart_reset_after,
            attempts=1,
        )
        self._slugs = slugs
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Instance {self.app}/{self.name} #{self.incarnation} {self.state.label}>"

    @property
    def pid(self) -> int:
        """The current run's leader (and group), 0 when none runs."""
        return self.run.pid

    @property
    def run_id(self) -> str:
        """PAAS_RUN_ID of the current (or last) run."""
        return self.run.id

    def status(self) -> pb.InstanceStatus:
        ended = self.ended or Run(id="", port=0)
        return pb.InstanceStatus(
            app=self.app,
            name=self.name,
            type=self.type,
            incarnation=self.incarnation,
            state=self.state.value,
            pid=self.run.pid,
            port=self.port,
            restarts=self.restarts,
            last_exit=self.last_exit,
            since=self.since,
            release=self.assignment.release,
            reason=self.reason,
            next_start=self.next_start,
            exited_at=ended.exited_at,
            ran_for=ended.ran_for,
            last_lines=ended.last_lines,
            cpu_percent=self.run.cpu_percent,
            rss_bytes=self.run.rss_bytes,
            started_at=self.run.started_at,
        )

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                self._run(), name=f"instance {self.app}/{self.name}#{self.incarnation}"
            )

    async def stop(self, reason: str = "") -> None:
        """SIGTERM the group, SIGKILL it after the grace, and return once STOPPED."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()
        if self._task is None:
            if self.state is State.PENDING:
                self._to(State.STOPPED, reason)
            return
        # A caller giving up must not cut the stop short: the task finishes it.
        await asyncio.shield(self._task)

    def record_usage(self, cpu_percent: float, rss_bytes: int) -> bool:
        """Keep the current run's resource use; whether it changed enough to report."""
        run = self.run
        notable = abs(cpu_percent - run.cpu_percent) >= USAGE_CPU_CHANGE or abs(
            rss_bytes - run.rss_bytes
        ) > USAGE_RSS_CHANGE * max(run.rss_bytes, 1)
        run.cpu_percent, run.rss_bytes = cpu_percent, rss_bytes
        return notable

    # ------------------------------------------------------------ the lifecycle

    async def _run(self) -> None:
        while not self._stop.is_set():
            workdir = await self._workdir()
            if self._stop.is_set():
                break
            if isinstance(workdir, SlugFailure):
                await self._slug_retry(workdir.reason)
                continue
            try:
                uptime = await self._run_once(workdir)
            except Exception as exc:  # a bug must not end supervision of a live workload
                log.exception("%s/%s: unexpected error", self.app, self.name)
                if self.state in (State.STARTING, State.UP):
                    self._crash(f"agent error: {exc!r}")
                uptime = 0.0
            if self._stop.is_set():
                break
            delay = self._backoff.next_delay(uptime)
            if delay > 0:
                self.next_start = self._clock.now() + delay
                # crashed → backoff: wait, unless asked to stop meanwhile.
                self._to(State.BACKOFF, f"restarting in {seconds(delay)}s")
                self._line(f"Restarting in {seconds(delay)}s")
                await self._clock.wait(self._stop.wait(), delay)
                if self._stop.is_set():
                    break
            else:
                self._line("Restarting now")
            self.restarts += 1
        self._to(State.STOPPED, self._stop_reason)

    async def _workdir(self) -> str | SlugFailure | None:
        """Where the next run starts: the assignment's dir (--in-place), or the tree of its
        slug once that is here and intact (pending while it is fetched)."""
        if not self.assignment.HasField("slug"):
            return self.assignment.dir or None
        slug = self.assignment.slug
        if self._slugs is None:
            return SlugFailure(f"slug {short_digest(slug.digest)}: this agent keeps no slugs")
        acquire = asyncio.ensure_future(self._slugs.acquire(slug, self._fetching))
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({acquire, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not acquire.done():
                acquire.cancel()  # this instance's wait only: the fetch goes on for others
        try:
            tree = await acquire
        except asyncio.CancelledError:
            if self._stop.is_set():
                return None
            raise
        except (SlugError, InvalidInput) as exc:
            return SlugFailure(str(exc))
        self._slug_backoff.attempts = 1
        return str(tree)

    def _fetching(self, reason: str) -> None:
        """The slug is being fetched (or unpacked): pending, saying so."""
        if self.state is State.PENDING and self.reason == reason:
            return
        digest = short_digest(self.assignment.slug.digest)
        self._line(f"{reason[:1].upper()}{reason[1:]} ({digest})")
        if self.state is State.PENDING:
            self.reason = reason
            self._report(self)
        else:
            # crashed/backoff → pending: the cached slug must be had again first.
            self._to(State.PENDING, reason)

    async def _slug_retry(self, failure: str) -> None:
        """The slug cannot be had: backoff with why, then try again (no process ran)."""
        delay = self._slug_backoff.next_delay(0.0)
        self._line(f"Slug not ready: {failure}")
        self.next_start = self._clock.now() + delay
        reason = f"{NOT_READY}: {failure}"
        if self.state is State.BACKOFF:
            self.reason = reason  # failed again before it was pending (a bad digest)
            self._report(self)
        else:
            # pending/crashed → backoff: like a crash, but before any process.
            self._to(State.BACKOFF, reason)
        self._line(f"Fetching the slug again in {seconds(delay)}s")
        await self._clock.wait(self._stop.wait(), delay)
        self.next_start = 0.0

    async def _run_once(self, workdir: str | None) -> float:
        """One run in `workdir`, phase by phase; how long it was up."""
        child = await self._spawn(workdir)
        if child is None:
            return 0.0
        run = self.run
        pumps = {
            "stdout": asyncio.create_task(pump(child.stdout, "stdout", self.buffer)),
            "stderr": asyncio.create_task(pump(child.stderr, "stderr", self.buffer)),
        }
        stopping = asyncio.create_task(self._stop.wait())
        try:
            run.failure = await self._boot(child, stopping)
            if not run.failure:
                run.failure = await self._supervise(child, stopping)
            if not child.exited.done():
                await self._terminate(child)
        finally:
            stopping.cancel()
            if child.returncode is None:
                # Cancelled (the loop is going away): never leave the group behind.
                self._processes.signal_group(child.pid, signal.SIGKILL)
        await self._collect(child, pumps)
        return self._classify()

    async def _spawn(self, workdir: str | None) -> Child | None:
        """starting: the port, then the process; None (and crashed) if it cannot start."""
        self.next_start = 0.0
        log_run = self.buffer.begin_run()
        # pending/crashed/backoff → starting
        self._to(State.STARTING)
        try:
            lease = self._port_for()
        except PortError as exc:
            self._crash(str(exc))
            self.buffer.end_run()
            return None
        if lease.notice:
            self._line(lease.notice)
        self.port = lease.port
        self._line(f"Starting process with command `{self.assignment.command}`")
        run = Run(id=new_token(self._run_prefix), port=lease.port, log_run=log_run)
        try:
            child = await self._processes.spawn(
                self.assignment.command, cwd=workdir, env=self._env(run)
            )
        except SpawnError as exc:
            self._crash(str(exc))
            self.buffer.end_run()
            return None
        run.pid = child.pid
        run.started_at = self._clock.now()
        self.run = run
        self._report(self)
        return child

    async def _boot(self, child: Child, stopping: asyncio.Task[Any]) -> str:
        """A checked type must listen on $PORT (with a health path: answer it with 2xx or
        3xx) within the boot timeout: "" if it did (or exited, or was asked to stop,
        first), else why it was killed."""
        if not self.port_check:
            return ""
        health = asyncio.create_task(self._until_listening(self.port))
        waits: set[asyncio.Future[Any]] = {child.exited, stopping, health}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if not health.done():
            health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await health
            return ""
        if child.exited.done() or stopping.done() or health.result():
            return ""
        failure = (
            f"boot timeout: did not {self._check_text(self.port)} "
            f"within {seconds(self.boot_timeout)}s"
        )
        self._line(failure)
        self._processes.signal_group(child.pid, signal.SIGKILL)
        await asyncio.shield(child.exited)
        return failure

    async def _supervise(self, child: Child, stopping: asyncio.Task[Any]) -> str:
        """up, until the leader exits or a stop is asked for; a checked type must keep
        passing its check for its first min_healthy seconds: "" if it did (or exited,
        or was asked to stop), else why it was killed."""
        if child.exited.done() or stopping.done():
            return ""
        # starting → up: it runs (and a checked type listens).
        self._to(State.UP)
        self.run.up_at = self._clock.monotonic()
        either: set[asyncio.Future[Any]] = {child.exited, stopping}
        if self.port_check and self.min_healthy > 0:
            watch = asyncio.create_task(self._watch(self.port, self.min_healthy))
            try:
                await asyncio.wait({*either, watch}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not watch.done():
                    watch.cancel()
                    await asyncio.wait({watch})
            if watch.cancelled():
                return ""
            failure = watch.result()
            # A stop asked for wins (stopping.done() comes a loop step after it).
            if failure and not child.exited.done() and not self._stop.is_set():
                self._line(failure)
                self._processes.signal_group(child.pid, signal.SIGKILL)
                await asyncio.shield(child.exited)
                return failure
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        return ""

    async def _watch(self, port: int, seconds_up: float) -> str:
        """Check the port (or the health path) again every WATCH_INTERVAL, each check
        ending within `seconds_up` seconds of now: "" if it kept answering (or failed
        fewer than WATCH_FAILURES checks in a row), else why it is unhealthy."""
        clock = self._clock
        deadline = clock.monotonic() + seconds_up
        failed = 0
        while True:
            await clock.sleep(WATCH_INTERVAL)
            left = deadline - clock.monotonic()
            if left <= 0:
                break
            failed = 0 if await self._check(port, min(WATCH_TIMEOUT, left)) else failed + 1
            if failed >= WATCH_FAILURES:
                return (
                    f"unhealthy: did not {self._check_text(port)} at {failed} checks in a "
                    f"row within {seconds(seconds_up)}s of going up"
                )
        return ""

    async def _check(self, port: int, timeout: float) -> bool:  # noqa: ASYNC109
        """One check: the health path answers 2xx/3xx, or (without one) the port accepts."""
        if self.health_path:
            return await self._processes.answers(port, self.health_path, timeout)
        return await self._processes.accepts(port, timeout)

    def _check_text(self, port: int) -> str:
        if self.health_path:
            return f"answer GET {self.health_path} on {port} with 2xx/3xx"
        return f"listen on {port}"

    async def _until_listening(self, port: int) -> bool:
        """Whether 127.0.0.1:`port` accepts a connection (answers the health path with
        2xx/3xx) within the boot timeout."""
        deadline = self._clock.monotonic() + self.boot_timeout
        while True:
            remaining = deadline - self._clock.monotonic()
            timeout = max(0.05, min(1.0, remaining))
            if await self._check(port, timeout):
                return True
            if self._clock.monotonic() >= deadline:
                return False
            await self._clock.sleep(HEALTH_INTERVAL)

    async def _terminate(self, child: Child) -> None:
        """stopping: SIGTERM the group; SIGKILL what is left of it after the grace."""
        clock, processes, pgid = self._clock, self._processes, child.pid
        grace = self.stop_grace
        # starting/up → stopping
        self._to(State.STOPPING, self._stop_reason)
        self._line("Stopping all processes with SIGTERM")
        processes.signal_group(pgid, signal.SIGTERM)
        deadline = clock.monotonic() + grace
        escaped = await processes.terminate_escaped(self.run.id, pgid)
        if escaped:
            self._line(
                f"Sent SIGTERM to {len(escaped)} process(es) that had left the process "
                f"group (pid {_pids(escaped)})"
            )
        pids = [carrier.pid for carrier in escaped]
        await clock.wait(asyncio.shield(child.exited), deadline - clock.monotonic())
        # The leader is gone; the rest of its group (and what escaped it) may still be
        # finishing: what is left at the deadline gets SIGKILL, here and in the sweep.
        while child.exited.done() and clock.monotonic() < deadline:
            if not await processes.alive(pgid, pids):
                break
            await clock.sleep(GROUP_POLL_INTERVAL)
        if not child.exited.done() or await processes.alive(pgid, pids):
            self._line(
                f"Error R12 (Exit timeout) -> At least one process failed to exit within "
                f"{seconds(grace)}s of SIGTERM"
            )
            self._line("Stopping remaining processes with SIGKILL")
            processes.signal_group(pgid, signal.SIGKILL)
        await asyncio.shield(child.exited)

    async def _collect(self, child: Child, pumps: dict[str, asyncio.Task[None]]) -> None:
        """After the leader's exit: end its leftovers, take the last output, keep the facts."""
        run, pgid = self.run, child.pid
        if self.state is not State.STOPPING:
            # Whatever the crashed leader left in its group dies with it.
            self._processes.signal_group(pgid, signal.SIGKILL)
        await self._sweep(pgid)
        await self._drain(child, pumps)
        child.close()
        returncode = child.returncode
        assert returncode is not None
        run.returncode = returncode
        run.pid = 0
        run.exited_at = self._clock.now()
        run.last_lines = self.buffer.last_output(run.log_run, LAST_LINES)
        run.cpu_percent, run.rss_bytes = 0.0, 0
        self.ended = run
        self.buffer.end_run()

    def _classify(self) -> float:
        """The exit, told: crashed (with why), or stopped as asked; how long it was up."""
        run = self.run
        assert run.returncode is not None
        ending = classify_exit(
            run.returncode, stopping=self.state is State.STOPPING, failure=run.failure
        )
        self.last_exit = ending.last_exit
        for line in ending.lines:
            self._line(line)
        if ending.crashed:
            # starting/up → crashed
            self._to(State.CRASHED, ending.reason)
        if run.up_at is None:
            return 0.0
        return self._clock.monotonic() - run.up_at

    async def _sweep(self, pgid: int) -> None:
        """Kill what is left of this run outside its group (a daemon's double fork)."""
        try:
            killed: list[Carrier] = await self._processes.sweep(self.run.id)
        except Exception:
            log.exception("%s/%s: sweeping for escaped processes failed", self.app, self.name)
            return
        escaped = [carrier for carrier in killed if carrier.pgid != pgid]
        if escaped:
            self._line(
                f"Killed {len(escaped)} process(es) that had left the process group "
                f"(pid {_pids(escaped)})"
            )

    async def _drain(self, child: Child, pumps: dict[str, asyncio.Task[None]]) -> None:
        """Let the readers take the last output; an escaped holder of a pipe is cut off.

        A pipe still open DRAIN_TIMEOUT after the run ended is held by a process the
        sweep did not find. It is closed, not its reader cancelled: the reader still
        takes what it has received, and a notice says the rest was cut off.
        """
        await self._clock.wait(asyncio.wait(pumps.values()), DRAIN_TIMEOUT)
        cut = [
            stream for stream, task in pumps.items() if not task.done() and child.cut_off(stream)
        ]
        await asyncio.gather(*pumps.values())
        if cut:
            self._line(
                f"Output cut off: {' and '.join(cut)} still open {seconds(DRAIN_TIMEOUT)}s "
                "after the process exited (held by a process that left its group); "
                "what was written to it later is not kept"
            )

    # ------------------------------------------------------------ helpers

    def _env(self, run: Run) -> dict[str, str]:
        env = dict(self._base_env)
        env.update(self.assignment.env)
        env.update(
            PORT=str(run.port),
            PAAS_APP=self.app,
            PAAS_PROCESS_TYPE=self.type,
            PAAS_INSTANCE=self.name,
            DYNO=self.name,
        )
        # Last, so no release config can hide a process from the sweeps (orphans.py).
        env[AGENT_ID_VAR] = self._agent_id
        env[RUN_ID_VAR] = run.id
        return env

    def _crash(self, reason: str) -> None:
        self._line(reason)
        self._to(State.CRASHED, reason)

    def _line(self, text: str) -> None:
        self.buffer.append(PAAS_STREAM, text)

    def _to(self, state: State, reason: str = "") -> None:
        """The one place a state changes: checked against TRANSITIONS, logged, reported."""
        if state is self.state:
            return
        try:
            check_transition(self.state, state)
        except TransitionError as exc:
            raise TransitionError(f"{self!r}: {exc}") from None
        previous, self.state = self.state, state
        self.since = self._clock.now()
        self.reason = reason
        self._line(f"State changed from {previous.label} to {state.label}")
        self._report(self)


@dataclass(frozen=True)
class SlugFailure:
    """Why an instance's slug cannot be had this time (its event and reason)."""

    reason: str


@dataclass
class _Slot:
    """Where one (app, name, release) lives on this node: what should run and what does."""

    key: Key
    desired: pb.Assignment | None = None
    current: Instance | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    # Fetching the slug of a replacement while the instance it replaces still serves.
    prefetch: Backoff | None = None


class Supervisor:
    """All instances of this node, driven towards the last desired set.

    `apply(desired)` is level-triggered and returns at once: for each (app,
    name, release) a small driver keeps the running instance, starts a missing
    one, replaces an older incarnation by a newer one (stop first, keeping its
    port) or stops and removes one the set no longer holds. Two releases of one
    name are two slots, side by side (a rollout's new copy and the old one). An
    assignment older than the highest incarnation ever seen for its (app, name,
    release) never starts; within one session (see `new_session`) a set with a lower
    generation than the last applied one is ignored.
    """

    def __init__(
        self,
        config: AgentConfig,
        logs: LogHub,
        ports: PortPool | None = None,
        reaper: Reaper | None = None,
        *,
        processes: Processes | None = None,
        clock: Clock | None = None,
        slugs: SlugCache | None = None,
    ) -> None:
        self.config = config
        self.logs = logs
        self.slugs = slugs or SlugCache(
            config.state_dir / config.name / "slugs",
            node=config.name,
            budget=config.slug_cache_budget,
            max_unpacked=config.slug_max_unpacked,
        )
        self.slugs.in_use = self._slugs_in_use
        self._pruning: set[asyncio.Task[list[str]]] = set()
        self._prune_again = False  # the set of slugs in use changed during a prune
        self.ports = ports if ports is not None else PortPool(*config.ports, config.port_lock_dir)
        self.reaper = reaper
        # One for all instances: it spawns one at a time and batches the sweeps.
        self.processes: Processes = processes or HostProcesses(reaper)
        self.clock: Clock = clock or SystemClock()
        self._slots: dict[Key, _Slot] = {}
        self._highest: dict[Key, int] = {}
        self._generation = 0
        self._closing = False
        self._listeners: list[Callable[[pb.InstanceStatus], None]] = []
        self._base_env = dict(os.environ)
        self._sampler: asyncio.Task[None] | None = None
        # Every instance carries it; the reaper sidecar kills by it when the agent dies.
        self.agent_id = reaper.agent_id if reaper and reaper.agent_id else new_token(config.name)

    # ------------------------------------------------------------ observing

    def add_listener(self, listener: Callable[[pb.InstanceStatus], None]) -> None:
        """Call `listener` with an InstanceStatus on every change of any instance."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[pb.InstanceStatus], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def instance(self, app: str, name: str, release: int | None = None) -> Instance | None:
        """The copy of (app, name) of `release`; None: the newest release's."""
        keys = [k for k in self._slots if k[:2] == (app, name)]
        if release is not None:
            keys = [k for k in keys if k[2] == release]
        slot = self._slots[max(keys, key=lambda k: k[2])] if keys else None
        return slot.current if slot else None

    def instances(self) -> list[Instance]:
        return [slot.current for slot in self._slots.values() if slot.current is not None]

    def statuses(self) -> list[pb.InstanceStatus]:
        """Every instance this node runs (not yet stopped), as hello's `running` lists them."""
        live = [instance for instance in self.instances() if instance.state is not State.STOPPED]
        return [instance.status() for instance in live]

    # ------------------------------------------------------------ desired state

    def new_session(self) -> None:
        """A new session with the scheduler: its generations start over."""
        self._generation = 0

    def new_cluster(self) -> None:
        """The scheduler is another cluster's (a new etcd): its incarnations are another
        etcd's revisions and start over, so none of the old cluster's counts as newer."""
        self._highest.clear()

    def apply(self, desired: pb.DesiredSet) -> bool:
        """Drive every instance towards `desired`; False if the set was ignored."""
        if self._closing:
            return False
        if desired.generation < self._generation:
            log.warning(
                "ignoring desired set generation %d: generation %d is already applied",
                desired.generation,
                self._generation,
            )
            return False
        self._generation = desired.generation
        if self._sampler is None and self.config.usage_interval > 0:
            self._sampler = asyncio.create_task(self._sample_usage(), name="usage sampler")
        wanted: dict[Key, pb.Assignment] = {}
        for assignment in desired.instances:
            key = (assignment.app, assignment.name, assignment.release)
            if key in wanted and wanted[key].incarnation >= assignment.incarnation:
                continue
            highest = self._highest.get(key, 0)
            if assignment.incarnation < highest:
                log.warning(
                    "ignoring stale assignment %s/%s incarnation %d (incarnation %d seen)",
                    assignment.app,
                    assignment.name,
                    assignment.incarnation,
                    highest,
                )
                slot = self._slots.get(key)
                if slot is not None and slot.desired is not None:
                    wanted[key] = slot.desired  # keep what runs; the stale order starts nothing
                continue
            wanted[key] = assignment
        if len(wanted) > self.config.capacity:
            log.warning(
                "desired set holds %d instances, over this node's capacity of %d",
                len(wanted),
                self.config.capacity,
            )
        for key, assignment in wanted.items():
            self._highest[key] = max(self._highest.get(key, 0), assignment.incarnation)
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot(key)
                slot.task = asyncio.create_task(
                    self._drive(slot), name=f"slot {key[0]}/{key[1]} v{key[2]}"
                )
            if slot.desired is None or not _same_order(slot.desired, assignment):
                slot.desired = assignment
                slot.wake.set()
        for key, slot in self._slots.items():
            if key not in wanted and slot.desired is not None:
                slot.desired = None
                slot.wake.set()
        self._prune_slugs()
        return True

    def _slugs_in_use(self) -> set[str]:
        """The slugs of every desired or still running instance: never pruned."""
        used: set[str] = set()
        for slot in self._slots.values():
            running = slot.current.assignment if slot.current is not None else None
            for assignment in (slot.desired, running):
                if assignment is not None and assignment.HasField("slug"):
                    used.add(assignment.slug.digest)
        return used

    def _prune_slugs(self) -> None:
        if self._pruning:
            self._prune_again = True  # the running one may have read what was in use
            return
        self._prune_again = False
        task = asyncio.create_task(self.slugs.prune(), name="slug cache prune")
        self._pruning.add(task)
        task.add_done_callback(self._pruned)

    def _pruned(self, task: asyncio.Task[list[str]]) -> None:
        self._pruning.discard(task)
        if task.cancelled():
            return
        if task.exception() is not None:
            log.error("pruning the slug cache failed: %r", task.exception())
        if self._prune_again and not self._closing:
            self._prune_slugs()

    async def close(self) -> None:
        """Stop every instance gracefully (in parallel) and accept no desired set after."""
        self._closing = True
        if self._sampler is not None:
            self._sampler.cancel()
        for task in list(self._pruning):
            task.cancel()
        for slot in self._slots.values():
            slot.desired = None
            slot.wake.set()
        tasks = [slot.task for slot in self._slots.values() if slot.task is not None]
        if tasks:
            await asyncio.gather(*(asyncio.shield(task) for task in tasks), return_exceptions=True)
        await self.slugs.close()

    # ------------------------------------------------------------ one (app, name)

    async def _drive(self, slot: _Slot) -> None:
        app, name, _ = slot.key
        try:
            while True:
                want, current = slot.desired, slot.current
                if current is not None and (
                    want is None
                    or want.incarnation != current.incarnation
                    or want.app_id != current.app_id
                ):
                    if want is not None and not await self._prefetched(slot, current, want):
                        continue  # the one it replaces keeps serving meanwhile
                    reason = (
                        "no longer assigned to this node"
                        if want is None
                        else f"replaced by incarnation {want.incarnation}"
                    )
                    await current.stop(reason)
                    slot.current = None
                    continue
                if want is None:
                    break
                if current is None:
                    current = slot.current = Instance(
                        want,
                        config=self.config,
                        buffer=self.logs.buffer(app, name, want.app_id),
                        port_for=functools.partial(self.ports.lease, slot.key),
                        base_env=self._base_env,
                        report=self._report,
                        processes=self.processes,
                        clock=self.clock,
                        agent_id=self.agent_id,
                        slugs=self.slugs,
                    )
                    current.start()
                await slot.wake.wait()
                slot.wake.clear()
        except Exception:
            log.exception("%s/%s: the instance driver failed", app, name)
            if slot.current is not None:
                await slot.current.stop("agent error")
        finally:
            if self._slots.get(slot.key) is slot:
                del self._slots[slot.key]
            self.ports.release(slot.key)
            if not self._closing:
                self._prune_slugs()  # its slug may be unused now
            # The buffer is (app, name)'s: another release's copy may still write to it.
            if not any(key[:2] == (app, name) for key in self._slots):
                self.logs.retire(app, name)

    async def _prefetched(self, slot: _Slot, current: Instance, want: pb.Assignment) -> bool:
        """Whether `current` may be replaced by `want` now: once want's slug is here, so
        that an instance that serves keeps serving while it is fetched. A fetch that fails
        keeps it serving (the failure logged, retried with backoff) until the desired set
        changes again or it stops serving itself."""
        if current.state is not State.UP or not want.HasField("slug"):
            return True
        if current.assignment.slug.digest == want.slug.digest:
            return True
        slot.wake.clear()  # the caller has just read the desired set
        acquire = asyncio.ensure_future(self.slugs.acquire(want.slug, lambda _: None))
        woken = asyncio.ensure_future(slot.wake.wait())
        try:
            await asyncio.wait({acquire, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
        if not acquire.done():
            acquire.cancel()  # the desired set changed: look again (the fetch goes on)
            return False
        try:
            acquire.result()
        except (SlugError, InvalidInput) as exc:
            if slot.prefetch is None:
                slot.prefetch = Backoff(
                    self.config.restart_base, self.config.restart_cap, attempts=1
                )
            delay = slot.prefetch.next_delay(0.0)
            current.buffer.append(
                PAAS_STREAM,
                f"Slug of incarnation {want.incarnation} not ready: {exc}; incarnation "
                f"{current.incarnation} keeps running, fetching again in {seconds(delay)}s",
            )
            woken = asyncio.ensure_future(slot.wake.wait())
            try:
                await self.clock.wait(woken, delay)
            finally:
                woken.cancel()
            return False
        slot.prefetch = None
        return True

    async def _sample_usage(self) -> None:
        """Every usage_interval, CPU and RSS of each running group; a notable change is reported."""
        while True:
            await self.clock.sleep(self.config.usage_interval)
            running = {instance.pid: instance for instance in self.instances() if instance.pid}
            if not running:
                continue
            try:
                usage = await self.processes.usage(set(running))
            except Exception:
                log.exception("sampling resource use failed")
                continue
            for pgid, found in usage.items():
                instance = running[pgid]
                if instance.pid != pgid:
                    continue  # it exited (or restarted) meanwhile
                if instance.record_usage(found.cpu_percent, found.rss_bytes):
                    self._report(instance)

    def _report(self, instance: Instance) -> None:
        status = instance.status()
        for listener in list(self._listeners):
            try:
                listener(status)
            except Exception:
                log.exception("a status listener failed")


def _same_order(a: pb.Assignment, b: pb.Assignment) -> bool:
    """Whether two assignments are one order: the same incarnation of the same app. The
    app id tells apart two clusters whose etcds reached the same revision."""
    return a.incarnation == b.incarnation and a.app_id == b.app_id
