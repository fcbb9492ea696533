"""The nodes: ListNodes (`paas nodes`), Drain and RemoveNode.

A node's state comes from Sessions.node_state, the one place it is decided.
"""

from __future__ import annotations

import dataclasses
import logging

from paas.proto import paas_pb2 as pb
from paas.scheduler.errors import NotFound, Refused
from paas.scheduler.guard import Context
from paas.scheduler.reconcile import Reconciler
from paas.scheduler.sessions import Sessions
from paas.scheduler.store import Store

log = logging.getLogger(__name__)


class NodesService:
    """ListNodes, Drain and RemoveNode."""

    def __init__(self, store: Store, sessions: Sessions, reconciler: Reconciler) -> None:
        self._store = store
        self._sessions = sessions
        self._reconciler = reconciler

    async def ListNodes(
        self, request: pb.ListNodesRequest, context: Context
    ) -> pb.ListNodesResponse:
        nodes = await self._store.nodes()
        records = await self._store.instances()
        counts: dict[str, int] = {}
        for record in records:
            counts[record.node] = counts.get(record.node, 0) + 1
        result = []
        for node in sorted(nodes.values(), key=lambda n: n.name):
            session = self._sessions.get(node.name)
            reports = list(session.reports.values()) if session else []
            result.append(
                pb.Node(
                    name=node.name,
                    address=node.address,
                    state=self._sessions.node_state(node.name, node.draining),
                    capacity=node.capacity,
                    instances=counts.get(node.name, 0),
                    last_seen=session.last_seen if session else 0.0,
                    labels=node.labels,
                    cpu_percent=sum(r.cpu_percent for r in reports),
                    rss_bytes=sum(r.rss_bytes for r in reports),
                )
            )
        return pb.ListNodesResponse(nodes=result)

    async def Drain(self, request: pb.DrainRequest, context: Context) -> pb.Node:
        nodes = await self._store.nodes()
        node = nodes.get(request.node)
        if node is None:
            raise NotFound(f"unknown node {request.node!r} (`paas nodes` lists them)")
        if node.draining != request.drain:
            node = dataclasses.replace(node, draining=request.drain)
            await self._store.put_node(node)
        self._reconciler.kick()
        log.info("node %s %s", node.name, "draining" if node.draining else "undrained")
        return pb.Node(
            name=node.name,
            address=node.address,
            state=self._sessions.node_state(node.name, node.draining),
            capacity=node.capacity,
            labels=node.labels,
        )

    async def RemoveNode(
        self, request: pb.RemoveNodeRequest, context: Context
    ) -> pb.RemoveNodeResponse:
        """Forget a lost node. One with a session is refused: its agent would only
        register it again, and its instances would run on without the scheduler."""
        node = (await self._store.nodes()).get(request.node)
        if node is None:
            raise NotFound(f"unknown node {request.node!r} (`paas nodes` lists them)")
        state = self._sessions.node_state(node.name, node.draining)
        if state != pb.NODE_LOST:
            raise Refused(
                f"node {node.name} is {pb.NodeState.Name(state).removeprefix('NODE_').lower()}, "
                "not lost: drain it (`paas nodes drain`), stop its agent, then remove it"
            )
        on_it = sum(1 for record in await self._store.instances() if record.node == node.name)
        # Guarded by the record's revision: an agent that dialled in meanwhile wins.
        await self._store.remove_node(node)
        self._reconciler.kick()
        log.info("node %s removed (%d instance(s) to place elsewhere)", node.name, on_it)
        return pb.RemoveNodeResponse(instances=on_it)
