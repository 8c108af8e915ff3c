"""Diagnostic figures and tables of sample pools and epochs (matplotlib Agg canvas, no pyplot).

Checks that a sampler balances the scalar as meant, and where and when the samples lie.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from mlcast_pipes.errors import IndexFileError, MLCastPipesError, ParameterError
from mlcast_pipes.indexes.format import read_sidecar, sidecar_path
from mlcast_pipes.indexes.index_csv import load_index
from mlcast_pipes.indexes.sampling import load_sampling_index
from mlcast_pipes.sampling import draw_epoch

__all__ = [
    "inspect_index",
    "plot_batch_sample",
    "plot_sample_density",
    "plot_samples_over_time",
    "plot_scalar_histogram",
    "summary_table",
]

_POOL_COLOR = "#7f7f7f"
_EPOCH_COLOR = "#1f77b4"


def _new_figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig: Figure, path: str | os.PathLike[str]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)


def _rows(n_rows: int, epoch_rows: npt.ArrayLike | None) -> npt.NDArray[np.int64]:
    if epoch_rows is None:
        return np.arange(n_rows, dtype=np.int64)
    rows = np.asarray(epoch_rows)
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise ParameterError(
            "epoch_rows must be a 1-D array of row positions, as returned by draw_epoch"
        )
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
        raise ParameterError(
            f"epoch_rows hold positions outside the pool's {n_rows} rows; pass the rows that "
            "draw_epoch returned for this same pool"
        )
    return rows.astype(np.int64)


def _bins_info(pool: pd.DataFrame) -> list[dict[str, Any]]:
    """Bins of a pool: from ``pool.attrs["bins"]`` (empty bins included) or the observed ids."""
    info = pool.attrs.get("bins")
    if isinstance(info, list) and info:
        return [dict(b) for b in info]
    ids = pool["bin_id"].to_numpy() if "bin_id" in pool.columns else np.full(len(pool), -1)
    values = (
        pool["scalar_value"].to_numpy(dtype=np.float64)
        if "scalar_value" in pool.columns
        else np.full(len(pool), np.nan)
    )
    out = []
    for b in np.unique(ids):
        sel = values[ids == b]
        finite = sel[np.isfinite(sel)]
        lo = float(finite.min()) if finite.size else None
        hi = float(finite.max()) if finite.size else None
        label = "pool (no bins)" if b < 0 else f"bin {int(b)}"
        out.append({"bin_id": int(b), "lower": lo, "upper": hi, "label": label})
    return out


def summary_table(pool: pd.DataFrame, epoch_rows: npt.ArrayLike | None = None) -> pd.DataFrame:
    """Per-bin summary of a pool and of one epoch drawn from it (rows from ``draw_epoch``).

    Returns one row per bin (empty bins included when ``pool.attrs["bins"]`` lists them):
    ``bin_id``, ``label``, ``lower``, ``upper``, ``n_pool``, ``share_pool``, ``n_drawn``,
    ``n_unique_drawn``, ``share_drawn``, ``draws_per_tile``.

    Examples
    --------
    >>> pool = pd.DataFrame({"bin_id": [0, 0, 0, 1], "scalar_value": [0.0, 0.0, 0.0, 5.0]})
    >>> summary_table(pool, np.array([0, 3, 3, 1]))[["bin_id", "n_pool", "n_drawn"]].values.tolist()
    [[0, 3, 2], [1, 1, 2]]

    """
    rows = _rows(len(pool), epoch_rows)
    ids = (
        np.asarray(pool["bin_id"].to_numpy(), dtype=np.int64)
        if "bin_id" in pool.columns
        else np.full(len(pool), -1, dtype=np.int64)
    )
    drawn = ids[rows]
    records = []
    for b in _bins_info(pool):
        bid = int(b["bin_id"])
        in_bin = ids == bid
        n_pool = int(in_bin.sum())
        n_drawn = int((drawn == bid).sum())
        records.append(
            {
                "bin_id": bid,
                "label": str(b.get("label", bid)),
                "lower": np.nan if b.get("lower") is None else float(b["lower"]),
                "upper": np.nan if b.get("upper") is None else float(b["upper"]),
                "n_pool": n_pool,
                "share_pool": n_pool / max(len(pool), 1),
                "n_drawn": n_drawn,
                "n_unique_drawn": int(np.unique(rows[drawn == bid]).size),
                "share_drawn": n_drawn / max(rows.size, 1),
                "draws_per_tile": n_drawn / n_pool if n_pool else np.nan,
            }
        )
    return pd.DataFrame.from_records(records)


def plot_scalar_histogram(
    pool: pd.DataFrame,
    epoch_rows: npt.ArrayLike | None,
    path: str | os.PathLike[str],
    *,
    all_values: npt.ArrayLike | None = None,
    title: str | None = None,
) -> Figure:
    """Write a PNG of the scalar's distribution before sampling (all tiles) and after (one epoch).

    Log-log shares per scalar interval (tiles at scalar <= 0 are counted in the legend); binned
    pools get a second panel of shares per bin. ``all_values``: the scalar of every candidate
    when the pool is already a selection (``importance``: the tiling table's ``imp_s1``).

    Examples
    --------
    >>> import tempfile
    >>> pool = pd.DataFrame({"scalar_value": [0.0, 2.0, 30.0, 400.0], "bin_id": [0, 1, 1, 2]})
    >>> path = Path(tempfile.mkdtemp()) / "hist.png"
    >>> fig = plot_scalar_histogram(pool, np.array([0, 1, 3, 3]), path)

    """
    rows = _rows(len(pool), epoch_rows) if epoch_rows is not None else None
    summary = summary_table(pool, rows)
    binned = len(summary) > 1
    fig, axes = _new_figure(12.0 if binned else 7.0, 4.6, ncols=2 if binned else 1)
    ax_hist = axes[0]
    scalar = str(pool.attrs.get("scalar", "scalar_value"))
    values = (
        pool["scalar_value"].to_numpy(dtype=np.float64)
        if "scalar_value" in pool.columns
        else np.full(len(pool), np.nan)
    )
    before = values if all_values is None else np.asarray(all_values, dtype=np.float64)
    before = before[np.isfinite(before)]
    after = None
    if rows is not None:
        after = values[rows]
        after = after[np.isfinite(after)]
    positive = np.concatenate([before[before > 0], [] if after is None else after[after > 0]])
    if positive.size:
        lo, hi = float(positive.min()), float(positive.max())
        edges = np.geomspace(lo, hi * 1.000001 if hi > lo else lo * 10, 41)
        first = "candidates (every tile)" if all_values is not None else "pool (before the draw)"
        if all_values is not None and before.size:
            first += f", {len(pool)} kept ({len(pool) / before.size:.2%} accepted)"
        for data, label, style in (
            (before, first, {"histtype": "stepfilled", "alpha": 0.5}),
            (after, "after sampling (one epoch)", {"histtype": "step", "lw": 1.6}),
        ):
            if data is None or not data.size:
                continue
            color = _POOL_COLOR if data is before else _EPOCH_COLOR
            ax_hist.hist(
                data[data > 0],
                bins=edges,
                weights=np.full(int((data > 0).sum()), 1.0 / data.size),
                color=color,
                label=f"{label}: {data.size} tiles, {(data <= 0).mean():.0%} at <= 0",
                **style,
            )
        ax_hist.set_xscale("log")
        ax_hist.set_yscale("log")
        for e in pool.attrs.get("bin_edges") or []:
            if e is not None and e > 0:
                ax_hist.axvline(float(e), color="k", lw=0.5, alpha=0.4)
        ax_hist.legend(fontsize=8)
    else:
        ax_hist.text(0.5, 0.5, "no positive scalar values", ha="center", va="center")
    ax_hist.set_xlabel(scalar)
    ax_hist.set_ylabel("share of tiles")
    edges_note = " (grey lines: bin edges)" if pool.attrs.get("bin_edges") else ""
    ax_hist.set_title(f"scalar distribution{edges_note}", fontsize=10)

    if binned:
        ax_bins = axes[1]
        x = np.arange(len(summary))
        width = 0.4
        share_pool = summary["share_pool"].to_numpy()
        ax_bins.bar(x - width / 2, share_pool, width, color=_POOL_COLOR, label="pool")
        if rows is not None:
            share_drawn = summary["share_drawn"].to_numpy()
            ax_bins.bar(x + width / 2, share_drawn, width, color=_EPOCH_COLOR, label="one epoch")
            n_present = int((summary["n_pool"] > 0).sum())
            ax_bins.axhline(1.0 / max(n_present, 1), color="k", lw=0.8, ls=":", label="equal")
        ax_bins.set_yscale("log")
        ax_bins.set_xticks(x, summary["label"].tolist(), rotation=40, ha="right", fontsize=8)
        ax_bins.set_ylabel("share of tiles")
        ax_bins.set_xlabel(f"bin of {scalar}")
        ax_bins.set_title("per bin", fontsize=10)
        ax_bins.legend(fontsize=8)
    if title is None:
        title = f"{pool.attrs.get('sampler', 'sampler')} {pool.attrs.get('params', '')}".strip()
    fig.suptitle(title, fontsize=9)
    _save(fig, path)
    return fig


def _coverage(
    y0: npt.NDArray[np.int64],
    x0: npt.NDArray[np.int64],
    ny: npt.NDArray[np.int64],
    nx: npt.NDArray[np.int64],
    shape: tuple[int, int],
) -> npt.NDArray[np.int64]:
    """Count how many rectangles cover each pixel (2-D difference array, O(n + H*W))."""
    h, w = shape
    diff = np.zeros((h + 1, w + 1), dtype=np.int64)
    y1 = np.clip(y0 + ny, 0, h)
    x1 = np.clip(x0 + nx, 0, w)
    y0c = np.clip(y0, 0, h)
    x0c = np.clip(x0, 0, w)
    np.add.at(diff, (y0c, x0c), 1)
    np.add.at(diff, (y0c, x1), -1)
    np.add.at(diff, (y1, x0c), -1)
    np.add.at(diff, (y1, x1), 1)
    return np.cumsum(np.cumsum(diff, axis=0), axis=1)[:h, :w]


def plot_sample_density(
    table: pd.DataFrame,
    domain_shape: tuple[int, int],
    path: str | os.PathLike[str],
    *,
    rows: npt.ArrayLike | None = None,
    title: str | None = None,
    coverage: npt.ArrayLike | None = None,
) -> Figure:
    """Write a PNG map of how often each pixel of the domain is covered by a sample (row 0 on top).

    ``table`` needs ``y_start``, ``x_start``, ``y_tile``, ``x_tile``; ``rows`` counts only those
    rows (repeats count again); ``coverage`` is a mask of the pixels with radar data, outlined in
    red, and the title gives the share of it never covered.

    Examples
    --------
    >>> import tempfile
    >>> tiles = pd.DataFrame({"y_start": [0, 64], "x_start": [0, 0], "y_tile": [64, 64],
    ...                       "x_tile": [64, 64]})
    >>> path = Path(tempfile.mkdtemp()) / "density.png"
    >>> yy, xx = np.mgrid[:128, :128]
    >>> radar = (yy - 64) ** 2 + (xx - 64) ** 2 < 60**2
    >>> fig = plot_sample_density(tiles, (128, 128), path, coverage=radar)
    >>> fig.axes[0].get_title()
    '2 samples; 50% of the archive never covered, 51% of the radar coverage (red edge)'

    """
    needed = ("y_start", "x_start", "y_tile", "x_tile")
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ParameterError(
            f"plot_sample_density needs the column(s) {', '.join(missing)}; pass a tiling or "
            "sampling index table"
        )
    if len(domain_shape) != 2 or min(int(domain_shape[0]), int(domain_shape[1])) < 1:
        raise ParameterError(f"domain_shape must be (rows, columns), got {domain_shape!r}")
    shape = (int(domain_shape[0]), int(domain_shape[1]))
    sel = _rows(len(table), rows)
    cols = {c: np.asarray(table[c].to_numpy(), dtype=np.int64)[sel] for c in needed}
    count = _coverage(cols["y_start"], cols["x_start"], cols["y_tile"], cols["x_tile"], shape)
    fig, (ax,) = _new_figure(7.0, 6.0 * shape[0] / max(shape[1], 1) + 0.8)
    positive = count[count > 0]
    norm = LogNorm(vmin=1, vmax=max(int(positive.max()), 2)) if positive.size else None
    image = np.where(count > 0, count, np.nan).astype(np.float64)
    im = ax.imshow(image, origin="upper", cmap="viridis", norm=norm, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="samples covering the pixel")
    ax.set_xlabel("x (column index)")
    ax.set_ylabel("y (row index, row 0 at top)")
    uncovered = float((count == 0).mean())
    default = f"{sel.size} samples; {uncovered:.0%} of the archive never covered"
    if coverage is not None:
        radar = np.asarray(coverage, dtype=bool)
        if radar.shape != shape:
            raise ParameterError(
                f"coverage has shape {radar.shape} but the domain is {shape}; pass the radar "
                "mask of the archive's frames"
            )
        if radar.any() and not radar.all():
            _shade_no_radar(ax, radar)
        missed = float((count[radar] == 0).mean()) if radar.any() else 0.0
        default += f", {missed:.0%} of the radar coverage (red edge)"
    else:
        default += " (white)"
    ax.set_title(title or default, fontsize=9)
    _save(fig, path)
    return fig


def _stacked_hist(
    ax: Any, xs: npt.NDArray[np.float64], ids: npt.NDArray[np.int64], n_bins: int, legend: bool
) -> None:
    """Stacked histogram of ``xs``, one colour per bin id."""
    if not xs.size:
        ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
        return
    import matplotlib

    labels = np.unique(ids)
    lo, hi = float(xs.min()), float(xs.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, max(int(n_bins), 1) + 1)
    cmap = matplotlib.colormaps["viridis"]
    colors = [cmap(i / max(labels.size - 1, 1)) for i in range(labels.size)]
    names = ["all samples" if b < 0 else f"bin {int(b)}" for b in labels]
    ax.hist(
        [xs[ids == b] for b in labels],
        bins=edges,
        stacked=True,
        label=names,
        color=colors,
        histtype="barstacked",
    )
    if legend and 1 < labels.size <= 16:
        ax.legend(fontsize=7, ncols=2)


def plot_samples_over_time(
    table: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    rows: npt.ArrayLike | None = None,
    n_bins: int = 100,
    title: str | None = None,
) -> Figure:
    """Write a PNG of sample start times stacked per bin, over ``time_start`` and ``t_start``.

    Examples
    --------
    >>> import tempfile
    >>> table = pd.DataFrame({"time_start": ["2021-06-12T10:00:00", "2021-07-20T12:00:00"],
    ...                       "t_start": [0, 60], "bin_id": [0, 1]})
    >>> fig = plot_samples_over_time(table, Path(tempfile.mkdtemp()) / "time.png")

    """
    sel = _rows(len(table), rows)
    times: npt.NDArray[Any] | None = None
    if "time_start" in table.columns and len(table):
        parsed = pd.to_datetime(table["time_start"], errors="coerce")
        if parsed.notna().all():
            times = parsed.to_numpy(dtype="datetime64[ns]")[sel]
    has_index = "t_start" in table.columns
    if times is None and not has_index:
        raise ParameterError(
            "plot_samples_over_time needs a time_start or t_start column; pass a tiling or "
            "sampling index table"
        )
    ids = (
        np.asarray(table["bin_id"].to_numpy(), dtype=np.int64)[sel]
        if "bin_id" in table.columns
        else np.full(sel.size, -1, dtype=np.int64)
    )
    n_panels = int(times is not None) + int(has_index)
    fig = Figure(figsize=(11.0, 3.2 * n_panels + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    panel = 1
    if times is not None:
        import matplotlib.dates as mdates

        ax = fig.add_subplot(n_panels, 1, panel)
        panel += 1
        _stacked_hist(ax, np.asarray(mdates.date2num(times), dtype=np.float64), ids, n_bins, True)
        ax.xaxis_date()
        ax.set_xlabel("window start time")
        ax.set_ylabel("samples")
    if has_index:
        ax = fig.add_subplot(n_panels, 1, panel)
        xs = np.asarray(table["t_start"].to_numpy(), dtype=np.float64)[sel]
        _stacked_hist(ax, xs, ids, n_bins, times is None)
        ax.set_xlabel("window start (time index; gaps between events closed up)")
        ax.set_ylabel("samples")
    fig.suptitle(title or f"{sel.size} samples over time", fontsize=9)
    _save(fig, path)
    return fig


def _as_numpy(x: Any) -> npt.NDArray[Any]:
    """Convert an array or CPU/GPU tensor to numpy (duck-typed: no torch import here)."""
    if hasattr(x, "detach"):
        x = x.detach()
    if hasattr(x, "cpu"):
        x = x.cpu()
    return np.asarray(x)


def _frames(x: Any, index: int) -> npt.NDArray[np.float64]:
    """One sample of a batch as ``[time, y, x]`` (channel axes of size 1 dropped)."""
    arr = _as_numpy(x)
    if arr.ndim >= 4:
        arr = arr[index]
    while arr.ndim > 3:
        ones = [i for i in range(arr.ndim - 2) if arr.shape[i] == 1]
        arr = arr.squeeze(ones[0]) if ones else arr[0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ParameterError(
            f"cannot draw an array of shape {arr.shape}: expected [batch, time, y, x] "
            "(a channel axis of size 1 is allowed)"
        )
    return np.asarray(arr, dtype=np.float64)


def plot_batch_sample(
    batch: Any,
    path: str | os.PathLike[str],
    *,
    index: int = 0,
    max_frames: int = 8,
) -> Path:
    """Write a PNG of one sample of a batch (inputs, then targets) on a shared colour scale.

    ``batch`` is what ``.to_tensor()`` yields: a ``[B, T, y, x]`` tensor, an ``(inputs, targets)``
    tuple or a dict; returns the path written.

    Examples
    --------
    >>> import tempfile
    >>> inputs, targets = np.zeros((2, 4, 32, 32)), np.ones((2, 8, 32, 32))
    >>> plot_batch_sample((inputs, targets), Path(tempfile.mkdtemp()) / "batch.png").suffix
    '.png'

    """
    if isinstance(batch, dict):
        keys = [k for k in ("inputs", "targets") if k in batch] or ["data"]
        if "data" in keys and "data" not in batch:
            raise ParameterError(
                f"batch dict has none of 'data', 'inputs', 'targets' (keys: {sorted(batch)})"
            )
        parts = [(k, _frames(batch[k], index)) for k in keys]
    elif isinstance(batch, tuple):
        names = (
            ["inputs", "targets"] if len(batch) == 2 else [f"part {i}" for i in range(len(batch))]
        )
        parts = [(n, _frames(b, index)) for n, b in zip(names, batch, strict=True)]
    else:
        parts = [("data", _frames(batch, index))]
    shown = []
    for name, frames in parts:
        steps = np.unique(np.linspace(0, frames.shape[0] - 1, min(max_frames, frames.shape[0])))
        shown.append((name, frames, steps.astype(int)))
    finite = np.concatenate([f[np.isfinite(f)] for _, f, _ in shown] or [np.zeros(1)])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    ncols = max(s.size for _, _, s in shown)
    fig = Figure(figsize=(1.9 * ncols + 1.0, 2.0 * len(shown) + 0.5), layout="constrained")
    FigureCanvasAgg(fig)
    image = None
    for r, (name, frames, steps) in enumerate(shown):
        for c, step in enumerate(steps):
            ax = fig.add_subplot(len(shown), ncols, r * ncols + c + 1)
            image = ax.imshow(frames[step], vmin=vmin, vmax=vmax, cmap="viridis", origin="upper")
            ax.set_title(f"{name} t={step}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    if image is not None:
        fig.colorbar(image, ax=fig.axes, shrink=0.8, label="value (as fed to the model)")
    fig.suptitle(f"sample {index} of the batch", fontsize=9)
    p = Path(path)
    _save(fig, p)
    return p


def _candidate_values(folder: Path, meta: dict[str, Any]) -> npt.NDArray[np.float64] | None:
    """The sampler's scalar over every tile of the tiling index beside a sampling index."""
    scalar, tiling_id = meta.get("scalar"), meta.get("tiling_id")
    csv = folder / f"{tiling_id}.samples.csv"
    if not scalar or not tiling_id or not csv.exists():
        return None
    try:
        frame, _ = load_index(csv, columns=[str(scalar)])
    except (IndexFileError, ParameterError):
        return None
    return np.asarray(frame[str(scalar)].to_numpy(dtype=np.float64))


def _radar_mask(
    source: Any, shape: tuple[int, int], *, required: bool
) -> npt.NDArray[np.bool_] | None:
    """Pixels with data in any of up to 8 frames, or None (unless ``required``)."""
    if not source or not (required or Path(str(source)).exists()):
        return None
    from mlcast_pipes.dataset import open_mlcast

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            da = open_mlcast(str(source))
    except (MLCastPipesError, OSError, ValueError):
        if required:
            raise
        return None
    n = int(da.sizes["time"])
    picks = np.unique(np.linspace(0, n - 1, min(8, n)).astype(int))
    frames = np.asarray(da.isel(time=picks).values)
    mask = np.asarray((~np.isnan(frames)).any(axis=0))
    return mask if mask.shape == shape else None


def _shade_no_radar(ax: Any, radar: npt.NDArray[np.bool_]) -> None:
    """Grey out the pixels without radar data and draw the edge of the coverage in red."""
    ax.imshow(
        np.where(radar, np.nan, 1.0), origin="upper", cmap="Greys", vmin=0.0, vmax=2.0, alpha=0.4,
        interpolation="nearest",
    )  # fmt: skip
    ax.contour(radar.astype(np.float64), levels=[0.5], colors="red", linewidths=0.8)


def _plot_tile_map(
    table: pd.DataFrame,
    shape: tuple[int, int],
    column: str,
    path: Path,
    coverage: npt.NDArray[np.bool_] | None,
) -> None:
    """Map of a statistic averaged over the windows of each tile position (NaN: no tile)."""
    cols = ["y_start", "x_start", "y_tile", "x_tile"]
    means = table.groupby(cols, sort=False)[column].mean().reset_index()
    total = np.zeros(shape)
    count = np.zeros(shape)
    for y0, x0, ny, nx, v in means[[*cols, column]].itertuples(index=False):
        if np.isfinite(v):
            total[int(y0) : int(y0) + int(ny), int(x0) : int(x0) + int(nx)] += v
            count[int(y0) : int(y0) + int(ny), int(x0) : int(x0) + int(nx)] += 1
    with np.errstate(invalid="ignore"):
        image = np.where(count > 0, total / count, np.nan)
    fig, (ax,) = _new_figure(7.0, 6.0 * shape[0] / max(shape[1], 1) + 0.8)
    im = ax.imshow(image, origin="upper", cmap="Blues", vmin=0.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, label=f"{column}, mean over the windows of each tile")
    if coverage is not None and coverage.any() and not coverage.all():
        _shade_no_radar(ax, coverage)
    ax.set_xlabel("x (column index)")
    ax.set_ylabel("y (row index, row 0 at top)")
    ax.set_title(
        f"{len(means)} tile positions, {len(table)} tiles; white: no tile kept"
        + ("; grey: no radar data" if coverage is not None else ""),
        fontsize=9,
    )
    _save(fig, path)


def inspect_index(
    path: str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    epoch: int = 0,
    archive: str | os.PathLike[str] | None = None,
) -> str:
    """Summarise a tiling or sampling index file and write its diagnostic PNGs; returns the report.

    A sampling index gets one epoch's per-bin summary (``seed``, ``epoch``) and its figures; a
    tiling index its size, time range, statistics and coverage figures. ``archive`` (default: the
    path recorded by ``prepare``, when it exists) outlines the radar coverage. Figures go to
    ``out_dir`` (default: beside the index).

    Examples
    --------
    >>> import tempfile
    >>> from mlcast_pipes.indexes.index_csv import write_index
    >>> folder = Path(tempfile.mkdtemp())
    >>> table = pd.DataFrame({"tile_id": [0, 1], "time_start": ["2021-06-12T10:00:00"] * 2,
    ...                       "t_start": [0, 0], "y_start": [0, 0], "x_start": [0, 64],
    ...                       "y_tile": [64, 64], "x_tile": [64, 64], "mean": [0.5, 2.0]})
    >>> meta = write_index(folder / "t.samples.csv", [table], {"kind": "tiling"},
    ...                    columns=list(table.columns))
    >>> print(inspect_index(folder / "t.samples.csv").splitlines()[1])
    tiling index: 2 tiles

    """
    p = Path(path)
    if not p.exists():
        raise IndexFileError(f"no index file at {p}; pass a .samples.csv file")
    out = Path(out_dir) if out_dir is not None else p.parent
    side = sidecar_path(p)
    stem = side.name[: -len(".meta.json")]
    kind = read_sidecar(side).get("kind") if side.exists() else None
    lines = [f"index: {p}"]
    files: list[Path] = []
    meta: dict[str, Any] = {}
    if kind == "sampling":
        idx = load_sampling_index(p)
        table = idx.table
        rows = draw_epoch(table, n_samples=None, seed=seed, epoch=epoch)
        meta = dict(idx.meta)
        lines.append(
            f"sampling index of {meta.get('tiling_id')}: method {meta.get('method')} "
            f"{meta.get('params')}, seed {meta.get('seed')}, n_time_sample "
            f"{meta.get('n_time_sample')}; {len(table)} samples in the pool"
        )
        candidates = _candidate_values(p.parent, meta)
        n_cand = meta.get("n_candidates", meta.get("n_tiles_in_tiling"))
        if n_cand:
            lines.append(
                f"candidates: {n_cand} tiles, {len(table)} in the pool "
                f"(acceptance {len(table) / int(n_cand):.2%})"
            )
        summary = summary_table(table, rows)
        lines.append(f"epoch {epoch} (seed {seed}, {rows.size} draws):")
        lines.append(summary.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        files.append(out / f"{stem}.scalar_histogram.png")
        unbinned = not (np.asarray(table["bin_id"]) >= 0).any()
        plot_scalar_histogram(table, rows, files[-1], all_values=candidates if unbinned else None)
        if not meta.get("shape") and meta.get("tiling_id"):
            tiling_side = p.parent / f"{meta['tiling_id']}.meta.json"
            if tiling_side.exists():
                meta["shape"] = read_sidecar(tiling_side).get("shape")
    else:
        table, meta = load_index(p)
        rows = np.arange(len(table), dtype=np.int64)
        lines.append(f"tiling index: {len(table)} tiles")
        if "time_start" in table.columns and len(table):
            lines.append(
                f"windows start {table['time_start'].min()} .. {table['time_start'].max()}"
            )
        stats = [
            c for c in ("nan_fraction", "mean", "max", "frac_wet", "p99", "imp_s1") if c in table
        ]
        if stats:
            lines.append(table[stats].describe().to_string(float_format=lambda v: f"{v:.4g}"))
    if len(table) and {"y_start", "x_start", "y_tile", "x_tile"} <= set(table.columns):
        recorded = meta.get("shape")
        if isinstance(recorded, list | tuple) and len(recorded) == 3:
            shape = (int(recorded[1]), int(recorded[2]))
            lines.append(f"archive frames: {shape[0]} x {shape[1]} pixels (rows x columns)")
        else:
            shape = (
                int((table["y_start"] + table["y_tile"]).max()),
                int((table["x_start"] + table["x_tile"]).max()),
            )
            lines.append(
                f"archive shape not recorded: the maps span the tiles, up to {shape[0]} x "
                f"{shape[1]} pixels"
            )
        radar = _radar_mask(
            archive if archive is not None else meta.get("source_url"),
            shape,
            required=archive is not None,
        )
        if radar is not None:
            lines.append(f"radar coverage: {radar.mean():.0%} of the pixels hold data")
        files.append(out / f"{stem}.sample_density.png")
        plot_sample_density(table, shape, files[-1], rows=rows, coverage=radar)
        if kind != "sampling" and "frac_wet" in table.columns:
            files.append(out / f"{stem}.tile_wetness.png")
            _plot_tile_map(table, shape, "frac_wet", files[-1], radar)
    if len(table) and ({"time_start", "t_start"} & set(table.columns)):
        files.append(out / f"{stem}.samples_over_time.png")
        plot_samples_over_time(table, files[-1], rows=rows)
    lines.append("figures: " + ", ".join(str(f) for f in files))
    return "\n".join(lines)
