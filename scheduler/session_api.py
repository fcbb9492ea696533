"""The agents' side of the API: Session, the one long-lived stream each agent dials in with.

Hello first (who it is, what it runs), then heartbeats and status changes in;
out, a Welcome first (the cluster's id, so an agent whose state directory
holds another cluster's data deletes it before serving any), then desired sets
whenever they change (sessions.AgentSession). An agent that
sends nothing for SESSION_SILENCE_TIMEOUT seconds is gone. Only the leader
holds sessions (the guard refuses them elsewhere).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import grpc

from paas.common.errors import InvalidInput
from paas.proto import paas_pb2 as pb
from paas.scheduler.auth import Authorizer
from paas.scheduler.errors import JoinRefused, NotLeading
from paas.scheduler.guard import Context, LeaderView
from paas.scheduler.nodecerts import NodeCertificates
from paas.scheduler.reconcile import Reconciler
from paas.scheduler.sessions import AgentSession, Sessions
from paas.scheduler.store import NodeRecord, Store
from paas.scheduler.validate import check_agent_message

log = logging.getLogger(__name__)

# An agent that sends nothing (not even a heartbeat) for this long is gone.
SESSION_SILENCE_TIMEOUT = 5.0


class SessionService:
    """Session: registers the agent's node, then relays its reports and its desired sets."""

    def __init__(
        self,
        store: Store,
        sessions: Sessions,
        reconciler: Reconciler,
        leadership: LeaderView,
        authorizer: Authorizer | None = None,
        certificates: NodeCertificates | None = None,
        on_run: Callable[[AgentSession, pb.RunOutput], None] | None = None,
    ) -> None:
        """`authorizer`: the guard's, which also checks the Hello's node name (None: off);
        `certificates`: signs the renewals agents ask for (None: --insecure);
        `on_run`: takes what agents say of their one-offs (runs.Runs.on_output)."""
        self._on_run = on_run
        self._authorizer = authorizer or Authorizer(None)
        self._certificates = certificates
        self._store = store
        self._sessions = sessions
        self._reconciler = reconciler
        self._leadership = leadership

    async def Session(
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: Context
    ) -> AsyncIterator[pb.SchedulerMessage]:
        try:
            first = await asyncio.wait_for(anext(request_iterator), SESSION_SILENCE_TIMEOUT)
        except (StopAsyncIteration, TimeoutError):
            return
        if first.WhichOneof("kind") != "hello":
            raise InvalidInput("the first message must be hello")
        check_agent_message(first)
        self._authorizer.check_session_name(context, first.hello.name)
        session = AgentSession(first.hello)
        welcome = pb.Welcome(cluster_id=await self._store.cluster_id())
        await self._register(session)
        # The guard checked the lead when the call came; it may have gone during the
        # awaits since, after the sessions were closed for it. Checked again with no
        # await before the attach: a follower never holds a session, and the agent is
        # redirected to the leader at once instead of staying here while its node is lost.
        if not self._leadership.is_leader:
            raise NotLeading(self._leadership.leader_address)
        self._sessions.attach(session)
        log.info("agent %s connected from %s", session.name, context.peer())
        reader = asyncio.create_task(self._read_session(session, request_iterator))
        try:
            yield pb.SchedulerMessage(welcome=welcome)
            async for message in session.outgoing():
                yield message
        finally:
            reader.cancel()
            self._sessions.detach(session)
            log.info("agent %s disconnected", session.name)

    async def _register(self, session: AgentSession) -> None:
        known = await self._store.node(session.name)
        record = NodeRecord(
            name=session.name,
            address=session.address,
            capacity=session.capacity,
            labels=session.labels,
            draining=known.draining if known else False,
            memory=session.memory,
            cpu=session.cpu,
        )
        if known != record:
            await self._store.put_node(record)

    async def _renew(self, session: AgentSession, message: pb.AgentMessage) -> None:
        """Sign a new node certificate for the session's own node: the name is the
        session's (which its certificate proved), never one the CSR asks for."""
        session.heartbeat()
        if self._certificates is None:
            log.warning(
                "agent %s asked to renew its certificate, but this scheduler runs --insecure",
                session.name,
            )
            return
        try:
            check_agent_message(message)
            cert = await asyncio.to_thread(
                self._certificates.sign_node, message.renew.csr, session.name
            )
        except (InvalidInput, JoinRefused) as exc:
            log.warning("agent %s: renewal refused: %s", session.name, exc)
            return
        session.renewals += 1
        log.info(
            "agent %s: node certificate renewed (%d this session)", session.name, session.renewals
        )
        session.reply(pb.SchedulerMessage(renewed=pb.RenewedCertificate(certificate=cert)))

    async def _read_session(
        self, session: AgentSession, messages: AsyncIterator[pb.AgentMessage]
    ) -> None:
        try:
            while True:
                message = await asyncio.wait_for(anext(messages), SESSION_SILENCE_TIMEOUT)
                kind = message.WhichOneof("kind")
                if kind == "status":
                    # Reports feed `paas ps`; placement does not read them, so no kick.
                    session.report(message.status)
                    self._sessions.notify_report()
                    self._reconciler.on_report()
                elif kind == "renew":
                    await self._renew(session, message)
                elif kind == "run":
                    session.heartbeat()
                    if self._on_run is not None:
                        self._on_run(session, message.run)
                else:
                    session.heartbeat()
        except (StopAsyncIteration, TimeoutError, grpc.aio.AioRpcError):
            pass
        finally:
            session.close()
