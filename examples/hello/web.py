"""The example app's web process: a tiny HTTP server on $PORT.

GET / answers one line naming the instance ($DYNO) and the pid. Every request
is logged to stdout, flushed at once because stdout is a pipe to the agent.
SIGTERM stops the server and exits 0. It runs in the foreground and never
daemonizes: the agent is its process manager.
"""

from __future__ import annotations

import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

DYNO = os.environ.get("DYNO", "web.local")


class Hello(BaseHTTPRequestHandler):
    """Answers GET / with who answered; 404 for anything else."""

    def do_GET(self) -> None:
        if self.path != "/":
            self.send_error(404, "try GET /")
            return
        body = f"hello from {DYNO} (pid {os.getpid()})\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # http.server logs to stderr by default; one flushed stdout line instead.
        print(f"{self.address_string()} {format % args}", flush=True)


def main() -> None:
    port = int(os.environ.get("PORT", "5000"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Hello)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever() to return, which runs in this very
        # thread: ask from another thread so the handler itself does not block.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)
    print(f"{DYNO} listening on 0.0.0.0:{port} (pid {os.getpid()})", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    print(f"{DYNO} got SIGTERM, stopped", flush=True)


if __name__ == "__main__":
    main()
