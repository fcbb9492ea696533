"""`paas scheduler` and `paas agent`: flags to config, then serve until stopped.

Owns only the translation from the command line to `SchedulerConfig` and
`AgentConfig`, logging setup, and a clean exit on SIGINT/SIGTERM. The servers
themselves live in paas.scheduler and paas.agent, imported lazily so the rest
of the CLI works without them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from paas.cli.errors import EXIT_OK, CommandError, UsageError


def run_scheduler(args: argparse.Namespace) -> int:
    try:
        from paas.scheduler.config import SchedulerConfig
        from paas.scheduler.server import run_scheduler as serve
    except ImportError as exc:
        raise CommandError(f"the scheduler cannot start: {exc}") from None
    if args.tls_dir and args.insecure:
        raise UsageError("--tls-dir and --insecure exclude each other: choose one")
    if not args.tls_dir and not args.insecure:
        raise CommandError(
            "the scheduler needs --tls-dir DIR (the CA of `paas cluster init --dir DIR`), "
            "or --insecure to serve plaintext with no authentication"
        )
    # Slug flags left out keep SchedulerConfig's defaults, so those live in one place.
    slug_options: dict[str, Any] = {
        field: getattr(args, field)
        for field in ("max_slug_size", "slug_budget", "keep_releases", "slug_grace")
        if getattr(args, field, None) is not None
    }
    from paas.scheduler.etcd_access import EtcdAccessError, load_etcd_access

    def path(value: str | None) -> Path | None:
        return None if value is None else Path(value).expanduser()

    try:
        access = load_etcd_access(
            cacert=path(args.etcd_cacert),
            cert=path(args.etcd_cert),
            key=path(args.etcd_key),
            user=args.etcd_user,
            password_file=path(args.etcd_password_file),
        )
    except EtcdAccessError as exc:
        raise CommandError(str(exc)) from None
    config = SchedulerConfig(
        etcd_access=access,
        etcd=args.etcd,
        listen=args.listen,
        advertise=args.advertise or "",
        node_grace=args.node_grace,
        leader_ttl=args.leader_ttl,
        tls_dir=Path(args.tls_dir).expanduser().resolve() if args.tls_dir else None,
        insecure=args.insecure,
        sans=tuple(args.san),
        **{
            field: value
            for field, value in (
                ("node_cert_ttl", args.node_cert_ttl),
                ("serving_cert_ttl", args.serving_cert_ttl),
                ("join_listen", args.join_listen),
            )
            if value is not None
        },
        **slug_options,
    )
    _configure_logging(args.log_level)
    return _serve(serve(config))


def run_agent(args: argparse.Namespace) -> int:
    try:
        from paas.agent.config import AgentConfig
        from paas.agent.server import run_agent as serve
    except ImportError as exc:
        raise CommandError(f"the agent cannot start: {exc}") from None
    # Flags left out keep AgentConfig's defaults, so those live in one place.
    optional: dict[str, Any] = {}
    if args.ports is not None:
        optional["ports"] = args.ports
    if args.capacity is not None:
        optional["capacity"] = args.capacity
    if args.reserve_memory is not None:
        optional["reserve_memory"] = args.reserve_memory
    if args.reserve_cpu is not None:
        optional["reserve_cpu"] = args.reserve_cpu
    if args.state_dir is not None:
        optional["state_dir"] = Path(args.state_dir).expanduser().resolve()
    if args.port_lock_dir is not None:
        optional["port_lock_dir"] = Path(args.port_lock_dir).expanduser().resolve()
    if args.advertise is not None:
        optional["advertise"] = args.advertise
    if args.stop_grace is not None:
        optional["stop_grace"] = args.stop_grace
    if args.token is not None:
        optional["token"] = args.token
    for flag, field in (
        ("log_buffer_lines", "log_buffer_lines"),
        ("log_spool_file_size", "log_spool_file_bytes"),
        ("log_spool_files", "log_spool_files"),
        ("slug_cache_budget", "slug_cache_budget"),
        ("slug_max_unpacked", "slug_max_unpacked"),
    ):
        if getattr(args, flag) is not None:
            optional[field] = getattr(args, flag)
    config = AgentConfig(
        join=args.join,
        name=args.name,
        listen=args.listen,
        labels=dict(args.label),
        insecure=args.insecure,
        **optional,
    )
    _configure_logging(args.log_level)
    from paas.agent.errors import AgentError

    try:
        return _serve(serve(config))
    except AgentError as exc:
        raise CommandError(str(exc)) from None


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# The cyclic collector's first generation runs after this many new container
# objects (CPython's default is 700). Each log line makes a few tuples, so at
# 100 000 lines a second the default runs a collection every 2 ms, and the older
# generations, with every object grpc and protobuf made at import, often behind
# it: that alone doubled the agent's cost per line. Nothing a daemon keeps forms
# cycles in bulk, so collecting less often costs little memory.
GC_THRESHOLD = (20_000, 10, 10)


def tune_gc() -> None:
    """Collect cycles less often, and never scan what exists at start-up again."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def _serve(server: Coroutine[Any, Any, None]) -> int:
    """Run a server coroutine; SIGINT or SIGTERM cancels it and exits 0."""
    tune_gc()

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        # A server that installs its own handlers (for a graceful drain) replaces these.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await server

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return EXIT_OK
