"""PortPool: each instance gets a port of the range that nobody listens on, and keeps it."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator

import pytest

from paas.agent.ports import PortPool, PortsExhausted, can_bind

WIDTH = 8


def free_range(width: int = WIDTH) -> tuple[int, int]:
    """`width` consecutive bindable ports below the ephemeral range, so nobody takes them."""
    rng = random.Random()
    for _ in range(200):
        low = rng.randrange(20000, 32000 - width)
        if all(can_bind(port) for port in range(low, low + width)):
            return low, low + width - 1
    raise RuntimeError(f"no {width} consecutive free ports found")


@pytest.fixture
def ports() -> tuple[int, int]:
    return free_range()


@pytest.fixture
def listener(ports: tuple[int, int]) -> Iterator[int]:
    """Someone else listening on the range's first port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", ports[0]))
        sock.listen()
        yield ports[0]


def test_each_instance_gets_its_own_port_in_the_range(ports: tuple[int, int]) -> None:
    pool = PortPool(*ports)
    given = [pool.acquire(("shop", f"web.{i}")) for i in range(1, WIDTH + 1)]
    assert len(set(given)) == WIDTH
    assert all(ports[0] <= port <= ports[1] for port in given)
    assert len(pool) == WIDTH


def test_an_instance_keeps_its_port_across_restarts(ports: tuple[int, int]) -> None:
    pool = PortPool(*ports)
    first = pool.acquire(("shop", "web.1"))
    pool.acquire(("shop", "web.2"))
    assert pool.acquire(("shop", "web.1")) == first
    assert pool.held(("shop", "web.1")) == first


def test_a_port_someone_listens_on_is_skipped(ports: tuple[int, int], listener: int) -> None:
    pool = PortPool(*ports)
    given = {pool.acquire(("shop", f"web.{i}")) for i in range(1, WIDTH)}
    assert listener not in given
    with pytest.raises(PortsExhausted, match="no free port"):
        pool.acquire(("shop", "web.99"))


def test_a_released_port_goes_back_to_the_pool_but_is_not_reused_at_once(
    ports: tuple[int, int],
) -> None:
    pool = PortPool(*ports)
    first = pool.acquire(("shop", "web.1"))
    pool.release(("shop", "web.1"))
    assert pool.held(("shop", "web.1")) is None
    assert pool.acquire(("shop", "web.2")) != first  # round robin: the released one comes last
    for i in range(3, WIDTH + 1):
        pool.acquire(("shop", f"web.{i}"))
    assert pool.acquire(("shop", "web.1")) == first


def test_exhaustion_names_the_range_and_the_fix(ports: tuple[int, int]) -> None:
    pool = PortPool(ports[0], ports[0] + 1)
    pool.acquire("a")
    pool.acquire("b")
    with pytest.raises(PortsExhausted, match=rf"{ports[0]}-{ports[0] + 1}.*--ports"):
        pool.acquire("c")
    pool.release("b")
    pool.release("never-held")  # harmless
    assert pool.acquire("c") == ports[0] + 1


@pytest.mark.parametrize(("low", "high"), [(0, 10), (10, 5), (1, 70000)])
def test_an_invalid_range_is_refused(low: int, high: int) -> None:
    with pytest.raises(ValueError, match="invalid port range"):
        PortPool(low, high)
