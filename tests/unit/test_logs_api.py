"""The Logs RPC's own part: its checks, and the app's id on what it asks of the merge."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import pytest

from paas.common.errors import InvalidInput
from paas.proto import paas_pb2 as pb
from paas.scheduler.errors import NotFound
from paas.scheduler.guard import Context
from paas.scheduler.logs_api import LogsService
from paas.scheduler.store import AppRecord, Store


class Apps:
    """The one store call the Logs RPC makes."""

    def __init__(self, *apps: AppRecord) -> None:
        self._apps = {app.name: app for app in apps}

    async def app(self, name: str) -> AppRecord | None:
        return self._apps.get(name)


class Merge:
    """A merged stream that says what it was asked."""

    def __init__(self) -> None:
        self.asked: list[pb.LogsRequest] = []

    async def __call__(self, request: pb.LogsRequest) -> AsyncIterator[pb.LogBatch]:
        self.asked.append(request)
        yield pb.LogBatch(runs=[pb.LogRun(app=request.app, first_seq=3, texts=["hello", "there"])])


SHOP = AppRecord(name="shop", created_at=0.0, release=1, id="app-7")


async def logs(merge: Merge, request: pb.LogsRequest) -> list[pb.LogBatch]:
    service = LogsService(cast(Store, Apps(SHOP)), merge)
    return [batch async for batch in service.Logs(request, cast(Context, None))]


async def test_logs_asks_the_merge_for_the_app_by_its_id_and_passes_the_rest_on() -> None:
    merge = Merge()
    request = pb.LogsRequest(app="shop", lines=5, process="web", follow=True)
    batches = await logs(merge, request)
    # A reader that does not ask for runs gets lines.
    assert [(line.seq, line.text) for batch in batches for line in batch.lines] == [
        (3, "hello"),
        (4, "there"),
    ]
    assert not any(batch.runs for batch in batches)
    (asked,) = merge.asked
    assert asked.app_id == "app-7"
    assert (asked.app, asked.lines, asked.process, asked.follow) == ("shop", 5, "web", True)
    assert request.app_id == ""  # the caller's message is left as it was


async def test_a_reader_that_asks_for_runs_gets_them_as_the_merge_made_them() -> None:
    request = pb.LogsRequest(app="shop", follow=True, packed=True)
    (batch,) = await logs(Merge(), request)
    assert not batch.lines
    assert [(run.first_seq, list(run.texts)) for run in batch.runs] == [(3, ["hello", "there"])]


async def test_an_unknown_app_is_refused_before_any_node_is_asked() -> None:
    merge = Merge()
    with pytest.raises(NotFound, match="unknown app 'blog'"):
        await logs(merge, pb.LogsRequest(app="blog"))
    assert merge.asked == []


async def test_previous_needs_one_instance() -> None:
    merge = Merge()
    with pytest.raises(InvalidInput, match="previous needs one instance"):
        await logs(merge, pb.LogsRequest(app="shop", previous=True, process="web"))
    assert merge.asked == []
