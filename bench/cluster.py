"""Benchmark: the compose cluster (deploy/docker-compose.yml) against the same floors
as bench/scale.py and bench/failover.py, beside the local cluster's figures.

1. `paas scale web=N` (default 30) until `paas ps --json` shows N up; the floor is
   N processes started straight from this Python process (bench/scale.py's floor),
   and the same scale on a LocalCluster of 3 agents is printed beside it.
2. Node loss: `docker kill -s KILL` the agent container carrying the most of N
   workers; time until the formation is whole on the others. The floor is the node
   grace (10 s, the compose cluster's default).

    .venv/bin/python bench/cluster.py [--n 30] [--keep]

It builds the image (deploy/build-image.sh), brings up its own compose project and
removes it at the end (containers, network, volumes), also after a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from scale import (  # bench/scale.py: the same app, floor and CLI helpers
    POLL_INTERVAL,
    BenchError,
    Tracked,
    make_app_dir,
    measure_cluster,
    measure_floor,
    must,
    ps_rows,
    warm_up,
)

from paas.common.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
NODE_GRACE = 10.0
IMAGE = "paas:bench"


def compose_up(project: str, env: dict[str, str]) -> str:
    """Build the image, bring the cluster up; the PAAS_SCHEDULER value for the CLI."""
    built = subprocess.run(
        [str(ROOT / "deploy" / "build-image.sh")], env=env, capture_output=True, text=True
    )
    if built.returncode != 0:
        raise BenchError(f"building {IMAGE} failed: {built.stderr.strip()}")
    up = subprocess.run(
        [str(ROOT / "deploy" / "cluster.sh"), "up"], env=env, capture_output=True, text=True
    )
    if up.returncode != 0:
        raise BenchError(f"deploy/cluster.sh up failed: {up.stderr.strip()}")
    exported = dict(
        line.removeprefix("export ").split("=", 1)
        for line in up.stdout.splitlines()
        if line.startswith("export ")
    )
    os.environ["PAAS_CREDENTIALS"] = exported["PAAS_CREDENTIALS"]
    return exported["PAAS_SCHEDULER"]


def container_of(project: str, service: str, env: dict[str, str]) -> str:
    listed = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
         "--filter", f"label=com.docker.compose.service={service}"],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    return listed.stdout.split()[0]


async def scale_up(scheduler: str, n: int, limit: float) -> float:
    started = time.perf_counter()
    await must(scheduler, "scale", f"web={n}")
    deadline = time.monotonic() + limit
    while True:
        rows, _ = await ps_rows(scheduler)
        web = [row for row in rows if row.get("type") == "web"]
        if len(web) == n and all(row.get("state") == "up" for row in web):
            return time.perf_counter() - started
        if time.monotonic() > deadline:
            raise BenchError(f"web={n} not up within {limit:g} s on the compose cluster")
        await asyncio.sleep(POLL_INTERVAL)


async def node_loss(
    scheduler: str, project: str, env: dict[str, str], n: int, limit: float
) -> float:
    rows, _ = await ps_rows(scheduler)
    victim, carried = Counter(str(row["node"]) for row in rows).most_common(1)[0]
    print(f"node loss: {victim} carries {carried} of {len(rows)} instances; docker kill")
    started = time.perf_counter()
    kill = ["docker", "kill", "-s", "KILL", container_of(project, victim, env)]
    await asyncio.to_thread(subprocess.run, kill, check=True, capture_output=True)
    deadline = time.monotonic() + limit
    while True:
        rows, _ = await ps_rows(scheduler)
        if len(rows) == n and all(
            row.get("state") == "up" and row.get("node") != victim for row in rows
        ):
            return time.perf_counter() - started
        if time.monotonic() > deadline:
            raise BenchError(f"the formation was not whole within {limit:g} s of the kill")
        await asyncio.sleep(POLL_INTERVAL)


def report(what: str, took: float, floor: float, floor_name: str) -> None:
    print(f"{what}: {took:6.2f} s; floor ({floor_name}) {floor:.2f} s; ratio {took / floor:.2f}x")


async def bench(n: int, keep: bool, root: Path, tracked: Tracked) -> None:
    app_dir = make_app_dir(root)
    await warm_up(app_dir, tracked)
    floor = await measure_floor(app_dir, n, 120.0, tracked)
    local = await measure_cluster(app_dir, n, 3, root / "logs", 120.0, tracked)
    project = f"paasbench{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "IMAGE": IMAGE,
        "PAAS_IMAGE": IMAGE,
        "PAAS_PROJECT": project,
        "PAAS_SCHEDULER_PORT_1": str(free_port()),
        "PAAS_SCHEDULER_PORT_2": str(free_port()),
        "PYTHON": sys.executable,
        "PAAS": str(Path(sys.executable).parent / "paas"),
    }
    try:
        scheduler = await asyncio.to_thread(compose_up, project, env)
        await must(scheduler, "apps", "create", "bench")
        await must(scheduler, "deploy", str(app_dir))
        compose = await scale_up(scheduler, n, 180.0)
        report(f"scale web={n}, local cluster  ", local.seconds, floor, "processes from Python")
        report(f"scale web={n}, compose cluster", compose, floor, "processes from Python")
        took = await node_loss(scheduler, project, env, n, 120.0)
        report("formation whole after an agent container's kill", took, NODE_GRACE, "node grace")
    finally:
        if not keep:
            down = [str(ROOT / "deploy" / "cluster.sh"), "down"]
            await asyncio.to_thread(subprocess.run, down, env=env, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=30, help="web instances (default 30)")
    parser.add_argument("--keep", action="store_true", help="leave the compose cluster up")
    args = parser.parse_args()
    tracked = Tracked()
    with tempfile.TemporaryDirectory(prefix="paas-bench-cluster-") as tmp:
        try:
            asyncio.run(bench(args.n, args.keep, Path(tmp), tracked))
        except BenchError as exc:
            print(f"bench/cluster.py: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
