"""The tile grid of an archive and its valid time windows.

Which (y, x) tiles exist and which time windows are complete and regular.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from mlcast_pipes.errors import DatasetError, ParameterError
from mlcast_pipes.tiling.params import TilingParams

__all__ = ["REJECT_REASONS", "TileGrid", "TimeWindows", "tile_grid", "time_windows"]


#: Rejection reasons of candidate windows (code -> name); 0 means valid.
REJECT_REASONS: dict[int, str] = {1: "gap", 2: "step_change", 3: "missing_time"}
_MAX_CELLS = 40_000


# ================================================================================================
# time windows
# ================================================================================================
@dataclass(frozen=True)
class TimeWindows:
    """Candidate time windows on the stride lattice and why each is (in)valid.

    ``reason`` is 0 for a valid window, else a key of :data:`REJECT_REASONS`; ``regimes`` has one
    dict per time-step regime (``start``, ``step_s``, ``n_frames``).

    Examples
    --------
    >>> times = np.datetime64("2024-05-01T00:00") + np.arange(10) * np.timedelta64(5, "m")
    >>> time_windows(np.delete(times, 6), 3, 2).frames_needed().tolist()  # frame 5: never read
    [0, 1, 2, 3, 4, 6, 7, 8]

    """

    starts: npt.NDArray[np.intp]
    reason: npt.NDArray[np.int8]
    n_time_window: int
    regimes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def valid_starts(self) -> npt.NDArray[np.intp]:
        """Start indices of the valid windows."""
        out: npt.NDArray[np.intp] = self.starts[self.reason == 0]
        return out

    @property
    def n_valid(self) -> int:
        """Number of valid windows."""
        return int(np.count_nonzero(self.reason == 0))

    def counts(self) -> dict[str, int]:
        """Count candidate windows per outcome: ``candidates``, ``valid`` and each reason."""
        out = {"candidates": int(self.starts.size), "valid": self.n_valid}
        for code, name in REJECT_REASONS.items():
            out[name] = int(np.count_nonzero(self.reason == code))
        return out

    def frames_needed(self) -> npt.NDArray[np.intp]:
        """Sorted time indices covered by at least one valid window (the only frames read)."""
        starts = self.valid_starts
        if starts.size == 0:
            return np.zeros(0, dtype=np.intp)
        n = self.n_time_window
        length = int(starts[-1]) + n
        mark = np.zeros(length + 1, dtype=np.int32)
        np.add.at(mark, starts, 1)
        np.add.at(mark, starts + n, -1)
        covered: npt.NDArray[np.intp] = np.flatnonzero(np.cumsum(mark[:length]) > 0)
        return covered


def _to_ns(values: Any, what: str) -> npt.NDArray[np.int64]:
    arr = np.asarray(values)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.datetime64):
        try:
            arr = arr.astype("datetime64[ns]")
        except (TypeError, ValueError) as exc:
            raise DatasetError(
                f"{what} must be datetime64 values (got dtype {arr.dtype}); fix: decode times "
                "with xarray (decode_times=True) or pass numpy datetime64 values"
            ) from exc
    return arr.astype("datetime64[ns]").astype(np.int64).ravel()


def time_windows(
    times: npt.ArrayLike,
    n_time_window: int,
    t_stride: int,
    *,
    missing_times: npt.ArrayLike | None = None,
    consistent_timestep_start: Any = None,
) -> TimeWindows:
    """Valid windows of each regular segment, and the archive-wide candidates that cross a break.

    A segment is a run of frames one step apart with no ``missing_times``; its windows start at
    its first step and every ``t_stride`` steps after. Raises DatasetError if ``times`` are not
    increasing datetime64.

    Examples
    --------
    >>> times = np.datetime64("2024-05-01T00:00") + np.arange(10) * np.timedelta64(5, "m")
    >>> windows = time_windows(np.delete(times, 6), n_time_window=3, t_stride=2)
    >>> windows.starts.tolist(), windows.reason.tolist()  # the window at 4 crosses the gap
    ([0, 2, 4, 6], [0, 0, 1, 0])

    """
    t = _to_ns(times, "the time coordinate")
    n = int(n_time_window)
    total = t.size
    diffs = np.diff(t)
    if diffs.size and np.any(diffs <= 0):
        i = int(np.flatnonzero(diffs <= 0)[0])
        raise DatasetError(
            f"time coordinate is not strictly increasing (index {i} -> {i + 1}: "
            f"{np.datetime64(int(t[i]), 'ns')} -> {np.datetime64(int(t[i + 1]), 'ns')}); fix: sort "
            "the archive by time and drop duplicate timestamps"
        )
    regime = np.zeros(total, dtype=np.int8)
    if consistent_timestep_start is not None and total:
        cts = _to_ns(np.asarray([consistent_timestep_start]), "consistent_timestep_start")[0]
        regime = (t >= cts).astype(np.int8)
    regimes: list[dict[str, Any]] = []
    nominal = np.zeros(2, dtype=np.int64)
    same = regime[:-1] == regime[1:] if total > 1 else np.zeros(0, dtype=bool)
    for rg in (0, 1):
        members = np.flatnonzero(regime == rg)
        if members.size == 0:
            continue
        d = diffs[same & (regime[:-1] == rg)] if diffs.size else diffs
        step = int(d.min()) if d.size else 0
        nominal[rg] = step
        regimes.append(
            {
                "start": str(np.datetime_as_string(np.datetime64(int(t[members[0]]), "ns"), "s")),
                "step_s": (step / 1e9) if step else None,
                "n_frames": int(members.size),
            }
        )
    mt = np.sort(_to_ns(missing_times if missing_times is not None else [], "missing_times"))
    # a link i -> i + 1 is regular when both frames share a regime, are the regime's nominal step
    # apart and no missing time lies between them; regular segments are runs of regular links
    good = same & (diffs == nominal[regime[:-1]]) if diffs.size else np.zeros(0, dtype=bool)
    if mt.size and diffs.size:
        between = np.searchsorted(mt, t[1:], "left") - np.searchsorted(mt, t[:-1], "right")
        good &= between <= 0
    st = int(t_stride)
    # candidates of the archive-wide lattice that cross a break are kept as rejected (reported)
    lattice = np.arange(0, max(total - n + 1, 0), st, dtype=np.intp)
    reason_l = np.zeros(lattice.size, dtype=np.int8)
    if lattice.size and n > 1:
        bad_cum = np.concatenate([[0], np.cumsum(~good)])
        ends = lattice + n - 1
        has_gap = (bad_cum[ends] - bad_cum[lattice]) > 0
        step_change = regime[lattice] != regime[ends]
        if mt.size:
            inside = np.searchsorted(mt, t[ends], "left") - np.searchsorted(mt, t[lattice], "right")
            reason_l[inside > 0] = 3
        reason_l[has_gap] = 1
        reason_l[step_change] = 2
    # valid candidates: each regular segment's own lattice, from its first step, so that no
    # window that fits in a segment is lost after a gap
    seg_first = np.concatenate([[0], np.flatnonzero(~good) + 1]).astype(np.intp)
    seg_end = np.concatenate([seg_first[1:], [total]]).astype(np.intp)  # exclusive
    valid_parts = (
        [
            np.arange(a, b - n + 1, st, dtype=np.intp)
            for a, b in zip(seg_first, seg_end, strict=True)
        ]
        if total
        else []
    )
    valid = np.concatenate(valid_parts) if valid_parts else np.zeros(0, dtype=np.intp)
    rejected = lattice[reason_l != 0]
    starts = np.concatenate([valid, rejected]).astype(np.intp)
    reason = np.concatenate([np.zeros(valid.size, np.int8), reason_l[reason_l != 0]])
    order = np.argsort(starts, kind="stable")
    starts, reason = starts[order], reason[order]
    return TimeWindows(starts=starts, reason=reason, n_time_window=n, regimes=regimes)


# ================================================================================================
# spatial grid
# ================================================================================================
@dataclass(frozen=True)
class TileGrid:
    """Spatial tile positions and the cells (``cell`` pixels each) of the partial statistics.

    Examples
    --------
    >>> from mlcast_pipes.tiling import TilingParams
    >>> grid = tile_grid(64, 100, TilingParams(n_time_window=1, tile_size=(32, 32)))
    >>> grid.n_tiles, grid.crop, grid.n_cells  # 4 pixel columns are left out
    (6, (64, 96), (2, 3))

    """

    height: int
    width: int
    tile: tuple[int, int]
    stride: tuple[int, int]
    cell: tuple[int, int]
    y_starts: npt.NDArray[np.intp]
    x_starts: npt.NDArray[np.intp]

    @property
    def n_tiles(self) -> int:
        """Number of spatial tile positions."""
        return int(self.y_starts.size * self.x_starts.size)

    @property
    def crop(self) -> tuple[int, int]:
        """Extent ``(h, w)`` of the region covered by tiles."""
        return (
            int(self.y_starts[-1]) + self.tile[0],
            int(self.x_starts[-1]) + self.tile[1],
        )

    @property
    def n_cells(self) -> tuple[int, int]:
        """Number of cells ``(y, x)``."""
        h, w = self.crop
        return (h // self.cell[0], w // self.cell[1])

    @property
    def cells_per_tile(self) -> tuple[int, int]:
        """Cells per tile ``(k_y, k_x)``."""
        return (self.tile[0] // self.cell[0], self.tile[1] // self.cell[1])


def tile_grid(height: int, width: int, params: TilingParams) -> TileGrid:
    """Tile grid ``range(0, H - ty + 1, sy) x range(0, W - tx + 1, sx)``.

    Raises ParameterError if the tile does not fit the domain or the cells get too small.

    Examples
    --------
    >>> from mlcast_pipes.tiling import TilingParams
    >>> params = TilingParams(n_time_window=2, tile_size=(32, 32), stride=(2, 16, 16))
    >>> grid = tile_grid(100, 150, params)
    >>> grid.y_starts.tolist(), grid.n_tiles, grid.cells_per_tile
    ([0, 16, 32, 48, 64], 40, (2, 2))

    """
    ty, tx = params.tile_size
    if ty > height or tx > width:
        raise ParameterError(
            f"tile_size ({ty}, {tx}) is larger than the domain (y={height}, x={width}); "
            f"fix: use a tile_size of at most ({height}, {width})"
        )
    _, sy, sx = params.effective_stride
    grid = TileGrid(
        height=int(height),
        width=int(width),
        tile=(ty, tx),
        stride=(sy, sx),
        cell=params.cell_size,
        y_starts=np.arange(0, height - ty + 1, sy, dtype=np.intp),
        x_starts=np.arange(0, width - tx + 1, sx, dtype=np.intp),
    )
    ncy, ncx = grid.n_cells
    if ncy * ncx > _MAX_CELLS:
        cy, cx = grid.cell
        raise ParameterError(
            f"tile_size {params.tile_size} with spatial stride ({sy}, {sx}) share only a "
            f"{cy}x{cx}-pixel common cell, i.e. {ncy * ncx} cells per frame (at most "
            f"{_MAX_CELLS}); "
            "fix: use a spatial stride that divides the tile size or shares a larger common "
            "factor with it (e.g. stride 16, 32 or 64 for 128-pixel tiles)"
        )
    return grid
