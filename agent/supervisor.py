"""The lifecycle of every instance on this node, as one explicit state machine each.

Owns the Instances (one per (app, name)), their processes and process
groups, crash restarts with backoff, the web health check and the graceful
stop. Supervisor applies a DesiredSet level-triggered: it starts what is
missing, replaces what has a newer incarnation and stops what is not in the
set, whatever happened before. Every transition writes a lifecycle line into
the instance's log buffer and pushes an InstanceStatus to the listeners (the
session).

It never decides what should run (that is the scheduler's desired set), never
starts an assignment older than one it has seen, never talks gRPC and never
leaves a process behind: stopping ends the whole process group, a crashed
leader's leftovers are killed, what escaped the group is killed by the run's
token (orphans.py says which mechanism catches what), and the reaper is told
every group so that even the agent's own death ends them.

Commands run with `/bin/bash -c` where bash exists, else `/bin/sh -c`: bash
execs a lone simple command itself (dash forks it), so the pid `paas ps` shows
is the app's own process, not a wrapper shell.

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
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import psutil

from paas.agent.config import AgentConfig
from paas.agent.logbuffer import LogBuffer, LogHub, pump
from paas.agent.orphans import AGENT_ID_VAR, RUN_ID_VAR, Carrier, Sweeper, new_token, own_children
from paas.agent.ports import PortPool, PortsExhausted
from paas.agent.reaper import Reaper
from paas.agent.usage import UsageSampler
from paas.common.logformat import PAAS_STREAM
from paas.proto import paas_pb2 as pb

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (app, instance name)

WEB_TYPE = "web"  # the process type that gets traffic, so must listen on $PORT
LAST_LINES = 10  # output lines of a run kept with its exit, for `paas ps`
# Resource use is reported when CPU moves by this many points or RSS by this fraction.
USAGE_CPU_CHANGE = 1.0
USAGE_RSS_CHANGE = 0.05
HEALTH_INTERVAL = 0.05
GROUP_POLL_INTERVAL = 0.1
# After the leader exits, how long its output pipes may stay open (held by an
# escaped process) before they are closed anyway.
DRAIN_TIMEOUT = 2.0
PIPE_LIMIT = 2**16
OUTPUT_FDS = {"stdout": 1, "stderr": 2}  # the child's output pipes, by stream
# The most output bytes one read of a pipe hands on before the loop gets a turn: a
# process that floods its output must not starve the agent's loop. 16 KiB is about
# 160 lines, well under a millisecond of the agent's work since lines are handled
# in batches; 4 KiB cost a fifth more CPU per line in loop turns (bench/logs.py).
FAIR_READ = 16384
SHELL = "/bin/bash" if os.access("/bin/bash", os.X_OK) else "/bin/sh"


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
    State.PENDING: frozenset({State.STARTING, State.STOPPED}),
    State.STARTING: frozenset({State.UP, State.CRASHED, State.STOPPING}),
    State.UP: frozenset({State.CRASHED, State.STOPPING}),
    State.CRASHED: frozenset({State.STARTING, State.BACKOFF, State.STOPPED}),
    State.BACKOFF: frozenset({State.STARTING, State.STOPPED}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.STOPPED: frozenset(),
}


def install_child_watcher() -> None:
    """On Python 3.11, watch children with pidfds (no thread per child), if the kernel can.

    Python 3.12+ does this by itself. The watcher is attached to the running loop
    and is left alone if one already is.
    """
    if sys.version_info >= (3, 12) or not hasattr(asyncio, "PidfdChildWatcher"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return
    loop = asyncio.get_running_loop()
    policy = asyncio.get_event_loop_policy()
    current = getattr(policy, "_watcher", None)
    if isinstance(current, asyncio.PidfdChildWatcher) and current.is_active():
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(loop)
    policy.set_child_watcher(watcher)


def describe_exit(returncode: int) -> str:
    """`exit 1` or `signal 9 (SIGKILL)`, as InstanceStatus.last_exit shows it."""
    if returncode >= 0:
        return f"exit {returncode}"
    number = -returncode
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
    return f"signal {number} ({name})"


def exit_reason(returncode: int) -> str:
    """Why a run ended, for InstanceStatus.reason: the exit, and what the shell's codes mean."""
    described = describe_exit(returncode)
    if returncode == 127:
        return f"{described}: command not found (its last output says which)"
    if returncode == 126:
        return f"{described}: command not executable"
    return described


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def group_alive(pgid: int) -> bool:
    """Whether group `pgid` has a member that is not a zombie (blocking: run it in a thread).

    Zombies count as gone: a host whose init does not reap orphans keeps them.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def _any_alive(pgid: int, pids: list[int]) -> bool:
    """Whether group `pgid`, or one of `pids` (escaped from it), still runs (blocking).

    A pid counts while it is not a zombie; were it reused meanwhile, it would keep
    the wait going until the grace ends, no longer.
    """
    if group_alive(pgid):
        return True
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            continue
    return False


def _pids(carriers: list[Carrier]) -> str:
    """ "1, 2, 3" and, past ten, " and N more"."""
    shown = ", ".join(str(carrier.pid) for carrier in carriers[:10])
    more = f" and {len(carriers) - 10} more" if len(carriers) > 10 else ""
    return shown + more


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


class _FairReader(asyncio.StreamReader):
    """A pipe reader that lets the loop turn before every read and hands on at most
    FAIR_READ bytes each time.

    A StreamReader with data buffered returns it without suspending, and one turn
    of the loop may buffer 256 KiB of a flooding pipe: read by the log pump in
    64 KiB chunks, that held the loop for half a second at a time.
    """

    async def read(self, n: int = -1) -> bytes:
        await asyncio.sleep(0)
        return await super().read(FAIR_READ if n > FAIR_READ else n)


class _ChildProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's own subprocess protocol, with fair pipe readers and a future for the
    leader's exit alone.

    Process.wait() on Python 3.11 also waits for the pipes to close, which a
    grandchild may hold open; the instance must notice its leader's exit at once.
    """

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()
        self._reader_limit = limit
        self._reader_loop = loop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert isinstance(transport, asyncio.SubprocessTransport)
        # No data has arrived yet: swap asyncio's readers for fair ones.
        for fd in (1, 2):
            pipe = transport.get_pipe_transport(fd)
            if pipe is None:
                continue
            reader = _FairReader(limit=self._reader_limit, loop=self._reader_loop)
            reader.set_transport(pipe)
            if fd == 1:
                self.stdout = reader
            else:
                self.stderr = reader

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


class Instance:
    """One assignment (app, name, incarnation) and the process that runs it.

    `start()` runs the lifecycle in a task; `stop()` ends it and returns once
    the instance is STOPPED and its process group is gone.
    """

    def __init__(
        self,
        assignment: pb.Assignment,
        *,
        config: AgentConfig,
        buffer: LogBuffer,
        port_for: Callable[[], int],
        base_env: dict[str, str],
        reaper: Reaper | None,
        report: Callable[[Instance], None],
        spawn_lock: asyncio.Lock | None = None,
        sweeper: Sweeper | None = None,
        agent_id: str = "",
    ) -> None:
        self.assignment = assignment
        self.app = assignment.app
        self.name = assignment.name
        self.type = assignment.type
        self.incarnation = assignment.incarnation
        self.state = State.PENDING
        self.since = time.time()
        self.reason = ""
        self.pid = 0
        self.port = 0
        self.restarts = 0
        self.last_exit = ""
        self.started_at = 0.0  # unix seconds the current (or last) run started
        self.exited_at = 0.0
        self.ran_for = 0.0
        self.last_lines: list[str] = []  # output of the last run that exited
        self.next_start = 0.0  # unix seconds, while in backoff
        self.cpu_percent = 0.0
        self.rss_bytes = 0
        self.buffer = buffer
        # Per process type settings from the release; zero values mean the agent's.
        settings = assignment.settings
        self.stop_grace = settings.stop_grace or config.stop_grace
        self.boot_timeout = settings.boot_timeout or config.boot_timeout
        if settings.check == pb.ProcessSettings.CHECK_DEFAULT:
            self.port_check = self.type == WEB_TYPE
        else:
            self.port_check = settings.check == pb.ProcessSettings.CHECK_PORT
        self._port_for = port_for
        self._base_env = base_env
        self._reaper = reaper
        self._report = report
        self._spawn_lock = spawn_lock or asyncio.Lock()
        self._sweeper = sweeper or Sweeper()
        self._agent_id = agent_id or new_token(config.name)
        self._run_prefix = config.name
        self.run_id = ""  # PAAS_RUN_ID of the current (or last) run
        self._backoff = Backoff(
            config.restart_base,
            settings.backoff_cap or config.restart_cap,
            settings.backoff_reset or config.restart_reset_after,
        )
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Instance {self.app}/{self.name} #{self.incarnation} {self.state.label}>"

    def status(self) -> pb.InstanceStatus:
        return pb.InstanceStatus(
            app=self.app,
            name=self.name,
            type=self.type,
            incarnation=self.incarnation,
            state=self.state.value,
            pid=self.pid,
            port=self.port,
            restarts=self.restarts,
            last_exit=self.last_exit,
            since=self.since,
            release=self.assignment.release,
            reason=self.reason,
            next_start=self.next_start,
            exited_at=self.exited_at,
            ran_for=self.ran_for,
            last_lines=self.last_lines,
            cpu_percent=self.cpu_percent,
            rss_bytes=self.rss_bytes,
            started_at=self.started_at,
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

    # ------------------------------------------------------------ the lifecycle

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            try:
                uptime = await self._run_once()
            except Exception as exc:  # a bug must not end supervision of a live workload
                log.exception("%s/%s: unexpected error", self.app, self.name)
                if self.state in (State.STARTING, State.UP):
                    self._crash(f"agent error: {exc!r}")
                uptime = 0.0
            if self._stop.is_set():
                break
            delay = self._backoff.next_delay(uptime)
            if delay > 0:
                self.next_start = time.time() + delay
                self._to(State.BACKOFF, f"restarting in {_seconds(delay)}s")
                self._line(f"Restarting in {_seconds(delay)}s")
                deadline = loop.time() + delay
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), deadline - loop.time())
                if self._stop.is_set():
                    break
            else:
                self._line("Restarting now")
            self.restarts += 1
        self._to(State.STOPPED, self._stop_reason)

    async def _run_once(self) -> float:
        """Start the process and supervise it until it ends; how long it was up."""
        loop = asyncio.get_running_loop()
        self.next_start = 0.0
        run = self.buffer.begin_run()
        self._to(State.STARTING)
        try:
            self.port = self._port_for()
        except PortsExhausted as exc:
            self._crash(str(exc))
            self.buffer.end_run()
            return 0.0
        self._line(f"Starting process with command `{self.assignment.command}`")
        self.run_id = new_token(self._run_prefix)
        try:
            # The fork runs on the loop's thread: one at a time, so that a burst of
            # starts lets the loop turn between forks instead of stalling for all.
            async with self._spawn_lock:
                with own_children.spawning():  # asyncio waits for the leader
                    transport, protocol = await loop.subprocess_exec(
                        lambda: _ChildProtocol(PIPE_LIMIT, loop),
                        SHELL,
                        "-c",
                        self.assignment.command,
                        cwd=self.assignment.dir or None,
                        env=self._env(),
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.PIPE,
                        start_new_session=True,
                    )
                    pgid = transport.get_pid()  # start_new_session: the group id
                    own_children.add(pgid)
                    own_children.add_group(pgid)
        except OSError as exc:
            self._crash(f"cannot start: {exc}")
            self.buffer.end_run()
            return 0.0
        self.started_at = time.time()
        if self._reaper is not None:
            self._reaper.track(pgid)
        self.pid = pgid
        self._report(self)
        assert protocol.stdout is not None and protocol.stderr is not None
        pumps = {
            "stdout": asyncio.create_task(pump(protocol.stdout, "stdout", self.buffer)),
            "stderr": asyncio.create_task(pump(protocol.stderr, "stderr", self.buffer)),
        }
        failure = ""
        up_at: float | None = None
        try:
            failure, up_at = await self._supervise(protocol.exited, pgid)
        finally:
            if transport.get_returncode() is None:
                # Cancelled (the loop is going away): never leave the group behind.
                signal_group(pgid, signal.SIGKILL)
        stopping = self.state is State.STOPPING
        if not stopping:
            # Whatever the crashed leader left in its group dies with it.
            signal_group(pgid, signal.SIGKILL)
        await self._sweep(pgid)
        await self._drain(pumps, transport)
        transport.close()
        if self._reaper is not None:
            self._reaper.untrack(pgid)
        returncode = transport.get_returncode()
        assert returncode is not None
        own_children.discard(pgid)  # asyncio has its exit status
        self.last_exit = describe_exit(returncode)
        self.pid = 0
        self.exited_at = time.time()
        self.ran_for = round(self.exited_at - self.started_at, 3)
        self.last_lines = self.buffer.last_output(run, LAST_LINES)
        self.cpu_percent, self.rss_bytes = 0.0, 0
        self.buffer.end_run()
        if returncode < 0:
            self._line(f"Process exited on {self.last_exit}")
        else:
            self._line(f"Process exited with status {returncode}")
        reason = failure or exit_reason(returncode)
        if not stopping:
            if reason != self.last_exit and not failure:
                self._line(reason)  # what the shell's code means
            self._to(State.CRASHED, reason)
        return loop.time() - up_at if up_at is not None else 0.0

    async def _supervise(self, exited: asyncio.Future[None], pgid: int) -> tuple[str, float | None]:
        """Until the leader has exited: health, UP, and the stop sequence if asked.

        Returns why the run failed ("" if it just exited) and when it went UP.
        """
        loop = asyncio.get_running_loop()
        stopping = asyncio.create_task(self._stop.wait())
        try:
            if self.port_check:
                health = asyncio.create_task(self._until_listening(self.port))
                waits: set[asyncio.Future[Any]] = {exited, stopping, health}
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if not health.done():
                    health.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await health
                elif not exited.done() and not stopping.done():
                    if not health.result():
                        failure = (
                            f"boot timeout: did not listen on {self.port} within "
                            f"{_seconds(self.boot_timeout)}s"
                        )
                        self._line(failure)
                        signal_group(pgid, signal.SIGKILL)
                        await asyncio.shield(exited)
                        return failure, None
            if exited.done() or stopping.done():
                up_at = None
            else:
                self._to(State.UP)
                up_at = loop.time()
                either: set[asyncio.Future[Any]] = {exited, stopping}
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                await self._terminate(exited, pgid)
            return "", up_at
        finally:
            stopping.cancel()

    async def _until_listening(self, port: int) -> bool:
        """Whether 127.0.0.1:`port` accepts a connection within the boot timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.boot_timeout
        while True:
            remaining = deadline - loop.time()
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), max(0.05, min(1.0, remaining))
                )
            except (OSError, TimeoutError):
                if loop.time() >= deadline:
                    return False
                await asyncio.sleep(HEALTH_INTERVAL)
                continue
            local, peer = writer.get_extra_info("sockname"), writer.get_extra_info("peername")
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            if local == peer:
                # A TCP self-connect (port in the ephemeral range, nobody listening).
                await asyncio.sleep(HEALTH_INTERVAL)
                continue
            return True

    async def _terminate(self, exited: asyncio.Future[None], pgid: int) -> None:
        """SIGTERM the group; SIGKILL what is left of it after the grace."""
        loop = asyncio.get_running_loop()
        grace = self.stop_grace
        self._to(State.STOPPING, self._stop_reason)
        self._line("Stopping all processes with SIGTERM")
        signal_group(pgid, signal.SIGTERM)
        deadline = loop.time() + grace
        escaped = await self._sweeper.terminate(self.run_id, pgid)
        if escaped:
            self._line(
                f"Sent SIGTERM to {len(escaped)} process(es) that had left the process "
                f"group (pid {_pids(escaped)})"
            )
        pids = [carrier.pid for carrier in escaped]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(exited), max(0.0, deadline - loop.time()))
        # The leader is gone; the rest of its group (and what escaped it) may still be
        # finishing: what is left at the deadline gets SIGKILL, here and in the sweep.
        while exited.done() and loop.time() < deadline:
            if not await asyncio.to_thread(_any_alive, pgid, pids):
                break
            await asyncio.sleep(GROUP_POLL_INTERVAL)
        if not exited.done() or await asyncio.to_thread(_any_alive, pgid, pids):
            self._line(
                f"Error R12 (Exit timeout) -> At least one process failed to exit within "
                f"{_seconds(grace)}s of SIGTERM"
            )
            self._line("Stopping remaining processes with SIGKILL")
            signal_group(pgid, signal.SIGKILL)
        await asyncio.shield(exited)

    async def _sweep(self, pgid: int) -> None:
        """Kill what is left of this run outside its group (a daemon's double fork)."""
        try:
            killed: list[Carrier] = await self._sweeper.sweep(self.run_id)
        except Exception:
            log.exception("%s/%s: sweeping for escaped processes failed", self.app, self.name)
            return
        escaped = [carrier for carrier in killed if carrier.pgid != pgid]
        if escaped:
            self._line(
                f"Killed {len(escaped)} process(es) that had left the process group "
                f"(pid {_pids(escaped)})"
            )

    async def _drain(
        self, pumps: dict[str, asyncio.Task[None]], transport: asyncio.SubprocessTransport
    ) -> None:
        """Let the readers take the last output; an escaped holder of a pipe is cut off.

        A pipe still open DRAIN_TIMEOUT after the run ended is held by a process the
        sweep did not find. It is closed, not its reader cancelled: the reader still
        takes what it has received, and a notice says the rest was cut off.
        """
        _, pending = await asyncio.wait(pumps.values(), timeout=DRAIN_TIMEOUT)
        cut = []
        for stream, task in pumps.items():
            pipe = transport.get_pipe_transport(OUTPUT_FDS[stream])
            # A closing pipe has reached its end: its reader only has lines left to hand on.
            if task in pending and pipe is not None and not pipe.is_closing():
                pipe.close()  # the reader sees the end of what it has received
                cut.append(stream)
        await asyncio.gather(*pumps.values())
        if cut:
            self._line(
                f"Output cut off: {' and '.join(cut)} still open {_seconds(DRAIN_TIMEOUT)}s "
                "after the process exited (held by a process that left its group); "
                "what was written to it later is not kept"
            )

    # ------------------------------------------------------------ helpers

    def _env(self) -> dict[str, str]:
        env = dict(self._base_env)
        env.update(self.assignment.env)
        env.update(
            PORT=str(self.port),
            PAAS_APP=self.app,
            PAAS_PROCESS_TYPE=self.type,
            PAAS_INSTANCE=self.name,
            DYNO=self.name,
        )
        # Last, so no release config can hide a process from the sweeps (orphans.py).
        env[AGENT_ID_VAR] = self._agent_id
        env[RUN_ID_VAR] = self.run_id
        return env

    def _crash(self, reason: str) -> None:
        self._line(reason)
        self._to(State.CRASHED, reason)

    def _line(self, text: str) -> None:
        self.buffer.append(PAAS_STREAM, text)

    def _to(self, state: State, reason: str = "") -> None:
        if state is self.state:
            return
        if state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"{self!r}: no transition from {self.state.label} to {state.label}")
        previous, self.state = self.state, state
        self.since = time.time()
        self.reason = reason
        self._line(f"State changed from {previous.label} to {state.label}")
        self._report(self)


@dataclass
class _Slot:
    """Where one (app, name) lives on this node: what should run and what does."""

    key: Key
    desired: pb.Assignment | None = None
    current: Instance | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Supervisor:
    """All instances of this node, driven towards the last desired set.

    `apply(desired)` is level-triggered and returns at once: for each (app,
    name) a small driver keeps the running instance, starts a missing one,
    replaces an older incarnation by a newer one (stop first, keeping its
    port) or stops and removes one the set no longer holds. An assignment
    older than the highest incarnation ever seen for its (app, name) never
    starts; within one session (see `new_session`) a set with a lower
    generation than the last applied one is ignored.
    """

    def __init__(
        self,
        config: AgentConfig,
        logs: LogHub,
        ports: PortPool | None = None,
        reaper: Reaper | None = None,
    ) -> None:
        self.config = config
        self.logs = logs
        self.ports = ports if ports is not None else PortPool(*config.ports)
        self.reaper = reaper
        self._slots: dict[Key, _Slot] = {}
        self._highest: dict[Key, int] = {}
        self._generation = 0
        self._closing = False
        self._listeners: list[Callable[[pb.InstanceStatus], None]] = []
        self._base_env = dict(os.environ)
        self._sampler: asyncio.Task[None] | None = None
        self._spawn_lock = asyncio.Lock()
        self._sweeper = Sweeper()
        # Every instance carries it; the reaper sidecar kills by it when the agent dies.
        self.agent_id = reaper.agent_id if reaper and reaper.agent_id else new_token(config.name)

    # ------------------------------------------------------------ observing

    def add_listener(self, listener: Callable[[pb.InstanceStatus], None]) -> None:
        """Call `listener` with an InstanceStatus on every change of any instance."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[pb.InstanceStatus], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def instance(self, app: str, name: str) -> Instance | None:
        slot = self._slots.get((app, name))
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
            key = (assignment.app, assignment.name)
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
                slot.task = asyncio.create_task(self._drive(slot), name=f"slot {key[0]}/{key[1]}")
            if slot.desired is None or slot.desired.incarnation != assignment.incarnation:
                slot.desired = assignment
                slot.wake.set()
        for key, slot in self._slots.items():
            if key not in wanted and slot.desired is not None:
                slot.desired = None
                slot.wake.set()
        return True

    async def close(self) -> None:
        """Stop every instance gracefully (in parallel) and accept no desired set after."""
        self._closing = True
        if self._sampler is not None:
            self._sampler.cancel()
        for slot in self._slots.values():
            slot.desired = None
            slot.wake.set()
        tasks = [slot.task for slot in self._slots.values() if slot.task is not None]
        if tasks:
            await asyncio.gather(*(asyncio.shield(task) for task in tasks), return_exceptions=True)

    # ------------------------------------------------------------ one (app, name)

    async def _drive(self, slot: _Slot) -> None:
        app, name = slot.key
        try:
            while True:
                want, current = slot.desired, slot.current
                if current is not None and (
                    want is None or want.incarnation != current.incarnation
                ):
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
                        port_for=functools.partial(self.ports.acquire, slot.key),
                        base_env=self._base_env,
                        reaper=self.reaper,
                        report=self._report,
                        spawn_lock=self._spawn_lock,
                        sweeper=self._sweeper,
                        agent_id=self.agent_id,
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
            self.logs.retire(app, name)

    async def _sample_usage(self) -> None:
        """Every usage_interval, CPU and RSS of each running group; a notable change is reported."""
        sampler = UsageSampler()
        while True:
            await asyncio.sleep(self.config.usage_interval)
            running = {instance.pid: instance for instance in self.instances() if instance.pid}
            if not running:
                continue
            try:
                usage = await sampler.sample(set(running))
            except Exception:
                log.exception("sampling resource use failed")
                continue
            for pgid, found in usage.items():
                instance = running[pgid]
                if instance.pid != pgid:
                    continue  # it exited (or restarted) meanwhile
                notable = abs(found.cpu_percent - instance.cpu_percent) >= USAGE_CPU_CHANGE or abs(
                    found.rss_bytes - instance.rss_bytes
                ) > USAGE_RSS_CHANGE * max(instance.rss_bytes, 1)
                instance.cpu_percent, instance.rss_bytes = found.cpu_percent, found.rss_bytes
                if notable:
                    self._report(instance)

    def _report(self, instance: Instance) -> None:
        status = instance.status()
        for listener in list(self._listeners):
            try:
                listener(status)
            except Exception:
                log.exception("a status listener failed")
