"""No orphans, even when the agent dies by SIGKILL: a sidecar that ends what it leaves.

Owns the process groups the agent has told it about and the file that lists
them (STATE_DIR/pgids). Two halves of one protocol live here:

- `Reaper`, the agent's side: starts the sidecar (`python -m paas.agent.reaper
  STATE_DIR`) with a pipe on its stdin and writes "+PGID\\n" for each new
  process group, "-PGID\\n" when one is gone and "bye\\n" on a clean exit.
- `main`, the sidecar: keeps the live groups (with each leader's create time)
  and mirrors them to STATE_DIR/pgids. When its stdin reaches EOF without a
  "bye" first - the agent died, however it died - it SIGKILLs every group it
  knows, then every process that carries the agent's token (PAAS_AGENT_ID,
  see orphans.py: that catches processes that left their group, which the
  dead agent can no longer catch as their subreaper) and exits. After a "bye"
  it does the same with whatever is left. On start it first ends what a
  previous agent left (an agent and its sidecar both killed): the groups its
  file still lists and the processes with its token; then it signals
  "ready AGENT_ID". The agent id (`NAME-UUID`) is kept in STATE_DIR/agent-id,
  so the next agent on this state directory has the same one.

Processes are ended, never re-adopted: an agent that starts where an earlier
one left processes kills them and lets the scheduler place them again. A group
is only killed when it is provably ours: its leader is gone (a process group
id is not reused while the group has members) or the leader's create time
matches the recorded one, so a pid reused by an unrelated process is left
alone. The sidecar runs in its own session, so a signal to the agent's process
group (Ctrl-C in a terminal) does not take it down with the agent. A flock on
STATE_DIR/lock keeps two agents from sharing a state directory.

It never starts processes and never decides which instances should run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
import time
from collections.abc import Collection
from pathlib import Path

import psutil

from paas.agent.errors import AgentError
from paas.agent.orphans import AGENT_ID_VAR, kill_carriers, new_token, own_children

log = logging.getLogger(__name__)

READY = "ready"
FAILED = "error "
BYE = "bye"
STATE_FILE = "pgids"
AGENT_ID_FILE = "agent-id"
LOCK_FILE = "lock"
# A previous sidecar may still be killing its groups; wait this long for its lock.
LOCK_WAIT = 10.0
# psutil's create time is boot time + start ticks; boot time may wobble with clock steps.
CREATE_TIME_TOLERANCE = 1.0


class ReaperError(AgentError):
    """The sidecar could not start; the message says why and what to do."""


# ------------------------------------------------------------------ the sidecar


def leader_create_time(pgid: int) -> float:
    """Create time of the group's leader, 0.0 if it is already gone (unknown)."""
    try:
        return psutil.Process(pgid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0


def end_group(pgid: int, create_time: float) -> bool:
    """SIGKILL group `pgid` if it is provably the one recorded; True if a signal went out."""
    try:
        started: float | None = psutil.Process(pgid).create_time()
    except psutil.NoSuchProcess:
        started = None  # the leader is gone; members left keep the group id from reuse
    except psutil.AccessDenied:
        return False
    if started is not None and (
        not create_time or abs(started - create_time) > CREATE_TIME_TOLERANCE
    ):
        return False  # that pid now belongs to someone else (or cannot be checked)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def read_state(path: Path) -> dict[int, float]:
    groups: dict[int, float] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return groups
    for line in text.splitlines():
        parts = line.split()
        with contextlib.suppress(ValueError, IndexError):
            groups[int(parts[0])] = float(parts[1]) if len(parts) > 1 else 0.0
    return groups


def write_state(path: Path, groups: dict[int, float]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(f"{pgid} {created!r}\n" for pgid, created in groups.items()))
    os.replace(temporary, path)


def end_leftovers(path: Path) -> int:
    """Kill the groups an earlier agent's state file lists; how many were signalled."""
    return sum(end_group(pgid, created) for pgid, created in read_state(path).items())


def agent_id(state_dir: Path) -> str:
    """The id of the agent on `state_dir`, made (NAME-UUID) the first time."""
    path = state_dir / AGENT_ID_FILE
    with contextlib.suppress(FileNotFoundError):
        found = path.read_text().strip()
        if found:
            return found
    made = new_token(state_dir.name)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(made + "\n")
    os.replace(temporary, path)
    return made


def end_carriers(agent: str, groups: Collection[int] = ()) -> int:
    """Kill every process carrying the token of agent `agent`; how many were outside `groups`."""
    return sum(carrier.pgid not in groups for carrier in kill_carriers(AGENT_ID_VAR, [agent]))


def _lock(state_dir: Path) -> int:
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise ReaperError(
                    f"state directory {state_dir} is in use by another agent: give each "
                    "agent on a host its own --name or --state-dir"
                ) from None
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paas.agent.reaper")
    parser.add_argument("state_dir", type=Path)
    parser.add_argument(
        "--keep",
        action="store_true",
        help="a restart for a live agent: adopt the groups in the state file, do not end them",
    )
    args = parser.parse_args(argv)
    # The agent's terminal may send SIGINT to its whole group; this process must outlive it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    state_dir: Path = args.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / STATE_FILE
    try:
        _lock(state_dir)  # held until this process exits
    except ReaperError as exc:
        # Instead of "ready", the reason, for the agent to report.
        with contextlib.suppress(BrokenPipeError):
            os.write(sys.stdout.fileno(), f"{FAILED}{exc}\n".encode())
        return 3
    agent = agent_id(state_dir)
    if args.keep:
        # The groups listed are the live agent's own: watch them (it sends them again).
        groups = read_state(path)
    else:
        ended = end_leftovers(path)
        if ended:
            print(
                f"paas-reaper: ended {ended} process group(s) an earlier agent left in {path}",
                file=sys.stderr,
            )
        escaped = end_carriers(agent)
        if escaped:
            print(
                f"paas-reaper: ended {escaped} process(es) with {AGENT_ID_VAR}={agent} "
                "an earlier agent left",
                file=sys.stderr,
            )
        groups = {}
    write_state(path, groups)
    try:
        os.write(sys.stdout.fileno(), f"{READY} {agent}\n".encode())
    except BrokenPipeError:
        pass  # the agent is already gone: the read below sees EOF and ends its groups

    clean = False
    partial = b""
    while True:
        chunk = os.read(sys.stdin.fileno(), 65536)
        if not chunk:
            break
        *lines, partial = (partial + chunk).split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace").strip()
            if line == BYE:
                clean = True
            elif line[:1] == "+" and line[1:].isdigit():
                pgid = int(line[1:])
                groups[pgid] = leader_create_time(pgid)
            elif line[:1] == "-" and line[1:].isdigit():
                groups.pop(int(line[1:]), None)
        write_state(path, groups)
        if clean:
            break

    ended = sum(end_group(pgid, created) for pgid, created in groups.items())
    escaped = end_carriers(agent, groups)
    if not clean:
        print(
            f"paas-reaper: the agent is gone; ended {ended} process group(s) and "
            f"{escaped} process(es) outside them",
            file=sys.stderr,
        )
    elif ended or escaped:
        print(
            f"paas-reaper: ended {ended} process group(s) and {escaped} process(es) outside "
            "them left at exit",
            file=sys.stderr,
        )
    write_state(path, {})
    return 0


# ------------------------------------------------------------------ the agent's side


class Reaper:
    """The agent's handle on its sidecar: tell it each group, say bye at the end.

        reaper = Reaper(state_dir)
        await reaper.start()        # ends an earlier agent's leftovers first
        reaper.track(pgid)
        reaper.untrack(pgid)
        await reaper.close()

    If the sidecar dies while the agent lives, a new one is started (without
    ending anything) and told every group that is still live.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.agent_id = ""  # known once started: every instance carries it (PAAS_AGENT_ID)
        self._pgids: set[int] = set()
        self._process: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self) -> None:
        self._process = await self._spawn(keep=False)
        self._watch = asyncio.create_task(self._respawn_on_death())

    def track(self, pgid: int) -> None:
        self._pgids.add(pgid)
        self._send(f"+{pgid}\n")

    def untrack(self, pgid: int) -> None:
        self._pgids.discard(pgid)
        self._send(f"-{pgid}\n")

    async def close(self) -> None:
        """Say bye and wait for the sidecar to exit (it ends any group still listed)."""
        self._closing = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        process = self._process
        if process is None or process.returncode is not None:
            return
        self._send(BYE + "\n")
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 10.0)
        except TimeoutError:
            process.kill()
            await process.wait()
        own_children.discard(process.pid)

    async def _spawn(self, keep: bool) -> asyncio.subprocess.Process:
        argv = [sys.executable, "-m", "paas.agent.reaper", str(self.state_dir)]
        if keep:
            argv.append("--keep")
        with own_children.spawning():  # asyncio waits for it, never the orphan reaper
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
            own_children.add(process.pid)
        assert process.stdout is not None
        try:
            ready = await asyncio.wait_for(process.stdout.readline(), LOCK_WAIT + 30.0)
        except TimeoutError:
            ready = b""
        word, _, agent = ready.decode(errors="replace").strip().partition(" ")
        if word != READY or not agent:
            if process.returncode is None:
                process.kill()
            code = await process.wait()
            own_children.discard(process.pid)
            reason = ready.decode(errors="replace").strip()
            if reason.startswith(FAILED):
                raise ReaperError(reason.removeprefix(FAILED))
            raise ReaperError(
                f"the reaper sidecar did not start (exit status {code}); see its message above"
            )
        self.agent_id = agent
        return process

    async def _respawn_on_death(self) -> None:
        while not self._closing:
            assert self._process is not None
            code = await self._process.wait()
            own_children.discard(self._process.pid)
            if self._closing:
                return
            log.error("the reaper sidecar exited (status %s); starting a new one", code)
            try:
                self._process = await self._spawn(keep=True)
            except ReaperError as exc:
                log.error("%s; retrying in 1 s", exc)
                await asyncio.sleep(1.0)
                continue
            for pgid in self._pgids:
                self._send(f"+{pgid}\n")

    def _send(self, text: str) -> None:
        process = self._process
        if process is None or process.returncode is not None or process.stdin is None:
            return
        if process.stdin.is_closing():
            return
        process.stdin.write(text.encode())


if __name__ == "__main__":
    sys.exit(main())
