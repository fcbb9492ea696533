"""`paas`: the command line, its words and options, and its exit codes.

Owns parsing and dispatch: each subcommand is declared here with its --help
and handed to a handler in `commands` (API calls), `daemons` (`paas
scheduler`, `paas agent`) or `up` (`paas up`). Exit codes: 0 success, 1 a
refused request or bad input, 2 a usage error. Every expected error is one
line on stderr starting with `error: `; no tracebacks for them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import NoReturn

from paas.cli import render
from paas.cli.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    CommandError,
    UsageError,
)
from paas.common.addresses import DEFAULT_SCHEDULER
from paas.common.digits import parse_digits


class _Parser(argparse.ArgumentParser):
    """argparse with the project's one-line error format."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see `{self.prog} --help`)\n")


_FORMATTER = argparse.RawDescriptionHelpFormatter


def _scheduler_help() -> str:
    return (
        "scheduler address HOST:PORT, or several replicas comma-separated "
        f"(default: $PAAS_SCHEDULER, else {DEFAULT_SCHEDULER})"
    )


def _api_options(app_scoped: bool) -> _Parser:
    """Options every API command takes, after the command word."""
    parent = _Parser(add_help=False)
    # SUPPRESS: an option given before the command word is not overwritten here.
    parent.add_argument(
        "--scheduler", metavar="ADDR[,ADDR]", default=argparse.SUPPRESS, help=_scheduler_help()
    )
    if app_scoped:
        parent.add_argument(
            "-a",
            "--app",
            metavar="NAME",
            default=argparse.SUPPRESS,
            help="the app (default: $PAAS_APP)",
        )
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="paas",
        formatter_class=_FORMATTER,
        description="A multi-host process scheduler: the twelve-factor process model "
        "across a cluster.",
        epilog="Start a local cluster with `paas up`, then:\n"
        "  export PAAS_SCHEDULER=127.0.0.1:7070 PAAS_APP=hello\n"
        "  paas apps create hello && paas deploy examples/hello && paas scale web=2\n"
        "  paas ps && paas logs -f",
    )
    parser.add_argument("--scheduler", metavar="ADDR[,ADDR]", help=_scheduler_help())
    parser.add_argument("-a", "--app", metavar="NAME", help="the app (default: $PAAS_APP)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    app_api = [_api_options(app_scoped=True)]
    global_api = [_api_options(app_scoped=False)]

    # -------------------------------------------------------------- up
    up = commands.add_parser(
        "up",
        help="run etcd, a scheduler and N agents on this machine, in the foreground",
        description="Run etcd, a scheduler and N agents on this machine in the foreground. "
        "With --deploy, also create the app, deploy DIR, scale it and follow its logs. "
        "Ctrl-C stops all of it and leaves no process behind.",
        formatter_class=_FORMATTER,
        epilog="example:\n  paas up --deploy examples/hello --scale web=2 worker=1",
    )
    up.add_argument(
        "--agents",
        type=_count(1, 200),
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
        type=_seconds,
        default=10.0,
        metavar="S",
        help="seconds before a silent agent's node is lost (default: 10)",
    )
    up.set_defaults(handler="up")

    # -------------------------------------------------------------- scheduler
    scheduler = commands.add_parser(
        "scheduler",
        help="run one scheduler replica",
        description="Run one scheduler replica. Every replica serves the API; one is "
        "elected leader through etcd and does the scheduling.",
        formatter_class=_FORMATTER,
        epilog="example:\n  paas scheduler --etcd http://127.0.0.1:2379 --listen 0.0.0.0:7070",
    )
    scheduler.add_argument(
        "--etcd",
        required=True,
        type=_etcd_list,
        metavar="URL[,URL]",
        help="etcd endpoints, e.g. http://10.0.0.1:2379,10.0.0.2:2379",
    )
    scheduler.add_argument(
        "--listen",
        required=True,
        type=_address,
        metavar="HOST:PORT",
        help="where to serve the API and agent sessions",
    )
    scheduler.add_argument(
        "--advertise",
        type=_address,
        default=None,
        metavar="HOST:PORT",
        help="address other replicas redirect clients to (default: --listen)",
    )
    scheduler.add_argument(
        "--node-grace",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="seconds before a silent agent's node is lost (default: 10)",
    )
    scheduler.add_argument(
        "--leader-ttl",
        type=_count(1, 3600),
        default=5,
        metavar="S",
        help="seconds of the leader election lease (default: 5)",
    )
    _log_level_option(scheduler)
    scheduler.set_defaults(handler="scheduler")

    # -------------------------------------------------------------- agent
    agent = commands.add_parser(
        "agent",
        help="run the agent of this host",
        description="Run this host's agent: it joins the scheduler and runs the instances "
        "the scheduler assigns to it.",
        formatter_class=_FORMATTER,
        epilog="example:\n  paas agent --join 10.0.0.1:7070 --name node-1 --listen 10.0.0.5:7071",
    )
    agent.add_argument(
        "--join",
        required=True,
        type=_address_list,
        metavar="HOST:PORT[,...]",
        help="the scheduler replicas to dial",
    )
    agent.add_argument(
        "--name",
        required=True,
        type=_node_name,
        metavar="NAME",
        help="this node's name, unique in the cluster",
    )
    agent.add_argument(
        "--listen",
        required=True,
        type=_address,
        metavar="HOST:PORT",
        help="where to serve the agent's own API (log reading)",
    )
    agent.add_argument(
        "--advertise",
        type=_address,
        default=None,
        metavar="HOST:PORT",
        help="where the scheduler reaches this agent (default: --listen)",
    )
    agent.add_argument(
        "--ports",
        type=_port_range,
        default=None,
        metavar="LOW-HIGH",
        help="range of $PORT values for instances (default: 5000-5999)",
    )
    agent.add_argument(
        "--capacity",
        type=_count(1, 100_000),
        default=None,
        metavar="N",
        help="most instances this node runs at once (default: 256)",
    )
    agent.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="where the agent keeps its state (default: /tmp/paas-agent)",
    )
    agent.add_argument(
        "--stop-grace",
        type=_seconds,
        default=None,
        metavar="S",
        help="seconds between SIGTERM and SIGKILL when stopping (default: 30)",
    )
    agent.add_argument(
        "--log-buffer-lines",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="log lines kept in memory per instance (default: 10000)",
    )
    agent.add_argument(
        "--log-spool-file-size",
        type=_non_negative_int,
        default=None,
        metavar="BYTES",
        help="size of each on-disk log spool file before it rotates (default: 64 MiB)",
    )
    agent.add_argument(
        "--log-spool-files",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="spool files kept per agent; 0 keeps logs in memory only (default: 4)",
    )
    agent.add_argument(
        "--label",
        type=_label,
        action="append",
        default=[],
        metavar="K=V",
        help="a node label, repeatable",
    )
    _log_level_option(agent)
    agent.set_defaults(handler="agent")

    # -------------------------------------------------------------- apps
    apps = commands.add_parser(
        "apps",
        parents=global_api,
        help="list apps, or create one",
        description="List apps, or create one with `paas apps create NAME`.",
    )
    apps.add_argument("--json", action="store_true", help="print a JSON array")
    apps.set_defaults(handler="apps")
    apps_commands = apps.add_subparsers(
        dest="apps_command", metavar="COMMAND", parser_class=_Parser
    )
    create = apps_commands.add_parser(
        "create",
        parents=global_api,
        help="create an app",
        description="Create an app. Names start with a lowercase letter, then lowercase "
        "letters, digits and '-' (at most 30).",
    )
    create.add_argument("name", metavar="NAME")
    create.set_defaults(handler="apps create")

    # -------------------------------------------------------------- deploy
    deploy = commands.add_parser(
        "deploy",
        parents=app_api,
        help="new release from DIR/Procfile",
        description="Make a new release from DIR/Procfile; DIR becomes the working "
        "directory of every process. DIR/.env, if present, sets config vars.",
    )
    deploy.add_argument(
        "dir", metavar="DIR", nargs="?", default=".", help="the app's directory (default: .)"
    )
    deploy.set_defaults(handler="deploy")

    # -------------------------------------------------------------- scale
    scale = commands.add_parser(
        "scale",
        parents=app_api,
        help="set how many instances of each type run",
        description="Set the formation: TYPE=N sets, TYPE+N adds, TYPE-N removes.",
        formatter_class=_FORMATTER,
        epilog="example:\n  paas scale web=10 worker+2 clock-1",
    )
    scale.add_argument("changes", metavar="TYPE=N", nargs="+")
    scale.set_defaults(handler="scale")

    # -------------------------------------------------------------- ps
    ps = commands.add_parser(
        "ps",
        parents=app_api,
        help="the app's instances",
        description="One line per instance: name, type, node, pid, port, CPU (100 = one "
        "core), resident memory, and its state as a person reads it: `up 3m`, `starting "
        "4s`, `crashed 4\N{MULTIPLICATION SIGN}, exit 1 after 2s, next start in 40s`. "
        "With -v, also each "
        "instance's forensics: why its state changed, when its last run started and "
        "exited, and the last lines that run wrote.",
        formatter_class=_FORMATTER,
        epilog="examples:\n  paas ps\n  paas ps -v web.3\n  paas ps --json",
    )
    ps.add_argument(
        "process",
        metavar="TYPE|INSTANCE",
        nargs="?",
        default=None,
        help="only this process type (web) or instance (web.3)",
    )
    ps.add_argument(
        "-v", "--verbose", action="store_true", help="also each instance's forensics and output"
    )
    ps.add_argument(
        "--json",
        action="store_true",
        help="print a JSON array (forensics included: reason, last_lines, ...)",
    )
    ps.set_defaults(handler="ps")

    # -------------------------------------------------------------- restart and stop
    restart = commands.add_parser(
        "restart",
        parents=app_api,
        help="restart all instances, those of a type, or one",
        description="Restart instances: with no argument every instance of the app, with "
        "a process type (web) each of its instances, with an instance name (web.3) just "
        "that one. More than one restart one at a time (rolling): the scheduler restarts "
        "the next once the last is up again.",
        formatter_class=_FORMATTER,
        epilog="examples:\n  paas restart\n  paas restart web\n  paas restart web.3",
    )
    restart.add_argument(
        "process",
        metavar="TYPE|INSTANCE",
        nargs="?",
        default="",
        help="a process type (web) or an instance (web.3); default: every instance",
    )
    restart.set_defaults(handler="restart")

    stop = commands.add_parser(
        "stop",
        parents=app_api,
        help="stop one instance; the formation starts a new one",
        description="Stop one instance (SIGTERM to its process group, SIGKILL after the "
        "stop grace). As with `heroku ps:stop`, the formation is unchanged, so a new "
        "instance takes its place; to run fewer, use `paas scale`.",
        formatter_class=_FORMATTER,
        epilog="example:\n  paas stop web.3",
    )
    stop.add_argument("instance", metavar="INSTANCE", help="the instance, e.g. web.3")
    stop.set_defaults(handler="stop")

    # -------------------------------------------------------------- nodes
    nodes = commands.add_parser(
        "nodes",
        parents=global_api,
        help="the cluster's nodes",
        description="One line per node: name, state (ready, lost, draining), address, "
        "instances, capacity.",
    )
    nodes.add_argument("--json", action="store_true", help="print a JSON array")
    nodes.set_defaults(handler="nodes")
    nodes_commands = nodes.add_subparsers(
        dest="nodes_command", metavar="COMMAND", parser_class=_Parser
    )
    for word, text in (
        (
            "drain",
            "Move the node's instances to other nodes (each new copy is up before its old "
            "one stops) and keep new instances off it, e.g. before maintenance.",
        ),
        ("undrain", "Let the node take instances again."),
    ):
        command = nodes_commands.add_parser(
            word, parents=global_api, help=text.split(" (")[0].split(", e.g.")[0],
            description=text,
        )  # fmt: skip
        command.add_argument("node", metavar="NAME", help="the node, as `paas nodes` names it")
        command.set_defaults(handler=f"nodes {word}")

    # -------------------------------------------------------------- drains
    drains = commands.add_parser(
        "drains",
        parents=app_api,
        help="the app's log drains: where its log stream is forwarded",
        description=textwrap.fill(
            "List the app's log drains, or add and remove them. A log drain receives the "
            "app's whole log stream as it comes, as with `heroku drains`: the output of "
            "every instance on every node and the scheduler's own events "
            "(paas[scheduler]). Each line is an RFC 5424 syslog message: hostname the "
            "drain's token, app-name the app, procid the instance (web.3, scheduler)."
        )
        + "\n\n"
        + textwrap.fill(
            "The list shows each drain's URL, token, the lines sent and dropped since the "
            "current scheduler leader took over, and its last delivery problem."
        ),
        formatter_class=_FORMATTER,
        epilog="URLs:\n"
        "  syslog://HOST:PORT           syslog over TCP, octet-counted (RFC 6587)\n"
        "  http(s)://HOST[:PORT]/PATH   POSTs of batches in Heroku's logplex framing\n"
        "                               (application/logplex-1)\n"
        "examples:\n"
        "  paas drains add syslog://logs.example.com:6514\n"
        "  paas drains add https://user:secret@collector.example.com/heroku\n"
        "  paas drains --json\n"
        "  paas drains remove syslog://logs.example.com:6514\n\n"
        "A drain that is slow or down holds up to 10000 lines and retries (0.5 s, doubling\n"
        "to 30 s); lines beyond are dropped and counted, and it receives `N lines dropped`\n"
        "when it catches up. See docs/operators.md for delivery across a change of leader.",
    )
    drains.add_argument("--json", action="store_true", help="print a JSON array")
    drains.set_defaults(handler="drains")
    drains_commands = drains.add_subparsers(
        dest="drains_command", metavar="COMMAND", parser_class=_Parser
    )
    for word, summary, text in (
        (
            "add",
            "forward the app's log stream to URL",
            "Forward the app's log stream to URL, from the moment it is added. Adding a "
            "URL the app already drains to is refused.",
        ),
        (
            "remove",
            "stop forwarding to URL",
            "Stop forwarding the app's log stream to URL and forget the drain.",
        ),
    ):
        command = drains_commands.add_parser(
            word, parents=app_api, help=summary, description=text, formatter_class=_FORMATTER,
            epilog=f"example:\n  paas drains {word} syslog://logs.example.com:6514",
        )  # fmt: skip
        command.add_argument(
            "url", metavar="URL", help="syslog://HOST:PORT or http(s)://HOST[:PORT]/PATH"
        )
        command.set_defaults(handler=f"drains {word}")

    # -------------------------------------------------------------- logs
    logs = commands.add_parser(
        "logs",
        parents=app_api,
        help="the app's log lines",
        description="The app's recent log lines, merged across instances, in Heroku's "
        "format; with -f, then live ones until Ctrl-C. A following `paas logs -f` "
        "outlives a broken stream, a scheduler restart or a new leader: it reconnects "
        "and goes on where it was, printing no line twice.",
        formatter_class=_FORMATTER,
        epilog="examples:\n"
        "  paas logs -n 200 -p web\n"
        "  paas logs -f --since 10m\n"
        "  paas logs --previous web.3      # why did web.3 crash?\n"
        "  paas logs --json | jq -r 'select(.stream == \"stderr\") | .text'",
    )
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument(
        "-n",
        "--num",
        type=_count(0, 1_000_000),
        default=0,
        metavar="N",
        help="how many recent lines (default: 100)",
    )
    logs.add_argument(
        "-p",
        "--process",
        type=_process,
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
    logs.set_defaults(handler="logs")

    return parser


def _log_level_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="how much to log to stderr (default: info)",
    )


# ------------------------------------------------------------------ value types


# Seconds as people write them: 10, 0.5, .5, 10. (not float()'s `1_0`, `1e3`, `٣`, `inf`).
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def _count(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        number = parse_digits(text)
        if number is None or not low <= number <= high:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {low} to {high}, got {text!r}"
            )
        return number

    return parse


def _non_negative_int(text: str) -> int:
    number = parse_digits(text)
    if number is None:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return number


def _seconds(text: str) -> float:
    value = float(text) if _SECONDS.fullmatch(text) else -1.0
    if not 0 <= value < 1e6:
        raise argparse.ArgumentTypeError(f"expected seconds, e.g. 10 or 0.5, got {text!r}")
    return value


def _address(text: str) -> str:
    from paas.common.addresses import AddressError, parse_address

    try:
        parse_address(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def _address_list(text: str) -> list[str]:
    from paas.common.addresses import AddressError, parse_address_list

    try:
        return parse_address_list(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _etcd_list(text: str) -> list[str]:
    """`http://a:2379,b:2379` -> ['a:2379', 'b:2379']."""
    stripped = []
    for part in text.split(","):
        part = part.strip().rstrip("/")
        for scheme in ("http://", "https://"):
            if part.startswith(scheme):
                part = part[len(scheme) :]
        if part:
            stripped.append(part)
    return _address_list(",".join(stripped))


def _port_range(text: str) -> tuple[int, int]:
    first, dash, last = text.partition("-")
    low, high = parse_digits(first), parse_digits(last)
    if not dash or low is None or high is None or not 0 < low <= high < 65536:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH ports, e.g. 5000-5999, got {text!r}")
    return low, high


def _label(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"expected a label K=V, e.g. zone=a, got {text!r}")
    return key.strip(), value.strip()


def _node_name(text: str) -> str:
    from paas.common.names import NameError_, check_node_name

    try:
        return check_node_name(text)
    except NameError_ as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _process(text: str) -> str:
    from paas.common.names import InstanceName, NameError_, check_process_type

    try:
        if "." in text:
            return str(InstanceName.parse(text))
        return check_process_type(text)
    except NameError_ as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ------------------------------------------------------------------ entry points


def run(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the command, return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's usage error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return _dispatch(args)
    except UsageError as exc:
        render.error(str(exc))
        return EXIT_USAGE
    except CommandError as exc:
        render.error(str(exc))
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`paas logs | head`): not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    handler: str = args.handler
    if handler == "up":
        from paas.cli.up import run_up

        return run_up(args)
    if handler in ("scheduler", "agent"):
        from paas.cli.daemons import run_agent, run_scheduler

        return run_scheduler(args) if handler == "scheduler" else run_agent(args)
    from paas.cli import commands

    return commands.run(handler, args)


def main() -> None:
    sys.exit(run())
