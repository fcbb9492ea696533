"""The root of the errors paas.agent raises: something the agent cannot do.

    AgentError (RuntimeError)
    ├── PortsExhausted   no port of --ports is free on this host      (ports.py)
    ├── ReaperError      the reaper sidecar cannot start              (reaper.py)
    └── SpawnError       an instance's process cannot be started      (processes.py)

Each message names the thing and what to do, in one line, so `paas agent` can
print it as is and an instance can show it as the reason it crashed. The
agent's start failures (server.py) and the log spool's (spool.py, SpoolError)
belong under this root too.
"""

from __future__ import annotations


class AgentError(RuntimeError):
    """The agent cannot do what it was asked; the message says why and what to do."""
