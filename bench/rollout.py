"""Benchmark: a rolling, health-gated deploy of web=10 (issue 13).

Deploys a small HTTP app with web=10 on 3 agents, measures one instance's boot
(a scale-up by one: from its process's start to its health check passing, as
its agent reports it, in the same run),
then makes a new release (`paas config set MARK=two --no-wait`, so the clock
starts before the rollout does) and, every 50 ms while it rolls, lists the
instances and hits every listed `up` web instance's port. It prints

- the rollout's time (from just before `paas config set` to the release marked
  succeeded) against its floor, 10 x (boot + min_healthy) / max_parallel, and
  the ratio;
- the fewest web instances answering at any sample (goal: never below
  10 - max_parallel).

    .venv/bin/python bench/rollout.py [--instances 10] [--min-healthy 3] [--max-parallel 1]

It starts and stops its own LocalCluster; nothing is left running. Not part of
the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from paas.cli.localcluster import LocalCluster
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from paas.proto.paas_pb2_grpc import SchedulerAsyncStub

APP = "bench"
POLL = 0.05
APP_PY = """\
import http.server, os

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ.get("MARK", "none").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


async def paas(cluster: LocalCluster, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "paas",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **cluster.client_env(), "PAAS_APP": APP, "NO_COLOR": "1"},
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise BenchError(f"paas {' '.join(args)}: {err.decode().strip()}")
    return out.decode()


def write_app(where: Path, mark: str, min_healthy: float, max_parallel: int) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "app.py").write_text(APP_PY)
    (where / "Procfile").write_text("web: exec python3 -u app.py\n")
    (where / ".env").write_text(f"MARK={mark}\n")
    (where / "paas.toml").write_text(
        f"[types.web]\nmin_healthy = {min_healthy}\nmax_parallel = {max_parallel}\n"
    )
    return where


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def web(stub: SchedulerAsyncStub) -> list[pb.InstanceView]:
    listed = await stub.ListInstances(pb.ListInstancesRequest(app=APP))
    return [i for i in listed.instances if i.type == "web"]


async def until_up(stub: SchedulerAsyncStub, count: int, release: int, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        rows = await web(stub)
        if len(rows) == count and all(r.state == pb.UP and r.release == release for r in rows):
            return
        await asyncio.sleep(POLL)
    raise BenchError(f"{count} web instances were not up on v{release} within {within:g}s")


async def release_status(cluster: LocalCluster, version: int) -> str:
    import aetcd

    host, port = cluster.etcd_endpoint.rsplit(":", 1)
    client = aetcd.Client(host=host, port=int(port))
    try:
        found = await client.get(f"/paas/releases/{APP}/{version:010d}".encode())
    finally:
        await client.close()
    return str(json.loads(found.value)["status"]) if found else ""


async def bench(count: int, min_healthy: float, max_parallel: int, workdir: Path) -> None:
    async with LocalCluster(agents=3, log_to=workdir / "logs", stop_grace=2.0) as cluster:
        async with cluster.channel() as channel:
            stub: SchedulerAsyncStub = pb_grpc.SchedulerStub(channel)  # type: ignore[assignment]
            await paas(cluster, "apps", "create", APP)
            where = workdir / "app"
            await paas(cluster, "deploy", str(write_app(where, "one", min_healthy, max_parallel)))
            await paas(cluster, "scale", f"web={count}")
            await until_up(stub, count, 1, 120)

            # One boot, measured: a scale-up by one (the process's start to its health
            # check passing, as its agent reports it), then back.
            started = time.monotonic()
            await paas(cluster, "scale", f"web={count + 1}")
            await until_up(stub, count + 1, 1, 60)
            scaled = time.monotonic() - started
            [extra] = [r for r in await web(stub) if r.name == f"web.{count + 1}"]
            boot = extra.since - extra.started_at
            await paas(cluster, "scale", f"web={count}")
            await until_up(stub, count, 1, 60)

            samples: list[int] = []
            done = asyncio.Event()

            async def poll() -> None:
                while not done.is_set():
                    ports = [r.port for r in await web(stub) if r.state == pb.UP]
                    got = await asyncio.gather(*(asyncio.to_thread(answers, p) for p in ports))
                    samples.append(sum(got))
                    await asyncio.sleep(POLL)

            poller = asyncio.create_task(poll())
            await asyncio.sleep(0.5)
            started = time.monotonic()
            await paas(cluster, "config", "set", "MARK=two", "--no-wait")
            while await release_status(cluster, 2) != "succeeded":
                if await release_status(cluster, 2) == "failed":
                    raise BenchError("the rollout failed (see the scheduler's log)")
                if time.monotonic() - started > 600:
                    raise BenchError("the rollout did not finish within 600 s")
                await asyncio.sleep(POLL)
            took = time.monotonic() - started
            done.set()
            await poller

    floor = count * (boot + min_healthy) / max_parallel
    goal = count - max_parallel
    print(
        f"boot:    one web instance up {boot:.2f} s after its process started "
        f"({scaled:.2f} s from `paas scale` to up; measured in this run)"
    )
    print(
        f"rollout: web={count} to v2 in {took:.2f} s; floor {count} x ({boot:.2f} + "
        f"{min_healthy:g}) / {max_parallel} = {floor:.2f} s; ratio {took / floor:.2f}x"
    )
    print(
        f"serving: fewest answering at any of {len(samples)} samples: {min(samples)} of {count} "
        f"(goal: never below {goal}){'' if min(samples) >= goal else '  BELOW THE GOAL'}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--min-healthy", type=float, default=3.0)
    parser.add_argument("--max-parallel", type=int, default=1)
    args = parser.parse_args()
    if args.instances < 1 or args.max_parallel < 1 or not math.isfinite(args.min_healthy):
        parser.error("--instances and --max-parallel from 1, --min-healthy a number")
    with tempfile.TemporaryDirectory(prefix="paas-bench-rollout-") as workdir:
        try:
            asyncio.run(bench(args.instances, args.min_healthy, args.max_parallel, Path(workdir)))
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
