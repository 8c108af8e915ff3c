"""A loopback HTTP server with a fixed delay per request, to measure reads under storage latency.

Used by ``mlcast-pipes bench --latency-ms N``: it serves a local folder on 127.0.0.1 (an
ephemeral port) from a background thread and stops when its ``with`` block ends. Connections
are kept alive (HTTP/1.1, without Nagle's delay) and the listen backlog is deep, as with an
object store: a short backlog drops the connections of concurrent fetches, which the client
retries a second later.
"""

from __future__ import annotations

import functools
import multiprocessing
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


def _serve(folder: str, shared: dict[str, Any], ready: Any, stop: Any) -> None:
    """Run a :class:`_LatencyServer` in this child process; mirror its figures to ``shared``."""
    with _LatencyServer(folder, 0.0) as server:
        ready.put(server.url)
        while not stop.wait(0.005):
            server.delay_s = shared["delay_s"].value
            if shared["peak_in_flight"].value < 0:  # the parent asks for a reset
                server.peak_in_flight = 0
            shared["peak_in_flight"].value = server.peak_in_flight
            shared["requests"].value = server.requests
            shared["busy_s"].value = server.busy_s


class _ServerProcess:
    """A :class:`_LatencyServer` in a child process: it takes no CPU time from the loader's.

    Same figures as the in-process server (``delay_s`` settable, ``peak_in_flight`` resettable
    by setting 0), read with a lag of a few milliseconds.
    """

    def __init__(self, folder: str | Path, delay_ms: float) -> None:
        ctx = multiprocessing.get_context("fork")  # spawn would import the caller's __main__
        self._shared = {
            "delay_s": ctx.Value("d", max(0.0, float(delay_ms)) / 1000.0, lock=False),
            "requests": ctx.Value("q", 0, lock=False),
            "peak_in_flight": ctx.Value("q", 0, lock=False),
            "busy_s": ctx.Value("d", 0.0, lock=False),
        }
        self._ready = ctx.SimpleQueue()
        self._stop = ctx.Event()
        self._process = ctx.Process(
            target=_serve, args=(str(folder), self._shared, self._ready, self._stop), daemon=True
        )
        self.url = ""

    def __enter__(self) -> _ServerProcess:
        self._process.start()
        self.url = str(self._ready.get())
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()

    def _settle(self) -> None:
        time.sleep(0.02)  # the child mirrors its figures every 5 ms

    @property
    def delay_s(self) -> float:
        return float(self._shared["delay_s"].value)

    @delay_s.setter
    def delay_s(self, value: float) -> None:
        self._shared["delay_s"].value = float(value)
        self._settle()

    @property
    def requests(self) -> int:
        self._settle()
        return int(self._shared["requests"].value)

    @property
    def busy_s(self) -> float:
        self._settle()
        return float(self._shared["busy_s"].value)

    @property
    def peak_in_flight(self) -> int:
        self._settle()
        return int(self._shared["peak_in_flight"].value)

    @peak_in_flight.setter
    def peak_in_flight(self, value: int) -> None:
        self._shared["peak_in_flight"].value = -1 if value == 0 else int(value)
        self._settle()
