"""How a process ended, in words, and signalling a process group: for the agent and the CLI.

Both the agent (an instance's exit, shown by `paas ps`) and LocalCluster (a part
of the cluster that died) describe exits; both signal whole process groups. It
never starts or waits for a process.

    describe_exit(-9)      # "signal 9 (SIGKILL)"
    how_it_ended(1)        # "exited with status 1"
    signal_group(pgid, signal.SIGTERM)   # a group already gone is fine
"""

from __future__ import annotations

import contextlib
import os
import signal


def signal_label(number: int) -> str:
    """`9 (SIGKILL)`, or just the number for one without a name."""
    try:
        return f"{number} ({signal.Signals(number).name})"
    except ValueError:
        return str(number)


def describe_exit(returncode: int) -> str:
    """`exit 1` or `signal 9 (SIGKILL)`, as InstanceStatus.last_exit shows it."""
    if returncode >= 0:
        return f"exit {returncode}"
    return f"signal {signal_label(-returncode)}"


def how_it_ended(returncode: int | None) -> str:
    """`exited with status 1`, `was killed by signal 9 (SIGKILL)`, `is still running`:
    the end of a sentence that starts with the process's name."""
    if returncode is None:
        return "is still running"
    if returncode < 0:
        return f"was killed by signal {signal_label(-returncode)}"
    return f"exited with status {returncode}"


def signal_group(pgid: int, signum: int) -> None:
    """Send `signum` to process group `pgid`; a group that is gone (or not ours) is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
