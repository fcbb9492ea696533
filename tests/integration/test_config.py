"""Config vars live with the app (issue 13): `paas config set/unset/load` each make one
release that reaches the processes' environment, `paas deploy` keeps them, and no
value ever shows in the log stream or the scheduler's own log; bad input changes
nothing. Real etcd, scheduler, agents and processes, TLS on.

These tests pass --no-wait and wait on the new release's processes instead (each
release rolls: rollout.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import pytest

from paas.cli.localcluster import LocalCluster
from paas.common.configvars import CONFIG_VARS_LIMIT
from paas.proto import paas_pb2 as pb
from tests.helpers import paas, ps_rows, wait_for

if TYPE_CHECKING:
    from paas.proto.paas_pb2_grpc import SchedulerAsyncStub

pytestmark = pytest.mark.integration

# Says its config once, at start, then sleeps: the last GREETING line in the log is the
# newest process's.
PROCFILE = 'worker: echo "GREETING=[$GREETING] TARGET=[$TARGET]"; exec sleep 3600\n'
SECRET = "s3cr3t-value-never-logged-7f3a"


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "app"
    directory.mkdir()
    (directory / "Procfile").write_text(PROCFILE)
    (directory / ".env").write_text("TARGET=from-dotenv\n")
    # Rollouts are not what is tested here: a new copy replaces its old one at once.
    (directory / "paas.toml").write_text("[types.worker]\nmin_healthy = 0\n")
    return directory


async def ok(cluster: LocalCluster, *args: str) -> str:
    result = await paas(cluster, *args, app="shop")
    assert result.returncode == 0, f"paas {' '.join(args)}: {result.stderr}"
    return result.stdout


async def last_greeting(cluster: LocalCluster) -> str:
    lines = (await ok(cluster, "logs", "-n", "10000", "-p", "worker")).splitlines()
    said = [line.split(": ", 1)[1] for line in lines if "GREETING=[" in line and ": " in line]
    return said[-1] if said else ""


async def runs(cluster: LocalCluster, version: int, says: str) -> None:
    """Wait until worker.1 runs release `version`, is up, and the log's last GREETING
    line (its start) is `says`."""

    async def there() -> bool:
        rows = [row for row in await ps_rows(cluster, "shop") if row["type"] == "worker"]
        if not (rows and all(r["release"] == version and r["state"] == "up" for r in rows)):
            return False
        return await last_greeting(cluster) == says

    await wait_for(there, timeout=90, what=f"worker.1 on v{version} saying {says}")


async def releases(cluster: LocalCluster) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(await ok(cluster, "releases", "-n", "1000", "--json"))
    return listed


async def test_config_set_unset_and_load_reach_the_processes_and_deploy_keeps_them(
    cluster: LocalCluster, app_dir: Path, tmp_path: Path
) -> None:
    await ok(cluster, "apps", "create", "shop")
    fresh = await paas(cluster, "config", app="shop")
    assert fresh.returncode == 0 and fresh.stdout == "", fresh.stderr
    assert fresh.stderr == "shop has no config vars: `paas config set KEY=VALUE` sets one\n"
    assert json.loads(await ok(cluster, "config", "--json")) == {}
    # Before any deploy: a release with config and no code, as on Heroku.
    said = await ok(cluster, "config", "set", "GREETING=early", "--no-wait")
    assert said.strip() == "Set GREETING on shop: v1"
    first = (await releases(cluster))[0]
    assert first["description"] == "Set GREETING config vars" and first["slug"] is None
    # Nothing to replace (no code, no process): rolled out at once.
    assert first["status"] == "succeeded" and first["previous"] == 0

    await ok(cluster, "deploy", str(app_dir))
    await ok(cluster, "scale", "worker=1")
    # The deploy kept the config and merged DIR/.env over it.
    await runs(cluster, 2, "GREETING=[early] TARGET=[from-dotenv]")
    assert (await ok(cluster, "config")).splitlines() == [
        "GREETING: early",
        "TARGET:   from-dotenv",
    ]

    await ok(cluster, "config", "set", "GREETING=hello world", f"SECRET={SECRET}", "--no-wait")
    await runs(cluster, 3, "GREETING=[hello world] TARGET=[from-dotenv]")
    assert (await ok(cluster, "config", "get", "GREETING")) == "hello world\n"
    assert json.loads(await ok(cluster, "config", "--json")) == {
        "GREETING": "hello world",
        "SECRET": SECRET,
        "TARGET": "from-dotenv",
    }
    assert "GREETING='hello world'" in (await ok(cluster, "config", "--shell")).splitlines()

    await ok(cluster, "config", "unset", "GREETING", "--no-wait")
    await runs(cluster, 4, "GREETING=[] TARGET=[from-dotenv]")

    env_file = tmp_path / "production.env"
    env_file.write_text("# literal, as honcho reads it\nGREETING='${HOME} stays'\nTARGET=loaded\n")
    await ok(cluster, "config", "load", str(env_file), "--no-wait")
    await runs(cluster, 5, "GREETING=[${HOME} stays] TARGET=[loaded]")

    listed = await releases(cluster)
    assert [(r["version"], r["description"]) for r in listed] == [
        (5, "Set GREETING, TARGET config vars"),
        (4, "Unset GREETING config vars"),
        (3, "Set GREETING, SECRET config vars"),
        (2, f"Deploy {listed[3]['slug']['digest'][:12]}"),
        (1, "Set GREETING config vars"),
    ]
    assert {r["by"] for r in listed} == {"admin"}, "TLS on: the admin credential's name"
    assert [r["previous"] for r in listed] == [4, 3, 2, 1, 0]
    assert listed[0]["config_keys"] == ["GREETING", "SECRET", "TARGET"]

    # Values never reach the log stream (events name keys) nor the scheduler's log.
    stream = await ok(cluster, "logs", "-n", "100000")
    assert "Set GREETING, SECRET config vars" in stream
    assert SECRET not in stream
    logs = {path.name: path.read_text(errors="replace") for path in cluster.logs_dir.glob("*.log")}
    assert "Set GREETING, SECRET config vars" in logs["scheduler.log"], sorted(logs)
    assert {"scheduler.log", "node-1.log"} <= set(logs)
    assert not [name for name, text in logs.items() if SECRET in text]


async def test_bad_config_input_is_one_line_exit_1_and_makes_no_release(
    cluster: LocalCluster, app_dir: Path, tmp_path: Path
) -> None:
    await ok(cluster, "apps", "create", "shop")
    await ok(cluster, "deploy", str(app_dir))
    await ok(cluster, "config", "set", "KEPT=1", "--no-wait")
    before = await releases(cluster)
    assert len(before) == 2
    bad_env = tmp_path / "bad.env"
    bad_env.write_text("OK=1\nPAAS_APP=other\n")
    empty_env = tmp_path / "empty.env"
    empty_env.write_text("# nothing\n")
    big = "x" * CONFIG_VARS_LIMIT
    cases: list[tuple[tuple[str, ...], str]] = [
        (("config", "set", "1BAD=x"), "invalid config var name '1BAD'"),
        (("config", "set", "BAD-KEY=x"), "invalid config var name 'BAD-KEY'"),
        (("config", "set", "PORT=80"), "config var PORT is reserved"),
        (("config", "set", "DYNO=web.1"), "config var DYNO is reserved"),
        (("config", "set", "PAAS_APP=x"), "config var PAAS_APP is reserved"),
        (("config", "set", f"BIG={big}"), "32 KiB"),
        (("config", "set"), "no KEY=VALUE given"),
        (("config", "set", "NOEQUALS"), "expected KEY=VALUE, got 'NOEQUALS'"),
        (("config", "set", "A=1", "A=2"), "config var A is given more than once"),
        (("config", "unset", "MISSING"), "config var MISSING is not set"),
        (("config", "unset"), "no config var given"),
        (("config", "get", "MISSING"), "config var MISSING is not set on shop"),
        (("config", "load", str(bad_env)), "config var PAAS_APP is reserved"),
        (("config", "load", str(empty_env)), "sets no config vars"),
        (("config", "load", str(tmp_path / "absent.env")), "cannot read"),
    ]
    for args, problem in cases:
        result = await paas(cluster, *args, app="shop")
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
        assert problem in lines[0], (args, lines[0])
        assert result.stdout == "", args
    # A total over the limit only the scheduler can see: each part fits, the sum not.
    half = "y" * (CONFIG_VARS_LIMIT // 2)
    await ok(cluster, "config", "set", f"HALF1={half}", "--no-wait")
    over = await paas(cluster, "config", "set", f"HALF2={half}", "--no-wait", app="shop")
    assert over.returncode == 1 and "32 KiB" in over.stderr, over.stderr
    # A deploy's .env is held to the same rules.
    (app_dir / ".env").write_text("PORT=80\n")
    refused = await paas(cluster, "deploy", str(app_dir), app="shop")
    assert refused.returncode == 1 and "PORT is reserved" in refused.stderr
    assert len(await releases(cluster)) == len(before) + 1, "only the HALF1 release was made"


async def test_the_scheduler_checks_release_requests_as_if_there_were_no_cli(
    cluster: LocalCluster, scheduler: SchedulerAsyncStub, app_dir: Path
) -> None:
    # Each new copy stays 2 s before it is promoted, so the rollout lasts long enough
    # to be seen rolling (with min_healthy 0 it could be over before the first look:
    # CI saw no GetRelease while it rolled).
    (app_dir / "paas.toml").write_text("[types.worker]\nmin_healthy = 2\n")
    await ok(cluster, "apps", "create", "shop")
    await ok(cluster, "deploy", str(app_dir))
    await ok(cluster, "scale", "worker=2")

    async def both_up() -> bool:
        rows = [row for row in await ps_rows(cluster, "shop") if row["type"] == "worker"]
        return len(rows) == 2 and all(r["release"] == 1 and r["state"] == "up" for r in rows)

    # Both run v1 before the change, so the rollout has two to replace.
    await wait_for(both_up, timeout=90, what="worker.1 and worker.2 up on v1")
    made = await scheduler.SetConfig(pb.SetConfigRequest(app="shop", set={"GREETING": "hi"}))
    assert made.status == pb.RELEASE_ROLLING and made.previous == 1 and made.by == "admin"

    counts: set[tuple[int, int]] = set()

    async def replaced() -> bool:
        now = await scheduler.GetRelease(pb.GetReleaseRequest(app="shop", version=2))
        if now.status == pb.RELEASE_ROLLING:
            counts.add((now.instances, now.replaced))
        return now.status == pb.RELEASE_SUCCEEDED

    await wait_for(replaced, timeout=90, what="the rollout of v2 to both workers")
    assert counts and all(instances == 2 for instances, _ in counts), counts
    current = await scheduler.GetRelease(pb.GetReleaseRequest(app="shop"))
    assert current.version == 2 and dict(current.env) == {"GREETING": "hi", "TARGET": "from-dotenv"}

    bad: list[tuple[Any, str]] = [
        (pb.SetConfigRequest(app="shop", set={"PORT": "1"}), "PORT is reserved"),
        (pb.SetConfigRequest(app="shop", set={"A": "x\0y"}), "NUL"),
        (pb.SetConfigRequest(app="shop", set={"A B": "1"}), "invalid config var name"),
        (pb.SetConfigRequest(app="shop"), "no config var to set or unset"),
        (pb.SetConfigRequest(app="shop", unset=["NOPE"]), "config var NOPE is not set"),
        (pb.RollbackRequest(app="shop", version=99), "shop has no release v99"),
        (pb.RollbackRequest(app="shop", version=-1), "a release version is from 1"),
        (pb.GetReleaseRequest(app="shop", version=99), "shop has no release v99"),
        (pb.ListReleasesRequest(app="shop", limit=-1), "limit must be from 0"),
        (pb.SetConfigRequest(app="nope", set={"A": "1"}), "unknown app 'nope'"),
    ]
    methods: dict[type, Any] = {
        pb.SetConfigRequest: scheduler.SetConfig,
        pb.RollbackRequest: scheduler.Rollback,
        pb.GetReleaseRequest: scheduler.GetRelease,
        pb.ListReleasesRequest: scheduler.ListReleases,
    }
    for request, problem in bad:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await methods[type(request)](request)
        assert problem in (raised.value.details() or ""), (request, raised.value.details())
    listed = await scheduler.ListReleases(pb.ListReleasesRequest(app="shop"))
    assert [r.version for r in listed.releases] == [2, 1], "nothing was made"
