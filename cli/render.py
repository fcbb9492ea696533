"""How the CLI's output looks: every table, JSON document, log line and colour.

Owns stdout and stderr for the commands: they hand this module protobuf
messages and plain values, and it decides the layout. Colour only when the
stream is a terminal; `--json` output is one JSON array on stdout and nothing
else. It never talks to the scheduler and never decides exit codes.
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from paas.common.formation import describe
from paas.common.logformat import format_line
from paas.common.names import InstanceName, NameError_
from paas.proto import paas_pb2 as pb

# Piped output is read by scripts: wide enough that no column is cut short.
_PIPED_WIDTH = 250

_STATE_STYLES = {
    "up": "green",
    "pending": "yellow",
    "starting": "yellow",
    "crashed": "bold red",
    "backoff": "red",
    "lost": "bold red",
    "stopping": "dim",
    "stopped": "dim",
    "ready": "green",
    "draining": "yellow",
}

# Per-instance colours for log prefixes, as honcho and foreman do it.
_LOG_COLOURS = [
    "cyan",
    "yellow",
    "green",
    "magenta",
    "blue",
    "bright_cyan",
    "bright_yellow",
    "bright_green",
    "bright_magenta",
    "bright_blue",
]


def console(file: TextIO | None = None) -> Console:
    stream = file if file is not None else sys.stdout
    terminal = stream.isatty()
    return Console(
        file=stream,
        highlight=False,
        width=None if terminal else _PIPED_WIDTH,
        force_terminal=terminal,
        no_color=True if not terminal else None,  # None: rich honours $NO_COLOR
    )


def error(message: str) -> None:
    """The one line an expected failure prints; the caller picks the exit code."""
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    print(f"error: {first}", file=sys.stderr, flush=True)


def warning(message: str) -> None:
    print(message if message.startswith("warning:") else f"warning: {message}", file=sys.stderr)


def info(message: str) -> None:
    """Progress and confirmations: stderr, so stdout stays for data."""
    print(message, file=sys.stderr, flush=True)


def out(message: str) -> None:
    print(message, flush=True)


def print_json(items: list[dict[str, Any]]) -> None:
    sys.stdout.write(json.dumps(items, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- instances


def state_name(state: int) -> str:
    """`up`, `crashed`...: the proto InstanceState name, lowercase."""
    try:
        name = pb.InstanceState.Name(state)  # type: ignore[arg-type]
    except ValueError:
        return "unknown"
    return "unknown" if name == "STATE_UNKNOWN" else name.lower()


def _instance_order(view: pb.InstanceView) -> tuple[str, str, int, str]:
    try:
        parsed = InstanceName.parse(view.name)
        return (view.app, parsed.type, parsed.index, "")
    except NameError_:
        return (view.app, view.type, 0, view.name)


def instance_dict(view: pb.InstanceView) -> dict[str, Any]:
    """One `ps --json` object; numbers are 0 and strings "" when there is none."""
    return {
        "app": view.app,
        "name": view.name,
        "type": view.type,
        "state": state_name(view.state),
        "node": view.node,
        "pid": view.pid,
        "port": view.port,
        "restarts": view.restarts,
        "last_exit": view.last_exit,
        "since": view.since,
        "release": view.release,
        "incarnation": view.incarnation,
        "reason": view.reason,
        "started_at": view.started_at,
        "exited_at": view.exited_at,
        "ran_for": view.ran_for,
        "next_start": view.next_start,
        "last_lines": list(view.last_lines),
        "cpu_percent": view.cpu_percent,
        "rss_bytes": view.rss_bytes,
    }


def ago(unix: float, now: float | None = None) -> str:
    if unix <= 0:
        return ""
    seconds = max(0, int((now if now is not None else time.time()) - unix))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def instances(views: Iterable[pb.InstanceView], as_json: bool = False) -> None:
    ordered = sorted(views, key=_instance_order)
    if as_json:
        print_json([instance_dict(view) for view in ordered])
        return
    if not ordered:
        info("no instances: scale the app up with e.g. `paas scale web=1`")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in (
        "name",
        "type",
        "state",
        "node",
        "pid",
        "port",
        "restarts",
        "last exit",
        "since",
    ):
        table.add_column(
            column,
            justify="right" if column in ("pid", "port", "restarts") else "left",
            no_wrap=True,
        )
    now = time.time()
    for view in ordered:
        state = state_name(view.state)
        table.add_row(
            view.name,
            view.type,
            Text(state, style=_STATE_STYLES.get(state, "")),
            view.node or "-",
            str(view.pid) if view.pid else "-",
            str(view.port) if view.port else "-",
            str(view.restarts),
            view.last_exit or "-",
            ago(view.since, now) or "-",
        )
    console().print(table)


# ---------------------------------------------------------------- nodes


def node_dict(node: pb.Node) -> dict[str, Any]:
    return {
        "name": node.name,
        "state": node.state,
        "address": node.address,
        "instances": node.instances,
        "capacity": node.capacity,
        "last_seen": node.last_seen,
        "labels": dict(node.labels),
        "cpu_percent": node.cpu_percent,
        "rss_bytes": node.rss_bytes,
    }


def nodes(items: Iterable[pb.Node], as_json: bool = False) -> None:
    ordered = sorted(items, key=lambda node: node.name)
    if as_json:
        print_json([node_dict(node) for node in ordered])
        return
    if not ordered:
        info("no nodes: start an agent with `paas agent --join SCHEDULER ...`")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("name", "state", "address", "instances", "capacity", "labels", "last seen"):
        table.add_column(
            column, justify="right" if column in ("instances", "capacity") else "left", no_wrap=True
        )
    now = time.time()
    for node in ordered:
        table.add_row(
            node.name,
            Text(node.state, style=_STATE_STYLES.get(node.state, "")),
            node.address,
            str(node.instances),
            str(node.capacity),
            ",".join(f"{k}={v}" for k, v in sorted(node.labels.items())) or "-",
            ago(node.last_seen, now) or "-",
        )
    console().print(table)


# ---------------------------------------------------------------- apps


def app_dict(app: pb.App) -> dict[str, Any]:
    return {
        "name": app.name,
        "release": app.release,
        "formation": dict(app.formation),
        "process_types": list(app.process_types),
        "created_at": app.created_at,
    }


def apps(items: Iterable[pb.App], as_json: bool = False) -> None:
    ordered = sorted(items, key=lambda app: app.name)
    if as_json:
        print_json([app_dict(app) for app in ordered])
        return
    if not ordered:
        info("no apps: create one with `paas apps create NAME`")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("name", "release", "formation", "process types"):
        table.add_column(column, no_wrap=True)
    for app in ordered:
        table.add_row(
            app.name,
            f"v{app.release}" if app.release else "-",
            describe(dict(app.formation)),
            ", ".join(app.process_types) or "-",
        )
    console().print(table)


def formation(app: str, counts: Mapping[str, int]) -> str:
    return f"Scaled {app} to {describe(dict(counts))}"


# ---------------------------------------------------------------- logs


class LogPrinter:
    """Writes log lines in Heroku's format; coloured per instance on a terminal."""

    def __init__(self, file: TextIO | None = None, flush_each: bool = True) -> None:
        self._file = file if file is not None else sys.stdout
        self._flush_each = flush_each
        self._console = console(self._file) if self._file.isatty() else None

    def print(self, line: pb.LogLine) -> None:
        instance = line.instance or "?"
        if self._console is None:
            self._file.write(format_line(line.timestamp, line.stream, instance, line.text) + "\n")
            if self._flush_each:
                self._file.flush()
            return
        prefix = format_line(line.timestamp, line.stream, instance, "")
        text = Text(prefix, style=self._colour(line))
        text.append(line.text)
        self._console.print(text, soft_wrap=True)

    def flush(self) -> None:
        self._file.flush()

    @staticmethod
    def _colour(line: pb.LogLine) -> str:
        if line.instance == "scheduler":
            return "bold"
        # crc32, not hash(): the same instance gets the same colour in every run.
        return _LOG_COLOURS[zlib.crc32(line.instance.encode()) % len(_LOG_COLOURS)]
