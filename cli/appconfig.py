"""What `paas deploy` reads from DIR beside the Procfile: paas.toml and .env.

DIR/paas.toml holds per process type supervision settings:

    [types.web]
    stop_grace = 60        # seconds from SIGTERM to SIGKILL
    boot_timeout = 120     # seconds to accept a connection on $PORT
    check = "port"         # "port" or "none" (default: web is checked, others not)
    backoff_cap = 300      # seconds, the longest wait between crash restarts
    backoff_reset = 600    # seconds up after which the backoff starts over

    [types.clock]
    stop_after_disconnected = 5   # seconds an agent cut off from the scheduler keeps
                                  # it running (below the node grace): at most one copy

how a new release replaces its instances (scheduler/rollout.py):

    [types.web]
    health = "/healthz"       # HTTP path that must answer 2xx/3xx on $PORT to be up
    min_healthy = 3           # seconds a new copy stays up before its old one stops
    max_parallel = 2          # replacements in flight: a count, or "25%" of the type
    progress_deadline = 300   # seconds without progress before the rollout fails
    auto_rollback = true      # a failed rollout rolls back to the release before

and where the scheduler places its instances (common/placement.py):

    [types.web]
    constraints = ["zone=eu-1", "disk!=hdd"]   # node labels (paas agent --label)
    spread = "zone"                             # evenly across this label's values
    distinct_hosts = true                       # at most one instance per node
    memory = "512M"                             # reserved per instance
    cpu = 0.5                                   # reserved cores per instance

DIR/.env holds config vars, `KEY=VALUE` a line, read as python-dotenv parses
them (quotes, `export`, escapes in double quotes) but literal, as honcho and
foreman read them: `${VAR}` and `$VAR` stay as written. Nothing is expanded
from the shell of whoever runs `paas deploy`, which is not the environment the
processes run in. A process's shell may still expand them when its Procfile
command names them.

Pure: text in, `ProcessSettings` per type or config vars out, or an
`AppConfigError` (`ConfigVarsError` for a var the scheduler would refuse) whose
one line names the file, the key and the problem. It reads no file and sends
nothing; the scheduler checks both again and the agent applies them.
"""

from __future__ import annotations

import io
import math
import tomllib
from collections.abc import Iterable
from typing import Any

from dotenv.parser import parse_stream

from paas.cli.errors import CLIError
from paas.common.configvars import check_config_vars
from paas.common.placement import (
    PlacementError,
    parse_constraint,
    parse_cpu,
    parse_label,
    parse_size,
)
from paas.common.rollouts import MAX_MIN_HEALTHY, max_parallel
from paas.proto import paas_pb2 as pb

FILENAME = "paas.toml"
DOTENV = ".env"
_BOM = "\ufeff"

# Seconds-valued keys, in the order `--help` and errors list them.
_SECONDS = (
    "stop_grace",
    "boot_timeout",
    "backoff_cap",
    "backoff_reset",
    "stop_after_disconnected",
)
_CHECKS = {"port": pb.ProcessSettings.CHECK_PORT, "none": pb.ProcessSettings.CHECK_NONE}
_PLACEMENT = ("constraints", "spread", "distinct_hosts", "memory", "cpu")
_ROLLOUT = ("health", "min_healthy", "max_parallel", "progress_deadline", "auto_rollback")
KEYS = (*_SECONDS[:2], "check", *_SECONDS[2:], *_PLACEMENT, *_ROLLOUT)


class AppConfigError(CLIError, ValueError):
    """paas.toml is malformed; the message is one line naming file, key and problem."""


def parse_app_config(
    text: str, process_types: Iterable[str], source: str = FILENAME
) -> dict[str, pb.ProcessSettings]:
    """The settings per process type in `text`; every type must be in `process_types`."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AppConfigError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(document) - {"types"})
    if unknown:
        raise AppConfigError(
            f"{source}: {unknown[0]}: unknown key (a paas.toml has only [types.TYPE] tables)"
        )
    types = document.get("types", {})
    if not isinstance(types, dict):
        raise AppConfigError(f"{source}: types: expected tables like [types.web]")
    known_types = sorted(process_types)
    settings: dict[str, pb.ProcessSettings] = {}
    for type_, table in types.items():
        where = f"{source}: types.{type_}"
        if type_ not in known_types:
            raise AppConfigError(
                f"{where}: no process type {type_!r} in the Procfile "
                f"(it has: {', '.join(known_types) or 'none'})"
            )
        if not isinstance(table, dict):
            raise AppConfigError(f"{where}: expected a table [types.{type_}], got {table!r}")
        settings[type_] = _settings(where, table)
    return settings


def _settings(where: str, table: dict[str, Any]) -> pb.ProcessSettings:
    settings = pb.ProcessSettings()
    for key, value in table.items():
        if key in _SECONDS:
            setattr(settings, key, _positive_seconds(f"{where}.{key}", value))
        elif key == "check":
            if value not in _CHECKS:
                raise AppConfigError(
                    f'{where}.check: expected "port" or "none", got {_show(value)}'
                )
            settings.check = _CHECKS[value]
        elif key in _PLACEMENT:
            try:
                _placement(settings, f"{where}.{key}", key, value)
            except PlacementError as exc:
                raise AppConfigError(str(exc)) from None
        elif key in _ROLLOUT:
            _rollout(settings, f"{where}.{key}", key, value)
        else:
            raise AppConfigError(f"{where}.{key}: unknown key (known: {', '.join(KEYS)})")
    return settings


def _placement(settings: pb.ProcessSettings, where: str, key: str, value: object) -> None:
    if key == "constraints":
        if not isinstance(value, list):
            raise PlacementError(
                f'{where}: expected an array like ["zone=eu-1"], got {_show(value)}'
            )
        settings.constraints.extend(str(parse_constraint(c, where)) for c in value)
    elif key == "spread":
        settings.spread = parse_label(value, where)
    elif key == "distinct_hosts":
        if not isinstance(value, bool):
            raise PlacementError(f"{where}: expected true or false, got {_show(value)}")
        settings.distinct_hosts = value
    elif key == "memory":
        settings.memory = parse_size(value, where)
    else:
        settings.cpu = parse_cpu(value, where)


def _rollout(settings: pb.ProcessSettings, where: str, key: str, value: object) -> None:
    """The rolling replacement keys, checked as the scheduler checks them."""
    if key == "health":
        if (
            not isinstance(value, str)
            or not value.startswith("/")
            or any(c.isspace() or not c.isprintable() for c in value)
        ):
            raise AppConfigError(
                f'{where}: expected an HTTP path starting with "/", like "/healthz", '
                f"got {_show(value)}"
            )
        settings.health = value
    elif key == "min_healthy":
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise AppConfigError(f"{where}: expected a number of seconds, got {_show(value)}")
        if not 0 <= value <= MAX_MIN_HEALTHY:
            raise AppConfigError(
                f"{where}: must be between 0 and {MAX_MIN_HEALTHY:g} seconds, got {value}"
            )
        settings.min_healthy = float(value)
    elif key == "max_parallel":
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(text, str):
            raise AppConfigError(f'{where}: expected a count like 2 or "25%", got {_show(value)}')
        try:
            max_parallel(text, 1)
        except ValueError:
            raise AppConfigError(
                f'{where}: expected a count from 1 or "1%" to "100%", got {_show(value)}'
            ) from None
        settings.max_parallel = text
    elif key == "progress_deadline":
        settings.progress_deadline = _positive_seconds(where, value)
    else:
        if not isinstance(value, bool):
            raise AppConfigError(f"{where}: expected true or false, got {_show(value)}")
        settings.auto_rollback = value


def _positive_seconds(where: str, value: object) -> float:
    # bool is an int to Python, but `stop_grace = true` is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AppConfigError(f"{where}: expected a number of seconds, got {_show(value)}")
    if math.isnan(value) or math.isinf(value):
        raise AppConfigError(f"{where}: expected a finite number of seconds, got {value}")
    if value < 0:
        raise AppConfigError(f"{where}: must not be negative, got {value}")
    if value == 0:
        # 0 means "the agent's default" on the wire: say so rather than surprise.
        raise AppConfigError(f"{where}: must be above 0 (leave it out for the default)")
    return float(value)


def parse_dotenv(text: str, source: str = DOTENV) -> dict[str, str]:
    """The config vars of a .env file's `text`, literal, checked as the scheduler checks
    them (`ConfigVarsError`). A bare `KEY` line has no value and sets nothing, as in
    honcho; a line that is no `KEY=VALUE` is an `AppConfigError` naming its number."""
    env: dict[str, str] = {}
    # parse_stream, not dotenv_values: that one would only log a line it cannot
    # parse and drop it, and it expands ${VAR} unless told not to.
    for binding in parse_stream(io.StringIO(text.removeprefix(_BOM))):
        if binding.error:
            line = binding.original.string.rstrip("\r\n")
            raise AppConfigError(
                f"{source}:{binding.original.line}: expected KEY=VALUE, got {line!r}"
            )
        if binding.key is not None and binding.value is not None:
            env[binding.key] = binding.value
    check_config_vars(env)
    return env


def _show(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)
