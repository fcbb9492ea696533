"""`paas scheduler`: one replica, wiring store, election, reconcile and the gRPC API.

Every replica campaigns; the leader reconciles and holds the agent sessions,
the others redirect. SIGTERM or SIGINT stops the replica cleanly: the server
drains, the reconcile loop stops and the election lease is revoked so another
replica can take over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
import sys
import uuid

import grpc

from paas.common.addresses import parse_address
from paas.common.grpcutil import SERVER_OPTIONS
from paas.common.jointoken import join_uri
from paas.common.pki import Credentials, PKIError
from paas.common.tls import INSECURE_WARNING, add_port
from paas.scheduler.api import SchedulerService
from paas.scheduler.config import SchedulerConfig
from paas.scheduler.events import EventLog
from paas.scheduler.leader import Leadership
from paas.scheduler.reconcile import Reconciler
from paas.scheduler.servingcert import ServingCertificate, reissue_like
from paas.scheduler.sessions import Sessions
from paas.scheduler.store import Store, StoreError
from paas.scheduler.tlsdir import SchedulerTLS, load_scheduler_tls

log = logging.getLogger(__name__)


async def run_scheduler(config: SchedulerConfig) -> None:
    """Serve until cancelled or told to stop by SIGTERM/SIGINT.

    Raises InvalidInput (pki.PKIError) if neither TLS nor --insecure is set, or the
    TLS directory cannot be used.
    """
    address = config.advertise or config.listen
    replica_id = config.replica_id or f"scheduler-{uuid.uuid4().hex[:8]}"
    tls = _tls(config, replica_id)

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
    serving = ServingCertificate(tls.credentials, lambda: tls.credentials) if tls else None
    service = SchedulerService(
        store,
        leadership,
        sessions,
        reconciler,
        events,
        tls,
        config.node_cert_ttl,
        serving,
        config,
    )

    # A release's `release` Procfile entry runs as a one-off before its rollout.
    reconciler.rollouts.use_release_phase(service.release_phase.run_release_phase)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    service.add_to_server(server)
    # Dynamic credentials: a re-issued serving certificate takes from the next handshake.
    api_credentials = serving.server_credentials(True) if serving else None
    if add_port(server, config.listen, api_credentials) == 0:
        raise SystemExit(f"error: cannot listen on {config.listen}")
    if tls is not None and serving is not None:
        join_listen = config.join_listen or _any_port(config.listen)
        join_port = add_port(server, join_listen, serving.server_credentials(False))
        if join_port == 0:
            raise SystemExit(f"error: cannot listen on {join_listen} (--join-listen)")
        # Before the first handshake: the certificate served names the join address.
        joins = _with_port(config.advertise or config.listen, join_port)
        _renew_with_join_address(serving, tls, config.serving_cert_ttl, joins)
        await serving.renew()
        log.info("taking joins of new agents on %s (advertised as %s)", join_listen, joins)
    await server.start()
    renewing = asyncio.create_task(serving.run()) if serving else None
    if tls is None:
        log.warning(INSECURE_WARNING.format(what="the scheduler", address=config.listen))
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
        if renewing is not None:
            renewing.cancel()
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


def _renew_with_join_address(
    serving: ServingCertificate, tls: SchedulerTLS, ttl: float, joins: str
) -> None:
    """Make every serving certificate from now on (the next at once, then one before
    each expires) name the replica's hosts and the address it takes joins on."""
    lifetime = dt.timedelta(seconds=ttl)
    first = tls.credentials

    def reissue() -> Credentials:
        if serving.credentials is first:
            return reissue_like(tls.ca, first, lifetime, [join_uri(joins)])
        return reissue_like(tls.ca, serving.credentials, lifetime)

    serving.reissue_with(reissue)


def _any_port(listen: str) -> str:
    """`listen`'s host with port 0: any free port (the certificate tells agents which)."""
    return _with_port(listen, 0)


def _with_port(address: str, port: int) -> str:
    host, _ = parse_address(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tls(config: SchedulerConfig, replica_id: str) -> SchedulerTLS | None:
    """The replica's TLS, None with --insecure (said on stderr); PKIError if neither."""
    if config.tls_dir is None:
        if not config.insecure:
            raise PKIError(
                "the scheduler needs --tls-dir DIR (the CA of `paas cluster init --dir DIR`), "
                "or --insecure to serve plaintext with no authentication"
            )
        print(INSECURE_WARNING.format(what="the scheduler", address=config.listen),
              file=sys.stderr)  # fmt: skip
        return None
    return load_scheduler_tls(
        config.tls_dir, replica_id, [config.listen, config.advertise], config.sans
    )
