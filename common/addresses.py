"""HOST:PORT lists, as --join, --scheduler and PAAS_SCHEDULER take them."""

from __future__ import annotations

import ipaddress

from paas.common.digits import parse_digits
from paas.common.errors import InvalidInput

DEFAULT_SCHEDULER = "127.0.0.1:7070"


class AddressError(InvalidInput):
    """An address that is not HOST:PORT."""


def parse_address(text: str) -> tuple[str, int]:
    host, colon, digits = text.strip().rpartition(":")
    port = parse_digits(digits)  # ASCII digits only
    if not colon or not host or port is None or not 0 < port < 65536:
        raise AddressError(f"invalid address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:7070")
    return host.strip("[]"), port


def parse_address_list(text: str) -> list[str]:
    """`a:1,b:2` -> ['a:1', 'b:2'], each checked."""
    addresses = [part.strip() for part in text.split(",") if part.strip()]
    if not addresses:
        raise AddressError("no address given: expected HOST:PORT[,HOST:PORT]")
    for address in addresses:
        parse_address(address)
    return addresses


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
