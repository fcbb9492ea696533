"""The Procfile format that Heroku, Foreman and honcho accept.

    # comment
    web: gunicorn app:app --bind 0.0.0.0:$PORT
    worker: python worker.py

One `name: command` per line; blank lines and `#` comments are skipped. A
line ends at `\n`, `\r\n` or `\r` only, as foreman splits it: a form feed,
NEL (U+0085) or U+2028 inside a command belongs to the command (`str.splitlines`
would end the line there). A UTF-8 byte order mark at the start, as some
editors save one, is not part of the first line.
"""

from __future__ import annotations

import re

from paas.common.errors import InvalidInput
from paas.common.names import NameError_, check_process_type

_LINE = re.compile(r"(?P<name>[^:\s]+)\s*:\s*(?P<command>.*)", re.DOTALL)
_NEWLINE = re.compile(r"\r\n|\r|\n")
BOM = "\ufeff"


class ProcfileError(InvalidInput):
    """A Procfile that cannot be used; the message carries the line number."""


def parse_procfile(text: str, source: str = "Procfile") -> dict[str, str]:
    """Process type -> command, in file order."""
    commands: dict[str, str] = {}
    lines = _NEWLINE.split(text.removeprefix(BOM))
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.fullmatch(line)
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
