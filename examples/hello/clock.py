"""The example app's clock process: a scheduled task every 10 seconds.

One clock instance is enough (`paas scale clock=1`); more would run the task
more than once. Lines are flushed because stdout is a pipe to the agent.
SIGTERM exits 0 at once; the process never daemonizes.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType

DYNO = os.environ.get("DYNO", "clock.local")
EVERY = 10.0  # seconds between two runs of the task


def main() -> None:
    stop = threading.Event()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    print(f"{DYNO} started, a task every {EVERY:g} s (pid {os.getpid()})", flush=True)
    tick = (time.time() // EVERY + 1) * EVERY  # the next wall-clock multiple of EVERY
    while not stop.wait(max(0.0, tick - time.time())):
        if time.time() < tick:
            continue  # woke a little early: wait out the rest
        print(f"{DYNO} tick at {time.strftime('%H:%M:%S', time.localtime(tick))}", flush=True)
        tick = (time.time() // EVERY + 1) * EVERY
    print(f"{DYNO} got SIGTERM, stopped", flush=True)


if __name__ == "__main__":
    main()
