"""EventLog without etcd: merging loaded events, the bounded writer, loss counted."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from paas.proto import paas_pb2 as pb
from paas.scheduler.events import EventLog, merge
from paas.scheduler.store import NotLeaderError, StoreError


def event(seq: int, node: str = "a", text: str = "") -> pb.LogLine:
    return pb.LogLine(app="shop", node=node, seq=seq, timestamp=seq / 1e6, text=text or str(seq))


class FakeStore:
    """Keeps what it is given; can be told to fail or to hold every write."""

    def __init__(self) -> None:
        self.kept: dict[str, list[pb.LogLine]] = {}
        self.fail: StoreError | None = None
        self.gate = asyncio.Event()
        self.gate.set()
        self.trims: list[tuple[str, int]] = []

    async def add_events(self, lines: Sequence[pb.LogLine]) -> None:
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        for line in lines:
            self.kept.setdefault(line.app, []).append(line)

    async def trim_events(self, app: str, keep: int) -> int:
        self.trims.append((app, keep))
        before = len(self.kept.get(app, []))
        self.kept[app] = self.kept.get(app, [])[-keep:]
        return max(0, before - keep)

    async def events_of_all_apps(self, newest: int) -> dict[str, list[pb.LogLine]]:
        return {app: lines[-newest:] for app, lines in self.kept.items()}


def test_merge_keeps_each_event_once_in_seq_order() -> None:
    held = [event(3), event(5)]
    loaded = [event(1), event(3), event(4, node="b")]
    assert [(line.seq, line.node) for line in merge(held, loaded, 10)] == [
        (1, "a"),
        (3, "a"),
        (4, "b"),
        (5, "a"),
    ]


def test_merge_keeps_only_the_newest() -> None:
    assert [line.seq for line in merge([event(9)], [event(s) for s in range(1, 9)], 3)] == [7, 8, 9]


def test_events_of_the_same_time_from_two_replicas_are_both_kept() -> None:
    assert len(merge([event(7, node="a")], [event(7, node="b")], 10)) == 2


async def test_added_events_reach_the_store_in_order() -> None:
    store = FakeStore()
    log = EventLog("a", store)
    log.start()
    for i in range(250):
        log.add("shop", f"event {i}")
    await log.flush()
    assert [line.text for line in store.kept["shop"]] == [f"event {i}" for i in range(250)]
    await log.close()


async def test_a_full_queue_drops_and_counts_without_blocking_add() -> None:
    store = FakeStore()
    store.gate.clear()  # etcd hangs
    log = EventLog("a", store, queue=5)
    log.start()
    for i in range(20):
        log.add("shop", f"event {i}")
    assert len(log.recent("shop")) == 20, "memory keeps them all the same"
    await asyncio.sleep(0)
    # One batch is in the writer's hands, five wait in the queue, the rest are dropped.
    assert log.dropped >= 20 - 5 - 1
    store.gate.set()
    await log.flush()
    assert len(store.kept["shop"]) + log.dropped == 20
    await log.close()


async def test_a_write_refused_for_lost_leadership_is_given_up_at_once() -> None:
    store = FakeStore()
    store.fail = NotLeaderError("not the leader")
    log = EventLog("a", store)
    log.start()
    log.add("shop", "Scaled to web@3")
    await asyncio.wait_for(log.flush(), 1.0)
    assert store.kept == {}
    assert [line.text for line in log.recent("shop")] == ["Scaled to web@3"]
    await log.close()


async def test_etcd_is_trimmed_to_the_bound_and_memory_too() -> None:
    store = FakeStore()
    log = EventLog("a", store, keep=10)
    log.start()
    for i in range(55):
        log.add("shop", f"event {i}")
        await log.flush()
    assert len(log.recent("shop")) == 10
    assert len(store.kept["shop"]) == 10
    assert store.kept["shop"][-1].text == "event 54"
    await log.close()


async def test_a_new_leader_loads_what_earlier_ones_kept_and_seq_goes_on_above_it() -> None:
    store = FakeStore()
    store.kept["shop"] = [event(s, node="old") for s in (10**18, 10**18 + 1)]
    log = EventLog("new", store)
    log.add("shop", "before the load")
    log.on_leadership(True)
    for _ in range(100):
        if len(log.recent("shop")) == 3:
            break
        await asyncio.sleep(0.01)
    log.on_leadership(True)  # loading twice duplicates nothing
    await asyncio.sleep(0.05)
    # This host's clock is far behind the old leader's: its event sorts first.
    assert [line.text for line in log.recent("shop")] == [
        "before the load",
        str(10**18),
        str(10**18 + 1),
    ]
    log.add("shop", "after")
    assert log.recent("shop")[-1].seq > 10**18 + 1
    await log.close()
