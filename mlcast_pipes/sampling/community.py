"""The ``community`` sampler: the cubes of the MLCast community sampler's file as a pool.

The file is read by :mod:`mlcast_pipes.indexes.community`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlcast_pipes.errors import ParameterError
from mlcast_pipes.indexes.community import load_community_csv
from mlcast_pipes.indexes.format import file_sha256
from mlcast_pipes.sampling.base import SamplingWarning
from mlcast_pipes.sampling.registry import register_sampler

__all__ = [
    "community",
]


def _community_file_params(params: dict[str, Any]) -> dict[str, Any]:
    """The community sampler's file as an absolute path plus its sha256 (the id covers both)."""
    path = Path(str(params["csv"])).expanduser().resolve()
    if not path.is_file():
        raise ParameterError(
            f"community: csv={params['csv']!r} is not a file; pass the t,x,y CSV written by the "
            "MLCast community sampler (mlcast-dataset-sampler)"
        )
    out = dict(params)
    out["csv"] = str(path)
    if out.get("csv_sha256") is None:
        out["csv_sha256"] = file_sha256(path)
    return out


@register_sampler("community")
def community(
    table: pd.DataFrame,
    *,
    seed: int,
    csv: str,
    csv_sha256: str | None = None,
    x_is_axis: int = 1,
) -> pd.DataFrame:
    """The cubes of the MLCast community sampler's ``t,x,y`` CSV, as a pool of tiles.

    Cubes are matched to tiles by start, so tile with the cubes' size and strides; cubes the
    tiling rejected are left out with a :class:`SamplingWarning`; an edited file gets a new id.

    Examples
    --------
    >>> from mlcast_pipes.sampling import run_sampler
    >>> tiles = pd.DataFrame({"tile_id": [0, 1, 2], "t_start": [0, 0, 4], "y_start": [0, 32, 0],
    ...                       "x_start": [0, 0, 32], "n_time_window": 4, "y_tile": 32,
    ...                       "x_tile": 32})
    >>> pd.DataFrame({"t": [4, 0], "x": [0, 32], "y": [32, 0]}).to_csv("cubes.csv", index=False)
    >>> run_sampler("community", tiles, seed=0, csv="cubes.csv")["source_tile_id"].tolist()
    [1, 2]

    """
    path = Path(csv).expanduser()
    if csv_sha256 is not None and path.is_file() and file_sha256(path) != csv_sha256:
        raise ParameterError(
            f"community: {path} changed since its sampling index was made (sha256 differs); "
            "build the index again (recompute=True, or --recompute)"
        )
    required = ("tile_id", "t_start", "y_start", "x_start", "n_time_window", "y_tile", "x_tile")
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ParameterError(
            f"community: the tiling table lacks {', '.join(missing)}; pass a tiling index table"
        )
    if table.empty:
        raise ParameterError("community: the tiling table holds no tile")
    window = int(table["n_time_window"].iloc[0])
    size = (int(table["y_tile"].iloc[0]), int(table["x_tile"].iloc[0]))
    cubes = load_community_csv(path, n_time_window=window, tile_size=size, x_is_axis=x_is_axis)
    keys = ["t_start", "y_start", "x_start"]
    cubes = cubes.drop_duplicates(keys)
    matched = cubes[keys].merge(table[[*keys, "tile_id"]], on=keys, how="left")
    found = matched["tile_id"].notna().to_numpy()
    if not found.any():
        raise ParameterError(
            f"community: none of the {len(cubes)} cubes of {path.name} starts where a tile of "
            f"this tiling starts ({window} steps of {size[0]} x {size[1]} pixels); tile with "
            "the cubes' size and strides, e.g. .tile(n_time_window=24, tile_size=(256, 256), "
            "stride=(3, 16, 16)) for the community tool's defaults, and a max_nan_fraction that "
            "keeps its cubes"
        )
    if not found.all():
        warnings.warn(
            f"community: {int((~found).sum())} of the {len(cubes)} cubes of {path.name} are not "
            "tiles of this tiling (a time gap or more NaN than max_nan_fraction, or another "
            "grid); they are left out",
            SamplingWarning,
            stacklevel=2,
        )
    ids = np.sort(matched.loc[found, "tile_id"].to_numpy(dtype=np.int64))
    return pd.DataFrame(
        {
            "source_tile_id": ids,
            "scalar_value": np.full(ids.size, np.nan),
            "bin_id": np.full(ids.size, -1, dtype=np.int64),
            "weight": np.ones(ids.size, dtype=np.float64),
        }
    )
