"""The seam between an instance's state machine and the host: processes and the clock.

An Instance (supervisor.py) decides; everything it asks of the kernel goes
through a `Processes` and everything it asks of time through a `Clock`, two
small protocols. `HostProcesses` and `SystemClock` are the real ones, and the
default; unit tests give a fake of each, so transitions, backoff, the boot
timeout and stop escalation run in milliseconds without a process.

`HostProcesses` owns how a process is spawned: `/bin/bash -c COMMAND` (bash
execs a lone simple command itself, dash forks it, so the pid `paas ps` shows
is the app's own), in a new session (its own process group), with pipes for
stdout and stderr read fairly, one spawn at a time on the loop's thread. It
keeps the fast posix_spawn/vfork path of `subprocess` (no preexec_fn), tells
the reaper sidecar every group, and registers each leader as the agent's own
child (orphans.py) so the orphan reaper leaves it to asyncio.

It never decides when to start, stop or restart anything.

    processes, clock = HostProcesses(reaper), SystemClock()
    child = await processes.spawn("python3 -m http.server $PORT", cwd=None, env=env)
    processes.signal_group(child.pid, signal.SIGTERM)
    await clock.wait(asyncio.shield(child.exited), 30.0)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Collection
from typing import Any, Protocol

import aiohttp
import psutil

from paas.agent.errors import AgentError
from paas.agent.orphans import Carrier, Sweeper, own_children
from paas.agent.reaper import Reaper
from paas.agent.usage import Usage, UsageSampler
from paas.common import processes as common

PIPE_LIMIT = 2**16
OUTPUT_FDS = {"stdout": 1, "stderr": 2}  # the child's output pipes, by stream
# The most output bytes one read of a pipe hands on before the loop gets a turn: a
# process that floods its output must not starve the agent's loop. 32 KiB is about
# 320 lines, well under a millisecond of the agent's work since a read's lines are
# kept and sent as one run; 16 KiB cost a sixth more CPU per line in loop turns, and
# 4 KiB a fifth more again (bench/logs.py). A read of one-character lines (`yes`:
# 16,384 of them) still fits a follower's queue whole (SUBSCRIBER_QUEUE).
FAIR_READ = 32768
SHELL = "/bin/bash" if os.access("/bin/bash", os.X_OK) else "/bin/sh"


class SpawnError(AgentError):
    """An instance's process could not be started (no such directory, no memory...)."""


# ------------------------------------------------------------------ the protocols


class Child(Protocol):
    """One spawned process: the leader of its own group."""

    @property
    def pid(self) -> int:
        """The leader's pid, which is also its process group's id."""

    @property
    def stdout(self) -> asyncio.StreamReader: ...

    @property
    def stderr(self) -> asyncio.StreamReader: ...

    @property
    def exited(self) -> asyncio.Future[None]:
        """Done when the leader has exited (its pipes may still be open)."""

    @property
    def returncode(self) -> int | None:
        """The leader's exit status (negative: killed by that signal); None while it runs."""

    def cut_off(self, stream: str) -> bool:
        """Close `stream`'s pipe if it is still open; whether it was."""

    def close(self) -> None:
        """Forget the child: its exit was taken and its output drained."""


class Processes(Protocol):
    """What an instance asks of the kernel."""

    async def spawn(self, command: str, *, cwd: str | None, env: dict[str, str]) -> Child:
        """Start `command` in a new process group; raises SpawnError."""

    def signal_group(self, pgid: int, signum: int) -> None:
        """Signal every process of group `pgid`; a group that is gone is fine."""

    async def alive(self, pgid: int, pids: Collection[int] = ()) -> bool:
        """Whether group `pgid`, or one of `pids` (escaped from it), still runs."""

    async def terminate_escaped(self, token: str, pgid: int) -> list[Carrier]:
        """SIGTERM the processes of run `token` that left group `pgid`; which they were."""

    async def sweep(self, token: str) -> list[Carrier]:
        """SIGKILL every process left of run `token`, in its group or not; which they were."""

    async def accepts(self, port: int, timeout: float) -> bool:  # noqa: ASYNC109
        """Whether 127.0.0.1:`port` accepts a TCP connection within `timeout` seconds."""

    async def answers(self, port: int, path: str, timeout: float) -> bool:  # noqa: ASYNC109
        """Whether GET http://127.0.0.1:`port``path` answers 2xx or 3xx within `timeout`."""

    async def usage(self, pgids: set[int]) -> dict[int, Usage]:
        """CPU and memory of each group of `pgids`."""


class Clock(Protocol):
    """What an instance asks of time."""

    def now(self) -> float:
        """Unix seconds, for what status reports show (since, next start)."""

    def monotonic(self) -> float:
        """Seconds that only go forward, for deadlines and uptimes."""

    async def sleep(self, seconds: float) -> None: ...

    async def wait(self, awaitable: Awaitable[Any], timeout: float) -> bool:  # noqa: ASYNC109
        """Await `awaitable` for at most `timeout` seconds; whether it finished.

        On timeout it is cancelled (shield what must live on).
        """


# ------------------------------------------------------------------ the real clock


class SystemClock:
    """The wall clock and the event loop's monotonic clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait(self, awaitable: Awaitable[Any], timeout: float) -> bool:  # noqa: ASYNC109
        try:
            await asyncio.wait_for(awaitable, max(0.0, timeout))
        except TimeoutError:
            return False
        return True


# ------------------------------------------------------------------ the real processes


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


def any_alive(pgid: int, pids: Collection[int]) -> bool:
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


class HostChild:
    """A process spawned by HostProcesses: asyncio's transport and protocol for it."""

    def __init__(
        self,
        transport: asyncio.SubprocessTransport,
        protocol: _ChildProtocol,
        reaper: Reaper | None,
    ) -> None:
        assert protocol.stdout is not None and protocol.stderr is not None
        self._transport = transport
        self._protocol = protocol
        self._reaper = reaper
        self.pid = transport.get_pid()  # start_new_session: also the group id
        self.stdout: asyncio.StreamReader = protocol.stdout
        self.stderr: asyncio.StreamReader = protocol.stderr
        self.stdin: asyncio.StreamWriter | None = protocol.stdin  # spawned with stdin=True
        self.exited = protocol.exited

    @property
    def returncode(self) -> int | None:
        return self._transport.get_returncode()

    def cut_off(self, stream: str) -> bool:
        pipe = self._transport.get_pipe_transport(OUTPUT_FDS[stream])
        # A closing pipe has reached its end: its reader only has lines left to hand on.
        if pipe is None or pipe.is_closing():
            return False
        pipe.close()  # the reader sees the end of what it has received
        return True

    def close(self) -> None:
        self._transport.close()
        if self._reaper is not None:
            self._reaper.untrack(self.pid)
        own_children.discard(self.pid)  # asyncio has its exit status


class HostProcesses:
    """Processes of this host, spawned and signalled for real (see the module docstring).

    One per agent: its spawn lock makes a burst of starts let the loop turn
    between forks, and its sweeper batches the /proc scans of many instances.
    """

    def __init__(self, reaper: Reaper | None = None, sweeper: Sweeper | None = None) -> None:
        self.reaper = reaper
        self.sweeper = sweeper or Sweeper()
        self._spawn_lock = asyncio.Lock()
        self._sampler = UsageSampler()

    async def spawn(
        self, command: str, *, cwd: str | None, env: dict[str, str], stdin: bool = False
    ) -> HostChild:
        """`stdin`: give it a pipe to write to (HostChild.stdin; a one-off's attached
        input), else /dev/null."""
        loop = asyncio.get_running_loop()
        try:
            # The fork runs on the loop's thread: one at a time, so that a burst of
            # starts lets the loop turn between forks instead of stalling for all.
            async with self._spawn_lock:
                with own_children.spawning():  # asyncio waits for the leader
                    transport, protocol = await loop.subprocess_exec(
                        lambda: _ChildProtocol(PIPE_LIMIT, loop),
                        SHELL,
                        "-c",
                        command,
                        cwd=cwd,
                        env=env,
                        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.PIPE,
                        start_new_session=True,
                    )
                    pgid = transport.get_pid()
                    own_children.add(pgid)
                    own_children.add_group(pgid)
        except OSError as exc:
            raise SpawnError(f"cannot start: {exc}") from None
        if self.reaper is not None:
            self.reaper.track(pgid)
        return HostChild(transport, protocol, self.reaper)

    def signal_group(self, pgid: int, signum: int) -> None:
        common.signal_group(pgid, signum)

    async def alive(self, pgid: int, pids: Collection[int] = ()) -> bool:
        return await asyncio.to_thread(any_alive, pgid, list(pids))

    async def terminate_escaped(self, token: str, pgid: int) -> list[Carrier]:
        return await self.sweeper.terminate(token, pgid)

    async def sweep(self, token: str) -> list[Carrier]:
        return await self.sweeper.sweep(token)

    async def accepts(self, port: int, timeout: float) -> bool:  # noqa: ASYNC109
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        except (OSError, TimeoutError):
            return False
        local, peer = writer.get_extra_info("sockname"), writer.get_extra_info("peername")
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        # A TCP self-connect (port in the ephemeral range, nobody listening) is no listener.
        return bool(local != peer)

    async def answers(self, port: int, path: str, timeout: float) -> bool:  # noqa: ASYNC109
        # A session per check: checks run only while an instance boots and for its
        # first min_healthy seconds up, a few a second at most.
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=client_timeout) as session,
                session.get(f"http://127.0.0.1:{port}{path}", allow_redirects=False) as response,
            ):
                return 200 <= response.status < 400
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def usage(self, pgids: set[int]) -> dict[int, Usage]:
        return await self._sampler.sample(pgids)
