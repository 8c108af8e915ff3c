"""Per-step tile statistics: what a tile's window holds step by step, and sub-window statistics.

The tiling pass stores one record per (tile, step) so that the statistics of any run of
consecutive steps of a window (a sampled sub-window) are exact reductions of those records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "STEP_FIELDS",
    "steps_dtype",
    "sub_window_statistics",
]


#: Fields of a step record besides the importance numerators: NaN count, sum and max of the
#: (capped) rates, wet and capped pixel counts, over the tile's pixels at one step.
STEP_FIELDS: tuple[str, ...] = ("nan", "sum", "max", "wet", "clip")


_ROWS_PER_CHUNK = 1 << 16


def steps_dtype(importance_columns: Sequence[str]) -> np.dtype[Any]:
    """Little-endian record of one tile at one step; ``imp_s*`` fields hold ``sum(1 - exp(-R/s))``.

    Examples
    --------
    >>> steps_dtype(["imp_s1"]).names
    ('nan', 'sum', 'max', 'wet', 'clip', 'imp_s1')

    """
    fields: list[tuple[str, str]] = [
        ("nan", "<i4"),
        ("sum", "<f8"),
        ("max", "<f4"),
        ("wet", "<i4"),
        ("clip", "<i4"),
    ]
    fields += [(str(c), "<f8") for c in importance_columns]
    return np.dtype(fields)


def sub_window_statistics(
    steps: npt.ArrayLike,
    rows: npt.ArrayLike,
    offsets: npt.ArrayLike,
    n_time_sample: int,
    tile_pixels: npt.ArrayLike,
) -> dict[str, npt.NDArray[Any]]:
    """Statistics of steps ``[offset, offset + n_time_sample)`` of tiles ``rows`` of ``steps``.

    ``steps`` is ``(n_tiles, n_time_window)`` of :func:`steps_dtype` (e.g. a memory map),
    ``tile_pixels`` the pixels of a tile at one step. The columns follow the tiling's rules:
    ``mean``, ``frac_wet``, ``max`` and ``imp_s*`` over non-NaN pixels (NaN when there are none),
    ``nan_fraction`` over all pixels of the sub-window.

    Examples
    --------
    >>> steps = np.zeros((1, 4), dtype=steps_dtype([]))
    >>> steps["sum"] = [[0.0, 0.0, 6.0, 2.0]]
    >>> steps["nan"] = [[0, 0, 1, 0]]
    >>> stats = sub_window_statistics(steps, [0], [2], 2, 2)  # steps 2 and 3 of 2 pixels each
    >>> stats["sum"].tolist(), stats["mean"].round(3).tolist(), stats["nan_fraction"].tolist()
    ([8.0], [2.667], [0.25])

    """
    rows = np.asarray(rows, dtype=np.intp)
    offsets = np.broadcast_to(np.asarray(offsets, dtype=np.intp), rows.shape)
    pixels = np.broadcast_to(np.asarray(tile_pixels, dtype=np.int64), rows.shape)
    src = steps if isinstance(steps, np.ndarray) else np.asarray(steps)
    imp = [f for f in src.dtype.names or () if f not in STEP_FIELDS]
    m = rows.size
    out: dict[str, npt.NDArray[Any]] = {
        "nan_count": np.zeros(m, dtype=np.int64),
        "sum": np.zeros(m, dtype=np.float64),
        "max": np.zeros(m, dtype=np.float64),
        "wet": np.zeros(m, dtype=np.int64),
        "clip_count": np.zeros(m, dtype=np.int64),
        **{f: np.zeros(m, dtype=np.float64) for f in imp},
    }
    span = np.arange(n_time_sample, dtype=np.intp)
    for c0 in range(0, m, _ROWS_PER_CHUNK):
        c1 = min(c0 + _ROWS_PER_CHUNK, m)
        block = np.asarray(src[rows[c0:c1]])  # reads only these tiles from a memory map
        sub = np.take_along_axis(block, offsets[c0:c1, None] + span[None, :], axis=1)
        out["nan_count"][c0:c1] = sub["nan"].sum(axis=1, dtype=np.int64)
        out["sum"][c0:c1] = sub["sum"].sum(axis=1, dtype=np.float64)
        out["max"][c0:c1] = sub["max"].max(axis=1)
        out["wet"][c0:c1] = sub["wet"].sum(axis=1, dtype=np.int64)
        out["clip_count"][c0:c1] = sub["clip"].sum(axis=1, dtype=np.int64)
        for f in imp:
            out[f][c0:c1] = sub[f].sum(axis=1, dtype=np.float64)
    npix = pixels * int(n_time_sample)
    valid = npix - out["nan_count"]
    wet = out.pop("wet")
    with np.errstate(invalid="ignore", divide="ignore"):
        out["nan_fraction"] = out["nan_count"] / npix
        out["mean"] = np.where(valid > 0, out["sum"] / valid, np.nan)
        out["frac_wet"] = np.where(valid > 0, wet / valid, np.nan)
        for f in imp:
            out[f] = np.where(valid > 0, out[f] / valid, np.nan)
    out["max"] = np.where(valid > 0, out["max"], np.nan)
    return out
