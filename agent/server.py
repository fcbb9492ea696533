"""`paas agent`: one host's agent, wiring reaper, supervisor, log API and session.

Owns the agent's start and its clean stop. On start it makes itself a child
subreaper with an orphan reaper (so processes that escape their group come
back to it, see orphans.py), starts the reaper sidecar (which first ends what
an earlier agent left), serves the Agent API, and
holds the session with the scheduler. SIGTERM or SIGINT (or cancellation)
stops it cleanly: no more desired sets are taken, every instance is stopped
gracefully (SIGTERM to its group, SIGKILL after the grace) while the
scheduler is still told, then the server and the reaper go. It leaves no
process behind.

It never decides what runs, and never serves a way to start a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

import grpc

from paas.agent import spool
from paas.agent.config import AgentConfig
from paas.agent.enroll import node_identity
from paas.agent.errors import AgentError
from paas.agent.logbuffer import LogHub
from paas.agent.membership import Membership
from paas.agent.orphans import OrphanReaper
from paas.agent.ports import PortPool
from paas.agent.reaper import Reaper, ReaperError
from paas.agent.servicer import AgentService
from paas.agent.session import Session
from paas.agent.supervisor import Supervisor, install_child_watcher
from paas.common.grpcutil import SERVER_OPTIONS
from paas.common.pki import Role
from paas.common.tls import INSECURE_WARNING, RequireRole, add_port
from paas.proto import paas_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVER_STOP_GRACE = 1.0


SESSION_LEAVE_TIMEOUT = 3.0


def _bound(listen: str, port: int) -> str:
    """`listen` with the port the server really bound (listen may ask for port 0)."""
    host = listen.strip().rpartition(":")[0].strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def run_agent(config: AgentConfig) -> None:
    """Run the agent until cancelled or SIGTERM/SIGINT; then stop every instance and return.

    A second SIGTERM/SIGINT during that graceful stop ends the agent at once (the
    signal's default action); its reaper then SIGKILLs whatever is left.
    `config.listen` may have port 0 (any free port); hello then names the bound one.
    Raises AgentError if it cannot start (state directory or address in use).
    """
    # The node's certificate (None with --insecure): read, or had by joining with --token.
    identity = None if config.insecure else await node_identity(config)
    install_child_watcher()
    loop = asyncio.get_running_loop()

    orphans = OrphanReaper(own_all_children=config.own_all_children)
    orphans.start()
    reaper = Reaper(config.state_dir / config.name)
    try:
        await reaper.start()
    except ReaperError as exc:
        await orphans.close()
        raise AgentError(f"the agent cannot start: {exc}") from None
    logs = LogHub(node=config.name, lines=config.log_buffer_lines, spool=spool.for_agent(config))
    supervisor = Supervisor(config, logs, PortPool(*config.ports, config.port_lock_dir), reaper)
    # The agent's API answers only the scheduler (its certificate's role).
    interceptors = [RequireRole(Role.SCHEDULER)] if identity else []
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
    # Logs are served once a scheduler has said which cluster this is (membership.py).
    membership = Membership(config.state_dir / config.name, logs)
    session: Session | None = None
    session_task: asyncio.Task[None] | None = None
    handled: list[signal.Signals] = []
    try:
        try:
            await logs.open()
        except spool.SpoolError as exc:
            raise AgentError(f"the agent cannot start: {exc}") from None
        pb_grpc.add_AgentServicer_to_server(AgentService(logs, membership), server)
        try:
            # Dynamic credentials: a renewed certificate is served from the next handshake.
            port = add_port(
                server, config.listen, identity.server_credentials() if identity else None
            )
        except RuntimeError:
            port = 0
        if not port:
            raise AgentError(
                f"the agent cannot listen on {config.listen}: the address is in use or not "
                "this host's; choose another --listen"
            )
        await server.start()
        bound = _bound(config.listen, port)
        if identity is None:
            print(INSECURE_WARNING.format(what="the agent", address=bound), file=sys.stderr)
        address = config.advertise or bound  # where the scheduler reaches this agent
        log.info("agent %s serving on %s, joining %s", config.name, bound, ",".join(config.join))

        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, stop.set)
                handled.append(signum)
        session = Session(config, supervisor, address, membership, identity)
        session_task = asyncio.create_task(session.run(), name="scheduler session")
        await stop.wait()
        log.info("agent %s stopping: stopping every instance", config.name)
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
        # Stop the workload while the session still reports it, then leave cleanly.
        if session is not None:
            await session.oneoffs.close()
        await supervisor.close()
        if session is not None and session_task is not None:
            session.leave()
            try:
                await asyncio.wait_for(asyncio.shield(session_task), SESSION_LEAVE_TIMEOUT)
            except TimeoutError:
                session_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session_task
        await server.stop(SERVER_STOP_GRACE)
        await membership.close()
        await logs.close()
        await reaper.close()
        await orphans.close()
        log.info("agent %s stopped", config.name)
