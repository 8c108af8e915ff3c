"""A loopback HTTP server with a fixed delay per request, to measure reads under storage latency.

Used by ``mlcast-pipes bench --latency-ms N``: it serves a local folder on 127.0.0.1 (an
ephemeral port) from an asyncio loop in a background thread and stops when its ``with`` block
ends. As an object store, it keeps connections alive (HTTP/1.1), accepts a deep backlog and
answers byte ranges, with little CPU time per request (a file read and one write), so that a
benchmark on shared cores measures the client, not the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import multiprocessing
import os
import posixpath
import stat
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

__all__: list[str] = []

_REASONS = {200: "OK", 206: "Partial Content", 301: "Moved Permanently", 400: "Bad Request"}
_REASONS |= {404: "Not Found", 405: "Method Not Allowed", 416: "Range Not Satisfiable"}


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, stop) of a ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` header; None if unusable."""
    unit, _, spec = header.partition("=")
    first, _, last = spec.strip().partition("-")
    if unit.strip() != "bytes" or "," in spec:
        return None
    try:
        if not first:  # the last n bytes
            return max(0, size - int(last)), size
        start = int(first)
        return start, min(size, int(last) + 1) if last else size
    except ValueError:
        return None


def _listing(folder: Path) -> bytes:
    """An HTML list of a folder's entries (folders with a trailing slash), as http.server's."""
    items = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        name = entry.name + ("/" if entry.is_dir() else "")
        href = urllib.parse.quote(name)
        items.append(f'<li><a href="{href}">{html.escape(name)}</a></li>')
    return (
        "<!DOCTYPE HTML><html><body><ul>\n" + "\n".join(items) + "\n</ul></body></html>\n"
    ).encode()


class _LatencyServer:
    """``with _LatencyServer(folder, delay_ms) as server:`` serves ``folder`` at ``server.url``.

    ``delay_s`` may be changed while it runs (e.g. 0 while an index is prepared); ``requests``
    counts the requests answered, ``peak_in_flight`` the most answered at once (resettable) and
    ``busy_s`` the seconds they spent waiting, summed (over a span of time: the mean in flight).
    """

    def __init__(self, folder: str | Path, delay_ms: float) -> None:
        self.root = str(Path(folder).resolve())  # the served folder
        self.delay_s = max(0.0, float(delay_ms)) / 1000.0
        self.requests = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.busy_s = 0.0
        self.lock = threading.Lock()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="mlcast-bench-http")
        self._server: asyncio.AbstractServer | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """Base URL of the served folder (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024)
            )
            self.port = int(self._server.sockets[0].getsockname()[1])
        except BaseException as exc:  # reported by __enter__
            self._error = exc
            return
        finally:
            self._started.set()
        self._loop.run_forever()
        self._loop.close()

    async def _shutdown(self) -> None:
        """Stop listening, end the open connections, then the loop."""
        assert self._server is not None
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.get_running_loop().stop()

    async def _wait(self) -> None:
        with self.lock:
            self.requests += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        t0 = time.perf_counter()
        try:
            if self.delay_s > 0:
                await asyncio.sleep(self.delay_s)
        finally:
            with self.lock:
                self.in_flight -= 1
                self.busy_s += time.perf_counter() - t0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer the requests of one kept-alive connection until the client closes it."""
        ends = (
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,  # a request head over 64 KiB
            OSError,
            asyncio.CancelledError,
        )
        with contextlib.suppress(*ends):  # closed by the client, or the server stops
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not await self._answer(head, writer, reader):
                    break
        writer.close()

    async def _answer(
        self, head: bytes, writer: asyncio.StreamWriter, reader: asyncio.StreamReader
    ) -> bool:
        """Answer one request (its body is read and ignored); whether the connection stays open."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        headers = {}
        for line in lines[1:]:
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip()
        keep = headers.get("connection", "").lower() != "close"
        length = headers.get("content-length", "0")
        if length.isdigit() and int(length) > 0:
            await reader.readexactly(int(length))
        if len(parts) != 3 or parts[0] not in ("GET", "HEAD"):
            await self._send(writer, 405 if len(parts) == 3 else 400, b"", keep=False)
            return False
        method, target = parts[0], urllib.parse.unquote(parts[1].split("?", 1)[0])
        await self._wait()
        relative = posixpath.normpath(target.lstrip("/") or ".")
        full = os.path.join(self.root, relative)
        try:
            if relative.startswith("..") or os.path.isabs(relative):
                raise FileNotFoundError(target)  # outside the served folder
            info = os.stat(full)
        except OSError:
            await self._send(writer, 404, b"", keep=keep)
            return keep
        if stat.S_ISDIR(info.st_mode):
            if not target.endswith("/"):
                await self._send(writer, 301, b"", keep=keep, extra={"Location": target + "/"})
                return keep
            body = _listing(Path(full))
            await self._send(writer, 200, b"" if method == "HEAD" else body, keep, len(body))
            return keep
        size = info.st_size
        start, stop, status = 0, size, 200
        if "range" in headers:
            span = _byte_range(headers["range"], size)
            if span is None or span[0] >= span[1]:
                extra = {"Content-Range": f"bytes */{size}"}
                await self._send(writer, 416, b"", keep=keep, extra=extra)
                return keep
            (start, stop), status = span, 206
        extra = {"Accept-Ranges": "bytes"}
        if status == 206:
            extra["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        body = b""
        if method == "GET" and stop > start:
            with open(full, "rb") as file:
                file.seek(start)
                body = file.read(stop - start)
        await self._send(writer, status, body, keep, stop - start, extra)
        return keep

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        keep: bool,
        length: int | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        """Write a response head (and a small ``body``)."""
        fields = {"Content-Length": str(len(body) if length is None else length)}
        fields["Connection"] = "keep-alive" if keep else "close"
        fields |= extra or {}
        head = f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
        writer.write(head.encode("latin-1") + body)
        await writer.drain()

    def __enter__(self) -> _LatencyServer:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive() and self._server is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
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
    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server process has used so far."""
        import psutil

        return float(sum(psutil.Process(self._process.pid).cpu_times()[:2]))

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
