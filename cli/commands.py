"""The API commands: apps, apps create, deploy, scale, ps, nodes, logs.

Each handler checks its input locally first (formation words, Procfile, app
name) so a mistake is a one-line error with nothing sent, then makes its call
through `SchedulerClient` and hands the answer to `render`. Handlers never
print directly and never pick exit codes beyond raising `CommandError`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from paas.cli import render
from paas.cli.client import SchedulerClient, SchedulerError
from paas.cli.errors import EXIT_OK, CommandError, UsageError
from paas.common.addresses import DEFAULT_SCHEDULER
from paas.common.formation import FormationError, parse_changes
from paas.common.names import NameError_, check_app_name
from paas.common.procfile import ProcfileError, parse_procfile

Handler = Callable[[SchedulerClient, argparse.Namespace], Awaitable[None]]


def run(handler: str, args: argparse.Namespace) -> int:
    """Run one API command; refusals become `CommandError`."""
    handle = _HANDLERS[handler]
    prepare = _PREPARE.get(handler)
    if prepare is not None:
        prepare(args)  # local checks first: nothing is sent when they fail
    addresses = scheduler_addresses(args)

    async def call() -> None:
        async with SchedulerClient(addresses) as client:
            await handle(client, args)

    try:
        asyncio.run(call())
    except SchedulerError as exc:
        raise CommandError(str(exc)) from None
    return EXIT_OK


# ------------------------------------------------------------------ where and what


def scheduler_addresses(args: argparse.Namespace) -> list[str]:
    """--scheduler, else $PAAS_SCHEDULER, else the default; checked."""
    from paas.common.addresses import AddressError, parse_address_list

    text = getattr(args, "scheduler", None) or os.environ.get("PAAS_SCHEDULER") or ""
    source = "--scheduler" if getattr(args, "scheduler", None) else "PAAS_SCHEDULER"
    if not text.strip():
        return [DEFAULT_SCHEDULER]
    try:
        return parse_address_list(text)
    except AddressError as exc:
        raise UsageError(f"{source}: {exc}") from None


def app_name(args: argparse.Namespace) -> str:
    """-a/--app, else $PAAS_APP; a missing app is an error."""
    name = (getattr(args, "app", None) or os.environ.get("PAAS_APP") or "").strip()
    if not name:
        raise CommandError("no app given: use -a NAME or set PAAS_APP")
    return name


# ------------------------------------------------------------------ local checks


def _prepare_scale(args: argparse.Namespace) -> None:
    args.app = app_name(args)
    try:
        args.parsed_changes = parse_changes(list(args.changes))
    except FormationError as exc:
        raise CommandError(str(exc)) from None


def _prepare_create(args: argparse.Namespace) -> None:
    try:
        check_app_name(args.name)
    except NameError_ as exc:
        raise CommandError(str(exc)) from None


def _prepare_app(args: argparse.Namespace) -> None:
    args.app = app_name(args)


def _prepare_deploy(args: argparse.Namespace) -> None:
    args.app = app_name(args)
    args.source = read_app_dir(Path(args.dir))


class AppSource:
    """What `paas deploy` sends: the directory, its Procfile text and .env vars."""

    def __init__(self, directory: Path, procfile: str, env: dict[str, str]) -> None:
        self.directory = directory
        self.procfile = procfile
        self.env = env


def read_app_dir(directory: Path) -> AppSource:
    """Read and check DIR/Procfile and DIR/.env; raise CommandError naming the problem."""
    from dotenv import dotenv_values

    directory = directory.expanduser().resolve()
    if not directory.is_dir():
        raise CommandError(f"{directory} is not a directory")
    procfile = directory / "Procfile"
    if not procfile.is_file():
        raise CommandError(
            f"no Procfile in {directory}: list the process types there, e.g. 'web: python app.py'"
        )
    try:
        text = procfile.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {procfile}: {exc}") from None
    try:
        parse_procfile(text, source=str(procfile))
    except ProcfileError as exc:
        raise CommandError(str(exc)) from None
    env: dict[str, str] = {}
    dotenv = directory / ".env"
    if dotenv.is_file():
        # A bare `KEY` line has no value (None): it sets nothing, as in honcho.
        env = {key: value for key, value in dotenv_values(dotenv).items() if value is not None}
    return AppSource(directory, text, env)


# ------------------------------------------------------------------ handlers


async def _apps(client: SchedulerClient, args: argparse.Namespace) -> None:
    render.apps(await client.list_apps(), as_json=args.json)


async def _apps_create(client: SchedulerClient, args: argparse.Namespace) -> None:
    app = await client.create_app(args.name)
    render.out(f"Created app {app.name}")


async def _deploy(client: SchedulerClient, args: argparse.Namespace) -> None:
    source: AppSource = args.source
    release = await client.deploy(args.app, str(source.directory), source.procfile, source.env)
    types = ", ".join(release.commands) or "no process types"
    render.out(f"Deployed {args.app} v{release.version} from {source.directory} ({types})")


async def _scale(client: SchedulerClient, args: argparse.Namespace) -> None:
    formation = await client.scale(args.app, args.parsed_changes)
    render.out(render.formation(args.app, formation))


async def _ps(client: SchedulerClient, args: argparse.Namespace) -> None:
    render.instances(await client.list_instances(args.app), as_json=args.json)


async def _nodes(client: SchedulerClient, args: argparse.Namespace) -> None:
    render.nodes(await client.list_nodes(), as_json=args.json)


async def _logs(client: SchedulerClient, args: argparse.Namespace) -> None:
    printer = render.LogPrinter(flush_each=args.follow)
    try:
        async for line in client.logs(
            args.app, lines=args.num, process=args.process or "", follow=args.follow
        ):
            printer.print(line)
    finally:
        printer.flush()


_HANDLERS: dict[str, Handler] = {
    "apps": _apps,
    "apps create": _apps_create,
    "deploy": _deploy,
    "scale": _scale,
    "ps": _ps,
    "nodes": _nodes,
    "logs": _logs,
}

_PREPARE: dict[str, Callable[[argparse.Namespace], None]] = {
    "apps create": _prepare_create,
    "deploy": _prepare_deploy,
    "scale": _prepare_scale,
    "ps": _prepare_app,
    "logs": _prepare_app,
}
