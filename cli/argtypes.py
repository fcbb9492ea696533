"""Value types of the command line's options: text in, a checked value out, or an
`argparse.ArgumentTypeError` whose message argparse prints as a usage error (exit 2).

Numbers are ASCII digits only (`paas.common.digits`); names and addresses are
checked by the same rules the scheduler applies.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

from paas.common.addresses import AddressError, parse_address, parse_address_list
from paas.common.digits import parse_digits
from paas.common.names import InstanceName, NameError_, check_node_name, check_process_type
from paas.common.placement import PlacementError, parse_size

# Seconds as people write them: 10, 0.5, .5, 10. (not all that float() takes: `1_0`,
# `1e3`, `inf`, or digits of other scripts).
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def count(low: int, high: int) -> Callable[[str], int]:
    """A whole number from `low` to `high`."""

    def parse(text: str) -> int:
        number = parse_digits(text)
        if number is None or not low <= number <= high:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {low} to {high}, got {text!r}"
            )
        return number

    return parse


def non_negative_int(text: str) -> int:
    number = parse_digits(text)
    if number is None:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return number


def size(text: str) -> int:
    """A size in bytes, e.g. 512M or 2G (0 allowed)."""
    if text.strip() == "0":
        return 0
    try:
        return parse_size(text, "size")
    except PlacementError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cores(text: str) -> float:
    """A number of cores, e.g. 0.5 (0 allowed)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e6:
        raise argparse.ArgumentTypeError(f"expected a number of cores, e.g. 0.5, got {text!r}")
    return value


def seconds(text: str) -> float:
    """A non-negative number of seconds below a million."""
    value = float(text) if _SECONDS.fullmatch(text) else -1.0
    if not 0 <= value < 1e6:
        raise argparse.ArgumentTypeError(f"expected seconds, e.g. 10 or 0.5, got {text!r}")
    return value


_DURATION = re.compile(r"([0-9]+)([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """A lifetime as people write it: 90s, 30m, 1h, 90d (plain digits are seconds)."""
    match = _DURATION.fullmatch(text.strip())
    value = int(match.group(1)) * _UNIT_SECONDS[match.group(2)] if match else 0
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a duration, e.g. 90s, 30m, 1h or 7d, got {text!r}"
        )
    return float(value)


# A size in bytes as people write it: 100MiB, 1GiB, 512KiB, 4096 (binary units; K, M
# and G mean KiB, MiB and GiB).
_SIZE = re.compile(r"([0-9]+)(?:\s*([KMG])(?:iB)?)?", re.IGNORECASE)
_UNITS = {None: 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def byte_size(text: str) -> int:
    """A positive size in bytes: 4096, 512KiB, 100MiB, 1GiB (also 100M)."""
    match = _SIZE.fullmatch(text.strip())
    value = int(match[1]) * _UNITS[match[2] and match[2].upper()] if match else 0
    if not 0 < value < 2**50:
        raise argparse.ArgumentTypeError(f"expected a size, e.g. 100MiB or 1GiB, got {text!r}")
    return value


def address(text: str) -> str:
    try:
        parse_address(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def address_list(text: str) -> list[str]:
    try:
        return parse_address_list(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def etcd_list(text: str) -> list[str]:
    """`http://a:2379,b:2379` -> ['a:2379', 'b:2379']."""
    stripped = []
    for part in text.split(","):
        part = part.strip().rstrip("/")
        for scheme in ("http://", "https://"):
            if part.startswith(scheme):
                part = part[len(scheme) :]
        if part:
            stripped.append(part)
    return address_list(",".join(stripped))


def port_range(text: str) -> tuple[int, int]:
    first, dash, last = text.partition("-")
    low, high = parse_digits(first), parse_digits(last)
    if not dash or low is None or high is None or not 0 < low <= high < 65536:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH ports, e.g. 5000-5999, got {text!r}")
    return low, high


def label(text: str) -> tuple[str, str]:
    """A node label `K=V`."""
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"expected a label K=V, e.g. zone=a, got {text!r}")
    return key.strip(), value.strip()


def node_name(text: str) -> str:
    try:
        return check_node_name(text)
    except NameError_ as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def process(text: str) -> str:
    """A process type (`web`) or an instance (`web.3`)."""
    try:
        if "." in text:
            return str(InstanceName.parse(text))
        return check_process_type(text)
    except NameError_ as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
