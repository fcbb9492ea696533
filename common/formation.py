"""Formation syntax as Heroku's CLI takes it: `web=10 worker+2 clock-1`.

Parsing turns words into changes; applying them to a formation checks the
result. Both raise FormationError with a one-line message naming the problem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from paas.common.digits import parse_digits
from paas.common.errors import InvalidInput
from paas.common.names import NameError_, check_process_type

# A sane ceiling on instances of one type: beyond it a typo is likelier than intent.
MAX_INSTANCES_PER_TYPE = 1000

# `=` splits at its first occurrence (so `web=-1` is a bad count); `+`/`-` at the
# last, since process types may contain `-` (`my-type-1`). Matched whole, newlines
# included, so `web=1\n` is a bad count rather than `web=1`.
_SET = re.compile(r"(?P<type>[^=]+)(?P<op>=)(?P<count>.*)", re.DOTALL)
_ADD_SUB = re.compile(r"(?P<type>.+)(?P<op>[+-])(?P<count>[^+-]*)", re.DOTALL)


class FormationError(InvalidInput):
    """A formation change that cannot be applied; nothing was changed."""


class Op(Enum):
    SET = "="
    ADD = "+"
    SUB = "-"


@dataclass(frozen=True)
class Change:
    type: str
    op: Op
    count: int

    def __str__(self) -> str:
        return f"{self.type}{self.op.value}{self.count}"


def parse_change(word: str) -> Change:
    """Parse one word: `web=10`, `worker+2`, `clock-1`."""
    match = _SET.fullmatch(word) if "=" in word else _ADD_SUB.fullmatch(word)
    if not match:
        raise FormationError(
            f"invalid formation {word!r}: expected TYPE=N, TYPE+N or TYPE-N, e.g. web=2"
        )
    type_, op, digits = match["type"], Op(match["op"]), match["count"]
    try:
        check_process_type(type_)
    except NameError_ as exc:
        raise FormationError(str(exc)) from None
    number = parse_digits(digits)  # ASCII only: `web=٣` is no count
    if number is None:
        raise FormationError(
            f"invalid count {digits!r} in {word!r}: expected a whole number from 0 "
            f"to {MAX_INSTANCES_PER_TYPE}"
        )
    if number > MAX_INSTANCES_PER_TYPE:
        raise FormationError(
            f"count {number} in {word!r} is over the maximum of {MAX_INSTANCES_PER_TYPE}"
        )
    return Change(type_, op, number)


def parse_changes(words: list[str]) -> list[Change]:
    if not words:
        raise FormationError("no formation given: expected e.g. web=2 worker+1")
    changes = [parse_change(word) for word in words]
    seen: set[str] = set()
    for change in changes:
        if change.type in seen:
            raise FormationError(f"process type {change.type!r} is given more than once")
        seen.add(change.type)
    return changes


def apply_changes(
    formation: dict[str, int], changes: list[Change], process_types: list[str]
) -> dict[str, int]:
    """The formation after `changes`, checked against the release's process types."""
    if not process_types:
        raise FormationError("the app has no release yet: deploy a Procfile first")
    result = dict(formation)
    for change in changes:
        if change.type not in process_types:
            raise FormationError(
                f"unknown process type {change.type!r} (Procfile has: "
                f"{', '.join(sorted(process_types))})"
            )
        current = result.get(change.type, 0)
        if change.op is Op.SET:
            new = change.count
        elif change.op is Op.ADD:
            new = current + change.count
        else:
            new = current - change.count
        if new < 0:
            raise FormationError(
                f"cannot scale {change.type} below 0 ({change} with {current} running)"
            )
        if new > MAX_INSTANCES_PER_TYPE:
            raise FormationError(
                f"cannot scale {change.type} to {new}: the maximum is {MAX_INSTANCES_PER_TYPE}"
            )
        result[change.type] = new
    return result


def describe(formation: dict[str, int]) -> str:
    """`web@10 worker@3`, Heroku's way of printing a formation."""
    return " ".join(f"{type_}@{count}" for type_, count in sorted(formation.items())) or "nothing"
