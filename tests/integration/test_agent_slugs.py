"""The real agent against a fake scheduler that serves FetchSlug over real gRPC: an
instance runs in its unpacked slug, instances share one fetch, a tampered cache is
fetched again, a bad slug is an event and a backoff (never a process), and unused
slugs go past the budget."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import os
import subprocess
import tarfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from paas.agent.config import AgentConfig
from paas.agent.processes import group_alive
from paas.agent.server import run_agent
from paas.common.slugs import human_size, short_digest
from paas.proto import paas_pb2 as pb
from tests.integration.test_agent_session import (
    APP,
    APP_ID,
    CLUSTER,
    FakeScheduler,
    Servers,
    config_for,
    eventually,
    eventually_async,
    joined_logs,
    no_leftovers,
    servers,
)

pytestmark = pytest.mark.integration

__all__ = ["config_for", "no_leftovers", "servers"]  # fixtures, used by name


def make_slug(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def slug_of(data: bytes) -> pb.Slug:
    return pb.Slug(digest=hashlib.sha256(data).hexdigest(), size=len(data))


def in_slug(name: str, slug: pb.Slug, command: str, incarnation: int = 1) -> pb.Assignment:
    return pb.Assignment(
        app=APP,
        name=name,
        type=name.rpartition(".")[0],
        incarnation=incarnation,
        release=incarnation,
        command=command,
        app_id=APP_ID,
        slug=slug,
    )


class SlugScheduler(FakeScheduler):
    """FakeScheduler that also serves FetchSlug from `slugs` (digest -> bytes), in
    chunks of `chunk` bytes with `pause` seconds between them, counting the calls."""

    def __init__(self) -> None:
        super().__init__(cluster_id=CLUSTER)
        self.slugs: dict[str, bytes] = {}
        self.fetched: list[str] = []
        self.chunk = 64 * 1024
        self.pause = 0.0

    async def FetchSlug(
        self, request: pb.FetchSlugRequest, context: Any
    ) -> AsyncIterator[pb.SlugData]:
        self.fetched.append(request.digest)
        assert request.node == "node-1"
        data = self.slugs.get(request.digest)
        if data is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no slug {request.digest}")
            return
        for offset in range(0, max(len(data), 1), self.chunk):
            message = pb.SlugData(data=data[offset : offset + self.chunk])
            if offset == 0:
                message.size = len(data)
            yield message
            await asyncio.sleep(self.pause)


def slug_scheduler() -> SlugScheduler:
    return SlugScheduler()  # type: ignore[abstract]


async def lines_of(address: str, process: str) -> list[str]:
    return [line.text for line in await joined_logs(address, process=process, lines=1000)]


async def stopped(agent: asyncio.Task[None]) -> None:
    agent.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await agent


def tree(config: AgentConfig, slug: pb.Slug) -> Path:
    return config.state_dir / config.name / "slugs" / slug.digest


SAYS = "cat hello.txt; echo cwd=$(pwd); exec sleep 1000"


async def test_instances_run_in_their_slug_and_share_one_slow_fetch(
    servers: Servers, config_for: Callable[..., AgentConfig], no_leftovers: set[int]
) -> None:
    scheduler = slug_scheduler()
    # Random bytes do not compress: a slug of many chunks, streamed slowly.
    data = make_slug({"hello.txt": b"from the slug\n", "ballast": os.urandom(200_000)})
    slug = slug_of(data)
    scheduler.slugs[slug.digest] = data
    scheduler.chunk, scheduler.pause = 16 * 1024, 0.15
    address = await servers.start(scheduler)
    config = config_for(address)
    agent = asyncio.create_task(run_agent(config))
    try:
        hello = await eventually(scheduler.hello, "hello")
        scheduler.push(
            in_slug("worker.1", slug, SAYS), in_slug("worker.2", slug, SAYS), generation=1
        )
        pending = await eventually(
            lambda: scheduler.reported("worker.1", pb.PENDING), "worker.1 pending"
        )
        assert pending.reason == f"fetching slug {human_size(slug.size)}", pending.reason
        assert scheduler.reported("worker.1", pb.STARTING) is None  # still fetching
        for name in ("worker.1", "worker.2"):
            up = await eventually(functools.partial(scheduler.reported, name, pb.UP), name)
            no_leftovers.add(up.pid)
        assert scheduler.fetched == [slug.digest]  # one fetch for both

        async def said_it() -> bool:
            lines = await lines_of(hello.address, "worker.2")
            return "from the slug" in lines and f"cwd={tree(config, slug)}" in lines

        await eventually_async(said_it, "worker.2's output from its slug")
        lines = await lines_of(hello.address, "worker.1")
        fetching = f"Fetching slug {human_size(slug.size)} ({short_digest(slug.digest)})"
        assert fetching in lines, lines
    finally:
        await stopped(agent)


async def test_a_cached_slug_is_reused_and_a_tampered_one_fetched_again(
    servers: Servers, config_for: Callable[..., AgentConfig], no_leftovers: set[int]
) -> None:
    scheduler = slug_scheduler()
    data = make_slug({"hello.txt": b"from the slug\n"})
    slug = slug_of(data)
    scheduler.slugs[slug.digest] = data
    address = await servers.start(scheduler)
    config = config_for(address)

    async def run_once(generation: int) -> list[str]:
        """The agent runs worker.1 until it is up; its output, once the agent stopped."""
        scheduler.hellos.clear()
        agent = asyncio.create_task(run_agent(config))
        try:
            hello = await eventually(scheduler.hello, "hello")
            scheduler.messages.clear()
            scheduler.push(in_slug("worker.1", slug, SAYS), generation=generation)
            up = await eventually(lambda: scheduler.reported("worker.1", pb.UP), "worker.1 up")
            no_leftovers.add(up.pid)

            async def said() -> list[str] | None:
                lines = await lines_of(hello.address, "worker.1")
                return lines if any(line.startswith("cwd=") for line in lines) else None

            return await eventually_async(said, "worker.1's output")
        finally:
            await stopped(agent)

    assert "from the slug" in await run_once(1)
    assert scheduler.fetched == [slug.digest]
    # Restarted: the unpacked, intact slug is used as it is.
    await run_once(1)
    assert scheduler.fetched == [slug.digest]
    # A file of the cached tree changed: fetched again before any process starts there.
    (tree(config, slug) / "hello.txt").write_text("tampered!\n")
    lines = await run_once(1)
    assert scheduler.fetched == [slug.digest, slug.digest]
    assert "from the slug" in lines and "tampered!" not in lines


async def test_a_slug_that_cannot_be_had_is_an_event_and_a_backoff_and_no_process(
    servers: Servers, config_for: Callable[..., AgentConfig], no_leftovers: set[int]
) -> None:
    scheduler = slug_scheduler()
    data = make_slug({"hello.txt": b"from the slug\n"})
    slug = slug_of(data)
    scheduler.slugs[slug.digest] = data[:-1] + bytes([data[-1] ^ 1])  # same size, other bytes
    missing = slug_of(b"never uploaded")
    address = await servers.start(scheduler)
    config = config_for(address, restart_base=0.5)
    agent = asyncio.create_task(run_agent(config))
    try:
        hello = await eventually(scheduler.hello, "hello")
        scheduler.push(
            in_slug("worker.1", slug, SAYS), in_slug("worker.2", missing, SAYS), generation=1
        )
        bad = await eventually(lambda: scheduler.reported("worker.1", pb.BACKOFF), "backoff")
        assert bad.reason.startswith("slug not ready: ") and "digest mismatch" in bad.reason
        assert bad.next_start > 0 and bad.pid == 0
        gone = await eventually(lambda: scheduler.reported("worker.2", pb.BACKOFF), "backoff")
        assert "does not have it" in gone.reason and gone.pid == 0
        # Retried like a crash: fetched again after the backoff.
        await eventually(lambda: scheduler.fetched.count(slug.digest) >= 2, "a second fetch")

        async def event() -> bool:
            lines = await lines_of(hello.address, "worker.1")
            return any(line.startswith("Slug not ready: ") for line in lines)

        await eventually_async(event, "the failure in worker.1's log stream")
        for name in ("worker.1", "worker.2"):
            assert all(status.pid == 0 for status in scheduler.statuses(name))
            assert scheduler.reported(name, pb.STARTING) is None
        assert not tree(config, slug).exists()
    finally:
        await stopped(agent)
    # Nothing half-written (a retry in flight when the agent stopped included).
    left = sorted(os.listdir(config.state_dir / config.name / "slugs"))
    assert left == [], left


async def test_unused_slugs_are_removed_past_the_budget_and_used_ones_kept(
    servers: Servers, config_for: Callable[..., AgentConfig], no_leftovers: set[int]
) -> None:
    scheduler = slug_scheduler()
    first_data = make_slug({"hello.txt": b"release one\n"})
    second_data = make_slug({"hello.txt": b"release two\n"})
    first, second = slug_of(first_data), slug_of(second_data)
    scheduler.slugs.update({first.digest: first_data, second.digest: second_data})
    address = await servers.start(scheduler)
    config = config_for(address, slug_cache_budget=1)  # every unused slug is over it
    agent = asyncio.create_task(run_agent(config))
    try:
        hello = await eventually(scheduler.hello, "hello")
        scheduler.push(in_slug("worker.1", first, SAYS), generation=1)
        up = await eventually(lambda: scheduler.reported("worker.1", pb.UP), "worker.1 up")
        no_leftovers.add(up.pid)
        await asyncio.sleep(0)
        assert tree(config, first).is_dir()  # in use, though over the budget
        # A new release in place: the new slug is fetched while the old one serves.
        scheduler.push(in_slug("worker.1", second, SAYS, incarnation=2), generation=2)
        new = await eventually(
            lambda: next(
                (
                    s
                    for s in scheduler.statuses("worker.1")
                    if s.incarnation == 2 and s.state == pb.UP
                ),
                None,
            ),
            "incarnation 2 up",
        )
        no_leftovers.add(new.pid)
        await eventually(lambda: not tree(config, first).exists(), "the unused slug removed")
        assert tree(config, second).is_dir()

        async def says_two() -> bool:
            return "release two" in await lines_of(hello.address, "worker.1")

        await eventually_async(says_two, "incarnation 2's output")
    finally:
        await stopped(agent)


async def test_a_new_release_whose_slug_fails_leaves_the_old_instance_serving(
    servers: Servers, config_for: Callable[..., AgentConfig], no_leftovers: set[int]
) -> None:
    scheduler = slug_scheduler()
    old_data = make_slug({"hello.txt": b"release one\n"})
    new_data = make_slug({"hello.txt": b"release two\n"})
    old, new = slug_of(old_data), slug_of(new_data)
    scheduler.slugs[old.digest] = old_data
    address = await servers.start(scheduler)
    config = config_for(address, restart_base=0.3)
    agent = asyncio.create_task(run_agent(config))
    try:
        hello = await eventually(scheduler.hello, "hello")
        scheduler.push(in_slug("worker.1", old, SAYS), generation=1)
        up = await eventually(lambda: scheduler.reported("worker.1", pb.UP), "worker.1 up")
        no_leftovers.add(up.pid)
        # A rollout's new copy (release 2) beside the old one, as the scheduler sends it:
        # its slug is not to be had (yet), and the old instance keeps running.
        scheduler.push(
            in_slug("worker.1", old, SAYS),
            in_slug("worker.1", new, SAYS, incarnation=2),
            generation=2,
        )
        await eventually(lambda: scheduler.fetched.count(new.digest) >= 2, "fetch retried")

        async def told() -> bool:
            lines = await lines_of(hello.address, "worker.1")
            return any(line.startswith("Slug not ready: ") for line in lines)

        await eventually_async(told, "the failure in worker.1's log stream")
        assert group_alive(up.pid)
        assert scheduler.reported("worker.1", pb.STOPPING) is None
        # Once it can be had, the new copy comes up; promoted, the old one stops.
        scheduler.slugs[new.digest] = new_data
        replaced = await eventually(
            lambda: next(
                (
                    s
                    for s in scheduler.statuses("worker.1")
                    if s.incarnation == 2 and s.state == pb.UP
                ),
                None,
            ),
            "incarnation 2 up",
        )
        no_leftovers.add(replaced.pid)
        assert group_alive(up.pid), "the old copy serves until the new one is promoted"
        scheduler.push(in_slug("worker.1", new, SAYS, incarnation=2), generation=3)
        await eventually(lambda: not group_alive(up.pid), "the old instance stopped")
    finally:
        await stopped(agent)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (skips where this test may not mount one)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_out_of_disk_while_unpacking_is_an_event_and_leaves_nothing(
    servers: Servers,
    config_for: Callable[..., AgentConfig],
    no_leftovers: set[int],
    small_disk: Path,
) -> None:
    scheduler = slug_scheduler()
    old_data = make_slug({"hello.txt": b"release one\n"})
    big_data = make_slug({"hello.txt": b"release two\n", "zeros": bytes(8 << 20)})
    old, big = slug_of(old_data), slug_of(big_data)
    assert big.size < 100_000  # fetched whole, too big only once unpacked
    scheduler.slugs.update({old.digest: old_data, big.digest: big_data})
    address = await servers.start(scheduler)
    config = config_for(address, state_dir=small_disk, log_spool_files=0, restart_base=0.3)
    agent = asyncio.create_task(run_agent(config))
    try:
        hello = await eventually(scheduler.hello, "hello")
        scheduler.push(in_slug("worker.1", old, SAYS), in_slug("worker.2", big, SAYS), generation=1)
        up = await eventually(lambda: scheduler.reported("worker.1", pb.UP), "worker.1 up")
        no_leftovers.add(up.pid)
        full = await eventually(lambda: scheduler.reported("worker.2", pb.BACKOFF), "backoff")
        assert "no space left on device" in full.reason and full.pid == 0

        async def told() -> bool:
            lines = await lines_of(hello.address, "worker.2")
            return any("no space left on device" in line for line in lines)

        await eventually_async(told, "the failure in worker.2's log stream")
        assert group_alive(up.pid)  # the other instance runs on
    finally:
        await stopped(agent)
    left = sorted(os.listdir(small_disk / config.name / "slugs"))
    assert left == [old.digest, old.digest + ".manifest"], left
