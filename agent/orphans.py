"""Processes that escape their process group, and the zombies that come back to the agent.

Every instance runs in its own process group, and the group is what the
supervisor signals on stop and on crash and what the reaper sidecar kills when
the agent dies. A process that calls setsid() (a daemon's double fork) leaves
that group. This module owns what catches such a process anyway:

- Tokens in the environment. Each run of an instance gets
  `PAAS_RUN_ID=<agent name>-<uuid>`, and every instance of an agent gets
  `PAAS_AGENT_ID=<agent id>` (one id per state directory, kept in
  STATE_DIR/agent-id, so the next agent on that state directory knows it).
  Children inherit both, escaped or not. `kill_carriers` scans
  /proc/PID/environ of every process and SIGKILLs the ones that carry a token.
- The child subreaper (Linux, prctl PR_SET_CHILD_SUBREAPER): an orphan of an
  instance re-parents to the agent instead of to init, and `OrphanReaper`
  waits for it when it dies (a SIGCHLD-driven pass in a worker thread), so no
  zombie piles up in the agent. It never waits for a child the agent spawned
  itself (`own_children` lists those; asyncio waits for them).

Which mechanism catches what:

- the group, on stop: SIGTERM, then SIGKILL after the grace (supervisor);
- the group, after its leader crashed: SIGKILL to the group (supervisor);
- an escaped process, on stop: SIGTERM with the group, SIGKILL after the
  grace (`Sweeper`, by the run's token); on crash: SIGKILL once the group is
  gone;
- groups and escaped processes when the agent is SIGKILLed: the reaper
  sidecar, by the groups it was told, then by the agent token;
- the same when agent and sidecar were both killed: the next agent start on
  that state directory, by the groups in STATE_DIR/pgids, then the agent token;
- zombies of orphans re-parented to the agent: `OrphanReaper` (needs the
  subreaper; without it they re-parent to init, which reaps them).

On stop, escaped processes get SIGTERM with the group (`Sweeper.terminate`)
and the same grace; the sweep after it SIGKILLs what is left. On a crash they
get SIGKILL at once, as the group does. A process that replaces its
environment (`env -i`, an execve with a fresh environment) carries no token
and is not found; cgroup v2 would catch it, and is not used yet (many hosts
do not delegate it).

It never starts processes and never decides which instances should run.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

RUN_ID_VAR = "PAAS_RUN_ID"
AGENT_ID_VAR = "PAAS_AGENT_ID"
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
# A sweep repeats until a scan finds no carrier, since one may fork while it is killed.
SWEEP_ROUNDS = 20
SWEEP_ROUND_PAUSE = 0.01
# OrphanReaper: a pass at least this often, and at most every MIN_PASS_INTERVAL.
PASS_INTERVAL = 5.0
MIN_PASS_INTERVAL = 0.1
# Pids and groups remembered as an instance's, for reaping without own_all_children.
REMEMBERED = 4096
_PROC = Path("/proc")


def new_token(prefix: str) -> str:
    """A token no other run has: `prefix-<32 hex digits>`."""
    return f"{prefix}-{uuid.uuid4().hex}"


# ------------------------------------------------------------------ the subreaper


def _prctl(option: int, value: int | ctypes.c_int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        argument = ctypes.byref(value) if isinstance(value, ctypes.c_int) else value
        return int(libc.prctl(option, argument, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def set_subreaper(on: bool) -> bool:
    """Make this process a child subreaper (or no longer one); False where that is not possible."""
    return _prctl(PR_SET_CHILD_SUBREAPER, int(on))


def is_subreaper() -> bool:
    value = ctypes.c_int(0)
    return _prctl(PR_GET_CHILD_SUBREAPER, value) and value.value != 0


# ------------------------------------------------------------------ finding carriers


def token_in(environ: bytes, var: str) -> str | None:
    """The value of `var` in a NUL-separated environment block, None if absent."""
    key = b"\0" + var.encode() + b"="
    data = b"\0" + environ
    start = data.find(key)
    if start < 0:
        return None
    start += len(key)
    end = data.find(b"\0", start)
    return data[start : end if end >= 0 else len(data)].decode(errors="replace")


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir(_PROC) if name.isdigit()]
    except OSError:
        return psutil.pids()


def _environ(pid: int) -> bytes:
    """The environment block process `pid` started with; b"" if it cannot be read."""
    try:
        with open(_PROC / str(pid) / "environ", "rb") as file:
            return file.read()
    except FileNotFoundError:
        if _PROC.is_dir():
            return b""
    except OSError:
        return b""
    try:  # no /proc (not Linux): psutil knows the platform's way
        environ = psutil.Process(pid).environ()
    except psutil.Error:
        return b""
    return b"\0".join(f"{key}={value}".encode() for key, value in environ.items())


@dataclass(frozen=True)
class Carrier:
    """A process found with a token: its pid, the token, its group and session."""

    pid: int
    token: str
    pgid: int
    sid: int


def find_carriers(var: str, tokens: Collection[str]) -> list[Carrier]:
    """Every process (but this one) whose environment has `var` set to one of `tokens`.

    Blocking: it reads the environment of every process on the host.
    """
    wanted = set(tokens)
    own = os.getpid()
    found: list[Carrier] = []
    for pid in _pids():
        if pid == own:
            continue
        token = token_in(_environ(pid), var)
        if token is None or token not in wanted:
            continue
        try:
            found.append(Carrier(pid, token, os.getpgid(pid), os.getsid(pid)))
        except OSError:
            continue  # gone meanwhile
    return found


def _kill_if_carrier(carrier: Carrier, var: str, signum: int) -> bool:
    """Signal `carrier` if the process with its pid still carries its token."""
    try:
        pidfd = os.pidfd_open(carrier.pid)
    except (AttributeError, OSError):
        pidfd = -1
    try:
        # Read through the pid after the pidfd is open: if the pid was reused in
        # between, the signal through the pidfd goes nowhere (ESRCH).
        if token_in(_environ(carrier.pid), var) != carrier.token:
            return False
        if pidfd >= 0:
            signal.pidfd_send_signal(pidfd, signum)
        else:
            os.kill(carrier.pid, signum)
        return True
    except OSError:
        return False
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def term_escaped(var: str, groups: Mapping[str, int]) -> list[Carrier]:
    """SIGTERM, once, every process carrying a token of `groups` (token -> the run's
    process group) outside that group: the group had its own SIGTERM.

    Blocking (one scan of every process); returns what it signalled.
    """
    if not groups:
        return []
    return [
        carrier
        for carrier in find_carriers(var, groups)
        if carrier.pgid != groups[carrier.token] and _kill_if_carrier(carrier, var, signal.SIGTERM)
    ]


def kill_carriers(var: str, tokens: Collection[str], signum: int = signal.SIGKILL) -> list[Carrier]:
    """Signal every process carrying one of `tokens` in `var`, again until none is found.

    Blocking (scans every process, a few rounds at most); returns what it signalled.
    """
    if not tokens:
        return []
    signalled: dict[int, Carrier] = {}
    for _ in range(SWEEP_ROUNDS):
        found = find_carriers(var, tokens)
        hit = [carrier for carrier in found if _kill_if_carrier(carrier, var, signum)]
        if not hit:
            break
        for carrier in hit:
            signalled.setdefault(carrier.pid, carrier)
        time.sleep(SWEEP_ROUND_PAUSE)  # let the signalled die before looking again
    return list(signalled.values())


# ------------------------------------------------------------------ whose children


class OwnChildren:
    """Which children of this process are whose (one registry per process).

    The agent's own spawns (instance leaders, the reaper sidecar) are waited for
    by asyncio: they are registered while spawning and until asyncio has their
    exit status, and are never reaped here. Groups of instances and escaped
    processes found with a token are remembered, so that an orphan reaper that
    does not own every child (the agent embedded in a process with children of
    its own) still knows which zombies are the agent's.

        with own_children.spawning():
            transport, _ = await loop.subprocess_exec(...)
            own_children.add(transport.get_pid())
    """

    def __init__(self) -> None:
        self.spawned: set[int] = set()
        self.in_flight = 0
        # Bounded, oldest first out: a pid or group forgotten only costs a zombie.
        self.orphans: OrderedDict[int, None] = OrderedDict()
        self.groups: OrderedDict[int, None] = OrderedDict()

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        """Around a spawn: no zombie is reaped while a new child may not be registered yet."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def add(self, pid: int) -> None:
        self.spawned.add(pid)

    def discard(self, pid: int) -> None:
        """`pid` has been waited for (its exit status is taken)."""
        self.spawned.discard(pid)

    def add_group(self, pgid: int) -> None:
        _remember(self.groups, pgid)

    def mark_pid(self, pid: int) -> None:
        _remember(self.orphans, pid)

    def forget(self, pid: int) -> None:
        """Orphan `pid` has been waited for."""
        self.orphans.pop(pid, None)

    def mark(self, carriers: Collection[Carrier]) -> None:
        """Processes found with an instance's token: theirs, their groups and sessions."""
        for carrier in carriers:
            self.mark_pid(carrier.pid)
            self.add_group(carrier.pgid)
            self.add_group(carrier.sid)

    def is_instance_process(self, pid: int, pgid: int, sid: int) -> bool:
        return pid in self.orphans or pgid in self.groups or sid in self.groups


def _remember(found: OrderedDict[int, None], key: int) -> None:
    found[key] = None
    found.move_to_end(key)
    while len(found) > REMEMBERED:
        found.popitem(last=False)


own_children = OwnChildren()


# ------------------------------------------------------------------ sweeping runs


class Sweeper:
    """Kills what is left of finished runs: every process still carrying their run token.

    A sweep runs in a worker thread, one at a time; tokens asked for while one
    runs share the next, so a hundred instances stopping at once cost a few scans.

        sweeper = Sweeper()
        killed = await sweeper.sweep(run_id)    # the processes it killed
    """

    def __init__(self, var: str = RUN_ID_VAR, children: OwnChildren = own_children) -> None:
        self.var = var
        self._children = children
        self._pending: dict[str, asyncio.Future[list[Carrier]]] = {}
        self._worker: asyncio.Task[None] | None = None
        # Runs being stopped: token -> (process group, who waits for the SIGTERMs).
        self._terming: dict[str, tuple[int, asyncio.Future[list[Carrier]]]] = {}
        self._term_worker: asyncio.Task[None] | None = None

    async def terminate(self, token: str, pgid: int) -> list[Carrier]:
        """SIGTERM the processes of a run being stopped that left its group `pgid` (a
        daemon's double fork), so that they get the same grace as the group; the
        ones it signalled. Runs stopping at once share one scan."""
        entry = self._terming.get(token)
        if entry is None:
            entry = self._terming[token] = (pgid, asyncio.get_running_loop().create_future())
        if self._term_worker is None or self._term_worker.done():
            self._term_worker = asyncio.create_task(self._term_work(), name="sweeper (TERM)")
        return await asyncio.shield(entry[1])

    async def _term_work(self) -> None:
        while self._terming:
            batch, self._terming = self._terming, {}
            groups = {token: pgid for token, (pgid, _) in batch.items()}
            try:
                termed = await asyncio.to_thread(term_escaped, self.var, groups)
            except Exception:
                log.exception("signalling escaped processes failed")
                termed = []  # the SIGKILL sweep after the grace still finds them
            self._children.mark(termed)
            for token, (_, future) in batch.items():
                if not future.done():
                    future.set_result([carrier for carrier in termed if carrier.token == token])

    async def sweep(self, token: str) -> list[Carrier]:
        loop = asyncio.get_running_loop()
        future = self._pending.get(token)
        if future is None:
            future = self._pending[token] = loop.create_future()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name="sweeper")
        return await asyncio.shield(future)

    async def _work(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            try:
                killed = await asyncio.to_thread(kill_carriers, self.var, frozenset(batch))
            except Exception as exc:  # a failed scan must not leave a stop waiting forever
                log.exception("sweeping escaped processes failed")
                for future in batch.values():
                    if not future.done():
                        future.set_exception(exc)
                continue
            self._children.mark(killed)
            for token, future in batch.items():
                if not future.done():
                    future.set_result([carrier for carrier in killed if carrier.token == token])


# ------------------------------------------------------------------ reaping orphans


@dataclass(frozen=True)
class Child:
    """A child of this process as /proc shows it."""

    pid: int
    zombie: bool
    pgid: int
    sid: int
    carries_run_token: bool


def _child_pids() -> set[int]:
    pids: set[int] = set()
    try:
        tasks = list((_PROC / "self" / "task").iterdir())
        for task in tasks:
            with contextlib.suppress(OSError):
                pids.update(int(pid) for pid in (task / "children").read_text().split())
        if tasks and (tasks[0] / "children").exists():
            return pids
    except OSError:
        pass
    with contextlib.suppress(psutil.Error):
        pids.update(child.pid for child in psutil.Process().children())
    return pids


def _stat(pid: int) -> tuple[str, int, int] | None:
    """State letter, pgid and session of `pid`, None if it is gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return fields[0], int(fields[2]), int(fields[3])
    except (OSError, ValueError, IndexError):
        pass
    try:
        process = psutil.Process(pid)
        zombie = process.status() == psutil.STATUS_ZOMBIE
        return ("Z" if zombie else "S"), os.getpgid(pid), os.getsid(pid)
    except (psutil.Error, OSError):
        return None


def list_children(read_tokens: bool) -> list[Child]:
    """The children of this process (blocking: reads /proc)."""
    found: list[Child] = []
    for pid in _child_pids():
        stat = _stat(pid)
        if stat is None:
            continue
        state, pgid, sid = stat
        zombie = state == "Z"
        carries = read_tokens and not zombie and token_in(_environ(pid), RUN_ID_VAR) is not None
        found.append(Child(pid, zombie, pgid, sid, carries))
    return found


def _reap(pid: int) -> bool:
    """Take the exit status of zombie child `pid` (never blocks)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG) is not None
    except ChildProcessError:
        return False


class OrphanReaper:
    """Makes this process a child subreaper and waits for the orphans that die as its children.

    A pass runs on SIGCHLD (at most every 0.1 s) and every few seconds: it lists
    this process's children in a worker thread and waits (WNOHANG) for each
    zombie that is not one of the agent's own spawns. With `own_all_children`
    (`paas agent`: every child is the agent's) that is every other zombie;
    without it (the agent embedded in a process that has children of its own,
    as in tests) only those known as an instance's: in an instance's group, or
    seen alive with a run token, or killed by a sweep.

        orphans = OrphanReaper(own_all_children=True)
        orphans.start()          # one per process
        ...
        await orphans.close()    # a last pass; no longer a subreaper
    """

    def __init__(self, own_all_children: bool, children: OwnChildren = own_children) -> None:
        self.own_all_children = own_all_children
        self.subreaper = False
        self._children = children
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._handling_sigchld = False
        self._was_subreaper = False

    def start(self) -> None:
        self._was_subreaper = is_subreaper()
        self.subreaper = self._was_subreaper or set_subreaper(True)
        if not self.subreaper:
            log.info("not a child subreaper here: escaped processes re-parent to init")
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGCHLD, self._wake.set)
            self._handling_sigchld = True
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread: the periodic pass does it
        self._task = asyncio.create_task(self._run(), name="orphan reaper")

    async def close(self) -> None:
        if self._handling_sigchld:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)
            self._handling_sigchld = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.reap()
        if self.subreaper and not self._was_subreaper:
            set_subreaper(False)
            self.subreaper = False

    async def reap(self) -> int:
        """One pass; how many orphans it waited for."""
        children = await asyncio.to_thread(list_children, not self.own_all_children)
        if self._children.in_flight:
            self._wake.set()  # a zombie listed may be a spawn not registered yet: next pass
            return 0
        reaped = 0
        for child in children:
            if child.pid in self._children.spawned:
                continue  # asyncio waits for it
            if child.zombie:
                ours = self.own_all_children or self._children.is_instance_process(
                    child.pid, child.pgid, child.sid
                )
                if ours and _reap(child.pid):
                    reaped += 1
                    self._children.forget(child.pid)
            elif child.carries_run_token:
                self._children.mark_pid(child.pid)
        return reaped

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), PASS_INTERVAL)
            self._wake.clear()
            try:
                await self.reap()
            except Exception:
                log.exception("reaping orphans failed")
            await asyncio.sleep(MIN_PASS_INTERVAL)
