"""One-off processes as the leader keeps them: their records, their agents, their I/O.

Owns the leader's view of every run (`run.4`, `release.7`): the records in etcd
(store.py `runs/APP/NAME`, loaded afresh at each term, written only here), the
RunSet each agent is sent over its session (level-triggered, like a desired set:
a run not in it is stopped by the agent), and the attachments through which an
attached CLI's I/O is proxied (CLI <-> scheduler <-> agent session). A run never
restarts: once the agent reports its exit the record is deleted (a release
phase's is kept with its exit until run_release_phase reads it); a run on a node
that is lost, of an app that is destroyed, or attached to a CLI that went away
is deleted too, and the agent stops it (SIGHUP, grace, SIGKILL). A new leader
holds no attachment, so at the start of its term it deletes the attached runs
(their CLIs were on the old leader and have ended with exit 1); detached ones
keep running.

Runs count against node capacity: `busy(node)` is what reconcile takes off each
node's capacity, and `choose_node` places a run only where there is room.

Flow control: the agent sends at most oneoff.OUTPUT_WINDOW output bytes of a run
ahead of what the scheduler passed on to the CLI (`output_taken`), and the
scheduler forwards stdin only STDIN_WINDOW bytes ahead of what the agent wrote
(`stdin_taken`); both count per session, so a new session starts both over.

It never decides placement of formation instances and never talks to etcd but
through store.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from paas.proto import paas_pb2 as pb
from paas.scheduler.errors import NotFound, Refused, StoreError
from paas.scheduler.sessions import AgentSession, Sessions
from paas.scheduler.settings import settings_from
from paas.scheduler.store import AppRecord, ReleaseRecord, RunRecord, Store

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (app, run name)

# Stdin bytes forwarded to the agent ahead of what it has written to the process.
STDIN_WINDOW = 256 * 1024
# How often the leader looks for runs whose node is lost or whose app is gone, and
# sends new sessions their RunSet.
TICK = 0.25

RELEASE_PREFIX = "release."


def lost_text(node: str) -> str:
    return f"node {node} was lost; the run's outcome is unknown"


# ------------------------------------------------------------------ placement (pure)


@dataclass(frozen=True)
class RunNode:
    """A node as a one-off's placement sees it."""

    name: str
    ready: bool  # in session, or within its grace
    draining: bool
    capacity: int
    load: int  # formation instances and runs on it


def choose_node(nodes: Sequence[RunNode], pinned: str = "") -> RunNode | str:
    """The node a one-off goes to, or why none: `pinned` if it may take it, else the
    ready, undrained node with the most room (then the first name)."""
    if pinned:
        found = [node for node in nodes if node.name == pinned]
        if not found:
            known = ", ".join(sorted(node.name for node in nodes)) or "none"
            return f"unknown node {pinned!r} (nodes: {known})"
        node = found[0]
        if not node.ready:
            return f"node {pinned} is lost"
        if node.draining:
            return f"node {pinned} is draining"
        if node.load >= node.capacity:
            return f"node {pinned} is full ({node.load} of its capacity of {node.capacity})"
        return node
    open_ = [node for node in nodes if node.ready and not node.draining]
    roomy = [node for node in open_ if node.load < node.capacity]
    if not roomy:
        if not open_:
            return "no node is ready to run it"
        return f"no node has room for a one-off ({len(open_)} ready node(s), all full)"
    return min(roomy, key=lambda node: (node.load - node.capacity, node.name))


# ------------------------------------------------------------------ attachments


class _Queued:
    """One message for the CLI and the session it came on (its bytes are acked there)."""

    __slots__ = ("message", "session")

    def __init__(self, message: pb.RunOutput, session: AgentSession | None) -> None:
        self.message = message
        self.session = session


class Attachment:
    """An attached CLI's end of one run: what to send it, and the stdin window."""

    def __init__(self, key: Key) -> None:
        self.key = key
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue()
        self.finished = False  # its exit (or why its outcome is unknown) is queued
        # Per session: output bytes passed on to the CLI; stdin bytes sent and written.
        self.output_session: AgentSession | None = None
        self.output_taken = 0
        self.stdin_session: AgentSession | None = None
        self.stdin_sent = 0
        self.stdin_taken = 0
        self.stdin_room = asyncio.Event()

    def put(self, message: pb.RunOutput, session: AgentSession | None = None) -> None:
        if self.finished:
            return
        if message.HasField("exit") or message.lost:
            self.finished = True
        self._queue.put_nowait(_Queued(message, session))

    async def get(self) -> _Queued:
        return await self._queue.get()


# ------------------------------------------------------------------ the runs


@dataclass
class _Run:
    record: RunRecord
    spec: pb.RunSpec  # as sent to its agent, `started` aside
    pid: int = 0  # as its agent reported it
    started_at: float = 0.0


class Runs:
    """The leader's one-offs: create them, send them to their agents, proxy their I/O."""

    def __init__(
        self,
        store: Store,
        sessions: Sessions,
        kick: Callable[[], None] = lambda: None,
        instances_on: Callable[[], dict[str, int]] = dict,
    ) -> None:
        """`kick`: reconcile, whose capacity `busy` changes; `instances_on`: the formation
        instances per node, as reconcile last saw them."""
        self._store = store
        self._sessions = sessions
        self._kick = kick
        self._instances_on = instances_on
        self._runs: dict[Key, _Run] = {}
        self._attachments: dict[Key, Attachment] = {}
        self._waiters: dict[Key, list[asyncio.Future[pb.RunOutput]]] = {}
        self._pushed: dict[str, tuple[AgentSession, list[tuple[str, str, bool]]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._loaded = asyncio.Event()
        self._writes: set[asyncio.Task[None]] = set()
        self._apps: Callable[[], dict[str, AppRecord] | None] = lambda: None
        # Per node, when this term last saw its session (monotonic): a node silent for
        # longer than the grace is lost for its runs. Kept here, not read from Sessions,
        # so that the sessions a stepping-down leader closes are not taken for losses.
        self._seen: dict[str, float] = {}
        self._term_start = 0.0

    def watch_apps(self, apps: Callable[[], dict[str, AppRecord] | None]) -> None:
        """Where the apps are as reconcile last saw them (runs of a gone app end)."""
        self._apps = apps

    # ------------------------------------------------------------ the term

    def on_leadership(self, leading: bool) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._loaded.clear()
        for key in list(self._attachments):
            self._end_attachment(key, "the scheduler leader changed; the run's outcome is unknown")
        self._runs.clear()
        self._pushed.clear()
        self._seen.clear()
        self._term_start = time.monotonic()
        if leading:
            self._task = asyncio.create_task(self._term(), name="one-off runs")

    async def close(self) -> None:
        self.on_leadership(False)
        for task in list(self._writes):
            task.cancel()

    async def ready(self, within: float = 10.0) -> bool:
        """Whether this term's runs are loaded (a new term reads them from etcd first)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._loaded.wait(), within)
        return self._loaded.is_set()

    async def _term(self) -> None:
        while True:
            try:
                records = await self._store.runs()
                break
            except StoreError as exc:
                log.warning("cannot read the one-off runs yet: %s", exc)
                await asyncio.sleep(0.5)
        releases: dict[tuple[str, int], ReleaseRecord | None] = {}
        apps: dict[str, AppRecord | None] = {}
        for record in records:
            if record.attached and record.state != "exited":
                # Its CLI was attached to another leader, and has ended: so does it.
                self._write(self._store.delete_run(record.app, record.name))
                continue
            rkey = (record.app, record.release)
            try:
                if record.app not in apps:
                    apps[record.app] = await self._store.app(record.app)
                if rkey not in releases:
                    releases[rkey] = await self._store.release(record.app, record.release)
            except StoreError as exc:
                log.warning("%s %s: cannot read its release: %s", record.app, record.name, exc)
                continue  # not sent this term; its record stays for the next
            release, app = releases[rkey], apps[record.app]
            if release is None or app is None:
                self._write(self._store.delete_run(record.app, record.name))
                continue
            key = (record.app, record.name)
            self._runs[key] = _Run(record, spec_of(record, release, app.id))
        self._loaded.set()
        self._kick()
        while True:
            try:
                self._sweep()
                self._push()
            except Exception:
                log.exception("one-off runs: a pass failed")
            await asyncio.sleep(TICK)

    # ------------------------------------------------------------ what reconcile reads

    def busy(self) -> dict[str, int]:
        """Per node, the runs that hold room on it (every one not yet exited)."""
        held: dict[str, int] = {}
        for run in self._runs.values():
            if run.record.state != "exited":
                held[run.record.node] = held.get(run.record.node, 0) + 1
        return held

    def listing(self, app: str) -> list[RunRecord]:
        """The app's runs that have not exited, for `paas ps`."""
        return sorted(
            (run.record for key, run in self._runs.items() if key[0] == app),
            key=lambda record: record.created_at,
        )

    def views(self, app: str) -> list[pb.InstanceView]:
        """The app's one-offs that have not exited, as `paas ps` rows: type `run` (or
        `release`), the command in `reason`."""
        rows = []
        for run in sorted(self._runs.values(), key=lambda r: r.record.created_at):
            record = run.record
            if record.app != app or record.state == "exited":
                continue
            rows.append(
                pb.InstanceView(
                    app=app,
                    name=record.name,
                    type=record.name.split(".", 1)[0],
                    node=record.node,
                    state=pb.UP if record.state == "running" else pb.STARTING,
                    pid=run.pid,
                    release=record.release,
                    reason=f"one-off: {record.command}",
                    since=run.started_at or record.created_at,
                    started_at=run.started_at,
                )
            )
        return rows

    def load(self) -> dict[str, int]:
        """Formation instances and runs per node."""
        load = dict(self._instances_on())
        for run in self._runs.values():
            if run.record.state != "exited":
                load[run.record.node] = load.get(run.record.node, 0) + 1
        return load

    # ------------------------------------------------------------ commands

    async def start(
        self, record: RunRecord, release: ReleaseRecord, app: AppRecord, *, named: bool = False
    ) -> tuple[RunRecord, Attachment | None]:
        """Write the run (the app's next run.N, or under its own name if `named`) and
        send it to its node; attached, with the attachment its CLI reads."""
        if named:
            written = await self._store.add_run(record, app)
        else:
            written = await self._store.create_run(record, app)
        key = (written.app, written.name)
        attachment = None
        if written.attached:
            attachment = self._attachments[key] = Attachment(key)
        self._runs[key] = _Run(written, spec_of(written, release, app.id))
        self._push()
        self._kick()
        return written, attachment

    async def place(self, pinned: str = "") -> str:
        """The node a new run goes to (choose_node); NotFound for an unknown pinned node,
        Refused when none may take it."""
        nodes = await self._store.nodes()
        load = self.load()
        views = [
            RunNode(
                name=node.name,
                ready=self._sessions.get(node.name) is not None,
                draining=node.draining,
                capacity=node.capacity,
                load=load.get(node.name, 0),
            )
            for node in nodes.values()
        ]
        chosen = choose_node(views, pinned)
        if isinstance(chosen, str):
            if chosen.startswith("unknown node"):
                raise NotFound(chosen)
            raise Refused(chosen)
        return chosen.name

    def record(self, app: str, name: str) -> RunRecord | None:
        run = self._runs.get((app, name))
        return run.record if run else None

    async def wait(self, app: str, name: str) -> pb.RunOutput:
        """The run's end: its exit, or `lost` saying why its outcome is unknown."""
        run = self._runs.get((app, name))
        if run is not None and run.record.state == "exited" and run.record.exit is not None:
            return pb.RunOutput(app=app, name=name, exit=exit_from(run.record.exit))
        if run is None:
            return pb.RunOutput(app=app, name=name, lost="the run is gone")
        future: asyncio.Future[pb.RunOutput] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault((app, name), []).append(future)
        return await future

    async def forget(self, app: str, name: str) -> None:
        """Delete an exited run whose result was read (a release phase's)."""
        self._runs.pop((app, name), None)
        await self._store.delete_run(app, name)

    def detach(self, key: Key) -> None:
        """The attached CLI went away: a run that still runs is stopped (SIGHUP)."""
        attachment = self._attachments.pop(key, None)
        if attachment is None:
            return
        if key in self._runs and not attachment.finished:
            self._drop(key)

    def forward(self, key: Key, message: pb.RunInput) -> AgentSession | None:
        """Send stdin, an EOF or a signal to the run's agent; its session, None if none."""
        run = self._runs.get(key)
        session = self._sessions.get(run.record.node) if run else None
        if session is None:
            return None
        attachment = self._attachments.get(key)
        if attachment is not None and attachment.stdin_session is not session:
            attachment.stdin_session = session
            attachment.stdin_sent = attachment.stdin_taken = 0
        if attachment is not None:
            attachment.stdin_sent += len(message.stdin)
        session.reply(pb.SchedulerMessage(run_input=message))
        return session

    def taken(self, key: Key, queued: _Queued) -> None:
        """The CLI has taken `queued`: the agent may send that much more."""
        attachment = self._attachments.get(key)
        message = queued.message
        size = len(message.stdout) + len(message.stderr)
        if attachment is None or not size or queued.session is None:
            return
        if attachment.output_session is not queued.session:
            return  # from a session that has ended: the agent's window started over
        attachment.output_taken += size
        queued.session.reply(
            pb.SchedulerMessage(
                run_input=pb.RunInput(app=key[0], name=key[1], output_taken=attachment.output_taken)
            )
        )

    # ------------------------------------------------------------ what agents report

    def on_output(self, session: AgentSession, message: pb.RunOutput) -> None:
        """A RunOutput from `session`'s agent (called from the session's reader)."""
        key = (message.app, message.name)
        run = self._runs.get(key)
        if run is None or run.record.node != session.name:
            return
        attachment = self._attachments.get(key)
        if message.stdout or message.stderr:
            if attachment is None:
                # Nobody reads it (its CLI has gone): let the agent go on until it stops.
                session.reply(
                    pb.SchedulerMessage(
                        run_input=pb.RunInput(app=key[0], name=key[1], output_taken=1 << 62)
                    )
                )
            else:
                if attachment.output_session is not session:
                    attachment.output_session = session
                    attachment.output_taken = 0
                attachment.put(pb.RunOutput(stdout=message.stdout, stderr=message.stderr), session)
        if message.stdin_taken and attachment is not None:
            if attachment.stdin_session is session:
                attachment.stdin_taken = max(attachment.stdin_taken, message.stdin_taken)
                attachment.stdin_room.set()
        if message.pid and not run.pid:
            run.pid, run.started_at = message.pid, time.time()
        if message.pid and run.record.state == "pending":
            run.record = dataclasses.replace(run.record, state="running")
            self._write(self._update(run.record))
            self._push()
        if message.HasField("exit"):
            self._finish(key, pb.RunOutput(exit=message.exit, node=session.name))
        elif message.gone:
            self._finish(
                key,
                pb.RunOutput(
                    lost=f"the agent on node {session.name} restarted; the run's outcome is unknown"
                ),
            )

    # ------------------------------------------------------------ inside

    def _finish(self, key: Key, ending: pb.RunOutput) -> None:
        run = self._runs.get(key)
        if run is None:
            return
        ending.app, ending.name = key
        attachment = self._attachments.get(key)
        if attachment is not None:
            attachment.put(ending)
        for future in self._waiters.pop(key, []):
            if not future.done():
                future.set_result(ending)
        if key[1].startswith(RELEASE_PREFIX) and ending.HasField("exit"):
            # Kept with its exit, so a new leader resuming the release reads it.
            run.record = dataclasses.replace(run.record, state="exited", exit=exit_to(ending.exit))
            self._write(self._update(run.record))
        else:
            del self._runs[key]
            self._write(self._store.delete_run(*key))
        self._push()
        self._kick()

    def _drop(self, key: Key) -> None:
        """End a run that still runs: its agent stops it when its RunSet no longer holds it."""
        run = self._runs.pop(key, None)
        if run is None:
            return
        self._write(self._store.delete_run(*key))
        for future in self._waiters.pop(key, []):
            if not future.done():
                future.set_result(pb.RunOutput(app=key[0], name=key[1], lost="it was stopped"))
        self._push()
        self._kick()

    def _end_attachment(self, key: Key, why: str) -> None:
        attachment = self._attachments.get(key)
        if attachment is not None:
            attachment.put(pb.RunOutput(app=key[0], name=key[1], lost=why))

    def _lost(self, node: str) -> bool:
        now = time.monotonic()
        if self._sessions.get(node) is not None:
            self._seen[node] = now
            return False
        return now - self._seen.get(node, self._term_start) > self._sessions.grace

    def _sweep(self) -> None:
        """Runs whose node is lost end with that said; runs of a gone app just end."""
        for session in self._sessions.connected():
            self._seen[session.name] = time.monotonic()
        apps = self._apps()
        for key, run in list(self._runs.items()):
            record = run.record
            if apps is not None and (
                record.app not in apps or apps[record.app].id != run.spec.app_id
            ):
                self._end_attachment(key, f"app {record.app} was destroyed")
                self._finish_gone(key, f"app {record.app} was destroyed")
                continue
            if record.state == "exited":
                continue
            if self._lost(record.node):
                log.warning("%s %s: %s", record.app, record.name, lost_text(record.node))
                self._finish(key, pb.RunOutput(lost=lost_text(record.node)))

    def _finish_gone(self, key: Key, why: str) -> None:
        self._runs.pop(key, None)
        for future in self._waiters.pop(key, []):
            if not future.done():
                future.set_result(pb.RunOutput(app=key[0], name=key[1], lost=why))
        self._write(self._store.delete_run(*key))

    def _push(self) -> None:
        """Send each connected agent its RunSet, if it changed since last sent."""
        by_node: dict[str, list[pb.RunSpec]] = {}
        for run in sorted(self._runs.values(), key=lambda r: (r.record.app, r.record.name)):
            if run.record.state == "exited":
                continue
            spec = run.spec
            if run.record.state != "pending":
                spec = pb.RunSpec()
                spec.CopyFrom(run.spec)
                spec.started = True
            by_node.setdefault(run.record.node, []).append(spec)
        for session in self._sessions.connected():
            specs = by_node.get(session.name, [])
            sign = [(spec.app, spec.name, spec.started) for spec in specs]
            sent = self._pushed.get(session.name)
            if sent is not None and sent[0] is session and sent[1] == sign:
                continue
            self._pushed[session.name] = (session, sign)
            session.reply(pb.SchedulerMessage(runs=pb.RunSet(runs=specs)))

    async def _update(self, record: RunRecord) -> None:
        await self._store.update_run(record)

    def _write(self, write: object) -> None:
        """Run an etcd write in the background (the session's reader must not wait)."""
        assert asyncio.iscoroutine(write)

        async def guarded() -> None:
            try:
                await write
            except StoreError as exc:
                log.warning("one-off runs: a write failed: %s", exc)

        task = asyncio.create_task(guarded())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)


def spec_of(record: RunRecord, release: ReleaseRecord, app_id: str) -> pb.RunSpec:
    """What the agent is told to run (its `started` set when sent)."""
    settings = release.settings.get(record.type, {})
    spec = pb.RunSpec(
        app=record.app,
        app_id=app_id,
        name=record.name,
        type=record.type,
        release=record.release,
        command=record.command,
        dir=release.dir,
        env=record.env,
        settings=settings_from(settings),
        attached=record.attached,
    )
    if release.slug is not None:
        spec.slug.CopyFrom(pb.Slug(digest=release.slug.digest, size=release.slug.size))
    return spec


def exit_to(ending: pb.RunExit) -> dict[str, object]:
    return {
        "code": ending.code,
        "signal": ending.signal,
        "text": ending.text,
        "last_lines": list(ending.last_lines),
    }


def exit_from(data: dict[str, object]) -> pb.RunExit:
    lines = data.get("last_lines", [])
    return pb.RunExit(
        code=int(str(data.get("code", 0))),
        signal=int(str(data.get("signal", 0))),
        text=str(data.get("text", "")),
        last_lines=[str(line) for line in lines] if isinstance(lines, list) else [],
    )


def new_record(
    app: str,
    node: str,
    release: int,
    command: str,
    *,
    type_: str,
    env: dict[str, str],
    attached: bool,
    name: str = "",
) -> RunRecord:
    return RunRecord(
        app=app,
        name=name,
        node=node,
        release=release,
        command=command,
        type=type_,
        env=env,
        attached=attached,
        created_at=time.time(),
    )
