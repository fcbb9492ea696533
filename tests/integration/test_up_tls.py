"""`paas up` with TLS on (the default) and off: the export line it prints is all a user
needs, and with TLS the CLI finds the admin credentials with nothing set at all."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from paas.common import pki
from tests.helpers import paas, wait_for

pytestmark = pytest.mark.integration


class Up:
    """A running `paas up --agents 1` with its own HOME."""

    def __init__(self, process: asyncio.subprocess.Process, home: Path, stderr: Path) -> None:
        self.process = process
        self.home = home
        self.stderr = stderr
        self.exports: dict[str, str] = {}

    async def read_export_line(self) -> None:
        assert self.process.stdout is not None
        async with asyncio.timeout(120):
            async for raw in self.process.stdout:
                line = raw.decode().strip()
                if line.startswith("export PAAS_SCHEDULER="):
                    words = line.removeprefix("export ").split()
                    self.exports = dict(word.split("=", 1) for word in words)
                    return
        raise AssertionError(f"paas up ended without an export line: {self.stderr.read_text()}")

    def env(self, **extra: str) -> dict[str, str]:
        return {"HOME": str(self.home), **extra}


@pytest.fixture
async def up(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Up]:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAAS_")}
    env["HOME"] = str(home)
    stderr = tmp_path / "up.stderr"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "paas", "up", "--agents", "1",
        "--data-dir", str(tmp_path / "data"), *request.param,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=stderr.open("wb"), env=env,
    )  # fmt: skip
    started = Up(process, home, stderr)
    try:
        await started.read_export_line()
        yield started
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                await process.wait()


@pytest.mark.parametrize("up", [()], indirect=True)
async def test_paas_up_prints_the_credentials_and_the_cli_finds_them_unasked(up: Up) -> None:
    creds_path = Path(up.exports["PAAS_CREDENTIALS"])
    assert pki.read_credentials(creds_path).identity == pki.Identity(pki.Role.ADMIN, "admin")
    scheduler = up.exports["PAAS_SCHEDULER"]
    # With the export line, as the README's tour has it...
    exported = await paas(scheduler, "nodes", "--json", env=up.env(**up.exports))
    assert [n["name"] for n in exported.json()] == ["node-1"]
    # ...and with only PAAS_SCHEDULER: the default path holds this cluster's credentials.
    default = up.home / ".config" / "paas" / "credentials"
    assert os.stat(default).st_mode & 0o777 == 0o600
    plain = await paas(scheduler, "nodes", "--json", env=up.env())
    assert [n["name"] for n in plain.json()] == ["node-1"]
    # Plaintext is refused on the TLS port.
    refused = await paas(scheduler, "nodes", env=up.env(PAAS_INSECURE="1"))
    assert refused.returncode == 1 and "refused a plaintext connection" in refused.stderr
    up.process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(up.process.wait(), 60) == 0


@pytest.mark.parametrize("up", [("--insecure",)], indirect=True)
async def test_paas_up_insecure_turns_tls_off_and_says_so(up: Up) -> None:
    assert up.exports.get("PAAS_INSECURE") == "1" and "PAAS_CREDENTIALS" not in up.exports
    await wait_for(lambda: "TLS is off" in up.stderr.read_text(), what="the warning")
    scheduler = up.exports["PAAS_SCHEDULER"]
    nodes = await paas(scheduler, "nodes", "--json", env=up.env(**up.exports))
    assert [n["name"] for n in nodes.json()] == ["node-1"]
    assert not (up.home / ".config" / "paas" / "credentials").exists()
