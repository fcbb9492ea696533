"""Benchmark: how fast paas converges after a node or the leader dies, against its floor.

1. Node loss: 30 worker instances over 3 agents; kill -9 the agent carrying a
   third of them; time until the formation is whole again (30 up, none on the
   dead node). The floor is the configured node grace: the scheduler must not
   move work sooner, so the ratio says what the move itself costs on top.
2. Leader loss: 2 scheduler replicas; kill -9 the leader; time until the
   other accepts a scale. The floor is the election lease TTL.

    .venv/bin/python bench/failover.py [--grace 3] [--ttl 2] [--n 30]

It starts and stops its own LocalCluster; nothing is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from paas.cli.client import SchedulerClient, SchedulerError
from paas.cli.localcluster import LocalCluster
from paas.common.formation import parse_changes
from paas.proto import paas_pb2 as pb

POLL = 0.05


async def wait_formation(
    client: SchedulerClient, app: str, count: int, avoid: str = ""
) -> list[pb.InstanceView]:
    while True:
        try:
            rows = list(await client.list_instances(app))
        except SchedulerError:
            rows = []
        if (
            len(rows) == count
            and all(r.state == pb.UP for r in rows)
            and all(r.node != avoid for r in rows)
        ):
            return rows
        await asyncio.sleep(POLL)


async def node_loss(n: int, grace: float, workdir: Path) -> tuple[float, float]:
    app_dir = workdir / "app"
    app_dir.mkdir()
    (app_dir / "Procfile").write_text("worker: exec sleep 100000\n")
    async with LocalCluster(agents=3, node_grace=grace, stop_grace=2.0) as cluster:
        async with cluster.client() as client:
            await client.create_app("bench")
            await client.deploy("bench", str(app_dir), (app_dir / "Procfile").read_text(), {})
            await client.scale("bench", parse_changes([f"worker={n}"]))
            rows = await wait_formation(client, "bench", n)
            victim, carried = Counter(r.node for r in rows).most_common(1)[0]
            print(f"node loss: {victim} carries {carried} of {n} instances; kill -9")
            started = time.monotonic()
            cluster.agent_process(victim).send_signal(signal.SIGKILL)
            await wait_formation(client, "bench", n, avoid=victim)
            return time.monotonic() - started, grace


async def leader_loss(ttl: int, workdir: Path) -> tuple[float, float]:
    async with LocalCluster(agents=1, schedulers=2, leader_ttl=ttl, node_grace=10) as cluster:
        async with cluster.client() as client:
            await client.create_app("bench")
            procfile = (workdir / "app" / "Procfile").read_text()
            await client.deploy("bench", str(workdir / "app"), procfile, {})
            started = time.monotonic()
            cluster.scheduler_process(0).send_signal(signal.SIGKILL)
            follower = SchedulerClient([cluster.scheduler_addresses[1]], tls=cluster.client_tls)
            async with follower:
                while True:
                    try:
                        await follower.scale("bench", parse_changes(["worker=1"]))
                        break
                    except SchedulerError:
                        await asyncio.sleep(POLL)
            return time.monotonic() - started, float(ttl)


def report(what: str, took: float, floor: float, floor_name: str) -> None:
    print(f"{what}: {took:.2f} s; floor ({floor_name}) {floor:.2f} s; ratio {took / floor:.2f}x")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=30, help="instances (default 30)")
    parser.add_argument("--grace", type=float, default=3.0, help="node grace, s (default 3)")
    parser.add_argument("--ttl", type=int, default=2, help="election lease TTL, s (default 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="paas-bench-failover-") as tmp:
        took, floor = await node_loss(args.n, args.grace, Path(tmp))
        report("formation whole again after kill -9 of an agent", took, floor, "node grace")
        took, floor = await leader_loss(args.ttl, Path(tmp))
        report("new leader answering after kill -9 of the leader", took, floor, "lease TTL")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
