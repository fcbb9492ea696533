"""Scheduler events (`paas[scheduler]: Scaled to ...`) are kept in etcd: a new leader,
after a failover or a restart, still shows them, once each; and etcd keeps only the
last so many per app."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from paas.cli.localcluster import LocalCluster
from paas.scheduler.events import EventLog
from paas.scheduler.store import Store
from tests.helpers import paas, wait_for

pytestmark = pytest.mark.integration

PROCFILE = "worker: exec sleep 1000\n"


async def scheduler_events(cluster: LocalCluster) -> list[dict[str, Any]]:
    """The app's scheduler events as `paas logs --json` shows them, oldest first."""
    result = await paas(cluster, "logs", "--json", "-n", "1000", app="shop", timeout=20)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return [line for line in lines if line["instance"] == "scheduler"]


async def texts(cluster: LocalCluster) -> list[str]:
    return [line["text"] for line in await scheduler_events(cluster)]


async def showing(cluster: LocalCluster, text: str) -> list[str] | None:
    """The scheduler events' texts, once they include `text`."""
    shown = await texts(cluster)
    return shown if text in shown else None


async def kept_in_etcd(cluster: LocalCluster, text: str) -> bool:
    store = Store([cluster.etcd_endpoint])
    try:
        return text in [line.text for line in await store.events("shop", 1000)]
    finally:
        await store.close()


async def scale_and_lose_the_leader(
    cluster: LocalCluster, tmp_path: Path, restart: bool
) -> list[str]:
    """Create, deploy and scale `shop`; kill -9 the leader (and start it again when
    `restart`); return the scheduler events shown before."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Procfile").write_text(PROCFILE)
    assert (await paas(cluster, "apps", "create", "shop")).returncode == 0
    assert (await paas(cluster, "deploy", str(tmp_path / "app"), app="shop")).returncode == 0
    assert (await paas(cluster, "scale", "worker=2", app="shop")).returncode == 0
    before = await wait_for(
        lambda: showing(cluster, "Scaled to worker@2"), timeout=30, what="the scale event"
    )
    # Written by the leader's background writer, a moment after the API answered.
    await wait_for(
        lambda: kept_in_etcd(cluster, "Scaled to worker@2"), timeout=30, what="the event in etcd"
    )

    leader = cluster.scheduler_process(0)
    leader.send_signal(signal.SIGKILL)
    await leader.wait()
    if restart:
        await cluster.restart_scheduler(0)
    return list(before)


async def check_kept_once_and_new_events_come_after(
    cluster: LocalCluster, before: list[str]
) -> None:
    assert before.count("App created") == 1 and before.count("Scaled to worker@2") == 1

    after = await wait_for(
        lambda: showing(cluster, "Scaled to worker@2"),
        timeout=60,
        what="a new leader to show the old events",
    )
    assert after == before, "the new leader shows the earlier events, each once"

    async def scaled() -> bool:
        result = await paas(cluster, "scale", "worker=3", app="shop", timeout=20)
        return result.returncode == 0

    await wait_for(scaled, timeout=60, what="the new leader to accept a scale")
    later = await wait_for(
        lambda: showing(cluster, "Scaled to worker@3"), timeout=30, what="the new event"
    )
    assert later == [*before, "Scaled to worker@3"]
    seqs = [(line["node"], line["seq"]) for line in await scheduler_events(cluster)]
    assert len(set(seqs)) == len(seqs)


async def test_scheduler_events_survive_a_failover_once_each(tmp_path: Path) -> None:
    async with LocalCluster(
        agents=1, node_grace=5.0, stop_grace=2.0, log_to=tmp_path / "logs", schedulers=2,
        leader_ttl=2,
    ) as cluster:  # fmt: skip
        before = await scale_and_lose_the_leader(cluster, tmp_path, restart=False)
        await check_kept_once_and_new_events_come_after(cluster, before)


async def test_scheduler_events_survive_a_restart_of_the_only_scheduler(
    tmp_path: Path,
) -> None:
    async with LocalCluster(
        agents=1, node_grace=5.0, stop_grace=2.0, log_to=tmp_path / "logs"
    ) as cluster:
        before = await scale_and_lose_the_leader(cluster, tmp_path, restart=True)
        await check_kept_once_and_new_events_come_after(cluster, before)


# ------------------------------------------------------------ the bound, on a bare etcd


async def test_etcd_and_memory_keep_only_the_last_events_of_each_app(
    leading_store: Store,
) -> None:
    store = leading_store
    await store.create_app("shop")
    await store.create_app("blog")
    events = EventLog("a", store, keep=20)
    events.start()
    try:
        for i in range(137):
            events.add("shop", f"shop event {i}")
            if i % 10 == 0:
                events.add("blog", f"blog event {i}")
        await events.flush()
    finally:
        await events.close()

    # Trimmed every keep // 10 writes: never more than that beyond the bound.
    count = len(await store.events("shop", 1000))
    assert 20 <= count <= 20 + 2, f"{count} events of shop kept in etcd"
    assert [line.text for line in await store.events("shop", 20)] == [
        f"shop event {i}" for i in range(117, 137)
    ]
    assert [line.text for line in await store.events("blog", 20)] == [
        f"blog event {i}" for i in range(0, 137, 10)
    ], "another app's events are its own"
    assert len(events.recent("shop")) == 20

    # A new leader loads the last ones of every app, and nothing more.
    successor = EventLog("b", store, keep=20)
    successor.on_leadership(True)
    await wait_for(lambda: successor.recent("shop"), timeout=30, what="the load")
    assert [line.text for line in successor.recent("shop")] == [
        f"shop event {i}" for i in range(117, 137)
    ]
    assert len(successor.recent("blog")) == 14
    await successor.close()
