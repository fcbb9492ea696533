"""The Procfile format that Heroku, Foreman and honcho accept.

    # comment
    web: gunicorn app:app --bind 0.0.0.0:$PORT
    worker: python worker.py

One `name: command` per line; blank lines and `#` comments are skipped.
"""

from __future__ import annotations

import re

from paas.common.errors import InvalidInput
from paas.common.names import NameError_, check_process_type

_LINE = re.compile(r"^(?P<name>[^:\s]+)\s*:\s*(?P<command>.*)$")


class ProcfileError(InvalidInput):
    """A Procfile that cannot be used; the message carries the line number."""


def parse_procfile(text: str, source: str = "Procfile") -> dict[str, str]:
    """Process type -> command, in file order."""
    commands: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            raise ProcfileError(f"{source}:{number}: expected 'name: command', got {raw!r}")
        name, command = match["name"], match["command"].strip()
        try:
            check_process_type(name)
        except NameError_ as exc:
            raise ProcfileError(f"{source}:{number}: {exc}") from None
        if not command:
            raise ProcfileError(f"{source}:{number}: process type {name!r} has no command")
        if name in commands:
            raise ProcfileError(f"{source}:{number}: process type {name!r} is defined twice")
        commands[name] = command
    if not commands:
        raise ProcfileError(f"{source}: no process types defined")
    return commands
