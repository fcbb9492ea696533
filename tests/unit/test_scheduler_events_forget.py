"""A destroyed app's events are forgotten: none held, none of those still queued written
to etcd after the delete, while a new app of the same name keeps its own."""

from __future__ import annotations

from paas.scheduler.events import EventLog
from tests.unit.test_scheduler_events import FakeStore


async def test_a_forgotten_apps_queued_events_never_reach_etcd() -> None:
    store = FakeStore()
    store.gate.clear()  # every write waits: the events stay queued
    events = EventLog("a", store)
    events.start()
    try:
        events.add("shop", "Release v1 created")
        events.add("shop", "Scaled to web@2")
        events.add("other", "App created")
        events.forget("shop")
        assert events.recent("shop") == []
        events.add("shop", "App created")  # the new app of that name
        store.gate.set()
        await events.flush()
    finally:
        await events.close()
    assert [line.text for line in events.recent("shop")] == ["App created"]
    # The writer may have taken the first event before the forget (the delete covers it
    # then, as DestroyApp flushes first); none of those queued after it is written.
    written = [line.text for line in store.kept.get("shop", [])]
    assert "Scaled to web@2" not in written
    assert written[-1] == "App created"
    assert [line.text for line in store.kept["other"]] == ["App created"]


async def test_a_replica_that_leads_again_shows_only_what_etcd_kept() -> None:
    store = FakeStore()
    events = EventLog("a", store)
    events.start()
    try:
        events.on_leadership(True)
        events.add("shop", "Release v1 created")
        await events.flush()
        # Deposed; meanwhile another leader destroys shop (etcd forgets its events).
        events.on_leadership(False)
        store.kept.pop("shop", None)
        assert events.recent("shop") == [], "a replica that does not lead holds nothing"
        events.on_leadership(True)
        events.add("shop", "App created")  # a new app of that name, on this leader
        assert [line.text for line in events.recent("shop")] == ["App created"]
    finally:
        await events.close()
