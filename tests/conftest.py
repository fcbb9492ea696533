"""Fixtures shared by all tests; `cluster` is a real local cluster for integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from paas.cli.localcluster import LocalCluster


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """etcd, a scheduler and 3 agents (node-1..3), all ready; stopped at teardown.

    Node grace is short (3 s) so node-loss tests are quick. Logs of every part
    are kept in the test's tmp_path/logs for a failing test to look at.
    """
    async with LocalCluster(
        agents=3, node_grace=3.0, stop_grace=2.0, log_to=tmp_path / "logs"
    ) as started:
        yield started
