"""How the CLI's output looks: every table, JSON document, log line and colour.

Owns stdout and stderr for the commands: they hand this module protobuf
messages and plain values, and it decides the layout. Colour only when the
stream is a terminal; `--json` output is one JSON array on stdout and nothing
else. It never talks to the scheduler and never decides exit codes.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from paas.common.formation import describe
from paas.common.logformat import format_line, line_prefix, timestamp
from paas.common.logruns import lines_of_runs
from paas.common.names import InstanceName, NameError_
from paas.common.slugs import NOT_READY, human_size
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

# `crashed 4x` is written with the multiplication sign.
TIMES = "\N{MULTIPLICATION SIGN}"

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


def node_state_name(state: int) -> str:
    """`ready`, `draining`, `lost`: the proto NodeState name without its prefix, lowercase."""
    try:
        name = pb.NodeState.Name(state)  # type: ignore[arg-type]
    except ValueError:
        return "unknown"
    return name.removeprefix("NODE_").lower() if name.startswith("NODE_") else "unknown"


def _instance_order(view: pb.InstanceView) -> tuple[str, str, int, str, int]:
    try:
        parsed = InstanceName.parse(view.name)
        return (view.app, parsed.type, parsed.index, "", view.release)
    except NameError_:
        return (view.app, view.type, 0, view.name, view.release)


def iso_time(unix: float) -> str | None:
    """A moment in `--json` output: ISO 8601 in UTC with microseconds, as `logs --json`
    writes timestamps; None (null) for 0, which means "never" on the wire."""
    return timestamp(unix) if unix > 0 else None


def instance_dict(view: pb.InstanceView) -> dict[str, Any]:
    """One `ps --json` object; numbers are 0 and strings "" when there is none, times
    ISO 8601 UTC or null. `since_unix` is `since` in unix seconds, for scripts that
    compute with it."""
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
        "since": iso_time(view.since),
        "since_unix": view.since,
        "release": view.release,
        "incarnation": view.incarnation,
        "reason": view.reason,
        "started_at": iso_time(view.started_at),
        "exited_at": iso_time(view.exited_at),
        "ran_for": view.ran_for,
        "next_start": iso_time(view.next_start),
        "last_lines": list(view.last_lines),
        "cpu_percent": view.cpu_percent,
        "rss_bytes": view.rss_bytes,
    }


def duration(seconds: float) -> str:
    """`42s`, `3m`, `2h5m`, `3d4h`: short, to the unit a person cares about."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m"
    big, small, rest = (86400, "d", "h") if whole >= 86400 else (3600, "h", "m")
    count, remainder = divmod(whole, big)
    part = remainder // (3600 if small == "d" else 60)
    return f"{count}{small}{part}{rest}" if part else f"{count}{small}"


def ago(unix: float, now: float | None = None) -> str:
    if unix <= 0:
        return ""
    return f"{duration((now if now is not None else time.time()) - unix)} ago"


def _exit_text(view: pb.InstanceView) -> str:
    """`exit 1 after 2s`: how the last run ended and how long it had run."""
    if not view.last_exit:
        return ""
    if not view.ran_for:
        return view.last_exit
    # Under 10 s the tenths tell a crash on start (0.1s) from one a little later.
    ran = f"{view.ran_for:.1f}s" if view.ran_for < 10 else duration(view.ran_for)
    return f"{view.last_exit} after {ran}"


def status_text(view: pb.InstanceView, now: float) -> str:
    """The instance's state the way a person reads it: `up 3m`,
    `crashed 4x, exit 1 after 2s, next start in 40s` (with a real times sign),
    `starting 5s`.

    The agent counts `restarts` when it starts the process again, so while
    crashed or backing off the crash that just happened is not counted yet.
    """
    state = state_name(view.state)
    exit_text = _exit_text(view)
    if state == "up":
        return f"up {duration(now - (view.started_at or view.since))}" + _earlier(view)
    if state == "backoff" and view.reason.startswith(NOT_READY):
        # No process ran: the slug could not be had (the reason says why).
        return f"{view.reason}, {_next_start(view, now)}"
    if state in ("backoff", "crashed"):
        parts = [f"crashed {view.restarts + 1}{TIMES}"]
        if exit_text:
            parts.append(exit_text)
        if state == "crashed" and view.reason and view.reason != view.last_exit:
            parts.append(view.reason)
        if state == "backoff" and view.next_start:
            parts.append(_next_start(view, now))
        return ", ".join(parts)
    if state == "starting":
        text = f"starting {duration(now - view.since)}" if view.since else "starting"
        return text + _earlier(view)
    if state == "stopping":
        text = f"stopping {duration(now - view.since)}" if view.since else "stopping"
        return f"{text} ({view.reason})" if view.reason else text
    if state == "stopped":
        text = f"stopped {ago(view.since, now)}".rstrip()
        return f"{text}, {exit_text}" if exit_text else text
    if state == "lost":
        return f"lost: node {view.node} is not reporting" if view.node else "lost"
    if state == "pending":
        return f"pending ({view.reason})" if view.reason else "pending"
    return state


def _next_start(view: pb.InstanceView, now: float) -> str:
    wait = view.next_start - now
    return f"next start in {duration(wait)}" if wait >= 1 else "next start now"


def _earlier(view: pb.InstanceView) -> str:
    """` (crashed 2x, last exit 1 after 3s)` for a running instance that crashed before."""
    if not view.restarts:
        return ""
    exit_text = _exit_text(view)
    return f" (crashed {view.restarts}{TIMES}" + (f", last {exit_text})" if exit_text else ")")


def _cpu(percent: float, running: bool) -> str:
    return f"{percent:.1f}" if running else "-"


def _mib(rss: int) -> str:
    return f"{rss / 2**20:.1f}" if rss > 0 else "-"


def instances(
    views: Iterable[pb.InstanceView],
    as_json: bool = False,
    verbose: bool = False,
    unplaced: Sequence[tuple[str, str]] = (),
) -> None:
    """`paas ps`: a table, or a JSON array; `verbose` adds each instance's forensics.
    `unplaced`: (name, reason) of instances the formation asks for that no node takes,
    a row each in the table (`unplaced: every eligible node is full`); the JSON array
    holds assignments only."""
    ordered = sorted(views, key=_instance_order)
    if as_json:
        print_json([instance_dict(view) for view in ordered])
        return
    if not ordered and not unplaced:
        info("no instances: scale the app up with e.g. `paas scale web=1`")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    right = ("pid", "port", "cpu%", "rss MiB")
    for column in ("name", "type", "node", "pid", "port", "cpu%", "rss MiB", "state"):
        table.add_column(column, justify="right" if column in right else "left", no_wrap=True)
    now = time.time()
    # During a rollout a name is listed twice (the new copy beside the old): say which
    # release each one runs.
    named = Counter((view.app, view.name) for view in ordered)
    for view in ordered:
        state = state_name(view.state)
        table.add_row(
            f"{view.name} (v{view.release})" if named[(view.app, view.name)] > 1 else view.name,
            view.type,
            view.node or "-",
            str(view.pid) if view.pid else "-",
            str(view.port) if view.port else "-",
            _cpu(view.cpu_percent, view.pid > 0),
            _mib(view.rss_bytes),
            Text(status_text(view, now), style=_STATE_STYLES.get(state, "")),
        )
    for name, reason in unplaced:
        kind = name.rpartition(".")[0]
        table.add_row(name, kind, "-", "-", "-", "-", "-", Text(f"unplaced: {reason}", "red"))
    stdout = console()
    stdout.print(table)
    if verbose:
        for view in ordered:
            stdout.print(details(view, now), soft_wrap=True)


def details(view: pb.InstanceView, now: float) -> Text:
    """`paas ps -v`: one instance's forensics, its last run's output included."""
    rows: list[tuple[str, str]] = [
        ("state", f"{state_name(view.state)}"
         + (f" for {duration(now - view.since)}" if view.since else "")
         + (f": {view.reason}" if view.reason else "")),
        ("release", f"v{view.release}, incarnation {view.incarnation}"),
    ]  # fmt: skip
    if view.started_at:
        rows.append(("started", f"{timestamp(view.started_at)} ({ago(view.started_at, now)})"))
    if view.exited_at:
        rows.append(
            ("last exit", f"{_exit_text(view) or '-'}, {timestamp(view.exited_at)} "
                          f"({ago(view.exited_at, now)})")
        )  # fmt: skip
    if view.next_start:
        rows.append(("next start", f"{timestamp(view.next_start)}"))
    text = Text(f"\n{view.name}", style="bold")
    text.append(f" on {view.node}\n" if view.node else "\n")
    for label, value in rows:
        text.append(f"  {label + ':':<12}{value}\n")
    if view.last_lines:
        text.append("  last output of the run that exited:\n")
        for line in view.last_lines:
            text.append(f"    | {line}\n")
    elif view.exited_at:
        text.append("  last output: none\n")
    text.rstrip()
    return text


# ---------------------------------------------------------------- nodes


def node_dict(node: pb.Node) -> dict[str, Any]:
    """One `nodes --json` object; `last_seen` ISO 8601 UTC, or null if never seen."""
    return {
        "name": node.name,
        "state": node_state_name(node.state),
        "address": node.address,
        "instances": node.instances,
        "capacity": node.capacity,
        "last_seen": iso_time(node.last_seen),
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
    right = ("instances", "capacity", "cpu%", "rss MiB")
    columns = ("name", "state", "address", "instances", "capacity", "cpu%", "rss MiB", "labels",
               "last seen")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", no_wrap=True)
    now = time.time()
    for node in ordered:
        state = node_state_name(node.state)
        table.add_row(
            node.name,
            Text(state, style=_STATE_STYLES.get(state, "")),
            node.address,
            str(node.instances),
            str(node.capacity),
            _cpu(node.cpu_percent, node.instances > 0),
            _mib(node.rss_bytes),
            ",".join(f"{k}={v}" for k, v in sorted(node.labels.items())) or "-",
            ago(node.last_seen, now) or "-",
        )
    console().print(table)


# ---------------------------------------------------------------- drains


def drain_dict(drain: pb.LogDrain) -> dict[str, Any]:
    return {
        "app": drain.app,
        "url": drain.url,
        "token": drain.token,
        "sent": drain.sent,
        "dropped": drain.dropped,
        "problem": drain.problem,
    }


def drains(app: str, items: Iterable[pb.LogDrain], as_json: bool = False) -> None:
    listed = list(items)
    if as_json:
        print_json([drain_dict(drain) for drain in listed])
        return
    if not listed:
        info(f"no log drains on {app}: add one with `paas drains add URL`")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("url", "token", "sent", "dropped", "problem"):
        right = column in ("sent", "dropped")
        table.add_column(column, justify="right" if right else "left", no_wrap=column != "problem")
    for drain in listed:
        table.add_row(
            drain.url,
            drain.token,
            str(drain.sent),
            Text(str(drain.dropped), style="red" if drain.dropped else ""),
            Text(drain.problem or "-", style="red" if drain.problem else ""),
        )
    console().print(table)


# ---------------------------------------------------------------- apps


def app_dict(app: pb.App) -> dict[str, Any]:
    """One `apps --json` object; `created_at` ISO 8601 UTC; `id` tells a re-created app of
    the same name from the one destroyed."""
    return {
        "name": app.name,
        "id": app.id,
        "release": app.release,
        "formation": dict(app.formation),
        "process_types": list(app.process_types),
        "created_at": iso_time(app.created_at),
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


# ---------------------------------------------------------------- credentials


def credential_dict(credential: pb.Credential) -> dict[str, Any]:
    """One `credentials --json` object; times ISO 8601 UTC."""
    return {
        "name": credential.name,
        "serial": credential.serial,
        "expires_at": iso_time(credential.expires_at),
        "created_at": iso_time(credential.created_at),
        "revoked": credential.revoked,
    }


def credentials(items: Iterable[pb.Credential], as_json: bool = False) -> None:
    ordered = sorted(items, key=lambda c: c.name)
    if as_json:
        print_json([credential_dict(c) for c in ordered])
        return
    if not ordered:
        info("no credentials: make some with `paas credentials create NAME`")
        return
    now = time.time()
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("name", "serial", "expires", "revoked"):
        table.add_column(column, no_wrap=True)
    for c in ordered:
        expires = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(c.expires_at))
        if c.expires_at <= now:
            expires += " (expired)"
        table.add_row(c.name, c.serial, expires, "revoked" if c.revoked else "-")
    console().print(table)


def destroyed(app: str, instances: int) -> str:
    """What `paas apps destroy` says once the scheduler has done it."""
    stopped = f"{instances} instance{'' if instances == 1 else 's'}"
    return (
        f"Destroyed {app}: stopped its {stopped} and deleted its formation, releases, "
        "config vars, log drains and logs"
    )


def formation(app: str, counts: Mapping[str, int]) -> str:
    return f"Scaled {app} to {describe(dict(counts))}"


def planned(app: str, answer: pb.ScaleResponse) -> None:
    """`paas scale --plan`: what the scale would place, move and stop, and what would
    not fit and why; nothing of it has happened."""
    counts = " ".join(f"{t}={n}" for t, n in sorted(answer.formation.items()) if n)
    out(f"Plan for {app}: {counts or 'no instances'} (nothing changed):")
    if not (answer.place or answer.stop or answer.unplaced):
        out("  nothing to do: the instances already match")
    for step in answer.place:
        who = step.instance if step.app == app else f"{step.app}/{step.instance}"
        if step.from_node:
            out(f"  move   {who} from {step.from_node} to {step.node}")
        else:
            out(f"  place  {who} on {step.node}")
    for step in answer.stop:
        who = step.instance if step.app == app else f"{step.app}/{step.instance}"
        out(f"  stop   {who} on {step.node}")
    for missing in answer.unplaced:
        who = missing.type if missing.app == app else f"{missing.app}/{missing.type}"
        out(f"  unplaced {missing.count} {who}: {missing.reason}")


def why(answer: pb.WhyResponse) -> None:
    """`paas why web.7`: where it runs, or which filter ruled out how many nodes."""
    out(answer.summary)
    if not answer.filters:
        return
    width = max(len(f.filter) for f in answer.filters)
    for found in answer.filters:
        count = f"{found.nodes:,} node{'' if found.nodes == 1 else 's'}"
        out(f"  {found.filter:<{width}}  {count}")
    out(f"  {'left':<{width}}  {answer.candidates:,} of {answer.nodes:,}")


def restarting(app: str, names: list[str]) -> str:
    """What `paas restart` says: which instances restart, and how."""
    if not names:
        return f"Nothing to restart: {app} has no instances"
    if len(names) == 1:
        return f"Restarting {names[0]} of {app}"
    return (
        f"Restarting {len(names)} instances of {app} one at a time, each once the one "
        f"before is up again: {', '.join(names)}"
    )


def stopping(app: str, instance: str) -> str:
    """What `paas stop` says: the instance goes, the formation brings a new one."""
    type_ = instance.rpartition(".")[0]
    return f"Stopping {instance} of {app}; the formation starts a new {type_} in its place"


# ---------------------------------------------------------------- config vars


def config_vars(env: Mapping[str, str], as_json: bool = False, shell: bool = False) -> None:
    """`paas config`: `KEY: value` lines aligned on the values (Heroku's `config`),
    `--shell` lines a shell can source (`KEY='value'`), `--json` one JSON object."""
    ordered = dict(sorted(env.items()))
    if as_json:
        sys.stdout.write(json.dumps(ordered, indent=2) + "\n")
        sys.stdout.flush()
        return
    if shell:
        for key, value in ordered.items():
            out(f"{key}={shlex.quote(value)}")
        return
    width = max((len(key) for key in ordered), default=0) + 1
    for key, value in ordered.items():
        out(f"{key + ':':<{width}} {value}")


def config_changed(app: str, release: pb.Release, set_: Iterable[str], unset: Iterable[str]) -> str:
    """What `config set/unset/load` says once the release is made: keys, not values."""
    parts = []
    set_keys, unset_keys = list(set_), list(unset)
    if set_keys:
        parts.append(f"Set {', '.join(set_keys)}")
    if unset_keys:
        parts.append(f"Unset {', '.join(unset_keys)}")
    return f"{'; '.join(parts)} on {app}: v{release.version}"


# ---------------------------------------------------------------- releases


def release_status_name(status: int) -> str:
    """`rolling`, `succeeded`, `failed` (`unknown` for anything else)."""
    return _RELEASE_STATUS_NAMES.get(status, "unknown")


_RELEASE_STATUS_NAMES: dict[int, str] = {
    pb.RELEASE_ROLLING: "rolling",
    pb.RELEASE_SUCCEEDED: "succeeded",
    pb.RELEASE_FAILED: "failed",
}


def release_status(release: pb.Release) -> str:
    """`succeeded`, `failed: web.2 crashed ...`, `rolling 3/10`."""
    name = release_status_name(release.status)
    if release.status == pb.RELEASE_FAILED and release.status_reason:
        return f"{name}: {release.status_reason}"
    if release.status == pb.RELEASE_ROLLING and release.instances:
        return f"{name} {release.replaced}/{release.instances}"
    return name


def release_time(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(unix)) if unix > 0 else "-"


def release_code(release: pb.Release) -> str:
    """What the release runs: its slug, its --in-place dir, or no code yet."""
    if release.HasField("slug"):
        return f"slug {release.slug.digest[:12]} ({human_size(release.slug.size)})"
    if release.dir:
        return f"{release.dir} (in place)"
    return "no code (config set before the first deploy)"


def release_dict(release: pb.Release) -> dict[str, Any]:
    """One `releases --json` object; `created_at` ISO 8601 UTC; `config_keys` names the
    config vars, without their values (`paas config` shows those)."""
    return {
        "version": release.version,
        "description": release.description,
        "by": release.by,
        "created_at": iso_time(release.created_at),
        "status": release_status_name(release.status),
        "status_reason": release.status_reason,
        "previous": release.previous,
        "slug": (
            {"digest": release.slug.digest, "size": release.slug.size}
            if release.HasField("slug")
            else None
        ),
        "dir": release.dir,
        "commands": dict(sorted(release.commands.items())),
        "config_keys": sorted(release.env),
        "instances": release.instances,
        "replaced": release.replaced,
    }


def releases(app: str, items: Iterable[pb.Release], as_json: bool = False) -> None:
    """`paas releases`: newest first, as given."""
    listed = list(items)
    if as_json:
        print_json([release_dict(release) for release in listed])
        return
    if not listed:
        info(f"{app} has no releases yet: `paas deploy DIR` or `paas config set K=V` makes one")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("version", "description", "by", "created (UTC)", "status"):
        table.add_column(column, no_wrap=column != "status")
    for release in listed:
        status = release_status_name(release.status)
        table.add_row(
            f"v{release.version}",
            release.description,
            release.by or "-",
            release_time(release.created_at),
            Text(release_status(release), style=_RELEASE_STYLES.get(status, "")),
        )
    console().print(table)


_RELEASE_STYLES = {"rolling": "yellow", "succeeded": "green", "failed": "bold red"}


def release_info(release: pb.Release, as_json: bool = False) -> None:
    """`paas releases info vN`: the release whole; config var keys, not values."""
    if as_json:
        sys.stdout.write(json.dumps(release_dict(release), indent=2) + "\n")
        sys.stdout.flush()
        return
    rows = [
        ("version", f"v{release.version}"),
        ("description", release.description),
        ("by", release.by or "-"),
        ("created", f"{release_time(release.created_at)} UTC"),
        ("status", release_status(release)),
        ("previous", f"v{release.previous}" if release.previous else "-"),
        ("code", release_code(release)),
    ]
    width = max(len(name) for name, _ in rows) + 1
    for name, value in rows:
        out(f"{name + ':':<{width}} {value}")
    out("process types:")
    for type_, command in sorted(release.commands.items()):
        out(f"  {type_}: {command}")
    if not release.commands:
        out("  (none)")
    keys = sorted(release.env)
    out(f"config vars: {', '.join(keys) if keys else '(none)'}")


def rollout_progress(release: pb.Release) -> str:
    """The one line a terminal shows while a release rolls out."""
    if release.instances:
        return f"Rolling out v{release.version}: {release.replaced}/{release.instances} replaced"
    return f"Rolling out v{release.version}..."


def rollout_waiting(release: pb.Release) -> str:
    """What a non-terminal hears once when the waiting starts."""
    return (
        f"Rolling out v{release.version} of {release.app}; waiting until it is done "
        "(Ctrl-C stops the waiting, not the rollout; --no-wait returns at once)"
    )


def rollout_result(release: pb.Release) -> str:
    """How the rollout ended, in one line."""
    if release.status == pb.RELEASE_FAILED:
        why = release.status_reason or "no reason given"
        kept = f"; v{release.previous} stays in force" if release.previous else ""
        return f"v{release.version} of {release.app} failed: {why}{kept}"
    return f"v{release.version} of {release.app} is rolled out"


# ---------------------------------------------------------------- logs


# A line longer than this is printed in pieces even when the agent marked them
# `continued`: the CLI's memory is bounded too.
MAX_JOINED = 1024 * 1024


class LineJoiner:
    """Rejoins the pieces of over-long lines (`LogLine.continued`) per instance.

    A piece waits until the rest of its line arrives from the same (node,
    instance); the joined line keeps the first piece's time and the last's seq.
    """

    def __init__(self, limit: int = MAX_JOINED) -> None:
        self._limit = limit
        self._pending: dict[tuple[str, str], list[pb.LogLine]] = {}

    def feed(self, line: pb.LogLine) -> pb.LogLine | None:
        """The whole line once `line` completes it, else None (it waits)."""
        key = (line.node, line.instance)
        pieces = self._pending.get(key)
        if pieces is None:
            if not line.continued:
                return line
            pieces = self._pending[key] = []
        pieces.append(line)
        if line.continued and sum(len(piece.text) for piece in pieces) < self._limit:
            return None
        del self._pending[key]
        return _joined(pieces)

    @property
    def waiting(self) -> bool:
        """Whether a piece waits for the rest of its line."""
        return bool(self._pending)

    def flush(self) -> list[pb.LogLine]:
        """Lines still waiting for their rest (the stream ended), as they are."""
        lines = [_joined(pieces) for pieces in self._pending.values()]
        self._pending.clear()
        return sorted(lines, key=lambda line: line.timestamp)


def _joined(pieces: list[pb.LogLine]) -> pb.LogLine:
    line = pb.LogLine()
    line.CopyFrom(pieces[0])
    line.text = "".join(piece.text for piece in pieces)
    line.seq = pieces[-1].seq
    line.continued = False
    return line


def log_dict(line: pb.LogLine) -> dict[str, Any]:
    """One `paas logs --json` object."""
    return {
        "timestamp": timestamp(line.timestamp),
        "app": line.app,
        "instance": line.instance,
        "stream": line.stream,
        "node": line.node,
        "seq": line.seq,
        "run": line.run,
        "continued": line.continued,
        "text": line.text,
    }


class LogPrinter:
    """Writes log lines in Heroku's format, coloured per instance on a terminal, with
    over-long lines rejoined; or, `as_json`, one JSON object per line (NDJSON), pieces
    of over-long lines as they came (`continued`)."""

    def __init__(
        self, file: TextIO | None = None, flush_each: bool = True, as_json: bool = False
    ) -> None:
        self._file = file if file is not None else sys.stdout
        self._flush_each = flush_each
        self._as_json = as_json
        self._joiner = LineJoiner()
        self._console = console(self._file) if self._file.isatty() and not as_json else None

    def print(self, line: pb.LogLine) -> None:
        if self._as_json:
            self._file.write(json.dumps(log_dict(line), ensure_ascii=False) + "\n")
            if self._flush_each:
                self._file.flush()
            return
        whole = self._joiner.feed(line)
        if whole is not None:
            self._write(whole)

    def print_batch(self, runs: Sequence[pb.LogRun]) -> None:
        """`print` each line of `runs`. To a file that is no terminal they go in one
        write: a write per line was half the CLI's time when following 100,000 lines a
        second."""
        if not runs:
            return
        if self._console is None and not self._as_json and not self._joiner.waiting:
            if not any(run.continued for run in runs):
                # No piece of a long line anywhere: a run is one prefix and its texts,
                # joined in C.
                out: list[str] = []
                for run in runs:
                    head = line_prefix(run.timestamp, run.stream, run.instance or "?")
                    out += map(head.__add__, run.texts)
                out.append("")
                self._file.write("\n".join(out))
                if self._flush_each:
                    self._file.flush()
                return
        self.print_lines(lines_of_runs(runs))

    def print_lines(self, lines: Sequence[pb.LogLine]) -> None:
        """`print` each of `lines`, in one write to a file that is no terminal."""
        if self._console is not None:
            for line in lines:
                self.print(line)
            return
        if self._as_json:
            out = [json.dumps(log_dict(line), ensure_ascii=False) for line in lines]
        else:
            feed = self._joiner.feed
            out = []
            for line in lines:
                whole = feed(line)
                if whole is not None:
                    instance = whole.instance or "?"
                    out.append(format_line(whole.timestamp, whole.stream, instance, whole.text))
        if out:
            out.append("")
            self._file.write("\n".join(out))
            if self._flush_each:
                self._file.flush()

    def flush_lines(self) -> None:
        """Flush the stream (a piece of a line that waits for the rest stays waiting)."""
        self._file.flush()

    def flush(self) -> None:
        """Print what waits for the rest of a line, and flush the stream."""
        for line in self._joiner.flush():
            self._write(line)
        self._file.flush()

    def _write(self, line: pb.LogLine) -> None:
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

    @staticmethod
    def _colour(line: pb.LogLine) -> str:
        if line.instance == "scheduler":
            return "bold"
        # crc32, not hash(): the same instance gets the same colour in every run.
        return _LOG_COLOURS[zlib.crc32(line.instance.encode()) % len(_LOG_COLOURS)]


# ---------------------------------------------------------------- slug upload

# An upload that is over within this many seconds shows no progress bar.
PROGRESS_AFTER = 0.5


class UploadProgress:
    """A progress bar on stderr for a slug upload that takes more than a moment;
    nothing at all unless both stdout and stderr are terminals.

        with render.UploadProgress(size) as progress:
            await client.upload_slug(app, slug, path, on_sent=progress.update)
    """

    def __init__(self, total: int, shown: bool | None = None) -> None:
        self.total = total
        self._shown = shown if shown is not None else sys.stdout.isatty() and sys.stderr.isatty()
        self._started = time.monotonic()
        self._bar: Progress | None = None  # once shown
        self._task: TaskID | None = None

    def __enter__(self) -> UploadProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def update(self, sent: int) -> None:
        if not self._shown:
            return
        if self._bar is None:
            if time.monotonic() - self._started < PROGRESS_AFTER or sent >= self.total:
                return
            self._bar = Progress(
                TextColumn("Uploading"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console(sys.stderr),
                transient=True,
            )
            self._task = self._bar.add_task("upload", total=self.total)
            self._bar.start()
        if self._task is not None:
            self._bar.update(self._task, completed=sent)


def rate(size: int, seconds: float) -> str:
    """'12.3 MiB/s', for `Uploaded ...`."""
    return f"{human_size(int(size / max(seconds, 1e-6)))}/s"
