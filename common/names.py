"""Names of apps, process types and instances, and the rules they follow.

Every pattern is matched whole (`fullmatch`): with `re.match` and `$`, a name
with a trailing newline would pass. Instance indexes are ASCII digits only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from paas.common.digits import parse_digits
from paas.common.errors import InvalidInput

# Process types as Heroku and Foreman accept them: letters, digits, _ and -.
_PROCESS_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
# App names are DNS-label-like so they can one day become host names.
_APP = re.compile(r"[a-z][a-z0-9-]{0,29}")
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


class NameError_(InvalidInput):
    """A name that breaks its rule; the message names the name and the rule."""


def check_process_type(name: str) -> str:
    if not _PROCESS_TYPE.fullmatch(name):
        raise NameError_(
            f"invalid process type {name!r}: use letters, digits, '_' and '-' (at most 63)"
        )
    return name


def check_app_name(name: str) -> str:
    if not _APP.fullmatch(name):
        raise NameError_(
            f"invalid app name {name!r}: start with a lowercase letter, then lowercase "
            "letters, digits and '-' (at most 30)"
        )
    return name


def check_credential_name(name: str) -> str:
    """An admin credential's name (`paas credentials create NAME`), the "by" of releases."""
    if not _NODE.fullmatch(name):
        raise NameError_(
            f"invalid credential name {name!r}: use letters, digits, '_', '.' and '-' (at most 63)"
        )
    return name


def check_node_name(name: str) -> str:
    if not _NODE.fullmatch(name):
        raise NameError_(f"invalid node name {name!r}: use letters, digits, '_', '.' and '-'")
    return name


@dataclass(frozen=True, order=True)
class InstanceName:
    """`web.3`: process type and 1-based index, as Heroku names dynos."""

    type: str
    index: int

    def __str__(self) -> str:
        return f"{self.type}.{self.index}"

    @classmethod
    def parse(cls, text: str) -> InstanceName:
        type_, dot, digits = text.rpartition(".")
        index = parse_digits(digits)
        if not dot or index is None or index < 1:
            raise NameError_(f"invalid instance name {text!r}: expected TYPE.N, e.g. web.3")
        return cls(check_process_type(type_), index)


def is_instance(process: str) -> bool:
    """Whether `process` names one instance (web.3), not a type or everything."""
    try:
        InstanceName.parse(process)
    except NameError_:
        return False
    return True
