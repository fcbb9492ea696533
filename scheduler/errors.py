"""The root of every error the scheduler raises on purpose, and what each means to a caller.

    SchedulerError
    ├── StoreError        etcd could not be reached or refused a request   (store.py)
    │   ├── EtcdUnreachable   no answer from etcd in time (down, or a TLS
    │   │                     handshake it or we refused)
    │   ├── NotLeaderError    a write's leadership guard failed: this replica
    │   │                     no longer leads (nothing was written)
    │   └── ConflictError     a write's other compare failed: someone changed
    │                         the key first (cas.py retries these)
    ├── NotLeading        this replica does not lead: a follower (it names the
    │                     leader) or no leader elected yet            (guard.py)
    ├── NotFound          an app, instance, node or drain that is not there
    ├── AlreadyExists     an app or a drain made twice
    ├── JoinRefused       a join token that is unknown, expired, used up or
    │                     revoked, or a CSR that cannot be signed   (tokens_api.py)
    ├── Unauthenticated   no client certificate, or one expired or revoked  (auth.py)
    ├── PermissionDenied  a certificate whose role or name may not do this  (auth.py)
    ├── Refused           well formed, but the cluster's state forbids it now
    ├── OverBudget        a slug that would pass the slug budget (slugs_api.py)
    └── DeliveryError     a log drain's endpoint did not take a batch; kept for
                          `paas drains`, retried, never sent to a caller (drains.py)

    paas.common.errors.InvalidInput (ValueError)
                          a request that breaks a rule: a name, a count, a size,
                          a config var, a Procfile                 (common, validate.py)
    └── EtcdAccessError   (also a SchedulerError) an etcd TLS or password flag's
                          file is missing, unreadable or readable by others: refused
                          at start, never an RPC's answer          (etcd_access.py)

guard.py turns each into a gRPC status in one place, so a servicer raises and
never calls `context.abort` itself. `etcd_error` is the one place that words
a failed etcd call (`etcd is unreachable (...)`, `etcd refused ...`).
A message names the thing and how to find or fix it, in one line: the CLI
prints it as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import aetcd.exceptions
import grpc


class SchedulerError(Exception):
    """Something the scheduler refuses or cannot do; the message says what and why."""


class DeliveryError(SchedulerError):
    """A log drain's endpoint did not take a batch; the message says why, for `paas drains`."""


class StoreError(SchedulerError):
    """etcd could not be reached or refused the request."""


class EtcdUnreachable(StoreError):
    """etcd did not answer in time: down, partitioned, or a TLS handshake failed."""


class NotLeaderError(StoreError):
    """The leadership guard failed: this replica is no longer the leader."""


class ConflictError(StoreError):
    """A compare other than leadership failed: someone changed the key first."""


# What etcd (through aetcd or gRPC) says when it cannot be reached in time.
_UNREACHABLE = (aetcd.exceptions.ConnectionFailedError, aetcd.exceptions.ConnectionTimeoutError)
_UNREACHABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def etcd_error(endpoints: Sequence[str], exc: Exception) -> StoreError:
    """The StoreError for a failed etcd call: unreachable, or a request it refused (too
    large, say), so that only an etcd that is down is called unreachable."""
    where = ", ".join(endpoints)
    detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
    if isinstance(exc, _UNREACHABLE) or (
        isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _UNREACHABLE_CODES
    ):
        return EtcdUnreachable(f"etcd is unreachable ({where}): {detail}")
    return StoreError(f"etcd refused the request ({where}): {detail}")


class Unauthenticated(SchedulerError):
    """The caller presented no usable certificate: none, expired, or revoked."""


class PermissionDenied(SchedulerError):
    """The caller's certificate is valid, but its role or name may not do this."""


class NotLeading(SchedulerError):
    """This replica is not the leader; `leader` is the one that is, if known."""

    def __init__(self, leader: str | None) -> None:
        self.leader = leader
        if leader:
            super().__init__(f"this scheduler replica is a follower; the leader is {leader}")
        else:
            super().__init__("no scheduler leader is elected yet; try again shortly")


class NotFound(SchedulerError):
    """What the request names does not exist."""


class AlreadyExists(SchedulerError):
    """What the request would create exists already."""


class JoinRefused(SchedulerError):
    """An agent may not join with what it sent; the message says why, in one line."""


class Refused(SchedulerError):
    """The request is well formed but the cluster's state forbids it now (a node that
    is still connected cannot be removed); the message says what to do first."""


class OverBudget(SchedulerError):
    """Storing what the request brings would pass a stated budget (--slug-budget)."""
