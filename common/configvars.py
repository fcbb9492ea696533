"""Config vars (an app's environment) and the limits of what a release may carry.

The scheduler checks every Deploy with these, as the CLI does before it sends
one, so nothing is stored that no process could be started with: `execve`
refuses a key with `=` or a NUL anywhere, and a key that is not a shell name
cannot be read by the programs Procfiles run.

    check_config_vars({"PORT_BASE": "5000"})        # fine
    check_config_vars({"BAD KEY": "x"})             # ConfigVarsError naming 'BAD KEY'
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from paas.common.errors import InvalidInput

# Keys as POSIX shells take them (and Heroku's config:set).
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# An app's config vars, keys and values together, UTF-8 (Heroku's limit).
CONFIG_VARS_LIMIT = 32 * 1024
# A Procfile's text, UTF-8.
PROCFILE_LIMIT = 64 * 1024


class ConfigVarsError(InvalidInput):
    """A config var no process can be started with, or too many of them."""


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise ConfigVarsError(
            f"invalid config var name {key!r}: use letters, digits and '_', "
            "not starting with a digit"
        )
    return key


def check_config_vars(env: Mapping[str, str]) -> None:
    """Every key a shell name, no NUL in a value, all of it within CONFIG_VARS_LIMIT."""
    size = 0
    for key, value in env.items():
        check_key(key)
        if "\0" in value:
            raise ConfigVarsError(f"config var {key} has a NUL byte in its value")
        size += len(key.encode()) + len(value.encode())
    if size > CONFIG_VARS_LIMIT:
        raise ConfigVarsError(
            f"config vars take {size} bytes; an app may have at most "
            f"{CONFIG_VARS_LIMIT // 1024} KiB of keys and values"
        )


def check_no_nul(what: str, text: str) -> None:
    """`what` (e.g. "the command of web") must not contain a NUL byte."""
    if "\0" in text:
        raise ConfigVarsError(f"{what} has a NUL byte")


def check_size(what: str, text: str, limit: int) -> None:
    size = len(text.encode())
    if size > limit:
        raise ConfigVarsError(f"{what} takes {size} bytes; at most {limit // 1024} KiB are allowed")
