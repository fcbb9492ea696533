"""Fencing: stop the instances of types that must never run twice once this agent has
been cut off from the scheduler for longer than the type allows.

By default an agent that loses its scheduler keeps everything running (an outage
must never stop the workload). A type with `stop_after_disconnected` > 0 trades
that for at-most-once: the scheduler moves the work of a node silent for its
grace period, so a singleton (a `clock`) whose limit is below the node grace is
stopped here before its replacement can start elsewhere. Once the session is
back, the scheduler's next desired set starts whatever is still assigned here.

It owns only the timers and the last desired set; stopping goes through the
Supervisor's level-triggered apply, like any desired set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from paas.proto import paas_pb2 as pb

log = logging.getLogger(__name__)

ApplyFn = Callable[[pb.DesiredSet], object]


class Fence:
    """Applies a reduced desired set to the supervisor while the session is gone.

    fence = Fence(supervisor.apply)
    fence.desired(desired_set)    # every set the scheduler sends
    fence.disconnected()          # the session ended: timers start
    fence.connected()             # the session is back: timers stop
    """

    def __init__(self, apply: ApplyFn) -> None:
        self._apply = apply
        self._desired: pb.DesiredSet | None = None
        self._timers: list[asyncio.TimerHandle] = []

    def desired(self, desired: pb.DesiredSet) -> None:
        self._desired = desired

    def connected(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def disconnected(self) -> None:
        self.connected()
        if self._desired is None:
            return
        limits = sorted(
            {
                a.settings.stop_after_disconnected
                for a in self._desired.instances
                if a.settings.stop_after_disconnected > 0
            }
        )
        loop = asyncio.get_running_loop()
        self._timers = [loop.call_later(limit, self._fence, limit) for limit in limits]

    def _fence(self, limit: float) -> None:
        desired = self._desired
        if desired is None:
            return
        keep = [a for a in desired.instances if not 0 < a.settings.stop_after_disconnected <= limit]
        stopped = [a.name for a in desired.instances if a not in keep]
        log.warning(
            "cut off from the scheduler for %gs: stopping %s (stop_after_disconnected)",
            limit,
            ", ".join(stopped),
        )
        self._desired = pb.DesiredSet(generation=desired.generation, instances=keep)
        self._apply(self._desired)
