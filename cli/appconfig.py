"""DIR/paas.toml: per process type supervision settings that `paas deploy` sends.

    [types.web]
    stop_grace = 60        # seconds from SIGTERM to SIGKILL
    boot_timeout = 120     # seconds to accept a connection on $PORT
    check = "port"         # "port" or "none" (default: web is checked, others not)
    backoff_cap = 300      # seconds, the longest wait between crash restarts
    backoff_reset = 600    # seconds up after which the backoff starts over

    [types.clock]
    stop_after_disconnected = 5   # seconds an agent cut off from the scheduler keeps
                                  # it running (below the node grace): at most one copy

Pure: text in, `ProcessSettings` per type out, or an `AppConfigError` whose one
line names the file, the key and the problem. It reads no file and sends
nothing; the scheduler checks the settings again and the agent applies them.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable
from typing import Any

from paas.proto import paas_pb2 as pb

FILENAME = "paas.toml"

# Seconds-valued keys, in the order `--help` and errors list them.
_SECONDS = (
    "stop_grace",
    "boot_timeout",
    "backoff_cap",
    "backoff_reset",
    "stop_after_disconnected",
)
_CHECKS = {"port": pb.ProcessSettings.CHECK_PORT, "none": pb.ProcessSettings.CHECK_NONE}
KEYS = (*_SECONDS[:2], "check", *_SECONDS[2:])


class AppConfigError(ValueError):
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
        else:
            raise AppConfigError(f"{where}.{key}: unknown key (known: {', '.join(KEYS)})")
    return settings


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
