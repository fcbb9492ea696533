"""Config vars (an app's environment) and the limits of what a release may carry.

The scheduler checks every Deploy and SetConfig with these, as the CLI does before
it sends one, so nothing is stored that no process could be started with: `execve`
refuses a key with `=` or a NUL anywhere, and a key that is not a shell name
cannot be read by the programs Procfiles run. The agent sets `PORT`, `DYNO` and
`PAAS_*` itself for every process, so an app may not set them (reserved).

    check_config_vars({"PORT_BASE": "5000"})        # fine
    check_config_vars({"BAD KEY": "x"})             # ConfigVarsError naming 'BAD KEY'
    check_config_vars({"PORT": "80"})               # ConfigVarsError: reserved
    changed_config({"A": "1"}, {"B": "2"}, ["A"])   # {"B": "2"}, checked whole

Errors name keys, never values: a value may be a secret, and these messages reach
logs and terminals.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from paas.common.errors import InvalidInput

# Keys as POSIX shells take them (and Heroku's config:set).
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# An app's config vars, keys and values together, UTF-8 (Heroku's limit).
CONFIG_VARS_LIMIT = 32 * 1024
# Keys the agent sets for every process (DESIGN.md: instance lifecycle).
RESERVED_KEYS = frozenset({"PORT", "DYNO"})
RESERVED_PREFIX = "PAAS_"
# A Procfile's text, UTF-8.
PROCFILE_LIMIT = 64 * 1024


class ConfigVarsError(InvalidInput):
    """A config var no process can be started with, or too many of them."""


def check_key(key: str) -> str:
    """`key` is a shell name (it may be reserved: `unset PORT` is a question of what is
    set, and `check_settable` says whether it may be set)."""
    if not _KEY.fullmatch(key):
        raise ConfigVarsError(
            f"invalid config var name {key!r}: use letters, digits and '_', "
            "not starting with a digit"
        )
    return key


def is_reserved(key: str) -> bool:
    return key in RESERVED_KEYS or key.startswith(RESERVED_PREFIX)


def check_settable(key: str) -> str:
    """`key` is a shell name an app may set: not PORT, DYNO or PAAS_*."""
    check_key(key)
    if is_reserved(key):
        raise ConfigVarsError(
            f"config var {key} is reserved: paas sets PORT, DYNO and PAAS_* for every "
            "process itself"
        )
    return key


def config_size(env: Mapping[str, str]) -> int:
    """Bytes of keys and values, UTF-8, as CONFIG_VARS_LIMIT counts them."""
    return sum(len(key.encode()) + len(value.encode()) for key, value in env.items())


def check_config_vars(env: Mapping[str, str]) -> None:
    """Every key a shell name an app may set, no NUL in a value, all of it within
    CONFIG_VARS_LIMIT."""
    for key, value in env.items():
        check_settable(key)
        if "\0" in value:
            raise ConfigVarsError(f"config var {key} has a NUL byte in its value")
    size = config_size(env)
    if size > CONFIG_VARS_LIMIT:
        raise ConfigVarsError(
            f"config vars take {size} bytes; an app may have at most "
            f"{CONFIG_VARS_LIMIT // 1024} KiB of keys and values"
        )


def changed_config(
    env: Mapping[str, str], set_: Mapping[str, str], unset: Iterable[str]
) -> dict[str, str]:
    """`env` with `set_` merged over it and `unset` removed, checked whole (a key to unset
    that is not set, or one both set and unset, is refused naming it)."""
    unset = list(unset)
    both = sorted(set(set_) & set(unset))
    if both:
        raise ConfigVarsError(f"config var {both[0]} is both set and unset")
    missing = [key for key in unset if key not in env]
    if missing:
        raise ConfigVarsError(
            f"config var{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"{'are' if len(missing) > 1 else 'is'} not set (`paas config` lists them)"
        )
    changed = {key: value for key, value in env.items() if key not in unset}
    changed.update(set_)
    check_config_vars(changed)
    return changed


def check_no_nul(what: str, text: str) -> None:
    """`what` (e.g. "the command of web") must not contain a NUL byte."""
    if "\0" in text:
        raise ConfigVarsError(f"{what} has a NUL byte")


def check_size(what: str, text: str, limit: int) -> None:
    size = len(text.encode())
    if size > limit:
        raise ConfigVarsError(f"{what} takes {size} bytes; at most {limit // 1024} KiB are allowed")
