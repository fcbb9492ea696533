"""Simulated agents: real gRPC sessions with a real scheduler, and no processes.

Each SimAgent dials the scheduler's Session as `paas agent` does (hello with
its capacity, labels, memory and cores; heartbeats; TLS with its own node
certificate when given one) and reports every instance of each desired set
`up` at once, so placement can be tested and measured at the scale of
thousands of nodes from one or a few processes. Killing one ends its stream
without a goodbye, as a dead host would.

    fleet = SimFleet(cluster.scheduler_address, names, credentials=cluster.node_credentials)
    await fleet.start()            # every session welcomed
    fleet.running()                # (app, name) -> node, of what the fleet runs now
    await fleet.kill(["sim-0007"])
    await fleet.close()

Run as a program, it holds a fleet until killed (bench/placement_e2e.py starts a
few): `python -m tests.simagents --join ADDR --insecure --prefix sim --first 0 --count 1000`
prints `ready` once every session is welcomed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import grpc

from paas.common.grpcutil import CHANNEL_OPTIONS
from paas.common.pki import Credentials
from paas.common.tls import dial
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc

HEARTBEAT = 1.0  # seconds; the scheduler ends a session silent for 5
RETRY = 0.3  # seconds between dials while the scheduler does not answer
SESSIONS_PER_CHANNEL = 50  # without TLS, sessions share HTTP/2 connections


class SimAgent:
    """One simulated node: a session that reports each assignment up at once."""

    def __init__(
        self,
        name: str,
        channel: grpc.aio.Channel,
        capacity: int,
        labels: Mapping[str, str] | None = None,
        memory: int = 0,
        cpu: float = 0.0,
    ) -> None:
        self.name = name
        self._channel = channel  # the fleet's: it closes it
        self._hello = pb.Hello(
            name=name,
            address="127.0.0.1:1",  # serves nothing: `paas logs` of it fails, as it should
            capacity=capacity,
            labels=dict(labels or {}),
            memory=memory,
            cpu=cpu,
        )
        self.welcomed = asyncio.Event()
        # What the last desired set holds, each reported up: (app, name) -> assignment.
        self.assigned: dict[tuple[str, str], pb.Assignment] = {}
        self.desired_sets = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"sim agent {self.name}")

    async def stop(self) -> None:
        """End the session at once, without a goodbye (a host that died)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._session(pb_grpc.SchedulerStub(self._channel))
            self.welcomed.clear()
            await asyncio.sleep(RETRY)

    async def _session(self, stub: pb_grpc.SchedulerStub) -> None:
        outbox: asyncio.Queue[pb.AgentMessage] = asyncio.Queue()
        hello = pb.Hello()
        hello.CopyFrom(self._hello)
        hello.running.extend(self._statuses(self.assigned.values()))
        outbox.put_nowait(pb.AgentMessage(hello=hello))

        async def outgoing() -> AsyncIterator[pb.AgentMessage]:
            while True:
                try:
                    yield await asyncio.wait_for(outbox.get(), HEARTBEAT)
                except TimeoutError:
                    yield pb.AgentMessage(heartbeat=pb.Heartbeat(time=time.time()))

        session: Any = stub.Session  # the stubs type a stream call loosely
        async for message in session(outgoing()):
            kind = message.WhichOneof("kind")
            if kind == "welcome":
                self.welcomed.set()
            elif kind == "desired":
                self.desired_sets += 1
                wanted = {(a.app, a.name): a for a in message.desired.instances}
                fresh = [
                    a
                    for key, a in wanted.items()
                    if key not in self.assigned or self.assigned[key].incarnation != a.incarnation
                ]
                self.assigned = wanted
                for status in self._statuses(fresh):
                    outbox.put_nowait(pb.AgentMessage(status=status))

    @staticmethod
    def _statuses(assignments: Iterable[pb.Assignment]) -> list[pb.InstanceStatus]:
        now = time.time()
        return [
            pb.InstanceStatus(
                app=a.app,
                name=a.name,
                type=a.type,
                incarnation=a.incarnation,
                release=a.release,
                state=pb.UP,
                since=now,
                started_at=now,
            )
            for a in assignments
        ]


class SimFleet:
    """Many SimAgents of one process, dialling one scheduler: each on a channel of its
    own with TLS (its own certificate), else SESSIONS_PER_CHANNEL to a channel."""

    def __init__(
        self,
        address: str,
        names: Iterable[str],
        credentials: Callable[[str], Credentials | None] = lambda _name: None,
        capacity: int = 20,
        labels: Callable[[str], Mapping[str, str]] = lambda _name: {},
        memory: int = 0,
        cpu: float = 0.0,
    ) -> None:
        self._channels: list[grpc.aio.Channel] = []
        self.agents: dict[str, SimAgent] = {}
        for index, name in enumerate(names):
            creds = credentials(name)
            if creds is not None or index % SESSIONS_PER_CHANNEL == 0:
                self._channels.append(dial(address, creds, CHANNEL_OPTIONS))
            channel = self._channels[-1]
            self.agents[name] = SimAgent(name, channel, capacity, labels(name), memory, cpu)

    async def start(self) -> None:
        """Start every session; return once each is welcomed (the caller bounds it)."""
        for agent in self.agents.values():
            agent.start()
        await asyncio.gather(*(a.welcomed.wait() for a in self.agents.values()))

    def running(self) -> dict[tuple[str, str], str]:
        """What the fleet runs now: (app, instance) -> node (the last node to be told)."""
        return {key: a.name for a in self.agents.values() for key in a.assigned}

    async def kill(self, names: Iterable[str]) -> None:
        await asyncio.gather(*(self.agents.pop(name).stop() for name in list(names)))

    async def close(self) -> None:
        await self.kill(list(self.agents))
        for channel in self._channels:
            await channel.close(grace=None)


async def _main(args: argparse.Namespace) -> None:
    names = [f"{args.prefix}-{i:05d}" for i in range(args.first, args.first + args.count)]
    fleet = SimFleet(args.join, names, capacity=args.capacity)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with asyncio.timeout(args.ready_timeout):
        await fleet.start()
    print("ready", flush=True)
    await stop.wait()
    await fleet.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="hold a fleet of simulated agents")
    parser.add_argument("--join", required=True, help="the scheduler's address")
    parser.add_argument("--insecure", action="store_true", required=True, help="no TLS")
    parser.add_argument("--prefix", default="sim")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--capacity", type=int, default=20)
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
