"""Benchmark: `paas scale web=N` until N instances are up, against a floor.

The cluster time runs from launching `paas scale web=N` (the real CLI, on a
LocalCluster of 3 agents) until `paas ps --json`, polled every 50 ms, shows N
web instances `up`. The agent counts a web instance up once it accepts a TCP
connection on $PORT.

The floor, measured in the same run, is the least that work can cost on this
machine: the same N processes (same command, same directory, each with its
own $PORT) started straight from this one Python process with
asyncio.create_subprocess_exec, and polled every 50 ms until each port
accepts a TCP connection. The goal is to stay within 2x the floor.

    .venv/bin/python bench/scale.py            # N = 50
    .venv/bin/python bench/scale.py --n 200 --agents 5
    .venv/bin/python bench/scale.py --floor-only

Every process it starts is stopped before it exits, and it checks with psutil
that none is left; a leftover is killed, named and makes the exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

POLL_INTERVAL = 0.05  # seconds between two polls, for the floor and the cluster alike
# Clear of LocalCluster's agent port ranges (20000 up, 1000 per agent) and below the
# kernel's ephemeral range, where our own polling connections take their local ports.
FLOOR_PORTS_FROM = 30000
APP = "bench"

# The web process of the benchmark app: as small as an HTTP server gets with the
# standard library, quiet, and gone on SIGTERM.
SERVER = '''\
"""A minimal HTTP server on $PORT for the scale benchmark."""
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Ok(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\\n")

    def log_message(self, format, *args):
        pass


signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
server = ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Ok)
print("listening on", os.environ["PORT"], flush=True)
server.serve_forever()
'''
COMMAND = "python3 server.py"
PROCFILE = f"web: {COMMAND}\n"


class BenchError(RuntimeError):
    """The benchmark could not measure what it set out to; the message says why."""


@dataclass
class Tracked:
    """Every process this run started, directly or through the cluster, for the final
    check: pid -> start time, so a pid reused by an unrelated process is never counted."""

    started: dict[int, float] = field(default_factory=dict)

    def add(self, pids: Iterable[int]) -> None:
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                self.started.setdefault(pid, psutil.Process(pid).create_time())

    def add_tree(self, pid: int) -> None:
        """`pid` and all its descendants."""
        self.add([pid, *descendant_pids(pid)])


# ---------------------------------------------------------------- the app


def make_app_dir(parent: Path) -> Path:
    app_dir = parent / "app"
    app_dir.mkdir()
    (app_dir / "Procfile").write_text(PROCFILE)
    (app_dir / "server.py").write_text(SERVER)
    return app_dir


def instance_env(port: int, number: int) -> dict[str, str]:
    """What the agent gives an instance, so the floor's processes see the same."""
    name = f"web.{number}"
    return dict(
        os.environ,
        PORT=str(port),
        PAAS_APP=APP,
        PAAS_PROCESS_TYPE="web",
        PAAS_INSTANCE=name,
        DYNO=name,
    )


def spawn_argv(command: str) -> list[str]:
    # As the agent runs a Procfile command: through the shell, so $VARS and
    # redirections in it work.
    return ["/bin/sh", "-c", command]


# ---------------------------------------------------------------- the floor


def ephemeral_low() -> int:
    """The first port of the range the kernel picks outgoing connections' ports from."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(count: int, start: int = FLOOR_PORTS_FROM) -> list[int]:
    """`count` ports from `start` up, below the ephemeral range, that a server could
    bind on 0.0.0.0 now."""
    ports: list[int] = []
    port = start
    end = ephemeral_low() if ephemeral_low() > start else 65536
    while len(ports) < count:
        if port >= end:
            raise BenchError(f"fewer than {count} free ports from {start} to {end - 1}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("0.0.0.0", port))
                ports.append(port)
            except OSError:
                pass
        port += 1
    return ports


async def accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def wait_accepting(process: asyncio.subprocess.Process, port: int, deadline: float) -> None:
    while not await accepts(port):
        if process.returncode is not None:
            raise BenchError(
                f"floor process on port {port} exited with status {process.returncode}"
            )
        if time.monotonic() > deadline:
            raise BenchError(f"floor process on port {port} did not accept within the timeout")
        await asyncio.sleep(POLL_INTERVAL)


async def stop_processes(processes: Sequence[asyncio.subprocess.Process]) -> None:
    """SIGTERM each process group, then SIGKILL what is left after 5 s."""
    for process in processes:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
    waits = [process.wait() for process in processes]
    try:
        await asyncio.wait_for(asyncio.gather(*waits), 5.0)
    except TimeoutError:
        for process in processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        await asyncio.gather(*(process.wait() for process in processes))


async def measure_floor(app_dir: Path, n: int, limit: float, tracked: Tracked) -> float:
    """Seconds from the first spawn until all `n` processes accept on their ports."""
    ports = free_ports(n)
    processes: list[asyncio.subprocess.Process] = []
    try:
        start = time.perf_counter()
        for number, port in enumerate(ports, start=1):
            process = await asyncio.create_subprocess_exec(
                *spawn_argv(COMMAND),
                cwd=app_dir,
                env=instance_env(port, number),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # as the agent does: one process group each
            )
            processes.append(process)
            tracked.add([process.pid])
        deadline = time.monotonic() + limit
        await asyncio.gather(
            *(
                wait_accepting(process, port, deadline)
                for process, port in zip(processes, ports, strict=True)
            )
        )
        elapsed = time.perf_counter() - start
        # The shell may have exec'd python or kept it as a child: note both.
        for process in processes:
            tracked.add_tree(process.pid)
        return elapsed
    finally:
        await stop_processes(processes)


# ---------------------------------------------------------------- the cluster


@dataclass(frozen=True)
class CliRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


async def paas(scheduler: str, *args: str) -> CliRun:
    """Run the real `paas` command line against `scheduler`, for app `bench`."""
    env = dict(os.environ, PAAS_SCHEDULER=scheduler, PAAS_APP=APP, NO_COLOR="1")
    start = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "paas",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60.0)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise BenchError(f"`paas {' '.join(args)}` did not finish within 60 s") from None
    assert process.returncode is not None
    return CliRun(process.returncode, stdout.decode(), stderr.decode(), time.perf_counter() - start)


async def must(scheduler: str, *args: str) -> CliRun:
    result = await paas(scheduler, *args)
    if result.returncode != 0:
        raise BenchError(f"`paas {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


@dataclass
class ClusterResult:
    seconds: float  # until the end of the first `paas ps --json` that showed all up
    last_poll_started: float  # when that poll began: the instances were up by its answer
    last_up: float | None  # the latest `since` of the up instances: the agents' own stamp
    scale_seconds: float  # how long `paas scale` itself took
    polls: int
    ps_seconds: list[float]
    per_node: dict[str, int]


async def ps_rows(scheduler: str) -> tuple[list[dict[str, Any]], float]:
    result = await must(scheduler, "ps", "--json")
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows, result.seconds


async def measure_cluster(
    app_dir: Path,
    n: int,
    agents: int,
    logs: Path,
    limit: float,
    tracked: Tracked,
    tls: bool = True,
) -> ClusterResult:
    """Seconds from launching `paas scale web=n` until `paas ps --json` shows n up."""
    from paas.cli.localcluster import LocalCluster

    async with LocalCluster(agents=agents, log_to=logs, tls=tls) as cluster:
        tracked.add(descendant_pids(os.getpid()))
        scheduler = cluster.scheduler_address
        # For the `paas` commands it runs: this cluster's credentials, or plaintext.
        for name in ("PAAS_CREDENTIALS", "PAAS_INSECURE"):
            os.environ.pop(name, None)
        os.environ.update(cluster.credentials_env())
        await must(scheduler, "apps", "create", APP)
        await must(scheduler, "deploy", str(app_dir))

        start = time.perf_counter()
        wall_start = time.time()  # `since` in `paas ps` is wall-clock time
        scale_seconds = (await must(scheduler, "scale", f"web={n}")).seconds
        polls = 0
        ps_seconds: list[float] = []
        deadline = time.monotonic() + limit
        while True:
            poll_started = time.perf_counter() - start
            rows, seconds = await ps_rows(scheduler)
            polls += 1
            ps_seconds.append(seconds)
            web = [row for row in rows if row.get("type") == "web"]
            if len(web) == n and all(row.get("state") == "up" for row in web):
                break
            if time.monotonic() > deadline:
                states = Counter(str(row.get("state")) for row in web)
                raise BenchError(
                    f"{n} web instances not up within {limit:g} s "
                    f"(last `paas ps`: {dict(states)}; logs in {logs})"
                )
            await asyncio.sleep(POLL_INTERVAL)
        elapsed = time.perf_counter() - start
        since = [row.get("since_unix") for row in web]
        stamps = [float(value) for value in since if isinstance(value, int | float)]
        last_up = max(stamps) - wall_start if stamps else None

        for row in web:
            pid = row.get("pid")
            if isinstance(pid, int) and pid > 0:
                tracked.add_tree(pid)
        tracked.add(descendant_pids(os.getpid()))
        per_node = dict(sorted(Counter(str(row.get("node")) for row in web).items()))

        # Stop the instances through the cluster itself before stopping the cluster.
        await must(scheduler, "scale", "web=0")
        with contextlib.suppress(BenchError):
            for _ in range(150):  # 30 s; LocalCluster.stop() is the backstop
                if not (await ps_rows(scheduler))[0]:
                    break
                await asyncio.sleep(0.2)
    return ClusterResult(elapsed, poll_started, last_up, scale_seconds, polls, ps_seconds, per_node)


# ---------------------------------------------------------------- leftovers


def descendant_pids(pid: int) -> set[int]:
    try:
        return {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def leftovers(tracked: Tracked, app_dir: Path) -> list[psutil.Process]:
    """Processes this run started that are still alive: any descendant of this
    process, any pid it recorded, any process working in the app directory."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.Process().children(recursive=True):
        found[proc.pid] = proc
    for pid, started in tracked.started.items():
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.create_time() == started:  # still that process, not a reused pid
                found.setdefault(pid, proc)
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if Path(proc.cwd()) == app_dir:
                found.setdefault(proc.pid, proc)
    me = os.getpid()
    return [proc for proc in found.values() if proc.pid != me and alive(proc)]


def describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} ({' '.join(proc.cmdline())[:80]})"
    except psutil.Error:
        return str(proc.pid)


def check_leftovers(tracked: Tracked, app_dir: Path) -> list[str]:
    """Kill and name what is left; an empty list means nothing was."""
    deadline = time.monotonic() + 5.0
    left = leftovers(tracked, app_dir)
    while left and time.monotonic() < deadline:  # a process may still be exiting
        time.sleep(0.1)
        left = leftovers(tracked, app_dir)
    names = [describe(proc) for proc in left]
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return names


# ---------------------------------------------------------------- main


@contextlib.contextmanager
def work_dir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="paas-bench-"))
    failed = True
    try:
        yield path
        failed = False
    finally:
        if failed or keep:
            print(f"kept {path} (app, cluster logs)", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


async def warm_up(app_dir: Path, tracked: Tracked) -> None:
    """Start one server once, so neither measurement pays for a cold page cache."""
    await measure_floor(app_dir, 1, 30.0, tracked)


async def bench(args: argparse.Namespace, root: Path, tracked: Tracked) -> None:
    app_dir = make_app_dir(root)
    n: int = args.n
    print(
        f"paas bench scale: web={n} on {args.agents} agents, polling every "
        f"{POLL_INTERVAL * 1000:g} ms"
    )
    await warm_up(app_dir, tracked)

    floor = await measure_floor(app_dir, n, args.timeout, tracked)
    print(
        f"floor:   {n} processes accepting in {floor:6.2f} s "
        "(asyncio.create_subprocess_exec from one process)"
    )
    if args.floor_only:
        return

    modes = {"on": [True], "off": [False], "both": [True, False]}[args.tls]
    seconds: dict[bool, float] = {}
    for tls in modes:
        label = "TLS on" if tls else "TLS off"
        logs = root / ("logs-tls" if tls else "logs-plain")
        result = await measure_cluster(app_dir, n, args.agents, logs, args.timeout, tracked, tls)
        seconds[tls] = result.seconds
        report_cluster(n, result, floor, label)
    if len(seconds) == 2:
        print(f"TLS cost: with TLS, {seconds[True] / seconds[False]:.2f}x the time without")


def report_cluster(n: int, result: ClusterResult, floor: float, label: str) -> None:
    spread = ", ".join(f"{node} {count}" for node, count in result.per_node.items())
    print(
        f"cluster: {n} instances up in {result.seconds:6.2f} s "
        f"(`paas scale web={n}` until `paas ps --json` shows them up; {spread}; {label})"
    )
    print(
        f"         `paas scale` took {result.scale_seconds:.2f} s; {result.polls} polls of "
        f"`paas ps --json`, {statistics.median(result.ps_seconds):.2f} s each (median); "
        f"the one that saw all up started at {result.last_poll_started:.2f} s"
    )
    if result.last_up is not None:
        print(
            f"         the agents stamped the last instance up at {result.last_up:.2f} s "
            f"({result.last_up / floor:.2f}× the floor, without the polling granularity)"  # noqa: RUF001
        )
    ratio = result.seconds / floor
    print(f"ratio ({label}): {ratio:.2f}× the floor (goal: within 2×)")  # noqa: RUF001


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/scale.py",
        description="Time `paas scale web=N` until N instances are up, against the floor "
        "of starting the same N processes straight from one Python process.",
    )
    parser.add_argument("--n", type=int, default=50, help="instances to start (default: 50)")
    parser.add_argument("--agents", type=int, default=3, help="agents in the cluster (default: 3)")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for each measurement"
    )
    parser.add_argument(
        "--floor-only", action="store_true", help="measure only the floor (no cluster)"
    )
    parser.add_argument(
        "--tls",
        choices=("on", "off", "both"),
        default="both",
        help="the cluster with TLS, without, or both in the same run (default: both)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (app, cluster logs)"
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.agents < 1:
        parser.error("--n and --agents must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tracked = Tracked()
    status = 0
    with work_dir(args.keep) as root:
        try:
            asyncio.run(bench(args, root, tracked))
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
        except KeyboardInterrupt:
            status = 130
        finally:
            left = check_leftovers(tracked, (root / "app").resolve())
            if left:
                print(
                    f"error: {len(left)} processes were left behind and are now killed: "
                    + ", ".join(left),
                    file=sys.stderr,
                )
                status = 1
            else:
                print("cleanup: no process left behind")
        if status:
            raise SystemExit(status)  # keeps the work dir for a look
    return status


if __name__ == "__main__":
    sys.exit(main())
