"""The CLI client against fake scheduler replicas: trying each address, following a
follower's redirect to the leader, and turning refusals into one-line errors."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from paas.cli.client import DIAL_TIMEOUT, SchedulerClient, SchedulerError, SchedulerUnreachable
from paas.cli.slugpack import pack
from paas.common.grpcutil import LEADER_METADATA_KEY
from paas.common.ports import free_port
from paas.common.slugs import CHUNK_SIZE, DEFAULT_MAX_SLUG_SIZE
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc
from tests.helpers import wait_for

Context = grpc.aio.ServicerContext[Any, Any]


class FakeScheduler(pb_grpc.SchedulerServicer):
    """A replica whose every call is answered by `refuse` first, if set."""

    def __init__(self) -> None:
        self.refuse: Callable[[Context], Awaitable[None]] | None = None
        self.calls = 0
        self.nodes = [pb.Node(name="node-1", address="127.0.0.2:7071", state=pb.NODE_READY)]
        self.instances = [
            pb.InstanceView(app="shop", name="web.1", type="web", node="node-1", state=pb.UP,
                            pid=123, port=20000, release=1),
        ]  # fmt: skip
        self.log_lines = [
            pb.LogLine(timestamp=1.0, app="shop", instance="web.1", stream="stdout", text="a"),
            pb.LogLine(timestamp=2.0, app="shop", instance="web.1", stream="stdout", text="b"),
        ]
        self.log_requests: list[pb.LogsRequest] = []
        self.destroyed: list[pb.DestroyAppRequest] = []
        self.deploys: list[pb.DeployRequest] = []
        # Slugs held (digest -> bytes), StatSlug's digests, UploadSlug's messages per call.
        self.slugs: dict[str, bytes] = {}
        self.slug_stats: list[str] = []
        self.uploads: list[list[pb.SlugUpload]] = []
        self.max_slug_size = DEFAULT_MAX_SLUG_SIZE
        # GetRelease answers these in turn, then the last one for good, when set.
        self.release_answers: list[pb.Release] = []
        self.release_requests: list[pb.GetReleaseRequest] = []
        self.config_requests: list[pb.SetConfigRequest] = []
        self.rollbacks: list[pb.RollbackRequest] = []
        self.releases = [pb.Release(app="shop", version=1, description="Deploy 3f2a9c1b0d4e")]
        # Serves Logs instead of log_lines when set.
        self.logs: Callable[[pb.LogsRequest, Context], AsyncIterator[pb.LogLine]] | None = None

    async def _gate(self, context: Context) -> None:
        self.calls += 1
        if self.refuse is not None:
            await self.refuse(context)

    async def CreateApp(self, request: pb.CreateAppRequest, context: Context) -> pb.App:
        await self._gate(context)
        return pb.App(name=request.name)

    async def ListApps(self, request: pb.ListAppsRequest, context: Context) -> pb.ListAppsResponse:
        await self._gate(context)
        return pb.ListAppsResponse()

    async def Deploy(self, request: pb.DeployRequest, context: Context) -> pb.Release:
        await self._gate(context)
        self.deploys.append(request)
        return pb.Release(
            app=request.app,
            version=len(self.deploys),
            dir=request.dir,
            slug=request.slug,
            commands={"web": "python3 serve.py"},
        )

    async def Why(self, request: pb.WhyRequest, context: Context) -> pb.WhyResponse:
        await self._gate(context)
        return pb.WhyResponse(instance=request.instance, summary="web.7 is not placed")

    async def ListReleases(
        self, request: pb.ListReleasesRequest, context: Context
    ) -> pb.ListReleasesResponse:
        await self._gate(context)
        listed = self.releases[: request.limit] if request.limit else self.releases
        return pb.ListReleasesResponse(releases=listed)

    async def GetRelease(self, request: pb.GetReleaseRequest, context: Context) -> pb.Release:
        await self._gate(context)
        self.release_requests.append(request)
        if self.release_answers:
            answer = self.release_answers[0]
            if len(self.release_answers) > 1:
                self.release_answers.pop(0)
            return answer
        return pb.Release(app=request.app, version=request.version, status=pb.RELEASE_SUCCEEDED)

    async def SetConfig(self, request: pb.SetConfigRequest, context: Context) -> pb.Release:
        await self._gate(context)
        self.config_requests.append(request)
        return pb.Release(
            app=request.app, version=2, env=request.set, status=pb.RELEASE_ROLLING, previous=1
        )

    async def Rollback(self, request: pb.RollbackRequest, context: Context) -> pb.Release:
        await self._gate(context)
        self.rollbacks.append(request)
        target = request.version or 1
        return pb.Release(
            app=request.app,
            version=2,
            description=f"Rollback to v{target}",
            status=pb.RELEASE_ROLLING,
            previous=1,
        )

    async def Scale(self, request: pb.ScaleRequest, context: Context) -> pb.ScaleResponse:
        await self._gate(context)
        return pb.ScaleResponse(formation={c.type: c.count for c in request.changes})

    async def ListInstances(
        self, request: pb.ListInstancesRequest, context: Context
    ) -> pb.ListInstancesResponse:
        await self._gate(context)
        return pb.ListInstancesResponse(instances=self.instances)

    async def ListNodes(
        self, request: pb.ListNodesRequest, context: Context
    ) -> pb.ListNodesResponse:
        await self._gate(context)
        return pb.ListNodesResponse(nodes=self.nodes)

    async def Restart(self, request: pb.RestartRequest, context: Context) -> pb.RestartResponse:
        await self._gate(context)
        return pb.RestartResponse()

    async def Stop(self, request: pb.StopRequest, context: Context) -> pb.StopResponse:
        await self._gate(context)
        return pb.StopResponse()

    async def Drain(self, request: pb.DrainRequest, context: Context) -> pb.Node:
        await self._gate(context)
        state = pb.NODE_DRAINING if request.drain else pb.NODE_READY
        return pb.Node(name=request.node, state=state)

    async def DestroyApp(
        self, request: pb.DestroyAppRequest, context: Context
    ) -> pb.DestroyAppResponse:
        await self._gate(context)
        self.destroyed.append(request)
        return pb.DestroyAppResponse(instances=3)

    async def AddDrain(self, request: pb.AddDrainRequest, context: Context) -> pb.LogDrain:
        await self._gate(context)
        return pb.LogDrain(app=request.app, url=request.url, token="d.fake")

    async def RemoveDrain(self, request: pb.RemoveDrainRequest, context: Context) -> pb.LogDrain:
        await self._gate(context)
        return pb.LogDrain(app=request.app, url=request.url, token="d.fake")

    async def ListDrains(
        self, request: pb.ListDrainsRequest, context: Context
    ) -> pb.ListDrainsResponse:
        await self._gate(context)
        return pb.ListDrainsResponse()

    async def Logs(  # type: ignore[override]
        self, request: pb.LogsRequest, context: Context
    ) -> AsyncIterator[pb.LogBatch]:
        await self._gate(context)
        self.log_requests.append(request)
        if self.logs is not None:
            async for line in self.logs(request, context):
                yield pb.LogBatch(lines=[line])
            return
        for line in self.log_lines:
            yield pb.LogBatch(lines=[line])

    async def Session(  # type: ignore[override]
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: Context
    ) -> AsyncIterator[pb.SchedulerMessage]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")
        yield pb.SchedulerMessage()

    async def Run(  # type: ignore[override]
        self, request_iterator: AsyncIterator[pb.RunInput], context: Context
    ) -> AsyncIterator[pb.RunOutput]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")
        yield pb.RunOutput()

    async def RemoveNode(
        self, request: pb.RemoveNodeRequest, context: Context
    ) -> pb.RemoveNodeResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")
        raise AssertionError("unreachable")

    async def StatSlug(self, request: pb.StatSlugRequest, context: Context) -> pb.StatSlugResponse:
        await self._gate(context)
        self.slug_stats.append(request.digest)
        data = self.slugs.get(request.digest)
        return pb.StatSlugResponse(
            known=data is not None, size=len(data or b""), max_size=self.max_slug_size
        )

    async def UploadSlug(  # type: ignore[override]
        self, request_iterator: AsyncIterator[pb.SlugUpload], context: Context
    ) -> pb.UploadSlugResponse:
        await self._gate(context)
        messages = [message async for message in request_iterator]
        self.uploads.append(messages)
        slug = messages[0].slug
        data = b"".join(message.data for message in messages)
        if len(data) != slug.size or hashlib.sha256(data).hexdigest() != slug.digest:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "digest mismatch")
        existed = slug.digest in self.slugs
        self.slugs[slug.digest] = data
        return pb.UploadSlugResponse(slug=slug, existed=existed)

    async def FetchSlug(  # type: ignore[override]
        self, request: pb.FetchSlugRequest, context: Context
    ) -> AsyncIterator[pb.SlugData]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")
        yield pb.SlugData()

    async def CreateToken(
        self, request: pb.CreateTokenRequest, context: Context
    ) -> pb.CreateTokenResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")
        raise AssertionError("unreachable")

    async def ListTokens(
        self, request: pb.ListTokensRequest, context: Context
    ) -> pb.ListTokensResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")
        raise AssertionError("unreachable")

    async def RevokeToken(self, request: pb.RevokeTokenRequest, context: Context) -> pb.JoinToken:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")
        raise AssertionError("unreachable")

    async def Join(self, request: pb.JoinRequest, context: Context) -> pb.JoinResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")
        raise AssertionError("unreachable")

    async def CreateCredentials(
        self, request: pb.CreateCredentialsRequest, context: Context
    ) -> pb.CreateCredentialsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")
        raise AssertionError("unreachable")

    async def ListCredentials(
        self, request: pb.ListCredentialsRequest, context: Context
    ) -> pb.ListCredentialsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")
        raise AssertionError("unreachable")

    async def RevokeCredentials(
        self, request: pb.RevokeCredentialsRequest, context: Context
    ) -> pb.Credential:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")
        raise AssertionError("unreachable")


class Replica:
    def __init__(self) -> None:
        self.fake = FakeScheduler()
        self.server = grpc.aio.server()
        pb_grpc.add_SchedulerServicer_to_server(self.fake, self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"


@pytest.fixture
async def replicas() -> AsyncIterator[list[Replica]]:
    started = [Replica(), Replica()]
    for replica in started:
        await replica.server.start()
    yield started
    for replica in started:
        await replica.server.stop(None)


def redirect_to(leader: str) -> Callable[[Context], Awaitable[None]]:
    async def refuse(context: Context) -> None:
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"this scheduler replica is a follower; the leader is {leader}",
            trailing_metadata=((LEADER_METADATA_KEY, leader),),
        )

    return refuse


def refuse_with(code: grpc.StatusCode, details: str) -> Callable[[Context], Awaitable[None]]:
    async def refuse(context: Context) -> None:
        await context.abort(code, details)

    return refuse


async def test_a_follower_redirects_the_call_to_the_leader(replicas: list[Replica]) -> None:
    follower, leader = replicas
    follower.fake.refuse = redirect_to(leader.address)
    async with SchedulerClient([follower.address]) as client:
        nodes = await client.list_nodes()
    assert [node.name for node in nodes] == ["node-1"]
    assert (follower.fake.calls, leader.fake.calls) == (1, 1)


async def test_a_log_stream_follows_the_redirect_too(replicas: list[Replica]) -> None:
    follower, leader = replicas
    follower.fake.refuse = redirect_to(leader.address)
    async with SchedulerClient([follower.address]) as client:
        lines = [line.text async for line in client.logs("shop")]
    assert lines == ["a", "b"]


async def test_an_unreachable_replica_is_skipped(replicas: list[Replica]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    async with SchedulerClient([dead, replicas[0].address]) as client:
        assert await client.create_app("shop") == pb.App(name="shop")


async def test_a_refusal_is_an_error_carrying_the_schedulers_words(
    replicas: list[Replica],
) -> None:
    first, second = replicas
    first.fake.refuse = refuse_with(grpc.StatusCode.NOT_FOUND, "unknown app 'nope'")
    async with SchedulerClient([first.address, second.address]) as client:
        with pytest.raises(SchedulerError, match=r"^unknown app 'nope'$") as raised:
            await client.list_instances("nope")
    assert raised.value.code == grpc.StatusCode.NOT_FOUND
    assert second.fake.calls == 0, "a refusal is an answer, not a reason to ask another replica"


async def test_no_replica_reachable_names_them_all() -> None:
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    async with SchedulerClient(dead) as client:
        with pytest.raises(SchedulerUnreachable) as raised:
            await client.list_nodes()
    assert str(raised.value) == (
        f"cannot reach the scheduler at {dead[0]},{dead[1]}: is it running? (`paas up`)"
    )


async def test_while_no_leader_is_elected_the_client_waits_then_gives_up(
    replicas: list[Replica],
) -> None:
    replica = replicas[0]
    replica.fake.refuse = refuse_with(grpc.StatusCode.UNAVAILABLE, "no scheduler leader yet")
    async with SchedulerClient([replica.address], retry_for=1.0) as client:
        with pytest.raises(SchedulerError, match="no scheduler leader yet"):
            await client.list_nodes()
    assert replica.fake.calls >= 2


async def test_an_election_that_ends_while_waiting_is_invisible(replicas: list[Replica]) -> None:
    replica = replicas[0]
    replica.fake.refuse = refuse_with(grpc.StatusCode.UNAVAILABLE, "no scheduler leader yet")

    async def elect() -> None:
        await asyncio.sleep(0.7)
        replica.fake.refuse = None

    election = asyncio.create_task(elect())
    async with SchedulerClient([replica.address], retry_for=10.0) as client:
        assert len(await client.list_nodes()) == 1
    await election


async def paas(address: str, *args: str) -> tuple[int, str, str]:
    env = dict(os.environ, PAAS_SCHEDULER=address, PAAS_APP="shop", PAAS_INSECURE="1")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "paas", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_the_real_program_prints_ps_and_nodes_as_json(replicas: list[Replica]) -> None:
    follower, leader = replicas
    follower.fake.refuse = redirect_to(leader.address)
    code, out, err = await paas(follower.address, "ps", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)[0] | {"name": "web.1", "state": "up", "pid": 123} == json.loads(out)[0]
    code, out, err = await paas(follower.address, "nodes", "--json")
    assert (code, err) == (0, "")
    assert [node["name"] for node in json.loads(out)] == ["node-1"]


async def test_the_real_program_turns_a_refusal_into_one_line_and_exit_1(
    replicas: list[Replica],
) -> None:
    replicas[0].fake.refuse = refuse_with(
        grpc.StatusCode.INVALID_ARGUMENT, "unknown process type 'wbe' (Procfile has: web)"
    )
    code, out, err = await paas(replicas[0].address, "scale", "wbe=2")
    assert code == 1
    assert out == ""
    assert err == "error: unknown process type 'wbe' (Procfile has: web)\n"


def line(node: str, instance: str, seq: int, timestamp: float) -> pb.LogLine:
    return pb.LogLine(timestamp=timestamp, app="shop", instance=instance, stream="stdout",
                      node=node, seq=seq, text=f"{instance} {seq}")  # fmt: skip


async def test_a_follower_resumes_a_broken_stream_after_the_last_line_it_had(
    replicas: list[Replica],
) -> None:
    first, second = replicas
    calls = 0

    async def logs(request: pb.LogsRequest, context: Context) -> AsyncIterator[pb.LogLine]:
        nonlocal calls
        calls += 1
        if calls == 1:
            yield line("node-1", "web.1", 7, 10.0)
            yield line("node-2", "web.2", 3, 11.0)
            yield line("node-1", "web.1", 8, 12.0)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the scheduler is going away")
        # A replica that ignored the cursors: the client still prints nothing twice.
        yield line("node-1", "web.1", 8, 12.0)
        yield line("node-1", "web.1", 9, 13.0)
        await asyncio.Event().wait()

    first.fake.logs = second.fake.logs = logs
    breaks: list[str] = []
    resumes: list[bool] = []
    texts: list[str] = []
    async with SchedulerClient([first.address, second.address]) as client:
        follow = client.follow_logs(
            "shop", lines=5, on_break=breaks.append, on_resume=lambda: resumes.append(True)
        )
        async for got in follow:
            texts.append(got.text)
            if len(texts) == 4:
                break
        await follow.aclose()
    assert texts == ["web.1 7", "web.2 3", "web.1 8", "web.1 9"]
    assert breaks == ["the log stream broke: the scheduler is going away"]
    assert resumes == [True]
    resumed = first.fake.log_requests[1]
    assert [(c.node, c.instance, c.seq) for c in resumed.after] == [
        ("node-1", "web.1", 8),
        ("node-2", "web.2", 3),
    ]
    assert resumed.follow and resumed.since == 10.0, "no line older than those it had printed"


async def test_a_follower_keeps_trying_while_no_replica_answers(replicas: list[Replica]) -> None:
    replica = replicas[0]
    port = int(replica.address.rpartition(":")[2])
    served = asyncio.Event()

    async def logs(request: pb.LogsRequest, context: Context) -> AsyncIterator[pb.LogLine]:
        yield line("node-1", "web.1", len(request.after) + 1, 1.0)
        served.set()
        await asyncio.Event().wait()

    replica.fake.logs = logs
    got: list[pb.LogLine] = []

    async def follow() -> None:
        async with SchedulerClient([replica.address]) as client:
            async for each in client.follow_logs("shop"):
                got.append(each)

    task = asyncio.create_task(follow())
    await asyncio.wait_for(served.wait(), 10)
    await replica.server.stop(None)  # the stream breaks; nobody answers for a while
    await asyncio.sleep(1.5)
    assert not task.done(), "an unreachable scheduler is not the end of a follower"
    restarted = Replica()
    restarted.fake.logs = logs
    assert restarted.server.add_insecure_port(f"127.0.0.1:{port}") == port
    await restarted.server.start()
    try:
        await wait_for(lambda: len(got) == 2, timeout=10, what="the second line")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await restarted.server.stop(None)
    assert restarted.fake.log_requests[0].after[0].seq == 1


async def test_a_follower_gives_up_on_a_refusal_retrying_cannot_change(
    replicas: list[Replica],
) -> None:
    replica = replicas[0]
    replica.fake.refuse = refuse_with(grpc.StatusCode.NOT_FOUND, "unknown app 'shop'")
    async with SchedulerClient([replica.address]) as client:
        with pytest.raises(SchedulerError, match="unknown app 'shop'"):
            async for _ in client.follow_logs("shop"):
                pass


async def test_destroy_app_sends_the_name_and_its_confirmation(replicas: list[Replica]) -> None:
    follower, leader = replicas
    follower.fake.refuse = redirect_to(leader.address)
    async with SchedulerClient([follower.address]) as client:
        assert await client.destroy_app("shop", "shop") == 3
    assert leader.fake.destroyed == [pb.DestroyAppRequest(name="shop", confirm="shop")]


async def test_the_real_program_destroys_an_app_and_says_what_went(
    replicas: list[Replica],
) -> None:
    code, out, err = await paas(replicas[0].address, "apps", "destroy", "shop", "--confirm", "shop")
    assert (code, err) == (0, "")
    assert out == (
        "Destroyed shop: stopped its 3 instances and deleted its formation, releases, "
        "config vars, log drains and logs\n"
    )
    assert replicas[0].fake.destroyed == [pb.DestroyAppRequest(name="shop", confirm="shop")]


async def test_the_real_program_refuses_an_unconfirmed_destroy_without_a_call(
    replicas: list[Replica],
) -> None:
    code, out, err = await paas(replicas[0].address, "apps", "destroy", "shop")
    assert (code, out) == (1, "")
    assert err.startswith("error: destroying shop stops its instances") and err.count("\n") == 1
    assert replicas[0].fake.calls == 0


async def test_a_destroy_the_scheduler_refuses_is_one_line(replicas: list[Replica]) -> None:
    replicas[0].fake.refuse = refuse_with(grpc.StatusCode.NOT_FOUND, "unknown app 'shop'")
    code, out, err = await paas(replicas[0].address, "apps", "destroy", "shop", "--confirm", "shop")
    assert (code, out, err) == (1, "", "error: unknown app 'shop'\n")


async def test_the_real_program_prints_times_as_iso_8601_in_ps_json(
    replicas: list[Replica],
) -> None:
    replicas[0].fake.instances[0].since = 1_795_895_223.5
    code, out, err = await paas(replicas[0].address, "ps", "--json")
    assert (code, err) == (0, "")
    row = json.loads(out)[0]
    assert row["since"] == "2026-11-28T19:47:03.500000+00:00"
    assert row["since_unix"] == 1_795_895_223.5


@pytest.fixture
def silent() -> Iterator[str]:
    """The address of a replica that takes connections and never answers (as a paused
    process does: the kernel completes the handshake, nobody speaks HTTP/2)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


async def test_a_replica_that_never_answers_costs_the_call_at_most_the_dial_timeout(
    replicas: list[Replica], silent: str
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with SchedulerClient([silent, replicas[0].address]) as client:
        assert [node.name for node in await client.list_nodes()] == ["node-1"]
    assert loop.time() - started < DIAL_TIMEOUT + 1.5, "the next replica was asked in time"


async def test_a_lone_replica_slow_to_answer_gets_the_whole_call_timeout(silent: str) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with SchedulerClient([silent], timeout=DIAL_TIMEOUT + 1.0) as client:
        with pytest.raises(SchedulerUnreachable):
            await client.list_nodes()
    assert loop.time() - started >= DIAL_TIMEOUT + 1.0, "it was not given up on early"


# ------------------------------------------------------------------ slugs


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """An app whose slug takes three chunks: 1.2 MiB that gzip cannot shrink."""
    root = tmp_path / "app"
    root.mkdir()
    (root / "Procfile").write_text("web: python3 serve.py\n")
    (root / "serve.py").write_text("print('hello')\n")
    (root / "blob.bin").write_bytes(random.Random(7).randbytes(CHUNK_SIZE * 2 + CHUNK_SIZE // 3))
    return root


async def test_deploy_uploads_an_unknown_slug_in_chunks_in_order_and_names_it(
    replicas: list[Replica], app_dir: Path
) -> None:
    follower, leader = replicas
    follower.fake.refuse = redirect_to(leader.address)  # the upload follows it too
    code, out, err = await paas(follower.address, "deploy", str(app_dir))
    # No progress bar when stdout and stderr are pipes: only how the rollout ended.
    assert (code, err) == (0, "v1 of shop is rolled out\n")
    [upload] = leader.fake.uploads
    first = upload[0]
    assert first.app == "shop" and first.slug.size > CHUNK_SIZE * 2
    assert [len(message.data) for message in upload[:-1]] == [CHUNK_SIZE] * (len(upload) - 1)
    assert len(upload) == 3 and 0 < len(upload[-1].data) <= CHUNK_SIZE
    assert not any(message.app or message.HasField("slug") for message in upload[1:])
    digest = first.slug.digest
    assert leader.fake.slugs[digest][:2] == b"\x1f\x8b", "a gzip stream, checked by the fake"
    [deploy] = leader.fake.deploys
    assert deploy.slug == first.slug and deploy.dir == ""
    assert deploy.procfile == "web: python3 serve.py\n"
    lines = out.splitlines()
    assert re.fullmatch(rf"Packed 1\.\d MiB slug {digest[:12]} \(3 files\)", lines[0])
    assert re.fullmatch(r"Uploaded 1\.\d MiB in \d+\.\d s \(.+/s\)", lines[1])
    assert lines[2:] == [f"Deployed shop v1 from slug {digest[:12]} (web)"]


async def test_deploying_an_unchanged_tree_again_uploads_nothing(
    replicas: list[Replica], app_dir: Path
) -> None:
    fake = replicas[0].fake
    code, _, _ = await paas(replicas[0].address, "deploy", str(app_dir))
    assert code == 0 and len(fake.uploads) == 1
    code, out, err = await paas(replicas[0].address, "deploy", str(app_dir))
    assert (code, err) == (0, "v2 of shop is rolled out\n")
    assert len(fake.uploads) == 1, "a known digest is not uploaded again"
    digest = fake.uploads[0][0].slug.digest
    assert fake.slug_stats == [digest, digest]
    assert out.splitlines()[1:] == [
        f"Already uploaded slug {digest[:12]}: nothing to send",
        f"Deployed shop v2 from slug {digest[:12]} (web)",
    ]
    assert fake.deploys[1].slug.digest == digest


async def test_a_slug_over_the_schedulers_limit_is_refused_before_upload(
    replicas: list[Replica], app_dir: Path
) -> None:
    fake = replicas[0].fake
    fake.max_slug_size = 1024 * 1024
    code, out, err = await paas(replicas[0].address, "deploy", str(app_dir))
    assert code == 1
    assert err.count("\n") == 1 and err.startswith(f"error: the slug of {app_dir} is 1.")
    assert "over the scheduler's limit of 1.0 MiB (--max-slug-size)" in err
    assert (fake.uploads, fake.deploys) == ([], [])
    assert out.startswith("Packed ")


async def test_deploy_in_place_sends_the_directory_and_no_slug(
    replicas: list[Replica], app_dir: Path
) -> None:
    fake = replicas[0].fake
    code, out, err = await paas(replicas[0].address, "deploy", "--in-place", str(app_dir))
    assert (code, err) == (0, "v1 of shop is rolled out\n")
    assert (fake.slug_stats, fake.uploads) == ([], [])
    [deploy] = fake.deploys
    assert deploy.dir == str(app_dir) and not deploy.HasField("slug")
    assert out == f"Deployed shop v1 from {app_dir} (in place) (web)\n"


async def test_a_scheduler_that_stores_no_slugs_refuses_the_deploy_in_one_line(
    replicas: list[Replica], app_dir: Path
) -> None:
    fake = replicas[0].fake

    async def no_slugs(context: Context) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "slugs are not stored yet")

    fake.refuse = no_slugs
    code, out, err = await paas(replicas[0].address, "deploy", str(app_dir))
    # Never a silent fallback to --in-place: that runs only where DIR is the same tree.
    assert code == 1
    assert "slugs are not stored yet" in err and err.count("\n") == 1
    assert fake.uploads == [] and fake.deploys == [] and "Deployed" not in out


async def test_deploy_without_a_procfile_is_one_line_and_sends_nothing(
    replicas: list[Replica], app_dir: Path
) -> None:
    (app_dir / "Procfile").unlink()
    code, out, err = await paas(replicas[0].address, "deploy", str(app_dir))
    assert (code, out) == (1, "")
    assert err.startswith(f"error: no Procfile in {app_dir}") and err.count("\n") == 1
    assert replicas[0].fake.calls == 0


async def test_a_tree_that_cannot_be_packed_is_one_line_and_sends_nothing(
    replicas: list[Replica], app_dir: Path
) -> None:
    (app_dir / "passwd").symlink_to("/etc/passwd")
    code, out, err = await paas(replicas[0].address, "deploy", str(app_dir))
    assert (code, out) == (1, "")
    assert err == (
        f"error: {app_dir / 'passwd'} is a symlink to the absolute path /etc/passwd: a slug "
        "holds only the tree, so use a relative link inside it or list it in .slugignore\n"
    )
    assert replicas[0].fake.calls == 0


async def test_an_upload_refused_while_no_leader_is_sent_again_from_the_start(
    replicas: list[Replica], app_dir: Path
) -> None:
    fake = replicas[0].fake
    refused = 0

    async def once(context: Context) -> None:
        nonlocal refused
        if refused == 0:
            refused += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no scheduler leader yet")

    slug = await asyncio.to_thread(pack, app_dir)
    try:
        fake.refuse = once
        sent: list[int] = []
        async with SchedulerClient([replicas[0].address]) as client:
            answer = await client.upload_slug("shop", slug.slug, slug.path, on_sent=sent.append)
    finally:
        slug.remove()
    assert answer == pb.UploadSlugResponse(slug=slug.slug, existed=False)
    assert refused == 1 and fake.calls == 2
    [upload] = fake.uploads  # the refused call read nothing
    assert sum(len(message.data) for message in upload) == slug.size
    assert sent[-4:] == [0, CHUNK_SIZE, 2 * CHUNK_SIZE, slug.size], "the retry began at byte 0"
