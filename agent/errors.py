"""The root of the errors paas.agent raises: something the agent cannot do.

    AgentError (RuntimeError)
    ├── PortError        no port can be handed out                    (ports.py)
    │   ├── PortsExhausted   no port of --ports is free on this host
    │   └── PortLockError    the --port-lock-dir cannot be used
    ├── ReaperError      the reaper sidecar cannot start              (reaper.py)
    ├── SpawnError       an instance's process cannot be started      (processes.py)
    ├── SlugError        a slug cannot be had to run an instance in  (slugcache.py)
    │   ├── SlugFetchError   the scheduler did not give it whole: not found, unreachable,
    │   │                    or bytes that do not match its digest or size
    │   ├── UnsafeSlug       its tar is refused by the unpacker (unpack.py): a path out of
    │   │                    the tree, a device, a link out, past the size bound
    │   └── SlugDiskError    the disk is full (or fails) while it is written
    └── LogStateError    what the agent keeps of its instances' logs  (spool.py)
        ├── SpoolError       the spool cannot open, write or delete
        └── MembershipError  the cluster id cannot be recorded or read (membership.py)

AgentError itself is raised when the agent cannot start (server.py: its state
directory or its --listen address). Each message names the thing and what to do,
in one line, so `paas agent` can print it as is and an instance can show it as
the reason it crashed.

TransitionError (states.py) is not under it on purpose: an edge the state table
lacks is a bug in the supervisor, never something the agent was asked to do.
"""

from __future__ import annotations


class AgentError(RuntimeError):
    """The agent cannot do what it was asked; the message says why and what to do."""


class SlugError(AgentError):
    """A slug cannot be made ready to run an instance in; the message names it and why."""


class SlugFetchError(SlugError):
    """The scheduler did not hand over the slug whole and true to its digest."""


class UnsafeSlug(SlugError):
    """A slug's tar holds what the unpacker refuses (hostile or past its bounds)."""


class SlugDiskError(SlugError):
    """Writing a slug to the agent's disk failed (no space left, most likely)."""
