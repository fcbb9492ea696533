"""One-off processes (`paas run`, the release phase) on this node: run once, never restarted.

Owns the node's runs, keyed by (app, name) (`run.4`, `release.7`), apart from the
supervisor's formation slots: they hold no slot and are never restarted. The
scheduler commands them over the agent's own session, level-triggered: `apply`
takes the whole RunSet, starts a run it has not seen (unless the set says it
started once already, which means this agent restarted and lost it: reported
`gone`, never run twice), and stops a run the set no longer holds (SIGHUP to its
group, as a hung-up terminal does, SIGKILL after its grace). Every run's start
and exit go to the app's log stream as lifecycle lines of its name
(`paas[run.4]: Process exited with status 3`).

A detached run's output goes to its log buffer like an instance's. An attached
run's stdin, stdout and stderr travel over the session (RunInput/RunOutput):
output is flow-controlled by a window per run (the scheduler says how many bytes
it passed on, `output_taken`), and a reader waiting for room stops reading the
pipe, so a process writing faster than the user's terminal reads blocks instead
of losing output. Bytes in flight when a session ends are lost with it; the
exit is not: every run's state is sent again on each new session until the
scheduler drops the run from the set.

It reuses the supervisor's seams: processes.py spawns (own group, the reaper told,
the run's token in its environment, so nothing of it outlives the agent), the
slug cache gives its tree, the port pool its $PORT.

    oneoffs = OneOffs(config, logs, ports, HostProcesses(reaper), slugs, agent_id)
    oneoffs.connected(send)            # a session is open: statuses go to `send`
    oneoffs.apply(run_set)             # start and stop to match
    oneoffs.input(run_input)           # stdin, signals, output taken
    await oneoffs.close()              # stops every run
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from enum import Enum
from typing import Any

from paas.agent.config import AgentConfig
from paas.agent.errors import SlugError
from paas.agent.logbuffer import LogBuffer, LogHub, pump
from paas.agent.orphans import AGENT_ID_VAR, RUN_ID_VAR, new_token
from paas.agent.ports import PortError, PortPool
from paas.agent.processes import HostChild, HostProcesses, SpawnError
from paas.agent.slugcache import SlugCache
from paas.common.errors import InvalidInput
from paas.common.logformat import PAAS_STREAM
from paas.common.processes import describe_exit
from paas.proto import paas_pb2 as pb

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (app, run name)
Send = Callable[[pb.RunOutput], None]

# Output bytes of one attached run in flight to the scheduler before its reader waits.
OUTPUT_WINDOW = 256 * 1024
READ_CHUNK = 32 * 1024
LAST_LINES = 10
DRAIN_TIMEOUT = 2.0


class RunState(Enum):
    """Where a one-off stands: no process yet, running, being stopped, ended."""

    PENDING = "pending"  # its slug is being had
    RUNNING = "running"
    STOPPING = "stopping"  # no longer in the set: SIGHUP, then SIGKILL after the grace
    EXITED = "exited"


def exit_of(returncode: int, last_lines: list[str]) -> pb.RunExit:
    """The exit as the CLI passes it on: the status, or 128+N for signal N."""
    if returncode < 0:
        return pb.RunExit(
            code=128 - returncode,
            signal=-returncode,
            text=describe_exit(returncode),
            last_lines=last_lines,
        )
    return pb.RunExit(code=returncode, text=describe_exit(returncode), last_lines=last_lines)


class OneOff:
    """One run: its process from spawn to exit, its I/O and its window."""

    def __init__(self, spec: pb.RunSpec, owner: OneOffs) -> None:
        self.spec = spec
        self.key: Key = (spec.app, spec.name)
        self.state = RunState.PENDING
        self.pid = 0
        self.exit: pb.RunExit | None = None
        self._owner = owner
        self.buffer: LogBuffer = owner.logs.buffer(spec.app, spec.name, spec.app_id)
        self._child: HostChild | None = None
        self._stop = asyncio.Event()
        self._stdin: asyncio.Queue[bytes | None] = asyncio.Queue()
        # The window of this session: output bytes sent, and passed on by the scheduler.
        self.sent = 0
        self.taken = 0
        self.stdin_taken = 0
        self._room = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ commands

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"one-off {self.key[0]}/{self.key[1]}")

    def stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    def input(self, message: pb.RunInput) -> None:
        if message.stdin:
            self._stdin.put_nowait(bytes(message.stdin))
        if message.eof:
            self._stdin.put_nowait(None)
        if message.signal and self.pid and self.state is RunState.RUNNING:
            self._owner.processes.signal_group(self.pid, message.signal)
        if message.output_taken > self.taken:
            self.taken = message.output_taken
            self._room.set()

    def new_session(self) -> None:
        """A new session: its window starts over (bytes sent on the old one are gone)."""
        self.sent = self.taken = self.stdin_taken = 0
        self._room.set()

    def status(self) -> pb.RunOutput:
        """What the scheduler must know of the run: started (pid) and how it ended."""
        message = pb.RunOutput(app=self.spec.app, name=self.spec.name, pid=self.pid)
        if self.exit is not None:
            message.exit.CopyFrom(self.exit)
        return message

    # ------------------------------------------------------------ the run

    def _line(self, text: str) -> None:
        self.buffer.append(PAAS_STREAM, text)

    async def _run(self) -> None:
        try:
            await self._run_once()
        except Exception as exc:  # a bug must not leave the run unreported
            log.exception("%s/%s: the one-off failed", *self.key)
            self._ended(pb.RunExit(code=1, text=f"agent error: {exc!r}"))
        finally:
            if self._child is not None and self._child.returncode is None:
                self._owner.processes.signal_group(self._child.pid, signal.SIGKILL)

    async def _run_once(self) -> None:
        workdir = await self._workdir()
        if isinstance(workdir, pb.RunExit):
            self._ended(workdir)
            return
        if self._stop.is_set():
            self._ended(pb.RunExit(code=1, text="stopped before it started"))
            return
        try:
            lease = self._owner.ports.lease(("run", *self.key))
        except PortError as exc:
            self._line(str(exc))
            self._ended(pb.RunExit(code=1, text=str(exc)))
            return
        token = new_token(self._owner.config.name)
        env = self._env(lease.port, token)
        self._line(f"Starting process with command `{self.spec.command}`")
        log_run = self.buffer.begin_run()
        try:
            child = await self._owner.processes.spawn(
                self.spec.command, cwd=workdir, env=env, stdin=self.spec.attached
            )
        except SpawnError as exc:
            self._line(str(exc))
            self.buffer.end_run()
            self._ended(pb.RunExit(code=1, text=str(exc)))
            return
        self._child = child
        self.pid = child.pid
        self.state = RunState.RUNNING
        self._line(f"State changed from starting to up (pid {child.pid})")
        self._owner.send(self.status())
        if self.spec.attached:
            readers = [
                asyncio.create_task(self._forward(child.stdout, "stdout")),
                asyncio.create_task(self._forward(child.stderr, "stderr")),
            ]
            feeder = asyncio.create_task(self._feed(child))
        else:
            readers = [
                asyncio.create_task(pump(child.stdout, "stdout", self.buffer)),
                asyncio.create_task(pump(child.stderr, "stderr", self.buffer)),
            ]
            feeder = None
        stopping = asyncio.create_task(self._stop.wait())
        try:
            either: set[asyncio.Future[Any]] = {child.exited, stopping}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not child.exited.done():
                await self._hang_up(child)
        finally:
            stopping.cancel()
            if feeder is not None:
                feeder.cancel()
        # What the leader left in its group, and what escaped it, ends with it.
        self._owner.processes.signal_group(child.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await self._owner.processes.sweep(token)
        _done, pending = await asyncio.wait(readers, timeout=DRAIN_TIMEOUT)
        for stream in ("stdout", "stderr"):
            child.cut_off(stream)
        if pending:
            await asyncio.wait(pending, timeout=DRAIN_TIMEOUT)
            for task in pending:
                task.cancel()
        child.close()
        returncode = child.returncode
        assert returncode is not None
        self.pid = 0
        if returncode < 0:
            self._line(f"Process exited on {describe_exit(returncode)}")
        else:
            self._line(f"Process exited with status {returncode}")
        self.buffer.end_run()
        self._ended(exit_of(returncode, self.buffer.last_output(log_run, LAST_LINES)))

    async def _workdir(self) -> str | pb.RunExit | None:
        if not self.spec.HasField("slug"):
            return self.spec.dir or None
        try:
            tree = await self._owner.slugs.acquire(self.spec.slug, self._line)
        except (SlugError, InvalidInput) as exc:
            self._line(f"Slug not ready: {exc}")
            return pb.RunExit(code=1, text=f"slug not ready: {exc}")
        return str(tree)

    async def _hang_up(self, child: HostChild) -> None:
        """No longer wanted: SIGHUP to the group (its terminal went away), then SIGKILL."""
        self.state = RunState.STOPPING
        grace = self.spec.settings.stop_grace or self._owner.config.stop_grace
        self._line("Stopping the process with SIGHUP")
        self._owner.processes.signal_group(child.pid, signal.SIGHUP)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(child.exited), grace)
            return
        self._line(f"Stopping the process with SIGKILL: still running {grace:g}s after SIGHUP")
        self._owner.processes.signal_group(child.pid, signal.SIGKILL)
        await asyncio.shield(child.exited)

    def _ended(self, ending: pb.RunExit) -> None:
        self.state = RunState.EXITED
        self.exit = ending
        self._owner.send(self.status())
        self._owner.ended(self)

    async def _forward(self, reader: asyncio.StreamReader, stream: str) -> None:
        """An attached run's pipe to the session, as the window lets it."""
        while chunk := await reader.read(READ_CHUNK):
            while self.sent - self.taken >= OUTPUT_WINDOW or not self._owner.is_connected:
                self._room.clear()
                await self._room.wait()
            self.sent += len(chunk)
            message = pb.RunOutput(app=self.spec.app, name=self.spec.name)
            setattr(message, stream, chunk)
            self._owner.send(message)

    async def _feed(self, child: HostChild) -> None:
        """The stdin the scheduler passes on, written to the process (its EOF closes it)."""
        writer = child.stdin
        if writer is None:
            return
        try:
            while (data := await self._stdin.get()) is not None:
                writer.write(data)
                await writer.drain()
                self.stdin_taken += len(data)
                self._owner.send(
                    pb.RunOutput(
                        app=self.spec.app, name=self.spec.name, stdin_taken=self.stdin_taken
                    )
                )
        except (BrokenPipeError, ConnectionResetError):
            return  # it closed its stdin or exited: what it did not read is dropped
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def _env(self, port: int, token: str) -> dict[str, str]:
        env = dict(self._owner.base_env)
        env.update(self.spec.env)
        env.update(
            PORT=str(port),
            PAAS_APP=self.spec.app,
            PAAS_PROCESS_TYPE=self.spec.type,
            PAAS_INSTANCE=self.spec.name,
            DYNO=self.spec.name,
        )
        # Last, so no config var can hide the run from the sweeps (orphans.py).
        env[AGENT_ID_VAR] = self._owner.agent_id
        env[RUN_ID_VAR] = token
        return env


class OneOffs:
    """The node's one-offs, driven towards the last RunSet (see the module docstring)."""

    def __init__(
        self,
        config: AgentConfig,
        logs: LogHub,
        ports: PortPool,
        processes: HostProcesses,
        slugs: SlugCache,
        agent_id: str,
    ) -> None:
        self.config = config
        self.logs = logs
        self.ports = ports
        self.processes = processes
        self.slugs = slugs
        self.agent_id = agent_id
        self.base_env = dict(os.environ)
        self._runs: dict[Key, OneOff] = {}
        self._wanted: set[Key] = set()
        self._send: Send | None = None
        self._closing = False
        # A slug a run uses is never pruned: the cache asks the supervisor and us.
        others = slugs.in_use
        slugs.in_use = lambda: others() | self._slugs_in_use()

    @property
    def is_connected(self) -> bool:
        return self._send is not None

    def runs(self) -> list[OneOff]:
        return list(self._runs.values())

    def get(self, app: str, name: str) -> OneOff | None:
        return self._runs.get((app, name))

    # ------------------------------------------------------------ the session

    def connected(self, send: Send) -> None:
        """A session is open: every run's state is sent on it, then what happens."""
        self._send = send
        for run in self._runs.values():
            run.new_session()
            send(run.status())

    def disconnected(self) -> None:
        self._send = None

    def send(self, message: pb.RunOutput) -> None:
        if self._send is not None:
            self._send(message)

    # ------------------------------------------------------------ commands

    def apply(self, runs: pb.RunSet) -> None:
        """Start what is new, report what is lost, stop and forget what is not wanted."""
        if self._closing:
            return
        wanted: set[Key] = set()
        for spec in runs.runs:
            key = (spec.app, spec.name)
            wanted.add(key)
            if key in self._runs:
                continue
            if spec.started:
                # It ran here before this agent started: the reaper ended it then.
                self.send(pb.RunOutput(app=spec.app, name=spec.name, gone=True))
                continue
            run = self._runs[key] = OneOff(spec, self)
            run.start()
        self._wanted = wanted
        for key, run in list(self._runs.items()):
            if key in wanted:
                continue
            if run.state is RunState.EXITED:
                self._forget(run)
            else:
                run.stop()

    def input(self, message: pb.RunInput) -> None:
        run = self._runs.get((message.app, message.name))
        if run is not None:
            run.input(message)

    def ended(self, run: OneOff) -> None:
        if run.key not in self._wanted or self._closing:
            self._forget(run)

    def _forget(self, run: OneOff) -> None:
        if self._runs.get(run.key) is run:
            del self._runs[run.key]
            self.ports.release(("run", *run.key))
            self.logs.retire(*run.key)

    def _slugs_in_use(self) -> set[str]:
        return {run.spec.slug.digest for run in self._runs.values() if run.spec.HasField("slug")}

    async def close(self) -> None:
        """Stop every run (SIGHUP, grace, SIGKILL) and take no RunSet after."""
        self._closing = True
        runs = list(self._runs.values())
        for run in runs:
            run.stop()
        await asyncio.gather(*(run.wait() for run in runs), return_exceptions=True)
