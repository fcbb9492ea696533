"""DestroyApp on a real cluster: it refuses without the name repeated, and then stops
every process of the app, leaves no key of it in etcd, and a new app of the same name
starts with no releases and none of the old one's events."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import psutil
import pytest

from paas.cli.localcluster import LocalCluster
from paas.proto import paas_pb2 as pb
from paas.scheduler.store import PREFIX
from tests.helpers import keys_of, wait_for

if TYPE_CHECKING:
    from paas.proto.paas_pb2_grpc import SchedulerAsyncStub

pytestmark = pytest.mark.integration

PROCFILE = "worker: exec sleep 1000\n"


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def pids(scheduler: SchedulerAsyncStub, app: str) -> list[int]:
    listed = await scheduler.ListInstances(pb.ListInstancesRequest(app=app))
    return [view.pid for view in listed.instances]


async def scheduler_events(scheduler: SchedulerAsyncStub, app: str) -> list[str]:
    request = pb.LogsRequest(app=app, process="scheduler", lines=1000)
    return [line.text async for batch in scheduler.Logs(request) for line in batch.lines]


async def test_destroying_an_app_stops_it_and_leaves_nothing_of_it(
    cluster: LocalCluster, scheduler: SchedulerAsyncStub, tmp_path: Path
) -> None:
    created = await scheduler.CreateApp(pb.CreateAppRequest(name="shop"))
    assert created.id
    await scheduler.Deploy(
        pb.DeployRequest(app="shop", dir=str(tmp_path), procfile=PROCFILE, env={"A": "1"})
    )
    await scheduler.Scale(
        pb.ScaleRequest(app="shop", changes=[pb.FormationChange(type="worker", count=3)])
    )
    await scheduler.AddDrain(pb.AddDrainRequest(app="shop", url="syslog://127.0.0.1:9"))

    async def three_running() -> list[int] | None:
        found = await pids(scheduler, "shop")
        return found if len(found) == 3 and all(found) else None

    running: list[int] = await wait_for(three_running, timeout=60, what="3 workers running")
    before = await keys_of(cluster.etcd_endpoint, "shop")
    assert any("/drains/shop/" in key for key in before)

    for confirm in ("", "shop2"):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await scheduler.DestroyApp(pb.DestroyAppRequest(name="shop", confirm=confirm))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "--confirm NAME" in (raised.value.details() or "")
    assert [k for k in await keys_of(cluster.etcd_endpoint, "shop") if "/events/" not in k] == [
        k for k in before if "/events/" not in k
    ], "a refused destroy changed something"
    assert not any(gone(pid) for pid in running)

    destroyed = await scheduler.DestroyApp(pb.DestroyAppRequest(name="shop", confirm="shop"))
    assert destroyed.instances == 3
    assert await keys_of(cluster.etcd_endpoint, "shop") == []
    await wait_for(lambda: all(gone(pid) for pid in running), timeout=30, what="workers gone")
    names = [app.name for app in (await scheduler.ListApps(pb.ListAppsRequest())).apps]
    assert "shop" not in names
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await scheduler.DestroyApp(pb.DestroyAppRequest(name="shop", confirm="shop"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND

    again = await scheduler.CreateApp(pb.CreateAppRequest(name="shop"))
    assert again.id and again.id != created.id
    listed = {app.name: app for app in (await scheduler.ListApps(pb.ListAppsRequest())).apps}
    assert listed["shop"].release == 0 and listed["shop"].id == again.id
    assert await scheduler_events(scheduler, "shop") == ["App created"]
    now = await keys_of(cluster.etcd_endpoint, "shop")
    assert [k for k in now if "/events/" not in k] == [
        f"{PREFIX}apps/shop",
        f"{PREFIX}formation/shop",
    ]
    assert len([k for k in now if "/events/" in k]) <= 1, "only the new 'App created'"
    assert not await pids(scheduler, "shop")
