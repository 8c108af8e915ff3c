"""A loopback HTTP server with a fixed delay per request, to measure reads under storage latency.

Used by ``mlcast-pipes bench --latency-ms N``: it serves a local folder on 127.0.0.1 (an
ephemeral port) from a background thread and stops when its ``with`` block ends. Connections
are kept alive (HTTP/1.1, without Nagle's delay) and the listen backlog is deep, as with an
object store: a short backlog drops the connections of concurrent fetches, which the client
retries a second later.
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
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else a kept-alive connection waits for a delayed ACK

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _wait(self) -> None:
        server = self.server
        with server.lock:
            server.requests += 1
            server.in_flight += 1
            server.peak_in_flight = max(server.peak_in_flight, server.in_flight)
        t0 = time.perf_counter()
        try:
            time.sleep(server.delay_s)
        finally:
            with server.lock:
                server.in_flight -= 1
                server.busy_s += time.perf_counter() - t0

    def do_GET(self) -> None:
        self._wait()
        super().do_GET()

    def do_HEAD(self) -> None:
        self._wait()
        super().do_HEAD()


class _LatencyServer(ThreadingHTTPServer):
    """``with _LatencyServer(folder, delay_ms) as server:`` serves ``folder`` at ``server.url``.

    ``delay_s`` may be changed while it runs (e.g. 0 while an index is prepared); ``requests``
    counts the requests answered, ``peak_in_flight`` the most answered at once (resettable) and
    ``busy_s`` the seconds they spent waiting, summed (over a span of time: the mean in flight).
    """

    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, folder: str | Path, delay_ms: float) -> None:
        handler = functools.partial(_Handler, directory=str(folder))
        super().__init__(("127.0.0.1", 0), handler)
        self.delay_s = max(0.0, float(delay_ms)) / 1000.0
        self.requests = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.busy_s = 0.0
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
