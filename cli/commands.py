"""The API commands: apps, apps create, deploy, scale, ps, restart, stop, nodes, logs, drains.

Each handler checks its input locally first (formation words, Procfile, app
name) so a mistake is a one-line error with nothing sent, then makes its call
through `SchedulerClient` and hands the answer to `render`. Handlers never
print directly and never pick exit codes beyond raising `CommandError`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

from paas.cli import render
from paas.cli.appconfig import DOTENV, AppConfigError, parse_app_config, parse_dotenv
from paas.cli.appconfig import FILENAME as APP_CONFIG
from paas.cli.client import SchedulerClient, SchedulerError
from paas.cli.daemons import tune_gc
from paas.cli.errors import EXIT_OK, CommandError, UsageError
from paas.cli.timespec import TimeSpecError, parse_since
from paas.common.addresses import DEFAULT_SCHEDULER
from paas.common.configvars import PROCFILE_LIMIT, check_no_nul, check_size
from paas.common.drainurl import DrainURLError, parse_drain_url
from paas.common.errors import InvalidInput
from paas.common.formation import FormationError, parse_changes
from paas.common.names import InstanceName, NameError_, check_app_name, check_process_type
from paas.common.procfile import parse_procfile
from paas.proto import paas_pb2 as pb

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
    except KeyboardInterrupt:
        if handler == "logs" and args.follow:
            return EXIT_OK  # Ctrl-C is how `paas logs -f` ends
        raise
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


def _prepare_ps(args: argparse.Namespace) -> None:
    args.app = app_name(args)
    if args.process:
        args.process = _process_or_instance(args.process)


def _prepare_restart(args: argparse.Namespace) -> None:
    args.app = app_name(args)
    if args.process:
        args.process = _process_or_instance(args.process)


def _prepare_stop(args: argparse.Namespace) -> None:
    args.app = app_name(args)
    args.instance = _instance(args.instance, hint="to stop them all: `paas scale {}=0`")


def _prepare_logs(args: argparse.Namespace) -> None:
    args.app = app_name(args)
    if args.previous is not None:
        if args.follow:
            raise UsageError("--previous shows a run that has ended: it cannot be followed (-f)")
        if args.process:
            raise UsageError("--previous names the instance itself: leave out -p")
        try:
            args.previous = _instance(args.previous)
        except CommandError as exc:
            raise CommandError(f"--previous: {exc}") from None
    args.since_unix = 0.0
    if args.since is not None:
        try:
            args.since_unix = parse_since(args.since, time.time())
        except TimeSpecError as exc:
            raise CommandError(f"--since: {exc}") from None


def _prepare_drains_add(args: argparse.Namespace) -> None:
    args.app = app_name(args)
    try:
        args.url = parse_drain_url(args.url).url
    except DrainURLError as exc:
        raise CommandError(str(exc)) from None


def _prepare_drains_remove(args: argparse.Namespace) -> None:
    args.app = app_name(args)
    args.url = args.url.strip()
    if not args.url:
        raise CommandError("no drain URL given (`paas drains` lists them)")


def _process_or_instance(text: str) -> str:
    """`web` or `web.3`, checked; a bad one is a CommandError."""
    try:
        if "." in text:
            return str(InstanceName.parse(text))
        return check_process_type(text)
    except NameError_ as exc:
        raise CommandError(str(exc)) from None


def _instance(text: str, hint: str = "") -> str:
    """`web.3`, checked; for a bare type `hint` (formatted with it) says what may help."""
    try:
        return str(InstanceName.parse(text))
    except NameError_ as exc:
        if hint and "." not in text:
            with contextlib.suppress(NameError_):
                raise CommandError(f"{exc} ({hint.format(check_process_type(text))})") from None
        raise CommandError(str(exc)) from None


class AppSource:
    """What `paas deploy` sends: the directory, its Procfile text, .env vars and the
    per type settings of paas.toml."""

    def __init__(
        self,
        directory: Path,
        procfile: str,
        env: dict[str, str],
        settings: dict[str, pb.ProcessSettings] | None = None,
    ) -> None:
        self.directory = directory
        self.procfile = procfile
        self.env = env
        self.settings = settings or {}


def read_app_dir(directory: Path) -> AppSource:
    """Read and check DIR/Procfile, DIR/.env and DIR/paas.toml as the scheduler will
    (names, NUL bytes, the size limits); raise CommandError naming the problem."""
    directory = directory.expanduser().resolve()
    if not directory.is_dir():
        raise CommandError(f"{directory} is not a directory")
    procfile = directory / "Procfile"
    if not procfile.is_file():
        raise CommandError(
            f"no Procfile in {directory}: list the process types there, e.g. 'web: python app.py'"
        )
    text = _read_text(procfile)
    try:
        check_size(str(procfile), text, PROCFILE_LIMIT)
        check_no_nul(str(procfile), text)
        commands = parse_procfile(text, source=str(procfile))
    except InvalidInput as exc:
        raise CommandError(str(exc)) from None
    env: dict[str, str] = {}
    dotenv = directory / DOTENV
    if dotenv.is_file():
        try:
            env = parse_dotenv(_read_text(dotenv), source=str(dotenv))
        except (InvalidInput, AppConfigError) as exc:
            raise CommandError(str(exc)) from None
    settings: dict[str, pb.ProcessSettings] = {}
    config = directory / APP_CONFIG
    if config.exists():
        try:
            settings = parse_app_config(_read_text(config), commands, source=str(config))
        except AppConfigError as exc:
            raise CommandError(str(exc)) from None
    return AppSource(directory, text, env, settings)


def _read_text(path: Path) -> str:
    """`path` as UTF-8 text, a byte order mark at its start dropped (some editors
    save one)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {path}: {exc}") from None


# ------------------------------------------------------------------ handlers


async def _apps(client: SchedulerClient, args: argparse.Namespace) -> None:
    render.apps(await client.list_apps(), as_json=args.json)


async def _apps_create(client: SchedulerClient, args: argparse.Namespace) -> None:
    app = await client.create_app(args.name)
    render.out(f"Created app {app.name}")


async def _deploy(client: SchedulerClient, args: argparse.Namespace) -> None:
    source: AppSource = args.source
    release = await client.deploy(
        args.app, str(source.directory), source.procfile, source.env, source.settings
    )
    types = ", ".join(release.commands) or "no process types"
    settings = (
        f"; {APP_CONFIG} settings for {', '.join(sorted(source.settings))}"
        if source.settings
        else ""
    )
    render.out(
        f"Deployed {args.app} v{release.version} from {source.directory} ({types}){settings}"
    )


async def _scale(client: SchedulerClient, args: argparse.Namespace) -> None:
    formation = await client.scale(args.app, args.parsed_changes)
    render.out(render.formation(args.app, formation))


async def _ps(client: SchedulerClient, args: argparse.Namespace) -> None:
    views = await client.list_instances(args.app)
    wanted: str | None = args.process
    if wanted:
        views = [view for view in views if wanted in (view.name, view.type)]
        if not views and "." in wanted:
            raise CommandError(f"no instance {wanted} in {args.app} (`paas ps` lists them)")
    render.instances(views, as_json=args.json, verbose=args.verbose)


async def _restart(client: SchedulerClient, args: argparse.Namespace) -> None:
    names = await client.restart(args.app, args.process)
    render.out(render.restarting(args.app, names))


async def _stop(client: SchedulerClient, args: argparse.Namespace) -> None:
    await client.stop(args.app, args.instance)
    render.out(render.stopping(args.app, args.instance))


async def _nodes(client: SchedulerClient, args: argparse.Namespace) -> None:
    render.nodes(await client.list_nodes(), as_json=args.json)


async def _drain(client: SchedulerClient, args: argparse.Namespace) -> None:
    node = await client.drain(args.node, drain=True)
    render.out(f"Draining {node.name}: its instances move to other nodes, new ones stay off")


async def _undrain(client: SchedulerClient, args: argparse.Namespace) -> None:
    node = await client.drain(args.node, drain=False)
    render.out(f"{node.name} takes instances again")


async def _logs(client: SchedulerClient, args: argparse.Namespace) -> None:
    # Flushed once per batch that arrives: live lines show at once, a flood costs
    # one write per batch, not per line.
    printer = render.LogPrinter(flush_each=False, as_json=args.json)
    batches: AsyncIterator[Sequence[pb.LogLine]]
    if args.follow:
        tune_gc()  # a follower may print 100 000 lines a second, as the daemons carry
        batches = client.follow_log_batches(
            args.app,
            lines=args.num,
            process=args.process or "",
            since=args.since_unix,
            on_break=lambda problem: render.info(f"paas: {problem}; reconnecting..."),
            on_resume=lambda: render.info("paas: reconnected; the log stream goes on"),
        )
    else:
        batches = client.log_batches(
            args.app,
            lines=args.num,
            process=args.previous or args.process or "",
            since=args.since_unix,
            previous=args.previous is not None,
        )
    printed = 0
    try:
        async for batch in batches:
            for line in batch:
                printer.print(line)
            printed += len(batch)
            if args.follow:
                printer.flush_lines()
    finally:
        printer.flush()
    if args.previous and not printed:
        render.info(
            f"no finished run of {args.previous} is kept: it has not exited yet, or the "
            "agent's buffer no longer holds its lines"
        )


async def _drains(client: SchedulerClient, args: argparse.Namespace) -> None:
    render.drains(args.app, await client.list_drains(args.app), as_json=args.json)


async def _drains_add(client: SchedulerClient, args: argparse.Namespace) -> None:
    drain = await client.add_drain(args.app, args.url)
    render.out(f"Added log drain {drain.url} to {args.app} (token {drain.token})")


async def _drains_remove(client: SchedulerClient, args: argparse.Namespace) -> None:
    drain = await client.remove_drain(args.app, args.url)
    render.out(f"Removed log drain {drain.url} from {args.app}")


_HANDLERS: dict[str, Handler] = {
    "apps": _apps,
    "apps create": _apps_create,
    "deploy": _deploy,
    "scale": _scale,
    "ps": _ps,
    "restart": _restart,
    "stop": _stop,
    "nodes": _nodes,
    "nodes drain": _drain,
    "nodes undrain": _undrain,
    "logs": _logs,
    "drains": _drains,
    "drains add": _drains_add,
    "drains remove": _drains_remove,
}

_PREPARE: dict[str, Callable[[argparse.Namespace], None]] = {
    "apps create": _prepare_create,
    "deploy": _prepare_deploy,
    "scale": _prepare_scale,
    "ps": _prepare_ps,
    "restart": _prepare_restart,
    "stop": _prepare_stop,
    "logs": _prepare_logs,
    "drains": _prepare_app,
    "drains add": _prepare_drains_add,
    "drains remove": _prepare_drains_remove,
}
