"""The one guard of the Scheduler service: every RPC checks leadership first and turns
errors into statuses the same way; the RPCs are enumerated from the proto, so a new
one is covered (or fails here) without anyone remembering to add it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from paas.common.configvars import ConfigVarsError
from paas.common.drainurl import DrainURLError
from paas.common.errors import InvalidInput
from paas.common.formation import FormationError
from paas.common.grpcutil import LEADER_METADATA_KEY
from paas.common.names import NameError_
from paas.common.procfile import ProcfileError
from paas.proto import paas_pb2 as pb
from paas.scheduler import validate
from paas.scheduler.api import SCHEDULER, SchedulerService, guarded_handlers
from paas.scheduler.errors import (
    AlreadyExists,
    ConflictError,
    NotFound,
    NotLeaderError,
    NotLeading,
    SchedulerError,
    StoreError,
)
from paas.scheduler.events import EventLog
from paas.scheduler.guard import GUARDED, Guard, status_of
from paas.scheduler.reconcile import Reconciler
from paas.scheduler.sessions import Sessions
from paas.scheduler.store import Store


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, metadata: Any) -> None:
        super().__init__(f"{code}: {details}")
        self.code, self.details, self.metadata = code, details, tuple(metadata)


class FakeContext:
    """What the guard uses of a grpc.aio.ServicerContext: abort raises."""

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> None:
        raise Aborted(code, details, trailing_metadata)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


def context() -> Any:
    return FakeContext()


class Leader:
    def __init__(self, is_leader: bool, leader_address: str | None) -> None:
        self.is_leader = is_leader
        self.leader_address = leader_address


def service(leadership: Leader) -> SchedulerService:
    # A store on a port where nothing listens: any RPC that reached it would fail
    # with UNAVAILABLE, not with the statuses asserted here.
    store = Store(["127.0.0.1:1"], timeout=0.5)
    sessions = Sessions(grace=5, on_change=lambda: None)
    events = EventLog(node="test")
    return SchedulerService(
        store, leadership, sessions, Reconciler(store, sessions, events), events
    )


async def no_messages() -> AsyncIterator[pb.AgentMessage]:
    return
    yield pb.AgentMessage()


async def call(svc: SchedulerService, name: str) -> Aborted:
    """Call RPC `name` with an empty request; the Aborted it ends with."""
    method = SCHEDULER.methods_by_name[name]
    handler = getattr(svc, name)
    request: Any = (
        no_messages() if method.client_streaming else getattr(pb, method.input_type.name)()
    )
    with pytest.raises(Aborted) as raised:
        if method.server_streaming:
            async for _ in handler(request, context()):
                pass
        else:
            await handler(request, context())
    return raised.value


RPCS = [method.name for method in SCHEDULER.methods]


def test_the_service_has_rpcs_to_check() -> None:
    assert {"CreateApp", "DestroyApp", "Deploy", "Logs", "Session"} <= set(RPCS)


@pytest.mark.parametrize("name", RPCS)
async def test_every_rpc_on_a_follower_redirects_to_the_leader(name: str) -> None:
    svc = service(Leader(False, "127.0.0.9:7070"))
    assert getattr(getattr(svc, name), GUARDED, False), f"{name} is not guarded"
    aborted = await call(svc, name)
    assert aborted.code == grpc.StatusCode.FAILED_PRECONDITION
    assert (LEADER_METADATA_KEY, "127.0.0.9:7070") in aborted.metadata
    assert "127.0.0.9:7070" in aborted.details


@pytest.mark.parametrize("name", RPCS)
async def test_every_rpc_without_a_leader_is_unavailable(name: str) -> None:
    aborted = await call(service(Leader(False, None)), name)
    assert aborted.code == grpc.StatusCode.UNAVAILABLE
    assert "no scheduler leader" in aborted.details


@pytest.mark.parametrize("method", list(SCHEDULER.methods), ids=RPCS)
def test_every_request_type_has_a_shape_check(method: Any) -> None:
    assert validate.has_check(method.input_type.full_name), (
        f"{method.name} takes {method.input_type.name}, which validate.py does not check"
    )


def test_two_servicers_offering_one_rpc_or_none_offering_it_stop_the_start() -> None:
    class Apps:
        async def CreateApp(self, request: Any, context: Any) -> None: ...

    guard = Guard(Leader(True, None))
    with pytest.raises(RuntimeError, match="ListApps"):
        guarded_handlers([Apps()], guard)
    with pytest.raises(RuntimeError, match="CreateApp"):
        guarded_handlers([Apps(), Apps()], guard)


def subclasses(root: type) -> list[type]:
    found: list[type] = []
    sub: type
    for sub in root.__subclasses__():
        found += [sub, *subclasses(sub)]
    return found


def test_every_error_of_the_scheduler_and_of_bad_input_has_a_status() -> None:
    for cls in [*subclasses(SchedulerError), *subclasses(InvalidInput), InvalidInput]:
        exc = cls(None) if cls is NotLeading else cls("x")
        assert status_of(exc) is not None, f"{cls.__name__} has no gRPC status"
    assert status_of(RuntimeError("a bug")) is None, "a bug is not dressed up as a status"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NotLeading("10.0.0.1:7070"), grpc.StatusCode.FAILED_PRECONDITION),
        (NotLeading(None), grpc.StatusCode.UNAVAILABLE),
        (NotLeaderError("lost leadership while writing"), grpc.StatusCode.UNAVAILABLE),
        (StoreError("etcd is unreachable (127.0.0.1:1): down"), grpc.StatusCode.UNAVAILABLE),
        (ConflictError("the app changed concurrently"), grpc.StatusCode.ABORTED),
        (NotFound("unknown app 'x'"), grpc.StatusCode.NOT_FOUND),
        (AlreadyExists("app 'x' already exists"), grpc.StatusCode.ALREADY_EXISTS),
        (NameError_("invalid app name"), grpc.StatusCode.INVALID_ARGUMENT),
        (FormationError("web=-1"), grpc.StatusCode.INVALID_ARGUMENT),
        (ProcfileError("Procfile:1"), grpc.StatusCode.INVALID_ARGUMENT),
        (ConfigVarsError("BAD KEY"), grpc.StatusCode.INVALID_ARGUMENT),
        (DrainURLError("ftp://"), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_status_of(error: Exception, code: grpc.StatusCode) -> None:
    status = status_of(error)
    assert status is not None and status.code == code


async def test_an_error_inside_a_unary_handler_becomes_its_status() -> None:
    async def handler(request: Any, context: Any) -> None:
        raise StoreError("etcd is unreachable (127.0.0.1:1): connection refused")

    guarded = Guard(Leader(True, None)).unary(handler)
    with pytest.raises(Aborted) as raised:
        await guarded(pb.ListAppsRequest(), context())
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert "etcd is unreachable" in raised.value.details


async def test_an_error_after_a_streams_first_message_becomes_its_status() -> None:
    async def handler(request: Any, context: Any) -> AsyncIterator[pb.LogBatch]:
        yield pb.LogBatch()
        raise NotFound("unknown node 'x'")

    guarded = Guard(Leader(True, None)).stream(handler)
    got = []
    with pytest.raises(Aborted) as raised:
        async for batch in guarded(pb.ListAppsRequest(), context()):
            got.append(batch)
    assert len(got) == 1
    assert raised.value.code == grpc.StatusCode.NOT_FOUND


async def test_a_malformed_request_is_refused_before_its_handler_runs() -> None:
    ran = []

    async def handler(request: Any, context: Any) -> None:
        ran.append(request)

    guarded = Guard(Leader(True, None)).unary(handler)
    with pytest.raises(Aborted) as raised:
        await guarded(pb.CreateAppRequest(name="Bad Name"), context())
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert not ran


async def test_a_bug_is_not_mapped() -> None:
    async def handler(request: Any, context: Any) -> None:
        raise KeyError("a bug")

    guarded = Guard(Leader(True, None)).unary(handler)
    with pytest.raises(KeyError):
        await guarded(pb.ListAppsRequest(), context())


STREAMED = [method.name for method in SCHEDULER.methods if method.client_streaming]


@pytest.mark.parametrize("name", STREAMED)
async def test_a_refused_stream_of_requests_has_its_first_message_read_before_the_status(
    name: str,
) -> None:
    """A client's first write that meets the refusal fails as INTERNAL and hides it, so
    the guard takes that message first (here: the refusal waits for it)."""
    method = SCHEDULER.methods_by_name[name]
    svc = service(Leader(False, "127.0.0.9:7070"))
    handler = getattr(svc, name)
    sent = asyncio.Event()
    taken: list[Any] = []

    async def requests() -> AsyncIterator[Any]:
        await sent.wait()
        message = getattr(pb, method.input_type.name)()
        taken.append(message)
        yield message

    async def refused() -> Aborted:
        with pytest.raises(Aborted) as raised:
            if method.server_streaming:
                async for _ in handler(requests(), context()):
                    pass
            else:
                await handler(requests(), context())
        return raised.value

    answer = asyncio.create_task(refused())
    await asyncio.sleep(0.05)
    assert not answer.done(), "refused before the first message came"
    sent.set()
    aborted = await asyncio.wait_for(answer, 5)
    assert aborted.code == grpc.StatusCode.FAILED_PRECONDITION and len(taken) == 1
