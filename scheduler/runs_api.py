"""The Run RPC (`paas run`): a one-off process, its I/O proxied between CLI and agent.

The first RunInput carries RunStart; the handler finds the app's current
release, what to run (one word naming a Procfile type runs that type's command,
as `heroku run worker` does; else the words, shell-quoted, or the one word as a
shell line), its env (the release's config vars, the overrides, the terminal's
size) and its node (runs.choose_node), writes the run (runs.Runs.start) and
answers with its name and node first. Detached, that is all: the run goes on
without the CLI. Attached, the call then carries the CLI's stdin, EOF and
signals to the agent and the run's output and exit back, until it exits, its
node is lost, or the leader changes (a `lost` message: the CLI exits 1). A CLI
that goes away ends its run (SIGHUP, grace, SIGKILL).

Only admins may call it (auth.py: Run is an operator's RPC).
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import AsyncIterator

from paas.common.errors import InvalidInput
from paas.proto import paas_pb2 as pb
from paas.scheduler.errors import NotFound, Refused
from paas.scheduler.guard import Context
from paas.scheduler.lookup import require_app
from paas.scheduler.runs import (
    STDIN_WINDOW,
    Attachment,
    Key,
    Runs,
    new_record,
)
from paas.scheduler.sessions import Sessions
from paas.scheduler.store import ReleaseRecord, RunRecord, Store
from paas.scheduler.validate import check_run_input

# The first message must come this soon.
START_TIMEOUT = 10.0
RUN_TYPE = "run"


def command_of(words: list[str], release: ReleaseRecord, type_: str) -> tuple[str, str]:
    """The command line and process type of a run of `words` (see the module docstring)."""
    if type_ and type_ not in release.commands:
        raise NotFound(_unknown_type(type_, release))
    if len(words) == 1 and words[0] in release.commands:
        return release.commands[words[0]], type_ or words[0]
    command = words[0] if len(words) == 1 else shlex.join(words)
    return command, type_ or RUN_TYPE


def _unknown_type(type_: str, release: ReleaseRecord) -> str:
    has = ", ".join(sorted(release.commands)) or "no process types"
    return f"unknown process type {type_!r} (Procfile has: {has})"


class RunsService:
    """Run: one-off processes."""

    def __init__(self, store: Store, sessions: Sessions, runs: Runs) -> None:
        self._store = store
        self._sessions = sessions
        self._runs = runs

    async def Run(
        self, request_iterator: AsyncIterator[pb.RunInput], context: Context
    ) -> AsyncIterator[pb.RunOutput]:
        try:
            first = await asyncio.wait_for(anext(request_iterator), START_TIMEOUT)
        except (StopAsyncIteration, TimeoutError):
            raise InvalidInput("a run starts with what to run (RunStart)") from None
        check_run_input(first, first=True)
        start = first.start
        app = await require_app(self._store, start.app)
        if not app.release:
            raise Refused(f"app {app.name} has no release yet: deploy it first (`paas deploy DIR`)")
        release = await self._store.release(app.name, app.release)
        if release is None:
            raise Refused(f"app {app.name}'s release v{app.release} is gone; deploy again")
        command, type_ = command_of(list(start.command), release, start.type)
        env = dict(release.env)
        env.update(start.env)
        if start.columns and start.lines:
            env.update(COLUMNS=str(start.columns), LINES=str(start.lines))
        if not await self._runs.ready():
            raise Refused("the leader is still loading its one-off runs; try again")
        node = await self._runs.place(start.node)
        starting = asyncio.ensure_future(
            self._runs.start(
                new_record(
                    app.name,
                    node,
                    release.version,
                    command,
                    type_=type_,
                    env=env,
                    attached=not start.detach,
                ),
                release,
                app,
            )
        )
        try:
            record, attachment = await asyncio.shield(starting)
        except asyncio.CancelledError:
            # The CLI went away while the run was written: it must not run unread.
            starting.add_done_callback(self._detach_started)
            raise
        key: Key = (record.app, record.name)
        yield pb.RunOutput(app=record.app, name=record.name, node=record.node)
        if attachment is None:
            return
        feeder = asyncio.create_task(self._feed(key, attachment, request_iterator))
        try:
            while True:
                queued = await attachment.get()
                yield queued.message
                self._runs.taken(key, queued)
                if queued.message.HasField("exit") or queued.message.lost:
                    return
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feeder
            self._runs.detach(key)

    async def _feed(
        self, key: Key, attachment: Attachment, messages: AsyncIterator[pb.RunInput]
    ) -> None:
        """The CLI's stdin, EOF and signals to the agent, stdin within its window."""
        async for message in messages:
            check_run_input(message, first=False)
            while True:
                session = self._sessions.get(self._node(key))
                if session is not None and attachment.stdin_session is not session:
                    attachment.stdin_session = session
                    attachment.stdin_sent = attachment.stdin_taken = 0
                if (
                    session is not None
                    and attachment.stdin_sent - attachment.stdin_taken < STDIN_WINDOW
                ):
                    break
                attachment.stdin_room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(attachment.stdin_room.wait(), 0.5)
            self._runs.forward(
                key,
                pb.RunInput(
                    app=key[0],
                    name=key[1],
                    stdin=message.stdin,
                    eof=message.eof,
                    signal=message.signal,
                ),
            )

    def _detach_started(
        self, starting: asyncio.Future[tuple[RunRecord, Attachment | None]]
    ) -> None:
        if starting.cancelled() or starting.exception() is not None:
            return
        record, attachment = starting.result()
        if attachment is not None:
            self._runs.detach((record.app, record.name))

    def _node(self, key: Key) -> str:
        record = self._runs.record(*key)
        return record.node if record else ""
