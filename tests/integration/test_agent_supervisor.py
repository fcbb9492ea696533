"""The supervisor with real processes and a real reaper, no scheduler: desired sets in,
processes, states and log lines out. Every test ends with no process left behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from paas.agent.config import AgentConfig
from paas.agent.logbuffer import LogHub, LogLine
from paas.agent.orphans import AGENT_ID_VAR, RUN_ID_VAR, OrphanReaper, is_subreaper
from paas.agent.ports import PortPool
from paas.agent.processes import group_alive, install_child_watcher
from paas.agent.reaper import (
    STATE_FILE,
    Reaper,
    ReaperError,
    leader_create_time,
    read_state,
)
from paas.agent.supervisor import State, Supervisor
from paas.common import ports
from paas.proto import paas_pb2 as pb
from tests.helpers import child_pids, children_since

pytestmark = pytest.mark.integration

T = TypeVar("T")
PY = sys.executable
APP = "shop"
WEB = f"exec {PY} -u -m http.server $PORT --bind 127.0.0.1"
# A shell with two grandchildren in its process group.
SLEEPERS = "echo sleepers up; sleep 1000 & sleep 1001 & wait"
# A daemon's double fork: it leaves the process group and session, and appends its
# pid to the file it is given once it is on its own.
DAEMON = textwrap.dedent(
    """
    import os, sys, time
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    with open(sys.argv[1], "a") as pids:
        pids.write(f"{os.getpid()}\\n")
    time.sleep(1000)
    """
)


async def eventually(
    condition: Callable[[], T | None],
    what: str,
    timeout: float = 20.0,  # noqa: ASYNC109
) -> T:
    """Poll `condition` every 50 ms until it is truthy; fail naming `what` after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


def forget_child_watcher() -> None:
    """Let later tests (other loops) get asyncio's default watcher again (Python 3.11)."""
    if sys.version_info < (3, 12):
        asyncio.get_event_loop_policy().set_child_watcher(None)  # type: ignore[arg-type]


def live(pids: list[int]) -> list[int]:
    """The pids that still run (zombies count as gone)."""
    result = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                result.append(pid)
        except psutil.NoSuchProcess:
            pass
    return result


def tree(pid: int) -> list[int]:
    try:
        root = psutil.Process(pid)
        return [pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def tree_of(pid: int, size: int) -> list[int] | None:
    """The process tree of `pid` once it has at least `size` processes."""
    found = tree(pid)
    return found if len(found) >= size else None


def free_range(width: int = 20) -> tuple[int, int]:
    return ports.free_range(width)


def assignment(
    name: str,
    command: str,
    incarnation: int = 1,
    env: dict[str, str] | None = None,
    dir: str = "/tmp",
    settings: pb.ProcessSettings | None = None,
) -> pb.Assignment:
    return pb.Assignment(
        app=APP,
        name=name,
        type=name.rpartition(".")[0],
        incarnation=incarnation,
        release=1,
        command=command,
        dir=dir,
        env=env or {},
        settings=settings,
    )


@dataclass
class Node:
    """A supervisor with its reaper, the statuses it reported and every group it ran."""

    config: AgentConfig
    supervisor: Supervisor
    logs: LogHub
    reaper: Reaper
    statuses: list[pb.InstanceStatus] = field(default_factory=list)
    pgids: set[int] = field(default_factory=set)
    generation: int = 0

    def on_status(self, status: pb.InstanceStatus) -> None:
        self.statuses.append(status)
        if status.pid:
            self.pgids.add(status.pid)

    def apply(self, *assignments: pb.Assignment) -> bool:
        self.generation += 1
        return self.supervisor.apply(
            pb.DesiredSet(generation=self.generation, instances=list(assignments))
        )

    def status(self, name: str) -> pb.InstanceStatus | None:
        instance = self.supervisor.instance(APP, name)
        return instance.status() if instance else None

    def state(self, name: str) -> State | None:
        instance = self.supervisor.instance(APP, name)
        return instance.state if instance else None

    def lines(self, name: str) -> list[LogLine]:
        return self.logs.buffer(APP, name).tail(10_000)

    def texts(self, name: str) -> list[str]:
        return [line.text for line in self.lines(name)]

    async def up(self, name: str, timeout: float = 20.0) -> pb.InstanceStatus:  # noqa: ASYNC109
        await eventually(lambda: self.state(name) is State.UP, f"{name} up", timeout)
        status = self.status(name)
        assert status is not None
        return status


NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[NodeFactory]:
    """Start nodes (supervisor + reaper) with short timings; at teardown stop them and
    prove that no process of theirs is left. The test process is a child subreaper
    meanwhile, with an orphan reaper, as `paas agent` is."""
    install_child_watcher()
    orphans = OrphanReaper(own_all_children=False)  # pytest has children of its own
    orphans.start()
    nodes: list[Node] = []
    before = child_pids()

    async def start(**overrides: Any) -> Node:
        settings: dict[str, Any] = {
            "join": ["127.0.0.1:1"],
            "name": f"node-{len(nodes) + 1}",
            "state_dir": tmp_path / "state",
            "ports": free_range(),
            "stop_grace": 2.0,
            "boot_timeout": 15.0,
            "restart_base": 0.1,
            "restart_cap": 0.4,
            "log_buffer_lines": 1000,
        }
        settings.update(overrides)
        config = AgentConfig(**settings)
        reaper = Reaper(config.state_dir / config.name)
        await reaper.start()
        logs = LogHub(config.name, config.log_buffer_lines)
        node = Node(config, Supervisor(config, logs, PortPool(*config.ports), reaper), logs, reaper)
        node.supervisor.add_listener(node.on_status)
        nodes.append(node)
        return node

    try:
        yield start
    finally:
        for node in nodes:
            await node.supervisor.close()
            await node.reaper.close()
        try:
            for node in nodes:
                await eventually(
                    lambda node=node: not any(group_alive(pgid) for pgid in node.pgids),  # type: ignore[misc]
                    "every process group to be gone",
                )
            await eventually(
                lambda: not children_since(before), "no child process of the test left"
            )
        finally:
            for node in nodes:
                for pgid in node.pgids:
                    with_suppress_kill(pgid)
            await orphans.close()
            forget_child_watcher()


def gone(pids: list[int]) -> bool:
    """None of `pids` exists any more, not even as a zombie: someone waited for each."""
    return not any(psutil.pid_exists(pid) for pid in pids)


def zombie_children() -> list[int]:
    found = []
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def read_pids(path: Path, count: int) -> list[int] | None:
    """The pids written to `path`, once there are `count` of them."""
    try:
        pids = [int(line) for line in path.read_text().split()]
    except (FileNotFoundError, ValueError):
        return None
    return pids if len(pids) >= count else None


def with_suppress_kill(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------- starting and output


async def test_a_web_instance_comes_up_on_its_port_with_its_environment(
    start_node: NodeFactory,
) -> None:
    node = await start_node()
    command = (
        'echo "PORT=$PORT DYNO=$DYNO PAAS_INSTANCE=$PAAS_INSTANCE PAAS_APP=$PAAS_APP '
        'PAAS_PROCESS_TYPE=$PAAS_PROCESS_TYPE GREETING=$GREETING"; ' + WEB
    )
    assert node.apply(assignment("web.3", command, env={"GREETING": "hello"}))
    status = await node.up("web.3")

    low, high = node.config.ports
    assert low <= status.port <= high
    assert status.pid > 0 and status.incarnation == 1 and status.release == 1
    assert status.state == pb.UP
    texts = node.texts("web.3")
    assert (
        f"PORT={status.port} DYNO=web.3 PAAS_INSTANCE=web.3 PAAS_APP=shop "
        "PAAS_PROCESS_TYPE=web GREETING=hello"
    ) in texts
    assert "State changed from starting to up" in texts

    reader, writer = await asyncio.open_connection("127.0.0.1", status.port)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.0 200")
    writer.close()
    await writer.wait_closed()
    await eventually(
        lambda: any('"GET / HTTP/1.0" 200' in t for t in node.texts("web.3")),
        "the request in the log",
    )
    lines = node.lines("web.3")
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
    assert {line.stream for line in lines} == {"paas", "stdout", "stderr"}
    assert all(line.app == APP and line.node == node.config.name for line in lines)


async def test_output_lines_land_in_the_buffer_in_order_with_increasing_seq(
    start_node: NodeFactory,
) -> None:
    node = await start_node()
    command = (
        "i=1; while [ $i -le 200 ]; do echo out $i; i=$((i+1)); done; echo err >&2; sleep 1000"
    )
    node.apply(assignment("worker.1", command))
    await eventually(lambda: "err" in node.texts("worker.1"), "the output")
    out = [line for line in node.lines("worker.1") if line.stream == "stdout"]
    assert [line.text for line in out] == [f"out {i}" for i in range(1, 201)]
    seqs = [line.seq for line in node.lines("worker.1")]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_the_pid_is_the_apps_own_process_not_a_wrapper_shell(
    start_node: NodeFactory,
) -> None:
    node = await start_node()
    node.apply(assignment("worker.1", "sleep 1000"))
    status = await node.up("worker.1")
    process = psutil.Process(status.pid)
    assert process.cmdline() == ["sleep", "1000"]  # bash ran it in its own place
    assert os.getpgid(status.pid) == status.pid and os.getsid(status.pid) == status.pid
    environ = process.environ()
    assert environ[AGENT_ID_VAR] == node.supervisor.agent_id == node.reaper.agent_id
    assert environ[AGENT_ID_VAR].startswith(f"{node.config.name}-")
    assert environ[RUN_ID_VAR].startswith(f"{node.config.name}-")
    assert environ[RUN_ID_VAR] != environ[AGENT_ID_VAR]


async def test_each_run_carries_its_own_run_token(start_node: NodeFactory) -> None:
    node = await start_node()
    node.apply(assignment("worker.1", f'echo "run ${RUN_ID_VAR} of ${AGENT_ID_VAR}"; exit 1'))

    def three_runs() -> list[list[str]] | None:
        # A restart is counted when the run starts, before its line is read: wait on lines.
        runs = [t.split() for t in node.texts("worker.1") if t.startswith("run ")]
        return runs if len(runs) >= 3 else None

    runs = await eventually(three_runs, "the lines of three runs")
    assert len({run[1] for run in runs}) == len(runs)  # a new token for every run
    assert {run[3] for run in runs} == {node.supervisor.agent_id}


# ---------------------------------------------------------------- crashes


async def test_a_crashed_instance_is_restarted_on_the_same_port(
    start_node: NodeFactory,
) -> None:
    node = await start_node()
    node.apply(assignment("worker.1", "echo running on $PORT; exit 3"))
    await eventually(
        lambda: (s := node.status("worker.1")) is not None and s.restarts >= 3, "three restarts"
    )
    status = node.status("worker.1")
    assert status is not None and status.last_exit == "exit 3"
    texts = node.texts("worker.1")
    assert "Process exited with status 3" in texts
    assert "State changed from up to crashed" in texts
    assert "Restarting now" in texts  # the first restart is at once
    assert any(t.startswith("Restarting in ") for t in texts)  # then with backoff
    ports = {s.port for s in node.statuses if s.name == "worker.1" and s.port}
    assert ports == {status.port}
    assert texts.count(f"running on {status.port}") >= 3
    states = {s.state for s in node.statuses if s.name == "worker.1"}
    assert {pb.STARTING, pb.UP, pb.CRASHED, pb.BACKOFF} <= states


async def test_a_kept_port_another_process_took_is_replaced_on_the_next_start(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    node = await start_node()
    # Up until told to crash: then the next run waits for a file that never comes.
    crash = f"while [ ! -e {tmp_path}/crash-$PORT ]; do sleep 0.05; done; exit 1"
    node.apply(assignment("worker.1", f"echo running on $PORT; {crash}"))
    first = await node.up("worker.1")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("0.0.0.0", first.port))  # someone else's server, meanwhile
        squatter.listen()
        (tmp_path / f"crash-{first.port}").touch()
        await eventually(
            lambda: (
                (s := node.status("worker.1")) is not None and s.restarts == 1 and s.state == pb.UP
            ),
            "worker.1 up again",
        )
        status = node.status("worker.1")
        assert status is not None and status.port != first.port
        texts = node.texts("worker.1")
        assert f"port {first.port} is taken by another process; using {status.port}" in texts
        assert f"running on {status.port}" in texts
        assert node.supervisor.ports.held((APP, "worker.1", 1)) == status.port


async def test_two_agents_with_one_port_range_never_give_out_the_same_port(
    start_node: NodeFactory,
) -> None:
    # Two agents of one host with the same --ports, their web instances starting at
    # once and binding 0.0.0.0: each gets a port of its own, and every one comes up.
    ports = free_range()
    nodes = [await start_node(ports=ports), await start_node(ports=ports)]
    wildcard = f"exec {PY} -u -m http.server $PORT --bind 0.0.0.0"
    webs = [assignment(f"web.{i}", wildcard) for i in range(1, 4)]
    for node in nodes:
        node.apply(*webs)
    given = []
    for node in nodes:
        for web in webs:
            status = await node.up(web.name)
            given.append(status.port)
            assert status.restarts == 0
    assert len(set(given)) == len(given) == 6


async def test_a_crash_keeps_its_forensics_for_ps(start_node: NodeFactory) -> None:
    node = await start_node(restart_base=60.0)
    command = "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo line $i; done; echo oops >&2; exit 2"
    before = time.time()
    node.apply(assignment("worker.1", command))
    backoff = await eventually(
        lambda: next((s for s in node.statuses if s.state == pb.BACKOFF), None), "backoff"
    )
    assert backoff.last_exit == "exit 2"
    assert list(backoff.last_lines) == [f"line {i}" for i in range(4, 13)] + ["oops"]
    assert before <= backoff.started_at <= backoff.exited_at <= time.time()
    assert backoff.ran_for == pytest.approx(backoff.exited_at - backoff.started_at, abs=0.01)
    assert backoff.next_start > backoff.exited_at  # the immediate restart came first
    assert backoff.restarts == 1
    runs = {line.run for line in node.lines("worker.1") if line.stream == "stdout"}
    assert runs == {1, 2}


async def test_per_type_settings_override_the_agent_defaults(start_node: NodeFactory) -> None:
    node = await start_node(stop_grace=60.0, boot_timeout=60.0)
    quick_stop = pb.ProcessSettings(stop_grace=0.3)
    no_check = pb.ProcessSettings(check=pb.ProcessSettings.CHECK_NONE)
    port_check = pb.ProcessSettings(check=pb.ProcessSettings.CHECK_PORT, boot_timeout=0.3)
    node.apply(
        assignment("web.1", "sleep 1000", settings=no_check),  # up without listening
        assignment("worker.1", "trap '' TERM; sleep 1000 & wait", settings=quick_stop),
        assignment("api.1", "sleep 1000", settings=port_check),  # must listen, never does
    )
    await node.up("web.1")
    await node.up("worker.1")
    crash = await eventually(
        lambda: next((s for s in node.statuses if s.state == pb.CRASHED), None), "api.1 crash"
    )
    assert crash.name == "api.1" and crash.reason.startswith("boot timeout")

    started = time.monotonic()
    node.apply(assignment("web.1", "sleep 1000", settings=no_check))
    await eventually(lambda: node.supervisor.instance(APP, "worker.1") is None, "worker.1 gone")
    assert time.monotonic() - started < 30  # its own 0.3 s grace, not the agent's 60 s
    assert "Stopping remaining processes with SIGKILL" in node.texts("worker.1")


async def test_resource_use_of_the_process_group_is_reported(start_node: NodeFactory) -> None:
    node = await start_node(usage_interval=0.2)
    # A child that holds 64 MiB: the whole group counts, not just the leader.
    hog = f"{PY} -c 'import time; x = bytearray(64 << 20); time.sleep(1000)' & wait"
    node.apply(assignment("worker.1", hog))
    await node.up("worker.1")
    report = await eventually(
        lambda: next(
            (s for s in node.statuses if s.name == "worker.1" and s.rss_bytes > 64 << 20), None
        ),
        "a report with the child's memory",
    )
    assert report.state == pb.UP and report.cpu_percent >= 0


async def test_an_exit_0_counts_as_a_crash(start_node: NodeFactory) -> None:
    node = await start_node()
    node.apply(assignment("clock.1", "echo tick"))
    await eventually(
        lambda: (s := node.status("clock.1")) is not None and s.restarts >= 1, "a restart"
    )
    assert "Process exited with status 0" in node.texts("clock.1")


async def test_what_a_crashed_leader_leaves_in_its_group_is_killed(
    start_node: NodeFactory,
) -> None:
    node = await start_node(restart_base=60.0)  # one immediate restart, then a long backoff
    node.apply(assignment("worker.1", "sleep 1000 & echo child $!; sleep 0.2; exit 1"))

    def children() -> list[int] | None:
        pids = [int(t.split()[1]) for t in node.texts("worker.1") if t.startswith("child ")]
        return pids[:2] if len(pids) >= 2 else None

    sleeps = await eventually(children, "two runs")
    await eventually(lambda: not live(sleeps), "the leftover sleeps to die")
    await eventually(lambda: node.state("worker.1") is State.BACKOFF, "backoff")
    # They had re-parented to the agent (a subreaper), which waited for them.
    await eventually(lambda: gone(sleeps), "the leftover sleeps to be reaped, not zombies")


async def test_a_command_that_is_not_found_crashes_with_a_clear_reason_and_backs_off(
    start_node: NodeFactory,
) -> None:
    node = await start_node(restart_base=60.0)
    node.apply(assignment("worker.1", "no-such-command-paas-test --serve"))
    await eventually(lambda: node.state("worker.1") is State.BACKOFF, "backoff")
    crashes = [s for s in node.statuses if s.state == pb.CRASHED]
    assert len(crashes) == 2  # the first restart is at once, then the backoff
    crash = crashes[-1]
    assert crash.last_exit == "exit 127"
    assert crash.reason.startswith("exit 127: command not found")
    assert any("no-such-command-paas-test: command not found" in t for t in crash.last_lines)
    backoff = node.status("worker.1")
    assert backoff is not None and backoff.reason.startswith("restarting in ")


async def test_backoff_grows_to_its_cap_and_starts_over_after_a_long_enough_run(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    node = await start_node(restart_base=0.2, restart_cap=0.8, restart_reset_after=1.0)
    count = tmp_path / "runs"
    # Runs 1-4 and 6-7 crash at once; run 5 stays up past restart_reset_after first.
    command = (
        f"n=$(( $(cat {count} 2>/dev/null || echo 0) + 1 )); echo $n > {count}; "
        "echo run $n; if [ $n -eq 5 ]; then sleep 1.5; fi; exit 1"
    )
    node.apply(assignment("worker.1", command))
    await eventually(lambda: "run 7" in node.texts("worker.1"), "seven runs")
    node.apply()
    await eventually(lambda: node.supervisor.instance(APP, "worker.1") is None, "removal")

    # restarts = the run number - 1; the wait after each run that crashed:
    waits: dict[int, float] = {}
    for status in node.statuses:
        if status.name == "worker.1" and status.state == pb.BACKOFF:
            waits.setdefault(status.restarts, status.next_start - status.exited_at)
    assert 0 not in waits  # after run 1: at once
    assert 0.15 <= waits[1] <= 0.3  # run 2: the base, +-20 % jitter
    assert 0.3 <= waits[2] <= 0.55  # run 3: doubled
    assert 0.6 <= waits[3] <= 0.85  # run 4: the cap
    assert 4 not in waits  # run 5 was up for 1.5 s: at once again
    assert 0.15 <= waits[5] <= 0.3  # run 6: the base again
    texts = node.texts("worker.1")
    assert texts.count("Restarting now") == 2


async def test_a_web_instance_that_never_listens_crashes_with_a_boot_timeout(
    start_node: NodeFactory,
) -> None:
    node = await start_node(boot_timeout=0.5, restart_base=60.0)
    node.apply(assignment("web.1", "sleep 1000"))
    await eventually(
        lambda: any(s.state == pb.CRASHED for s in node.statuses), "a crash", timeout=20
    )
    crash = next(s for s in node.statuses if s.state == pb.CRASHED)
    assert crash.reason == f"boot timeout: did not listen on {crash.port} within 0.5s"
    assert crash.last_exit == "signal 9 (SIGKILL)"
    assert not any(s.state == pb.UP for s in node.statuses)


async def test_a_command_in_a_missing_directory_crashes_and_says_why(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    node = await start_node(restart_base=60.0)
    node.apply(assignment("worker.1", "true", dir=str(tmp_path / "missing")))
    await eventually(lambda: node.state("worker.1") is State.BACKOFF, "backoff")
    crash = next(s for s in node.statuses if s.state == pb.CRASHED)
    assert crash.reason.startswith("cannot start:") and "missing" in crash.reason


# ---------------------------------------------------------------- stopping


async def test_stopping_kills_the_grandchildren_in_the_process_group(
    start_node: NodeFactory,
) -> None:
    node = await start_node()
    node.apply(assignment("worker.1", SLEEPERS))
    status = await node.up("worker.1")
    processes = await eventually(lambda: tree_of(status.pid, 3), "the shell and its two sleeps")

    node.apply()  # worker.1 is no longer wanted here
    await eventually(lambda: node.supervisor.instance(APP, "worker.1") is None, "removal")
    assert not live(processes)
    states = [s.state for s in node.statuses if s.name == "worker.1"]
    assert states[-2:] == [pb.STOPPING, pb.STOPPED]
    texts = node.texts("worker.1")
    assert "Stopping all processes with SIGTERM" in texts
    assert "State changed from stopping to stopped" in texts
    assert "Stopping remaining processes with SIGKILL" not in texts  # the sleeps obeyed SIGTERM
    assert node.supervisor.ports.held((APP, "worker.1", 1)) is None


async def test_a_process_that_ignores_sigterm_is_killed_after_the_grace(
    start_node: NodeFactory,
) -> None:
    node = await start_node(stop_grace=0.5)
    node.apply(assignment("worker.1", "trap '' TERM; echo stubborn; sleep 1000 & wait"))
    status = await node.up("worker.1")
    await eventually(lambda: "stubborn" in node.texts("worker.1"), "the first line")
    processes = await eventually(lambda: tree_of(status.pid, 2), "the shell and its sleep")

    started = time.monotonic()
    node.apply()
    await eventually(lambda: node.supervisor.instance(APP, "worker.1") is None, "removal")
    assert time.monotonic() - started >= 0.5
    assert not live(processes)
    texts = node.texts("worker.1")
    assert "Stopping remaining processes with SIGKILL" in texts
    assert "Process exited on signal 9 (SIGKILL)" in texts


async def test_close_stops_every_instance(start_node: NodeFactory) -> None:
    node = await start_node()
    node.apply(assignment("web.1", WEB), assignment("worker.1", SLEEPERS))
    web, worker = await node.up("web.1"), await node.up("worker.1")
    processes = tree(web.pid) + tree(worker.pid)
    await node.supervisor.close()
    assert not live(processes)
    assert node.supervisor.statuses() == []
    assert not node.apply(assignment("worker.2", SLEEPERS))  # closed: nothing starts any more


# ---------------------------------------------------------------- escaping the group


async def test_a_double_forked_daemon_is_caught_on_stop(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    script = tmp_path / "daemon.py"
    script.write_text(DAEMON)
    pidfile = tmp_path / "daemon.pids"
    node = await start_node()
    node.apply(assignment("worker.1", f"{PY} {script} {pidfile}; exec sleep 1000"))
    status = await node.up("worker.1")
    [daemon] = await eventually(lambda: read_pids(pidfile, 1), "the daemon")
    assert os.getsid(daemon) != status.pid and os.getpgid(daemon) != status.pid  # it escaped
    if is_subreaper():
        assert psutil.Process(daemon).ppid() == os.getpid()  # it came back to the agent

    node.apply()
    await eventually(lambda: node.supervisor.instance(APP, "worker.1") is None, "removal")
    assert not live([daemon])
    # It got SIGTERM with the group, and went: nothing was left to kill.
    texts = node.texts("worker.1")
    assert f"Sent SIGTERM to 1 process(es) that had left the process group (pid {daemon})" in (
        texts
    )
    assert not [t for t in texts if t.startswith("Killed")]
    if is_subreaper():
        await eventually(lambda: gone([daemon]), "the daemon to be reaped")
        await eventually(lambda: not zombie_children(), "no zombie left with the agent")


# A double-forked daemon that says when it gets SIGTERM, and ignores it if told to.
TERM_DAEMON = textwrap.dedent(
    """
    import os, signal, sys, time
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    def on_term(signum, frame):
        with open(sys.argv[2], "a") as said:
            said.write("TERM\\n")
        if sys.argv[3] == "exit":
            os._exit(0)
    signal.signal(signal.SIGTERM, on_term)
    with open(sys.argv[1], "a") as pids:
        pids.write(f"{os.getpid()}\\n")
    while True:
        time.sleep(1000)
    """
)


@pytest.mark.parametrize("on_term", ["exit", "ignore"])
async def test_a_double_forked_daemon_gets_sigterm_and_the_grace_on_stop(
    start_node: NodeFactory, tmp_path: Path, on_term: str
) -> None:
    """As Heroku signals every process of a dyno: the escaped daemon gets SIGTERM with
    the group and may finish in the grace; one that ignores it is killed after it."""
    script = tmp_path / "daemon.py"
    script.write_text(TERM_DAEMON)
    pidfile, said = tmp_path / "daemon.pids", tmp_path / "said"
    node = await start_node(stop_grace=1.0)
    node.apply(assignment("worker.1", f"{PY} {script} {pidfile} {said} {on_term}; exec sleep 1000"))
    await node.up("worker.1")
    [daemon] = await eventually(lambda: read_pids(pidfile, 1), "the daemon")

    node.apply()
    await eventually(lambda: node.supervisor.instance(APP, "worker.1") is None, "removal")
    assert not live([daemon])
    assert said.read_text() == "TERM\n"  # it had its SIGTERM, once
    texts = node.texts("worker.1")
    assert f"Sent SIGTERM to 1 process(es) that had left the process group (pid {daemon})" in (
        texts
    )
    killed = [t for t in texts if t.startswith("Killed 1 process(es)")]
    if on_term == "exit":
        assert not killed
        assert not [t for t in texts if t.startswith("Error R12")]
    else:
        assert killed == [f"Killed 1 process(es) that had left the process group (pid {daemon})"]
        assert any(t.startswith("Error R12 (Exit timeout)") for t in texts)


async def test_a_double_forked_daemon_is_caught_when_its_run_crashes(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    script = tmp_path / "daemon.py"
    script.write_text(DAEMON)
    pidfile = tmp_path / "daemon.pids"
    node = await start_node(restart_base=60.0)  # one immediate restart, then a long backoff
    node.apply(assignment("worker.1", f"{PY} {script} {pidfile}; sleep 0.3; exit 1"))
    await eventually(lambda: node.state("worker.1") is State.BACKOFF, "backoff after two runs")
    daemons = await eventually(lambda: read_pids(pidfile, 2), "a daemon from each run")
    assert not live(daemons)
    killed = [t for t in node.texts("worker.1") if t.startswith("Killed 1 process(es)")]
    assert len(killed) == 2
    # The first daemon was gone before the second run started.
    texts = node.texts("worker.1")
    assert texts.index(killed[0]) < texts.index("Restarting now")


async def test_a_process_that_forks_a_hundred_children_loses_them_all_on_stop(
    start_node: NodeFactory,
) -> None:
    node = await start_node()
    node.apply(assignment("worker.1", "for i in $(seq 100); do sleep 1000 & done; wait"))
    status = await node.up("worker.1")
    processes = await eventually(lambda: tree_of(status.pid, 101), "the shell and 100 sleeps")
    node.apply()
    await eventually(lambda: node.supervisor.instance(APP, "worker.1") is None, "removal")
    assert not live(processes)
    await eventually(lambda: gone(processes), "all of them reaped")


async def test_a_pipe_held_by_a_process_no_sweep_finds_is_cut_off_and_says_so(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    """An escaped process that replaced its environment (no token to find it by) keeps
    stdout open after its run crashed: the run still ends, with what was written
    before, and a notice says its output was cut off."""
    pidfile = tmp_path / "holder.pids"
    holder = f"setsid env -i /bin/sh -c 'echo $$ >> {pidfile}; exec sleep 1000' &"
    # The leader exits once the holder is out of the group, so the group's kill misses it.
    wait = f"until [ -s {pidfile} ]; do sleep 0.01; done"
    once = f"mkdir {tmp_path / 'once'} 2>/dev/null || exec sleep 1000"  # later runs idle
    node = await start_node()
    node.apply(assignment("worker.1", f"{once}; {holder} {wait}; echo last words; exit 1"))
    try:
        [held] = await eventually(lambda: read_pids(pidfile, 1), "the holder")
        await eventually(
            lambda: any(t.startswith("Output cut off") for t in node.texts("worker.1")),
            "the notice that the output was cut off",
        )
        assert live([held])  # it was not found: only its pipe was cut
    finally:
        for pid in read_pids(pidfile, 1) or []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    texts = node.texts("worker.1")
    notice = next(t for t in texts if t.startswith("Output cut off"))
    assert notice.startswith("Output cut off: stdout and stderr still open 2s after")
    exited = texts.index("Process exited with status 1")
    assert texts.index("last words") < texts.index(notice) < exited


# ---------------------------------------------------------------- incarnations and generations


async def test_a_newer_incarnation_replaces_the_old_process_on_the_same_port(
    start_node: NodeFactory,
) -> None:
    node = await start_node()
    node.apply(assignment("web.1", WEB, incarnation=1))
    old = await node.up("web.1")
    node.apply(assignment("web.1", WEB, incarnation=2))
    await eventually(
        lambda: (s := node.status("web.1")) is not None and s.incarnation == 2 and s.state == pb.UP,
        "incarnation 2 up",
    )
    new = node.status("web.1")
    assert new is not None
    assert new.port == old.port and new.pid != old.pid
    assert not live([old.pid])
    stopped = [s for s in node.statuses if s.state == pb.STOPPED]
    assert [(s.incarnation, s.reason) for s in stopped] == [(1, "replaced by incarnation 2")]


async def test_a_stale_incarnation_never_starts_a_process(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    node = await start_node()
    marker = tmp_path / "stale-started"
    stale = f"touch {marker}; sleep 1000"
    node.apply(assignment("worker.1", SLEEPERS, incarnation=5))
    current = await node.up("worker.1")

    node.apply(assignment("worker.1", stale, incarnation=3))  # an older order: keep incarnation 5
    node.apply()  # worker.1 leaves this node
    await eventually(lambda: node.supervisor.instance(APP, "worker.1") is None, "removal")
    node.apply(assignment("worker.1", stale, incarnation=4))  # older than 5: must not start
    node.apply(assignment("worker.1", stale, incarnation=4), assignment("worker.2", SLEEPERS))
    await node.up("worker.2")  # the sets were applied in order, so worker.1 had its chance

    assert not marker.exists()
    assert node.supervisor.instance(APP, "worker.1") is None
    assert {s.incarnation for s in node.statuses if s.name == "worker.1"} == {5}
    assert current.pid in node.pgids


async def test_an_older_generation_in_the_same_session_is_ignored(
    start_node: NodeFactory,
) -> None:
    node = await start_node()
    supervisor = node.supervisor
    worker = assignment("worker.1", SLEEPERS)
    assert supervisor.apply(pb.DesiredSet(generation=5, instances=[worker]))
    await node.up("worker.1")
    assert not supervisor.apply(pb.DesiredSet(generation=4, instances=[]))
    assert node.state("worker.1") is State.UP

    supervisor.new_session()  # a new session counts generations from 1 again
    assert supervisor.apply(pb.DesiredSet(generation=1, instances=[]))
    await eventually(lambda: supervisor.instance(APP, "worker.1") is None, "removal")


# ---------------------------------------------------------------- the agent's own death

AGENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from paas.agent.config import AgentConfig
    from paas.agent.logbuffer import LogHub
    from paas.agent.orphans import OrphanReaper
    from paas.agent.ports import PortPool
    from paas.agent.reaper import Reaper
    from paas.agent.supervisor import State, Supervisor, install_child_watcher
    from paas.proto import paas_pb2 as pb

    async def main() -> None:
        install_child_watcher()
        state, low, high = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
        daemon, pidfile = sys.argv[4], Path(sys.argv[5])
        config = AgentConfig(
            join=["127.0.0.1:1"], name="victim", state_dir=state, ports=(low, high)
        )
        OrphanReaper(own_all_children=True).start()  # as paas agent does
        reaper = Reaper(state / "victim")
        await reaper.start()
        supervisor = Supervisor(config, LogHub("victim", 100), PortPool(low, high), reaper)
        supervisor.apply(pb.DesiredSet(generation=1, instances=[
            pb.Assignment(app="shop", name="web.1", type="web", incarnation=1, dir="/tmp",
                          command=sys.executable + " -u -m http.server $PORT --bind 127.0.0.1"),
            pb.Assignment(app="shop", name="worker.1", type="worker", incarnation=1, dir="/tmp",
                          command="sleep 1000 & sleep 1001 & wait"),
            pb.Assignment(app="shop", name="daemon.1", type="daemon", incarnation=1, dir="/tmp",
                          command=f"{sys.executable} {daemon} {pidfile}; exec sleep 1000"),
        ]))
        while len(supervisor.instances()) < 3 or any(
            i.state is not State.UP for i in supervisor.instances()
        ) or not pidfile.exists() or not pidfile.read_text().endswith("\\n"):
            await asyncio.sleep(0.05)
        pids = [s.pid for s in supervisor.statuses()]
        escaped = int(pidfile.read_text())
        print(json.dumps({"reaper": reaper.pid, "pids": pids, "daemon": escaped}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


@dataclass
class Victim:
    process: asyncio.subprocess.Process
    reaper: int
    processes: list[int]  # every instance process with its descendants
    pgids: list[int]
    state_dir: Path
    daemon: int  # a double-forked daemon that left its instance's group and session


def read_state_file(agent: Victim) -> dict[int, float]:
    return read_state(agent.state_dir / "victim" / STATE_FILE)


@pytest.fixture
async def victim(tmp_path: Path) -> AsyncIterator[Callable[[], Awaitable[Victim]]]:
    """Start a small agent (supervisor + reaper + orphan reaper) as its own process,
    running a web, a worker with two grandchildren and an instance that leaves a
    double-forked daemon; whatever a test does, nothing of it survives."""
    script = tmp_path / "agent_script.py"
    script.write_text(AGENT_SCRIPT)
    daemon = tmp_path / "daemon.py"
    daemon.write_text(DAEMON)
    started: list[Victim] = []

    async def start() -> Victim:
        low, high = free_range()
        pidfile = tmp_path / f"daemon-{len(started)}.pids"
        process = await asyncio.create_subprocess_exec(
            PY, str(script), str(tmp_path / "state"), str(low), str(high),
            str(daemon), str(pidfile),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        report = json.loads(line)
        processes = [pid for leader in report["pids"] for pid in tree(leader)]
        result = Victim(
            process, report["reaper"], processes, report["pids"], tmp_path / "state",
            report["daemon"],
        )  # fmt: skip
        started.append(result)
        return result

    try:
        yield start
    finally:
        for each in started:
            for pid in [each.process.pid, each.reaper, each.daemon]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for pgid in each.pgids:
                with_suppress_kill(pgid)
            await each.process.wait()


async def test_a_killed_agent_takes_its_children_and_grandchildren_with_it(
    victim: Callable[[], Awaitable[Victim]],
) -> None:
    agent = await victim()
    assert len(agent.processes) >= 4, "a web and a shell with two sleeps"
    assert live(agent.processes) == agent.processes
    assert os.getsid(agent.daemon) not in agent.pgids, "the daemon left its group and session"
    if sys.platform == "linux":  # the agent is a child subreaper there
        assert psutil.Process(agent.daemon).ppid() == agent.process.pid

    agent.process.send_signal(signal.SIGKILL)
    await agent.process.wait()

    await eventually(lambda: not live(agent.processes), "the killed agent's processes to die")
    # No group leads to the daemon: the reaper finds it by the agent's token.
    await eventually(lambda: not live([agent.daemon]), "the escaped daemon to die")
    await eventually(lambda: not live([agent.reaper]), "the reaper to exit")


async def test_a_new_agent_ends_what_a_killed_agent_and_its_reaper_left(
    victim: Callable[[], Awaitable[Victim]], tmp_path: Path
) -> None:
    agent = await victim()
    # Both die at once: the reaper is frozen first, so it never sees the agent go.
    os.kill(agent.reaper, signal.SIGSTOP)
    agent.process.send_signal(signal.SIGKILL)
    await agent.process.wait()
    os.kill(agent.reaper, signal.SIGKILL)
    await eventually(lambda: not live([agent.reaper]), "the reaper to die")
    assert live(agent.processes) == agent.processes, "orphans, with nobody left to end them"
    assert live([agent.daemon]) == [agent.daemon]

    install_child_watcher()
    try:
        successor = Reaper(tmp_path / "state" / "victim")
        await successor.start()
        await eventually(lambda: not live(agent.processes), "the leftovers to be ended")
        await eventually(lambda: not live([agent.daemon]), "the escaped daemon to be ended")
        await successor.close()
    finally:
        forget_child_watcher()


async def test_leftover_cleanup_spares_a_process_that_reused_a_recorded_pid(
    tmp_path: Path,
) -> None:
    install_child_watcher()
    stranger = await asyncio.create_subprocess_exec("sleep", "1000", start_new_session=True)
    ours = await asyncio.create_subprocess_exec("sleep", "1001", start_new_session=True)
    try:
        state = tmp_path / "state" / "node-1"
        state.mkdir(parents=True)
        # The stranger has a recorded pid but a different start time: not ours.
        (state / STATE_FILE).write_text(
            f"{stranger.pid} 12345.0\n{ours.pid} {leader_create_time(ours.pid)!r}\n"
        )
        reaper = Reaper(state)
        await reaper.start()
        await reaper.close()
        await asyncio.wait_for(ours.wait(), 20)
        assert live([stranger.pid]) == [stranger.pid]
        assert (state / STATE_FILE).read_text() == ""
    finally:
        for process in (stranger, ours):
            if process.returncode is None:
                process.kill()
            await process.wait()
        forget_child_watcher()


async def test_two_agents_cannot_share_a_state_directory(tmp_path: Path) -> None:
    install_child_watcher()
    first = Reaper(tmp_path / "node-1")
    await first.start()
    try:
        started = time.monotonic()
        with pytest.raises(ReaperError, match="is in use by another agent: give each agent"):
            await Reaper(tmp_path / "node-1").start()
        assert time.monotonic() - started < 30
    finally:
        await first.close()
        forget_child_watcher()


async def test_a_reaper_that_dies_is_replaced_and_still_guards_the_groups(
    victim: Callable[[], Awaitable[Victim]],
) -> None:
    agent = await victim()
    os.kill(agent.reaper, signal.SIGKILL)

    def successor() -> int | None:
        for child in psutil.Process(agent.process.pid).children():
            if child.pid != agent.reaper and "paas.agent.reaper" in child.cmdline():
                return child.pid
        return None

    new_reaper = await eventually(successor, "a new reaper")
    # It has the agent's groups (it writes the state file once it knows them all).
    await eventually(lambda: len(read_state_file(agent)) == len(agent.pgids), "groups re-sent")

    agent.process.send_signal(signal.SIGKILL)
    await agent.process.wait()
    await eventually(lambda: not live(agent.processes), "the killed agent's processes to die")
    await eventually(lambda: not live([agent.daemon]), "the escaped daemon to die")
    await eventually(lambda: not live([new_reaper]), "the new reaper to exit")
