"""PortPool: each instance gets a port of the range that nobody listens on, and keeps it;
agents sharing a host (a lock directory) never hand out the same one."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from paas.agent.ports import (
    Lease,
    PortLockError,
    PortPool,
    PortsExhausted,
    can_bind,
    default_lock_dir,
)
from paas.common.ports import free_range

WIDTH = 8


@pytest.fixture
def ports() -> tuple[int, int]:
    return free_range(WIDTH)


@pytest.fixture(autouse=True)
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A lock directory of the test's own, as the host's default."""
    directory = tmp_path / "port-locks"
    monkeypatch.setattr("paas.agent.ports.default_lock_dir", lambda: directory)
    return directory


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


def test_two_pools_sharing_a_lock_dir_never_hand_out_the_same_port(
    ports: tuple[int, int], lock_dir: Path
) -> None:
    # Two agents of one host with the same --ports, taking turns as their instances start.
    first, second = PortPool(*ports, lock_dir), PortPool(*ports, lock_dir)
    given = []
    for i in range(WIDTH // 2):
        given.append(first.acquire(("shop", f"web.{2 * i + 1}")))
        given.append(second.acquire(("shop", f"web.{2 * i + 2}")))
    assert len(set(given)) == WIDTH
    with pytest.raises(PortsExhausted, match="locked by other agents"):
        second.acquire(("shop", "web.99"))


def test_a_released_port_can_be_taken_by_the_other_pool(
    ports: tuple[int, int], lock_dir: Path
) -> None:
    first, second = PortPool(ports[0], ports[0], lock_dir), PortPool(ports[0], ports[0], lock_dir)
    assert first.acquire("a") == ports[0]
    with pytest.raises(PortsExhausted):
        second.acquire("b")
    first.release("a")
    assert second.acquire("b") == ports[0]
    second.close()
    assert first.acquire("a") == ports[0]


def test_a_port_held_on_the_wildcard_address_by_a_foreign_socket_is_skipped(
    ports: tuple[int, int],
) -> None:
    # Bound, not even listening: an app's bind to 0.0.0.0:$PORT would fail all the same.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", ports[0]))
        assert not can_bind(ports[0])
        assert PortPool(*ports).acquire("a") != ports[0]


def test_a_port_held_on_another_local_address_is_skipped(ports: tuple[int, int]) -> None:
    # An agent on 127.0.0.2 test-binding its own address would have taken it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.3", ports[0]))
        sock.listen()
        assert PortPool(*ports).acquire("a") != ports[0]


def test_a_port_held_on_the_ipv6_wildcard_is_skipped(ports: tuple[int, int]) -> None:
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::", ports[0]))
    except OSError:
        pytest.skip("no IPv6 on this host")
    with sock:
        sock.listen()
        assert not can_bind(ports[0])
        assert PortPool(*ports).acquire("a") != ports[0]


def test_a_kept_port_someone_else_took_is_replaced_and_said(ports: tuple[int, int]) -> None:
    pool = PortPool(*ports)
    kept = pool.acquire(("shop", "web.1"))
    assert pool.lease(("shop", "web.1")) == Lease(kept)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", kept))
        sock.listen()
        lease = pool.lease(("shop", "web.1"))
    assert lease.port != kept and lease.taken == kept
    assert lease.notice == f"port {kept} is taken by another process; using {lease.port}"
    assert pool.held(("shop", "web.1")) == lease.port and len(pool) == 1
    assert pool.lease(("shop", "web.1")) == Lease(lease.port)  # said once; kept from now on


def test_a_kept_port_with_connections_left_in_time_wait_is_kept(ports: tuple[int, int]) -> None:
    pool = PortPool(*ports)
    kept = pool.acquire(("shop", "web.1"))
    # The instance's own last run served a client and exited: the server side closed
    # first, so its end of the connection lingers (FIN_WAIT2, then TIME_WAIT) on the port.
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", kept))
    server.listen()
    client = socket.create_connection(("127.0.0.1", kept))
    accepted, _ = server.accept()
    accepted.close()
    server.close()
    try:
        assert not can_bind(kept)  # a bind without SO_REUSEADDR would call it taken
        assert pool.lease(("shop", "web.1")) == Lease(kept)
    finally:
        client.close()


def test_the_lock_dir_is_made_and_its_files_are_one_per_port(
    ports: tuple[int, int], lock_dir: Path
) -> None:
    pool = PortPool(*ports)
    assert pool.lock_dir == lock_dir
    port = pool.acquire("a")
    assert (lock_dir / f"{port}.lock").exists()


def test_a_lock_dir_removed_meanwhile_is_made_again(ports: tuple[int, int], lock_dir: Path) -> None:
    pool = PortPool(*ports)
    pool.acquire("a")
    pool.release("a")
    for lock in lock_dir.iterdir():
        lock.unlink()
    lock_dir.rmdir()
    assert pool.acquire("b") in range(ports[0], ports[1] + 1)
    assert lock_dir.is_dir()


def test_an_unusable_lock_dir_says_so_and_names_the_flag(
    ports: tuple[int, int], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(PortLockError, match=r"port lock directory .*--port-lock-dir"):
        PortPool(*ports, blocker / "locks").acquire("a")


def test_the_default_lock_dir_is_under_run_when_writable_else_tmp(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from paas.agent import ports as module

    monkeypatch.setattr(module, "RUN_LOCKS", tmp_path / "run" / "paas-ports")
    monkeypatch.setattr(module, "TMP_LOCKS", tmp_path / "tmp" / "paas-ports")
    assert default_lock_dir() == tmp_path / "tmp" / "paas-ports"  # no /run here
    (tmp_path / "run").mkdir()
    assert default_lock_dir() == tmp_path / "run" / "paas-ports"
