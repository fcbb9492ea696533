"""Benchmark: `paas deploy` of a 50 MiB tree in ~2,000 files to 3 agents (issue 10).

1. Upload: the real CLI (`python -m paas deploy DIR`: pack, StatSlug, UploadSlug in
   CHUNK_SIZE messages, Deploy) against its floor, a raw gRPC stream of a slug of
   the same size (the same tree with one byte changed, so the digests differ and
   both are stored for real), its bytes already in memory, sent with the generated
   stub to the same scheduler in the same run. It prints both throughputs and the
   ratio (goal: the CLI at least half of the floor).
2. Rollout: from the moment `paas deploy` returns (the release exists) until every
   web instance (web=3, one per agent, running a previous release) is up on the
   new release: each agent fetches, verifies and unpacks the slug first.

    .venv/bin/python bench/deploy.py [--mib 50] [--files 2000] [--agents 3]

Needs the whole of issue 10 (the CLI, the scheduler's slug store and the agents'
fetch): against a scheduler that answers StatSlug UNIMPLEMENTED it says so and
exits 2. It starts and stops its own LocalCluster; nothing is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio

from paas.cli.client import SchedulerClient, SchedulerError
from paas.cli.localcluster import LocalCluster
from paas.cli.slugpack import pack
from paas.common.formation import parse_changes
from paas.common.slugs import CHUNK_SIZE, human_size, short_digest
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc

APP = "bench"
PROCFILE = "web: exec python3 -u -m http.server $PORT --bind 0.0.0.0\n"
POLL = 0.05
MIB = 1024 * 1024


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


def generate_tree(root: Path, total: int, files: int, seed: int = 10) -> None:
    """`files` files of random bytes (gzip cannot shrink them, so the slug is the
    tree's size) totalling `total` bytes, in 40 directories, sizes spread 1:7."""
    rng = random.Random(seed)
    weights = [rng.uniform(1.0, 7.0) for _ in range(files - 1)]
    scale = total / sum(weights)
    (root / "Procfile").write_text(PROCFILE)
    for index, weight in enumerate(weights):
        directory = root / f"d{index % 40:02d}"
        directory.mkdir(exist_ok=True)
        (directory / f"f{index:04d}.bin").write_bytes(rng.randbytes(int(weight * scale)))


async def paas_deploy(cluster: LocalCluster, directory: Path) -> tuple[float, str]:
    """Run the real `paas deploy`; (wall seconds, stdout)."""
    env = dict(os.environ, **cluster.client_env(), PAAS_APP=APP)
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "paas", "deploy", str(directory),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise BenchError(f"paas deploy failed: {stderr.decode().strip()}")
    return seconds, stdout.decode()


async def raw_upload(cluster: LocalCluster, data: bytes) -> float:
    """Seconds to stream `data` (a whole slug) with the bare stub: the floor."""
    slug = pb.Slug(digest=hashlib.sha256(data).hexdigest(), size=len(data))
    chunks = [data[at : at + CHUNK_SIZE] for at in range(0, len(data), CHUNK_SIZE)]

    async def messages() -> AsyncIterator[pb.SlugUpload]:
        yield pb.SlugUpload(app=APP, slug=slug, data=chunks[0])
        for chunk in chunks[1:]:
            yield pb.SlugUpload(data=chunk)

    async with cluster.channel() as channel:
        stub = pb_grpc.SchedulerStub(channel)
        await stub.StatSlug(pb.StatSlugRequest(digest=slug.digest))  # connected
        started = time.perf_counter()
        answer = await stub.UploadSlug(messages())
        seconds = time.perf_counter() - started
    if answer.existed:
        raise BenchError("the floor's slug was already stored: nothing was measured")
    return seconds


async def wait_release(
    client: SchedulerClient, count: int, version: int, limit: float
) -> list[pb.InstanceView]:
    deadline = time.monotonic() + limit
    while True:
        try:
            rows = [row for row in await client.list_instances(APP) if row.type == "web"]
        except SchedulerError:
            rows = []
        if len(rows) == count and all(r.state == pb.UP and r.release == version for r in rows):
            return rows
        if time.monotonic() > deadline:
            states = sorted((r.name, pb.InstanceState.Name(r.state), r.release) for r in rows)
            raise BenchError(f"web={count} not up on v{version} within {limit:g} s: {states}")
        await asyncio.sleep(POLL)


async def bench(mib: int, files: int, agents: int, workdir: Path) -> None:
    tree = workdir / "app"
    tree.mkdir()
    print(f"paas bench deploy: {mib} MiB in {files} files, web={agents} on {agents} agents")
    generated = time.perf_counter()
    generate_tree(tree, mib * MIB, files)
    print(f"tree:    generated in {time.perf_counter() - generated:.1f} s")
    small = workdir / "small"
    small.mkdir()
    (small / "Procfile").write_text(PROCFILE)

    async with LocalCluster(agents=agents, stop_grace=2.0, log_to=workdir / "logs") as cluster:
        async with cluster.client() as client:
            try:
                await client.stat_slug("0" * 64)
            except SchedulerError as exc:
                if exc.code == grpc.StatusCode.UNIMPLEMENTED:
                    raise BenchError(
                        "this scheduler stores no slugs: bench/deploy.py needs the whole of "
                        "issue 10 merged (CLI, scheduler store, agent fetch)"
                    ) from None
                raise
            await client.create_app(APP)
            # v1: a small slug, running on every agent before the big deploy.
            await paas_deploy(cluster, small)
            await client.scale(APP, parse_changes([f"web={agents}"]))
            await wait_release(client, agents, 1, 120)

            # The floor: the same tree but one byte, packed, streamed from memory.
            first = next(tree.glob("d00/*.bin"))
            original = first.read_bytes()
            first.write_bytes(bytes([original[0] ^ 0xFF]) + original[1:])
            twin = await asyncio.to_thread(pack, tree)
            try:
                data = twin.path.read_bytes()
            finally:
                twin.remove()
            stat = first.stat()
            first.write_bytes(original)
            os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            raw_seconds = await raw_upload(cluster, data)

            # The real CLI, the unchanged tree: a slug the scheduler does not hold.
            deploy_seconds, out = await paas_deploy(cluster, tree)
            released = time.perf_counter()
            rows = await wait_release(client, agents, 2, 600)
            rollout = time.perf_counter() - released

    match = re.search(r"^Uploaded .* in ([\d.]+) s", out, re.MULTILINE)
    packed = re.search(r"^Packed (.*) slug (\w+) \((\d+) files\)", out, re.MULTILINE)
    if match is None or packed is None:
        raise BenchError(f"paas deploy said something unexpected:\n{out}")
    upload_seconds = float(match.group(1))
    raw_rate = len(data) / raw_seconds
    cli_rate = len(data) / max(upload_seconds, 1e-3)
    print(f"floor:   {human_size(len(data))} streamed raw in {raw_seconds:.2f} s "
          f"({human_size(int(raw_rate))}/s; bare stub, bytes in memory)")  # fmt: skip
    print(f"cli:     `paas deploy` {deploy_seconds:.2f} s in all: packed {packed.group(1)} "
          f"slug {packed.group(2)} ({packed.group(3)} files), uploaded in "
          f"{upload_seconds:.2f} s ({human_size(int(cli_rate))}/s)")  # fmt: skip
    print(
        f"ratio:   the CLI's upload at {cli_rate / raw_rate:.2f}x the floor's throughput "
        "(goal: at least 0.5x)"
    )
    nodes = ", ".join(sorted(row.node for row in rows))
    print(
        f"rollout: release v2 to web={agents} up on the new slug in {rollout:.2f} s "
        f"(each agent fetched and unpacked {short_digest(packed.group(2))}; {nodes})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mib", type=int, default=50, help="the tree's size (default: 50)")
    parser.add_argument("--files", type=int, default=2000, help="files in it (default: 2000)")
    parser.add_argument("--agents", type=int, default=3, help="agents, web=N (default: 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="paas-bench-deploy-") as workdir:
        try:
            asyncio.run(bench(args.mib, args.files, args.agents, Path(workdir)))
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
