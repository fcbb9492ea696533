"""Slugs on the scheduler: upload, stat, fetch, deploy, GC and budget, against a real
etcd and a real scheduler (raw gRPC, as no CLI would send it), and a failover in the
middle of an upload."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aetcd
import grpc
import pytest

from paas.cli.localcluster import LocalCluster
from paas.common.slugs import CHUNK_SIZE
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc
from tests.helpers import wait_for

if TYPE_CHECKING:
    from paas.proto.paas_pb2_grpc import SchedulerAsyncStub

MiB = 1024 * 1024
SLUGS = "/paas/slugs/"
PROCFILE = "worker: exec sleep 1000\n"


def slug_of(size: int, seed: int = 0) -> tuple[bytes, pb.Slug]:
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1)
    data = (os.urandom(16) + data)[:size]
    return data, pb.Slug(digest=hashlib.sha256(data).hexdigest(), size=size)


def messages(
    app: str, slug: pb.Slug, data: bytes, chunk: int = CHUNK_SIZE
) -> Iterator[pb.SlugUpload]:
    yield pb.SlugUpload(app=app, slug=slug)
    for start in range(0, len(data), chunk):
        yield pb.SlugUpload(data=data[start : start + chunk])


async def upload(stub: SchedulerAsyncStub, app: str, data: bytes) -> pb.UploadSlugResponse:
    _, slug = data, pb.Slug(digest=hashlib.sha256(data).hexdigest(), size=len(data))
    return await stub.UploadSlug(iter(messages(app, slug, data)))


async def slug_keys(endpoint: str) -> dict[str, int]:
    """Every key under the slug prefix, with its mod revision."""
    host, port = endpoint.rsplit(":", 1)
    client = aetcd.Client(host=host, port=int(port))
    try:
        result = await client.get_prefix(SLUGS.encode(), keys_only=True)
    finally:
        await client.close()
    return {kv.key.decode(): kv.mod_revision for kv in result.kvs}


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    details = raised.value.details() or ""
    assert details and "\n" not in details, details
    return raised.value


def slug_cluster(tmp_path: Path, *flags: str, **options: Any) -> LocalCluster:
    return LocalCluster(
        agents=1,
        node_grace=3.0,
        stop_grace=2.0,
        log_to=tmp_path / "logs",
        scheduler_args=["--slug-grace", "0", *flags],
        **options,
    )


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[tuple[LocalCluster, SchedulerAsyncStub]]:
    """A scheduler that keeps 2 releases per app, slugs of 3 MiB at most, 8 MiB in all."""
    async with slug_cluster(
        tmp_path, "--keep-releases", "2", "--max-slug-size", "3MiB", "--slug-budget", "8MiB"
    ) as cluster:
        async with cluster.channel() as channel:
            stub = pb_grpc.SchedulerStub(channel)
            await stub.CreateApp(pb.CreateAppRequest(name="shop"))
            yield cluster, stub


async def fetch(stub: SchedulerAsyncStub, digest: str) -> tuple[int, bytes]:
    size, parts = -1, []
    async for message in stub.FetchSlug(pb.FetchSlugRequest(digest=digest, node="node-1")):
        if size < 0:
            size = message.size
        parts.append(message.data)
    return size, b"".join(parts)


async def test_an_uploaded_slug_stats_and_fetches_byte_for_byte(
    small: tuple[LocalCluster, SchedulerAsyncStub],
) -> None:
    cluster, stub = small
    data, slug = slug_of(2 * CHUNK_SIZE + 1234)
    before = await stub.StatSlug(pb.StatSlugRequest(digest=slug.digest))
    assert not before.known and before.max_size == 3 * MiB

    answer = await upload(stub, "shop", data)
    assert not answer.existed and answer.slug.digest == slug.digest

    stat = await stub.StatSlug(pb.StatSlugRequest(digest=slug.digest))
    assert stat.known and stat.size == len(data)
    size, fetched = await fetch(stub, slug.digest)
    assert size == len(data) and fetched == data
    keys = await slug_keys(cluster.etcd_endpoint)
    assert len(keys) == 4 and all(len(k) < 200 for k in keys)  # 3 chunks and the meta

    # The same bytes again: known, nothing written (no key under the prefix touched).
    again = await upload(stub, "shop", data)
    assert again.existed
    assert await slug_keys(cluster.etcd_endpoint) == keys


async def test_a_broken_upload_is_one_line_and_leaves_no_key(
    small: tuple[LocalCluster, SchedulerAsyncStub],
) -> None:
    cluster, stub = small
    data, slug = slug_of(CHUNK_SIZE + 10)
    wrong = pb.Slug(digest="0" * 64, size=slug.size)
    cases = [
        (messages("shop", wrong, data), grpc.StatusCode.INVALID_ARGUMENT, "digest mismatch"),
        (messages("shop", slug, data[:-10]), grpc.StatusCode.INVALID_ARGUMENT, "short upload"),
        # Refused on the first message: only that is sent, since data still on its way
        # when the refusal comes can end the call client-side (INTERNAL) instead.
        (
            iter([pb.SlugUpload(app="shop", slug=pb.Slug(digest=slug.digest, size=4 * MiB))]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "over the limit of 3.0 MiB",
        ),
        (
            iter([pb.SlugUpload(app="nosuch", slug=slug)]),
            grpc.StatusCode.NOT_FOUND,
            "unknown app 'nosuch'",
        ),
        (iter([pb.SlugUpload(data=b"x")]), grpc.StatusCode.INVALID_ARGUMENT, "first message"),
    ]
    for requests, code, text in cases:
        error = await refused(stub.UploadSlug(requests))
        assert error.code() == code and text in (error.details() or ""), error.details()
    assert await slug_keys(cluster.etcd_endpoint) == {}
    missing = await refused(fetch(stub, slug.digest))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_deploy_names_a_stored_slug_or_a_directory(
    small: tuple[LocalCluster, SchedulerAsyncStub], tmp_path: Path
) -> None:
    _, stub = small
    data, slug = slug_of(1000)
    error = await refused(stub.Deploy(pb.DeployRequest(app="shop", procfile=PROCFILE, slug=slug)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"slug {slug.digest[:12]} is not uploaded" in (error.details() or "")
    both = pb.DeployRequest(app="shop", procfile=PROCFILE, slug=slug, dir=str(tmp_path))
    assert "exactly one" in ((await refused(stub.Deploy(both))).details() or "")
    neither = pb.DeployRequest(app="shop", procfile=PROCFILE)
    assert "exactly one" in ((await refused(stub.Deploy(neither))).details() or "")

    await upload(stub, "shop", data)
    release = await stub.Deploy(pb.DeployRequest(app="shop", procfile=PROCFILE, slug=slug))
    assert release.slug == slug and release.dir == ""
    assert release.description == f"Deploy {slug.digest[:12]}"
    in_place = await stub.Deploy(pb.DeployRequest(app="shop", procfile=PROCFILE, dir="/tmp"))
    assert in_place.description == "Deploy of /tmp (in place)" and not in_place.HasField("slug")


async def test_gc_removes_a_slug_only_past_the_kept_releases(
    small: tuple[LocalCluster, SchedulerAsyncStub],
) -> None:
    cluster, stub = small
    slugs = []
    for seed in range(3):
        data, slug = slug_of(CHUNK_SIZE + seed, seed)
        await upload(stub, "shop", data)
        await stub.Deploy(pb.DeployRequest(app="shop", procfile=PROCFILE, slug=slug))
        slugs.append(slug)
    # Another app naming the first slug would keep it; this one names the second.
    await stub.CreateApp(pb.CreateAppRequest(name="api"))
    await stub.Deploy(pb.DeployRequest(app="api", procfile=PROCFILE, slug=slugs[1]))

    async def first_gone() -> bool:
        stat = await stub.StatSlug(pb.StatSlugRequest(digest=slugs[0].digest))
        return not stat.known

    await wait_for(first_gone, timeout=30, what="the slug of v1 to be collected")
    for kept in slugs[1:]:
        assert (await stub.StatSlug(pb.StatSlugRequest(digest=kept.digest))).known
    keys = await slug_keys(cluster.etcd_endpoint)
    assert not any(slugs[0].digest in key for key in keys)
    assert len(keys) == 2 * 3  # two slugs of two chunks and a meta each


async def test_an_upload_past_the_budget_is_refused_in_one_line(
    small: tuple[LocalCluster, SchedulerAsyncStub],
) -> None:
    cluster, stub = small
    await stub.CreateApp(pb.CreateAppRequest(name="api"))
    for app, seed in (("shop", 1), ("api", 2), ("shop", 3)):
        data, slug = slug_of(5 * MiB // 2, seed)
        await upload(stub, app, data)
        await stub.Deploy(pb.DeployRequest(app=app, procfile=PROCFILE, slug=slug))
    before = await slug_keys(cluster.etcd_endpoint)
    data, _ = slug_of(5 * MiB // 2, 4)
    error = await refused(upload(stub, "api", data))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (
        "slug budget 8.0 MiB would be exceeded by this slug of 2.5 MiB: 7.5 MiB used "
        "(shop 5.0 MiB, api 2.5 MiB)"
    ) in (error.details() or ""), error.details()
    assert await slug_keys(cluster.etcd_endpoint) == before


async def etcd_alarms(endpoint: str) -> list[Any]:
    host, port = endpoint.rsplit(":", 1)
    client = aetcd.Client(host=host, port=int(port))
    try:
        return [alarm async for alarm in client.list_alarms()]
    finally:
        await client.close()


async def test_slugs_filled_to_the_budget_never_put_etcd_out_of_space(tmp_path: Path) -> None:
    # 24 MiB of slugs are written through an etcd of a 16 MiB quota: only the GC's
    # deletes and compaction keep it below; then, full to the budget, the rest works.
    quota = 16 * MiB
    cluster = slug_cluster(
        tmp_path,
        "--keep-releases", "1", "--max-slug-size", "2MiB", "--slug-budget", "6MiB",
        etcd_args=["--quota-backend-bytes", str(quota)],
    )  # fmt: skip
    async with (
        cluster,
        cluster.channel() as channel,
    ):
        stub = pb_grpc.SchedulerStub(channel)
        for app in ("a1", "a2", "a3", "plain"):
            await stub.CreateApp(pb.CreateAppRequest(name=app))
        for seed in range(12):
            data, slug = slug_of(2 * MiB, seed)
            await upload(stub, "a1", data)
            await stub.Deploy(pb.DeployRequest(app="a1", procfile=PROCFILE, slug=slug))
        stored = []
        for seed, app in ((20, "a2"), (21, "a3")):
            data, slug = slug_of(2 * MiB, seed)
            await upload(stub, app, data)
            await stub.Deploy(pb.DeployRequest(app=app, procfile=PROCFILE, slug=slug))
            stored.append(slug)

        data, _ = slug_of(2 * MiB, 30)
        error = await refused(upload(stub, "plain", data))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "slug budget 6.0 MiB would be exceeded" in (error.details() or "")
        assert "6.0 MiB used (a1 2.0 MiB, a2 2.0 MiB, a3 2.0 MiB)" in (error.details() or "")

        # Full to the budget, the cluster still writes: a deploy in place and of a
        # stored slug, a scale that places instances, a drain.
        await stub.Deploy(pb.DeployRequest(app="plain", procfile=PROCFILE, dir=str(tmp_path)))
        await stub.Scale(
            pb.ScaleRequest(
                app="plain",
                changes=[pb.FormationChange(type="worker", op=pb.FormationChange.SET, count=2)],
            )
        )
        await stub.AddDrain(pb.AddDrainRequest(app="plain", url="syslog://127.0.0.1:9"))
        await stub.Deploy(pb.DeployRequest(app="a1", procfile=PROCFILE, slug=stored[0]))

        async def placed() -> bool:
            listed = await stub.ListInstances(pb.ListInstancesRequest(app="plain"))
            return len(listed.instances) == 2

        await wait_for(placed, timeout=30, what="the scale to place 2 instances")
        assert await etcd_alarms(cluster.etcd_endpoint) == []


async def test_a_failover_mid_upload_leaves_no_partial_slug(tmp_path: Path) -> None:
    cluster = slug_cluster(tmp_path, schedulers=2, leader_ttl=2)
    async with cluster:
        first, second = cluster.scheduler_addresses
        data, slug = slug_of(6 * CHUNK_SIZE)
        half_sent = asyncio.Event()

        async def slow() -> AsyncIterator[pb.SlugUpload]:
            for index, message in enumerate(messages("shop", slug, data)):
                if index == 3:
                    half_sent.set()
                    await asyncio.sleep(3600)  # the leader dies meanwhile
                yield message

        async with cluster.channel(first) as channel:
            stub = pb_grpc.SchedulerStub(channel)
            await stub.CreateApp(pb.CreateAppRequest(name="shop"))
            call = asyncio.ensure_future(stub.UploadSlug(slow()))
            await asyncio.wait_for(half_sent.wait(), 30)
            cluster.scheduler_process(0).send_signal(signal.SIGKILL)
            with pytest.raises(grpc.aio.AioRpcError):
                await asyncio.wait_for(call, 30)

        async with cluster.channel(second) as channel:
            stub = pb_grpc.SchedulerStub(channel)

            async def retried() -> pb.UploadSlugResponse:
                return await upload(stub, "shop", data)

            answer = await wait_for(retried, timeout=30, what="the new leader to take the upload")
            assert not answer.existed
            release = await stub.Deploy(pb.DeployRequest(app="shop", procfile=PROCFILE, slug=slug))
            assert release.slug == slug
            size, fetched = await fetch(stub, slug.digest)
            assert size == len(data) and fetched == data
        keys = await slug_keys(cluster.etcd_endpoint)
        assert sorted(keys) == sorted(
            [f"{SLUGS}{slug.digest}/meta"]
            + [f"{SLUGS}{slug.digest}/chunk/{i:06d}" for i in range(6)]
        )
