"""The scheduler's gRPC service, composed: one servicer per resource behind one guard.

    apps_api.AppsService            CreateApp, ListApps, DestroyApp, Deploy
    releases_api.ReleasesService    ListReleases, GetRelease, SetConfig, Rollback
    formation_api.FormationService  Scale
    instances_api.InstancesService  ListInstances, Restart, Stop (rolling.py restarts), Why
    nodes_api.NodesService          ListNodes, Drain
    runs_api.RunsService            Run (runs.Runs holds the one-offs)
    drains_api.DrainsService        AddDrain, RemoveDrain, ListDrains
    logs_api.LogsService            Logs (logreader.LogReader merges it, for the drains too)
    session_api.SessionService      Session, the agents' stream
    credentials_api.CredentialsService  CreateCredentials, ListCredentials, RevokeCredentials
    slugs_api.SlugsService          StatSlug, UploadSlug, FetchSlug
    tokens_api.TokensService        CreateToken, ListTokens, RevokeToken, Join

Every RPC of the Scheduler service in the proto is taken from exactly one of
them and wrapped by guard.Guard (the caller's certificate first, auth.py, then
leadership, then errors to statuses);
an RPC that no part offers, or that two offer, stops the scheduler at start
rather than answering UNIMPLEMENTED. Every replica serves it; only the leader
answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import grpc

from paas.common.pki import Credentials
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc
from paas.scheduler.apps_api import AppsService
from paas.scheduler.auth import Authorizer
from paas.scheduler.config import SchedulerConfig
from paas.scheduler.credentials_api import CredentialsService
from paas.scheduler.drains import Drains
from paas.scheduler.drains_api import DrainsService
from paas.scheduler.events import EventLog
from paas.scheduler.formation_api import FormationService
from paas.scheduler.guard import Guard, LeaderView
from paas.scheduler.instances_api import InstancesService
from paas.scheduler.logreader import LogReader
from paas.scheduler.logs_api import LogsService
from paas.scheduler.nodecerts import DEFAULT_NODE_CERT_TTL, NodeCertificates
from paas.scheduler.nodes_api import NodesService
from paas.scheduler.reconcile import Reconciler
from paas.scheduler.release_phase import ReleasePhase
from paas.scheduler.releases_api import ReleasesService
from paas.scheduler.rolling import Restarts
from paas.scheduler.runs import Runs
from paas.scheduler.runs_api import RunsService
from paas.scheduler.servingcert import ServingCertificate
from paas.scheduler.session_api import SessionService
from paas.scheduler.sessions import Sessions
from paas.scheduler.sluggc import SlugCollector
from paas.scheduler.slugs_api import SlugsService
from paas.scheduler.slugstore import EtcdSlugStore
from paas.scheduler.store import Store
from paas.scheduler.tlsdir import SchedulerTLS
from paas.scheduler.tokens_api import TokensService

# The Scheduler service as the proto declares it: what must be served.
SCHEDULER = pb.DESCRIPTOR.services_by_name["Scheduler"]


class SchedulerService:
    """Answers the CLI and holds the agents' sessions, on the leader."""

    def __init__(
        self,
        store: Store,
        leadership: LeaderView,
        sessions: Sessions,
        reconciler: Reconciler,
        events: EventLog,
        tls: SchedulerTLS | None = None,
        node_cert_ttl: float = DEFAULT_NODE_CERT_TTL,
        serving: ServingCertificate | None = None,
        config: SchedulerConfig | None = None,
    ) -> None:
        """`tls` None: TLS is off (`--insecure`), every caller is let in; else its CA
        signs nodes' certificates (Join, renewals), each for `node_cert_ttl` seconds.
        `serving`: the replica's own certificate as it is renewed (agents are dialed
        with it); without it, the one of `tls`. `config`: the slug limits and GC."""
        certificates = NodeCertificates(tls.ca, node_cert_ttl) if tls else None
        config = config or SchedulerConfig()

        def own_credentials() -> Credentials | None:
            if serving is not None:
                return serving.credentials
            return tls.credentials if tls else None

        self._sessions = sessions
        slugs = EtcdSlugStore(store)
        self._slug_gc = SlugCollector(store, slugs, config.keep_releases, config.slug_grace)
        self._reader = LogReader(sessions, events, own_credentials)
        self._drains = Drains(store, events, stream=self._reader.merged_batches)
        self._restarts = Restarts(store, sessions, reconciler, events)
        authorizer = Authorizer(store if tls else None)
        self.runs = Runs(store, sessions, reconciler.kick, lambda: _instances_on(reconciler))
        self.runs.watch_apps(lambda: reconciler.world.apps if reconciler.world else None)
        reconciler.busy = self.runs.busy
        # The rollout controller's hook: run_release_phase(release) -> None | why it failed.
        self.release_phase = ReleasePhase(store, self.runs)
        parts: list[object] = [
            AppsService(
                store, sessions, reconciler, events, self._restarts, self._drains, self._slug_gc
            ),
            ReleasesService(
                store, sessions, reconciler, events, self._slug_gc, config.keep_releases
            ),
            FormationService(store, reconciler, events),
            InstancesService(store, sessions, reconciler, events, self._restarts, self.runs.views),
            NodesService(store, sessions, reconciler),
            DrainsService(store, events, self._drains),
            LogsService(store, self._reader.merged_batches),
            SessionService(
                store,
                sessions,
                reconciler,
                leadership,
                authorizer,
                certificates,
                on_run=self.runs.on_output,
            ),
            RunsService(store, sessions, self.runs),
            SlugsService(
                store, slugs, self._slug_gc, leadership, config.max_slug_size, config.slug_budget
            ),
            CredentialsService(store, tls.ca if tls else None, tls.first_admin if tls else None),
            TokensService(store, certificates),
        ]
        for name, handler in guarded_handlers(parts, Guard(leadership, authorizer)).items():
            setattr(self, name, handler)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        # The generated registration reads each RPC as an attribute: the guarded ones.
        pb_grpc.add_SchedulerServicer_to_server(cast(pb_grpc.SchedulerServicer, self), server)

    async def close(self) -> None:
        await self.runs.close()
        self._restarts.close()
        await self._slug_gc.close()
        await self._drains.close()
        await self._reader.close()

    def on_leadership(self, leading: bool) -> None:
        self._drains.on_leadership(leading)
        self._slug_gc.on_leadership(leading)
        self.runs.on_leadership(leading)
        if not leading:
            # Agents must find the new leader: end every session now.
            self._sessions.close_all()


def _instances_on(reconciler: Reconciler) -> dict[str, int]:
    """Formation instances per node, as the last reconcile pass saw them."""
    counts: dict[str, int] = {}
    if reconciler.world is not None:
        for record in reconciler.world.instances:
            counts[record.node] = counts.get(record.node, 0) + 1
    return counts


def guarded_handlers(parts: Sequence[object], guard: Guard) -> dict[str, Callable[..., Any]]:
    """Each RPC of the Scheduler service, taken from the one part that offers it and
    wrapped by `guard`; RuntimeError if a part is missing or two offer one RPC."""
    handlers: dict[str, Callable[..., Any]] = {}
    for method in SCHEDULER.methods:
        offering = [part for part in parts if callable(getattr(part, method.name, None))]
        if len(offering) != 1:
            raise RuntimeError(
                f"the Scheduler RPC {method.name} must be offered by exactly one servicer, "
                f"not {len(offering)}"
            )
        handler = getattr(offering[0], method.name)
        # A stream of requests is checked by its handler, one message at a time.
        check = not method.client_streaming
        wrap = guard.stream if method.server_streaming else guard.unary
        handlers[method.name] = wrap(handler, check, method.name)
    return handlers
