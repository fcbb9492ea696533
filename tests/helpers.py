"""Helpers for tests that drive a real cluster: run the real CLI, wait for a condition.

result = await paas(cluster, "scale", "web=2", app="shop")
assert result.returncode == 0, result.stderr
await wait_for(lambda: web_is_up(), what="web.1 up")
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from paas.cli.localcluster import LocalCluster

T = TypeVar("T")


@dataclass(frozen=True)
class Result:
    """What a finished `paas` command left: like subprocess.CompletedProcess."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout parsed as JSON, after checking the command succeeded."""
        assert self.returncode == 0, f"paas {' '.join(self.args)} failed: {self.stderr}"
        return json.loads(self.stdout)


async def paas(
    cluster: LocalCluster | str,
    *args: str,
    app: str | None = None,
    timeout: float = 60.0,  # noqa: ASYNC109 - a bound on the child process, not a wait
    env: dict[str, str] | None = None,
) -> Result:
    """Run the real CLI (`python -m paas ARGS`) against `cluster` (or a scheduler address).

    `app` becomes PAAS_APP; without it PAAS_APP is unset, so the command sees
    exactly the app the test names. A cluster's admin credentials are presented
    (PAAS_CREDENTIALS, or PAAS_INSECURE=1 for a cluster without TLS); with a bare
    address, only what `env` says.
    """
    ours = ("PAAS_APP", "PAAS_SCHEDULER", "PAAS_CREDENTIALS", "PAAS_INSECURE")
    child_env = {k: v for k, v in os.environ.items() if k not in ours}
    if isinstance(cluster, str):
        child_env["PAAS_SCHEDULER"] = cluster
    else:
        child_env.update(cluster.client_env())
    child_env["NO_COLOR"] = "1"
    if app is not None:
        child_env["PAAS_APP"] = app
    child_env.update(env or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "paas",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"paas {' '.join(args)} did not finish within {timeout:g} s") from None
    assert process.returncode is not None
    return Result(list(args), process.returncode, stdout.decode(), stderr.decode())


async def ps_rows(cluster: LocalCluster | str, app: str) -> list[dict[str, Any]]:
    """`paas ps --json` of `app`, after checking the command succeeded."""
    rows: list[dict[str, Any]] = (await paas(cluster, "ps", "--json", app=app)).json()
    return rows


async def wait_for(
    condition: Callable[[], Any],
    timeout: float = 30.0,  # noqa: ASYNC109 - the polling deadline is the point
    interval: float = 0.05,
    what: str = "the condition",
) -> Any:
    """Poll `condition` (sync or async) until it returns something truthy; return that.

    An exception from the condition counts as "not yet"; the last one is shown
    if time runs out, with `what` naming what was awaited.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            last_error = None
        except Exception as exc:
            last_error = exc
        if loop.time() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        await asyncio.sleep(interval)


async def etcd_keys(endpoint: str) -> dict[str, bytes]:
    """Every key under /paas/ of the etcd at `endpoint` (HOST:PORT), with its value."""
    import aetcd

    from paas.scheduler.store import PREFIX

    host, port = endpoint.rsplit(":", 1)
    client = aetcd.Client(host=host, port=int(port))
    try:
        result = await client.get_prefix(PREFIX.encode())
    finally:
        await client.close()
    return {kv.key.decode(): kv.value for kv in result.kvs}


async def keys_of(endpoint: str, app: str) -> list[str]:
    """The keys under /paas/ of the etcd at `endpoint` that name `app` as a path segment."""
    return sorted(key for key in await etcd_keys(endpoint) if f"/{app}/" in key + "/")


def child_pids() -> set[int]:
    """Every live (not zombie) descendant of this test process."""
    import psutil

    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                found.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def children_since(before: set[int]) -> set[int]:
    """The live descendants that were not there in `before` (taken at a test's start):
    a test answers for its own processes, not for those of a test before it on this
    worker that are still on their way out."""
    return child_pids() - before
