"""The compose cluster of deploy/docker-compose.yml, once per test run.

Skipped, with one line saying why, where no Docker engine or no compose tool is
there. The image is built once per run (deploy/build-image.sh: docker's layer cache
reuses every layer whose input is unchanged, so a run after no code change costs a
wheel build and about a second of docker). Each run has its own compose project
name and published ports, and removes its containers, network and volumes at the
end, failure or not; when a test failed, every container's log is saved under the
run's tmp dir and its path printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from paas.common.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = ROOT / "deploy" / "cluster.sh"
BUILD_IMAGE_SH = ROOT / "deploy" / "build-image.sh"
IMAGE = "paas:test"


def _why_not() -> str | None:
    """Why the cluster tests cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no docker command here"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "the Docker engine does not answer"
    if info.returncode != 0:
        return "no Docker engine answers here"
    compose_v2 = subprocess.run(["docker", "compose", "version"], capture_output=True)
    if compose_v2.returncode != 0 and shutil.which("docker-compose") is None:
        return "neither 'docker compose' nor 'docker-compose' is installed"
    return None


@dataclass
class ComposeCluster:
    """The running cluster, as the CLI on the host reaches it."""

    project: str
    env: dict[str, str]  # PAAS_SCHEDULER and PAAS_CREDENTIALS, and what cluster.sh needs
    scheduler_ports: tuple[int, int]

    @property
    def scheduler(self) -> str:
        return self.env["PAAS_SCHEDULER"]

    def container(self, service: str) -> str:
        """The container name of `service` (docker-compose 1.x and v2 name them so)."""
        ids = self.compose("ps", "-q", service).stdout.split()
        assert ids, f"no container for {service}"
        return ids[0]

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
            tool = ["docker", "compose"]
        else:
            tool = ["docker-compose"]
        argv = [*tool, "-p", self.project, "-f", str(ROOT / "deploy" / "docker-compose.yml")]
        done = subprocess.run(
            [*argv, *args], capture_output=True, text=True, env=self.env, timeout=180
        )
        if check:
            assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}"
        return done

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
        if check:
            assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
        return done


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cluster/" in str(item.path):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def compose_cluster(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ComposeCluster]:
    why = _why_not()
    if why is not None:
        pytest.skip(f"cluster tests skipped: {why}")
    python = sys.executable
    built = subprocess.run(
        [str(BUILD_IMAGE_SH)],
        env={**os.environ, "IMAGE": IMAGE, "PYTHON": python},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, f"make image failed: {built.stderr}"
    ports = (free_port(), free_port())
    project = f"paastest{os.getpid()}{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "PAAS_PROJECT": project,
        "PAAS_IMAGE": IMAGE,
        "PAAS_SCHEDULER_PORT_1": str(ports[0]),
        "PAAS_SCHEDULER_PORT_2": str(ports[1]),
        "PAAS": str(Path(python).parent / "paas"),
        "NO_COLOR": "1",
    }
    env.pop("PAAS_APP", None)
    cluster = ComposeCluster(project, env, ports)
    failed_before = request.session.testsfailed
    try:
        up = subprocess.run(
            [str(CLUSTER_SH), "up"], capture_output=True, text=True, env=env, timeout=300
        )
        if up.returncode != 0:
            _save_logs(cluster, tmp_path_factory)
        assert up.returncode == 0, f"cluster.sh up failed: {up.stderr}"
        for line in up.stdout.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            if name in ("PAAS_SCHEDULER", "PAAS_CREDENTIALS"):
                env[name] = value
        assert "PAAS_CREDENTIALS" in env and "PAAS_SCHEDULER" in env, up.stdout
        yield cluster
    finally:
        if request.session.testsfailed > failed_before:
            _save_logs(cluster, tmp_path_factory)
        subprocess.run(
            [str(CLUSTER_SH), "down"], capture_output=True, env=env, timeout=300, check=False
        )


def _save_logs(cluster: ComposeCluster, factory: pytest.TempPathFactory) -> None:
    path = factory.mktemp("compose-logs") / "containers.log"
    logs = cluster.compose("logs", "--no-color", "--timestamps", check=False)
    path.write_text(logs.stdout + logs.stderr)
    print(f"\ncompose cluster logs: {path}", file=sys.stderr)
