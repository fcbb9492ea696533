"""LocalCluster's instance ports: clusters started at once on one machine (tests run
in parallel, two `paas up`) each lock their own blocks, so their agents never share a
range; a stopped cluster's blocks are free again."""

from __future__ import annotations

import fcntl
import os

from paas.cli.localcluster import (
    PORT_BLOCK_LOCKS,
    PORT_BLOCKS_END,
    PORT_BLOCKS_START,
    LocalCluster,
)


def blocks(cluster: LocalCluster) -> set[int]:
    return {low for low, _ in cluster._port_blocks}


def test_clusters_started_at_once_lock_blocks_of_their_own() -> None:
    clusters = [LocalCluster(agents=3) for _ in range(4)]
    try:
        for cluster in clusters:
            cluster._claim_port_blocks()
        claimed = [blocks(cluster) for cluster in clusters]
        assert all(len(mine) == 3 for mine in claimed)
        assert len(set().union(*claimed)) == 12, "no block is held by two clusters"
        assert all(PORT_BLOCKS_START <= low < PORT_BLOCKS_END for low in set().union(*claimed))
    finally:
        for cluster in clusters:
            cluster._release_port_blocks()


def test_a_released_block_can_be_taken_again() -> None:
    first = LocalCluster(agents=1)
    first._claim_port_blocks()
    (held,) = blocks(first)
    others = [LocalCluster(agents=1) for _ in range(5)]
    try:
        for other in others:
            other._claim_port_blocks()
        assert held not in set().union(*(blocks(o) for o in others)), "a held block is skipped"
        first._release_port_blocks()
        assert first._port_blocks == []
        # Free again: its lock can be taken (and is let go at once, for anyone else).
        fd = os.open(PORT_BLOCK_LOCKS / f"{held}.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        first._release_port_blocks()
        for other in others:
            other._release_port_blocks()


def test_an_explicit_port_base_claims_nothing() -> None:
    cluster = LocalCluster(agents=3, port_base=40000)
    cluster._claim_port_blocks()
    assert cluster._port_blocks == []
