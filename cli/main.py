"""`paas`: the command line, its words and options, and its exit codes.

Owns parsing and dispatch through one table, `COMMANDS`: each entry is a
command's words, its --help, its arguments, its scope (does it run on this
machine, talk to the cluster, or act on one app) and what runs it: `commands`
for API calls, `daemons` for `paas scheduler` and `paas agent`, `up` for
`paas up`. Exit codes: 0 success, 1 a refused request or bad input, 2 a usage
error. Every expected error (`paas.cli.errors`) is one line on stderr starting
with `error: `; no tracebacks for them.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, NoReturn

from paas.cli import argtypes, commands, credentials, releases, render
from paas.cli.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CLIError,
    UsageError,
    exit_code,
)
from paas.cli.run import add_arguments as run_arguments
from paas.cli.run import run_command
from paas.common.addresses import DEFAULT_SCHEDULER
from paas.common.errors import InvalidInput


class Scope(Enum):
    """What a command acts on, and so which options it takes after its words."""

    LOCAL = "local"  # runs here (up, scheduler, agent): no --scheduler
    CLUSTER = "cluster"  # talks to the scheduler: --scheduler
    APP = "app"  # acts on one app: --scheduler and -a/--app (default $PAAS_APP)


Arguments = Callable[[argparse.ArgumentParser], None]


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


@dataclass(frozen=True)
class Command:
    """One entry of the command table."""

    words: tuple[str, ...]  # ("apps", "destroy"); a subcommand follows its parent
    summary: str  # its line in the parent's --help
    description: str  # its own --help; paragraphs apart by a blank line, wrapped here
    scope: Scope
    run: Callable[[argparse.Namespace], int]
    arguments: Arguments = _no_arguments
    epilog: str = ""  # shown as written: examples, URL forms


class _Parser(argparse.ArgumentParser):
    """argparse with the project's one-line error format."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see `{self.prog} --help`)\n")


def _scheduler_help() -> str:
    return (
        "scheduler address HOST:PORT, or several replicas comma-separated "
        f"(default: $PAAS_SCHEDULER, else {DEFAULT_SCHEDULER})"
    )


def _scope_options(scope: Scope) -> list[argparse.ArgumentParser]:
    """The options a command of `scope` takes after its words."""
    if scope is Scope.LOCAL:
        return []
    parent = _Parser(add_help=False)
    # SUPPRESS: an option given before the command word is not overwritten here.
    parent.add_argument(
        "--scheduler", metavar="ADDR[,ADDR]", default=argparse.SUPPRESS, help=_scheduler_help()
    )
    _tls_options(parent, default=argparse.SUPPRESS)
    if scope is Scope.APP:
        parent.add_argument(
            "-a",
            "--app",
            metavar="NAME",
            default=argparse.SUPPRESS,
            help="the app (default: $PAAS_APP)",
        )
    return [parent]


def _tls_options(parser: argparse.ArgumentParser, default: Any = None) -> None:
    parser.add_argument(
        "--credentials",
        metavar="FILE",
        default=default,
        help="the credentials to present (default: $PAAS_CREDENTIALS, else "
        "~/.config/paas/credentials)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=default if default is not None else False,
        help="plaintext, to a scheduler started with --insecure (or PAAS_INSECURE=1)",
    )


def _wrap(text: str) -> str:
    return "\n\n".join(textwrap.fill(paragraph) for paragraph in text.split("\n\n"))


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in `COMMANDS`; each sets `args.command_entry`."""
    parser = _Parser(
        prog="paas",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A multi-host process scheduler: the twelve-factor process model "
        "across a cluster.",
        epilog="Start a local cluster with `paas up`, then:\n"
        "  export PAAS_SCHEDULER=127.0.0.1:7070 PAAS_APP=hello\n"
        "  paas apps create hello && paas deploy examples/hello && paas scale web=2\n"
        "  paas ps && paas logs -f",
    )
    parser.add_argument("--scheduler", metavar="ADDR[,ADDR]", help=_scheduler_help())
    parser.add_argument("-a", "--app", metavar="NAME", help="the app (default: $PAAS_APP)")
    _tls_options(parser)
    top = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    top.required = True
    # The subcommand group under each command's words, made when its first
    # subcommand comes (the table lists a parent before its subcommands).
    groups: dict[tuple[str, ...], Any] = {(): top}
    parsers: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    for command in COMMANDS:
        *words, word = command.words
        parent = tuple(words)
        if parent not in groups:
            groups[parent] = parsers[parent].add_subparsers(
                dest=f"{'_'.join(parent)}_command", metavar="COMMAND", parser_class=_Parser
            )
        sub = groups[parent].add_parser(
            word,
            parents=_scope_options(command.scope),
            help=command.summary,
            description=_wrap(command.description),
            epilog=command.epilog or None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.arguments(sub)
        sub.set_defaults(command_entry=command)
        parsers[command.words] = sub
    return parser


# ------------------------------------------------------------------ arguments


def _up_arguments(up: argparse.ArgumentParser) -> None:
    up.add_argument(
        "--agents",
        type=argtypes.count(1, 200),
        default=3,
        metavar="N",
        help="how many agents (nodes) to run (default: 3)",
    )
    up.add_argument(
        "--data-dir",
        metavar="DIR",
        help="keep etcd data, agent state and logs here across runs "
        "(default: a temporary directory, removed on exit)",
    )
    up.add_argument(
        "--deploy",
        metavar="DIR",
        help="create the app, deploy DIR (its Procfile) and follow its logs",
    )
    up.add_argument(
        "--scale",
        metavar="TYPE=N",
        nargs="+",
        action="extend",
        default=[],
        help="formation to scale the deployed app to, e.g. web=2 worker=1",
    )
    up.add_argument(
        "--app",
        dest="up_app",
        metavar="NAME",
        help="name of the deployed app (default: DIR's name)",
    )
    up.add_argument(
        "--node-grace",
        type=argtypes.seconds,
        default=10.0,
        metavar="S",
        help="seconds before a silent agent's node is lost (default: 10)",
    )
    up.add_argument(
        "--insecure",
        dest="up_insecure",
        action="store_true",
        help="no TLS: plaintext and no authentication between every part",
    )


def _scheduler_arguments(scheduler: argparse.ArgumentParser) -> None:
    scheduler.add_argument(
        "--etcd",
        required=True,
        type=argtypes.etcd_list,
        metavar="URL[,URL]",
        help="etcd endpoints, e.g. http://10.0.0.1:2379,10.0.0.2:2379",
    )
    scheduler.add_argument(
        "--listen",
        required=True,
        type=argtypes.address,
        metavar="HOST:PORT",
        help="where to serve the API and agent sessions",
    )
    scheduler.add_argument(
        "--advertise",
        type=argtypes.address,
        default=None,
        metavar="HOST:PORT",
        help="address other replicas redirect clients to (default: --listen)",
    )
    scheduler.add_argument(
        "--node-grace",
        type=argtypes.seconds,
        default=10.0,
        metavar="S",
        help="seconds before a silent agent's node is lost (default: 10)",
    )
    etcd_tls = scheduler.add_argument_group(
        "etcd TLS and auth", "the password never on argv: a file, or PAAS_ETCD_PASSWORD"
    )
    etcd_tls.add_argument(
        "--etcd-cacert", default=None, metavar="FILE", help="CA certificate that signed etcd's"
    )
    etcd_tls.add_argument(
        "--etcd-cert", default=None, metavar="FILE", help="client certificate to present to etcd"
    )
    etcd_tls.add_argument(
        "--etcd-key", default=None, metavar="FILE", help="its private key (mode 0600)"
    )
    etcd_tls.add_argument(
        "--etcd-user", default="", metavar="NAME", help="etcd user (etcd auth enabled)"
    )
    etcd_tls.add_argument(
        "--etcd-password-file",
        default=None,
        metavar="FILE",
        help="file holding the user's password (mode 0600); else PAAS_ETCD_PASSWORD",
    )
    scheduler.add_argument(
        "--leader-ttl",
        type=argtypes.count(1, 3600),
        default=5,
        metavar="S",
        help="seconds of the leader election lease (default: 5)",
    )
    scheduler.add_argument(
        "--node-cert-ttl",
        type=argtypes.duration,
        default=None,
        metavar="DURATION",
        help="how long a node certificate lives, e.g. 24h or 6s; agents renew theirs "
        "at two thirds of it over their session (default: 24h)",
    )
    scheduler.add_argument(
        "--join-listen",
        type=argtypes.address,
        default=None,
        metavar="HOST:PORT",
        help="where agents that have no certificate yet join (with a token); their "
        "scheduler's certificate tells them, so agents are given only --join "
        "(default: --listen's host, any free port; set it to open a firewall for it)",
    )
    scheduler.add_argument(
        "--serving-cert-ttl",
        type=argtypes.duration,
        default=None,
        metavar="DURATION",
        help="how long the replica's own serving certificate lives; it re-issues itself "
        "one at two thirds of it and reloads it without a restart (default: 30d)",
    )
    scheduler.add_argument(
        "--tls-dir",
        metavar="DIR",
        default=None,
        help="serve mutual TLS with the cluster CA in DIR (`paas cluster init --dir DIR`)",
    )
    scheduler.add_argument(
        "--san",
        metavar="NAME_OR_IP",
        action="append",
        default=[],
        help="another name clients reach this replica by, for its certificate; repeatable",
    )
    scheduler.add_argument(
        "--insecure",
        action="store_true",
        help="no --tls-dir: serve plaintext with no authentication (said loudly)",
    )
    scheduler.add_argument(
        "--max-slug-size",
        type=argtypes.byte_size,
        default=None,
        metavar="SIZE",
        help="the largest slug accepted, compressed (default: 100MiB)",
    )
    scheduler.add_argument(
        "--slug-budget",
        type=argtypes.byte_size,
        default=None,
        metavar="SIZE",
        help="all slugs together, kept in etcd (default: 1GiB; etcd's quota must be well above)",
    )
    scheduler.add_argument(
        "--keep-releases",
        type=argtypes.count(1, 1000),
        default=None,
        metavar="N",
        help="releases kept per app for rollback, the current one included (default: 10)",
    )
    scheduler.add_argument(
        "--slug-grace",
        type=argtypes.seconds,
        default=None,
        metavar="S",
        help="seconds an uploaded slug no release names is kept for its deploy (default: 600)",
    )
    _log_level_option(scheduler)


def _agent_arguments(agent: argparse.ArgumentParser) -> None:
    agent.add_argument(
        "--join",
        required=True,
        type=argtypes.address_list,
        metavar="HOST:PORT[,...]",
        help="the scheduler replicas to dial",
    )
    agent.add_argument(
        "--name",
        required=True,
        type=argtypes.node_name,
        metavar="NAME",
        help="this node's name, unique in the cluster",
    )
    agent.add_argument(
        "--token",
        default=None,
        metavar="TOKEN",
        help="a join token (`paas tokens create`) for the first start, when the node has "
        "no certificate in its state directory yet; later starts need none",
    )
    agent.add_argument(
        "--listen",
        required=True,
        type=argtypes.address,
        metavar="HOST:PORT",
        help="where to serve the agent's own API (log reading)",
    )
    agent.add_argument(
        "--advertise",
        type=argtypes.address,
        default=None,
        metavar="HOST:PORT",
        help="where the scheduler reaches this agent (default: --listen)",
    )
    agent.add_argument(
        "--ports",
        type=argtypes.port_range,
        default=None,
        metavar="LOW-HIGH",
        help="range of $PORT values for instances (default: 5000-5999)",
    )
    agent.add_argument(
        "--port-lock-dir",
        default=None,
        metavar="DIR",
        help="where the agents of this host lock the ports they hand out, so no two give "
        "out the same one; every agent of a host must share it "
        "(default: /run/paas-ports if /run is writable, else /tmp/paas-ports)",
    )
    agent.add_argument(
        "--capacity",
        type=argtypes.count(1, 100_000),
        default=None,
        metavar="N",
        help="most instances this node runs at once (default: 256)",
    )
    agent.add_argument(
        "--reserve-memory",
        type=argtypes.size,
        default=None,
        metavar="SIZE",
        help="memory kept back from what instances may reserve, e.g. 1G (default: 0)",
    )
    agent.add_argument(
        "--reserve-cpu",
        type=argtypes.cores,
        default=None,
        metavar="CORES",
        help="cores kept back from what instances may reserve, e.g. 0.5 (default: 0)",
    )
    agent.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="where the agent keeps its state (default: /tmp/paas-agent)",
    )
    agent.add_argument(
        "--stop-grace",
        type=argtypes.seconds,
        default=None,
        metavar="S",
        help="seconds between SIGTERM and SIGKILL when stopping (default: 30)",
    )
    agent.add_argument(
        "--log-buffer-lines",
        type=argtypes.non_negative_int,
        default=None,
        metavar="N",
        help="log lines kept in memory per instance (default: 10000)",
    )
    agent.add_argument(
        "--log-spool-file-size",
        type=argtypes.non_negative_int,
        default=None,
        metavar="BYTES",
        help="size of each on-disk log spool file before it rotates (default: 64 MiB)",
    )
    agent.add_argument(
        "--log-spool-files",
        type=argtypes.non_negative_int,
        default=None,
        metavar="N",
        help="spool files kept per agent; 0 keeps logs in memory only (default: 4)",
    )
    agent.add_argument(
        "--slug-cache-budget",
        type=argtypes.byte_size,
        default=None,
        metavar="SIZE",
        help="past this size of unpacked slugs in STATE_DIR, those no instance of this "
        "node wants are removed, least recently used first (default: 2GiB)",
    )
    agent.add_argument(
        "--slug-max-unpacked",
        type=argtypes.byte_size,
        default=None,
        metavar="SIZE",
        help="the most one slug may unpack to; a bigger one is refused (default: 1GiB)",
    )
    agent.add_argument(
        "--label",
        type=argtypes.label,
        action="append",
        default=[],
        metavar="K=V",
        help="a node label, repeatable",
    )
    agent.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext to a scheduler started with --insecure; this agent's API is open",
    )
    _log_level_option(agent)


def _tokens_create_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ttl",
        type=argtypes.duration,
        default=3600.0,
        metavar="DURATION",
        help="how long the token may be used: 90s, 30m, 1h, 7d (default: 1h)",
    )
    parser.add_argument(
        "--uses",
        type=argtypes.count(1, 10_000),
        default=1,
        metavar="N",
        help="how many agents may join with it (default: 1)",
    )


def _token_id_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", help="the token's id, as `paas tokens` lists it")


def _log_level_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="how much to log to stderr (default: info)",
    )


def _json_option(what: str = "") -> Arguments:
    def arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help=f"print a JSON array{what}")

    return arguments


def _app_name_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")


def _destroy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the app to destroy")
    parser.add_argument(
        "--confirm",
        metavar="NAME",
        default=None,
        help="the app's name again: without it nothing is destroyed",
    )


def _deploy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dir", metavar="DIR", nargs="?", default=".", help="the app's directory (default: .)"
    )
    parser.add_argument(
        "--in-place",
        action="store_true",
        help="upload nothing: run the processes in DIR itself, the same path on every host",
    )
    _no_wait_option(parser)


def _scale_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("changes", metavar="TYPE=N", nargs="+")
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print what would be placed, moved and stopped, on which nodes, and what "
        "would not fit and why; change nothing",
    )


def _why_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("instance", metavar="INSTANCE", help="an instance name, e.g. web.7")


def _ps_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "process",
        metavar="TYPE|INSTANCE",
        nargs="?",
        default=None,
        help="only this process type (web) or instance (web.3)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also each instance's forensics and output"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a JSON array (forensics included: reason, last_lines, ...; times "
        "ISO 8601 UTC, since_unix the state change in unix seconds)",
    )


def _restart_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "process",
        metavar="TYPE|INSTANCE",
        nargs="?",
        default="",
        help="a process type (web) or an instance (web.3); default: every instance",
    )


def _stop_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("instance", metavar="INSTANCE", help="the instance, e.g. web.3")


def _node_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("node", metavar="NAME", help="the node, as `paas nodes` names it")


def _drain_url_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url", metavar="URL", help="syslog://HOST:PORT or http(s)://HOST[:PORT]/PATH"
    )


def _logs_arguments(logs: argparse.ArgumentParser) -> None:
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument(
        "-n",
        "--num",
        type=argtypes.count(0, 1_000_000),
        default=0,
        metavar="N",
        help="how many recent lines (default: 100)",
    )
    logs.add_argument(
        "-p",
        "--process",
        type=argtypes.process,
        default=None,
        metavar="TYPE|INSTANCE",
        help="only this process type (web) or instance (web.3)",
    )
    logs.add_argument(
        "--since",
        metavar="WHEN",
        default=None,
        help="only lines from then on: a duration back from now (30s, 10m, 1h, 2d, 1h30m) "
        "or an ISO-8601 time (2026-01-31T12:00:00Z; without a zone, local time)",
    )
    logs.add_argument(
        "--previous",
        metavar="INSTANCE",
        default=None,
        help="the lines of the instance's last finished run (e.g. web.3), as "
        "`kubectl logs --previous`: what it wrote before it crashed or stopped",
    )
    logs.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line (NDJSON, not an array): timestamp (ISO-8601, UTC), "
        "app, instance, stream (stdout, stderr, paas), node, seq, run, continued (a piece "
        "of an over-long line; the next piece follows), text",
    )


def _cluster_init_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir", required=True, metavar="DIR", help="where to keep the CA (created)"
    )
    parser.add_argument(
        "--san",
        metavar="NAME_OR_IP",
        action="append",
        default=[],
        help="a name clients reach the schedulers by, put in every scheduler's certificate; "
        "repeatable",
    )


def _credentials_create_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help='the credentials\' name (the "by")')
    parser.add_argument(
        "--ttl", metavar="DURATION", default=None, help="how long they last (default: 90d)"
    )
    parser.add_argument(
        "--out",
        metavar="FILE",
        default=None,
        help="where to write them (default: ./NAME.credentials)",
    )


def _credentials_name_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name", metavar="NAME", help="the credentials, as `paas credentials` names them"
    )


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print one JSON object")
    shown.add_argument(
        "--shell", action="store_true", help="print KEY='value' lines a shell can source"
    )


def _no_wait_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="return once the release is made, without waiting for its rollout",
    )


def _config_get_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("key", metavar="KEY", help="the config var")


def _config_set_arguments(parser: argparse.ArgumentParser) -> None:
    # "*", not "+": no KEY=VALUE is bad input (exit 1) said by the command itself.
    parser.add_argument("pairs", metavar="KEY=VALUE", nargs="*")
    _no_wait_option(parser)


def _config_unset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("keys", metavar="KEY", nargs="*")
    _no_wait_option(parser)


def _config_load_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a .env file: KEY=VALUE lines")
    _no_wait_option(parser)


def _releases_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n",
        "--num",
        type=argtypes.count(1, 1000),
        default=10,
        metavar="N",
        help="how many, newest first (default: 10)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a JSON array (created_at ISO 8601 UTC; config_keys, not values)",
    )


def _releases_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version", metavar="vN", help="the release, e.g. v5")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _rollback_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "version",
        metavar="vN",
        nargs="?",
        default=None,
        help="the release to go back to (default: the one before the current)",
    )
    _no_wait_option(parser)


# ------------------------------------------------------------------ runners of local commands
# Imported when run: `paas ps` need not load the scheduler, nor `paas agent` the cluster.


def _run_up(args: argparse.Namespace) -> int:
    from paas.cli.up import run_up

    return run_up(args)


def _run_scheduler(args: argparse.Namespace) -> int:
    from paas.cli.daemons import run_scheduler

    return run_scheduler(args)


def _run_cluster_word(args: argparse.Namespace) -> int:
    raise UsageError("what to do with the cluster? `paas cluster init --dir DIR`")


def _run_cluster_init(args: argparse.Namespace) -> int:
    from paas.cli.credentials import cluster_init

    return cluster_init(args)


def _run_agent(args: argparse.Namespace) -> int:
    from paas.cli.daemons import run_agent

    return run_agent(args)


def _tokens_api(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from paas.cli import tokens

        return commands.api(getattr(tokens, name))(args)

    return run


# ------------------------------------------------------------------ the table

_DRAINS_DESCRIPTION = (
    "List the app's log drains, or add and remove them. A log drain receives the "
    "app's whole log stream as it comes, as with `heroku drains`: the output of "
    "every instance on every node and the scheduler's own events "
    "(paas[scheduler]). Each line is an RFC 5424 syslog message: hostname the "
    "drain's token, app-name the app, procid the instance (web.3, scheduler)."
    "\n\n"
    "The list shows each drain's URL, token, the lines sent since it was added, the "
    "lines that left retention before it got to them (dropped), and its last delivery "
    "problem."
)
_DRAINS_EPILOG = (
    "URLs:\n"
    "  syslog://HOST:PORT           syslog over TCP, octet-counted (RFC 6587)\n"
    "  http(s)://HOST[:PORT]/PATH   POSTs of batches in Heroku's logplex framing\n"
    "                               (application/logplex-1)\n"
    "examples:\n"
    "  paas drains add syslog://logs.example.com:6514\n"
    "  paas drains add https://user:secret@collector.example.com/heroku\n"
    "  paas drains --json\n"
    "  paas drains remove syslog://logs.example.com:6514\n\n"
    "A drain that is slow or down retries (0.5 s, doubling to 30 s) and then catches up\n"
    "from where it got to, out of what the agents keep (buffer and spool); lines that\n"
    "left it meanwhile are counted in a notice. See docs/operators.md for delivery\n"
    "across a change of leader."
)

COMMANDS: tuple[Command, ...] = (
    Command(
        ("up",),
        "run etcd, a scheduler and N agents on this machine, in the foreground",
        "Run etcd, a scheduler and N agents on this machine in the foreground. "
        "With --deploy, also create the app, deploy DIR, scale it and follow its logs. "
        "Ctrl-C stops all of it and leaves no process behind.",
        Scope.LOCAL,
        _run_up,
        _up_arguments,
        epilog="example:\n  paas up --deploy examples/hello --scale web=2 worker=1",
    ),
    Command(
        ("scheduler",),
        "run one scheduler replica",
        "Run one scheduler replica. Every replica serves the API; one is "
        "elected leader through etcd and does the scheduling.",
        Scope.LOCAL,
        _run_scheduler,
        _scheduler_arguments,
        epilog="example:\n  paas scheduler --etcd http://127.0.0.1:2379 --listen 0.0.0.0:7070",
    ),
    Command(
        ("agent",),
        "run the agent of this host",
        "Run this host's agent: it joins the scheduler and runs the instances "
        "the scheduler assigns to it.",
        Scope.LOCAL,
        _run_agent,
        _agent_arguments,
        epilog="example:\n  paas agent --join 10.0.0.1:7070 --name node-1 --listen 10.0.0.5:7071",
    ),
    Command(
        ("cluster",),
        "set up a cluster's trust",
        "Set up a cluster's trust: `paas cluster init --dir DIR` makes its CA.",
        Scope.LOCAL,
        _run_cluster_word,
    ),
    Command(
        ("cluster", "init"),
        "make the cluster CA and the first admin credentials",
        "Make the cluster's CA in DIR (DIR/ca.crt, and DIR/ca.key readable only by you) "
        "and the first admin credentials, DIR/admin.credentials (valid a year): the CA "
        "certificate, a client certificate and its key in one file, 0600. Start the "
        "schedulers with `--tls-dir DIR`. An existing CA is never overwritten.",
        Scope.LOCAL,
        _run_cluster_init,
        _cluster_init_arguments,
        epilog="example:\n  paas cluster init --dir /etc/paas --san sched.example.com\n"
        "  export PAAS_CREDENTIALS=/etc/paas/admin.credentials",
    ),
    Command(
        ("credentials",),
        "admin credentials: list, create, revoke",
        "List the cluster's admin credentials: name, certificate serial, expiry and "
        "whether revoked. Keys are never stored by the cluster.",
        Scope.CLUSTER,
        commands.api(credentials.list_),
        _json_option(" (expires_at, created_at ISO 8601 UTC)"),
    ),
    Command(
        ("credentials", "create"),
        "make new admin credentials",
        "Make new admin credentials named NAME: the key is made here and only a "
        "certificate signing request is sent; the scheduler signs it. The file (CA "
        "certificate, certificate, key; 0600) is written to --out, never over a file.",
        Scope.CLUSTER,
        commands.api(credentials.create, credentials.prepare_create),
        _credentials_create_arguments,
        epilog="example:\n  paas credentials create ci --ttl 30d --out ci.credentials",
    ),
    Command(
        ("credentials", "revoke"),
        "revoke admin credentials",
        "Revoke the credentials named NAME: every scheduler replica refuses them from "
        "the next call on.",
        Scope.CLUSTER,
        commands.api(credentials.revoke),
        _credentials_name_argument,
    ),
    Command(
        ("apps",),
        "list apps, or create or destroy one",
        "List apps, or create one with `paas apps create NAME`, or destroy one with "
        "`paas apps destroy NAME --confirm NAME`.",
        Scope.CLUSTER,
        commands.api(commands.apps),
        _json_option(" (created_at ISO 8601 UTC)"),
    ),
    Command(
        ("apps", "create"),
        "create an app",
        "Create an app. Names start with a lowercase letter, then lowercase "
        "letters, digits and '-' (at most 30).",
        Scope.CLUSTER,
        commands.api(commands.apps_create, commands.prepare_create),
        _app_name_argument,
    ),
    Command(
        ("apps", "destroy"),
        "destroy an app and everything it has, for good",
        "Destroy an app, as `heroku apps:destroy`: stop every instance of it on every "
        "node, and delete its formation, releases, config vars, events, log drains and "
        "the logs the agents keep of it. There is no undo, so the app's name must be "
        "given twice: as NAME and with --confirm. Without --confirm, or with another "
        "name, nothing is changed.",
        Scope.CLUSTER,
        commands.api(commands.apps_destroy, commands.prepare_destroy),
        _destroy_arguments,
        epilog="example:\n  paas apps destroy shop --confirm shop",
    ),
    Command(
        ("deploy",),
        "new release from DIR: pack, upload, run it everywhere",
        "Make a new release from DIR/Procfile. DIR is packed into a slug (a "
        "compressed tar named by its sha256), uploaded to the scheduler unless it "
        "holds that slug already (an unchanged tree uploads nothing), and every "
        "agent runs the processes in its own unpacked copy: changing or deleting DIR "
        "afterwards changes nothing that runs. DIR/.slugignore (gitignore syntax) "
        "leaves files out of the slug; .git is always left out. A symlink out of DIR, "
        "a fifo, socket or device, or a file that changes while it is packed is "
        "refused. DIR/.env, if present, sets config vars, taken literally: ${VAR} and "
        "$VAR are not expanded (as with honcho and foreman); they are merged over the "
        "app's config, so a var set with `paas config set` and not in DIR/.env is kept "
        "(`paas config unset` removes one). PORT, DYNO and PAAS_* are reserved. "
        "DIR/paas.toml, if "
        "present, sets per process type supervision, placement and rollout settings. "
        "Running instances are replaced a few at a time, each new copy up and healthy "
        "before its old one stops (docs/rollouts.md); the command waits for that "
        "rollout and exits 1 if it failed (the previous release then stays in force), "
        "unless --no-wait. With --in-place nothing "
        "is packed: every process runs in DIR itself, on every host, so DIR must be "
        "the same path on all of them (one machine, or a shared filesystem).",
        Scope.APP,
        commands.api(commands.deploy, commands.prepare_deploy),
        _deploy_arguments,
        epilog=(
            "example:\n  paas deploy examples/hello\n"
            "  Packed 1.2 KiB slug 3f2a9c1b0d4e (3 files)\n"
            "  Uploaded 1.2 KiB in 0.0 s (1.1 MiB/s)\n"
            "  Deployed hello v1 from slug 3f2a9c1b0d4e (web)\n"
            "  v1 of hello is rolled out\n"
            "  paas deploy . --no-wait     # return once the release is made"
        ),
    ),
    Command(
        ("config",),
        "the app's config vars; get, set, unset, load them",
        "The app's config vars, as `heroku config`: one `KEY: value` line each, aligned; "
        "--shell prints KEY='value' lines a shell can source (shell-quoted), --json one "
        "JSON object. Config lives with the app, not the code: it is the current "
        "release's environment, every change makes one new release, and `paas deploy` "
        "keeps it (DIR/.env is merged over it).",
        Scope.APP,
        commands.api(releases.config),
        _config_arguments,
        epilog="examples:\n  paas config\n  paas config --shell > app.env\n"
        "  paas config --json | jq -r .DATABASE_URL",
    ),
    Command(
        ("config", "get"),
        "print one config var's value",
        "Print the value of config var KEY; one that is not set is an error (exit 1).",
        Scope.APP,
        commands.api(releases.config_get, releases.prepare_get),
        _config_get_arguments,
        epilog="example:\n  paas config get DATABASE_URL",
    ),
    Command(
        ("config", "set"),
        "set config vars: one new release",
        "Set config vars: one new release with the current release's code and these "
        "vars changed (`Set KEY, KEY2 config vars` in `paas releases`), rolled out to "
        "every process; the command waits for the rollout and exits 1 if it failed, "
        "unless --no-wait. Keys are letters, digits and '_', not starting with a digit; "
        "PORT, DYNO and PAAS_* are set by paas and reserved. At most 32 KiB of keys and "
        "values in all. Before the first deploy the release has only config, as on "
        "Heroku; the first deploy keeps it.",
        Scope.APP,
        commands.api(releases.config_set, releases.prepare_set),
        _config_set_arguments,
        epilog="examples:\n  paas config set LOG_LEVEL=debug WORKERS=4\n"
        "  Set LOG_LEVEL, WORKERS on shop: v5\n"
        "  v5 of shop is rolled out\n"
        "  paas config set 'GREETING=hello world' --no-wait",
    ),
    Command(
        ("config", "unset"),
        "remove config vars: one new release",
        "Remove config vars: one new release without them (`Unset KEY config vars`), "
        "rolled out as `config set` is. A key that is not set is refused, naming it.",
        Scope.APP,
        commands.api(releases.config_unset, releases.prepare_unset),
        _config_unset_arguments,
        epilog="example:\n  paas config unset LOG_LEVEL WORKERS",
    ),
    Command(
        ("config", "load"),
        "set every var of a .env file: one new release",
        "Set every config var of FILE, a .env file read as `paas deploy` reads DIR/.env "
        "and as honcho does: KEY=VALUE lines, quotes and `export` understood, nothing "
        "expanded (${VAR} and $VAR stay as written). One new release, rolled out as "
        "`config set` is; vars already set and not in FILE are kept.",
        Scope.APP,
        commands.api(releases.config_set, releases.prepare_load),
        _config_load_arguments,
        epilog="example:\n  paas config load production.env",
    ),
    Command(
        ("releases",),
        "the app's releases, newest first",
        "The app's releases, newest first: version, description (Deploy 3f2a9c1b0d4e, "
        "Set FOO config vars, Rollback to v7), who made it (the admin credentials' "
        "name; - without TLS), when (UTC) and where its rollout stands: rolling, "
        "succeeded, or failed with the reason. The scheduler keeps the last "
        "--keep-releases of each app (default 10) for rollback.",
        Scope.APP,
        commands.api(releases.releases),
        _releases_arguments,
        epilog="examples:\n  paas releases\n"
        "  version  description           by     created (UTC)        status\n"
        "  v7       Set FOO config vars   alice  2026-12-01 15:04:05  succeeded\n"
        "  v6       Deploy 3f2a9c1b0d4e   alice  2026-12-01 14:58:12  succeeded\n"
        "  paas releases -n 3 --json",
    ),
    Command(
        ("releases", "info"),
        "one release: its code, process types and config var keys",
        "One release whole: version, who made it and when, its description and status, "
        "the release before it, its code (slug digest and size, or the --in-place "
        "directory), its process types with their commands, and the keys of its config "
        "vars (their values: `paas config`).",
        Scope.APP,
        commands.api(releases.releases_info, releases.prepare_version),
        _releases_info_arguments,
        epilog="example:\n  paas releases info v5",
    ),
    Command(
        ("rollback",),
        "a new release with an older release's code and config",
        "Roll back: a new release with vN's slug, Procfile, settings and config vars "
        "(not its formation: the app keeps its scale), described `Rollback to vN`; "
        "without vN, the release before the current one. A release no longer kept, "
        "or whose slug is gone, is refused. The command waits for the rollout and "
        "exits 1 if it failed, unless --no-wait.",
        Scope.APP,
        commands.api(releases.rollback, releases.prepare_version),
        _rollback_arguments,
        epilog="examples:\n  paas rollback\n  paas rollback v5 --no-wait",
    ),
    Command(
        ("scale",),
        "set how many instances of each type run",
        "Set the formation: TYPE=N sets, TYPE+N adds, TYPE-N removes. With --plan "
        "nothing changes: the scheduler answers with what the new formation would "
        "make it do on the nodes as they are now (instances placed, moved or stopped, "
        "on which nodes, and how many would fit nowhere and why).",
        Scope.APP,
        commands.api(commands.scale, commands.prepare_scale),
        _scale_arguments,
        epilog=(
            "examples:\n  paas scale web=10 worker+2 clock-1\n"
            "  paas scale --plan web=12\n"
            "  Plan for shop: web=12 (nothing changed):\n"
            "    place  web.11 on node-2\n"
            "    unplaced 1 web: No room for 1 web instance(s): every eligible node is full"
        ),
    ),
    Command(
        ("why",),
        "why an instance runs where it does, or is not placed",
        "Where the instance runs, or why it is not placed: each placement filter in "
        "the order the scheduler applies them (lost and draining nodes, constraints, "
        "the spread label, capacity, memory, cpu, distinct_hosts) with how many of the "
        "nodes left by the filters before it it rules out.",
        Scope.APP,
        commands.api(commands.why, commands.prepare_why),
        _why_arguments,
        epilog=(
            "example:\n  paas why web.7\n"
            "  web.7 is not placed: no node is left after the filters (5,000 nodes)\n"
            "    constraint zone=eu-1  3,812 nodes\n"
            "    memory 512M           1,188 nodes\n"
            "    left                  0 of 5,000"
        ),
    ),
    Command(
        ("run",),
        "run a one-off process (run.N) with the app's current release",
        "Run a one-off process, as `heroku run`: run.N, with the current release's code "
        "(its slug, unpacked on the node) and config vars, plus --env overrides, DYNO=run.N "
        "and a PORT of its own. It is never restarted; its start and exit are in the log "
        "stream (paas[run.N]), it shows in `paas ps` while it runs, and it takes room on "
        "its node as an instance does."
        "\n\n"
        "Attached (the default), stdin, stdout and stderr are streamed, Ctrl-C reaches the "
        "process (SIGINT to its process group) and paas exits with its exit code (128+N "
        "when signal N ended it); if its node is lost, or the scheduler's leader changes, "
        "paas says so and exits 1. When paas itself goes away the run gets SIGHUP. With "
        "--detach paas prints run.N and returns; the output goes to the log stream. "
        "`paas run TYPE` runs the Procfile's command for TYPE.",
        Scope.APP,
        run_command,
        run_arguments,
        epilog="examples:\n"
        "  paas run -- sh -c 'exit 3'; echo $?      # 3\n"
        "  echo hello | paas run -- cat             # hello\n"
        "  paas run worker                          # the Procfile's worker command\n"
        "  paas run --env DEBUG=1 -- python manage.py migrate\n"
        "  paas run --detach -- ./backfill.sh       # run.4\n"
        "  paas logs -p run.4 -f",
    ),
    Command(
        ("ps",),
        "the app's instances",
        "One line per instance: name, type, node, pid, port, CPU (100 = one "
        "core), resident memory, and its state as a person reads it: `up 3m`, `starting "
        "4s`, `crashed 4\N{MULTIPLICATION SIGN}, exit 1 after 2s, next start in 40s`. "
        "With -v, also each instance's forensics: why its state changed, when its last "
        "run started and exited, and the last lines that run wrote.",
        Scope.APP,
        commands.api(commands.ps, commands.prepare_process),
        _ps_arguments,
        epilog="examples:\n  paas ps\n  paas ps -v web.3\n  paas ps --json",
    ),
    Command(
        ("restart",),
        "restart all instances, those of a type, or one",
        "Restart instances: with no argument every instance of the app, with "
        "a process type (web) each of its instances, with an instance name (web.3) just "
        "that one. More than one restart one at a time (rolling): the scheduler restarts "
        "the next once the last is up again.",
        Scope.APP,
        commands.api(commands.restart, commands.prepare_process),
        _restart_arguments,
        epilog="examples:\n  paas restart\n  paas restart web\n  paas restart web.3",
    ),
    Command(
        ("stop",),
        "stop one instance; the formation starts a new one",
        "Stop one instance (SIGTERM to its process group, SIGKILL after the "
        "stop grace). As with `heroku ps:stop`, the formation is unchanged, so a new "
        "instance takes its place; to run fewer, use `paas scale`.",
        Scope.APP,
        commands.api(commands.stop, commands.prepare_stop),
        _stop_arguments,
        epilog="example:\n  paas stop web.3",
    ),
    Command(
        ("nodes",),
        "the cluster's nodes",
        "One line per node: name, state (ready, lost, draining), address, instances, capacity.",
        Scope.CLUSTER,
        commands.api(commands.nodes),
        _json_option(" (last_seen ISO 8601 UTC)"),
    ),
    Command(
        ("nodes", "drain"),
        "move the node's instances to other nodes",
        "Move the node's instances to other nodes (each new copy is up before its old "
        "one stops) and keep new instances off it, e.g. before maintenance.",
        Scope.CLUSTER,
        commands.api(commands.drain),
        _node_argument,
    ),
    Command(
        ("nodes", "remove"),
        "forget a node that is gone for good",
        "Forget a lost node (a host that is gone for good: `paas nodes` says lost); its "
        "instances are placed on other nodes. A node still connected is refused: drain "
        "it, stop its agent, then remove it. An agent of that name that dials in later "
        "joins afresh.",
        Scope.CLUSTER,
        commands.api(commands.remove_node),
        _node_argument,
        epilog="example:\n  paas nodes remove node-3",
    ),
    Command(
        ("nodes", "undrain"),
        "let the node take instances again",
        "Let the node take instances again.",
        Scope.CLUSTER,
        commands.api(commands.undrain),
        _node_argument,
    ),
    Command(
        ("tokens",),
        "join tokens: how agents on other hosts join the cluster",
        "List the join tokens: id, state (usable, expired, used up, revoked), when made, "
        "when they expire, uses left. A token's secret is never shown again after "
        "`paas tokens create`: the scheduler keeps only its hash.",
        Scope.CLUSTER,
        _tokens_api("tokens"),
        _json_option(" (created, expires ISO 8601 UTC)"),
    ),
    Command(
        ("tokens", "create"),
        "make a join token and print it",
        "Make a join token and print it, with the `paas agent` line that uses it. The "
        "token pins this cluster's CA (its sha256), so the agent can check it reaches "
        "this scheduler and no other before it has a certificate. It expires (default "
        "1 h) and serves one join unless --uses says more.",
        Scope.CLUSTER,
        _tokens_api("tokens_create"),
        _tokens_create_arguments,
        epilog="examples:\n  paas tokens create\n  paas tokens create --ttl 30m --uses 3",
    ),
    Command(
        ("tokens", "revoke"),
        "refuse any further join with a token",
        "Refuse any further join with the token ID. Nodes that joined with it keep "
        "their certificates.",
        Scope.CLUSTER,
        _tokens_api("tokens_revoke"),
        _token_id_argument,
        epilog="example:\n  paas tokens revoke 3f9a0c1b2d4e",
    ),
    Command(
        ("drains",),
        "the app's log drains: where its log stream is forwarded",
        _DRAINS_DESCRIPTION,
        Scope.APP,
        commands.api(commands.drains),
        _json_option(),
        epilog=_DRAINS_EPILOG,
    ),
    Command(
        ("drains", "add"),
        "forward the app's log stream to URL",
        "Forward the app's log stream to URL, from the moment it is added. Adding a "
        "URL the app already drains to is refused.",
        Scope.APP,
        commands.api(commands.drains_add, commands.prepare_drains_add),
        _drain_url_argument,
        epilog="example:\n  paas drains add syslog://logs.example.com:6514",
    ),
    Command(
        ("drains", "remove"),
        "stop forwarding to URL",
        "Stop forwarding the app's log stream to URL and forget the drain.",
        Scope.APP,
        commands.api(commands.drains_remove, commands.prepare_drains_remove),
        _drain_url_argument,
        epilog="example:\n  paas drains remove syslog://logs.example.com:6514",
    ),
    Command(
        ("logs",),
        "the app's log lines",
        "The app's recent log lines, merged across instances, in Heroku's "
        "format; with -f, then live ones until Ctrl-C. A following `paas logs -f` "
        "outlives a broken stream, a scheduler restart or a new leader: it reconnects "
        "and goes on where it was, printing no line twice.",
        Scope.APP,
        commands.api(commands.logs, commands.prepare_logs),
        _logs_arguments,
        epilog="examples:\n"
        "  paas logs -n 200 -p web\n"
        "  paas logs -f --since 10m\n"
        "  paas logs --previous web.3      # why did web.3 crash?\n"
        "  paas logs --json | jq -r 'select(.stream == \"stderr\") | .text'",
    ),
)


# ------------------------------------------------------------------ entry points


def run(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the command, return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's usage error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    command: Command = args.command_entry
    try:
        if command.scope is Scope.APP:
            args.app = commands.app_name(args)
        return command.run(args)
    except (CLIError, InvalidInput) as exc:
        # The one place an expected failure becomes its line and exit code.
        render.error(str(exc))
        return exit_code(exc)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`paas logs | head`): not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def main() -> None:
    sys.exit(run())
