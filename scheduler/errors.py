"""The root of every error the scheduler raises on purpose, and what each means to a caller.

    SchedulerError
    ├── NotLeading        this replica does not lead: a follower (it names the
    │                     leader) or no leader elected yet            (guard.py)
    ├── NotFound          an app, instance, node or drain that is not there
    └── AlreadyExists     an app or a drain made twice

    paas.common.errors.InvalidInput (ValueError)
                          a request that breaks a rule: a name, a count, a size,
                          a config var, a Procfile                 (common, validate.py)

guard.py turns each into a gRPC status in one place, so a servicer raises and
never calls `context.abort` itself; the store's errors (StoreError, its
NotLeaderError and ConflictError, in store.py) are mapped there as well.
A message names the thing and how to find or fix it, in one line: the CLI
prints it as it is.
"""

from __future__ import annotations


class SchedulerError(Exception):
    """Something the scheduler refuses or cannot do; the message says what and why."""


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
