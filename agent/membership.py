"""Which cluster this agent's state belongs to, and which of its apps still exist.

Owns the cluster id recorded in the agent's state directory (STATE_DIR/NAME/cluster-id)
and the answer to "may this node's logs be served now?". The scheduler's first
message on a session is a Welcome naming its cluster. When it names another
cluster than the one recorded (or none is recorded: data of an unknown cluster),
everything kept of the logs is deleted, in memory and on disk, before the new id
is recorded and before any log is served again. Until a Welcome has been taken
since the agent started, its logs are not served at all ("not joined yet"): they
could be another cluster's.

It also deletes what is kept of apps that no longer exist: a desired set from a
welcomed session lists the id of every live app, and the lines of every other
app id are deleted (in memory at once, on disk in the spool's thread). An empty
list with instances in the set cannot be true and is taken for a scheduler bug:
nothing is deleted. Apps assigned in the set are never deleted, whatever the list.

It never decides what runs; the session hands it what the scheduler says.

    membership = Membership(config.state_dir / config.name, hub)
    await membership.welcome("c0ffee...")          # on the session's Welcome
    membership.prune(desired)                       # each desired set after it
    membership.joined                               # True: logs may be served
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from enum import Enum
from pathlib import Path

from paas.agent.logbuffer import LogHub
from paas.agent.spool import LogStateError
from paas.proto import paas_pb2 as pb

log = logging.getLogger(__name__)

CLUSTER_FILE = "cluster-id"
# What a cluster id may be: it is written to a file and named in logs.
_CLUSTER_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class MembershipError(LogStateError):
    """The cluster id cannot be recorded or read, or a Welcome names no usable one; the
    message says which and what to do."""


class Joined(Enum):
    """Whether this agent's logs may be served (the lifecycle of its membership)."""

    NOT_YET = "not joined yet"  # no Welcome since the agent started
    SWITCHING = "joining another cluster"  # deleting the last cluster's logs
    JOINED = "joined"
    FAILED = "could not join"  # the last Welcome could not be taken (see `problem`)


def read_cluster_id(state_dir: Path) -> str:
    """The cluster id recorded in `state_dir`; "" if none is."""
    try:
        return (state_dir / CLUSTER_FILE).read_text().strip()
    except FileNotFoundError:
        return ""


def write_cluster_id(state_dir: Path, cluster_id: str) -> None:
    """Record `cluster_id` in `state_dir`, durably (a crash leaves the old one or the new)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / CLUSTER_FILE
    temporary = path.with_suffix(".tmp")
    with temporary.open("w") as file:
        file.write(cluster_id + "\n")
        file.flush()
        os.fsync(file.fileno())
    temporary.replace(path)
    fd = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Membership:
    """The cluster this node's logs belong to; the gate every log read goes through."""

    def __init__(self, state_dir: Path, logs: LogHub) -> None:
        self.state_dir = state_dir
        self.logs = logs
        self.state = Joined.NOT_YET
        self.cluster_id = ""  # of the last Welcome taken; "" before the first
        self.problem = ""  # why the last Welcome could not be taken
        self._pruning: asyncio.Task[None] | None = None
        self._prune_next: frozenset[str] | None = None  # the latest live set not yet pruned to

    @property
    def joined(self) -> bool:
        return self.state is Joined.JOINED

    def describe(self) -> str:
        """Why logs are not served now ("" once joined)."""
        if self.state is Joined.NOT_YET:
            return (
                "no scheduler has welcomed it since it started, and the logs it keeps may "
                "be another cluster's"
            )
        if self.state is Joined.SWITCHING:
            return "it is deleting the logs of the cluster it was in before"
        if self.state is Joined.FAILED:
            return f"its last welcome failed: {self.problem}"
        return ""

    async def welcome(self, cluster_id: str) -> None:
        """Take the Welcome of a scheduler of `cluster_id`: if the state directory holds
        another cluster's logs (or an unknown one's), delete them first.

        Raises MembershipError if the id is unusable or cannot be recorded, or
        SpoolError if the old logs could not all be deleted; logs are then not served
        (state FAILED) until a Welcome is taken.
        """
        try:
            await self._welcome(cluster_id)
        except (LogStateError, asyncio.CancelledError) as exc:
            self.state = Joined.FAILED
            self.problem = str(exc) or "cancelled"
            raise
        self.problem = ""

    async def _welcome(self, cluster_id: str) -> None:
        if not _CLUSTER_ID.fullmatch(cluster_id):
            raise MembershipError(
                f"the scheduler's welcome names no usable cluster id ({cluster_id!r}): "
                "expected 1 to 128 letters, digits or ._:-; is the scheduler up to date?"
            )
        if self.state is Joined.JOINED and cluster_id == self.cluster_id:
            return
        try:
            recorded = await asyncio.to_thread(read_cluster_id, self.state_dir)
        except OSError as exc:
            raise MembershipError(
                f"cannot read the cluster id in {self.state_dir}: {exc}; check the state "
                "directory (--state-dir)"
            ) from None
        if recorded != cluster_id:
            self.state = Joined.SWITCHING
            await self._cancel_pruning()
            if recorded:
                log.warning(
                    "state directory %s holds the logs of cluster %s; this is cluster %s: "
                    "deleting them",
                    self.state_dir,
                    recorded,
                    cluster_id,
                )
            else:
                log.info(
                    "state directory %s joins cluster %s (no cluster recorded: deleting any "
                    "logs it holds)",
                    self.state_dir,
                    cluster_id,
                )
            await self.logs.forget_everything()
            try:
                await asyncio.to_thread(write_cluster_id, self.state_dir, cluster_id)
            except OSError as exc:
                raise MembershipError(
                    f"cannot record the cluster id in {self.state_dir}: {exc}; check the "
                    "state directory (--state-dir)"
                ) from None
        self.cluster_id = cluster_id
        self.state = Joined.JOINED

    def prune(self, desired: pb.DesiredSet) -> None:
        """Delete what is kept of every app not in `desired.live_apps` (a set from a
        welcomed session); returns at once, the disk work runs in the background."""
        if not self.joined:
            log.warning(
                "desired set generation %d came before the scheduler's welcome: its list of "
                "live apps is not acted on",
                desired.generation,
            )
            return
        if not desired.live_apps and desired.instances:
            log.error(
                "desired set generation %d assigns %d instances but lists no live app: a "
                "scheduler bug; no app's logs are deleted",
                desired.generation,
                len(desired.instances),
            )
            return
        live = frozenset(desired.live_apps)
        assigned = {a.app_id for a in desired.instances if a.app_id}
        if not assigned <= live:
            log.error(
                "desired set generation %d assigns instances of apps it does not list as live "
                "(%s): a scheduler bug; their logs are kept",
                desired.generation,
                ", ".join(sorted(assigned - live)),
            )
        self._prune_next = live | assigned
        if self._pruning is None or self._pruning.done():
            self._pruning = asyncio.create_task(self._prune(), name="log pruning")

    async def _prune(self) -> None:
        """Delete the apps not live, to the latest live set, until none is waiting."""
        while self._prune_next is not None:
            if self.logs.spool is not None:
                await self.logs.spool.flush()  # the ids of lines still on their way count
            # The live set is taken only now, with no wait until the apps not in it are
            # hidden: an app made by a desired set that came during the flush is in it.
            live, self._prune_next = self._prune_next, None
            if live is None:  # cancelled meanwhile (a Welcome of another cluster)
                return
            gone = self.logs.app_ids() - live
            if not gone:
                continue
            log.info(
                "deleting the logs of %d apps that no longer exist: %s",
                len(gone),
                ", ".join(sorted(gone)),
            )
            try:
                await self.logs.forget_apps(gone)
            except LogStateError as exc:
                log.error("%s", exc)

    async def _cancel_pruning(self) -> None:
        self._prune_next = None
        if self._pruning is not None:
            self._pruning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruning
            self._pruning = None

    async def close(self) -> None:
        """Stop pruning (what was hidden stays so until the agent stops)."""
        await self._cancel_pruning()
