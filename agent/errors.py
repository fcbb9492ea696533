"""The root of the errors paas.agent raises: something the agent cannot do.

    AgentError (RuntimeError)
    ├── PortError        no port can be handed out                    (ports.py)
    │   ├── PortsExhausted   no port of --ports is free on this host
    │   └── PortLockError    the --port-lock-dir cannot be used
    ├── ReaperError      the reaper sidecar cannot start              (reaper.py)
    ├── SpawnError       an instance's process cannot be started      (processes.py)
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
