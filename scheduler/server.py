"""`paas scheduler`: one replica, wiring store, election, reconcile and the gRPC API.

Every replica campaigns; the leader reconciles and holds the agent sessions,
the others redirect. SIGTERM or SIGINT stops the replica cleanly: the server
drains, the reconcile loop stops and the election lease is revoked so another
replica can take over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import uuid

import grpc

from paas.common.addresses import unauthenticated_warning
from paas.common.grpcutil import SERVER_OPTIONS
from paas.scheduler.api import SchedulerService
from paas.scheduler.config import SchedulerConfig
from paas.scheduler.events import EventLog
from paas.scheduler.leader import Leadership
from paas.scheduler.reconcile import Reconciler
from paas.scheduler.sessions import Sessions
from paas.scheduler.store import Store, StoreError

log = logging.getLogger(__name__)


async def run_scheduler(config: SchedulerConfig) -> None:
    """Serve until cancelled or told to stop by SIGTERM/SIGINT."""
    warning = unauthenticated_warning("the scheduler", config.listen)
    if warning:
        print(warning, file=sys.stderr)
    address = config.advertise or config.listen
    replica_id = config.replica_id or f"scheduler-{uuid.uuid4().hex[:8]}"

    store = Store(config.etcd, access=config.etcd_access)
    if config.etcd_access.secured:
        # A wrong certificate or password never heals by waiting: say so and exit,
        # rather than serve as a replica that can never lead.
        try:
            await store.check_access(config.etcd_check)
        except StoreError as exc:
            await store.close()
            hint = ""
            if "handshake" in str(exc).lower():
                hint = " (TLS handshake refused: check --etcd-cacert, --etcd-cert, --etcd-key)"
            raise SystemExit(f"error: cannot use etcd{hint}: {exc}") from None
    reconciler_task: asyncio.Task[None] | None = None
    events = EventLog(node=replica_id, store=store)
    events.start()
    sessions = Sessions(config.node_grace, on_change=lambda: reconciler.kick())
    reconciler = Reconciler(store, sessions, events)
    service: SchedulerService | None = None

    def on_change(leading: bool) -> None:
        nonlocal reconciler_task
        if leading:
            sessions.reset()
            reconciler_task = asyncio.create_task(reconciler.run())
        else:
            if reconciler_task is not None:
                reconciler_task.cancel()
                reconciler_task = None
        events.on_leadership(leading)
        if service is not None:
            service.on_leadership(leading)

    leadership = Leadership(store, replica_id, address, config.leader_ttl, on_change)
    service = SchedulerService(store, leadership, sessions, reconciler, events)

    server = grpc.aio.server(options=SERVER_OPTIONS)
    service.add_to_server(server)
    if server.add_insecure_port(config.listen) == 0:
        raise SystemExit(f"error: cannot listen on {config.listen}")
    await server.start()
    log.info("scheduler %s listening on %s, etcd %s", replica_id, config.listen, config.etcd)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    election = asyncio.create_task(leadership.run())
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        sessions.close_all()
        await server.stop(grace=1.0)
        # While still leading: what is queued can reach etcd.
        await events.close()
        election.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await election
        if reconciler_task is not None:
            reconciler_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconciler_task
        await service.close()
        await store.close()
