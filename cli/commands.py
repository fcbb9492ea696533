"""The API commands' behaviour: apps, apps create/destroy, deploy, scale, ps, restart,
stop, nodes, nodes drain/undrain, logs, drains, drains add/remove.

Each command is a `prepare` that checks its input locally (formation words,
Procfile, app name) so a mistake is a one-line error with nothing sent, and a
handler that makes its call through `SchedulerClient` and hands the answer to
`render`. `api` joins the two into what the command table in `main` runs.
Handlers never print directly and never pick exit codes; they raise
`CommandError` or let a paas.common `InvalidInput` through, which `main` prints.
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
from paas.cli.appconfig import DOTENV, parse_app_config, parse_dotenv
from paas.cli.appconfig import FILENAME as APP_CONFIG
from paas.cli.client import SchedulerClient
from paas.cli.credentials import connect
from paas.cli.daemons import tune_gc
from paas.cli.errors import EXIT_OK, CommandError, UsageError
from paas.cli.rollout_wait import wait_as_asked
from paas.cli.slugpack import IGNORE_FILE, PackedSlug, pack
from paas.cli.timespec import TimeSpecError, parse_since
from paas.common import logruns
from paas.common.addresses import DEFAULT_SCHEDULER, AddressError, parse_address_list
from paas.common.configvars import PROCFILE_LIMIT, check_no_nul, check_size
from paas.common.drainurl import parse_drain_url
from paas.common.formation import parse_changes
from paas.common.names import InstanceName, NameError_, check_app_name, check_process_type
from paas.common.procfile import parse_procfile
from paas.common.slugs import human_size, short_digest
from paas.proto import paas_pb2 as pb

# A handler returns None for success, or its exit code (a rollout that failed: 1).
Handler = Callable[[SchedulerClient, argparse.Namespace], Awaitable[int | None]]
Prepare = Callable[[argparse.Namespace], None]


def api(handle: Handler, prepare: Prepare | None = None) -> Callable[[argparse.Namespace], int]:
    """An API command: `prepare(args)` (local checks: nothing is sent when they fail),
    then `handle` with a client of the scheduler. A command that follows (`logs -f`)
    ends with Ctrl-C, and that is a success."""

    def run(args: argparse.Namespace) -> int:
        if prepare is not None:
            prepare(args)
        addresses = scheduler_addresses(args)

        async def call() -> int | None:
            async with connect(addresses, args) as client:
                return await handle(client, args)

        try:
            code = asyncio.run(call())
        except KeyboardInterrupt:
            if getattr(args, "follow", False):
                return EXIT_OK
            raise
        return EXIT_OK if code is None else code

    return run


# ------------------------------------------------------------------ where and what


def scheduler_addresses(args: argparse.Namespace) -> list[str]:
    """--scheduler, else $PAAS_SCHEDULER, else the default; checked."""
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
# An app-scoped command finds `args.app` already set (main resolves -a/$PAAS_APP).


def prepare_create(args: argparse.Namespace) -> None:
    check_app_name(args.name)


def prepare_destroy(args: argparse.Namespace) -> None:
    # As `heroku apps:destroy`: the name twice, so a slip of the finger or a
    # stale $PAAS_APP cannot destroy an app.
    check_app_name(args.name)
    if args.confirm != args.name:
        given = "" if args.confirm is None else f" (--confirm names {args.confirm!r})"
        raise CommandError(
            f"destroying {args.name} stops its instances and deletes its releases, config "
            f"and logs for good: to go ahead, repeat its name with --confirm: "
            f"`paas apps destroy {args.name} --confirm {args.name}`{given}"
        )


def prepare_deploy(args: argparse.Namespace) -> None:
    args.source = read_app_dir(Path(args.dir))


def prepare_scale(args: argparse.Namespace) -> None:
    args.parsed_changes = parse_changes(list(args.changes))


def prepare_process(args: argparse.Namespace) -> None:
    """`ps` and `restart`: an optional process type or instance."""
    if args.process:
        args.process = _process_or_instance(args.process)


def prepare_stop(args: argparse.Namespace) -> None:
    args.instance = _instance(args.instance, hint="to stop them all: `paas scale {}=0`")


def prepare_logs(args: argparse.Namespace) -> None:
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


def prepare_drains_add(args: argparse.Namespace) -> None:
    args.url = parse_drain_url(args.url).url


def prepare_drains_remove(args: argparse.Namespace) -> None:
    args.url = args.url.strip()
    if not args.url:
        raise CommandError("no drain URL given (`paas drains` lists them)")


def _process_or_instance(text: str) -> str:
    """`web` or `web.3`, checked."""
    return str(InstanceName.parse(text)) if "." in text else check_process_type(text)


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
    (names, NUL bytes, the size limits); a problem is a CommandError, InvalidInput or
    AppConfigError naming the file."""
    directory = directory.expanduser().resolve()
    if not directory.is_dir():
        raise CommandError(f"{directory} is not a directory")
    procfile = directory / "Procfile"
    if not procfile.is_file():
        raise CommandError(
            f"no Procfile in {directory}: list the process types there, e.g. 'web: python app.py'"
        )
    text = _read_text(procfile)
    check_size(str(procfile), text, PROCFILE_LIMIT)
    check_no_nul(str(procfile), text)
    commands = parse_procfile(text, source=str(procfile))
    dotenv = directory / DOTENV
    env = parse_dotenv(_read_text(dotenv), source=str(dotenv)) if dotenv.is_file() else {}
    config = directory / APP_CONFIG
    settings: dict[str, pb.ProcessSettings] = {}
    if config.exists():
        settings = parse_app_config(_read_text(config), commands, source=str(config))
    return AppSource(directory, text, env, settings)


def _read_text(path: Path) -> str:
    """`path` as UTF-8 text, a byte order mark at its start dropped (some editors
    save one)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {path}: {exc}") from None


# ------------------------------------------------------------------ handlers


async def apps(client: SchedulerClient, args: argparse.Namespace) -> None:
    render.apps(await client.list_apps(), as_json=args.json)


async def apps_create(client: SchedulerClient, args: argparse.Namespace) -> None:
    app = await client.create_app(args.name)
    render.out(f"Created app {app.name}")


async def apps_destroy(client: SchedulerClient, args: argparse.Namespace) -> None:
    stopped = await client.destroy_app(args.name, args.confirm)
    render.out(render.destroyed(args.name, stopped))


async def deploy(client: SchedulerClient, args: argparse.Namespace) -> int:
    source: AppSource = args.source
    if args.in_place:
        release = await client.deploy(
            args.app, str(source.directory), source.procfile, source.env, source.settings
        )
        slug = None
    else:
        release, slug = await deploy_slug(client, args.app, source, render.out)
    origin = f"slug {short_digest(slug.digest)}" if slug else f"{source.directory} (in place)"
    types = ", ".join(release.commands) or "no process types"
    settings = (
        f"; {APP_CONFIG} settings for {', '.join(sorted(source.settings))}"
        if source.settings
        else ""
    )
    render.out(f"Deployed {args.app} v{release.version} from {origin} ({types}){settings}")
    return await wait_as_asked(client, args, release)


async def deploy_slug(
    client: SchedulerClient,
    app: str,
    source: AppSource,
    say: Callable[[str], None],
    shown: bool | None = None,
) -> tuple[pb.Release, pb.Slug]:
    """Pack `source` into a slug, upload it unless the scheduler holds it already, and
    make the release that runs it (returned with the slug); `say` hears one line per
    step. A slug over the scheduler's limit is refused before a byte is sent. `shown`
    forces the progress bar on or off (default: on a terminal)."""
    packed = await asyncio.to_thread(pack, source.directory)
    try:
        say(f"Packed {human_size(packed.size)} slug {short_digest(packed.digest)} "
            f"({packed.files} files)")  # fmt: skip
        known = await client.stat_slug(packed.digest)
        if known.known:
            say(f"Already uploaded slug {short_digest(packed.digest)}: nothing to send")
        else:
            if known.max_size and packed.size > known.max_size:
                raise CommandError(
                    f"the slug of {source.directory} is {human_size(packed.size)}, over the "
                    f"scheduler's limit of {human_size(known.max_size)} (--max-slug-size): "
                    f"leave files out with {IGNORE_FILE}, or deploy with --in-place"
                )
            say(await _upload(client, app, packed, shown))
        release = await client.deploy(
            app, "", source.procfile, source.env, source.settings, slug=packed.slug
        )
        return release, packed.slug
    finally:
        packed.remove()


async def _upload(client: SchedulerClient, app: str, packed: PackedSlug, shown: bool | None) -> str:
    """Upload `packed` with a progress bar; the line that says how it went."""
    started = time.monotonic()
    with render.UploadProgress(packed.size, shown=shown) as progress:
        answer = await client.upload_slug(app, packed.slug, packed.path, on_sent=progress.update)
    seconds = time.monotonic() - started
    meanwhile = "; another deploy had stored it meanwhile" if answer.existed else ""
    return (
        f"Uploaded {human_size(packed.size)} in {seconds:.1f} s "
        f"({render.rate(packed.size, seconds)}){meanwhile}"
    )


async def scale(client: SchedulerClient, args: argparse.Namespace) -> None:
    if args.plan:
        render.planned(args.app, await client.plan_scale(args.app, args.parsed_changes))
        return
    formation = await client.scale(args.app, args.parsed_changes)
    render.out(render.formation(args.app, formation))


async def ps(client: SchedulerClient, args: argparse.Namespace) -> None:
    found = await client.instances_and_unplaced(args.app)
    views = list(found.instances)
    unplaced = [(name, u.reason) for u in found.unplaced for name in u.names]
    wanted: str | None = args.process
    if wanted:
        views = [view for view in views if wanted in (view.name, view.type)]
        unplaced = [(n, r) for n, r in unplaced if wanted in (n, n.rpartition(".")[0])]
        if not views and not unplaced and "." in wanted:
            raise CommandError(f"no instance {wanted} in {args.app} (`paas ps` lists them)")
    render.instances(views, as_json=args.json, verbose=args.verbose, unplaced=unplaced)


async def why(client: SchedulerClient, args: argparse.Namespace) -> None:
    render.why(await client.why(args.app, args.instance))


def prepare_why(args: argparse.Namespace) -> None:
    args.instance = _instance(args.instance, hint="name one instance, e.g. {}.1")


async def restart(client: SchedulerClient, args: argparse.Namespace) -> None:
    names = await client.restart(args.app, args.process)
    render.out(render.restarting(args.app, names))


async def stop(client: SchedulerClient, args: argparse.Namespace) -> None:
    await client.stop(args.app, args.instance)
    render.out(render.stopping(args.app, args.instance))


async def nodes(client: SchedulerClient, args: argparse.Namespace) -> None:
    render.nodes(await client.list_nodes(), as_json=args.json)


async def drain(client: SchedulerClient, args: argparse.Namespace) -> None:
    node = await client.drain(args.node, drain=True)
    render.out(f"Draining {node.name}: its instances move to other nodes, new ones stay off")


async def undrain(client: SchedulerClient, args: argparse.Namespace) -> None:
    node = await client.drain(args.node, drain=False)
    render.out(f"{node.name} takes instances again")


async def remove_node(client: SchedulerClient, args: argparse.Namespace) -> None:
    removed = await client.remove_node(args.node)
    count = removed.instances
    moved = f"; its {count} instance(s) are placed elsewhere" if count else ""
    render.out(f"Removed node {args.node}{moved}")


async def logs(client: SchedulerClient, args: argparse.Namespace) -> None:
    # Flushed once per batch that arrives: live lines show at once, a flood costs
    # one write per batch, not per line.
    printer = render.LogPrinter(flush_each=False, as_json=args.json)
    batches: AsyncIterator[Sequence[pb.LogRun]]
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
            printer.print_batch(batch)
            printed += logruns.size(batch)
            if args.follow:
                printer.flush_lines()
    finally:
        printer.flush()
    if args.previous and not printed:
        render.info(
            f"no finished run of {args.previous} is kept: it has not exited yet, or the "
            "agent's buffer no longer holds its lines"
        )


async def drains(client: SchedulerClient, args: argparse.Namespace) -> None:
    render.drains(args.app, await client.list_drains(args.app), as_json=args.json)


async def drains_add(client: SchedulerClient, args: argparse.Namespace) -> None:
    drain = await client.add_drain(args.app, args.url)
    render.out(f"Added log drain {drain.url} to {args.app} (token {drain.token})")


async def drains_remove(client: SchedulerClient, args: argparse.Namespace) -> None:
    drain = await client.remove_drain(args.app, args.url)
    render.out(f"Removed log drain {drain.url} from {args.app}")
