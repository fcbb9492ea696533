"""The $PORT of each instance, handed out from the agent's inclusive port range.

PortPool owns which port belongs to which instance. Before a port is handed
out it is locked in the host's port lock directory and test-bound on the
wildcard address, so that:

- every agent of one host shares that directory (`--port-lock-dir`, default
  /run/paas-ports where /run is writable, else /tmp/paas-ports): one flock'ed
  file per port, held while an instance keeps the port and released with it
  (or with the agent's death, by the kernel). Two agents never hand out the
  same port, even when they test-bind at the same moment;
- a port some other program holds on any address is skipped: apps bind
  0.0.0.0:$PORT, so a test-bind on the agent's own address would prove nothing
  (see paas.common.ports).

A port stays with its instance across restarts and incarnations until the
instance is removed, unless another process has taken it meanwhile: then the
next start gets a new one (`lease` says which was taken). It never starts,
stops or talks to processes, and it never holds a socket open.

    pool = PortPool(5000, 5999)              # the host's default lock directory
    port = pool.acquire(("shop", "web.1"))   # same answer on every restart
    lease = pool.lease(("shop", "web.1"))    # the same, and `lease.taken` if it moved
    pool.release(("shop", "web.1"))          # only when web.1 leaves this node
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

from paas.agent.errors import AgentError
from paas.common.ports import can_bind_anywhere

RUN_LOCKS = Path("/run/paas-ports")
TMP_LOCKS = Path(tempfile.gettempdir()) / "paas-ports"


class PortError(AgentError):
    """No port can be handed out; the message says why and what to do."""


class PortsExhausted(PortError):
    """No port of the range is unassigned, unlocked by another agent and free to bind."""


class PortLockError(PortError):
    """The port lock directory cannot be made or used."""


def default_lock_dir() -> Path:
    """/run/paas-ports where /run is writable (it is cleared at boot), else /tmp/paas-ports."""
    if RUN_LOCKS.is_dir() or os.access(RUN_LOCKS.parent, os.W_OK | os.X_OK):
        return RUN_LOCKS
    return TMP_LOCKS


def can_bind(port: int) -> bool:
    """Whether a listener could bind the wildcard address on `port` right now."""
    return can_bind_anywhere(port)


@dataclass(frozen=True)
class Lease:
    """The port an instance holds; `taken` is the one it kept before, if another
    process had taken that one (0 if not)."""

    port: int
    taken: int = 0

    @property
    def notice(self) -> str:
        """What the instance's log says about a move ("" when there was none)."""
        if not self.taken:
            return ""
        return f"port {self.taken} is taken by another process; using {self.port}"


class _PortLock:
    """An exclusive flock on DIR/PORT.lock: held by at most one PortPool of the host."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def take(cls, directory: Path, port: int) -> _PortLock | None:
        """The lock of `port`, or None if another pool holds it."""
        # Read-only is enough for flock, and lets agents of other users share the files.
        fd = os.open(directory / f"{port}.lock", os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return cls(fd)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = -1


class PortPool:
    """Ports low..high (inclusive), each held by at most one instance key of this host."""

    def __init__(
        self,
        low: int,
        high: int,
        lock_dir: Path | None = None,
    ) -> None:
        if not 0 < low <= high < 65536:
            raise ValueError(f"invalid port range {low}-{high}: expected LOW-HIGH within 1-65535")
        self.low = low
        self.high = high
        self.lock_dir = lock_dir if lock_dir is not None else default_lock_dir()
        self._by_key: dict[Hashable, int] = {}
        self._locks: dict[int, _PortLock] = {}
        # Hand ports out round-robin, so a port just released (its old listener
        # perhaps still in TIME_WAIT) is the last to be handed out again.
        self._next = low
        self._dir_ready = False

    def __len__(self) -> int:
        """How many ports are held."""
        return len(self._locks)

    def held(self, key: Hashable) -> int | None:
        return self._by_key.get(key)

    def acquire(self, key: Hashable) -> int:
        """The port of `key`: the one it holds while nobody else binds it, else a free one."""
        return self.lease(key).port

    def lease(self, key: Hashable) -> Lease:
        """The port of `key`, as `acquire`, and which port it lost if it had to move.

        Raises PortsExhausted when `key` needs a port and none is free, PortLockError
        when the lock directory cannot be used.
        """
        held = self._by_key.get(key)
        if held is not None:
            # Probed as the app will bind it (SO_REUSEADDR): its own earlier connections
            # lingering in TIME_WAIT do not count, a listener does.
            if can_bind_anywhere(held, reuse=True):
                return Lease(held)
            self.release(key)
        port = self._claim()
        self._by_key[key] = port
        return Lease(port, taken=held or 0)

    def _claim(self) -> int:
        if not self._dir_ready:
            self._make_lock_dir()
        size = self.high - self.low + 1
        for offset in range(size):
            port = self.low + (self._next - self.low + offset) % size
            if port in self._locks:
                continue
            lock = self._take(port)
            if lock is None:
                continue  # another agent of this host has it
            if not can_bind_anywhere(port):
                lock.release()
                continue
            self._next = port + 1 if port < self.high else self.low
            self._locks[port] = lock
            return port
        raise PortsExhausted(
            f"no free port in {self.low}-{self.high} ({len(self._locks)} held by this "
            "agent's instances, the rest locked by other agents of this host in "
            f"{self.lock_dir} or in use by other programs): widen the agent's --ports range"
        )

    def _take(self, port: int) -> _PortLock | None:
        try:
            return _PortLock.take(self.lock_dir, port)
        except FileNotFoundError:
            self._make_lock_dir()  # removed meanwhile (a cleaner of /tmp): made again
        except OSError as exc:
            raise self._unusable(exc) from None
        try:
            return _PortLock.take(self.lock_dir, port)
        except OSError as exc:
            raise self._unusable(exc) from None

    def _make_lock_dir(self) -> None:
        try:
            self.lock_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unusable(exc) from None
        with contextlib.suppress(OSError):
            # Shared by the agents of every user on this host, like /tmp itself.
            if self.lock_dir.stat().st_uid == os.getuid():
                self.lock_dir.chmod(0o1777)
        self._dir_ready = True

    def _unusable(self, exc: OSError) -> PortLockError:
        return PortLockError(
            f"cannot use the port lock directory {self.lock_dir}: {exc.strerror or exc}; "
            "choose another with the agent's --port-lock-dir"
        )

    def release(self, key: Hashable) -> None:
        """Give `key`'s port back (and its lock); a key without one is fine."""
        port = self._by_key.pop(key, None)
        if port is not None:
            lock = self._locks.pop(port, None)
            if lock is not None:
                lock.release()

    def close(self) -> None:
        """Give every port back."""
        for key in list(self._by_key):
            self.release(key)
