"""The $PORT of each instance, handed out from the agent's inclusive port range.

PortPool owns which port belongs to which instance. A port is test-bound
(0.0.0.0, then closed) before it is handed out, is never given to two live
instances at once, and stays with its instance across restarts and
incarnations until the instance is removed. It never starts, stops or talks
to processes, and it never holds a socket open.

    pool = PortPool(5000, 5999)
    port = pool.acquire(("shop", "web.1"))   # same answer on every restart
    pool.release(("shop", "web.1"))          # only when web.1 leaves this node
"""

from __future__ import annotations

import socket
from collections.abc import Hashable


class PortsExhausted(RuntimeError):
    """No port of the range is both unassigned and free to bind."""


def can_bind(port: int) -> bool:
    """Whether a listener could bind 0.0.0.0:`port` right now (nobody listens there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


class PortPool:
    """Ports low..high (inclusive), each held by at most one instance key."""

    def __init__(self, low: int, high: int) -> None:
        if not 0 < low <= high < 65536:
            raise ValueError(f"invalid port range {low}-{high}: expected LOW-HIGH within 1-65535")
        self.low = low
        self.high = high
        self._by_key: dict[Hashable, int] = {}
        self._taken: set[int] = set()
        # Hand ports out round-robin, so a port just released (its old listener
        # perhaps still in TIME_WAIT) is the last to be handed out again.
        self._next = low

    def __len__(self) -> int:
        """How many ports are held."""
        return len(self._taken)

    def held(self, key: Hashable) -> int | None:
        return self._by_key.get(key)

    def acquire(self, key: Hashable) -> int:
        """The port of `key`: the one it holds, else a free one that test-binds."""
        held = self._by_key.get(key)
        if held is not None:
            return held
        size = self.high - self.low + 1
        for offset in range(size):
            port = self.low + (self._next - self.low + offset) % size
            if port in self._taken or not can_bind(port):
                continue
            self._next = port + 1 if port < self.high else self.low
            self._by_key[key] = port
            self._taken.add(port)
            return port
        raise PortsExhausted(
            f"no free port in {self.low}-{self.high} ({len(self._taken)} held by instances, "
            "the rest in use by other programs): widen the agent's --ports range"
        )

    def release(self, key: Hashable) -> None:
        """Give `key`'s port back; a key without one is fine."""
        port = self._by_key.pop(key, None)
        if port is not None:
            self._taken.discard(port)
