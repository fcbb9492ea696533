"""Placement rules of a process type, as paas.toml states them, and their parsing.

    [types.web]
    constraints = ["zone=eu-1", "disk!=hdd"]   # node labels; all must hold
    spread = "zone"                             # evenly across this label's values
    distinct_hosts = true                       # at most one instance per node
    memory = "512M"                             # reserved per instance
    cpu = 0.5                                   # reserved cores per instance

Pure: the CLI parses paas.toml with these, the scheduler checks again what it is
sent, and plan.py applies a `TypePlacement`. Bad input is a `PlacementError`
whose one line names the key and the problem (the caller adds the file).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from paas.common.errors import InvalidInput

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_VALUE = re.compile(r"[A-Za-z0-9_.-]{0,63}")
_SIZE = re.compile(r"([0-9]+)([KMGT]?)")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
OPERATORS = ("=", "!=")


class PlacementError(InvalidInput):
    """A placement rule that cannot be used; the message names the key and why."""


@dataclass(frozen=True, order=True)
class Constraint:
    """`zone=eu-1` or `disk!=hdd`: a node label that must (or must not) have a value."""

    label: str
    op: str  # one of OPERATORS
    value: str

    def holds(self, labels: dict[str, str]) -> bool:
        if self.op == "=":
            return labels.get(self.label) == self.value
        return labels.get(self.label) != self.value

    def __str__(self) -> str:
        return f"{self.label}{self.op}{self.value}"


@dataclass(frozen=True)
class TypePlacement:
    """Where instances of one process type may go and what each reserves there.
    The default places anywhere and reserves nothing."""

    constraints: tuple[Constraint, ...] = ()
    spread: str = ""  # a label, or "" for none
    distinct_hosts: bool = False
    memory: int = 0  # bytes reserved per instance
    cpu: float = 0.0  # cores reserved per instance

    @property
    def plain(self) -> bool:
        return self == _PLAIN

    def allows(self, labels: dict[str, str]) -> bool:
        """Whether a node with `labels` may hold the type at all (its room aside)."""
        if self.spread and self.spread not in labels:
            return False
        return all(c.holds(labels) for c in self.constraints)


_PLAIN = TypePlacement()


def parse_constraint(text: object, key: str = "constraints") -> Constraint:
    if not isinstance(text, str):
        raise PlacementError(f'{key}: expected "LABEL=VALUE" or "LABEL!=VALUE", got {text!r}')
    odd = re.search(r"[<>]=?|==|=~|~=?", text)
    match = None if odd else re.fullmatch(r"([^=!]*)(!=|=)(.*)", text)
    if match is None:
        what = f"unknown operator {odd.group()!r}" if odd else "no operator"
        raise PlacementError(f"{key}: {what} in {text!r}: use LABEL=VALUE or LABEL!=VALUE")
    label, op, value = match.groups()
    if not _LABEL.fullmatch(label):
        raise PlacementError(f"{key}: invalid label {label!r} in {text!r}")
    if value.startswith("=") or not _VALUE.fullmatch(value):
        raise PlacementError(f"{key}: invalid value {value!r} in {text!r}")
    return Constraint(label, op, value)


def parse_size(text: object, key: str = "memory") -> int:
    """`"512M"`, `"2G"`, `"1048576"` (bytes; K, M, G, T are powers of 1024)."""
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise PlacementError(f'{key}: expected a size like "512M" or "2G", got {text!r}')
    match = _SIZE.fullmatch(str(text).strip().upper().removesuffix("B") or "x")
    if match is None:
        raise PlacementError(f'{key}: expected a size like "512M" or "2G", got {text!r}')
    size = int(match.group(1)) * _UNITS[match.group(2)]
    if size <= 0:
        raise PlacementError(f"{key}: must be above 0 (leave it out to reserve none)")
    return size


def parse_cpu(value: object, key: str = "cpu") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PlacementError(f"{key}: expected a number of cores like 0.5, got {value!r}")
    if math.isnan(value) or math.isinf(value) or value <= 0:
        raise PlacementError(f"{key}: must be a number of cores above 0, got {value}")
    return float(value)


def parse_label(value: object, key: str = "spread") -> str:
    if not isinstance(value, str) or not _LABEL.fullmatch(value):
        raise PlacementError(f"{key}: expected a node label name, got {value!r}")
    return value


def show_size(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


def spread_conflict(
    rules: TypePlacement, count: int, nodes_labels: list[dict[str, str]]
) -> str | None:
    """Why `count` instances under `rules` cannot be spread evenly (within one) over the
    values of the spread label with at most one per node, on nodes with `nodes_labels`
    (those the constraints allow are counted); None when they can, or when the rules
    do not ask for both. Each value must hold count // values instances, and
    count % values of them one more, each on a node of its own."""
    if not (rules.spread and rules.distinct_hosts) or count <= 0:
        return None
    per_value: dict[str, int] = {}
    for labels in nodes_labels:
        if rules.allows(labels):
            value = labels[rules.spread]
            per_value[value] = per_value.get(value, 0) + 1
    if not per_value:
        return None  # no node yet: nothing to hold against (the log says so when placing)
    share, extra = divmod(count, len(per_value))
    short = sorted(v for v, nodes in per_value.items() if nodes < share)
    roomy = sum(1 for nodes in per_value.values() if nodes > share)
    if not short and roomy >= extra:
        return None
    values = f"{len(per_value)} value(s) of {rules.spread}"
    if short:
        worst = min(short, key=lambda v: per_value[v])
        return (
            f"spread = {rules.spread!r} and distinct_hosts = true cannot both hold for "
            f"{count} instances: {values} need {share} node(s) each, and "
            f"{rules.spread}={worst} has {per_value[worst]}"
        )
    return (
        f"spread = {rules.spread!r} and distinct_hosts = true cannot both hold for "
        f"{count} instances: {extra} of the {values} need {share + 1} node(s), "
        f"and only {roomy} have that many"
    )
