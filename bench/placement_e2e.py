"""Benchmark: placement end to end, 1,000 and 5,000 simulated nodes, 100,000 instances.

A LocalCluster (etcd, one scheduler, one real agent, drained) and a fleet of
simulated agents (tests/simagents.py: real gRPC sessions that report every
instance `up` at once and run nothing), held by a few processes of their own.
Then apps of two process types (1,000 instances of each at most, the formation's
limit) are scaled to `instances` instances in all, and it prints:

- placements committed to etcd per second: from the first Scale call until
  etcd holds every assignment (its instance keys counted every 0.1 s);
- the time until every instance is reported up (ListInstances, per app);
- the scheduler's CPU seconds and RSS over the run;
- the floor, measured in the same run on the same etcd: the raw rate of
  txns like the scheduler's (126 puts, 2 compares each) sent one after
  another from this process; the ratio is placements/s over that rate.

Not part of the test suite (minutes of work). TLS is off by default: the sessions
of a few thousand simulated nodes share connections then (`--tls on` gives each
its own, with its own certificate, which costs handshakes, not placement).

    .venv/bin/python bench/placement_e2e.py                      # 1,000 and 5,000 nodes
    .venv/bin/python bench/placement_e2e.py --nodes 1000 --instances 20000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aetcd
import psutil

from paas.cli.client import SchedulerClient
from paas.cli.localcluster import LocalCluster
from paas.common.formation import Change, Op
from paas.proto import paas_pb2 as pb
from paas.scheduler.store import PREFIX

ROOT = Path(__file__).resolve().parent.parent  # `-m tests.simagents` runs from here
FLEETS = 4  # processes holding the simulated agents
TYPES = ("worker", "clock")  # per app; a type may have at most 1,000 instances
POLL = 0.1


async def raw_txn_rate(endpoint: str, txns: int = 200) -> float:
    """Puts per second through txns of 126 puts and 2 compares, one after another."""
    host, port = endpoint.rsplit(":", 1)
    client = aetcd.Client(host=host, port=int(port))
    try:
        guard = b"/bench/guard"
        await client.put(guard, b"x")
        value = b'{"node": "sim-00001", "release": 1}'
        started = time.perf_counter()
        for round_ in range(txns):
            ops = [
                client.transactions.put(f"/bench/raw/{round_}/{i}".encode(), value)
                for i in range(126)
            ]
            compare = [
                client.transactions.version(guard) > 0,
                client.transactions.create(guard) > 0,
            ]
            await client.transaction(compare=compare, success=ops, failure=[])
        seconds = time.perf_counter() - started
        await client.delete_prefix(b"/bench/")
    finally:
        await client.close()
    return txns * 126 / seconds


async def _all_committed(endpoint: str, count: int) -> bool:
    host, port = endpoint.rsplit(":", 1)
    client = aetcd.Client(host=host, port=int(port))
    try:
        # Counted by etcd: 100,000 keys are more than one gRPC message holds.
        prefix = f"{PREFIX}instances/".encode()
        await client.connect()
        found = await client.kvstub.Range(
            aetcd.rpc.RangeRequest(key=prefix, range_end=prefix[:-1] + b"0", count_only=True),
            metadata=client.metadata,
        )
        return int(found.count) >= count
    finally:
        await client.close()


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    while True:
        if await check():
            return
        await asyncio.sleep(POLL)


async def start_fleets(address: str, nodes: int, capacity: int) -> list[asyncio.subprocess.Process]:
    processes = []
    per = -(-nodes // FLEETS)
    for first in range(0, nodes, per):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.simagents", "--join", address, "--insecure",
            "--first", str(first), "--count", str(min(per, nodes - first)),
            "--capacity", str(capacity),
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )  # fmt: skip
        processes.append(process)
    for process in processes:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 600)
        if line.strip() != b"ready":
            raise SystemExit(f"a fleet did not start: {line!r}")
    return processes


async def _py_spy(profile: str, pid: int) -> asyncio.subprocess.Process | None:
    """py-spy recording the scheduler into `profile` (raw, for flame graphs) until
    interrupted; None without `profile`."""
    if not profile:
        return None
    return await asyncio.create_subprocess_exec(
        "py-spy", "record", "-p", str(pid), "-f", "raw", "-o", profile, "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def one_size(nodes: int, instances: int, apps: int, tls: bool, profile: str = "") -> None:
    capacity = max(1, -(-instances * 2 // nodes))  # room for twice the formation
    with tempfile.TemporaryDirectory(prefix="paas-bench-") as tmp:
        app_dir = Path(tmp) / "app"
        app_dir.mkdir()
        (app_dir / "Procfile").write_text(
            "".join(f"{type_}: exec sleep 100000\n" for type_ in TYPES)
        )
        async with LocalCluster(agents=1, log_to=Path(tmp) / "logs", tls=tls) as cluster:
            os.environ.update(cluster.credentials_env())
            scheduler = psutil.Process(cluster.scheduler_process().pid)
            floor = await raw_txn_rate(cluster.etcd_endpoint)
            async with cluster.client() as client:
                await client.drain("node-1", drain=True)
                names = [f"app{i:02d}" for i in range(apps)]
                for name in names:
                    await client.create_app(name)
                for batch in range(0, len(names), 8):
                    await asyncio.gather(
                        *(_deploy(cluster, n, app_dir) for n in names[batch : batch + 8])
                    )
                fleets = await start_fleets(cluster.scheduler_address, nodes, capacity)
                try:
                    spy = await _py_spy(profile, scheduler.pid)
                    cpu_before = sum(scheduler.cpu_times()[:2])
                    per_app = instances // apps  # split evenly over TYPES
                    started = time.perf_counter()
                    for name in names:
                        await client.scale(name, _changes(per_app))
                    endpoint = cluster.etcd_endpoint
                    await _until(lambda: _all_committed(endpoint, per_app * apps))
                    committed = time.perf_counter() - started
                    await _until(lambda: _all_up(client, names, per_app))
                    converged = time.perf_counter() - started
                    cpu = sum(scheduler.cpu_times()[:2]) - cpu_before
                    rss = scheduler.memory_info().rss
                    if spy is not None:
                        spy.send_signal(2)
                        await spy.wait()
                finally:
                    for process in fleets:
                        with contextlib.suppress(ProcessLookupError):
                            process.terminate()
                    await asyncio.gather(*(p.wait() for p in fleets))
    rate = per_app * apps / committed
    print(
        f"{nodes:>6,} nodes {per_app * apps:>8,} instances: "
        f"{rate:>8,.0f} placements/s committed in {committed:6.1f} s, "
        f"all up in {converged:6.1f} s; scheduler {cpu:5.1f} CPU s, "
        f"RSS {rss / 2**20:,.0f} MiB; raw etcd txns {floor:,.0f} puts/s; "
        f"ratio {rate / floor:.2f}",
        flush=True,
    )


def _changes(count: int) -> list[Change]:
    per_type = count // len(TYPES)
    return [Change(type_, Op.SET, per_type) for type_ in TYPES]


async def _deploy(cluster: LocalCluster, app: str, app_dir: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "paas", "deploy", str(app_dir), "-a", app,
        env={**os.environ, **cluster.client_env()},
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    if await process.wait() != 0:
        raise SystemExit(f"deploy of {app} failed")


async def _all_up(client: SchedulerClient, names: list[str], per_app: int) -> bool:
    for name in names:
        views = await client.list_instances(name)
        if sum(1 for v in views if v.state == pb.UP) < per_app:
            return False
    return True


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, action="append", help="default: 1000 and 5000")
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--apps", type=int, default=0, help="default: 1,000 per type")
    parser.add_argument("--tls", choices=("on", "off"), default="off")
    parser.add_argument(
        "--py-spy", metavar="FILE", default="", help="profile the scheduler while it places"
    )
    args = parser.parse_args()
    apps = args.apps or -(-args.instances // (1000 * len(TYPES)))
    for nodes in args.nodes or [1000, 5000]:
        await one_size(nodes, args.instances, apps, args.tls == "on", args.py_spy)


if __name__ == "__main__":
    asyncio.run(main())
