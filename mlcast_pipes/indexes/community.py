"""Community formats: the MLCast community sampler's ``t,x,y`` CSV and per-cube statistics.

Both are read as a tiling table plus an unbinned pool, so they feed the ``community`` sampler.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from mlcast_pipes.errors import IndexFileError, ParameterError
from mlcast_pipes.sampling.base import _int_param, _scalar_column

__all__ = [
    "load_community_csv",
    "load_community_stats",
]


def _community_table(
    frame: pd.DataFrame,
    *,
    source: str,
    n_time_window: int,
    tile_size: tuple[int, int],
    times: npt.ArrayLike | None,
    x_is_axis: int,
    scalar: str | None,
) -> pd.DataFrame:
    missing = [c for c in ("t", "x", "y") if c not in frame.columns]
    if missing:
        raise IndexFileError(
            f"{source} lacks the column(s) {', '.join(missing)} (it has "
            f"{', '.join(map(str, frame.columns))}); expected the community sampler's t,x,y output"
        )
    if x_is_axis not in (1, 2):
        raise ParameterError(
            f"x_is_axis must be 1 (their x indexes array axis 1 = our rows, y) or 2 (their x is "
            f"our columns, x), got {x_is_axis!r}"
        )
    n_time_window = _int_param(n_time_window, "n_time_window", 1)
    if len(tile_size) != 2 or any(int(s) < 1 for s in tile_size):
        raise ParameterError(
            f"tile_size must be two positive integers (rows, columns), got {tile_size!r}"
        )
    try:
        t = frame["t"].to_numpy(dtype=np.int64)
        a = frame["x"].to_numpy(dtype=np.int64)
        b = frame["y"].to_numpy(dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise IndexFileError(f"{source}: t, x, y must be integer indices ({exc})") from exc
    if (t < 0).any() or (a < 0).any() or (b < 0).any():
        raise IndexFileError(
            f"{source}: negative t/x/y indices; expected absolute array indices >= 0"
        )
    y_start, x_start = (a, b) if x_is_axis == 1 else (b, a)
    if times is not None:
        tarr = np.asarray(times).astype("datetime64[ns]")
        if t.size and int(t.max()) + n_time_window > tarr.size:
            raise ParameterError(
                f"{source}: a cube starting at t={int(t.max())} with {n_time_window} steps runs "
                f"past the {tarr.size} given times; pass the archive's full time coordinate"
            )
        time_start = tarr[t]
    else:
        time_start = np.full(t.size, np.datetime64("NaT"), dtype="datetime64[ns]")
    n = len(frame)
    out = pd.DataFrame(
        {
            "tile_id": np.arange(n, dtype=np.int64),
            "time_start": time_start,
            "t_start": t,
            "y_start": y_start,
            "x_start": x_start,
            "n_time_window": np.full(n, int(n_time_window), dtype=np.int64),
            "y_tile": np.full(n, int(tile_size[0]), dtype=np.int64),
            "x_tile": np.full(n, int(tile_size[1]), dtype=np.int64),
        }
    )
    for c in ("nan_count", "sum", "mean", "frac_wet"):
        if c in frame.columns:
            out[c] = frame[c].to_numpy(dtype=np.float64)
    if "nan_count" in out.columns:
        out["nan_fraction"] = out["nan_count"] / float(n_time_window * tile_size[0] * tile_size[1])
    out["source_tile_id"] = out["tile_id"]
    if scalar is None:
        out["scalar_value"] = np.nan
    else:
        out["scalar_value"] = _scalar_column(out, scalar, "community")
    out["bin_id"] = np.full(n, -1, dtype=np.int64)
    out["weight"] = np.ones(n, dtype=np.float64)
    return out


def load_community_csv(
    path: str | os.PathLike[str],
    *,
    n_time_window: int = 24,
    tile_size: tuple[int, int] = (256, 256),
    times: npt.ArrayLike | None = None,
    x_is_axis: int = 1,
) -> pd.DataFrame:
    """Read the MLCast community sampler's ``t,x,y`` CSV as a tiling table and unbinned pool.

    With ``x_is_axis=1`` (default, that tool's ``(t, x, y)`` order) its ``x`` is our ``y_start``
    (``x_is_axis=2``: by name); ``times`` fills ``time_start``. Raises IndexFileError for bad files.

    Examples
    --------
    >>> pd.DataFrame({"t": [0, 24], "x": [0, 256], "y": [256, 0]}).to_csv("cubes.csv", index=False)
    >>> table = load_community_csv("cubes.csv", n_time_window=24, tile_size=(256, 256))
    >>> table[["tile_id", "t_start", "y_start", "x_start"]].to_numpy().tolist()
    [[0, 0, 0, 256], [1, 24, 256, 0]]

    """
    p = Path(path)
    try:
        frame = pd.read_csv(p)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise IndexFileError(f"cannot read the community CSV {p}: {exc}; check the path") from exc
    return _community_table(
        frame,
        source=str(p),
        n_time_window=n_time_window,
        tile_size=tile_size,
        times=times,
        x_is_axis=x_is_axis,
        scalar=None,
    )


def load_community_stats(
    path: str | os.PathLike[str],
    *,
    n_time_window: int = 24,
    tile_size: tuple[int, int] = (256, 256),
    times: npt.ArrayLike | None = None,
    x_is_axis: int = 1,
    scalar: str = "mean",
) -> pd.DataFrame:
    """Read the community per-cube statistics (``t,x,y,nan_count,sum,mean,frac_wet``).

    Parquet (needs pyarrow) or CSV; returns :func:`load_community_csv`'s table plus the
    statistics and ``nan_fraction``, with ``scalar`` copied to ``scalar_value``.

    Examples
    --------
    >>> pd.DataFrame({
    ...     "t": [0, 0, 2], "x": [0, 0, 4], "y": [0, 4, 0], "nan_count": [0, 8, 0],
    ...     "sum": [0.0, 16.0, 64.0], "mean": [0.0, 0.5, 2.0], "frac_wet": [0.0, 0.25, 0.75],
    ... }).to_csv("stats.csv", index=False)
    >>> stats = load_community_stats("stats.csv", n_time_window=2, tile_size=(4, 4))
    >>> stats["scalar_value"].tolist(), stats["nan_fraction"].tolist()
    ([0.0, 0.5, 2.0], [0.0, 0.25, 0.0])

    """
    p = Path(path)
    if p.suffix.lower() in (".parquet", ".pq"):
        import importlib.util

        if importlib.util.find_spec("pyarrow") is None:
            raise IndexFileError(
                f"reading {p.name} needs pyarrow, which is not installed; install it "
                "(pip install pyarrow) or convert the file to CSV"
            )
        try:
            frame = pd.read_parquet(p)
        except (OSError, ValueError) as exc:
            raise IndexFileError(f"cannot read the community statistics {p}: {exc}") from exc
    else:
        try:
            frame = pd.read_csv(p)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise IndexFileError(f"cannot read the community statistics {p}: {exc}") from exc
    missing = [c for c in ("nan_count", "sum", "mean", "frac_wet") if c not in frame.columns]
    if missing:
        raise IndexFileError(
            f"{p} lacks the statistics column(s) {', '.join(missing)}; for a plain t,x,y list "
            "use load_community_csv"
        )
    return _community_table(
        frame,
        source=str(p),
        n_time_window=n_time_window,
        tile_size=tile_size,
        times=times,
        x_is_axis=x_is_axis,
        scalar=scalar,
    )
