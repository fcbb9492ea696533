"""`paas up`: a whole cluster on this machine, in the foreground.

Owns the interactive life of a `LocalCluster`: start it, optionally create,
deploy and scale an app and follow its logs, and on Ctrl-C or SIGTERM stop
everything in order. A second Ctrl-C while stopping kills what is left at
once. Nothing outlives the command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
from pathlib import Path

import grpc

from paas.cli import render
from paas.cli.client import SchedulerError
from paas.cli.commands import AppSource, deploy_slug, read_app_dir
from paas.cli.credentials import install_local_default
from paas.cli.errors import EXIT_OK, EXIT_REFUSED, CommandError, UsageError
from paas.cli.localcluster import ClusterError, LocalCluster, port_is_free
from paas.common.addresses import DEFAULT_SCHEDULER, parse_address
from paas.common.formation import Change, FormationError, parse_changes
from paas.common.names import NameError_, check_app_name
from paas.common.slugs import short_digest


def run_up(args: argparse.Namespace) -> int:
    # Check everything local before starting anything.
    deploy: tuple[str, AppSource, list[Change]] | None = None
    if args.deploy is not None:
        source = read_app_dir(Path(args.deploy))
        app = _app_name(args.up_app, source.directory)
        changes: list[Change] = []
        if args.scale:
            try:
                changes = parse_changes(list(args.scale))
            except FormationError as exc:
                raise CommandError(str(exc)) from None
        deploy = (app, source, changes)
    elif args.scale or args.up_app:
        raise UsageError("--scale and --app need --deploy DIR")

    host, port = parse_address(DEFAULT_SCHEDULER)
    cluster = LocalCluster(
        agents=args.agents,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        node_grace=args.node_grace,
        scheduler_port=port if port_is_free(host, port) else None,
        tls=not args.up_insecure,
    )
    return asyncio.run(_up(cluster, deploy))


def sanitise_app_name(text: str) -> str:
    """A directory's name as an app name: `My_App 2` -> `my-app-2`."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower())
    name = re.sub(r"-{2,}", "-", name).lstrip("-0123456789")[:30].strip("-")
    return name or "app"


def _app_name(given: str | None, directory: Path) -> str:
    name = given if given else sanitise_app_name(directory.name)
    try:
        return check_app_name(name)
    except NameError_ as exc:
        raise CommandError(str(exc)) from None


async def _up(cluster: LocalCluster, deploy: tuple[str, AppSource, list[Change]] | None) -> int:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    # The first signal cancels whatever runs; any later one, or one arriving while
    # the cluster is already stopping, kills everything at once.
    phase = "running"

    def on_signal() -> None:
        nonlocal phase
        if phase == "running":
            phase = "cancelling"
            main.cancel()
        else:
            render.info("paas: killing everything now")
            cluster.kill()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    tasks: list[asyncio.Task[object]] = []
    try:
        render.info(f"paas: starting etcd, a scheduler and {cluster.agents} agents...")
        if not cluster.tls:
            render.warning(
                "paas up --insecure: TLS is off; every part talks plaintext with no "
                "authentication (loopback only)"
            )
        await cluster.start()
        if cluster.tls:
            installed = install_local_default(cluster.credentials_path)
            if installed is not None:
                render.info(f"paas: admin credentials of this cluster copied to {installed}")
        render.info(
            f"paas: cluster up: scheduler at {cluster.scheduler_address}, "
            f"nodes {', '.join(cluster.agent_names)}; logs in {cluster.logs_dir}"
            + ("" if cluster.keeps_data else " (removed on exit)")
        )
        work: asyncio.Task[object] = asyncio.create_task(
            _deploy_and_follow(cluster, deploy) if deploy else _show_usage(cluster)
        )
        failed: asyncio.Task[object] = asyncio.create_task(cluster.wait_exit())
        tasks = [work, failed]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if failed not in done and work.exception() is not None:
            # A broken log stream is usually the symptom of a part that died: say which.
            done, _ = await asyncio.wait([failed], timeout=1.0)
        if failed in done:
            error = failed.result()
            assert isinstance(error, ClusterError)
            render.error(f"{error.part} {error.problem}; stopping the cluster")
            _print_tail(error)
            return EXIT_REFUSED
        work.result()  # raises what the deploy raised
        return EXIT_OK
    except asyncio.CancelledError:
        return EXIT_OK  # Ctrl-C or SIGTERM: the normal way to end `paas up`
    except ClusterError as exc:
        render.error(f"{exc.part} {exc.problem}")
        _print_tail(exc)
        return EXIT_REFUSED
    except (SchedulerError, CommandError) as exc:  # CommandError: a tree that cannot travel
        render.error(str(exc))
        return EXIT_REFUSED
    finally:
        phase = "stopping"
        for task in tasks:
            task.cancel()
        render.info("paas: stopping agents, scheduler and etcd (Ctrl-C again to kill)...")
        await cluster.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        render.info("paas: stopped")


def _print_tail(error: ClusterError) -> None:
    if error.log_tail:
        render.info(f"--- last lines of {error.log_path}:\n{error.log_tail}")


def _export_line(cluster: LocalCluster) -> str:
    """`export PAAS_SCHEDULER=... PAAS_CREDENTIALS=...` (PAAS_INSECURE=1 without TLS)."""
    return "export " + " ".join(f"{k}={v}" for k, v in cluster.client_env().items())


async def _show_usage(cluster: LocalCluster) -> None:
    render.out(
        "\nUse it from another terminal:\n"
        f"  {_export_line(cluster)}\n"
        "  paas apps create hello\n"
        "  paas deploy -a hello examples/hello\n"
        "  paas scale -a hello web=2\n"
        "  paas ps -a hello; paas logs -a hello -f\n"
        "\nPress Ctrl-C to stop everything."
    )
    await asyncio.Event().wait()


def _say(line: str) -> None:
    render.info(f"paas: {line[:1].lower()}{line[1:]}")


async def _deploy_and_follow(
    cluster: LocalCluster, deploy: tuple[str, AppSource, list[Change]]
) -> None:
    app, source, changes = deploy
    async with cluster.client() as client:
        try:
            await client.create_app(app)
            render.info(f"paas: created app {app}")
        except SchedulerError as exc:
            if exc.code != grpc.StatusCode.ALREADY_EXISTS:
                raise
        # As `paas deploy` does: packed, uploaded and run from each agent's copy.
        release, slug = await deploy_slug(client, app, source, _say, shown=False)
        origin = f"slug {short_digest(slug.digest)}" if slug else str(source.directory)
        render.info(f"paas: deployed {app} v{release.version} from {origin}")
        if changes:
            formation = await client.scale(app, changes)
            render.info(f"paas: {render.formation(app, formation)}")
        render.info(
            f"paas: following {app}'s logs; from another terminal: "
            f"{_export_line(cluster)} PAAS_APP={app}"
        )
        printer = render.LogPrinter()
        with contextlib.suppress(asyncio.CancelledError):
            async for line in client.logs(app, follow=True):
                printer.print(line)
