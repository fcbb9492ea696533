"""Waiting for a new release to roll out: `paas config set`, `config unset/load` and
`rollback` and `paas deploy` end here unless --no-wait.

    code = await wait_for_release(client, "shop", 5, sys.stderr, tty=sys.stderr.isatty())

It polls GetRelease every POLL_INTERVAL seconds until the release is no longer
rolling. On a terminal one line shows the progress, rewritten in place
(`Rolling out v5: 3/10 replaced`); elsewhere one line says it waits, so a log of
a script does not fill with progress. Then one line says how it ended: 0 for a
release that succeeded, 1 for one that failed (with its status_reason). Ctrl-C
stops the waiting, not the rollout. The words come from render.py.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TextIO

from paas.cli import render
from paas.cli.client import SchedulerClient
from paas.cli.errors import EXIT_OK, EXIT_REFUSED
from paas.proto import paas_pb2 as pb

POLL_INTERVAL = 0.5


async def wait_for_release(
    client: SchedulerClient,
    app: str,
    version: int,
    out: TextIO,
    tty: bool,
    interval: float = POLL_INTERVAL,
) -> int:
    """Poll release `version` of `app` until it is not rolling; its exit code."""
    shown = ""
    while True:
        release = await client.get_release(app, version)
        if release.status != pb.RELEASE_ROLLING:
            break
        line = render.rollout_progress(release)
        if tty and line != shown:
            out.write(f"\r\x1b[2K{line}")
            out.flush()
        elif not shown:
            out.write(f"{render.rollout_waiting(release)}\n")
            out.flush()
        shown = line
        await asyncio.sleep(interval)
    if tty and shown:
        out.write("\r\x1b[2K")
    out.write(f"{render.rollout_result(release)}\n")
    out.flush()
    return EXIT_REFUSED if release.status == pb.RELEASE_FAILED else EXIT_OK


async def wait_as_asked(
    client: SchedulerClient, args: argparse.Namespace, release: pb.Release
) -> int:
    """`paas deploy`, `config set/unset/load` and `rollback`: wait for the release's
    rollout (progress on stderr) unless --no-wait; the command's exit code."""
    if args.no_wait:
        return EXIT_OK
    return await wait_for_release(
        client, args.app, release.version, sys.stderr, tty=sys.stderr.isatty()
    )
