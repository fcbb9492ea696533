"""The CLI's connection to the scheduler: one client over all its replicas.

Owns which replica answers a call. It tries the addresses in turn, follows a
follower's redirect to the leader once (FAILED_PRECONDITION with the leader's
address in the `paas-leader` trailing metadata), waits briefly while no leader
is elected, and turns gRPC failures into the two errors commands print:
`SchedulerUnreachable` (nobody answered) and `SchedulerError` (a replica
answered and refused). It never prints and never decides what a command means.

    async with SchedulerClient(["127.0.0.1:7070"]) as client:
        nodes = await client.list_nodes()
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from operator import attrgetter
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import grpc
import grpc.aio

from paas.cli.errors import CLIError
from paas.cli.slugpack import read_chunks
from paas.common.formation import Change, Op
from paas.common.grpcutil import CHANNEL_OPTIONS, LEADER_METADATA_KEY
from paas.common.logruns import last_seq, lines_of_runs, past, runs_of
from paas.common.pki import Credentials
from paas.common.slugs import CHUNK_SIZE
from paas.common.tls import dial
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from paas.proto.paas_pb2_grpc import SchedulerAsyncStub

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")

# `paas logs -f` reconnects after 0.2 s, then waits twice as long each time, up to 2 s.
RECONNECT_FIRST = 0.2
RECONNECT_MAX = 2.0
# What a resumed history may hold: every line written during the outage, within
# what the agents still keep.
RESUME_LINES = 100_000
# The slowest upload (bytes a second) that is still making progress, not hanging.
UPLOAD_RATE_FLOOR = 1024 * 1024
# What grpc says when a client-streaming write meets a call the server has ended.
_CORE_ERROR = "Internal error from Core"
# Chunks read from the slug file per trip to a worker thread.
UPLOAD_READ_AHEAD = 8

# Refusals a reconnecting follower gives up on: asking again cannot change them.
_FINAL_CODES = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)

_OPS = {
    Op.SET: pb.FormationChange.SET,
    Op.ADD: pb.FormationChange.ADD,
    Op.SUB: pb.FormationChange.SUB,
}


class SchedulerError(CLIError):
    """A scheduler replica answered and refused; the message is its status details."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class SchedulerUnreachable(SchedulerError):
    """No scheduler replica could be reached at all."""

    def __init__(self, addresses: list[str], why: str = "") -> None:
        """`why`: what the last failed connection said, when it was not a plain refusal."""
        where = ",".join(addresses)
        text = f"cannot reach the scheduler at {where}: is it running? (`paas up`)"
        if why:
            text = f"cannot connect to the scheduler at {where}: {why}"
        super().__init__(text, grpc.StatusCode.UNAVAILABLE)
        self.addresses = addresses


# How long a replica gets to take a connection before the next one is tried (a paused
# replica takes the TCP connection but never answers it).
DIAL_TIMEOUT = 1.5


class _Unreachable(Exception):
    """This one address did not answer; try the next."""


class _Busy(Exception):
    """This replica answered but cannot serve yet (no leader); worth retrying."""

    def __init__(self, error: SchedulerError) -> None:
        super().__init__(str(error))
        self.error = error


_TIMESTAMP = attrgetter("timestamp")
LogKey = tuple[str, str]  # (node, instance)


def take_new(
    batch: Sequence[pb.LogRun], cursors: dict[LogKey, int], skip: Mapping[LogKey, int]
) -> list[pb.LogRun]:
    """The lines of `batch` past `skip` (the cursors sent with the request: the scheduler
    skips those, and none is yielded twice), as runs (one cut to its part past `skip`),
    each (node, instance)'s highest seq noted in `cursors`; notices (seq 0) always."""
    fresh: list[pb.LogRun] = []
    for run in batch:
        key = (run.node, run.instance)
        taken = past(run, skip.get(key, 0))
        if taken is not None:
            fresh.append(taken)
            last = last_seq(taken)
            if last > cursors.get(key, 0):
                cursors[key] = last
    return fresh


class SchedulerClient:
    """Calls the scheduler API on whichever replica can serve it."""

    def __init__(
        self,
        addresses: list[str],
        timeout: float = 30.0,
        retry_for: float = 10.0,
        options: list[tuple[str, int]] | None = None,
        tls: Credentials | None = None,
    ) -> None:
        """`timeout` bounds each unary call; `retry_for` how long to wait for a leader;
        `options` are extra grpc channel options; `tls` the credentials to present
        (None: plaintext, to an `--insecure` scheduler)."""
        if not addresses:
            raise ValueError("no scheduler address given")
        self.addresses = list(addresses)
        self.timeout = timeout
        self.retry_for = retry_for
        self._options = CHANNEL_OPTIONS + list(options or [])
        self.tls = tls
        self._failure = ""  # why the last connection failed, if TLS refused it
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def __aenter__(self) -> SchedulerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(None)

    # ------------------------------------------------------------ the API

    async def create_app(self, name: str) -> pb.App:
        request = pb.CreateAppRequest(name=name)
        return await self._unary(lambda stub: stub.CreateApp, request)

    async def list_apps(self) -> list[pb.App]:
        response = await self._unary(lambda stub: stub.ListApps, pb.ListAppsRequest())
        return list(response.apps)

    async def destroy_app(self, name: str, confirm: str) -> int:
        """Destroy the app `name` (`confirm` must repeat it); how many instances stopped."""
        request = pb.DestroyAppRequest(name=name, confirm=confirm)
        response = await self._unary(lambda stub: stub.DestroyApp, request)
        return response.instances

    async def deploy(
        self,
        app: str,
        directory: str,
        procfile: str,
        env: dict[str, str],
        settings: Mapping[str, pb.ProcessSettings] | None = None,
        slug: pb.Slug | None = None,
    ) -> pb.Release:
        """A release running in `slug` (uploaded first), or in `directory` on every
        host (--in-place: pass directory and no slug)."""
        request = pb.DeployRequest(
            app=app, dir=directory, procfile=procfile, env=env, settings=settings or {}, slug=slug
        )
        return await self._unary(lambda stub: stub.Deploy, request)

    async def list_releases(self, app: str, limit: int = 0) -> list[pb.Release]:
        """The app's releases, newest first; `limit` 0: every one kept."""
        request = pb.ListReleasesRequest(app=app, limit=limit)
        response = await self._unary(lambda stub: stub.ListReleases, request)
        return list(response.releases)

    async def get_release(self, app: str, version: int = 0) -> pb.Release:
        """Release `version` of `app`; 0: the current one (version 0 if it has none)."""
        request = pb.GetReleaseRequest(app=app, version=version)
        return await self._unary(lambda stub: stub.GetRelease, request)

    async def set_config(
        self, app: str, set_: Mapping[str, str], unset: Sequence[str] = ()
    ) -> pb.Release:
        """One new release with these config vars set and those unset."""
        request = pb.SetConfigRequest(app=app, set=dict(set_), unset=list(unset))
        return await self._unary(lambda stub: stub.SetConfig, request)

    async def rollback(self, app: str, version: int = 0) -> pb.Release:
        """A new release with release `version`'s code and config; 0: the one before."""
        request = pb.RollbackRequest(app=app, version=version)
        return await self._unary(lambda stub: stub.Rollback, request)

    async def stat_slug(self, digest: str) -> pb.StatSlugResponse:
        """Whether the scheduler holds the slug `digest`, and its size limit."""
        return await self._unary(lambda stub: stub.StatSlug, pb.StatSlugRequest(digest=digest))

    async def upload_slug(
        self,
        app: str,
        slug: pb.Slug,
        path: Path,
        on_sent: Callable[[int], None] | None = None,
    ) -> pb.UploadSlugResponse:
        """Stream the slug file at `path` to the leader in CHUNK_SIZE messages, the
        first naming app and slug. A redirect or a replica that cannot serve yet
        starts the upload again from the file's start (the scheduler keeps nothing
        of a broken one). `on_sent(bytes)` hears the bytes sent so far in the
        current attempt (it may go back to 0)."""
        # The unary timeout plus the slug's time at the slowest rate that is still
        # progress: a big slug on a slow link is not a dead scheduler.
        timeout = self.timeout + slug.size / UPLOAD_RATE_FLOOR

        async def messages() -> AsyncGenerator[pb.SlugUpload, None]:
            sent = 0
            if on_sent is not None:
                on_sent(0)
            with contextlib.closing(read_chunks(path, CHUNK_SIZE)) as chunks:
                # Reading the file is blocking I/O: off the event loop, a few chunks
                # per hop so that the hops cost little next to the bytes.
                while batch := await asyncio.to_thread(_take, chunks, UPLOAD_READ_AHEAD):
                    for chunk in batch:
                        if sent:
                            yield pb.SlugUpload(data=chunk)
                        else:
                            yield pb.SlugUpload(app=app, slug=slug, data=chunk)
                        sent += len(chunk)
                        if on_sent is not None:
                            on_sent(sent)

        async def attempt(address: str) -> pb.UploadSlugResponse:
            # Written message by message: when the scheduler ends the call early (a
            # follower's redirect, no leader yet, a refusal) the write in flight fails,
            # often with "Internal error from Core"; the call's own status, awaited
            # after it, says what the scheduler said.
            stub: Any = self._stub(address)  # the stubs know no call without an iterator
            call: grpc.aio.StreamUnaryCall[pb.SlugUpload, pb.UploadSlugResponse]
            call = stub.UploadSlug(timeout=timeout)
            source = messages()
            try:
                async for message in source:
                    await call.write(message)
                await call.done_writing()
            except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
                pass  # the call is over: its status says why
            except BaseException:
                call.cancel()
                raise
            finally:
                await source.aclose()
            try:
                return await call
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INTERNAL and exc.details() == _CORE_ERROR:
                    # The status was lost with the write; the upload starts again.
                    raise _Busy(
                        SchedulerError(
                            f"the upload to the scheduler at {address} broke off",
                            grpc.StatusCode.UNAVAILABLE,
                        )
                    ) from None
                raise

        return await self._with_replicas(attempt)

    async def scale(self, app: str, changes: list[Change]) -> dict[str, int]:
        response = await self._unary(lambda stub: stub.Scale, _scale_request(app, changes))
        return dict(response.formation)

    async def plan_scale(self, app: str, changes: list[Change]) -> pb.ScaleResponse:
        """What the scale would do (placed, moved, stopped, not placed), changing nothing."""
        request = _scale_request(app, changes)
        request.plan = True
        return await self._unary(lambda stub: stub.Scale, request)

    async def list_instances(self, app: str) -> list[pb.InstanceView]:
        return list((await self.instances_and_unplaced(app)).instances)

    async def instances_and_unplaced(self, app: str) -> pb.ListInstancesResponse:
        """The instances, and what the formation asks for that no node takes."""
        request = pb.ListInstancesRequest(app=app)
        return await self._unary(lambda stub: stub.ListInstances, request)

    async def why(self, app: str, instance: str) -> pb.WhyResponse:
        request = pb.WhyRequest(app=app, instance=instance)
        return await self._unary(lambda stub: stub.Why, request)

    async def list_nodes(self) -> list[pb.Node]:
        response = await self._unary(lambda stub: stub.ListNodes, pb.ListNodesRequest())
        return list(response.nodes)

    async def restart(self, app: str, process: str = "") -> list[str]:
        """Restart every instance (""), a type ("web", rolling) or one ("web.3");
        the names of those that restart."""
        request = pb.RestartRequest(app=app, process=process)
        response = await self._unary(lambda stub: stub.Restart, request)
        return list(response.instances)

    async def stop(self, app: str, instance: str) -> None:
        request = pb.StopRequest(app=app, instance=instance)
        await self._unary(lambda stub: stub.Stop, request)

    async def drain(self, node: str, drain: bool) -> pb.Node:
        """Drain a node (drain=True) or take it back into use."""
        request = pb.DrainRequest(node=node, drain=drain)
        return await self._unary(lambda stub: stub.Drain, request)

    async def create_token(self, ttl: float, uses: int) -> pb.CreateTokenResponse:
        """A new join token (its text is in the answer only)."""
        request = pb.CreateTokenRequest(ttl=ttl, uses=uses)
        return await self._unary(lambda stub: stub.CreateToken, request)

    async def list_tokens(self) -> list[pb.JoinToken]:
        response = await self._unary(lambda stub: stub.ListTokens, pb.ListTokensRequest())
        return list(response.tokens)

    async def revoke_token(self, token_id: str) -> pb.JoinToken:
        request = pb.RevokeTokenRequest(id=token_id)
        return await self._unary(lambda stub: stub.RevokeToken, request)

    async def remove_node(self, node: str) -> pb.RemoveNodeResponse:
        """Forget a lost node; its instances are placed elsewhere."""
        return await self._unary(lambda stub: stub.RemoveNode, pb.RemoveNodeRequest(node=node))

    async def list_drains(self, app: str) -> list[pb.LogDrain]:
        request = pb.ListDrainsRequest(app=app)
        response = await self._unary(lambda stub: stub.ListDrains, request)
        return list(response.drains)

    async def add_drain(self, app: str, url: str) -> pb.LogDrain:
        request = pb.AddDrainRequest(app=app, url=url)
        return await self._unary(lambda stub: stub.AddDrain, request)

    async def remove_drain(self, app: str, url: str) -> pb.LogDrain:
        request = pb.RemoveDrainRequest(app=app, url=url)
        return await self._unary(lambda stub: stub.RemoveDrain, request)

    async def create_credentials(
        self, name: str, csr: bytes, ttl_seconds: int = 0
    ) -> pb.CreateCredentialsResponse:
        request = pb.CreateCredentialsRequest(name=name, csr=csr, ttl_seconds=ttl_seconds)
        return await self._unary(lambda stub: stub.CreateCredentials, request)

    async def list_credentials(self) -> list[pb.Credential]:
        request = pb.ListCredentialsRequest()
        response = await self._unary(lambda stub: stub.ListCredentials, request)
        return list(response.credentials)

    async def revoke_credentials(self, name: str) -> pb.Credential:
        request = pb.RevokeCredentialsRequest(name=name)
        return await self._unary(lambda stub: stub.RevokeCredentials, request)

    async def logs(
        self,
        app: str,
        lines: int = 0,
        process: str = "",
        follow: bool = False,
        since: float = 0.0,
        previous: bool = False,
    ) -> AsyncIterator[pb.LogLine]:
        """The app's log lines, oldest first; with `follow`, live ones until cancelled.

        A broken stream raises SchedulerError; `follow_logs` resumes instead.
        """
        request = pb.LogsRequest(
            app=app, lines=lines, process=process, follow=follow, since=since, previous=previous
        )
        async for batch in self._log_stream(request):
            for line in lines_of_runs(batch):
                yield line

    async def log_batches(
        self,
        app: str,
        lines: int = 0,
        process: str = "",
        since: float = 0.0,
        previous: bool = False,
    ) -> AsyncIterator[Sequence[pb.LogRun]]:
        """`logs` without following, in the batches they arrive in (as runs)."""
        request = pb.LogsRequest(
            app=app, lines=lines, process=process, since=since, previous=previous
        )
        async for batch in self._log_stream(request):
            yield batch

    async def follow_logs(
        self,
        app: str,
        lines: int = 0,
        process: str = "",
        since: float = 0.0,
        on_break: Callable[[str], None] | None = None,
        on_resume: Callable[[], None] | None = None,
    ) -> AsyncGenerator[pb.LogLine, None]:
        """`follow_log_batches`, a line at a time."""
        async for batch in self.follow_log_batches(
            app, lines, process, since, on_break=on_break, on_resume=on_resume
        ):
            for line in lines_of_runs(batch):
                yield line

    async def follow_log_batches(
        self,
        app: str,
        lines: int = 0,
        process: str = "",
        since: float = 0.0,
        on_break: Callable[[str], None] | None = None,
        on_resume: Callable[[], None] | None = None,
    ) -> AsyncGenerator[list[pb.LogRun], None]:
        """Recent lines, then live ones until cancelled, across broken streams, in
        the batches they arrive in, as runs (a printer flushes once per batch).

        When the stream breaks (a scheduler restart, a new leader, a network
        blip) it reconnects to any replica, forever, waiting 0.2 s doubling to
        2 s between tries, and resumes after the last line it had of each (node,
        instance): nothing twice. `on_break` hears why it broke (once per
        outage), `on_resume` that lines flow again. A refusal that retrying
        cannot change (an unknown app) still raises SchedulerError.
        """
        cursors: dict[tuple[str, str], int] = {}
        skip: dict[tuple[str, str], int] = {}  # the cursors sent with the current request
        oldest = 0.0  # of the lines yielded: a resumed history starts no earlier
        request = pb.LogsRequest(app=app, lines=lines, process=process, follow=True, since=since)
        delay = RECONNECT_FIRST
        established = broken = False
        while True:
            try:
                async for batch in self._log_stream(request):
                    established = True
                    if broken:
                        broken, delay = False, RECONNECT_FIRST
                        if on_resume is not None:
                            on_resume()
                    fresh = take_new(batch, cursors, skip)
                    if fresh:
                        first = min(map(_TIMESTAMP, fresh))
                        if not oldest or first < oldest:
                            oldest = first
                        yield fresh
                problem = "the scheduler ended the log stream"
            except SchedulerError as exc:
                # Before any line came, the first answer stands, as for any command.
                if not established or exc.code in _FINAL_CODES:
                    raise
                problem = str(exc)
            if not broken and on_break is not None:
                on_break(problem)
            broken = True
            # Fresh channels: one to a restarted replica would otherwise wait out
            # grpc's own reconnect backoff (up to minutes).
            await self.close()
            await asyncio.sleep(delay)
            delay = min(RECONNECT_MAX, delay * 2)
            # History from where it had got to: a line at or before a cursor was
            # yielded; an instance without one had nothing newer than `oldest`
            # then, or it would have been in the history (the last N lines).
            skip = dict(cursors)
            request = pb.LogsRequest(
                app=app,
                lines=RESUME_LINES,
                process=process,
                follow=True,
                since=max(since, oldest),
                after=[
                    pb.LogCursor(node=node, instance=instance, seq=seq)
                    for (node, instance), seq in sorted(cursors.items())
                ],
            )

    async def open_run(self, start: pb.RunStart) -> tuple[Any, pb.RunOutput]:
        """Start a one-off on the leader: the Run call (to write stdin and signals to and
        read output from) and its first answer, the run's name and node."""

        async def attempt(address: str) -> tuple[Any, pb.RunOutput]:
            stub: Any = self._stub(address)  # the stubs know no call without an iterator
            call = stub.Run()
            try:
                # A call the scheduler has ended already fails the write; its read has
                # the status (a redirect, a refusal).
                with contextlib.suppress(asyncio.InvalidStateError, grpc.aio.AioRpcError):
                    await call.write(pb.RunInput(start=start))
                first = await call.read()
            except BaseException:
                call.cancel()
                raise
            if first is grpc.aio.EOF:  # type: ignore[attr-defined]
                raise SchedulerError("the scheduler ended the run before it started")
            return call, first

        return await self._with_replicas(attempt)

    async def _log_stream(self, request: pb.LogsRequest) -> AsyncIterator[list[pb.LogRun]]:
        """The Logs stream's batches, as runs (never an empty one)."""
        timeout = None if request.follow else self.timeout
        request.packed = True

        async def open_stream(
            address: str,
        ) -> tuple[grpc.aio.UnaryStreamCall[pb.LogsRequest, pb.LogBatch], pb.LogBatch | None]:
            call = self._stub(address).Logs(request, timeout=timeout)
            stream = call.__aiter__()
            try:
                # Reading the first batch is what surfaces a redirect or a refusal.
                first: pb.LogBatch | None = await anext(stream)
            except StopAsyncIteration:
                first = None
            except BaseException:
                call.cancel()
                raise
            return call, first

        call, first = await self._with_replicas(open_stream)
        try:
            if first is None:
                return
            if first.runs or first.lines:
                yield runs_of(first)
            stream = call.__aiter__()
            while True:
                try:
                    batch = await anext(stream)
                except StopAsyncIteration:
                    return
                except grpc.aio.AioRpcError as exc:
                    raise SchedulerError(
                        f"the log stream broke: {exc.details() or exc.code().name}", exc.code()
                    ) from None
                if batch.runs or batch.lines:
                    yield runs_of(batch)
        finally:
            call.cancel()

    # ------------------------------------------------------------ replicas

    def _stub(self, address: str) -> SchedulerAsyncStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = dial(address, self.tls, self._options)
            self._channels[address] = channel
        return pb_grpc.SchedulerStub(channel)

    async def _unary(
        self,
        method: Callable[[SchedulerAsyncStub], grpc.aio.UnaryUnaryMultiCallable[Req, Resp]],
        request: Req,
    ) -> Resp:
        async def attempt(address: str) -> Resp:
            return await method(self._stub(address))(request, timeout=self.timeout)

        return await self._with_replicas(attempt)

    async def _with_replicas(self, attempt: Callable[[str], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_for
        while True:
            busy: _Busy | None = None
            # A replica that takes the connection but never answers (a paused process)
            # gets DIAL_TIMEOUT on the first round, so the next one is asked at once; only
            # when none answered that fast are they given the whole call timeout.
            for patience in (DIAL_TIMEOUT, self.timeout):
                for address in self.addresses:
                    try:
                        return await self._attempt_with_redirect(address, attempt, patience)
                    except _Unreachable:
                        continue
                    except _Busy as exc:
                        busy = exc
                if busy is not None:
                    break
            if busy is None:
                raise SchedulerUnreachable(self.addresses, self._failure)
            if loop.time() >= deadline:
                raise busy.error
            await asyncio.sleep(0.5)

    async def _dial(self, address: str, patience: float) -> None:
        """Until the channel to `address` is connected: _Unreachable at once when the
        connection fails (refused, no route), and after `patience` s while it hangs."""
        self._stub(address)
        channel = self._channels[address]

        async def connected() -> None:
            state = channel.get_state(try_to_connect=True)
            while state != grpc.ChannelConnectivity.READY:
                if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                    self._failure = await handshake_failure(channel, self.tls is not None)
                    raise _Unreachable(address)
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)

        try:
            await asyncio.wait_for(connected(), patience)
        except TimeoutError:
            raise _Unreachable(address) from None

    async def _attempt_with_redirect(
        self, address: str, attempt: Callable[[str], Awaitable[T]], patience: float
    ) -> T:
        await self._dial(address, patience)
        try:
            return await attempt(address)
        except grpc.aio.AioRpcError as exc:
            leader = _leader_of(exc)
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION or not leader:
                raise self._classify(address, exc) from None
        if leader == address:
            raise _Busy(SchedulerError(f"the scheduler at {address} names itself as leader"))
        try:
            await self._dial(leader, patience)
            return await attempt(leader)
        except _Unreachable:
            raise _Busy(
                SchedulerError(
                    f"the scheduler leader at {leader} (named by {address}) cannot be reached",
                    grpc.StatusCode.UNAVAILABLE,
                )
            ) from None
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and _leader_of(exc):
                # Replicas disagree who leads: an election is in progress.
                raise _Busy(SchedulerError(exc.details() or "no settled leader")) from None
            error = self._classify(leader, exc)
            if isinstance(error, _Unreachable):
                # The follower is alive but its idea of the leader is stale.
                raise _Busy(
                    SchedulerError(
                        f"the scheduler leader at {leader} (named by {address}) cannot be reached",
                        grpc.StatusCode.UNAVAILABLE,
                    )
                ) from None
            raise error from None

    def _classify(self, address: str, exc: grpc.aio.AioRpcError) -> Exception:
        code = exc.code()
        details = exc.details() or code.name
        connected = self._connected(address)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            if not connected:
                return _Unreachable(address)
            if code == grpc.StatusCode.UNAVAILABLE:
                return _Busy(SchedulerError(details, code))
            return SchedulerError(
                f"the scheduler at {address} did not answer within {self.timeout:g} s", code
            )
        return SchedulerError(details, code)

    def _connected(self, address: str) -> bool:
        channel = self._channels.get(address)
        if channel is None:
            return False
        return channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY


def _take(chunks: Iterator[bytes], count: int) -> list[bytes]:
    return list(itertools.islice(chunks, count))


# What gRPC's "last error" says when the TLS handshake, not the network, failed.
_HANDSHAKE_SIGNS = ("Socket closed", "handshake", "Handshake", "SSL", "ssl", "certificate")


async def handshake_failure(channel: grpc.aio.Channel, tls: bool) -> str:
    """Why a channel in TRANSIENT_FAILURE failed, if it was the TLS handshake, in words
    that say what to check; "" for a plain refusal or an unreachable host."""
    probe = cast(Any, channel).unary_unary("/paas.Scheduler/ListNodes")
    try:
        await probe(b"", timeout=1.0)
    except grpc.aio.AioRpcError as exc:
        last = (exc.details() or "").rpartition("last error: ")[2]
    else:
        return ""
    if not any(sign in last for sign in _HANDSHAKE_SIGNS):
        return ""
    if tls:
        return (
            "the TLS handshake failed: are your credentials from this cluster's CA and not "
            "expired, and does the scheduler run with TLS (not --insecure)?"
        )
    return "it refused a plaintext connection: it runs with TLS, so drop --insecure/PAAS_INSECURE"


def _leader_of(exc: grpc.aio.AioRpcError) -> str:
    # grpc.aio gives a Metadata of (key, value) pairs; the stubs describe the sync API.
    metadata: Any = exc.trailing_metadata() or ()
    for key, value in metadata:
        if key == LEADER_METADATA_KEY:
            return value if isinstance(value, str) else value.decode()
    return ""


def _scale_request(app: str, changes: list[Change]) -> pb.ScaleRequest:
    return pb.ScaleRequest(
        app=app,
        changes=[
            pb.FormationChange(type=change.type, op=_OPS[change.op], count=change.count)
            for change in changes
        ],
    )
