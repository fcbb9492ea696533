"""The agent's own gRPC API: reading the logs of the instances on this node.

Owns the translation from LogsRequest to buffered and live lines, and from
the log buffers' records to proto LogLines. It only reads: the agent's server
offers no way to start, stop or signal a process (processes start only from
the desired set that arrives over the session the agent dialled).
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator, Callable

import grpc

from paas.agent.logbuffer import LogHub, LogLine
from paas.common.names import InstanceName, NameError_
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc

DEFAULT_LINES = 100


def process_matcher(process: str) -> Callable[[str], bool]:
    """Instance names `process` selects: "" all, "web" a type, "web.3" one instance."""
    if not process:
        return lambda _instance: True
    try:
        InstanceName.parse(process)
    except NameError_:
        return lambda instance: instance.rpartition(".")[0] == process
    return lambda instance: instance == process


def to_proto(line: LogLine) -> pb.LogLine:
    return pb.LogLine(
        timestamp=line.timestamp,
        app=line.app,
        instance=line.instance,
        stream=line.stream,
        node=line.node,
        seq=line.seq,
        text=line.text,
        continued=line.continued,
        run=line.run,
    )


class AgentService(pb_grpc.AgentServicer):
    """ReadLogs over this node's LogHub."""

    def __init__(self, logs: LogHub) -> None:
        self._logs = logs

    async def ReadLogs(
        self,
        request: pb.LogsRequest,
        context: grpc.aio.ServicerContext[pb.LogsRequest, pb.LogLine],
    ) -> AsyncIterator[pb.LogLine]:
        if not request.app:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no app given: name the app")
        if request.lines < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"invalid line count {request.lines}: expected 0 (the default) or more",
            )
        if request.previous and not _is_instance(request.process):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "previous needs one instance (process like web.3), not "
                f"{request.process or 'every process'!r}",
            )
        app = request.app
        count = request.lines or DEFAULT_LINES
        matches = process_matcher(request.process)
        since = request.since
        # Cursors of a follower that reconnects: lines up to them were delivered.
        sent = {
            cursor.instance: cursor.seq
            for cursor in request.after
            if cursor.node in ("", self._logs.node)
        }

        def wanted(line: LogLine) -> bool:
            return line.timestamp >= since and line.seq > sent.get(line.instance, 0)

        # Subscribe before taking the backlog, so no line falls between the two.
        follow = request.follow and not request.previous
        subscription = (
            self._logs.subscribe(lambda line: line.app == app and matches(line.instance), app)
            if follow
            else None
        )
        try:
            selections = []
            for buffer in self._logs.buffers(app):
                if not matches(buffer.instance):
                    continue
                keep = wanted
                if request.previous:
                    finished = buffer.finished_run

                    def keep(line: LogLine, finished: int = finished) -> bool:
                        return finished > 0 and line.run == finished and wanted(line)

                selections.append(buffer.select(count, keep))
                sent[buffer.instance] = max(sent.get(buffer.instance, 0), buffer.last_seq)
            backlog = list(heapq.merge(*selections, key=lambda line: line.timestamp))
            for line in backlog[-count:]:
                yield to_proto(line)
            if subscription is None:
                return
            while True:
                line = await subscription.get()
                if line.seq and line.seq <= sent.get(line.instance, 0):
                    continue  # already in the backlog, or before the follower's cursor
                if line.timestamp < since:
                    continue
                yield to_proto(line)
        finally:
            if subscription is not None:
                self._logs.unsubscribe(subscription)


def _is_instance(process: str) -> bool:
    try:
        InstanceName.parse(process)
    except NameError_:
        return False
    return True
