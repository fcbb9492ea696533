"""The etcd key layout and every read and write of the scheduler's durable state.

This module owns the keys: nothing else builds one. Every write is a txn
guarded by leadership (a compare on the create revision of the election key),
so a deposed leader's writes fail instead of landing.

Layout, under /paas/:

    leader                       election key, value {"id", "address"}, on a lease
    cluster-id                   the cluster's id, made once by the first leader; agents
                                 learn it at session open and keep no other cluster's data
    apps/APP                     {"name", "id", "created_at", "release"}; the id is new
                                 for every app created, so a re-created name is another app
    formation/APP                {"web": 3, ...}
    releases/APP/0000000007      {"version", "slug": {"digest", "size"} or "dir" (in place),
                                 "commands", "env", ...}; the slug GC keeps the last
                                 --keep-releases of each app
    instances/APP/web.3          {"node", "release", "incarnation"?}; the assignment's
                                 incarnation is "incarnation" when present (a promoted
                                 surge copy keeps its own), else the key's mod revision
    surges/APP/web.3             {"node", "release"}: the new copy of web.3 a rollout
                                 starts beside the old one (rollout.py); its mod revision
                                 is its incarnation, which a promotion keeps
    nodes/NAME                   {"address", "capacity", "labels", "draining"}
    events/APP/00001764358023123456
                                 a scheduler event (`paas[scheduler]: ...`), a
                                 serialized LogLine, keyed by its seq; the last
                                 so many per app are kept (trim_events)
    drains/APP/ID                {"url", "token", "created_at"}; ID is a hash of the
                                 URL, so one URL is one key (adding it twice fails)
    drain-progress/APP/ID        {"cursors", "since", "dropped"}: how far the drain
                                 got, saved every few seconds by the leader; the
                                 reconcile watch ignores these keys
    tokens/ID                    a join token: {"secret_hash", "created_at", "expires_at",
                                 "uses", "uses_left", "revoked"}; the secret itself is
                                 never stored (common/jointoken.py); a join takes a use
                                 with a compare on the key's mod revision; the
                                 reconcile watch ignores these keys
    credentials/NAME             {"name", "serial", "expires_at", "created_at", "revoked"}:
                                 an admin credential (never its key)
    revoked/SERIAL               {"name", "revoked_at"}: the deny list of certificate
                                 serials (lowercase hex) every replica checks on each call
    slugs/DIGEST/chunk/000000    a slug's bytes, CHUNK_SIZE per value, in order
    runs/APP/NAME                a one-off process (`run.4`, `release.7`): {"node", "release",
                                 "command", "type", "env", "attached", "state", "exit",
                                 "created_at"}; deleted once its exit is seen (a release
                                 phase's once its result is read); the reconcile watch
                                 ignores these keys
    run-counter/APP/next         the last N of the app's run.N, taken in the txn that
                                 writes the run (a compare on its mod revision)
    slugs/DIGEST/meta            {"digest", "size", "chunks", "created_at"}: written
                                 last, after every chunk; a slug exists when its meta
                                 does (chunks without it are a dead leader's leftovers).
                                 The reconcile watch ignores these keys too

It must never decide anything: it reads and writes what it is told.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import ipaddress
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aetcd
import aetcd.exceptions
import aetcd.rpc
import aetcd.transactions as tx
import grpc

from paas.common.jointoken import TokenRecord
from paas.common.names import InstanceName
from paas.proto import paas_pb2 as pb
from paas.scheduler.errors import ConflictError as ConflictError
from paas.scheduler.errors import EtcdUnreachable, etcd_error
from paas.scheduler.errors import NotLeaderError as NotLeaderError
from paas.scheduler.errors import StoreError as StoreError
from paas.scheduler.etcd_access import EtcdAccess
from paas.scheduler.etcd_client import EtcdClient

PREFIX = "/paas/"
LEADER_KEY = PREFIX + "leader"
CLUSTER_ID_KEY = PREFIX + "cluster-id"
_EVENTS = PREFIX + "events/"
_SLUGS = PREFIX + "slugs/"
# etcd's default --max-request-bytes (1.5 MiB): a txn of slug chunks stays below it.
ETCD_REQUEST_LIMIT = 1536 * 1024
# Room left in each txn for keys, the guard and the request's framing.
_TXN_OVERHEAD = 64 * 1024
# etcd refuses txns of more than 128 operations by default.
_MAX_TXN_OPS = 120


def _app_prefixes(app: str) -> list[str]:
    """Every key prefix that holds something of `app`, its record aside."""
    return [
        f"{PREFIX}releases/{app}/",
        f"{PREFIX}instances/{app}/",
        f"{_SURGES}{app}/",
        _events_prefix(app),
        f"{PREFIX}drains/{app}/",
        f"{_DRAIN_PROGRESS}{app}/",
        _runs_prefix(app),
        _run_counter_prefix(app),
    ]


def _app_key(app: str) -> str:
    return f"{PREFIX}apps/{app}"


def _formation_key(app: str) -> str:
    return f"{PREFIX}formation/{app}"


def _release_key(app: str, version: int) -> str:
    return f"{PREFIX}releases/{app}/{version:010d}"


def _instance_key(app: str, name: InstanceName) -> str:
    return f"{PREFIX}instances/{app}/{name}"


def _node_key(name: str) -> str:
    return f"{PREFIX}nodes/{name}"


def _events_prefix(app: str) -> str:
    return f"{_EVENTS}{app}/"


def _event_key(app: str, seq: int) -> str:
    # Zero-padded, so that key order is seq order (a seq is a time in microseconds).
    return f"{_events_prefix(app)}{seq:020d}"


def _slug_prefix(digest: str) -> str:
    return f"{_SLUGS}{digest}/"


def _slug_meta_key(digest: str) -> str:
    return f"{_slug_prefix(digest)}meta"


def _slug_chunk_key(digest: str, index: int) -> str:
    return f"{_slug_prefix(digest)}chunk/{index:06d}"


def chunks_per_txn(chunk_size: int, limit: int = ETCD_REQUEST_LIMIT) -> int:
    """How many chunks of `chunk_size` one txn may carry below etcd's request limit."""
    return max(1, (limit - _TXN_OVERHEAD) // chunk_size)


def _prefix_end(prefix: str) -> bytes:
    """The first key after every key that starts with `prefix` (all ASCII here)."""
    return prefix[:-1].encode() + bytes([ord(prefix[-1]) + 1])


_DRAIN_PROGRESS = f"{PREFIX}drain-progress/"
_TOKENS = f"{PREFIX}tokens/"


def _token_key(token_id: str) -> str:
    return f"{_TOKENS}{token_id}"


def _drain_id(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:24]


def _drain_key(app: str, url: str) -> str:
    return f"{PREFIX}drains/{app}/{_drain_id(url)}"


def _credential_key(name: str) -> str:
    return f"{PREFIX}credentials/{name}"


def _revoked_key(serial: str) -> str:
    return f"{PREFIX}revoked/{serial}"


def _drain_progress_key(app: str, url: str) -> str:
    return f"{_DRAIN_PROGRESS}{app}/{_drain_id(url)}"


@dataclass(frozen=True)
class AppRecord:
    name: str
    created_at: float
    release: int  # the release in force, 0 before the first deploy
    id: str = ""  # unique for ever: agents keep the app's logs under it
    mod_revision: int = 0
    # Of the app's key: stays while the app lives, another for a re-created one, so a
    # write about the app can be guarded on it (Assign).
    create_revision: int = 0
    # The highest version ever made: a failed rollout puts `release` back to the one
    # before, and the next release must not reuse the failed one's number.
    latest: int = 0


def next_version(app: AppRecord) -> int:
    """The version of the app's next release."""
    return max(app.release, app.latest) + 1


@dataclass(frozen=True)
class SlugRef:
    """A slug as a release names it."""

    digest: str
    size: int


@dataclass(frozen=True)
class ReleaseRecord:
    app: str
    version: int
    dir: str  # --in-place only; "" with a slug
    commands: dict[str, str]
    env: dict[str, str]
    created_at: float
    description: str = ""
    # process type -> supervision settings, as ProcessSettings fields (JSON names)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    slug: SlugRef | None = None  # None for an in-place release
    by: str = ""  # the admin credential's name that made it ("" without TLS)
    # Where its rollout stands: "rolling", "succeeded" or "failed" (RELEASE_STATUSES);
    # a release stored before rollouts existed reads as "succeeded".
    status: str = "succeeded"
    status_reason: str = ""  # why it failed, or what superseded it
    previous: int = 0  # the release in force when it was made (0: none)
    # The rollout's durable state (rollout.py): when it last made progress (0: its
    # created_at) and whether its release phase has run.
    progress_at: float = 0.0
    phase_done: bool = False
    mod_revision: int = 0  # of its key, as read (not stored); 0 for one not read


# ReleaseRecord.status values, as pb.ReleaseStatus names them.
RELEASE_STATUSES = {"rolling": 1, "succeeded": 2, "failed": 3}


@dataclass(frozen=True)
class SlugRecord:
    """A stored slug's meta key: it exists whole once this is written."""

    digest: str
    size: int
    chunks: int
    created_at: float


@dataclass(frozen=True)
class InstanceRecord:
    app: str
    name: InstanceName
    node: str
    release: int
    # The value's "incarnation" if it has one (a promoted surge copy), else the key's
    # mod revision: grows with every (re)assignment.
    incarnation: int
    mod_revision: int = 0  # of its key, as read (0: the incarnation is the mod revision)

    @property
    def revision(self) -> int:
        """Its key's mod revision, which a write guarded on it compares."""
        return self.mod_revision or self.incarnation


@dataclass(frozen=True)
class NodeRecord:
    name: str
    address: str
    capacity: int
    labels: dict[str, str] = field(default_factory=dict)
    draining: bool = False
    mod_revision: int = 0  # as read; 0 for a record not read from etcd
    memory: int = 0  # bytes instances may reserve (the agent reports it; 0: unknown)
    cpu: float = 0.0  # cores instances may reserve (the agent reports it; 0: unknown)


@dataclass(frozen=True)
class DrainRecord:
    """A log drain: where an app's log stream is forwarded."""

    app: str
    url: str
    token: str  # the syslog HOSTNAME of what it sends, e.g. d.6f1c...
    created_at: float


@dataclass(frozen=True)
class DrainProgress:
    """How far a drain got: the last line delivered of each (node, instance), a time
    before which everything was delivered, its counters since it was added (lines
    sent, lines that left retention before it got to them), and the lines an older
    leader dropped without reporting them (none since drains read from cursors)."""

    cursors: dict[tuple[str, str], int]
    since: float
    dropped: int = 0
    sent: int = 0
    lost: int = 0


@dataclass(frozen=True)
class CredentialRecord:
    """An admin credential as etcd keeps it: its name, certificate serial and expiry."""

    name: str
    serial: str  # lowercase hex
    expires_at: float
    created_at: float
    revoked: bool = False


@dataclass(frozen=True)
class World:
    """Everything durable the reconcile loop needs, read at one revision each."""

    apps: dict[str, AppRecord]
    formations: dict[str, dict[str, int]]
    releases: dict[str, ReleaseRecord]  # app -> its current release
    instances: list[InstanceRecord]
    nodes: dict[str, NodeRecord]
    surges: list[SurgeRecord] = field(default_factory=list)
    # (app, version) -> every release the informer holds: what instances run
    history: dict[tuple[str, int], ReleaseRecord] = field(default_factory=dict)


@dataclass(frozen=True)
class Assign:
    """Write: (re)assign an instance. A new incarnation even if nothing else changed.

    Written only while the app is the one that was read: `app_created` is the create
    revision of its key (AppRecord.create_revision), 0 for "while an app of the name
    exists". So a reconcile pass or a restart step that read the world before a
    destroy cannot bring the app's instances back, nor give a re-created app of the
    same name an instance of the old one."""

    app: str
    name: InstanceName
    node: str
    release: int
    app_created: int = 0


@dataclass(frozen=True)
class Unassign:
    app: str
    name: InstanceName


def _dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


def _etcd_target(endpoints: Sequence[str]) -> tuple[str, int]:
    """aetcd dials f"{host}:{port}"; several IP endpoints become one gRPC ipv4: target
    so that the channel fails over between members by itself."""
    hosts = [endpoint.rsplit(":", 1) for endpoint in endpoints]
    all_ips = True
    for host, _ in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            all_ips = False
    if len(hosts) == 1 or not all_ips:
        host, port = hosts[0]
        return host, int(port)
    head = ",".join(f"{host}:{port}" for host, port in hosts[:-1])
    last_host, last_port = hosts[-1]
    return f"ipv4:{head},{last_host}", int(last_port)


class Store:
    """The scheduler's only door to etcd."""

    def __init__(
        self, endpoints: Sequence[str], timeout: float = 5.0, access: EtcdAccess | None = None
    ) -> None:
        host, port = _etcd_target(endpoints)
        self.endpoints = list(endpoints)
        self._client = EtcdClient(host, port, timeout, access or EtcdAccess())
        self._timeout = timeout
        self._leader_revision = 0  # create revision of our election key, 0 = not leader
        self._cluster_id = ""  # once read or made, it never changes

    @property
    def client(self) -> aetcd.Client:
        """For leader.py, which owns the election key and its lease."""
        return self._client

    async def close(self) -> None:
        await self._client.close()

    @property
    def timeout(self) -> float:
        return self._timeout

    async def check_access(self, within: float) -> None:
        """Read one key, retrying while etcd is unreachable for up to `within` seconds;
        a StoreError if it still cannot be read (a TLS handshake or a password refused)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            try:
                await self._client.get(CLUSTER_ID_KEY.encode())
                return
            except (aetcd.exceptions.ClientError, grpc.aio.AioRpcError) as exc:
                error = etcd_error(self.endpoints, exc)
                if not isinstance(error, EtcdUnreachable) or loop.time() >= deadline:
                    raise error from None
                # A fresh channel each try: aetcd keeps a failed Authenticate's state.
                await self._client.close()
                await asyncio.sleep(0.5)

    def set_leadership(self, create_revision: int) -> None:
        """Guard every later write on this election key revision (0: refuse all writes)."""
        self._leader_revision = create_revision

    # ------------------------------------------------------------ reads

    async def _kvs(self, prefix: str) -> list[Any]:
        try:
            result = await self._client.get_prefix(prefix.encode())
        except aetcd.exceptions.ClientError as exc:
            raise etcd_error(self.endpoints, exc) from exc
        return list(result.kvs)

    async def _get_prefix(self, prefix: str) -> list[tuple[str, bytes, int]]:
        return [(kv.key.decode(), kv.value, kv.mod_revision) for kv in await self._kvs(prefix)]

    async def _get(self, key: str) -> tuple[bytes, int, int] | None:
        """The key's value, mod revision and create revision; None if it has none."""
        try:
            result = await self._client.get(key.encode())
        except aetcd.exceptions.ClientError as exc:
            raise etcd_error(self.endpoints, exc) from exc
        if result is None:
            return None
        return result.value, result.mod_revision, result.create_revision

    async def app(self, name: str) -> AppRecord | None:
        found = await self._get(_app_key(name))
        return None if found is None else _app_from(found[0], found[1], found[2])

    async def apps(self) -> dict[str, AppRecord]:
        kvs = await self._kvs(f"{PREFIX}apps/")
        records = (_app_from(kv.value, kv.mod_revision, kv.create_revision) for kv in kvs)
        return {record.name: record for record in records}

    async def cluster_id(self) -> str:
        """The cluster's id; the first leader to ask makes it (a guarded put-if-absent)."""
        if self._cluster_id:
            return self._cluster_id
        found = await self._get(CLUSTER_ID_KEY)
        if found is None:
            made = uuid.uuid4().hex
            try:
                await self._txn(
                    [tx.Version(CLUSTER_ID_KEY) == 0],
                    [tx.Put(CLUSTER_ID_KEY.encode(), made.encode())],
                )
            except ConflictError:
                pass  # another leader made it first: read theirs
            found = await self._get(CLUSTER_ID_KEY)
            if found is None:
                raise StoreError("the cluster id vanished from etcd right after it was written")
        self._cluster_id = found[0].decode()
        return self._cluster_id

    async def formation(self, app: str) -> tuple[dict[str, int], int]:
        """The formation and its key's mod revision (0 when it has none yet)."""
        found = await self._get(_formation_key(app))
        if found is None:
            return {}, 0
        return {str(k): int(v) for k, v in json.loads(found[0]).items()}, found[1]

    async def release(self, app: str, version: int) -> ReleaseRecord | None:
        found = await self._get(_release_key(app, version))
        return None if found is None else _release_from(json.loads(found[0]), found[1])

    async def releases(self, app: str) -> list[ReleaseRecord]:
        """The app's releases still kept, oldest first (keys sort by version)."""
        return [
            _release_from(json.loads(value))
            for _, value, _ in await self._get_prefix(f"{PREFIX}releases/{app}/")
        ]

    async def nodes(self) -> dict[str, NodeRecord]:
        rows = await self._get_prefix(f"{PREFIX}nodes/")
        found = (
            _node_from(key.rsplit("/", 1)[1], value, revision) for key, value, revision in rows
        )
        return {node.name: node for node in found}

    async def node(self, name: str) -> NodeRecord | None:
        """One node's record (an agent's hello reads its own, not all of them)."""
        found = await self._get(_node_key(name))
        return None if found is None else _node_from(name, found[0], found[1])

    async def instances(self, app: str = "") -> list[InstanceRecord]:
        """Every assignment, or only those of `app`."""
        rows = await self._get_prefix(f"{PREFIX}instances/{app}/" if app else f"{PREFIX}instances/")
        records = []
        for key, value, revision in rows:
            app, name = key[len(f"{PREFIX}instances/") :].split("/", 1)
            records.append(_instance_from(app, InstanceName.parse(name), value, revision))
        return records

    async def surges(self, app: str = "") -> list[SurgeRecord]:
        """Every rollout's new copies in flight, or only those of `app` (the rollouts
        section below)."""
        rows = await self._get_prefix(f"{_SURGES}{app}/" if app else _SURGES)
        records = []
        for key, value, revision in rows:
            app, name = key[len(_SURGES) :].split("/", 1)
            records.append(_surge_from(app, InstanceName.parse(name), value, revision))
        return records

    async def drains(self, app: str | None = None) -> list[DrainRecord]:
        """The log drains of `app` (of every app when None), oldest first."""
        rows = await self._get_prefix(f"{PREFIX}drains/{app}/" if app else f"{PREFIX}drains/")
        records = []
        for key, value, _ in rows:
            data = json.loads(value)
            records.append(
                DrainRecord(
                    app=key[len(f"{PREFIX}drains/") :].split("/", 1)[0],
                    url=str(data["url"]),
                    token=str(data["token"]),
                    created_at=float(data["created_at"]),
                )
            )
        return sorted(records, key=lambda r: (r.app, r.created_at, r.url))

    async def drain_progress(self, drain: DrainRecord) -> DrainProgress | None:
        found = await self._get(_drain_progress_key(drain.app, drain.url))
        if found is None:
            return None
        data = json.loads(found[0])
        return DrainProgress(
            cursors={(str(n), str(i)): int(seq) for n, i, seq in data["cursors"]},
            since=float(data["since"]),
            dropped=int(data.get("dropped", 0)),
            sent=int(data.get("sent", 0)),
            lost=int(data.get("lost", 0)),
        )

    async def tokens(self) -> list[TokenRecord]:
        """Every join token kept, oldest first."""
        rows = await self._get_prefix(_TOKENS)
        records = [_token_from(key[len(_TOKENS) :], value) for key, value, _ in rows]
        return sorted(records, key=lambda r: (r.created_at, r.id))

    async def token(self, token_id: str) -> tuple[TokenRecord, int] | None:
        """The token and its key's mod revision (for `update_token`); None if unknown."""
        found = await self._get(_token_key(token_id))
        return None if found is None else (_token_from(token_id, found[0]), found[1])

    async def _newest(
        self, prefix: str, limit: int, keys_only: bool = False
    ) -> tuple[list[tuple[bytes, bytes]], int]:
        """The `limit` greatest keys under `prefix` (greatest first) and how many keys
        the prefix holds in all. aetcd's own range calls drop `limit`, so this one
        builds the request itself."""
        request = aetcd.rpc.RangeRequest(
            key=prefix.encode(),
            range_end=_prefix_end(prefix),
            limit=limit,
            sort_order=aetcd.rpc.RangeRequest.DESCEND,
            sort_target=aetcd.rpc.RangeRequest.KEY,
            keys_only=keys_only,
        )
        try:
            await self._client.connect()
            response = await self._client.kvstub.Range(
                request, timeout=self._timeout, metadata=self._client.metadata
            )
        except (aetcd.exceptions.ClientError, grpc.aio.AioRpcError) as exc:
            raise etcd_error(self.endpoints, exc) from exc
        return [(kv.key, kv.value) for kv in response.kvs], int(response.count)

    async def events(self, app: str, newest: int) -> list[pb.LogLine]:
        """The app's last `newest` scheduler events, oldest first."""
        if newest <= 0:
            return []  # a limit of 0 would mean no limit to etcd
        rows, _ = await self._newest(_events_prefix(app), newest)
        lines = []
        for _, value in reversed(rows):
            line = pb.LogLine()
            line.ParseFromString(value)
            lines.append(line)
        return lines

    async def events_of_all_apps(self, newest: int) -> dict[str, list[pb.LogLine]]:
        """The last `newest` scheduler events of every app, oldest first."""
        return {app: await self.events(app, newest) for app in await self.apps()}

    # ------------------------------------------------------------ writes

    def _guard(self) -> list[Any]:
        if not self._leader_revision:
            raise NotLeaderError("this scheduler replica is not the leader")
        return [tx.Create(LEADER_KEY) == self._leader_revision]

    async def _txn(self, compare: list[Any], success: list[Any]) -> None:
        """Run a guarded txn; tell a lost leadership apart from a lost race."""
        guard = self._guard()
        try:
            ok, _ = await self._client.transaction(
                compare=guard + compare, success=success, failure=[]
            )
            if ok:
                return
            guard_ok, _ = await self._client.transaction(compare=guard, success=[], failure=[])
        except aetcd.exceptions.ClientError as exc:
            raise etcd_error(self.endpoints, exc) from exc
        if not guard_ok:
            self._leader_revision = 0
            raise NotLeaderError("lost leadership while writing")
        raise ConflictError("the state changed while writing; try again")

    async def txn_revision(self, compare: list[Any], success: list[Any]) -> int:
        """As `_txn`, and return the revision the txn committed at (its header's)."""
        guard = self._guard()
        request = aetcd.rpc.TxnRequest(
            compare=[c.build_message() for c in guard + compare],
            success=self._client._ops_to_requests(success),
        )
        try:
            await self._client.connect()
            response = await self._client.kvstub.Txn(
                request, timeout=self._timeout, metadata=self._client.metadata
            )
            if response.succeeded:
                return int(response.header.revision)
            guard_ok, _ = await self._client.transaction(compare=guard, success=[], failure=[])
        except (aetcd.exceptions.ClientError, grpc.aio.AioRpcError) as exc:
            raise etcd_error(self.endpoints, exc) from exc
        if not guard_ok:
            self._leader_revision = 0
            raise NotLeaderError("lost leadership while writing")
        raise ConflictError("the state changed while writing; try again")

    async def create_app(self, name: str) -> AppRecord:
        created = AppRecord(name=name, created_at=time.time(), release=0, id=uuid.uuid4().hex)
        key = _app_key(name)
        await self._txn(
            [tx.Version(key) == 0],
            [
                tx.Put(key.encode(), _dumps(_app_to(created))),
                tx.Put(_formation_key(name).encode(), _dumps({})),
            ],
        )
        return created

    async def destroy_app(self, app: AppRecord) -> int:
        """Delete the app and everything of it (formation, releases, instances, events,
        drains and their progress) in one guarded txn, if the app is unchanged since
        read; return how many instances it had. Agents stop the instances when their
        desired sets no longer hold them."""
        _, instances = await self._newest(f"{PREFIX}instances/{app.name}/", 1, keys_only=True)
        deletes = [
            tx.Delete(prefix.encode(), range_end=_prefix_end(prefix))
            for prefix in _app_prefixes(app.name)
        ]
        await self._txn(
            [tx.Mod(_app_key(app.name)) == app.mod_revision],
            [
                tx.Delete(_app_key(app.name).encode()),
                tx.Delete(_formation_key(app.name).encode()),
                *deletes,
            ],
        )
        return instances

    async def add_release(
        self, app: AppRecord, release: ReleaseRecord, formation: dict[str, int], formation_rev: int
    ) -> None:
        """Write `release` as the app's current one and the formation beside it, if
        neither the app nor its formation changed since they were read, and no release
        of its version exists (a version is never reused: see `next_version`)."""
        latest = max(app.latest, release.version)
        app_value = _app_to(dataclasses.replace(app, release=release.version, latest=latest))
        # A release names only a slug stored whole (its meta is there).
        slug_stored = [tx.Version(_slug_meta_key(release.slug.digest)) > 0] if release.slug else []
        await self._txn(
            [
                tx.Mod(_app_key(app.name)) == app.mod_revision,
                tx.Mod(_formation_key(app.name)) == formation_rev,
                tx.Version(_release_key(app.name, release.version)) == 0,
                *slug_stored,
            ],
            [
                tx.Put(
                    _release_key(app.name, release.version).encode(), _dumps(_release_to(release))
                ),
                tx.Put(_app_key(app.name).encode(), _dumps(app_value)),
                tx.Put(_formation_key(app.name).encode(), _dumps(formation)),
            ],
        )

    async def set_formation(
        self, app: AppRecord, formation: dict[str, int], formation_rev: int
    ) -> None:
        """Replace the formation, if it and the app are unchanged since read."""
        await self._txn(
            [
                tx.Mod(_app_key(app.name)) == app.mod_revision,
                tx.Mod(_formation_key(app.name)) == formation_rev,
            ],
            [tx.Put(_formation_key(app.name).encode(), _dumps(formation))],
        )

    async def put_node(self, node: NodeRecord) -> None:
        value = {
            "address": node.address,
            "capacity": node.capacity,
            "labels": node.labels,
            "draining": node.draining,
            "memory": node.memory,
            "cpu": node.cpu,
        }
        await self._txn([], [tx.Put(_node_key(node.name).encode(), _dumps(value))])

    async def remove_node(self, node: NodeRecord) -> None:
        """Delete the node's record, if unchanged since it was read (ConflictError)."""
        key = _node_key(node.name)
        await self._txn([tx.Mod(key) == node.mod_revision], [tx.Delete(key.encode())])

    async def add_drain(self, drain: DrainRecord) -> None:
        """Write a new drain; ConflictError if the app has one with this URL already."""
        key = _drain_key(drain.app, drain.url)
        value = {"url": drain.url, "token": drain.token, "created_at": drain.created_at}
        await self._txn([tx.Version(key) == 0], [tx.Put(key.encode(), _dumps(value))])

    async def remove_drain(self, app: str, url: str) -> DrainRecord | None:
        """Delete the app's drain of `url` and its progress; None if it has none."""
        key = _drain_key(app, url)
        found = await self._get(key)
        if found is None:
            return None
        data = json.loads(found[0])
        try:
            await self._txn(
                [tx.Mod(key) == found[1]],
                [
                    tx.Delete(key.encode()),
                    tx.Delete(_drain_progress_key(app, url).encode()),
                ],
            )
        except ConflictError:
            return None  # removed (or re-added) meanwhile by another request
        return DrainRecord(
            app=app, url=url, token=str(data["token"]), created_at=float(data["created_at"])
        )

    async def save_drain_progress(self, drain: DrainRecord, progress: DrainProgress) -> None:
        """Record how far the drain got; ConflictError if it was removed meanwhile."""
        value = {
            "cursors": [[n, i, seq] for (n, i), seq in sorted(progress.cursors.items())],
            "since": progress.since,
            "dropped": progress.dropped,
            "sent": progress.sent,
            "lost": progress.lost,
        }
        await self._txn(
            [tx.Version(_drain_key(drain.app, drain.url)) > 0],
            [tx.Put(_drain_progress_key(drain.app, drain.url).encode(), _dumps(value))],
        )

    async def add_token(self, token: TokenRecord) -> None:
        """Write a new join token; ConflictError if its id is taken."""
        key = _token_key(token.id)
        await self._txn([tx.Version(key) == 0], [tx.Put(key.encode(), _dumps(_token_to(token)))])

    async def update_token(self, token: TokenRecord, mod_revision: int) -> None:
        """Replace the token if its key is unchanged since read at `mod_revision`
        (ConflictError otherwise): of two joins racing for its last use, one wins."""
        key = _token_key(token.id)
        await self._txn(
            [tx.Mod(key) == mod_revision], [tx.Put(key.encode(), _dumps(_token_to(token)))]
        )

    async def delete_tokens(self, token_ids: Sequence[str]) -> None:
        """Forget tokens (spent ones, long past use)."""
        ops = [tx.Delete(_token_key(token_id).encode()) for token_id in token_ids]
        for start in range(0, len(ops), _MAX_TXN_OPS):
            await self._txn([], ops[start : start + _MAX_TXN_OPS])

    async def apply(self, changes: Sequence[Assign | Unassign]) -> None:
        """Commit assignment changes, in chunks that fit one etcd txn each; ConflictError
        if an Assign's app is gone or is another app now (its chunk is not written)."""
        for start in range(0, len(changes), _MAX_TXN_OPS):
            chunk = changes[start : start + _MAX_TXN_OPS]
            ops: list[Any] = []
            apps: dict[str, int] = {}
            for change in chunk:
                key = _instance_key(change.app, change.name).encode()
                if isinstance(change, Assign):
                    value = {"node": change.node, "release": change.release}
                    ops.append(tx.Put(key, _dumps(value)))
                    apps[change.app] = change.app_created
                else:
                    ops.append(tx.Delete(key))
            compare = [
                tx.Create(_app_key(app)) == created if created else tx.Version(_app_key(app)) > 0
                for app, created in sorted(apps.items())
            ]
            await self._txn(compare, ops)

    async def add_events(self, lines: Sequence[pb.LogLine]) -> None:
        """Keep scheduler events, each under its app and seq (a repeat overwrites)."""
        ops = [
            tx.Put(_event_key(line.app, line.seq).encode(), line.SerializeToString())
            for line in lines
        ]
        for start in range(0, len(ops), _MAX_TXN_OPS):
            await self._txn([], ops[start : start + _MAX_TXN_OPS])

    async def trim_events(self, app: str, keep: int) -> int:
        """Delete all but the app's last `keep` events; say how many there were beyond."""
        prefix = _events_prefix(app)
        rows, count = await self._newest(prefix, max(1, keep), keys_only=True)
        if count <= keep:
            return 0
        # Everything below the keep-th newest key goes (all of it when keep is 0).
        end = rows[-1][0] if keep > 0 else _prefix_end(prefix)
        await self._txn([], [tx.Delete(prefix.encode(), range_end=end)])
        return count - keep

    # ------------------------------------------------------------ credentials

    async def credentials(self) -> dict[str, CredentialRecord]:
        kvs = await self._kvs(f"{PREFIX}credentials/")
        records = (_credential_from(kv.value) for kv in kvs)
        return {record.name: record for record in records}

    async def credential(self, name: str) -> CredentialRecord | None:
        found = await self._get(_credential_key(name))
        return None if found is None else _credential_from(found[0])

    async def add_credential(self, record: CredentialRecord) -> None:
        """Write a new credential; ConflictError if the name is taken."""
        key = _credential_key(record.name)
        value = _dumps(dataclasses.asdict(record))
        await self._txn([tx.Version(key) == 0], [tx.Put(key.encode(), value)])

    async def revoke_credential(self, record: CredentialRecord, revoked_at: float) -> None:
        """Mark the credential revoked and put its serial on the deny list, in one txn."""
        revoked = dataclasses.replace(record, revoked=True)
        entry = {"name": record.name, "revoked_at": revoked_at}
        await self._txn(
            [],
            [
                tx.Put(_credential_key(record.name).encode(), _dumps(dataclasses.asdict(revoked))),
                tx.Put(_revoked_key(record.serial).encode(), _dumps(entry)),
            ],
        )

    async def is_revoked(self, serial: str) -> bool:
        """Whether the serial is on the deny list (one read of one key)."""
        return await self._get(_revoked_key(serial)) is not None

    # ------------------------------------------------------------ releases (GC)

    async def all_releases(self) -> list[ReleaseRecord]:
        """Every release of every app, as stored."""
        return [
            _release_from(json.loads(value))
            for _, value, _ in await self._get_prefix(f"{PREFIX}releases/")
        ]

    async def delete_releases(self, releases: Sequence[tuple[str, int]]) -> None:
        """Delete the releases (app, version) given, in txns of at most _MAX_TXN_OPS."""
        ops = [tx.Delete(_release_key(app, version).encode()) for app, version in releases]
        for start in range(0, len(ops), _MAX_TXN_OPS):
            await self._txn([], ops[start : start + _MAX_TXN_OPS])

    # ------------------------------------------------------------ slugs

    async def slug(self, digest: str) -> SlugRecord | None:
        """The slug's meta; None unless it is stored whole."""
        found = await self._get(_slug_meta_key(digest))
        return None if found is None else _slug_from(json.loads(found[0]))

    async def slugs(self) -> tuple[dict[str, SlugRecord], set[str]]:
        """Every slug stored whole, by digest, and every digest with keys but no meta
        (leftovers of a write that died, or one under way). Reads keys, then only the
        metas: never the chunks' bytes."""
        rows, _ = await self._newest(_SLUGS, 0, keys_only=True)
        digests = {key.decode()[len(_SLUGS) :].split("/", 1)[0] for key, _ in rows}
        records: dict[str, SlugRecord] = {}
        for digest in sorted(digests):
            record = await self.slug(digest)
            if record is not None:
                records[digest] = record
        return records, digests - set(records)

    async def slug_chunk(self, digest: str, index: int) -> bytes | None:
        found = await self._get(_slug_chunk_key(digest, index))
        return None if found is None else found[0]

    async def put_slug_chunks(self, digest: str, first: int, chunks: Sequence[bytes]) -> None:
        """Write chunks `first`, `first`+1, ... of the slug in one guarded txn."""
        ops = [
            tx.Put(_slug_chunk_key(digest, first + offset).encode(), chunk)
            for offset, chunk in enumerate(chunks)
        ]
        await self._txn([], ops)

    async def put_slug_meta(self, record: SlugRecord) -> None:
        """Make the slug exist (its chunks written before); ConflictError if it does."""
        key = _slug_meta_key(record.digest)
        value = {
            "digest": record.digest,
            "size": record.size,
            "chunks": record.chunks,
            "created_at": record.created_at,
        }
        await self._txn([tx.Version(key) == 0], [tx.Put(key.encode(), _dumps(value))])

    async def delete_slug(self, digest: str) -> None:
        """Delete the slug's meta and chunks, meta first within the one txn."""
        prefix = _slug_prefix(digest)
        await self._txn([], [tx.Delete(prefix.encode(), range_end=_prefix_end(prefix))])

    async def compact(self) -> int:
        """Compact etcd's history up to now, so the space of deleted values can be reused;
        the revision compacted to."""
        try:
            await self._client.connect()
            response = await self._client.kvstub.Range(
                aetcd.rpc.RangeRequest(key=LEADER_KEY.encode(), count_only=True),
                timeout=self._timeout,
                metadata=self._client.metadata,
            )
            revision = int(response.header.revision)
            await self._client.compact(revision, physical=True)
        except (aetcd.exceptions.ClientError, grpc.aio.AioRpcError) as exc:
            if "compacted" in str(exc):
                return 0  # someone compacted past it meanwhile
            raise etcd_error(self.endpoints, exc) from exc
        return revision

    # ------------------------------------------------------------ one-off runs

    async def runs(self) -> list[RunRecord]:
        """Every one-off of every app."""
        return [
            _run_from(key, value, mod)
            for key, value, mod in await self._get_prefix(f"{PREFIX}runs/")
        ]

    async def create_run(self, record: RunRecord, app: AppRecord) -> RunRecord:
        """Write `record` as the app's next run.N (its name is ignored) while the app is
        the one read; the run as written."""
        counter = _run_counter_key(record.app)
        for _ in range(10):
            found = await self._get(counter)
            last, mod = (int(found[0]), found[1]) if found else (0, 0)
            named = dataclasses.replace(record, name=f"run.{last + 1}")
            try:
                revision = await self.txn_revision(
                    [tx.Mod(counter) == mod, tx.Create(_app_key(app.name)) == app.create_revision],
                    [
                        tx.Put(counter.encode(), str(last + 1).encode()),
                        tx.Put(_run_key(named.app, named.name).encode(), _dumps(_run_to(named))),
                    ],
                )
            except ConflictError:
                if await self.app(app.name) is None:
                    raise
                continue  # another run took the number: the next one
            return dataclasses.replace(named, mod_revision=revision)
        raise ConflictError("too many runs started at once; try again")

    async def add_run(self, record: RunRecord, app: AppRecord) -> RunRecord:
        """Write `record` under its own name (`release.7`); ConflictError if it exists."""
        key = _run_key(record.app, record.name)
        revision = await self.txn_revision(
            [tx.Version(key) == 0, tx.Create(_app_key(app.name)) == app.create_revision],
            [tx.Put(key.encode(), _dumps(_run_to(record)))],
        )
        return dataclasses.replace(record, mod_revision=revision)

    async def update_run(self, record: RunRecord) -> RunRecord:
        """Write `record` over the stored one, if it is still there."""
        key = _run_key(record.app, record.name)
        revision = await self.txn_revision(
            [tx.Version(key) > 0], [tx.Put(key.encode(), _dumps(_run_to(record)))]
        )
        return dataclasses.replace(record, mod_revision=revision)

    async def delete_run(self, app: str, name: str) -> None:
        await self._txn([], [tx.Delete(_run_key(app, name).encode())])

    # ------------------------------------------------------------ watch

    async def changes(self) -> AsyncIterator[None]:
        """Yield once per change under /paas/ (an event only says: look again), except
        scheduler events and log drains' progress, which change nothing that reconcile
        reads (and would wake it for every event or save the leader writes itself), and
        join tokens (a join changes nothing reconcile reads), and
        slugs, which are not even watched: a watch carries the values, and an upload's
        chunks would stream every byte back to the leader. So two watches, on either
        side of the slug prefix, feed one queue.
        Ends with StoreError when a watch breaks; the caller re-lists and calls again."""
        events = _EVENTS.encode()
        progress = _DRAIN_PROGRESS.encode()
        tokens = _TOKENS.encode()
        ranges = [(PREFIX.encode(), _SLUGS.encode()), (_prefix_end(_SLUGS), _prefix_end(PREFIX))]
        watches: list[Any] = []
        queue: asyncio.Queue[Exception | None] = asyncio.Queue()
        ended = StoreError("the etcd watch ended")

        async def pump(watch: Any) -> None:
            try:
                async for event in watch:
                    # A drain's progress changes every few seconds and concerns no one else.
                    if not event.kv.key.startswith((events, progress, tokens)):
                        queue.put_nowait(None)
            except aetcd.exceptions.ClientError as exc:
                # A compacted revision lands here too: the caller re-reads everything.
                queue.put_nowait(StoreError(f"the etcd watch broke: {exc}"))
            except Exception as exc:
                queue.put_nowait(exc)
            else:
                queue.put_nowait(ended)

        pumps: list[asyncio.Task[None]] = []
        try:
            try:
                for start, end in ranges:
                    watches.append(await self._client.watch(start, range_end=end))
            except aetcd.exceptions.ClientError as exc:
                raise StoreError(f"cannot watch etcd: {exc}") from exc
            pumps = [asyncio.create_task(pump(watch)) for watch in watches]
            while True:
                item = await queue.get()
                if item is ended:
                    return
                if item is not None:
                    raise item
                yield None
        finally:
            for task in pumps:
                task.cancel()
            for watch in watches:
                try:
                    await watch.cancel()
                except Exception:
                    pass


# ------------------------------------------------------------ the informer's list and watch
#
# What reconcile reads (apps, formations, instances, nodes) listed at one revision,
# then changed by watch events from the next; informer.py keeps the cache.

_WORLD_KINDS = ("apps", "formation", "instances", "nodes", "releases", "surges")


@dataclass
class Listing:
    """What reconcile reads, all at one revision (the informer's cache: kept current
    in place by apply_change)."""

    revision: int
    apps: dict[str, AppRecord]
    formations: dict[str, dict[str, int]]
    instances: dict[tuple[str, InstanceName], InstanceRecord]
    nodes: dict[str, NodeRecord]
    releases: dict[tuple[str, int], ReleaseRecord] = field(default_factory=dict)
    surges: dict[tuple[str, InstanceName], SurgeRecord] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    """One watched key: `record` is None when it was deleted. `key` is the app's name
    (apps, formation), (app, instance name) (instances, surges), (app, version)
    (releases) or the node's name (nodes)."""

    kind: str  # one of _WORLD_KINDS
    key: Any
    record: Any


def _decode(key: str, value: bytes, mod: int, create: int, deleted: bool) -> Change | None:
    """The change one key of the layout makes to a Listing; None for keys it ignores."""
    kind, _, rest = key[len(PREFIX) :].partition("/")
    if kind not in _WORLD_KINDS or not rest:
        return None
    if kind in ("instances", "surges"):
        app, name = rest.split("/", 1)
        ident: Any = (app, InstanceName.parse(name))
        if deleted:
            return Change(kind, ident, None)
        if kind == "surges":
            return Change(kind, ident, _surge_from(app, ident[1], value, mod))
        return Change(kind, ident, _instance_from(app, ident[1], value, mod))
    if kind == "releases":
        app, version = rest.split("/", 1)
        ident = (app, int(version))
        if deleted:
            return Change(kind, ident, None)
        return Change(kind, ident, _release_from(json.loads(value), mod))
    if deleted:
        return Change(kind, rest, None)
    if kind == "apps":
        return Change(kind, rest, _app_from(value, mod, create))
    if kind == "formation":
        return Change(kind, rest, {str(k): int(v) for k, v in json.loads(value).items()})
    data = json.loads(value)
    return Change(
        kind,
        rest,
        NodeRecord(
            name=rest,
            address=str(data["address"]),
            capacity=int(data["capacity"]),
            labels=dict(data.get("labels", {})),
            draining=bool(data.get("draining", False)),
            mod_revision=mod,
            memory=int(data.get("memory", 0)),
            cpu=float(data.get("cpu", 0.0)),
        ),
    )


def apply_change(listing: Listing, change: Change) -> None:
    """Apply one watched change to `listing` (in place: its dicts are the cache)."""
    tables: dict[str, dict[Any, Any]] = {
        "apps": listing.apps,
        "formation": listing.formations,
        "instances": listing.instances,
        "nodes": listing.nodes,
        "releases": listing.releases,
        "surges": listing.surges,
    }
    table = tables[change.kind]
    if change.record is None:
        table.pop(change.key, None)
    else:
        table[change.key] = change.record


@dataclass(frozen=True)
class Commit:
    """How far `Store.commit` got: the revision of its last txn (0 if it wrote nothing)."""

    revision: int
    txns: int


async def list_world(store: Store) -> Listing:
    """List what reconcile reads, every prefix at the revision of the first read."""
    revision = 0
    listing = Listing(0, {}, {}, {}, {})
    for kind in _WORLD_KINDS:
        prefix = f"{PREFIX}{kind}/"
        request = aetcd.rpc.RangeRequest(
            key=prefix.encode(), range_end=_prefix_end(prefix), revision=revision
        )
        try:
            await store.client.connect()
            response = await store.client.kvstub.Range(
                request, timeout=store.timeout, metadata=store.client.metadata
            )
        except (aetcd.exceptions.ClientError, grpc.aio.AioRpcError) as exc:
            raise etcd_error(store.endpoints, exc) from exc
        revision = revision or int(response.header.revision)
        for kv in response.kvs:
            change = _decode(kv.key.decode(), kv.value, kv.mod_revision, kv.create_revision, False)
            if change is not None:
                apply_change(listing, change)
    listing.revision = revision
    return listing


async def watch_world(store: Store, after: int) -> AsyncIterator[tuple[int, list[Change]]]:
    """The changes to what reconcile reads after revision `after`, a whole etcd watch
    response at a time (a txn's changes never split), with the revision they bring the
    listing to. Ends with StoreError when the watch breaks or `after` was compacted:
    the caller lists again."""
    try:
        await store.client.connect()
        stub = aetcd.rpc.WatchStub(store.client.channel)
        requests: asyncio.Queue[Any] = asyncio.Queue()
        await requests.put(
            aetcd.rpc.WatchRequest(
                create_request=aetcd.rpc.WatchCreateRequest(
                    key=PREFIX.encode(),
                    range_end=_prefix_end(PREFIX),
                    start_revision=after + 1,
                    progress_notify=True,
                )
            )
        )

        async def send() -> AsyncIterator[Any]:
            while True:
                yield await requests.get()

        stream = stub.Watch(send(), metadata=store.client.metadata)
        async for response in stream:
            if response.compact_revision:
                raise StoreError(f"the etcd watch from revision {after + 1} was compacted")
            if response.canceled:
                raise StoreError(f"etcd cancelled the watch: {response.cancel_reason}")
            if response.created:
                # Its header is the store's revision now, not how far the events got:
                # the events from `after` on are still to come.
                continue
            changes = []
            for event in response.events:
                kv = event.kv
                change = _decode(
                    kv.key.decode(),
                    kv.value,
                    kv.mod_revision,
                    kv.create_revision,
                    event.type == aetcd.rpc.Event.DELETE,
                )
                if change is not None:
                    changes.append(change)
            # Every event of a revision comes in one response, in revision order; a
            # response without any (progress) says the header's revision is complete.
            revisions = [event.kv.mod_revision for event in response.events]
            yield int(max(revisions, default=response.header.revision)), changes
    except (aetcd.exceptions.ClientError, grpc.aio.AioRpcError) as exc:
        raise StoreError(f"the etcd watch broke: {exc}") from exc
    raise StoreError("the etcd watch ended")


async def commit(store: Store, changes: Sequence[Assign | Unassign], read_revision: int) -> Commit:
    """Commit assignment changes planned on a listing at `read_revision`, in txns of at
    most etcd's 128 operations and compares each, every one guarded by leadership, by
    its apps being the ones read (Assign.app_created) and by each of its keys being
    unchanged since `read_revision`. ConflictError if a guard other than leadership
    fails (that txn and the later ones are not written; the earlier ones are)."""
    done = Commit(0, 0)
    chunk: list[Assign | Unassign] = []
    apps: set[str] = set()
    for change in changes:
        # 1 compare for leadership, 1 per app, 1 per key; 1 operation per key.
        if len(chunk) + 1 > _TXN_LIMIT or 2 + len(apps | {change.app}) + len(chunk) > _TXN_LIMIT:
            done = await _commit_chunk(store, chunk, read_revision, done)
            chunk, apps = [], set()
        chunk.append(change)
        apps.add(change.app)
    if chunk:
        done = await _commit_chunk(store, chunk, read_revision, done)
    return done


_TXN_LIMIT = 128  # etcd's default --max-txn-ops, for compares and operations each


async def _commit_chunk(
    store: Store, chunk: list[Assign | Unassign], read_revision: int, done: Commit
) -> Commit:
    ops: list[Any] = []
    compare: list[Any] = []
    apps: dict[str, int] = {}
    for change in chunk:
        key = _instance_key(change.app, change.name).encode()
        compare.append(tx.Mod(key) < read_revision + 1)
        if isinstance(change, Assign):
            # No "incarnation": a (re)assignment is a new one, its mod revision.
            ops.append(tx.Put(key, _dumps({"node": change.node, "release": change.release})))
            apps[change.app] = change.app_created
        else:
            ops.append(tx.Delete(key))
    compare += [
        tx.Create(_app_key(app)) == created if created else tx.Version(_app_key(app)) > 0
        for app, created in sorted(apps.items())
    ]
    revision = await store.txn_revision(compare, ops)
    return Commit(revision, done.txns + 1)


# ------------------------------------------------------------ one-off runs


def _runs_prefix(app: str) -> str:
    return f"{PREFIX}runs/{app}/"


def _run_key(app: str, name: str) -> str:
    return f"{_runs_prefix(app)}{name}"


def _run_counter_prefix(app: str) -> str:
    return f"{PREFIX}run-counter/{app}/"


def _run_counter_key(app: str) -> str:
    return f"{_run_counter_prefix(app)}next"


@dataclass(frozen=True)
class RunRecord:
    """A one-off process: where it runs, what, and how far it got.

    `state`: "pending" (commanded, not yet reported started), "running", or
    "exited" (kept only for a release phase, until its result is read)."""

    app: str
    name: str  # run.4, release.7
    node: str
    release: int
    command: str
    type: str = "run"
    env: dict[str, str] = field(default_factory=dict)
    attached: bool = False
    state: str = "pending"
    exit: dict[str, Any] | None = None  # {"code", "signal", "text", "last_lines"}
    created_at: float = 0.0
    mod_revision: int = 0


def _run_to(run: RunRecord) -> dict[str, Any]:
    return {
        "node": run.node,
        "release": run.release,
        "command": run.command,
        "type": run.type,
        "env": run.env,
        "attached": run.attached,
        "state": run.state,
        "exit": run.exit,
        "created_at": run.created_at,
    }


def _run_from(key: str, value: bytes, mod: int) -> RunRecord:
    app, name = key[len(PREFIX + "runs/") :].split("/", 1)
    data = json.loads(value)
    return RunRecord(
        app=app,
        name=name,
        node=str(data["node"]),
        release=int(data["release"]),
        command=str(data["command"]),
        type=str(data.get("type", "run")),
        env={str(k): str(v) for k, v in dict(data.get("env", {})).items()},
        attached=bool(data.get("attached", False)),
        state=str(data.get("state", "pending")),
        exit=data.get("exit"),
        created_at=float(data.get("created_at", 0.0)),
        mod_revision=mod,
    )


def _credential_from(value: bytes) -> CredentialRecord:
    data = json.loads(value)
    return CredentialRecord(
        name=str(data["name"]),
        serial=str(data["serial"]),
        expires_at=float(data["expires_at"]),
        created_at=float(data["created_at"]),
        revoked=bool(data.get("revoked", False)),
    )


def _app_to(app: AppRecord) -> dict[str, Any]:
    return {
        "name": app.name,
        "id": app.id,
        "created_at": app.created_at,
        "release": app.release,
        "latest": max(app.latest, app.release),
    }


def _app_from(value: bytes, mod_revision: int, create_revision: int) -> AppRecord:
    data = json.loads(value)
    name, created_at = str(data["name"]), float(data["created_at"])
    # An app written before ids existed gets one from what made it unique then.
    legacy_id = hashlib.sha256(f"{name}\0{created_at!r}".encode()).hexdigest()[:32]
    return AppRecord(
        name=name,
        created_at=created_at,
        release=int(data.get("release", 0)),
        id=str(data.get("id") or legacy_id),
        mod_revision=mod_revision,
        create_revision=create_revision,
        latest=int(data.get("latest", data.get("release", 0))),
    )


def _token_to(token: TokenRecord) -> dict[str, Any]:
    return {
        "secret_hash": token.secret_hash,
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "uses": token.uses,
        "uses_left": token.uses_left,
        "revoked": token.revoked,
    }


def _token_from(token_id: str, value: bytes) -> TokenRecord:
    data = json.loads(value)
    return TokenRecord(
        id=token_id,
        secret_hash=str(data["secret_hash"]),
        created_at=float(data["created_at"]),
        expires_at=float(data["expires_at"]),
        uses=int(data["uses"]),
        uses_left=int(data["uses_left"]),
        revoked=bool(data.get("revoked", False)),
    )


def _slug_from(data: dict[str, Any]) -> SlugRecord:
    return SlugRecord(
        digest=str(data["digest"]),
        size=int(data["size"]),
        chunks=int(data["chunks"]),
        created_at=float(data["created_at"]),
    )


def _node_from(name: str, value: bytes, revision: int) -> NodeRecord:
    data = json.loads(value)
    return NodeRecord(
        name=name,
        address=str(data["address"]),
        capacity=int(data["capacity"]),
        labels=dict(data.get("labels", {})),
        draining=bool(data.get("draining", False)),
        mod_revision=revision,
        memory=int(data.get("memory", 0)),
        cpu=float(data.get("cpu", 0.0)),
    )


def _release_to(release: ReleaseRecord) -> dict[str, Any]:
    return {
        "app": release.app,
        "version": release.version,
        "dir": release.dir,
        "commands": release.commands,
        "env": release.env,
        "created_at": release.created_at,
        "description": release.description,
        "settings": release.settings,
        "by": release.by,
        "status": release.status,
        "status_reason": release.status_reason,
        "previous": release.previous,
        "progress_at": release.progress_at,
        "phase_done": release.phase_done,
        **(
            {"slug": {"digest": release.slug.digest, "size": release.slug.size}}
            if release.slug
            else {}
        ),
    }


def _release_from(data: dict[str, Any], mod_revision: int = 0) -> ReleaseRecord:
    slug = data.get("slug")
    return ReleaseRecord(
        app=str(data["app"]),
        version=int(data["version"]),
        dir=str(data["dir"]),
        commands={str(k): str(v) for k, v in data["commands"].items()},
        env={str(k): str(v) for k, v in data.get("env", {}).items()},
        created_at=float(data["created_at"]),
        description=str(data.get("description", "")),
        settings={str(k): dict(v) for k, v in data.get("settings", {}).items()},
        slug=SlugRef(str(slug["digest"]), int(slug["size"])) if slug else None,
        by=str(data.get("by", "")),
        status=str(data.get("status", "succeeded")),
        status_reason=str(data.get("status_reason", "")),
        previous=int(data.get("previous", 0)),
        progress_at=float(data.get("progress_at", 0.0)),
        phase_done=bool(data.get("phase_done", False)),
        mod_revision=mod_revision,
    )


def _instance_from(app: str, name: InstanceName, value: bytes, mod: int) -> InstanceRecord:
    data = json.loads(value)
    return InstanceRecord(
        app=app,
        name=name,
        node=str(data["node"]),
        release=int(data["release"]),
        incarnation=int(data.get("incarnation") or mod),
        mod_revision=mod,
    )


# ------------------------------------------------------------ rollouts
#
# A rollout's state is all here, so a new leader resumes it: the release record's
# status, progress_at and phase_done, and one surges/APP/NAME key per new copy in
# flight. rollout.py decides; these write what it decided, each batch in one txn
# guarded by leadership and by every key it touches being as read.

_SURGES = f"{PREFIX}surges/"


def _surge_key(app: str, name: InstanceName) -> str:
    return f"{_SURGES}{app}/{name}"


@dataclass(frozen=True)
class SurgeRecord:
    """The new copy of instance `name` that a rollout runs beside the old one."""

    app: str
    name: InstanceName
    node: str
    release: int
    incarnation: int  # its key's mod revision; a promotion keeps it


def _surge_from(app: str, name: InstanceName, value: bytes, mod: int) -> SurgeRecord:
    data = json.loads(value)
    return SurgeRecord(app, name, str(data["node"]), int(data["release"]), mod)


@dataclass(frozen=True)
class StartSurge:
    """Write: a new copy of `name` of `release` on `node` (none of the name in flight)."""

    app: str
    name: InstanceName
    node: str
    release: int


@dataclass(frozen=True)
class Promote:
    """Write: the surge copy becomes the instance (its node, release and incarnation),
    if neither it nor the instance changed since read: the agents stop the old copy."""

    surge: SurgeRecord
    instance_revision: int  # the instance key's mod revision as read (0: it has none)


@dataclass(frozen=True)
class DropSurge:
    """Write: remove a surge copy (a failed or superseded rollout, a lost node)."""

    surge: SurgeRecord


@dataclass(frozen=True)
class PutRelease:
    """Write: the release record as given (a new status, progress), if its key is as
    read (`release.mod_revision`)."""

    release: ReleaseRecord


@dataclass(frozen=True)
class PutAppRelease:
    """Write: put the app's release in force back to `version` (a failed rollout), if
    the app is unchanged since read."""

    app: AppRecord
    version: int


RolloutWrite = StartSurge | Promote | DropSurge | PutRelease | PutAppRelease


async def write_rollout(store: Store, app: AppRecord, writes: Sequence[RolloutWrite]) -> int:
    """Write one app's rollout steps in one txn, guarded by leadership, by the app being
    the one read (its create revision) and by each key being as read; the revision it
    committed at. ConflictError if something changed meanwhile (nothing is written)."""
    compare: list[Any] = [tx.Create(_app_key(app.name)) == app.create_revision]
    ops: list[Any] = []
    for write in writes:
        if isinstance(write, StartSurge):
            key = _surge_key(write.app, write.name)
            compare.append(tx.Version(key) == 0)
            value = {"node": write.node, "release": write.release}
            ops.append(tx.Put(key.encode(), _dumps(value)))
        elif isinstance(write, Promote):
            surge = write.surge
            surge_key = _surge_key(surge.app, surge.name)
            instance_key = _instance_key(surge.app, surge.name)
            compare.append(tx.Mod(surge_key) == surge.incarnation)
            compare.append(tx.Mod(instance_key) == write.instance_revision)
            value = {"node": surge.node, "release": surge.release, "incarnation": surge.incarnation}
            ops.append(tx.Put(instance_key.encode(), _dumps(value)))
            ops.append(tx.Delete(surge_key.encode()))
        elif isinstance(write, DropSurge):
            key = _surge_key(write.surge.app, write.surge.name)
            compare.append(tx.Mod(key) == write.surge.incarnation)
            ops.append(tx.Delete(key.encode()))
        elif isinstance(write, PutRelease):
            release = write.release
            key = _release_key(release.app, release.version)
            compare.append(tx.Mod(key) == release.mod_revision)
            ops.append(tx.Put(key.encode(), _dumps(_release_to(release))))
        else:
            value = _app_to(dataclasses.replace(write.app, release=write.version))
            compare.append(tx.Mod(_app_key(write.app.name)) == write.app.mod_revision)
            ops.append(tx.Put(_app_key(write.app.name).encode(), _dumps(value)))
    if len(compare) + 1 > _TXN_LIMIT or len(ops) > _TXN_LIMIT:
        raise StoreError(f"{app.name}: {len(ops)} rollout writes do not fit one txn")
    return await store.txn_revision(compare, ops)
