"""The one wrapper around every RPC of the Scheduler service: who calls, leadership, errors.

Before a handler runs, the guard asks auth.Authorizer whether the caller's
certificate may make this call (role, expiry, deny list), then checks that
this replica leads (a follower refuses with FAILED_PRECONDITION and names the
leader in the `paas-leader` trailing metadata, which the CLI and the agents
follow; with no leader yet the answer is UNAVAILABLE), then checks the
request's shape (validate.py).
While the handler runs, the errors it raises become gRPC statuses here and
nowhere else (`status_of`):

    Unauthenticated            UNAUTHENTICATED  (no certificate, expired, revoked)
    PermissionDenied           PERMISSION_DENIED (a role or name that may not do this)
    NotLeading                 FAILED_PRECONDITION + paas-leader, or UNAVAILABLE
    NotLeaderError             UNAVAILABLE   (a write found leadership lost)
    ConflictError              ABORTED       (a compare-and-swap lost every retry)
    StoreError                 UNAVAILABLE   (etcd is unreachable ...)
    NotFound                   NOT_FOUND
    AlreadyExists              ALREADY_EXISTS
    JoinRefused                PERMISSION_DENIED
    Refused                    FAILED_PRECONDITION (no paas-leader: not a redirect)
    OverBudget                 RESOURCE_EXHAUSTED
    InvalidInput               INVALID_ARGUMENT

Anything else is a bug and reaches gRPC as it is (UNKNOWN, and logged by it).
Streaming RPCs (Logs, Session) get the same treatment, for errors raised
before or after their first message.

    guard = Guard(leadership, Authorizer(store))   # Authorizer(None): TLS off
    handler = guard.unary(apps.CreateApp)        # or guard.stream(logs.Logs)
    handler = guard.stream(session.Session, check=False)   # a stream of requests
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from paas.common.errors import InvalidInput
from paas.common.grpcutil import LEADER_METADATA_KEY
from paas.scheduler.auth import Authorizer
from paas.scheduler.errors import (
    AlreadyExists,
    DeliveryError,
    JoinRefused,
    NotFound,
    NotLeading,
    OverBudget,
    PermissionDenied,
    Refused,
    Unauthenticated,
)
from paas.scheduler.store import ConflictError, NotLeaderError, StoreError
from paas.scheduler.validate import check_request

Context = grpc.aio.ServicerContext[Any, Any]
UnaryHandler = Callable[[Any, Context], Awaitable[Any]]
StreamHandler = Callable[[Any, Context], AsyncIterator[Any]]

# Set on every wrapped handler, so a test (and the composition) can tell.
GUARDED = "__paas_guarded__"
# How long a refused stream of requests is given to send its first message.
REFUSAL_READ = 5.0


class LeaderView(Protocol):
    """Who leads, as leader.Leadership tells it."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def leader_address(self) -> str | None: ...


@dataclass(frozen=True)
class Status:
    """What a refused RPC answers."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str], ...] = ()


def status_of(exc: BaseException) -> Status | None:
    """The status an error becomes; None for an error that is not ours to map (a bug)."""
    if isinstance(exc, Unauthenticated):
        return Status(grpc.StatusCode.UNAUTHENTICATED, str(exc))
    if isinstance(exc, PermissionDenied):
        return Status(grpc.StatusCode.PERMISSION_DENIED, str(exc))
    if isinstance(exc, NotLeading):
        if exc.leader:
            return Status(
                grpc.StatusCode.FAILED_PRECONDITION,
                str(exc),
                ((LEADER_METADATA_KEY, exc.leader),),
            )
        return Status(grpc.StatusCode.UNAVAILABLE, str(exc))
    if isinstance(exc, NotLeaderError):
        return Status(grpc.StatusCode.UNAVAILABLE, "this replica just lost leadership; retry")
    if isinstance(exc, ConflictError):
        return Status(grpc.StatusCode.ABORTED, str(exc))
    if isinstance(exc, StoreError):
        return Status(grpc.StatusCode.UNAVAILABLE, str(exc))
    if isinstance(exc, NotFound):
        return Status(grpc.StatusCode.NOT_FOUND, str(exc))
    if isinstance(exc, AlreadyExists):
        return Status(grpc.StatusCode.ALREADY_EXISTS, str(exc))
    if isinstance(exc, JoinRefused):
        return Status(grpc.StatusCode.PERMISSION_DENIED, str(exc))
    if isinstance(exc, Refused):
        # No paas-leader metadata: clients read it as a refusal, not a redirect.
        return Status(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, OverBudget):
        return Status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    if isinstance(exc, InvalidInput):
        return Status(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, DeliveryError):
        # Drains keep these to themselves; one that escaped is a remote end's failure.
        return Status(grpc.StatusCode.UNAVAILABLE, str(exc))
    return None


class Guard:
    """Wraps handlers: the caller's certificate first, then leadership, then every
    error mapped by `status_of`."""

    def __init__(self, leadership: LeaderView, authorizer: Authorizer | None = None) -> None:
        """`authorizer` None lets every caller in (unit tests of the guard alone)."""
        self._leadership = leadership
        self._authorizer = authorizer or Authorizer(None)

    def check_leader(self) -> None:
        if not self._leadership.is_leader:
            raise NotLeading(self._leadership.leader_address)

    def unary(self, handler: UnaryHandler, check: bool = True, method: str = "") -> UnaryHandler:
        """`check=False` for a stream of requests, which its handler checks one by one;
        `method` is the RPC's name (default: the handler's)."""
        rpc = method or handler.__name__

        @functools.wraps(handler)
        async def guarded(request: Any, context: Context) -> Any:
            await self._admit(rpc, request, context, check)
            try:
                if check:
                    check_request(request)
                return await handler(request, context)
            except Exception as exc:
                await _abort_with(context, exc)
                raise

        setattr(guarded, GUARDED, True)
        return guarded

    def stream(self, handler: StreamHandler, check: bool = True, method: str = "") -> StreamHandler:
        """`check=False` for a stream of requests, which its handler checks one by one;
        `method` is the RPC's name (default: the handler's)."""
        rpc = method or handler.__name__

        @functools.wraps(handler)
        async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
            await self._admit(rpc, request, context, check)
            try:
                if check:
                    check_request(request)
                async for message in handler(request, context):
                    yield message
            except Exception as exc:
                await _abort_with(context, exc)
                raise

        setattr(guarded, GUARDED, True)
        return guarded

    async def _admit(self, rpc: str, request: Any, context: Context, check: bool) -> None:
        """The caller's certificate, then leadership; a refusal aborts the call. A stream
        of requests (`check` False) refused has its first message taken before the
        status goes out: a client whose first write meets the status sees that write
        fail with INTERNAL ("Internal error from Core"), which hides the refusal."""
        try:
            await self._authorizer.authorize(rpc, context)
            self.check_leader()
        except Exception as exc:
            if not check:
                await _take_first(request)
            await _abort_with(context, exc)
            raise


async def _take_first(requests: Any) -> None:
    """Read the first message of a stream of requests (at most REFUSAL_READ s)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(REFUSAL_READ):
            await requests.__aiter__().__anext__()


async def _abort_with(context: Context, exc: Exception) -> None:
    """Abort the RPC with the status of `exc`; return (to re-raise) if it has none."""
    status = status_of(exc)
    if status is not None:
        await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)
