"""The agent's membership of a cluster: its logs are served only once a scheduler has
welcomed it, another cluster's logs are deleted before, and the logs of apps that no
longer exist are deleted when a welcomed desired set says which apps live."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from paas.agent.logbuffer import LogHub
from paas.agent.logline import LogLine
from paas.agent.membership import CLUSTER_FILE, Joined, Membership, MembershipError
from paas.agent.spool import LogStateError, Query, Spool
from paas.proto import paas_pb2 as pb
from tests.helpers import wait_for


def line(app_id: str, text: str, instance: str = "web.1") -> LogLine:
    return LogLine(time.time(), "shop", instance, "stdout", "node-1", 1, text, 1, app_id=app_id)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[LogHub]:
    opened = LogHub("node-1", lines=100, spool=Spool(tmp_path / "node-1" / "logs", "node-1"))
    await opened.open()
    yield opened
    await opened.close()


async def texts_on_disk(hub: LogHub, app_id: str = "") -> list[str]:
    assert hub.spool is not None
    found = await hub.spool.read([Query("shop", "web.1", app_id=app_id)])
    return [x.text for x in found[("shop", "web.1")].lines]


def desired(*app_ids: str, live: list[str]) -> pb.DesiredSet:
    return pb.DesiredSet(
        generation=1,
        instances=[
            pb.Assignment(app="shop", name=f"web.{i}", app_id=app_id, incarnation=1)
            for i, app_id in enumerate(app_ids, 1)
        ],
        live_apps=live,
    )


async def test_logs_are_not_served_until_a_welcome_and_a_first_one_is_recorded(
    tmp_path: Path, hub: LogHub
) -> None:
    membership = Membership(tmp_path / "node-1", hub)
    assert membership.state is Joined.NOT_YET and not membership.joined
    assert "no scheduler has welcomed it" in membership.describe()
    await membership.welcome("cluster-a")
    assert membership.joined and membership.cluster_id == "cluster-a"
    assert (tmp_path / "node-1" / CLUSTER_FILE).read_text().strip() == "cluster-a"


async def test_a_welcome_of_the_recorded_cluster_keeps_its_logs(
    tmp_path: Path, hub: LogHub
) -> None:
    await Membership(tmp_path / "node-1", hub).welcome("cluster-a")
    hub.buffer("shop", "web.1", "app-1").append("stdout", "kept")
    restarted = Membership(tmp_path / "node-1", hub)  # the agent started again
    await restarted.welcome("cluster-a")
    assert await texts_on_disk(hub) == ["kept"]


async def test_a_welcome_of_another_cluster_deletes_every_log_before_any_is_served(
    tmp_path: Path, hub: LogHub
) -> None:
    await Membership(tmp_path / "node-1", hub).welcome("cluster-a")
    buffer = hub.buffer("shop", "web.1", "app-1")
    buffer.append("stdout", "the old cluster's line")
    hub.retire("shop", "web.1")

    membership = Membership(tmp_path / "node-1", hub)
    await membership.welcome("cluster-b")

    assert membership.joined and membership.cluster_id == "cluster-b"
    assert await texts_on_disk(hub) == []
    assert hub.buffers("shop") == []
    assert hub.app_ids() == set()
    assert (tmp_path / "node-1" / CLUSTER_FILE).read_text().strip() == "cluster-b"


async def test_logs_of_a_state_directory_with_no_cluster_recorded_are_deleted(
    tmp_path: Path, hub: LogHub
) -> None:
    """An agent from before cluster ids, or one whose record was lost: the logs it kept
    could be any cluster's."""
    assert hub.spool is not None
    hub.spool.write(line("app-1", "of an unknown cluster"))
    await Membership(tmp_path / "node-1", hub).welcome("cluster-a")
    assert await texts_on_disk(hub) == []


async def test_a_welcome_without_a_usable_cluster_id_is_refused_and_nothing_is_served(
    tmp_path: Path, hub: LogHub
) -> None:
    membership = Membership(tmp_path / "node-1", hub)
    await membership.welcome("cluster-a")
    hub.buffer("shop", "web.1", "app-1").append("stdout", "kept")
    for bad in ("", "a/b", "line\n", "x" * 200):
        with pytest.raises(MembershipError, match="no usable cluster id"):
            await membership.welcome(bad)
        assert membership.state is Joined.FAILED and not membership.joined
        assert "no usable cluster id" in membership.describe()
    assert isinstance(MembershipError("x"), LogStateError)
    assert await texts_on_disk(hub) == ["kept"]  # nothing deleted on a bad welcome
    await membership.welcome("cluster-a")
    assert membership.joined


async def test_a_welcomed_desired_set_deletes_the_logs_of_apps_not_live(
    tmp_path: Path, hub: LogHub
) -> None:
    membership = Membership(tmp_path / "node-1", hub)
    await membership.welcome("cluster-a")
    assert hub.spool is not None
    hub.spool.write(line("destroyed", "gone"))
    hub.spool.write(line("live", "kept"))
    running = hub.buffer("shop", "web.2", "live")
    running.append("stdout", "live line")
    away = hub.buffer("other", "web.1", "destroyed-while-away")
    away.append("stdout", "gone too")
    hub.retire("other", "web.1")

    membership.prune(desired("live", live=["live"]))

    await wait_for(lambda: hub.app_ids() == {"live"}, what="the dead apps' logs deleted")
    assert await texts_on_disk(hub) == ["kept"]
    assert hub.buffers("other") == []
    assert [b.app_id for b in hub.buffers("shop")] == ["live"]


async def test_an_empty_live_list_with_instances_deletes_nothing(
    tmp_path: Path, hub: LogHub
) -> None:
    membership = Membership(tmp_path / "node-1", hub)
    await membership.welcome("cluster-a")
    assert hub.spool is not None
    hub.spool.write(line("app-1", "kept"))
    await hub.spool.flush()
    membership.prune(desired("app-1", live=[]))  # a scheduler bug, not the end of every app
    assert membership._pruning is None
    membership.prune(desired("app-1", "app-2", live=["app-2"]))  # app-1 assigned: never deleted
    pruning = membership._pruning
    assert pruning is not None
    await pruning
    assert hub.app_ids() == {"app-1"}
    assert await texts_on_disk(hub) == ["kept"]


async def test_an_empty_live_list_without_instances_means_no_app_exists(
    tmp_path: Path, hub: LogHub
) -> None:
    membership = Membership(tmp_path / "node-1", hub)
    await membership.welcome("cluster-a")
    hub.buffer("shop", "web.1", "app-1").append("stdout", "gone")
    membership.prune(pb.DesiredSet(generation=3))
    await wait_for(lambda: hub.app_ids() == set(), what="every app's logs deleted")
    assert await texts_on_disk(hub) == []


async def test_a_desired_set_before_the_welcome_deletes_nothing(
    tmp_path: Path, hub: LogHub
) -> None:
    membership = Membership(tmp_path / "node-1", hub)
    hub.buffer("shop", "web.1", "app-1").append("stdout", "kept")
    membership.prune(desired(live=["app-2"]))
    assert membership._pruning is None
    assert hub.app_ids() == {"app-1"}


async def test_an_app_made_while_pruning_waits_for_the_disk_is_not_taken_for_gone(
    tmp_path: Path, hub: LogHub
) -> None:
    membership = Membership(tmp_path / "node-1", hub)
    await membership.welcome("cluster-a")
    hub.buffer("shop", "web.1", "app-a").append("stdout", "a")
    membership.prune(desired("app-a", live=["app-a"]))
    pruning = membership._pruning
    assert pruning is not None
    await asyncio.sleep(0)  # one turn: pruning waits for the spool to flush
    # Meanwhile the next desired set makes an app, and its instance writes at once.
    membership.prune(desired("app-a", "app-new", live=["app-a", "app-new"]))
    hub.buffer("shop", "web.2", "app-new").append("stdout", "new")
    await pruning
    assert hub.app_ids() == {"app-a", "app-new"}
    assert [b.app_id for b in hub.buffers("shop", "app-new")] == ["app-new"]
