"""The scheduler checks every request as if no CLI existed: raw gRPC requests that no
process could run, or too big for etcd, are refused with INVALID_ARGUMENT naming the
key or the limit, and nothing changes (the app's releases and formation stay as they
were)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from paas.cli.localcluster import LocalCluster
from paas.proto import paas_pb2 as pb
from paas.scheduler.store import PREFIX
from tests.helpers import etcd_keys, wait_for

if TYPE_CHECKING:
    from paas.proto.paas_pb2_grpc import SchedulerAsyncStub

pytestmark = pytest.mark.integration

PROCFILE = "web: exec sleep 1000\n"


async def keys(cluster: LocalCluster) -> dict[str, bytes]:
    """Every key of the cluster's etcd but the scheduler's events (which a refusal does
    not write either, but which unrelated parts may add meanwhile) and the leader's."""
    return {
        key: value
        for key, value in (await etcd_keys(cluster.etcd_endpoint)).items()
        if not key.startswith((f"{PREFIX}events/", f"{PREFIX}leader"))
    }


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


async def test_requests_no_process_could_run_are_refused_and_change_nothing(
    cluster: LocalCluster, scheduler: SchedulerAsyncStub, tmp_path: Path
) -> None:
    await scheduler.CreateApp(pb.CreateAppRequest(name="shop"))
    good = pb.DeployRequest(app="shop", dir=str(tmp_path), procfile=PROCFILE, env={"A": "1"})
    release = await scheduler.Deploy(good)
    assert release.version == 1
    # The first deploy scales web to 1: once it is placed, nothing moves on its own.
    placed = f"{PREFIX}instances/shop/web.1"
    # ... and once v1's rollout is over, its record no longer changes either.
    before = await wait_for(
        lambda: _settled(keys(cluster), placed, f"{PREFIX}releases/shop/{1:010d}"),
        timeout=60,
        what="web.1 to be placed and v1 rolled out",
    )

    def deploy(**changes: Any) -> pb.DeployRequest:
        request = pb.DeployRequest()
        request.CopyFrom(good)
        for field, value in changes.items():
            if field == "env":
                request.env.clear()
                request.env.update(value)
            else:
                setattr(request, field, value)
        return request

    cases: list[tuple[Any, str]] = [
        (scheduler.Deploy(deploy(env={"": "x"})), "''"),
        (scheduler.Deploy(deploy(env={"BAD KEY": "x"})), "'BAD KEY'"),
        (scheduler.Deploy(deploy(env={"A=B": "x"})), "'A=B'"),
        (scheduler.Deploy(deploy(env={"KEY": "a\0b"})), "KEY"),
        (scheduler.Deploy(deploy(procfile="web: echo \0\n")), "NUL"),
        (scheduler.Deploy(deploy(dir=str(tmp_path) + "\0")), "NUL"),
        # Once UNAVAILABLE "etcd is unreachable ... received message larger than max".
        (scheduler.Deploy(deploy(env={"BIG": "x" * (3 * 1024 * 1024)})), "32 KiB"),
        (scheduler.Deploy(deploy(procfile=PROCFILE + "#" * (64 * 1024))), "64 KiB"),
        (scheduler.Deploy(deploy(app="Shop")), "invalid app name"),
        (scheduler.CreateApp(pb.CreateAppRequest(name="no such/app")), "invalid app name"),
        (
            scheduler.Scale(
                pb.ScaleRequest(app="shop", changes=[pb.FormationChange(type="web", count=-1)])
            ),
            "-1",
        ),
        (
            scheduler.Scale(
                pb.ScaleRequest(app="shop", changes=[pb.FormationChange(type="web", count=5000)])
            ),
            "5000",
        ),
        (
            scheduler.Scale(
                pb.ScaleRequest(app="shop", changes=[pb.FormationChange(type="w b", count=1)])
            ),
            "invalid process type",
        ),
        (scheduler.Restart(pb.RestartRequest(app="shop", process="web.x")), "web.x"),
        (scheduler.Stop(pb.StopRequest(app="shop", instance="web")), "web"),
        (scheduler.Drain(pb.DrainRequest(node="no such node", drain=True)), "invalid node name"),
        (scheduler.DestroyApp(pb.DestroyAppRequest(name="shop")), "--confirm NAME"),
    ]
    for call, named in cases:
        error = await refused(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        assert named in (error.details() or ""), error.details()

    logs = await refused(_drain(scheduler.Logs(pb.LogsRequest(app="shop", lines=-5))))
    assert logs.code() == grpc.StatusCode.INVALID_ARGUMENT

    assert await keys(cluster) == before, "a refused request wrote something"
    apps = {app.name: app for app in (await scheduler.ListApps(pb.ListAppsRequest())).apps}
    assert apps["shop"].release == 1


async def _settled(found: Any, placed: str, release: str) -> dict[str, bytes] | None:
    current: dict[str, bytes] = await found
    if placed in current and release in current:
        if json.loads(current[release])["status"] == "succeeded":
            return current
    return None


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass
