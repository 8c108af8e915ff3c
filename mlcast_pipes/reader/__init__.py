"""Fast pixel reader for (time, y, x) zarr archives: decoded-frame cache and grouped tile reads.

Serves the training path's tile pixels with plain zarr + fsspec (no dask), decoding frames once.
"""

from mlcast_pipes.reader.errors import is_transient
from mlcast_pipes.reader.frames import MISSING_CHUNKS_ENV, FrameReader, expect_chunks
from mlcast_pipes.reader.registry import close_readers, get_reader, naive_read_tile
from mlcast_pipes.reader.requests import READ_DEADLINE, READ_DEADLINE_ENV, ReaderStats, TileRequest

__all__ = [
    "MISSING_CHUNKS_ENV",
    "READ_DEADLINE",
    "READ_DEADLINE_ENV",
    "FrameReader",
    "ReaderStats",
    "TileRequest",
    "close_readers",
    "expect_chunks",
    "get_reader",
    "is_transient",
    "naive_read_tile",
]
