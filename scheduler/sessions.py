"""Agent sessions and node liveness, as the leader sees them.

One AgentSession per connected agent holds what that agent last reported and
the desired set to send it next. Sessions owns the set of them and decides
whether a node is ready: connected, or silent for less than the grace period.
After a change of leader every node starts with a fresh grace period.
It never writes etcd and never decides placement.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from paas.proto import paas_pb2 as pb

# How often a session's scheduler end sends a heartbeat when it has nothing else to send.
HEARTBEAT_INTERVAL = 1.0

ReportKey = tuple[str, str, int]  # (app, instance name, release)


def report_key(status: pb.InstanceStatus) -> ReportKey:
    return (status.app, status.name, status.release)


class AgentSession:
    """One agent's stream: its reports in, its desired set out (level-triggered)."""

    def __init__(self, hello: pb.Hello) -> None:
        self.name = hello.name
        self.address = hello.address
        self.capacity = hello.capacity
        self.labels = dict(hello.labels)
        self.memory = hello.memory  # bytes instances may reserve on the node
        self.cpu = hello.cpu  # cores instances may reserve on the node
        # By (app, name, release): during a rollout the new copy of web.3 (a newer
        # release) runs beside the old one, and each reports for itself.
        self.reports: dict[ReportKey, pb.InstanceStatus] = {
            report_key(status): status for status in hello.running
        }
        self.last_seen = time.time()
        self._desired: list[pb.Assignment] | None = None
        self._live_apps: list[str] = []
        self._generation = 0
        self._changed = False  # a desired set not yet sent
        self._wake = asyncio.Event()
        self._closed = False
        self._beat_due = False  # the heartbeat timer went off: send one if nothing else
        # Answers to the agent's own requests (a renewed certificate), sent next.
        self._replies: list[pb.SchedulerMessage] = []
        self.renewals = 0  # node certificates renewed over this session

    def report(self, status: pb.InstanceStatus) -> None:
        self.last_seen = time.time()
        key = report_key(status)
        if status.state == pb.STOPPED:
            # A stopped instance is gone from the agent; forget it unless a newer
            # incarnation has already reported.
            current = self.reports.get(key)
            if current is None or current.incarnation <= status.incarnation:
                self.reports.pop(key, None)
            return
        self.reports[key] = status

    def report_of(self, app: str, name: str, incarnation: int) -> pb.InstanceStatus | None:
        """What the copy of `name` of that incarnation last reported (None: nothing);
        the newest copy's report when `incarnation` is 0."""
        found = [s for (a, n, _), s in self.reports.items() if (a, n) == (app, name)]
        if incarnation:
            found = [s for s in found if s.incarnation == incarnation]
        return max(found, key=lambda s: s.incarnation, default=None)

    def heartbeat(self) -> None:
        self.last_seen = time.time()

    def push(self, instances: list[pb.Assignment], live_apps: list[str]) -> None:
        """Send `instances` as the agent's desired set, with the ids of every app that
        exists (`live_apps`), unless it already has exactly that."""
        if (
            self._desired is not None
            and _same(self._desired, instances)
            and self._live_apps == live_apps
        ):
            return
        self._desired = instances
        self._live_apps = live_apps
        self._changed = True
        self._wake.set()

    def reply(self, message: pb.SchedulerMessage) -> None:
        """Send `message` next, before any desired set (it answers the agent)."""
        self._replies.append(message)
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    def _beat(self) -> None:
        self._beat_due = True
        self._wake.set()

    async def outgoing(self) -> AsyncIterator[pb.SchedulerMessage]:
        """The messages to write to the agent, until the session closes."""
        loop = asyncio.get_running_loop()
        while True:
            # A timer rather than asyncio.wait_for, which makes a task per wait: with
            # thousands of sessions that was a tenth of the leader's CPU.
            beat = loop.call_later(HEARTBEAT_INTERVAL, self._beat)
            try:
                await self._wake.wait()
            finally:
                beat.cancel()
            self._wake.clear()
            if self._closed:
                return
            beat_due, self._beat_due = self._beat_due, False
            sent = False
            while self._replies:
                yield self._replies.pop(0)
                sent = True
            if self._desired is not None and self._changed:
                self._changed = False
                self._generation += 1
                yield pb.SchedulerMessage(
                    desired=pb.DesiredSet(
                        generation=self._generation,
                        instances=self._desired,
                        live_apps=self._live_apps,
                    )
                )
                sent = True
            if beat_due and not sent:
                # Nothing sent for a while: a heartbeat, by which the agent knows this
                # replica is alive (a paused one sends none, and the agent moves on in
                # seconds).
                yield pb.SchedulerMessage(heartbeat=pb.Heartbeat(time=time.time()))


def _same(a: list[pb.Assignment], b: list[pb.Assignment]) -> bool:
    return len(a) == len(b) and all(x == y for x, y in zip(a, b, strict=True))


class Sessions:
    """The live sessions by node name, and each node's readiness."""

    def __init__(self, grace: float, on_change: Callable[[], None]) -> None:
        self._grace = grace
        self._on_change = on_change
        self._sessions: dict[str, AgentSession] = {}
        self._gone_since: dict[str, float] = {}  # monotonic
        self._fresh_since = time.monotonic()
        self._listeners: set[asyncio.Queue[AgentSession]] = set()
        self._reported = asyncio.Event()

    @property
    def grace(self) -> float:
        return self._grace

    def reset(self) -> None:
        """A new term as leader: every node absent now gets a full grace period."""
        self._fresh_since = time.monotonic()
        self._gone_since.clear()
        self._wake_after_grace()

    def close_all(self) -> None:
        for session in list(self._sessions.values()):
            session.close()
        self._sessions.clear()

    def attach(self, session: AgentSession) -> None:
        old = self._sessions.get(session.name)
        if old is not None:
            old.close()
        self._sessions[session.name] = session
        self._gone_since.pop(session.name, None)
        for queue in self._listeners:
            queue.put_nowait(session)
        self._on_change()

    def detach(self, session: AgentSession) -> None:
        if self._sessions.get(session.name) is not session:
            return  # already replaced by a newer session of the same agent
        del self._sessions[session.name]
        self._gone_since[session.name] = time.monotonic()
        self._wake_after_grace()
        self._on_change()

    def _wake_after_grace(self) -> None:
        # A timer, not a poll: reconcile runs again the moment a node may be lost.
        asyncio.get_running_loop().call_later(self._grace + 0.05, self._on_change)

    def get(self, name: str) -> AgentSession | None:
        return self._sessions.get(name)

    def connected(self) -> list[AgentSession]:
        return list(self._sessions.values())

    def is_ready(self, name: str) -> bool:
        if name in self._sessions:
            return True
        since = max(self._gone_since.get(name, self._fresh_since), self._fresh_since)
        return time.monotonic() - since < self._grace

    def node_state(self, name: str, draining: bool) -> pb.NodeState.ValueType:
        """The one place a node's state is decided: lost once silent past its grace,
        else draining or ready as its record says."""
        if not self.is_ready(name):
            return pb.NODE_LOST
        return pb.NODE_DRAINING if draining else pb.NODE_READY

    def notify_report(self) -> None:
        """An agent reported a status: wake whoever waits on one."""
        self._reported.set()
        self._reported = asyncio.Event()

    async def wait_for_report(
        self, node: str, app: str, name: str, incarnation: int, states: set[int], within: float
    ) -> pb.InstanceStatus | None:
        """The report of that incarnation once it is in one of `states`; None on timeout."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            session = self._sessions.get(node)
            status = session.report_of(app, name, 0) if session else None
            if status is not None and status.incarnation >= incarnation and status.state in states:
                return status
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._reported.wait(), remaining)
            except TimeoutError:
                return None

    def subscribe(self) -> asyncio.Queue[AgentSession]:
        """A queue that receives every session attached from now on."""
        queue: asyncio.Queue[AgentSession] = asyncio.Queue()
        self._listeners.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[AgentSession]) -> None:
        self._listeners.discard(queue)
