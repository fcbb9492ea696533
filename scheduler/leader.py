"""Leader election among scheduler replicas, on an etcd lease.

A replica campaigns by creating the election key on a lease of `ttl` seconds
and keeps it by refreshing the lease. While it holds the key, the store guards
every write on the key's create revision, so a replica that lost the key (its
lease expired while it was paused, partitioned or slow) can no longer write.
It owns the election key and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

import aetcd.exceptions
import aetcd.transactions as tx

from paas.scheduler.errors import etcd_error
from paas.scheduler.store import LEADER_KEY, Store

log = logging.getLogger(__name__)


class Leadership:
    """Campaigns for leadership, holds it, and says who leads.

    leadership = Leadership(store, "replica-a", "127.0.0.1:7070", ttl=5,
                            on_change=lambda leading: ...)
    task = asyncio.create_task(leadership.run())
    leadership.is_leader, leadership.leader_address
    """

    def __init__(
        self,
        store: Store,
        replica_id: str,
        address: str,
        ttl: int,
        on_change: Callable[[bool], None],
    ) -> None:
        self._store = store
        self._id = replica_id
        self._address = address
        self._ttl = max(2, ttl)
        self._on_change = on_change
        self.is_leader = False
        self.leader_address: str | None = None  # of the current leader, us included

    async def run(self) -> None:
        """Campaign forever; returns only when cancelled."""
        client = self._store.client
        value = json.dumps({"id": self._id, "address": self._address}).encode()
        while True:
            try:
                lease = await client.lease(self._ttl)
                won, _ = await client.transaction(
                    compare=[tx.Version(LEADER_KEY) == 0],
                    success=[tx.Put(LEADER_KEY.encode(), value, lease=lease.id)],
                    failure=[],
                )
                if won:
                    current = await client.get(LEADER_KEY.encode())
                    if current is None or current.value != value:
                        continue  # the lease expired before we could read: campaign again
                    await self._lead(lease, current.create_revision)
                else:
                    await lease.revoke()
                    await self._follow()
            except aetcd.exceptions.ClientError as exc:
                log.warning("election: %s; retrying", etcd_error(self._store.endpoints, exc))
                self._set(False, None)
                await asyncio.sleep(1.0)
            except Exception:
                # Never stop campaigning because of a bug: say so loudly and go on.
                log.exception("election failed")
                self._set(False, None)
                await asyncio.sleep(1.0)

    async def _lead(self, lease: aetcd.leases.Lease, create_revision: int) -> None:
        self._store.set_leadership(create_revision)
        self._set(True, self._address)
        log.info("elected leader (revision %d)", create_revision)
        last_refresh = time.monotonic()
        try:
            while True:
                await asyncio.sleep(self._ttl / 3)
                try:
                    reply = await lease.refresh()
                except aetcd.exceptions.ClientError as exc:
                    # Step down before the lease can have expired, so that two
                    # replicas never both believe they lead for long.
                    if time.monotonic() - last_refresh > self._ttl * 2 / 3:
                        log.warning("leadership lost: cannot refresh the lease (%s)", exc)
                        return
                    continue
                if reply is None or reply.TTL <= 0:
                    log.warning("leadership lost: the election lease expired")
                    return
                last_refresh = time.monotonic()
        finally:
            self._store.set_leadership(0)
            self._set(False, None)
            try:
                await asyncio.shield(lease.revoke())
            except Exception:
                pass

    async def _follow(self) -> None:
        """Learn the leader's address, then wait for the key to go (or a TTL, to re-check)."""
        client = self._store.client
        current = await client.get(LEADER_KEY.encode())
        if current is not None:
            self._set(False, json.loads(current.value).get("address"))
        try:
            await client.watch_once(LEADER_KEY.encode(), timeout=self._ttl)
        except aetcd.exceptions.WatchTimeoutError:
            pass

    def _set(self, leading: bool, address: str | None) -> None:
        self.leader_address = address
        if leading != self.is_leader:
            self.is_leader = leading
            self._on_change(leading)
