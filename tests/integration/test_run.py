"""`paas run` against a real cluster: one-off processes with real processes, real
gRPC with TLS and real etcd; their I/O proxied CLI <-> scheduler <-> agent session."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from paas.cli.localcluster import LocalCluster
from paas.common.formation import parse_changes
from tests.helpers import etcd_keys, paas, ps_rows, wait_for

pytestmark = pytest.mark.integration

PROCFILE = """\
web: exec python3 -u -m http.server $PORT --bind 127.0.0.1
worker: echo "worker says $GREETING from $DYNO"
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "app"
    directory.mkdir()
    (directory / "Procfile").write_text(PROCFILE)
    (directory / ".env").write_text("GREETING=hello\n")
    (directory / "data.txt").write_text("from the slug\n")
    return directory


async def deployed(cluster: LocalCluster, app_dir: Path, app: str = "shop") -> None:
    assert (await paas(cluster, "apps", "create", app)).returncode == 0
    result = await paas(cluster, "deploy", str(app_dir), app=app)
    assert result.returncode == 0, result.stderr


async def start_cli(
    cluster: LocalCluster, *args: str, app: str = "shop"
) -> asyncio.subprocess.Process:
    """`paas ARGS` with a stdin pipe of its own, in its own process group."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAAS_")}
    env.update(cluster.client_env(), PAAS_APP=app, NO_COLOR="1")
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "paas",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )


async def finish(
    process: asyncio.subprocess.Process,
    stdin: bytes = b"",
    timeout: float = 60.0,  # noqa: ASYNC109 - a bound on the child process, not a wait
) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if marker in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


async def run_keys(cluster: LocalCluster) -> list[str]:
    return sorted(k for k in await etcd_keys(cluster.etcd_endpoint) if "/runs/" in k)


async def test_the_exit_code_of_the_process_is_the_exit_code_of_paas(
    cluster: LocalCluster, app_dir: Path
) -> None:
    await deployed(cluster, app_dir)
    code, _, err = await finish(await start_cli(cluster, "run", "--", "sh", "-c", "exit 3"))
    assert code == 3, err
    assert "run.1" in err
    # Its record is gone once its exit was seen: a run holds nothing after it.
    await wait_for(lambda: run_keys_empty(cluster), what="no run record left")


async def run_keys_empty(cluster: LocalCluster) -> bool:
    return not await run_keys(cluster)


async def test_stdin_reaches_the_process_and_its_output_comes_back(
    cluster: LocalCluster, app_dir: Path
) -> None:
    await deployed(cluster, app_dir)
    payload = b"".join(b"line %d of the input\n" % i for i in range(20000))  # ~0.5 MB
    code, out, err = await finish(await start_cli(cluster, "run", "--", "cat"), payload)
    assert code == 0, err
    assert out.encode() == payload


async def test_config_vars_overrides_and_the_slug_reach_the_run(
    cluster: LocalCluster, app_dir: Path
) -> None:
    await deployed(cluster, app_dir)
    script = 'echo "$GREETING $EXTRA $DYNO port=$PORT"; cat data.txt; echo oops >&2'
    code, out, err = await finish(
        await start_cli(cluster, "run", "--env", "EXTRA=more", "--", "sh", "-c", script)
    )
    assert code == 0, err
    first, second = out.splitlines()
    words = first.split()
    assert words[:3] == ["hello", "more", "run.1"]
    assert int(words[3].removeprefix("port=")) > 0
    assert second == "from the slug"
    assert "oops" in err


async def test_paas_run_type_runs_the_procfile_command(
    cluster: LocalCluster, app_dir: Path
) -> None:
    await deployed(cluster, app_dir)
    code, out, err = await finish(await start_cli(cluster, "run", "worker"))
    assert code == 0, err
    assert out == "worker says hello from run.1\n"


async def test_ctrl_c_reaches_the_process_and_leaves_nothing_behind(
    cluster: LocalCluster, app_dir: Path
) -> None:
    await deployed(cluster, app_dir)
    marker = "sleep 4242"
    cli = await start_cli(cluster, "run", "--", "sh", "-c", f"echo ready; exec {marker}")
    assert cli.stdout is not None
    line = await asyncio.wait_for(cli.stdout.readline(), 60)
    assert line == b"ready\n"
    assert processes_with(marker), "the run's process is not running"
    cli.send_signal(signal.SIGINT)
    code, _, err = await finish(cli)
    assert code == 130, err  # 128 + SIGINT: the process died of it
    await wait_for(lambda: not processes_with(marker), what="the run's process gone")


async def test_a_cli_that_goes_away_takes_its_run_with_it(
    cluster: LocalCluster, app_dir: Path
) -> None:
    await deployed(cluster, app_dir)
    marker = "sleep 4343"
    cli = await start_cli(cluster, "run", "--", "sh", "-c", f"echo ready; exec {marker}")
    assert cli.stdout is not None
    assert await asyncio.wait_for(cli.stdout.readline(), 60) == b"ready\n"
    cli.kill()  # no goodbye: the scheduler sees the stream end
    await cli.wait()
    await wait_for(lambda: not processes_with(marker), what="the run stopped (SIGHUP)")
    await wait_for(lambda: run_keys_empty(cluster), what="no run record left")


async def test_detach_prints_the_name_and_the_output_goes_to_the_logs(
    cluster: LocalCluster, app_dir: Path
) -> None:
    await deployed(cluster, app_dir)
    result = await paas(
        cluster, "run", "--detach", "--", "sh", "-c", "echo detached says $DYNO; exit 2", app="shop"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "run.1\n"

    async def logged() -> str:
        logs = await paas(cluster, "logs", "-p", "run.1", app="shop")
        text = logs.stdout
        return text if "Process exited with status 2" in text else ""

    text = await wait_for(logged, what="the run's lines in paas logs")
    assert "app[run.1]: detached says run.1" in text
    assert "paas[run.1]: Starting process with command `sh -c 'echo detached says" in text


async def test_ps_lists_a_running_one_off(cluster: LocalCluster, app_dir: Path) -> None:
    await deployed(cluster, app_dir)
    async with cluster.client() as client:
        formation = await client.scale("shop", parse_changes(["web=1"]))
    result = await paas(cluster, "run", "--detach", "--", "sleep 30", app="shop")
    assert result.returncode == 0, result.stderr

    async def listed() -> dict[str, object] | None:
        rows = {row["name"]: row for row in await ps_rows(cluster, "shop")}
        row = rows.get("run.1")
        return row if row and row["state"] == "up" and row["pid"] else None

    row = await wait_for(listed, what="run.1 up in paas ps")
    assert row["type"] == "run"
    assert row["node"] in cluster.agent_names
    assert "sleep 30" in str(row["reason"])
    text = await paas(cluster, "ps", app="shop")
    assert text.returncode == 0, text.stderr
    assert any(line.startswith("run.1") and "up" in line for line in text.stdout.splitlines())
    # A one-off holds no formation slot: the formation is as it was, web.1 its only instance.
    async with cluster.client() as client:
        assert await client.scale("shop", parse_changes(["web=1"])) == formation
    assert formation.get("web") == 1 and "run" not in formation
    names = {row["name"] for row in await ps_rows(cluster, "shop")}
    assert names == {"web.1", "run.1"}, names


async def test_bad_input_is_refused_in_one_line_and_changes_nothing(
    cluster: LocalCluster, app_dir: Path
) -> None:
    assert (await paas(cluster, "apps", "create", "empty")).returncode == 0
    never = await paas(cluster, "run", "--", "true", app="empty")
    assert never.returncode == 1
    assert never.stderr.startswith("error: app empty has no release yet"), never.stderr
    await deployed(cluster, app_dir)
    cases = {
        ("run",): "error: no command to run",
        ("run", "--"): "error: no command to run",
        ("run", "--type", "wbe", "--", "true"): "error: unknown process type 'wbe'",
        ("run", "--env", "1BAD=x", "--", "true"): "error: invalid config var name '1BAD'",
        ("run", "--env", "PORT=1", "--", "true"): "error: --env PORT",
        ("run", "--env", "PAAS_APP=x", "--", "true"): "error: --env PAAS_APP",
        ("run", "--node", "node-9", "--", "true"): "error: unknown node 'node-9'",
    }
    for args, expected in cases.items():
        result = await paas(cluster, *args, app="shop")
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.startswith(expected), (args, result.stderr)
        assert len(result.stderr.splitlines()) == 1, (args, result.stderr)
    assert await run_keys(cluster) == []
    # Nothing ran, so nothing took a number: the next run is run.1.
    code, _, err = await finish(await start_cli(cluster, "run", "--", "true"))
    assert code == 0 and "run.1" in err, err


async def test_the_scheduler_refuses_a_reserved_env_even_without_the_cli(
    cluster: LocalCluster, app_dir: Path
) -> None:
    from paas.cli.client import SchedulerError
    from paas.proto import paas_pb2 as pb

    await deployed(cluster, app_dir)
    async with cluster.client() as client:
        with pytest.raises(SchedulerError, match="config var DYNO is reserved"):
            await client.open_run(pb.RunStart(app="shop", command=["true"], env={"DYNO": "x"}))
        with pytest.raises(SchedulerError, match="no command to run"):
            await client.open_run(pb.RunStart(app="shop", command=[]))
    assert await run_keys(cluster) == []


async def test_pinned_to_a_node_it_runs_there(cluster: LocalCluster, app_dir: Path) -> None:
    await deployed(cluster, app_dir)
    code, out, err = await finish(
        await start_cli(cluster, "run", "--node", "node-2", "--", "echo", "on node-2")
    )
    assert code == 0, err
    assert out == "on node-2\n"
    assert "(node node-2)" in err


async def test_a_lost_node_ends_an_attached_run_with_exit_1(
    cluster: LocalCluster, app_dir: Path
) -> None:
    await deployed(cluster, app_dir)
    cli = await start_cli(
        cluster, "run", "--node", "node-3", "--", "sh", "-c", "echo ready; exec sleep 4444"
    )
    assert cli.stdout is not None
    assert await asyncio.wait_for(cli.stdout.readline(), 60) == b"ready\n"
    cluster.agent_process("node-3").send_signal(signal.SIGSTOP)  # silent, not gone
    try:
        code, _, err = await finish(cli, timeout=60)
    finally:
        cluster.agent_process("node-3").send_signal(signal.SIGCONT)
    assert code == 1
    assert err.splitlines()[-1] == "error: node node-3 was lost; the run's outcome is unknown"
    await wait_for(lambda: run_keys_empty(cluster), what="no run record left")
    # Back in session, the agent stops what is no longer in its set.
    await wait_for(lambda: not processes_with("sleep 4444"), what="the run stopped on node-3")


async def test_ctrl_c_is_the_process_s_to_handle(cluster: LocalCluster, app_dir: Path) -> None:
    """SIGINT goes to the process, which decides: this one traps it and exits 7 (the
    CLI's own Ctrl-C exit would be 130)."""
    await deployed(cluster, app_dir)
    script = "trap 'echo got INT; exit 7' INT; echo ready; while :; do sleep 0.1; done"
    cli = await start_cli(cluster, "run", "--", "bash", "-c", script)
    assert cli.stdout is not None
    assert await asyncio.wait_for(cli.stdout.readline(), 60) == b"ready\n"
    cli.send_signal(signal.SIGINT)
    code, out, err = await finish(cli)
    assert (code, out) == (7, "got INT\n"), err


# ------------------------------------------------------------------ the release phase


@pytest.fixture
async def in_process(etcd: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A scheduler replica in this process (so its ReleasePhase can be called), on a
    real etcd, with a real agent process (node-1) in session; plaintext."""
    from paas.common.ports import free_port
    from paas.scheduler import server
    from paas.scheduler.api import SchedulerService
    from paas.scheduler.config import SchedulerConfig

    services: list[SchedulerService] = []

    class Kept(SchedulerService):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            services.append(self)

    monkeypatch.setattr(server, "SchedulerService", Kept)
    address = f"127.0.0.1:{free_port()}"
    config = SchedulerConfig(etcd=[etcd], listen=address, insecure=True, node_grace=3.0)
    scheduler = asyncio.create_task(server.run_scheduler(config))
    port = free_port()
    log = (tmp_path / "agent.log").open("wb")
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "paas", "agent",
        "--join", address,
        "--name", "node-1",
        "--listen", f"127.0.0.2:{free_port('127.0.0.2')}",
        "--ports", f"{port}-{port + 9}",
        "--state-dir", str(tmp_path / "agents"),
        "--insecure",
        stdout=log, stderr=log,
    )  # fmt: skip
    env = {"PAAS_INSECURE": "1"}

    async def ready() -> bool:
        result = await paas(address, "nodes", "--json", env=env)
        return result.returncode == 0 and any(n["state"] == "ready" for n in result.json())

    try:
        await wait_for(ready, timeout=60, what="node-1 ready")
        yield address, services[0], env
    finally:
        # Bounded, and named when it is not: a teardown that hung once on a loaded CI
        # machine left only pytest-timeout's 300 s and no clue.
        stuck: list[str] = []
        agent.terminate()
        try:
            await asyncio.wait_for(agent.wait(), 60)
        except TimeoutError:
            agent.kill()
            await agent.wait()
            stuck.append("the agent did not exit within 60 s of SIGTERM")
        scheduler.cancel()
        done, _ = await asyncio.wait([scheduler], timeout=60)
        if not done:
            stuck.append("the in-process scheduler did not stop within 60 s of its cancel")
        elif not scheduler.cancelled() and scheduler.exception() is not None:
            stuck.append(f"the in-process scheduler failed: {scheduler.exception()!r}")
        log.close()
        assert not stuck, (
            f"{'; '.join(stuck)}; agent log:\n" + (tmp_path / "agent.log").read_text()[-4000:]
        )


async def test_the_release_phase_runs_the_release_command_once_and_tells_its_outcome(
    in_process: Any, etcd: str, tmp_path: Path
) -> None:
    from paas.scheduler.store import Store

    address, service, env = in_process
    app_dir = tmp_path / "phase"
    app_dir.mkdir()
    (app_dir / "Procfile").write_text(
        "web: exec sleep 1000\nrelease: echo migrating from $DYNO with $GREETING\n"
    )
    (app_dir / ".env").write_text("GREETING=config\n")
    assert (await paas(address, "apps", "create", "shop", env=env)).returncode == 0
    deployed = await paas(address, "deploy", str(app_dir), "--no-wait", app="shop", env=env)
    assert deployed.returncode == 0, deployed.stderr
    (app_dir / "Procfile").write_text(
        "web: exec sleep 1000\nrelease: echo step one; echo 'migration 0042 failed' >&2; exit 2\n"
    )
    deployed = await paas(address, "deploy", str(app_dir), "--no-wait", app="shop", env=env)
    assert deployed.returncode == 0, deployed.stderr
    store = Store([etcd])
    try:
        first, second = await store.release("shop", 1), await store.release("shop", 2)
    finally:
        await store.close()
    assert first is not None and second is not None

    assert await service.release_phase.run_release_phase(first) is None
    failed = await service.release_phase.run_release_phase(second)
    assert failed == "release phase failed: exit 2: migration 0042 failed"

    logs = await paas(address, "logs", app="shop", env=env)
    assert "app[release.1]: migrating from release.1 with config" in logs.stdout
    assert "paas[release.2]: Process exited with status 2" in logs.stdout
    # Each result was read, so nothing of either run is left.
    assert not [k for k in await etcd_keys(etcd) if "/runs/" in k]


# ------------------------------------------------------------------ capacity, TLS, failover


async def test_a_run_takes_room_on_its_node_as_an_instance_does(
    tmp_path: Path, app_dir: Path
) -> None:
    """One node of capacity 1: while a run holds it, web.1 finds no room; once the run
    has exited, web.1 is placed."""
    async with LocalCluster(
        agents=1, node_grace=3.0, stop_grace=2.0, log_to=tmp_path / "logs",
        agent_args={"node-1": ["--capacity", "1"]},
    ) as cluster:  # fmt: skip
        await deployed(cluster, app_dir)
        assert (await paas(cluster, "scale", "web=0", app="shop")).returncode == 0
        flag = tmp_path / "go"
        result = await paas(
            cluster, "run", "--detach", "--", f"while [ ! -e {flag} ]; do sleep 0.1; done",
            app="shop",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        await wait_for(lambda: run_up(cluster), what="run.1 up")
        full = await paas(cluster, "run", "--", "true", app="shop")
        assert full.returncode == 1
        assert full.stderr.startswith("error: no node has room for a one-off"), full.stderr
        assert (await paas(cluster, "scale", "web=1", app="shop")).returncode == 0

        async def web_placed() -> bool:
            return any(r["name"] == "web.1" for r in await ps_rows(cluster, "shop"))

        async def said_full() -> bool:
            logs = await paas(cluster, "logs", app="shop")
            return "full" in logs.stdout and "web" in logs.stdout

        # Placement sees the run's room as taken, and says so in the app's log.
        await wait_for(said_full, timeout=30, what="the event that web finds no room")
        assert not await web_placed()
        flag.touch()
        await wait_for(web_placed, timeout=60, what="web.1 placed once the run has exited")


async def run_up(cluster: LocalCluster) -> bool:
    rows = {row["name"]: row for row in await ps_rows(cluster, "shop")}
    return bool(rows.get("run.1", {}).get("state") == "up")


async def test_with_tls_a_node_credential_may_not_run(
    cluster: LocalCluster, app_dir: Path, tmp_path: Path
) -> None:
    import datetime as dt

    import grpc

    from paas.common import pki
    from paas.common.grpcutil import CHANNEL_OPTIONS
    from paas.common.pki import Identity, Role
    from paas.common.tls import dial
    from paas.proto import paas_pb2 as pb
    from paas.proto import paas_pb2_grpc as pb_grpc

    await deployed(cluster, app_dir)
    ca = pki.CertificateAuthority.load(cluster.tls_dir)
    node = ca.issue_credentials(Identity(Role.NODE, "node-1"), dt.timedelta(hours=1))
    async with dial(cluster.scheduler_addresses[0], node, CHANNEL_OPTIONS) as channel:
        stub: Any = pb_grpc.SchedulerStub(channel)
        call = stub.Run()
        # Refused when the call comes: the write may already meet the status, and then
        # fails on its own (INTERNAL); the call's status is the scheduler's answer.
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call.write(pb.RunInput(start=pb.RunStart(app="shop", command=["true"])))
            await call.read()
        code, details = await call.code(), await call.details()
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    assert "Run needs a certificate of role admin" in (details or "")
    creds = tmp_path / "node.credentials"
    pki.write_credentials(creds, node)
    result = await paas(
        cluster.scheduler_address, "run", "-a", "shop", "--", "true",
        env={"PAAS_CREDENTIALS": str(creds)},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("error: Run needs a certificate of role admin"), result.stderr
    assert await run_keys(cluster) == []


async def test_a_leader_change_ends_an_attached_run_and_keeps_a_detached_one(
    tmp_path: Path, app_dir: Path
) -> None:
    async with LocalCluster(
        agents=2, schedulers=2, node_grace=3.0, stop_grace=2.0, log_to=tmp_path / "logs"
    ) as cluster:
        await deployed(cluster, app_dir)
        detached = await paas(
            cluster, "run", "--detach", "--", "echo up; exec sleep 4545", app="shop"
        )
        assert detached.returncode == 0, detached.stderr
        cli = await start_cli(cluster, "run", "--", "sh", "-c", "echo ready; exec sleep 4646")
        assert cli.stdout is not None
        assert await asyncio.wait_for(cli.stdout.readline(), 60) == b"ready\n"
        leader = cluster.scheduler_process(0)
        leader.send_signal(signal.SIGTERM)  # steps down: the other replica leads
        code, _, err = await finish(cli, timeout=60)
        # The stream ends with the old leader: one line, exit 1.
        assert code == 1
        last = err.splitlines()[-1]
        assert last.startswith("error: ") and last.endswith("the run's outcome is unknown"), err
        # The new leader stops the attached run (its CLI has gone) and keeps the other.
        await wait_for(lambda: not processes_with("sleep 4646"), timeout=60, what="4646 gone")
        assert processes_with("sleep 4545")

        async def detached_listed() -> bool:
            names = [row["name"] for row in await ps_rows(cluster, "shop")]
            return "run.1" in names and "run.2" not in names

        await wait_for(detached_listed, timeout=60, what="run.1 alone in paas ps")
        assert processes_with("sleep 4545")


async def test_destroying_the_app_stops_its_runs(cluster: LocalCluster, app_dir: Path) -> None:
    await deployed(cluster, app_dir)
    result = await paas(cluster, "run", "--detach", "--", "exec sleep 4747", app="shop")
    assert result.returncode == 0, result.stderr
    await wait_for(lambda: processes_with("sleep 4747"), what="the run started")
    destroyed = await paas(cluster, "apps", "destroy", "shop", "--confirm", "shop")
    assert destroyed.returncode == 0, destroyed.stderr
    await wait_for(lambda: not processes_with("sleep 4747"), timeout=60, what="the run stopped")
    keys = await etcd_keys(cluster.etcd_endpoint)
    assert not [k for k in keys if "/runs/" in k or "/run-counter/" in k]


async def test_a_killed_agent_never_runs_a_one_off_twice(
    cluster: LocalCluster, app_dir: Path
) -> None:
    """The reaper ends the run with its agent; the agent started again is told of the
    run as started and reports it gone instead of starting it again."""
    await deployed(cluster, app_dir)
    result = await paas(
        cluster, "run", "--detach", "--node", "node-2", "--", "exec sleep 4848", app="shop"
    )
    assert result.returncode == 0, result.stderr
    await wait_for(lambda: run_up(cluster), what="run.1 up")
    agent = cluster.agent_process("node-2")
    agent.kill()
    await agent.wait()
    await wait_for(lambda: not processes_with("sleep 4848"), timeout=30, what="reaped")
    await cluster.restart_agent("node-2")
    await wait_for(lambda: run_keys_empty(cluster), timeout=30, what="no run record left")
    names = [row["name"] for row in await ps_rows(cluster, "shop")]
    assert "run.1" not in names
    assert not processes_with("sleep 4848")
