"""A loopback HTTP server with a fixed delay per request, to measure reads under storage latency.

Used by ``mlcast-pipes bench --latency-ms N``: it serves a local folder on 127.0.0.1 (an
ephemeral port) from a background thread and stops when its ``with`` block ends.
"""

from __future__ import annotations

import functools
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__: list[str] = []


class _Handler(SimpleHTTPRequestHandler):
    """Serves files after sleeping ``delay_s``; counts the requests it answers."""

    server: _LatencyServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _wait(self) -> None:
        with self.server.lock:
            self.server.requests += 1
        time.sleep(self.server.delay_s)

    def do_GET(self) -> None:
        self._wait()
        super().do_GET()

    def do_HEAD(self) -> None:
        self._wait()
        super().do_HEAD()


class _LatencyServer(ThreadingHTTPServer):
    """``with _LatencyServer(folder, delay_ms) as server:`` serves ``folder`` at ``server.url``.

    ``delay_s`` may be changed while it runs (e.g. 0 while an index is prepared); ``requests``
    counts the requests answered.
    """

    daemon_threads = True

    def __init__(self, folder: str | Path, delay_ms: float) -> None:
        handler = functools.partial(_Handler, directory=str(folder))
        super().__init__(("127.0.0.1", 0), handler)
        self.delay_s = max(0.0, float(delay_ms)) / 1000.0
        self.requests = 0
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the served folder (no trailing slash)."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that close their sockets early: nothing to report

    def __enter__(self) -> _LatencyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=10)

    @property
    def running(self) -> bool:
        """Whether the serving thread is alive."""
        return self._thread.is_alive()
