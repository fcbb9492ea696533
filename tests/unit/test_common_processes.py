"""How exits are told, for `paas ps` (describe_exit) and for LocalCluster (how_it_ended)."""

from __future__ import annotations

import os
import signal

import pytest

from paas.common.processes import describe_exit, how_it_ended, signal_group


@pytest.mark.parametrize(
    ("returncode", "short", "sentence"),
    [
        (0, "exit 0", "exited with status 0"),
        (3, "exit 3", "exited with status 3"),
        (-9, "signal 9 (SIGKILL)", "was killed by signal 9 (SIGKILL)"),
        (-15, "signal 15 (SIGTERM)", "was killed by signal 15 (SIGTERM)"),
        (-200, "signal 200", "was killed by signal 200"),
    ],
)
def test_an_exit_is_told_by_its_status_or_its_signal(
    returncode: int, short: str, sentence: str
) -> None:
    assert describe_exit(returncode) == short
    assert how_it_ended(returncode) == sentence


def test_a_process_without_an_exit_is_still_running() -> None:
    assert how_it_ended(None) == "is still running"


def test_signalling_a_group_that_is_gone_is_fine() -> None:
    gone = 2**22 + os.getpid() % 1000  # pid_max is at most 2**22: never a group
    signal_group(gone, signal.SIGTERM)
