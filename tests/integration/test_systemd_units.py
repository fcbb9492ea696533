"""deploy/systemd: the units pass `systemd-analyze verify` (with ExecStart pointing at
this checkout's paas and etcd) and keep the promises operators rely on: the agent's
instances stop with it and nothing outlives it, its stop timeout is above the default
stop grace, every unit restarts and has room for file descriptors."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from paas.agent.config import AgentConfig

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
ANALYZE = shutil.which("systemd-analyze")


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


def test_there_is_a_unit_for_each_part() -> None:
    assert {p.name for p in UNITS.glob("*.service")} == {
        "paas-agent.service",
        "paas-scheduler.service",
        "etcd.service",
    }


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed here")
def test_every_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # The units name /opt/paas/bin (the image's and a VM's venv); here that is ours.
    bin_dir = str(Path(sys.executable).parent)
    for source in UNITS.glob("*.service"):
        text = source.read_text().replace("/opt/paas/bin", bin_dir)
        (tmp_path / source.name).write_text(text)
    assert ANALYZE is not None
    verified = subprocess.run(
        [ANALYZE, "verify", *sorted(str(p) for p in tmp_path.glob("*.service"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify warns (on stderr, exit 0) about a directive it ignores: both must be clean.
    assert verified.returncode == 0, verified.stderr
    assert verified.stderr.strip() == "", verified.stderr


def test_the_agent_stops_its_instances_with_it_and_nothing_outlives_it() -> None:
    service = unit("paas-agent.service")["Service"]
    # mixed: SIGTERM to the agent alone (it stops each instance with its grace), then
    # SIGKILL to the whole control group once TimeoutStopSec has passed.
    assert service["KillMode"] == "mixed"
    assert float(service["TimeoutStopSec"]) > AgentConfig(join=[], name="n").stop_grace
    assert service["Restart"] == "always"
    assert int(service["LimitNOFILE"]) >= 65536
    assert "--state-dir /var/lib/paas" in service["ExecStart"]
    assert "--advertise" in service["ExecStart"]


def test_the_scheduler_serves_tls_and_restarts() -> None:
    service = unit("paas-scheduler.service")["Service"]
    assert "--tls-dir" in service["ExecStart"]
    assert service["Restart"] == "always"
    assert unit("etcd.service")["Service"]["Restart"] == "always"
