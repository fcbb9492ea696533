"""The agent's one long-lived stream to the scheduler leader.

Owns the connection: dialling the --join addresses in turn, following a
follower's redirect to the leader (FAILED_PRECONDITION with the `paas-leader`
trailing metadata), reconnecting with a short capped backoff, and the
messages of the stream: hello (with every instance this node runs), then
heartbeats and a status for each instance change; in, the scheduler's Welcome
(its cluster id, handed to the Membership before anything else is read) and
desired sets, handed to the Supervisor as they come (and, once the session is
welcomed, to the Membership, which deletes the logs of apps no longer live).
With TLS it dials with the node's certificate (identity.NodeIdentity) and renews
it over the session at two thirds of its life: a CSR for a new key up, the
certificate down, taken in place (the next dial and the agent's own server use
it); neither the session nor any instance is restarted for it.
The supervisor's slug cache fetches over the channel of the open session (so,
after a change of leader, from the new leader).

It never starts or stops a process itself, and a lost scheduler never stops
the workload: while disconnected everything keeps running, and the next hello
tells the scheduler what is there.

    session = Session(config, supervisor, address="127.0.0.2:7071")
    await session.run()   # until cancelled
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from typing import Any

import grpc
import psutil

from paas.agent.config import AgentConfig
from paas.agent.fencing import Fence
from paas.agent.identity import IdentityError, NodeIdentity
from paas.agent.membership import Membership
from paas.agent.oneoff import OneOffs
from paas.agent.processes import HostProcesses
from paas.agent.spool import LogStateError
from paas.agent.supervisor import Supervisor
from paas.common.errors import InvalidInput
from paas.common.grpcutil import CHANNEL_OPTIONS, LEADER_METADATA_KEY
from paas.common.pki import Credentials
from paas.common.tls import dial
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

RETRY_FIRST = 0.2
# Well under any node grace: after a change of leader, every node must be back within
# its fresh grace period, or its work would be moved for nothing.
RETRY_CAP = 1.0
# While no scheduler answers, say so at most this often (each failure is DEBUG).
QUIET_WARNING_EVERY = 30.0
# On leaving, how long to wait for the scheduler to end the half-closed stream.
LEAVE_TIMEOUT = 1.0
# A scheduler gets this long to send its first message (the Welcome, or a refusal).
FIRST_MESSAGE_TIMEOUT = 3.0
# A replica that went silent is not dialled again (nor followed to, when a follower
# names it as the leader it still believes in) for this long, while others may answer.
SILENT_REPLICA_AVOIDED_FOR = 15.0
# A silence timer that goes off this much later than it was set for went off after
# this agent was paused or starved, not only the scheduler: what the scheduler sent
# meanwhile waits in the socket, so the agent waits SILENCE_CONFIRM more for it
# before it calls the scheduler silent (and avoids it).
LATE_TIMER = 0.1
SILENCE_CONFIRM = 1.0
# A renewal the scheduler has not answered is asked again after this long.
RENEW_RETRY = 5.0


class _SchedulerSilent(Exception):
    """The scheduler of the session stopped sending, heartbeats included."""


async def _read_within(call: Any, address: str, silence: float) -> Any:
    """The call's next message, or _SchedulerSilent if the scheduler sends none for
    `silence` seconds of this agent's own running time.

    The scheduler sends at least a heartbeat every second: one that says nothing this
    long is paused, cut off or gone (gRPC's own keepalive would take a minute to say
    so). But an agent that was itself paused (SIGSTOP, a stalled VM) wakes with its
    timer overdue and the scheduler's messages still unread: it waits a moment more
    for them before it blames the scheduler.
    """
    loop = asyncio.get_running_loop()
    read = asyncio.ensure_future(call.read())
    try:
        due = loop.time() + silence
        await asyncio.wait({read}, timeout=silence)
        if not read.done() and loop.time() - due > LATE_TIMER:
            await asyncio.wait({read}, timeout=SILENCE_CONFIRM)
    finally:
        if not read.done():
            read.cancel()  # cancels the call, which the caller leaves
            await asyncio.wait({read})  # its end, whatever it is, is the call's
    if read.cancelled():
        raise _SchedulerSilent(f"scheduler {address} sent nothing for {silence:g} s")
    return read.result()  # a message, EOF, or the error the call ended with


class _Outbox:
    """Statuses waiting to be sent, the latest per instance, oldest change first; and
    the one-offs' messages (oneoff.py), in order, each one (their output is bounded by
    the runs' windows)."""

    def __init__(self) -> None:
        # Per (app, name, release): a rollout's two copies of a name report apart.
        self._pending: OrderedDict[tuple[str, str, int], pb.InstanceStatus] = OrderedDict()
        self._runs: deque[pb.RunOutput] = deque()
        self._ready = asyncio.Event()
        self.closed = False  # the agent is leaving: send what is pending, then end

    def __len__(self) -> int:
        return len(self._pending) + len(self._runs)

    def put_run(self, message: pb.RunOutput) -> None:
        self._runs.append(message)
        self._ready.set()

    def put(self, status: pb.InstanceStatus) -> None:
        key = (status.app, status.name, status.release)
        self._pending.pop(key, None)
        self._pending[key] = status
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def get(self, timeout: float) -> pb.AgentMessage | None:  # noqa: ASYNC109
        """The next message, or None after `timeout` seconds without one (at once if closed)."""
        if not self._pending and not self._runs and not self.closed:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), max(0.0, timeout))
        if self._runs:
            return pb.AgentMessage(run=self._runs.popleft())
        if not self._pending:
            return None
        return pb.AgentMessage(status=self._pending.popitem(last=False)[1])


def leader_of(error: grpc.aio.AioRpcError) -> str | None:
    """The leader a follower named when it refused the session, if any."""
    if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
        return None
    metadata: Any = error.trailing_metadata() or ()  # the stubs type it loosely
    for key, value in metadata:
        if key == LEADER_METADATA_KEY:
            text = value.decode() if isinstance(value, bytes) else str(value)
            return text or None
    return None


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return repr(error)


class Session:
    """Holds the session with the scheduler leader for as long as the agent runs."""

    def __init__(
        self,
        config: AgentConfig,
        supervisor: Supervisor,
        address: str = "",
        membership: Membership | None = None,
        identity: NodeIdentity | None = None,
        oneoffs: OneOffs | None = None,
    ) -> None:
        """`membership`: the node's (by default one over the supervisor's log hub);
        `identity`: the node's certificate to dial with and renew (None: --insecure);
        `oneoffs`: the node's one-off runs (by default over the supervisor's logs,
        ports and slugs)."""
        if not config.join:
            raise ValueError("no scheduler address to join: give --join HOST:PORT")
        self.config = config
        self.address = address or config.advertise or config.listen
        self.supervisor = supervisor
        self.membership = membership or Membership(config.state_dir / config.name, supervisor.logs)
        self.scheduler: str | None = None  # the scheduler of the open session, if any
        # The cluster of the last Welcome this run, taken or not (the supervisor's
        # incarnations are its etcd's revisions).
        self._cluster_id = ""
        self._silent: dict[str, float] = {}  # replica -> when its session went silent
        self._outbox: _Outbox | None = None
        self._channel: grpc.aio.Channel | None = None  # of the session being served
        self._quiet_since: float | None = None
        self._last_warning = 0.0
        self._leaving = asyncio.Event()
        self._fence = Fence(supervisor.apply)
        self.identity = identity
        self._renew_asked: float | None = None  # loop time of the unanswered renewal
        self.oneoffs = oneoffs or OneOffs(
            config,
            supervisor.logs,
            supervisor.ports,
            HostProcesses(supervisor.reaper),
            supervisor.slugs,
            supervisor.agent_id,
        )

    @property
    def connected(self) -> bool:
        return self.scheduler is not None

    async def run(self) -> None:
        """Connect, serve the stream, reconnect; until `leave()` (or cancellation)."""
        self.supervisor.add_listener(self._on_status)
        try:
            await self._loop()
        finally:
            self.supervisor.remove_listener(self._on_status)

    def leave(self) -> None:
        """End the session cleanly: send the statuses still pending, half-close, return.

        `run()` returns once the scheduler has ended the stream (or at once when
        there is no session); the caller bounds the wait.
        """
        self._leaving.set()
        if self._outbox is not None:
            self._outbox.close()

    async def _loop(self) -> None:
        join = list(self.config.join)
        index = 0
        delay = RETRY_FIRST
        redirect: str | None = None
        while not self._leaving.is_set():
            followed = redirect is not None
            if redirect is not None:
                address, redirect = redirect, None
            else:
                address, index = self._next_address(join, index)
            error: BaseException | None = None
            try:
                await self._serve(address)
            except grpc.aio.AioRpcError as exc:
                error = exc
                leader = leader_of(exc)
                if leader and leader != address:
                    if self._went_silent(leader):
                        # A follower that has not yet seen the lead pass on names the
                        # paused leader: ask the others again instead.
                        log.info(
                            "scheduler %s is a follower and names %s as the leader, which "
                            "went silent; trying the other replicas",
                            address,
                            leader,
                        )
                    else:
                        log.info("scheduler %s is a follower; the leader is %s", address, leader)
                        redirect = leader
            except _SchedulerSilent as exc:
                error = exc
                self._silent[address] = time.monotonic()
            except Exception as exc:  # never let the session end the agent
                error = exc
            finally:
                opened, self.scheduler, self._outbox = self.scheduler, None, None
                self.oneoffs.disconnected()
            if self._leaving.is_set():
                if opened:
                    log.info("session with scheduler %s closed", opened)
                return
            if opened:
                log.warning(
                    "session with scheduler %s ended (%s); reconnecting, the workload keeps "
                    "running",
                    opened,
                    _describe(error) if error else "closed by the scheduler",
                )
                self._quiet_since = time.monotonic()
                self._fence.disconnected()
                delay = RETRY_FIRST
            elif error is not None and redirect is None:
                self._complain(address, error)
            if redirect is not None and not followed:
                continue  # straight to the leader
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leaving.wait(), delay)
            delay = min(RETRY_CAP, delay * 2)

    def _went_silent(self, address: str) -> bool:
        since = self._silent.get(address)
        return since is not None and time.monotonic() - since < SILENT_REPLICA_AVOIDED_FOR

    def _next_address(self, join: list[str], index: int) -> tuple[str, int]:
        """The next replica of `join` to dial, from `index` on, and the index after it: one
        that did not go silent of late, if any did not."""
        for step in range(len(join)):
            address = join[(index + step) % len(join)]
            if not self._went_silent(address):
                return address, index + step + 1
        return join[index % len(join)], index + 1

    def _complain(self, address: str, error: BaseException) -> None:
        now = time.monotonic()
        if self._quiet_since is None:
            self._quiet_since = now
        log.debug("scheduler %s: %s", address, _describe(error))
        if now - self._last_warning >= QUIET_WARNING_EVERY:
            self._last_warning = now
            log.warning(
                "no scheduler session (tried %s; last: %s: %s); retrying, the workload keeps "
                "running",
                ", ".join(self.config.join),
                address,
                _describe(error),
            )

    async def _serve(self, address: str) -> None:
        """One session with `address`, until it ends; a failure raises."""
        async with dial(address, self._credentials(), CHANNEL_OPTIONS) as channel:
            # Called without a request iterator, the stream is driven by write() and read().
            session: Any = pb_grpc.SchedulerStub(channel).Session
            call: Any = session()
            self._channel = channel
            outbox = self._outbox = _Outbox()
            if self._leaving.is_set():
                outbox.close()
            self.supervisor.new_session()
            reader = asyncio.create_task(self._read(call, address))
            writer = asyncio.create_task(self._write(call, address, outbox))
            try:
                done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
                if reader not in done:
                    # Half-closed on leaving: the scheduler ends the stream. A failed
                    # write: the read side has the status the scheduler gave.
                    await asyncio.wait({reader}, timeout=LEAVE_TIMEOUT)
            finally:
                self.supervisor.slugs.disconnect(channel)
                self._channel = None
                for task in (reader, writer):
                    task.cancel()
                call.cancel()
                results = await asyncio.gather(reader, writer, return_exceptions=True)
            for result in results:
                if isinstance(result, grpc.aio.AioRpcError):
                    raise result
            for result in results:
                if isinstance(result, Exception):
                    raise result

    def _credentials(self) -> Credentials | None:
        # Read at each dial: a renewal since the last one is used from this one on.
        return self.identity.credentials if self.identity is not None else None

    def _renewal_due(self, now: float) -> bool:
        if self.identity is None or self.identity.seconds_to_renewal() > 0:
            return False
        return self._renew_asked is None or now - self._renew_asked >= RENEW_RETRY

    async def _renewed(self, certificate: bytes) -> None:
        assert self.identity is not None
        self._renew_asked = None
        try:
            await asyncio.to_thread(self.identity.complete_renewal, certificate)
        except (IdentityError, InvalidInput) as exc:
            log.error("renewed node certificate not taken: %s; asking again", exc)

    async def _read(self, call: Any, address: str) -> None:
        welcomed = False  # this session's scheduler has said which cluster it is
        # The session is open only once the scheduler speaks (its Welcome comes first):
        # writes to a paused one succeed, into its socket buffers.
        silence = min(self.config.scheduler_silence, FIRST_MESSAGE_TIMEOUT)
        while True:
            message = await _read_within(call, address, silence)
            silence = self.config.scheduler_silence
            if message is grpc.aio.EOF:  # type: ignore[attr-defined]
                return
            self._opened(address)
            kind = message.WhichOneof("kind")
            if kind == "welcome":
                # Awaited: no desired set is taken before the old cluster's logs are gone.
                cluster_id = message.welcome.cluster_id
                if self._cluster_id and cluster_id != self._cluster_id:
                    # Whatever becomes of the logs, the new cluster's work must start.
                    self.supervisor.new_cluster()
                self._cluster_id = cluster_id
                try:
                    await self.membership.welcome(cluster_id)
                    welcomed = True
                except LogStateError as exc:
                    # The workload matters more than the logs: keep the session.
                    log.error("%s; this node serves no logs until a welcome is taken", exc)
            elif kind == "renewed" and self.identity is not None:
                await self._renewed(message.renewed.certificate)
            elif kind == "runs":
                self.oneoffs.apply(message.runs)
            elif kind == "run_input":
                self.oneoffs.input(message.run_input)
            elif kind == "desired":
                self._fence.desired(message.desired)
                self.supervisor.apply(message.desired)
                if welcomed:
                    self.membership.prune(message.desired)

    async def _write(self, call: Any, address: str, outbox: _Outbox) -> None:
        loop = asyncio.get_running_loop()
        await call.write(pb.AgentMessage(hello=self._hello()))
        self._renew_asked = None  # a renewal asked of the last session is asked again
        interval = self.config.heartbeat_interval
        next_beat = loop.time() + interval
        while True:
            message = None
            if loop.time() < next_beat:
                message = await outbox.get(next_beat - loop.time())
            if message is not None:
                await call.write(message)
                continue
            if outbox.closed:
                await call.done_writing()
                return
            if self.identity is not None and self._renewal_due(loop.time()):
                self._renew_asked = loop.time()
                csr = self.identity.begin_renewal()
                log.info("node certificate at two thirds of its life: asking for a new one")
                await call.write(pb.AgentMessage(renew=pb.RenewCertificate(csr=csr)))
            await call.write(pb.AgentMessage(heartbeat=pb.Heartbeat(time=time.time())))
            next_beat = loop.time() + interval

    def _opened(self, address: str) -> None:
        if self.scheduler is None:
            self.scheduler = address
            self._silent.pop(address, None)
            log.info("session open with scheduler %s", address)
            if self._channel is not None:
                self.supervisor.slugs.connect(self._channel)
            self._fence.connected()
            if self._outbox is not None:
                self.oneoffs.connected(self._outbox.put_run)
            self._quiet_since = None
            self._last_warning = 0.0

    def _hello(self) -> pb.Hello:
        return pb.Hello(
            name=self.config.name,
            address=self.address,
            capacity=self.config.capacity,
            labels=self.config.labels,
            running=self.supervisor.statuses(),
            memory=max(0, psutil.virtual_memory().total - self.config.reserve_memory),
            cpu=max(0.0, (psutil.cpu_count() or 1) - self.config.reserve_cpu),
        )

    def _on_status(self, status: pb.InstanceStatus) -> None:
        if self._outbox is not None:
            self._outbox.put(status)
