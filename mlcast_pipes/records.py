"""Tile records: the lightweight items that flow between the tiling, sampling and normalising steps.

A record is one index row plus a handle on its source archive; its pixels are read on demand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from mlcast_pipes.dataset import SourceSpec
from mlcast_pipes.reader import TileRequest, get_reader

__all__ = [
    "DatasetInfo",
    "TileSample",
]


@dataclass(frozen=True)
class DatasetInfo:
    """What the steps after tiling need to know about a source archive, shared by its records.

    ``spec`` reopens the archive in any process; ``standard_name`` and ``units`` pick and check
    normalisations; ``fingerprint`` is the archive's metadata fingerprint when it was opened.

    Examples
    --------
    >>> from mlcast_pipes.dataset import SourceSpec
    >>> info = DatasetInfo(SourceSpec("/data/radar.zarr", "rr", "it-dpc-rr"), "rainfall_flux",
    ...                    "mm h-1", np.timedelta64(5, "m"), "0123abcd")
    >>> info.dataset_id
    'it-dpc-rr'

    """

    spec: SourceSpec
    standard_name: str
    units: str
    time_step: np.timedelta64
    fingerprint: str

    @property
    def dataset_id(self) -> str:
        """The stable id of the archive."""
        return self.spec.dataset_id


@dataclass
class TileSample:
    """One space-time tile of an archive: its position, its statistics, and its pixels once read.

    ``tile_id`` is its row in the tiling index, ``sample_id`` its row in the sampling index (None
    when not drawn by a sampler). ``data`` has shape (n_time, y_tile, x_tile) once read;
    ``mask`` is True where the source had data (when asked for). ``padded`` marks a copy added
    so that every rank gets as many samples: leave it out of validation metrics.

    Examples
    --------
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> from mlcast_pipes.demo import generate_demo
    >>> path = generate_demo("record.zarr", preset="tiny", n_times=24, overwrite=True)
    >>> tiles = IterableWrapper([str(path)]).open_mlcast().tile(
    ...     n_time_window=4, tile_size=(64, 64), index_dir="idx"
    ... )
    >>> record = next(iter(tiles))
    >>> record.data is None, record.load().shape
    (True, (4, 64, 64))

    """

    info: DatasetInfo
    tile_id: int
    t_start: int
    n_time: int
    y_start: int
    y_tile: int
    x_start: int
    x_tile: int
    time_start: str
    sample_id: int | None = None
    scalar_value: float | None = None
    bin_id: int | None = None
    data: np.ndarray | None = field(default=None, repr=False)
    mask: np.ndarray | None = field(default=None, repr=False)
    normalization: str | None = None
    padded: bool = False

    @property
    def request(self) -> TileRequest:
        """The pixel window of this tile as a reader request."""
        return TileRequest(
            self.t_start, self.n_time, self.y_start, self.y_tile, self.x_start, self.x_tile
        )

    def load(self) -> np.ndarray:
        """Read the pixels (once) and return them, shape (n_time, y_tile, x_tile), float32."""
        if self.data is None:
            spec = self.info.spec
            reader = get_reader(spec.url, spec.var_name, spec.storage_options)
            r = self.request
            self.data = reader.read_tile(r.t0, r.n, r.y0, r.ny, r.x0, r.nx)
        return self.data

    def to_dataarray(self) -> xr.DataArray:
        """Return the tile as a (time, y, x) DataArray with the archive's coordinates.

        Coordinates are read lazily from the source once per process; the pixels come from
        :meth:`load` (so they are normalised if the record was normalised).
        """
        coords = _coordinates(self.info)
        ts = slice(self.t_start, self.t_start + self.n_time)
        ys = slice(self.y_start, self.y_start + self.y_tile)
        xs = slice(self.x_start, self.x_start + self.x_tile)
        attrs: dict[str, Any] = {
            "dataset_id": self.info.dataset_id,
            "tile_id": self.tile_id,
            "units": self.info.units if self.normalization is None else "1",
            "standard_name": self.info.standard_name,
        }
        if self.normalization is not None:
            attrs["normalization"] = self.normalization
        return xr.DataArray(
            self.load(),
            dims=("time", "y", "x"),
            coords={"time": coords["time"][ts], "y": coords["y"][ys], "x": coords["x"][xs]},
            name=self.info.spec.var_name,
            attrs=attrs,
        )

    def metadata(self) -> dict[str, Any]:
        """Identify the sample (for validation bookkeeping): ids, position and start time."""
        return {
            "dataset_id": self.info.dataset_id,
            "tile_id": self.tile_id,
            "sample_id": -1 if self.sample_id is None else self.sample_id,
            "t_start": self.t_start,
            "y_start": self.y_start,
            "x_start": self.x_start,
            "time_start": self.time_start,
            "padded": self.padded,
        }


_COORD_CACHE: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}


def _coordinates(info: DatasetInfo) -> dict[str, np.ndarray]:
    """Time, y and x coordinate values of an archive, read once per process and version."""
    spec = info.spec
    key = (spec.url, spec.var_name, info.fingerprint)
    if key not in _COORD_CACHE:
        from mlcast_pipes.dataset import open_source

        da = open_source(spec)
        _COORD_CACHE[key] = {name: np.asarray(da[name].values) for name in ("time", "y", "x")}
    return _COORD_CACHE[key]
