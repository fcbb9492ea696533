"""Chaos soak: a seeded random sequence of mixed faults against a local cluster, with the
invariants checked all along. Not part of the timed suite; `make chaos` runs it.

The cluster: 2 scheduler replicas, 3 agents, etcd, a node grace of 15 s and the
default leader lease (5 s); the app runs `worker=9 clock=3`, the clock a singleton
that stops after 12 s cut off (`stop_after_disconnected`). The faults, drawn with the
seed: an agent killed (and started again), an agent paused (for less than its node
would be lost in), the leader killed (and started again), the leader paused (up to
20 s), etcd restarted, an agent and the leader killed at once.

Checked from /proc every quarter second, the whole time:
- at most one live run (PAAS_RUN_ID) per instance name;
- no process of the app outside the tree of a live agent;
and after each fault:
- the formation whole (12 up) within CONVERGE_BOUND;
- the API answering;
- no instance stopped on an agent the fault did not touch (same pid as before).

It exits 1 on a violation and prints the seed, so any failure can be replayed:

    .venv/bin/python bench/chaos.py [--seed N] [--faults 12]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil

from paas.cli.client import SchedulerClient, SchedulerError
from paas.cli.localcluster import LocalCluster
from paas.common.formation import parse_changes
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc

APP = "chaos"
PROCFILE = "worker: exec sleep 100000\nclock: exec sleep 100000\n"
FORMATION = {"worker": 9, "clock": 3}
TOTAL = sum(FORMATION.values())
CONVERGE_BOUND = 90.0
GRACE = 15.0  # node grace
FENCE = 12.0  # the clock's stop_after_disconnected
SAMPLE_EVERY = 0.25
# A finding of the sampler counts once it holds in this many samples in a row: /proc is
# read process by process, and a process that is exiting (or being reaped after its
# agent was killed) may be seen for a moment.
PERSISTS = 3


@dataclass
class Soak:
    """What the soak found: violations, and per fault kind how long convergence took."""

    violations: list[str] = field(default_factory=list)
    converged: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def violate(self, text: str) -> None:
        print(f"VIOLATION: {text}", flush=True)
        self.violations.append(text)


def app_processes() -> list[tuple[psutil.Process, dict[str, str]]]:
    """The app's processes, each with its environment (read once)."""
    found = []
    for proc in psutil.process_iter(["environ", "name"]):
        try:
            env = proc.info["environ"] or {}
        except psutil.Error:
            continue
        if env.get("PAAS_APP") == APP and proc.info["name"] == "sleep":
            found.append((proc, env))
    return found


def findings(agent_pids: set[int]) -> set[str]:
    """What breaks an invariant in /proc now: duplicate runs, processes outside agents."""
    runs: dict[str, set[str]] = defaultdict(set)
    found: set[str] = set()
    for proc, env in app_processes():
        try:
            parents = {parent.pid for parent in proc.parents()}
        except psutil.Error:
            continue
        runs[env.get("PAAS_INSTANCE", "?")].add(env.get("PAAS_RUN_ID", "?"))
        if not parents & agent_pids:
            found.add(f"pid {proc.pid} ({env.get('PAAS_INSTANCE')}) is outside every live agent")
    for name, ids in runs.items():
        if len(ids) > 1:
            found.add(f"{name} runs {len(ids)} times at once ({', '.join(sorted(ids))})")
    return found


def live_agent_pids(cluster: LocalCluster) -> set[int]:
    pids = set()
    for name in cluster.agent_names:
        process = cluster.agent_process(name)
        if process.returncode is None:
            pids.add(process.pid)
    return pids


async def sampler(cluster: LocalCluster, soak: Soak) -> None:
    streak: dict[str, int] = {}
    while True:
        now = findings(live_agent_pids(cluster))
        streak = {finding: streak.get(finding, 0) + 1 for finding in now}
        for finding, count in streak.items():
            if count == PERSISTS:
                soak.violate(finding)
        await asyncio.sleep(SAMPLE_EVERY)


async def leader_index(cluster: LocalCluster) -> int | None:
    """Which replica leads now (None while none does)."""
    for index, address in enumerate(cluster.scheduler_addresses):
        async with cluster.channel(address) as channel:
            try:
                await pb_grpc.SchedulerStub(channel).ListNodes(pb.ListNodesRequest(), timeout=1.0)
            except grpc.aio.AioRpcError:
                continue
            return index
    return None


async def instances(client: SchedulerClient) -> list[pb.InstanceView]:
    return list(await client.list_instances(APP))


async def converge(client: SchedulerClient) -> list[pb.InstanceView]:
    deadline = time.monotonic() + CONVERGE_BOUND
    while time.monotonic() < deadline:
        try:
            rows = await instances(client)
        except SchedulerError:
            rows = []
        if len(rows) == TOTAL and all(row.state == pb.UP for row in rows):
            return rows
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the formation was not whole within {CONVERGE_BOUND:g} s")


Fault = Callable[[LocalCluster, random.Random], Awaitable[set[str]]]


async def agent_kill(cluster: LocalCluster, rng: random.Random) -> set[str]:
    name = rng.choice(cluster.agent_names)
    cluster.agent_process(name).send_signal(signal.SIGKILL)
    await asyncio.sleep(rng.uniform(0.5, 3.0))
    await cluster.restart_agent(name)
    return {name}


async def agent_pause(cluster: LocalCluster, rng: random.Random) -> set[str]:
    # Shorter than the scheduler's silence deadline (5 s) plus the node grace: not lost.
    name = rng.choice(cluster.agent_names)
    process = cluster.agent_process(name)
    process.send_signal(signal.SIGSTOP)
    await asyncio.sleep(rng.uniform(1.0, 6.0))
    process.send_signal(signal.SIGCONT)
    return {name}


async def leader_kill(cluster: LocalCluster, rng: random.Random) -> set[str]:
    index = await leader_index(cluster)
    if index is None:
        return set()
    cluster.scheduler_process(index).send_signal(signal.SIGKILL)
    await cluster.scheduler_process(index).wait()
    await asyncio.sleep(rng.uniform(1.0, 4.0))
    await cluster.restart_scheduler(index)
    return set()


async def leader_pause(cluster: LocalCluster, rng: random.Random) -> set[str]:
    index = await leader_index(cluster)
    if index is None:
        return set()
    process = cluster.scheduler_process(index)
    process.send_signal(signal.SIGSTOP)
    await asyncio.sleep(rng.uniform(3.0, 20.0))
    process.send_signal(signal.SIGCONT)
    return set()


async def etcd_restart(cluster: LocalCluster, rng: random.Random) -> set[str]:
    cluster.etcd_process().send_signal(signal.SIGKILL)
    await cluster.etcd_process().wait()
    await asyncio.sleep(rng.uniform(0.5, 3.0))
    await cluster.restart_etcd()
    return set()


async def agent_and_leader_kill(cluster: LocalCluster, rng: random.Random) -> set[str]:
    index = await leader_index(cluster)
    name = rng.choice(cluster.agent_names)
    cluster.agent_process(name).send_signal(signal.SIGKILL)
    if index is not None:
        cluster.scheduler_process(index).send_signal(signal.SIGKILL)
        await cluster.scheduler_process(index).wait()
    await asyncio.sleep(rng.uniform(0.5, 3.0))
    if index is not None:
        await cluster.restart_scheduler(index)
    await cluster.restart_agent(name)
    return {name}


FAULTS: dict[str, Fault] = {
    "agent kill": agent_kill,
    "agent pause": agent_pause,
    "leader kill": leader_kill,
    "leader pause": leader_pause,
    "etcd restart": etcd_restart,
    "agent + leader kill": agent_and_leader_kill,
}


async def one_fault(
    cluster: LocalCluster, client: SchedulerClient, rng: random.Random, kind: str, soak: Soak
) -> None:
    before = await converge(client)
    started, began = time.monotonic(), time.strftime("%H:%M:%S")
    touched = await FAULTS[kind](cluster, rng)
    try:
        after = await converge(client)
    except TimeoutError as exc:
        soak.violate(f"after {kind}: {exc}")
        return
    took = time.monotonic() - started
    soak.converged[kind].append(took)
    try:
        await asyncio.wait_for(client.list_nodes(), 5.0)
    except (SchedulerError, TimeoutError) as exc:
        soak.violate(f"after {kind}: the API did not answer ({exc})")
    now = {row.name: row.pid for row in after}
    for row in before:
        if row.node in touched:
            continue
        if now.get(row.name) != row.pid or not psutil.pid_exists(row.pid):
            soak.violate(
                f"after {kind} (touching {', '.join(sorted(touched)) or 'no agent'}): "
                f"{row.name} on {row.node} was restarted (pid {row.pid} -> {now.get(row.name)})"
            )
    print(
        f"{began} {kind:20} touched {', '.join(sorted(touched)) or '-':8} "
        f"converged in {took:5.1f} s",
        flush=True,
    )


async def soak(seed: int, faults: int, workdir: Path) -> Soak:
    rng = random.Random(seed)
    found = Soak()
    app_dir = workdir / "app"
    app_dir.mkdir()
    (app_dir / "Procfile").write_text(PROCFILE)
    # The fence rides through a change of leader (lease 5 s, silence 5 s) and stays below
    # the node grace, as docs/operators.md advises for a singleton.
    settings = {"clock": pb.ProcessSettings(stop_after_disconnected=FENCE)}
    async with LocalCluster(
        agents=3, schedulers=2, node_grace=GRACE, stop_grace=2.0, log_to=workdir / "logs"
    ) as c:
        async with c.client(retry_for=30.0) as client:
            await client.create_app(APP)
            await client.deploy(APP, str(app_dir), PROCFILE, {}, settings)
            await client.scale(APP, parse_changes([f"{t}={n}" for t, n in FORMATION.items()]))
            await converge(client)
            # The checks can fail: with no agent counted as live, every process of the
            # app is outside one (a check that sees nothing would pass for ever).
            outside = [f for f in findings(set()) if "outside" in f]
            if len(outside) != TOTAL:
                raise RuntimeError(f"the /proc check sees {len(outside)} of {TOTAL} processes")
            watcher = asyncio.create_task(sampler(c, found))
            try:
                for _ in range(faults):
                    await one_fault(c, client, rng, rng.choice(sorted(FAULTS)), found)
            finally:
                watcher.cancel()
    return found


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument("--faults", type=int, default=12, help="how many (default 12)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the cluster's logs (the directory is printed)"
    )
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    print(f"chaos soak, seed {seed}, {args.faults} faults", flush=True)
    if args.keep:
        kept = Path(tempfile.mkdtemp(prefix="paas-chaos-"))
        print(f"logs kept in {kept / 'logs'}", flush=True)
        found = await soak(seed, args.faults, kept)
    else:
        with tempfile.TemporaryDirectory(prefix="paas-chaos-") as tmp:
            found = await soak(seed, args.faults, Path(tmp))
    for kind, times in sorted(found.converged.items()):
        print(
            f"{kind:20} {len(times):3}x  converged median {statistics.median(times):5.1f} s, "
            f"max {max(times):5.1f} s"
        )
    if found.violations:
        print(f"{len(found.violations)} violation(s); replay with --seed {seed}")
        return 1
    print(f"no violation (seed {seed})")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
