"""The example app's worker process: a numbered line about every second.

Stands in for a queue consumer. Output is flushed line by line because stdout
is a pipe to the agent. SIGTERM ends the loop between two jobs and exits 0;
the process never daemonizes.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

DYNO = os.environ.get("DYNO", "worker.local")


def main() -> None:
    stop = threading.Event()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    print(f"{DYNO} started (pid {os.getpid()})", flush=True)
    job = 0
    while not stop.wait(1.0):
        job += 1
        print(f"{DYNO} did job {job}", flush=True)
    print(f"{DYNO} got SIGTERM after {job} jobs, stopped", flush=True)


if __name__ == "__main__":
    main()
