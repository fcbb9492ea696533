"""Rolling, health-gated replacement (issue 13): a new release replaces the web
instances a copy at a time, each new copy beside the old one until it has been up
for min_healthy; new copies that crash (or never pass their health check) leave
the old ones serving and fail the release; a leader failover resumes the rollout.

Real etcd, scheduler(s), agents and processes. The releases are made with
`paas deploy` of a changed .env (the app prints its MARK).
"""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from paas.cli.localcluster import LocalCluster
from paas.proto import paas_pb2 as pb
from tests.helpers import etcd_keys, paas, ps_rows, wait_for

pytestmark = pytest.mark.integration

APP_PY = """\
import http.server, os

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = int(os.environ.get("HEALTH", "200")) if self.path == "/health" else 200
        body = os.environ.get("MARK", "none").encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

print("listening as", os.environ.get("MARK"), flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""
PROCFILE = "web: exec python3 -u app.py\n"
CRASHING = "web: python3 -c \"print('boom: no database at db:5432'); raise SystemExit(3)\"\n"


def write_app(
    where: Path, mark: str, toml: str = "", procfile: str = PROCFILE, health: str = "200"
) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "app.py").write_text(APP_PY)
    (where / "Procfile").write_text(procfile)
    (where / ".env").write_text(f"MARK={mark}\nHEALTH={health}\n")
    (where / "paas.toml").write_text(toml)
    return where


def settings(**values: object) -> str:
    lines = ["[types.web]"] + [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


async def deploy(cluster: LocalCluster, where: Path, wait: bool = False, expect: int = 0) -> str:
    """`paas deploy` of `where`: by default --no-wait (the tests watch the rollout
    themselves); with `wait`, the command waits for it. Its stderr."""
    options = () if wait else ("--no-wait",)
    result = await paas(cluster, "deploy", str(where), *options, app="shop")
    assert result.returncode == expect, result.stderr
    return result.stderr


async def release_record(cluster: LocalCluster, version: int) -> dict[str, Any]:
    keys = await etcd_keys(cluster.etcd_endpoint)
    value = keys.get(f"/paas/releases/shop/{version:010d}")
    assert value is not None, f"no release v{version}"
    record: dict[str, Any] = json.loads(value)
    return record


async def app_release(cluster: LocalCluster) -> int:
    keys = await etcd_keys(cluster.etcd_endpoint)
    return int(json.loads(keys["/paas/apps/shop"])["release"])


async def status_is(cluster: LocalCluster, version: int, status: str) -> bool:
    return bool((await release_record(cluster, version))["status"] == status)


async def web_up(cluster: LocalCluster, count: int, release: int) -> list[dict[str, Any]]:
    """Wait until exactly `count` web rows are listed, all up on `release`."""
    rows: list[dict[str, Any]] = []

    async def check() -> bool:
        nonlocal rows
        rows = [r for r in await ps_rows(cluster, "shop") if r["type"] == "web"]
        return len(rows) == count and all(
            r["state"] == "up" and r.get("release") == release for r in rows
        )

    await wait_for(check, timeout=120, interval=0.2, what=f"{count} web up on v{release}")
    return rows


def answers(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1.0) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, OSError):
        return None


async def event_lines(cluster: LocalCluster) -> list[str]:
    result = await paas(cluster, "logs", "-n", "500", app="shop")
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if "paas[scheduler]" in line]


class Poller:
    """Every 50 ms: the instances as ListInstances lists them, and how many of the
    listed `up` web instances answer on their port."""

    def __init__(self, cluster: LocalCluster) -> None:
        self._cluster = cluster
        self.samples: list[int] = []
        self.most_copies = 0  # the most rows listed for one sample (instances + copies)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Poller:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        from paas.proto import paas_pb2_grpc as pb_grpc

        async with self._cluster.channel() as channel:
            stub = pb_grpc.SchedulerStub(channel)
            while True:
                listed = await stub.ListInstances(pb.ListInstancesRequest(app="shop"))
                ports = [i.port for i in listed.instances if i.type == "web" and i.state == pb.UP]
                self.most_copies = max(self.most_copies, len(listed.instances))
                got = await asyncio.gather(*(asyncio.to_thread(answers, p) for p in ports))
                self.samples.append(sum(1 for body in got if body is not None))
                await asyncio.sleep(0.05)


@pytest.fixture
async def app_dir(cluster: LocalCluster, tmp_path: Path) -> Path:
    assert (await paas(cluster, "apps", "create", "shop")).returncode == 0
    return tmp_path / "app"


async def test_a_new_release_rolls_with_at_least_four_of_five_answering_throughout(
    cluster: LocalCluster, app_dir: Path
) -> None:
    await deploy(cluster, write_app(app_dir, "one", settings(min_healthy=1)))
    assert (await paas(cluster, "scale", "web=5", app="shop")).returncode == 0
    before = await web_up(cluster, 5, 1)

    async with Poller(cluster) as poller:
        await wait_for(lambda: len(poller.samples) >= 3, what="the poller's first samples")
        # The new release is a config change: `paas config set` waits for its rollout.
        changed = await paas(cluster, "config", "set", "MARK=two", app="shop")
        assert changed.returncode == 0, changed.stderr
        assert "v2 of shop is rolled out" in changed.stderr
        assert await status_is(cluster, 2, "succeeded")
        # The new copies showed in `paas ps` beside the old ones while they booted.
        assert poller.most_copies > 5
        after = await web_up(cluster, 5, 2)
    assert len(poller.samples) > 20
    assert min(poller.samples) >= 4, poller.samples
    assert {r["port"] for r in after}.isdisjoint({r["port"] for r in before})
    for row in after:
        assert await asyncio.to_thread(answers, row["port"]) == "two"
    assert any("Release v2 rolled out (5 instances in" in e for e in await event_lines(cluster))


async def test_new_copies_that_crash_leave_the_old_ones_serving_and_fail_the_release(
    cluster: LocalCluster, app_dir: Path
) -> None:
    await deploy(cluster, write_app(app_dir, "one", settings(min_healthy=1)))
    assert (await paas(cluster, "scale", "web=2", app="shop")).returncode == 0
    before = await web_up(cluster, 2, 1)

    # `paas deploy` waits for the rollout and says it failed, exit 1.
    said = await deploy(
        cluster, write_app(app_dir, "two", settings(min_healthy=1), CRASHING), wait=True, expect=1
    )
    assert "v2 of shop failed: " in said and "v1 stays in force" in said, said
    assert await status_is(cluster, 2, "failed")
    record = await release_record(cluster, 2)
    assert "web.1 crashed" in record["status_reason"], record
    assert await app_release(cluster) == 1, "the release before is in force again"
    keys = await etcd_keys(cluster.etcd_endpoint)
    assert not [k for k in keys if k.startswith("/paas/surges/")], "its new copies are gone"
    after = await web_up(cluster, 2, 1)
    assert [(r["name"], r["pid"]) for r in after] == [(r["name"], r["pid"]) for r in before]
    for row in after:
        assert await asyncio.to_thread(answers, row["port"]) == "one"
    events = await event_lines(cluster)
    assert any("Release v2 failed: its new copy of web.1 crashed" in e for e in events)
    assert any("boom: no database at db:5432" in e for e in events), events
    assert not any("MARK=" in e or "HEALTH=" in e for e in events), "no config in events"

    # Scaling up now places the release in force (v1), and the next deploy is v3.
    assert (await paas(cluster, "scale", "web=3", app="shop")).returncode == 0
    await web_up(cluster, 3, 1)
    await deploy(cluster, write_app(app_dir, "three", settings(min_healthy=0)))
    await web_up(cluster, 3, 3)
    assert (await release_record(cluster, 2))["status"] == "failed", "v2 was not overwritten"


async def test_a_health_path_that_answers_500_keeps_the_old_copies(
    cluster: LocalCluster, app_dir: Path
) -> None:
    toml = settings(health="/health", min_healthy=1, boot_timeout=3)
    await deploy(cluster, write_app(app_dir, "one", toml))
    assert (await paas(cluster, "scale", "web=2", app="shop")).returncode == 0
    before = await web_up(cluster, 2, 1)

    await deploy(cluster, write_app(app_dir, "two", toml, health="500"))
    await wait_for(lambda: status_is(cluster, 2, "failed"), timeout=60, what="v2 failed")
    record = await release_record(cluster, 2)
    assert record["status_reason"].startswith("its new copy of web.1 crashed"), record
    logs = (await paas(cluster, "logs", "-n", "500", app="shop")).stdout
    assert "boot timeout: did not answer GET /health on" in logs, logs
    after = await web_up(cluster, 2, 1)
    assert [r["pid"] for r in after] == [r["pid"] for r in before]


async def test_max_parallel_bounds_the_new_copies_in_flight(
    cluster: LocalCluster, app_dir: Path
) -> None:
    toml = settings(min_healthy=1, max_parallel=2)
    await deploy(cluster, write_app(app_dir, "one", toml))
    assert (await paas(cluster, "scale", "web=6", app="shop")).returncode == 0
    await web_up(cluster, 6, 1)

    most = 0

    async def count_surges() -> None:
        nonlocal most
        while True:
            keys = await etcd_keys(cluster.etcd_endpoint)
            most = max(most, sum(1 for k in keys if k.startswith("/paas/surges/shop/")))
            await asyncio.sleep(0.05)

    counting = asyncio.create_task(count_surges())
    try:
        await deploy(cluster, write_app(app_dir, "two", toml))
        await web_up(cluster, 6, 2)
        await wait_for(lambda: status_is(cluster, 2, "succeeded"), timeout=30)
    finally:
        counting.cancel()
    assert most == 2, f"at most 2 new copies in flight, and 2 were: {most}"


async def test_auto_rollback_makes_a_release_of_the_one_before(
    cluster: LocalCluster, app_dir: Path
) -> None:
    toml = settings(min_healthy=1, auto_rollback=True)
    await deploy(cluster, write_app(app_dir, "one", toml))
    assert (await paas(cluster, "scale", "web=2", app="shop")).returncode == 0
    await web_up(cluster, 2, 1)

    await deploy(cluster, write_app(app_dir, "two", toml, CRASHING))
    await wait_for(lambda: status_is(cluster, 2, "failed"), timeout=60, what="v2 failed")
    await wait_for(lambda: status_is(cluster, 3, "succeeded"), timeout=60, what="v3 rolled")
    rollback = await release_record(cluster, 3)
    assert rollback["description"] == "Rollback to v1 (v2 failed)"
    assert rollback["previous"] == 1
    rows = await web_up(cluster, 2, 3)
    for row in rows:
        assert await asyncio.to_thread(answers, row["port"]) == "one"


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        (settings(max_parallel=0), "max_parallel"),
        (settings(max_parallel="150%"), "max_parallel"),
        (settings(min_healthy=-1), "min_healthy"),
        (settings(health="health"), "health"),
    ],
)
async def test_rollout_settings_out_of_range_make_no_release(
    cluster: LocalCluster, app_dir: Path, toml: str, problem: str
) -> None:
    result = await paas(cluster, "deploy", str(write_app(app_dir, "one", toml)), app="shop")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and problem in result.stderr
    assert await app_release(cluster) == 0


async def test_the_scheduler_refuses_out_of_range_settings_without_the_cli(
    cluster: LocalCluster, app_dir: Path
) -> None:
    import grpc

    from paas.proto import paas_pb2_grpc as pb_grpc

    async with cluster.channel() as channel:
        stub = pb_grpc.SchedulerStub(channel)
        request = pb.DeployRequest(
            app="shop",
            procfile="web: true\n",
            dir=str(app_dir),
            settings={"web": pb.ProcessSettings(max_parallel="0%")},
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Deploy(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_parallel" in (refused.value.details() or "")
    assert await app_release(cluster) == 0


# ------------------------------------------------------------ failover


@pytest.fixture
async def replicated(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    async with LocalCluster(
        agents=3,
        node_grace=5.0,
        stop_grace=2.0,
        log_to=tmp_path / "logs",
        schedulers=2,
        leader_ttl=2,
    ) as started:
        yield started


async def test_a_leader_failover_mid_rollout_resumes_and_finishes_it(
    replicated: LocalCluster, tmp_path: Path
) -> None:
    cluster = replicated
    assert (await paas(cluster, "apps", "create", "shop")).returncode == 0
    toml = settings(min_healthy=2)
    where = tmp_path / "app"
    await deploy(cluster, write_app(where, "one", toml))
    assert (await paas(cluster, "scale", "web=4", app="shop")).returncode == 0
    await web_up(cluster, 4, 1)

    await deploy(cluster, write_app(where, "two", toml))

    async def one_promoted() -> bool:
        keys = await etcd_keys(cluster.etcd_endpoint)
        releases = [
            json.loads(value)["release"]
            for key, value in keys.items()
            if key.startswith("/paas/instances/shop/")
        ]
        # One instance replaced already, and more to go.
        return 1 <= releases.count(2) < 4

    await wait_for(one_promoted, timeout=90, interval=0.1, what="a first promotion")
    replicated.scheduler_process(0).send_signal(signal.SIGKILL)

    async def succeeded() -> bool:
        return await status_is(cluster, 2, "succeeded")

    await wait_for(succeeded, timeout=120, interval=0.2, what="the rollout to finish")
    rows = await web_up(cluster, 4, 2)
    for row in rows:
        assert await asyncio.to_thread(answers, row["port"]) == "two"


async def test_a_release_procfile_entry_is_never_a_formation_type(
    cluster: LocalCluster, app_dir: Path
) -> None:
    procfile = PROCFILE + "release: echo migrating\n"
    await deploy(cluster, write_app(app_dir, "one", settings(min_healthy=0), procfile))
    listed = (await paas(cluster, "apps", "--json")).json()
    [shop] = [a for a in listed if a["name"] == "shop"]
    assert "release" not in shop["formation"], shop
    refused = await paas(cluster, "scale", "release=1", app="shop")
    assert refused.returncode == 1 and "unknown process type 'release'" in refused.stderr
    await web_up(cluster, 1, 1)
    assert (await release_record(cluster, 1))["phase_done"] is True


async def rolling_one_of_three(
    cluster: LocalCluster, app_dir: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """web=3 up on v1, then v2 rolling with one new copy in flight: v1's rows and the
    new copy's row."""
    toml = settings(min_healthy=6)
    await deploy(cluster, write_app(app_dir, "one", toml))
    assert (await paas(cluster, "scale", "web=3", app="shop")).returncode == 0
    rows = await web_up(cluster, 3, 1)
    await deploy(cluster, write_app(app_dir, "two", toml))

    async def new_copy() -> dict[str, Any] | None:
        found = [r for r in await ps_rows(cluster, "shop") if r["release"] == 2]
        return found[0] if found else None

    return rows, await wait_for(new_copy, timeout=60, what="a new copy in flight")


async def moved_to_v2_and_rolled_out(cluster: LocalCluster, gone: dict[str, Any]) -> None:
    """The instance of row `gone` is up on another node with v2, and v2 rolls out
    without `gone`'s node."""

    async def placed_with_v2() -> bool:
        found = [r for r in await ps_rows(cluster, "shop") if r["name"] == gone["name"]]
        return any(
            r["node"] != gone["node"] and r["release"] == 2 and r["state"] == "up" for r in found
        )

    await wait_for(placed_with_v2, timeout=60, interval=0.2, what=f"{gone['name']} on v2")
    await wait_for(lambda: status_is(cluster, 2, "succeeded"), timeout=120, interval=0.2)
    after = await web_up(cluster, 3, 2)
    assert gone["node"] not in {r["node"] for r in after}


async def test_a_drain_during_a_rollout_places_the_new_release(
    cluster: LocalCluster, app_dir: Path
) -> None:
    rows, surge = await rolling_one_of_three(cluster, app_dir)
    # Drain the node of an instance the rollout has not reached yet.
    drained = [r for r in rows if r["name"] != surge["name"]][-1]
    result = await paas(cluster, "nodes", "drain", drained["node"])
    assert result.returncode == 0, result.stderr
    await moved_to_v2_and_rolled_out(cluster, drained)


async def test_a_node_lost_during_a_rollout_has_its_work_placed_with_the_new_release(
    cluster: LocalCluster, app_dir: Path
) -> None:
    rows, surge = await rolling_one_of_three(cluster, app_dir)
    # Kill the agent of an instance the rollout has not reached, on a node without the
    # new copy: its node is lost (3 s grace) while the release rolls.
    waiting = [r for r in rows if r["name"] != surge["name"] and r["node"] != surge["node"]]
    assert waiting, (rows, surge)
    lost = waiting[0]
    cluster.agent_process(lost["node"]).kill()
    await cluster.agent_process(lost["node"]).wait()
    await moved_to_v2_and_rolled_out(cluster, lost)


async def test_a_failing_release_phase_fails_the_release_and_replaces_nothing(
    cluster: LocalCluster, app_dir: Path
) -> None:
    await deploy(cluster, write_app(app_dir, "one", settings(min_healthy=0)))
    assert (await paas(cluster, "scale", "web=2", app="shop")).returncode == 0
    before = await web_up(cluster, 2, 1)

    procfile = PROCFILE + "release: echo step one; echo 'migration 0042 failed' >&2; exit 2\n"
    said = await deploy(
        cluster, write_app(app_dir, "two", settings(min_healthy=0), procfile), wait=True, expect=1
    )
    assert "release phase failed: exit 2" in said and "migration 0042 failed" in said, said
    assert await status_is(cluster, 2, "failed")
    assert await app_release(cluster) == 1, "the release before stays in force"
    after = await web_up(cluster, 2, 1)
    assert [(r["name"], r["pid"]) for r in after] == [(r["name"], r["pid"]) for r in before]
    logs = await paas(cluster, "logs", "-n", "500", app="shop")
    assert "migration 0042 failed" in logs.stdout, "the release phase's output is in the log"
