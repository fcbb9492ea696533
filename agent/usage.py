"""Resource use of each instance: CPU and resident memory of its whole process group.

Owns the sampling: one pass over the host's processes (in a worker thread,
never on the event loop) that sums CPU percent and RSS per process group.
CPU percent is measured between two passes, so a process seen for the first
time counts 0 until the next one. It never signals, starts or stops anything.

    sampler = UsageSampler()
    usage = await sampler.sample({pgid_a, pgid_b})   # {pgid: Usage(cpu_percent, rss_bytes)}
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Usage:
    cpu_percent: float  # 100 = one core
    rss_bytes: int


def sample_groups(pgids: set[int]) -> dict[int, Usage]:
    """Usage per group of `pgids` (blocking: it reads /proc for every process)."""
    cpu: dict[int, float] = dict.fromkeys(pgids, 0.0)
    rss: dict[int, int] = dict.fromkeys(pgids, 0)
    if not pgids:
        return {}
    # process_iter caches Process objects, so cpu_percent(None) measures since the last pass.
    for process in psutil.process_iter():
        try:
            pgid = os.getpgid(process.pid)
            if pgid not in cpu:
                continue
            with process.oneshot():
                cpu[pgid] += process.cpu_percent(None)
                rss[pgid] += process.memory_info().rss
        except (psutil.Error, OSError):
            continue
    return {pgid: Usage(round(cpu[pgid], 1), rss[pgid]) for pgid in pgids}


class UsageSampler:
    """Samples off the event loop, one pass at a time."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    async def sample(self, pgids: set[int]) -> dict[int, Usage]:
        async with self._lock:
            return await asyncio.to_thread(sample_groups, set(pgids))
