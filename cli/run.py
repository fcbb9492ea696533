"""`paas run`: a one-off process, attached to this terminal or detached.

Owns the attach loop: stdin read in a thread (it may be a terminal, a pipe or a
file, and a blocked read must never hold the loop or the exit) and sent in
order, EOF included; SIGINT, SIGQUIT and SIGTERM of the CLI forwarded to the
run's process group (Ctrl-C reaches the process, not the CLI); stdout and
stderr written as they come, a message at a time, so a slow terminal slows the
process down instead of losing output; the exit code is the CLI's (128+N for a
signal). A run whose node is lost, or whose leader changes, ends the CLI with
one line and exit 1. The terminal is left in its mode (no raw mode: the process
has pipes, not a terminal), and its size is passed as COLUMNS and LINES.

    paas run -- sh -c 'exit 3'        # exit code 3
    echo hi | paas run -- cat         # hi
    paas run --detach worker          # run.4; its output in `paas logs -p run.4`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import threading
from typing import Any

import grpc

from paas.cli import render
from paas.cli.client import SchedulerClient, SchedulerError
from paas.cli.commands import scheduler_addresses
from paas.cli.credentials import connect
from paas.cli.errors import CommandError
from paas.common.configvars import check_config_vars
from paas.proto import paas_pb2 as pb

STDIN_CHUNK = 32 * 1024
# Stdin chunks read ahead of what the scheduler has taken.
STDIN_AHEAD = 4
FORWARDED = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)
RESERVED = ("PORT", "DYNO")


def parse_env(pairs: list[str]) -> dict[str, str]:
    """--env K=V, as config vars are checked (and the agent's own names refused)."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CommandError(f"--env {pair!r}: use KEY=VALUE")
        if key in RESERVED or key.startswith("PAAS_"):
            raise CommandError(f"--env {key}: {key} is set by paas for every process")
        env[key] = value
    check_config_vars(env)
    return env


def prepare(args: argparse.Namespace) -> pb.RunStart:
    words = list(args.command)
    if words and words[0] == "--":
        words = words[1:]
    if not words:
        raise CommandError(
            "no command to run: `paas run -- COMMAND ...`, or `paas run TYPE` for a "
            "Procfile command"
        )
    start = pb.RunStart(
        app=args.app,
        command=words,
        detach=args.detach,
        type=args.type or "",
        env=parse_env(args.env or []),
        node=args.node or "",
    )
    if sys.stdout.isatty():
        size = shutil.get_terminal_size()
        start.columns, start.lines = size.columns, size.lines
    return start


def run_command(args: argparse.Namespace) -> int:
    """What the command table runs: the exit code is the run's."""
    start = prepare(args)
    addresses = scheduler_addresses(args)

    async def call() -> int:
        async with connect(addresses, args) as client:
            return await run(client, start)

    return asyncio.run(call())


async def run(client: SchedulerClient, start: pb.RunStart) -> int:
    call, first = await client.open_run(start)
    where = f"`{' '.join(start.command)}` on {start.app}"
    if start.detach:
        call.cancel()
        render.info(f"Running {where}... up, {first.name} (node {first.node})")
        render.out(first.name)
        render.info(f"Run `paas logs -a {start.app} -p {first.name}` to see its output.")
        return 0
    render.info(f"Running {where}... up, {first.name} (node {first.node})")
    return await _attached(call)


async def _attached(call: Any) -> int:
    loop = asyncio.get_running_loop()
    outgoing: asyncio.Queue[pb.RunInput] = asyncio.Queue(maxsize=STDIN_AHEAD)
    signals: list[int] = []

    def forward(signum: int) -> None:
        # Signals jump the stdin queue: Ctrl-C must not wait behind a full pipe.
        signals.append(signum)
        with contextlib.suppress(asyncio.QueueFull):
            outgoing.put_nowait(pb.RunInput())

    for signum in FORWARDED:
        loop.add_signal_handler(signum, forward, signum)
    _read_stdin(loop, outgoing)
    writer = asyncio.create_task(_write(call, outgoing, signals))
    try:
        return await _read(call)
    finally:
        for signum in FORWARDED:
            loop.remove_signal_handler(signum)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer
        call.cancel()


def _read_stdin(loop: asyncio.AbstractEventLoop, outgoing: asyncio.Queue[pb.RunInput]) -> None:
    """Stdin into `outgoing` from a daemon thread, then an EOF: a read that blocks (a
    terminal nobody types into) never holds up the CLI's exit."""

    def put(message: pb.RunInput) -> bool:
        future = asyncio.run_coroutine_threadsafe(outgoing.put(message), loop)
        try:
            future.result()
        except Exception:
            return False  # the loop is gone: the CLI is exiting
        return True

    def pump() -> None:
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, OSError, ValueError):
            put(pb.RunInput(eof=True))
            return
        while True:
            try:
                data = os.read(fd, STDIN_CHUNK)
            except OSError:
                data = b""
            if not put(pb.RunInput(stdin=data) if data else pb.RunInput(eof=True)):
                return
            if not data:
                return

    threading.Thread(target=pump, name="paas run stdin", daemon=True).start()


async def _write(call: Any, outgoing: asyncio.Queue[pb.RunInput], signals: list[int]) -> None:
    eof = False
    while True:
        message = await outgoing.get()
        while signals:
            await call.write(pb.RunInput(signal=signals.pop(0)))
        if message.eof and not eof:
            eof = True
            await call.write(message)
        elif message.stdin and not eof:
            await call.write(message)


async def _read(call: Any) -> int:
    stdout, stderr = sys.stdout.buffer, sys.stderr.buffer
    while True:
        try:
            message = await call.read()
        except grpc.aio.AioRpcError as exc:
            raise SchedulerError(
                f"the connection to the scheduler broke ({exc.details() or exc.code().name}); "
                "the run's outcome is unknown",
                exc.code(),
            ) from None
        if message is grpc.aio.EOF:  # type: ignore[attr-defined]
            raise CommandError("the scheduler ended the run's stream; the run's outcome is unknown")
        if message.stdout:
            await asyncio.to_thread(_write_out, stdout, message.stdout)
        if message.stderr:
            await asyncio.to_thread(_write_out, stderr, message.stderr)
        if message.lost:
            raise CommandError(message.lost)
        if message.HasField("exit"):
            return int(message.exit.code) if message.exit.code else 0


def _write_out(stream: Any, data: bytes) -> None:
    stream.write(data)
    stream.flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--detach",
        action="store_true",
        help="run in the background: print its name (run.N); its output goes to the log stream",
    )
    parser.add_argument(
        "--type",
        metavar="TYPE",
        default=None,
        help="the Procfile type whose settings (stop grace...) it runs with (default: run, "
        "or TYPE of `paas run TYPE`)",
    )
    parser.add_argument(
        "--env",
        "-e",
        metavar="K=V",
        action="append",
        help="set a config var for this run only (repeat for more)",
    )
    parser.add_argument("--node", metavar="NODE", default=None, help="run it on this node")
    parser.add_argument(
        "command",
        metavar="COMMAND",
        nargs=argparse.REMAINDER,
        help="what to run, after `--`; one word naming a Procfile type runs its command",
    )
