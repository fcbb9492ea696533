"""`paas logs`: the Logs RPC, checked here and read through logreader.py.

LogsService validates the request (the app exists, `previous` names one
instance), looks the app up once for its id (agents serve only lines of that
incarnation of the name), and streams what logreader.LogReader merges (its
`merged_batches` is the `stream` given). The log drains read the same merge
straight from the reader, not through this service. It never writes etcd.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from paas.common.errors import InvalidInput
from paas.common.logruns import lines_of_runs
from paas.common.names import is_instance
from paas.proto import paas_pb2 as pb
from paas.scheduler.guard import Context
from paas.scheduler.logreader import LogStream
from paas.scheduler.lookup import require_app
from paas.scheduler.store import Store


class LogsService:
    """The Logs RPC."""

    def __init__(self, store: Store, stream: LogStream) -> None:
        self._store = store
        self._stream = stream

    async def Logs(self, request: pb.LogsRequest, context: Context) -> AsyncIterator[pb.LogBatch]:
        """The app's lines, a batch at a time: the history, then live lines as released;
        packed as runs if the request asks for them."""
        app = await require_app(self._store, request.app)
        if request.previous and not is_instance(request.process):
            raise InvalidInput(
                "previous needs one instance (process like web.3), not "
                f"{request.process or 'every process'!r}"
            )
        scoped = pb.LogsRequest()
        scoped.CopyFrom(request)
        scoped.app_id = app.id
        async for batch in self._stream(scoped):
            # A reader that predates runs (it did not ask for them) gets lines.
            yield batch if request.packed else pb.LogBatch(lines=lines_of_runs(batch.runs))
