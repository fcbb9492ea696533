"""The release phase: a release's `release:` Procfile command, run once before its roll.

As Heroku's release phase: `release.N` (N the release's version) runs as a
detached one-off (runs.py) with the release's slug and config, its output in
the app's log stream; the rollout goes on only if it exits 0. Idempotent across
leaders: a release.N already in etcd (started by an earlier leader) is waited
for, not started again, and its exit is kept in its record until read here.

    phase = ReleasePhase(store, runs)
    reason = await phase.run_release_phase(release)   # None: go on rolling
    # "release phase failed: exit 2: migration 0042 failed"

It never decides what happens to a release that fails; the caller (the rollout
controller) does.
"""

from __future__ import annotations

from paas.proto import paas_pb2 as pb
from paas.scheduler.errors import ConflictError, SchedulerError, StoreError
from paas.scheduler.runs import RELEASE_PREFIX, Runs, new_record
from paas.scheduler.store import ReleaseRecord, Store

RELEASE_TYPE = "release"
FAILED = "release phase failed"


def outcome(ending: pb.RunOutput) -> str | None:
    """None for an exit 0; else one line: the exit (or why it is unknown) and its last line."""
    if ending.HasField("exit"):
        if ending.exit.code == 0:
            return None
        lines = [line for line in ending.exit.last_lines if line.strip()]
        last = f": {lines[-1].strip()}" if lines else ""
        return f"{FAILED}: {ending.exit.text or f'exit {ending.exit.code}'}{last}"
    return f"{FAILED}: {ending.lost or 'its outcome is unknown'}"


class ReleasePhase:
    """Runs releases' release phases through the leader's one-offs."""

    def __init__(self, store: Store, runs: Runs) -> None:
        self._store = store
        self._runs = runs

    async def run_release_phase(self, release: ReleaseRecord) -> str | None:
        """Run `release`'s release command once and wait for it: None when it exits 0
        (or the Procfile has none), else why it failed, in one line."""
        command = release.commands.get(RELEASE_TYPE, "")
        if not command:
            return None
        name = f"{RELEASE_PREFIX}{release.version}"
        if not await self._runs.ready():
            return f"{FAILED}: the leader could not read its one-off runs"
        if self._runs.record(release.app, name) is None:
            failure = await self._start(release, name, command)
            if failure is not None:
                return failure
        ending = await self._runs.wait(release.app, name)
        if ending.HasField("exit"):
            try:
                await self._runs.forget(release.app, name)
            except StoreError:
                pass  # a later call reads the kept exit again
        return outcome(ending)

    async def _start(self, release: ReleaseRecord, name: str, command: str) -> str | None:
        app = await self._store.app(release.app)
        if app is None:
            return f"{FAILED}: app {release.app} is gone"
        try:
            node = await self._runs.place()
            await self._runs.start(
                new_record(
                    release.app,
                    node,
                    release.version,
                    command,
                    type_=RELEASE_TYPE,
                    env=dict(release.env),
                    attached=False,
                    name=name,
                ),
                release,
                app,
                named=True,
            )
        except ConflictError:
            return None  # written meanwhile (by this leader): wait for it
        except SchedulerError as exc:
            return f"{FAILED}: {exc}"
        return None
