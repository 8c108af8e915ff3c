"""Training copies: an epoch's tiles materialized into one local zarr array, read by row.

Optional; makes epochs after the first read local files instead of the source archive.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pandas as pd
import zarr

from mlcast_pipes.chunkio import ChunkReader
from mlcast_pipes.epochs import group_by_key
from mlcast_pipes.errors import IndexFileError, ReadError
from mlcast_pipes.reader import TileRequest, get_reader
from mlcast_pipes.records import DatasetInfo

__all__ = [
    "ARRAY",
    "TrainingCopy",
    "copy_path",
    "materialize",
]


#: Name of the array in a training copy.
ARRAY = "samples"


def copy_path(index_dir: str | os.PathLike[str], sampling_id: str) -> Path:
    """Where the training copy of a sampling index lives: ``{index_dir}/{sampling_id}.zarr``.

    Examples
    --------
    >>> copy_path("idx", "radar.64x64.4.uniform.1a2b3c").as_posix()
    'idx/radar.64x64.4.uniform.1a2b3c.zarr'

    """
    return Path(index_dir) / f"{sampling_id}.zarr"


def materialize(
    pool: pd.DataFrame,
    meta: dict[str, Any],
    info: DatasetInfo,
    path: str | os.PathLike[str],
    *,
    progress: bool = False,
) -> Path:
    """Write every sample of a sampling pool into a local zarr store, one sample per chunk.

    ``meta`` is the sampling sidecar (its ``csv_sha256`` ties the copy to the index). The store
    is built in a temporary folder and renamed into place, so an interrupted run leaves no copy.

    Examples
    --------
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> from mlcast_pipes.demo import generate_demo
    >>> from mlcast_pipes.indexes.plan import dataset_info
    >>> path = generate_demo("copy.zarr", preset="tiny", n_times=24, overwrite=True)
    >>> sampler = (
    ...     IterableWrapper([str(path)]).open_mlcast()
    ...     .tile(n_time_window=4, tile_size=(64, 64), index_dir="idx").uniform_sample()
    ... )
    >>> sampling = sampler.sampling_indexes()[0]
    >>> info = dataset_info(next(iter(sampler.source_datapipe)))
    >>> target = materialize(
    ...     sampling.table, sampling.meta, info, copy_path("idx", sampling.sampling_id)
    ... )
    >>> TrainingCopy(target, sampling.meta["csv_sha256"]).read(0).shape
    (4, 64, 64)

    """
    target = Path(path)
    if len(pool) == 0:
        raise IndexFileError(f"the sampling index behind {target.name} is empty: nothing to copy")
    n_time = int(pool["n_time_sample"].iloc[0])
    ty, tx = int(pool["y_tile"].iloc[0]), int(pool["x_tile"].iloc[0])
    _remove_stale_copies(target)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
    arr = root.create_array(
        ARRAY,
        shape=(len(pool), n_time, ty, tx),
        chunks=(1, n_time, ty, tx),
        dtype="float32",
        compressors=[numcodecs.Zstd(level=3)],
        fill_value=np.nan,
        config={"write_empty_chunks": True},  # every sample has its chunk, even all-NaN ones
    )
    spec = info.spec
    reader = get_reader(spec.url, spec.var_name, spec.storage_options)
    starts = pool["t_start"].to_numpy() + pool["t_offset"].to_numpy()
    ys, xs = pool["y_start"].to_numpy(), pool["x_start"].to_numpy()
    from mlcast_pipes.progress import progress_bar

    bar = progress_bar(len(pool), f"training copy {target.name}", unit="samples", enabled=progress)
    try:
        for group in group_by_key(pool["t_start"].to_numpy()):
            requests = [
                TileRequest(int(starts[i]), n_time, int(ys[i]), ty, int(xs[i]), tx) for i in group
            ]
            for i, data in zip(group, reader.read_tiles(requests, cache=False), strict=True):
                arr[int(i)] = data
            bar.update(len(group))
        root.attrs.update(
            {
                "sampling_id": str(meta.get("sampling_id", "")),
                "sampling_csv_sha256": str(meta.get("csv_sha256", "")),
                "dataset_id": info.dataset_id,
                "source_url": spec.url,
                "n_samples": len(pool),
            }
        )
        zarr.consolidate_metadata(str(tmp))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    return target


def _remove_stale_copies(target: Path, max_age_s: float = 86400.0) -> None:
    """Delete the unfinished copies beside ``target`` left by killed runs.

    One is stale when the process that wrote it is gone (same host) or it is older than
    ``max_age_s`` seconds; a copy being written by a live process stays.
    """
    for folder in target.parent.glob(f"{target.name}.tmp-*"):
        match = re.fullmatch(r".*\.tmp-(\d+)-[0-9a-f]{8}", folder.name)
        if match is None or not folder.is_dir():
            continue
        try:
            os.kill(int(match[1]), 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except OSError:
            alive = True
        try:
            old = time.time() - folder.stat().st_mtime > max_age_s
        except OSError:
            continue
        if not alive or old:
            shutil.rmtree(folder, ignore_errors=True)


class TrainingCopy:
    """Reads samples of a training copy by row of its sampling index (opened lazily, per process).

    A copy made from another index than ``expected_sha256`` is refused.

    Examples
    --------
    >>> TrainingCopy("/nonexistent.zarr").exists()
    False

    """

    def __init__(self, path: str | os.PathLike[str], expected_sha256: str | None = None) -> None:
        self.path = Path(path)
        self.expected_sha256 = expected_sha256
        self._chunk_reader: ChunkReader | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the chunk reader (each process opens its own)."""
        return {**self.__dict__, "_chunk_reader": None, "_pid": -1}

    def exists(self) -> bool:
        """Whether a complete copy is there (and matches the expected index)."""
        if not (self.path / ".zmetadata").is_file():
            return False
        if self.expected_sha256 is None:
            return True
        attrs = zarr.open_group(str(self.path), mode="r").attrs
        return bool(attrs.get("sampling_csv_sha256") == self.expected_sha256)

    def _chunks(self) -> ChunkReader:
        """The copy's chunk reader, opened once per process."""
        if self._chunk_reader is None or self._pid != os.getpid():
            array = zarr.open_group(str(self.path), mode="r")[ARRAY]
            # every sample was written: an absent chunk is damage, not "no data"
            self._chunk_reader = ChunkReader(array, known_absent=())
            self._pid = os.getpid()
        return self._chunk_reader

    def _error(self, row: int, exc: BaseException) -> ReadError:
        return ReadError(
            f"cannot read sample {row} from the training copy {self.path}: {exc}; delete the "
            "copy and rerun `mlcast-pipes prepare ... --materialize`"
        )

    def read(self, row: int) -> np.ndarray:
        """The sample of sampling-index row ``row``, shape (n_time, y, x), float32."""
        return self.read_many([row])[0]

    def read_many(self, rows: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """The samples of several rows, decoded concurrently (one chunk each), in order."""
        rows = [int(r) for r in rows]
        if not rows:
            return []
        try:
            chunks = self._chunks()
        except Exception as exc:  # a missing or broken copy: zarr raises many types
            raise self._error(rows[0], exc) from exc
        outs = [
            np.empty(chunks.out_shape(r), chunks.dtype) if 0 <= r < chunks.n_chunks else None
            for r in rows
        ]
        out = []
        for row, got in zip(rows, chunks.read(rows, outs), strict=True):
            if isinstance(got, BaseException):
                raise self._error(row, got) from got
            sample = np.asarray(got[0], dtype=np.float32)
            out.append(sample if sample.flags.writeable else sample.copy())
        return out
