"""Whether a TCP port is free on this host, and a free one to listen on: for the agent and the CLI.

It opens sockets only to bind and close them; it never listens and never holds one.

    free_port("127.0.0.2")      # a port the kernel says is free on that address
    can_bind_anywhere(5000)     # could an app bind 0.0.0.0:5000 (and [::]:5000) now?
    free_range(20)              # (low, high): 20 ports in a row that are free now
"""

from __future__ import annotations

import errno
import random
import socket

# A host without IPv6 (or with it disabled) cannot bind "::" at all: that proves nothing.
_NO_IPV6 = {errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT}


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel considers free on `host` right now (another may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _binds(family: socket.AddressFamily, host: str, port: int, reuse: bool) -> bool:
    try:
        probe = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        return family == socket.AF_INET6 and exc.errno in _NO_IPV6
    with probe:
        if reuse:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # Only the IPv6 wildcard: 0.0.0.0 is probed on its own.
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return family == socket.AF_INET6 and exc.errno in _NO_IPV6
    return True


def can_bind_anywhere(port: int, *, reuse: bool = False) -> bool:
    """Whether an app could bind the wildcard address on `port` now: 0.0.0.0 and, where
    the host has IPv6, [::].

    Apps bind 0.0.0.0:$PORT, which fails while anyone holds the port on any address,
    so the probe binds the wildcard too (a bind on one address proves nothing about
    another). With `reuse` it binds as servers do (SO_REUSEADDR): connections left in
    TIME_WAIT by an earlier listener do not count, a listener does.
    """
    return _binds(socket.AF_INET, "0.0.0.0", port, reuse) and _binds(
        socket.AF_INET6, "::", port, reuse
    )


def free_range(width: int, low: int = 20000, high: int = 32000) -> tuple[int, int]:
    """`width` consecutive ports within low..high that an app could bind now, as
    (first, last); the default stays below the kernel's ephemeral range (32768 up), so
    no client connection takes one meanwhile. Raises RuntimeError if none is found."""
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(low, high - width)
        if all(can_bind_anywhere(port) for port in range(first, first + width)):
            return first, first + width - 1
    raise RuntimeError(f"no {width} consecutive free ports found in {low}-{high}")
