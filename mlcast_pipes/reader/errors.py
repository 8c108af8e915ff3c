"""Read-error classification: transient (worth a retry) vs permanent, and access denied."""

from __future__ import annotations

import asyncio

from mlcast_pipes.errors import ReadError

__all__ = ["is_transient"]


#: OSError subclasses that retrying cannot fix.
_PERMANENT_OS_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    ReadError,
)


class _FrameFailedError(Exception):
    """A fetch unit (time chunk) failed; carries its frame range and the original error."""

    def __init__(self, c0: int, c1: int, error: BaseException) -> None:
        super().__init__(c0, c1, error)
        self.c0, self.c1, self.error = c0, c1, error


#: Exception class names (botocore, aiohttp, fsspec) of network failures worth retrying; matched by
#: name so that the optional remote packages need not be imported.
_TRANSIENT_NAMES = frozenset(
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ProxyConnectionError",
        "HTTPClientError",
        "ResponseStreamingError",
        "IncompleteReadError",
        "FSTimeoutError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ClientPayloadError",
        "ClientConnectorError",
        "ClientOSError",
    }
)
#: HTTP statuses that say "no access" (a permanent error with its own fix).
_DENIED_STATUSES = (401, 403)


def _classify(exc: BaseException) -> bool | None:
    """True: retrying may help; False: it cannot; None: this exception does not tell."""
    if isinstance(exc, _PERMANENT_OS_ERRORS):
        return False
    if type(exc).__name__ in _TRANSIENT_NAMES:
        return True
    if isinstance(exc, TimeoutError | ConnectionError | asyncio.TimeoutError):
        return True
    status = getattr(exc, "status", None)
    if isinstance(status, int) and type(exc).__name__ == "ClientResponseError":
        return status >= 500 or status in (408, 429)
    if isinstance(exc, OSError):  # s3fs turns throttling and 5xx answers into OSError
        return True
    try:  # aiohttp is optional (remote extra)
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp is normally installed with fsspec[http]
        return None
    if isinstance(exc, aiohttp.ClientError):
        return True
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether retrying a read may help (network-like error), as opposed to a broken chunk.

    Explicit causes (``raise ... from``) are asked in turn when the exception itself does not tell.

    Examples
    --------
    >>> is_transient(ConnectionResetError("reset by peer")), is_transient(ValueError("bad zstd"))
    (True, False)
    >>> try:
    ...     raise RuntimeError("read failed") from TimeoutError()
    ... except RuntimeError as exc:
    ...     is_transient(exc)
    True

    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        verdict = _classify(current)
        if verdict is not None:
            return verdict
        current = current.__cause__
    return False


def _is_denied(exc: BaseException) -> bool:
    """Whether an error (or one of its explicit causes) says that access was refused."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, PermissionError):
            return True
        status = getattr(current, "status", None)
        if isinstance(status, int) and status in _DENIED_STATUSES:
            return True
        current = current.__cause__
    return False


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
