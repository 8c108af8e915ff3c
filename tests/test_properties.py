"""Property-based tests: tiling over random archives, epoch sharding, filename-safe ids.

Archives are built in memory: random time axes (gaps, a change of step, missing_times), random
NaN patterns, random tile sizes and strides. The index must equal a plain numpy computation, no
kept tile may cross a gap or exceed the NaN threshold, and every epoch plan must deliver each
row exactly once across any number of shards.
"""

from __future__ import annotations

import itertools
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mlcast_pipes.epochs import Shard, combine_shards, even_size, plan_shard
from mlcast_pipes.errors import ParameterError
from mlcast_pipes.indexes.format import index_paths
from mlcast_pipes.indexes.format import sanitize_id as dataset_sanitize_id
from mlcast_pipes.indexes.format import sanitize_id as index_sanitize_id
from mlcast_pipes.indexes.tiling import prepare_tiling
from mlcast_pipes.tiling import TilingParams, tiling_id

pytestmark = pytest.mark.timeout(300)

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
BASE = np.datetime64("2021-06-01T00:00", "ns")
MINUTE = np.timedelta64(60_000_000_000, "ns")


# --------------------------------------------------------------------------------------------
# random archives
# --------------------------------------------------------------------------------------------


@st.composite
def time_axes(draw: st.DrawFn) -> dict[str, Any]:
    """Strictly increasing times with gaps, maybe a change of step, and missing_times."""
    n_t = draw(st.integers(2, 28))
    step = draw(st.sampled_from([5, 10]))
    change = draw(st.one_of(st.none(), st.integers(1, n_t - 1)))
    first_step = draw(st.sampled_from([step, 3 * step])) if change is not None else step
    gaps = st.sampled_from([1, 1, 1, 1, 1, 1, 2, 3, 40])
    minutes = [0]
    for i in range(1, n_t):
        regime_step = first_step if change is not None and i < change else step
        if change is not None and i == change:
            minutes.append(minutes[-1] + draw(st.sampled_from([step, first_step, 7 * step])))
        else:
            minutes.append(minutes[-1] + draw(gaps) * regime_step)
    times = BASE + np.asarray(minutes, dtype=np.int64) * MINUTE
    holes: set[int] = set()
    for a, b in itertools.pairwise(minutes):
        holes.update(range(a + step, b, step))  # nominal instants absent from the axis
    holes -= set(minutes)
    picks = draw(st.lists(st.sampled_from(sorted(holes)), max_size=4, unique=True)) if holes else []
    # also absent instants between two regular frames, before the start and after the end
    extra = draw(
        st.lists(
            st.sampled_from([minutes[0] - step, minutes[-1] + step, minutes[n_t // 2] + 1]),
            max_size=2,
            unique=True,
        )
    )
    missing_minutes = sorted(set(picks + extra) - set(minutes))
    missing = BASE + np.asarray(missing_minutes, dtype=np.int64) * MINUTE
    cts = None if change is None else times[change]
    return {"times": times, "missing": missing.astype("datetime64[ns]"), "cts": cts}


@st.composite
def archives(draw: st.DrawFn) -> dict[str, Any]:
    axis = draw(time_axes())
    n_t = axis["times"].size
    h, w = draw(st.integers(3, 18)), draw(st.integers(3, 18))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.gamma(0.4, 3.0, (n_t, h, w)).astype(np.float32)
    x[x < 0.3] = 0.0
    x[rng.random(x.shape) < 0.03] = -1.0  # negative values count as dry
    pattern = draw(st.sampled_from(["none", "sprinkle", "frames", "block", "circle", "all"]))
    if pattern == "sprinkle":
        x[rng.random(x.shape) < draw(st.sampled_from([0.02, 0.2, 0.6]))] = np.nan
    elif pattern == "frames":
        x[rng.random(n_t) < 0.3] = np.nan
    elif pattern == "block":
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        x[:, y0 : y0 + rng.integers(1, h + 1), x0 : x0 + rng.integers(1, w + 1)] = np.nan
    elif pattern == "circle":  # outside a radar circle
        yy, xx = np.mgrid[0:h, 0:w]
        x[:, (yy - h / 2) ** 2 + (xx - w / 2) ** 2 > (min(h, w) / 2) ** 2] = np.nan
    elif pattern == "all":
        x[:] = np.nan
    return {**axis, "data": x}


@st.composite
def tiling_params(draw: st.DrawFn, n_t: int, h: int, w: int) -> TilingParams:
    n = draw(st.integers(1, min(n_t, 6)))
    ty, tx = draw(st.integers(1, h)), draw(st.integers(1, w))
    stride = draw(
        st.one_of(
            st.none(),
            st.tuples(st.integers(1, n + 1), st.integers(1, ty + 2), st.integers(1, tx + 2)),
        )
    )
    return TilingParams(
        n_time_window=n,
        tile_size=(ty, tx),
        stride=stride,
        max_nan_fraction=draw(st.sampled_from([0.0, 0.05, 0.3, 0.5, 1.0])),
        wet_threshold=draw(st.sampled_from([0.0, 0.1, 1.0])),
        quantiles=(0.5,),
        clip_max=draw(st.sampled_from([None, 2.0, 300.0])),
    )


def _naive(arc: dict[str, Any], params: TilingParams) -> tuple[pd.DataFrame, int, int]:
    """Loop over every candidate window and position with plain numpy."""
    x, t, missing, cts = arc["data"], arc["times"], arc["missing"], arc["cts"]
    n, (ty, tx) = params.n_time_window, params.tile_size
    st_, sy, sx = params.effective_stride
    n_t, h, w = x.shape
    regime = np.zeros(n_t, int) if cts is None else (t >= cts).astype(int)
    nominal = {}
    for g in np.unique(regime):
        d = [t[i + 1] - t[i] for i in range(n_t - 1) if regime[i] == regime[i + 1] == g]
        nominal[g] = min(d) if d else None
    positions = [(y0, x0) for y0 in range(0, h - ty + 1, sy) for x0 in range(0, w - tx + 1, sx)]
    rows, gap, nan_rejected = [], 0, 0
    for s in range(0, n_t - n + 1, st_):
        e = s + n - 1
        valid = all(regime[i] == regime[s] for i in range(s, e + 1))
        valid = valid and all(t[i + 1] - t[i] == nominal[regime[s]] for i in range(s, e))
        valid = valid and not any(t[s] < m < t[e] for m in missing)
        if not valid:
            gap += len(positions)
    # valid windows: each regular segment's own lattice, from its first step
    firsts = [
        i
        for i in range(n_t)
        if i == 0
        or regime[i] != regime[i - 1]
        or t[i] - t[i - 1] != nominal[regime[i]]
        or any(t[i - 1] < m < t[i] for m in missing)
    ]
    starts = [
        s for a, b in zip(firsts, [*firsts[1:], n_t], strict=True) for s in range(a, b - n + 1, st_)
    ]
    for s in starts:
        e = s + n - 1
        for y0, x0 in positions:
            cube = x[s : e + 1, y0 : y0 + ty, x0 : x0 + tx]
            nan_count = int(np.isnan(cube).sum())
            if nan_count / cube.size > params.max_nan_fraction:
                nan_rejected += 1
                continue
            v = cube[~np.isnan(cube)].astype(np.float64)
            cap = np.inf if params.clip_max is None else params.clip_max
            rate = np.minimum(np.maximum(v, 0.0), cap)
            wet = cube[~np.isnan(cube)] > np.float32(params.wet_threshold)
            rows.append(
                {
                    "t_start": s,
                    "y_start": y0,
                    "x_start": x0,
                    "nan_count": nan_count,
                    "nan_fraction": nan_count / cube.size,
                    "sum": rate.sum(),
                    "mean": rate.mean() if v.size else np.nan,
                    "max": rate.max() if v.size else np.nan,
                    "frac_wet": wet.mean() if v.size else np.nan,
                    "clip_count": int((v > cap).sum()),
                }
            )
    columns = ["t_start", "y_start", "x_start", "nan_count", "nan_fraction", "sum", "mean"]
    columns += ["max", "frac_wet", "clip_count"]
    return pd.DataFrame(rows, columns=columns), gap, nan_rejected


def _check_no_tile_crosses_a_gap(arc: dict[str, Any], table: pd.DataFrame, n: int) -> None:
    """Each kept window: one regime, one step (its regime's smallest), no missing time inside."""
    t, cts, missing = arc["times"], arc["cts"], arc["missing"]
    for s in np.unique(table["t_start"].to_numpy()):
        span = t[s : s + n]
        assert span.size == n
        if cts is not None:
            assert (span[0] >= cts) == (span[-1] >= cts)
        if cts is None:
            regime = t
        elif span[0] >= cts:
            regime = t[t >= cts]
        else:
            regime = t[t < cts]
        if n > 1:
            steps = np.diff(span.view(np.int64))
            assert set(steps.tolist()) == {int(np.diff(regime.view(np.int64)).min())}
        assert not ((span[0] < missing) & (missing < span[-1])).any()


@SETTINGS
@given(data=st.data(), arc=archives())
def test_tiling_index_equals_naive_numpy(data: st.DataObject, arc: dict[str, Any]) -> None:
    n_t, h, w = arc["data"].shape
    params = data.draw(tiling_params(n_t, h, w))
    block_frames = data.draw(st.sampled_from([1, 2, 5, 512]))
    da = xr.DataArray(arc["data"], dims=("time", "y", "x"), coords={"time": arc["times"]})
    naive, gap, nan_rejected = _naive(arc, params)
    with tempfile.TemporaryDirectory() as folder:
        try:
            index = prepare_tiling(
                da,
                params,
                folder,
                dataset_id="prop",
                fingerprint="fp",
                missing_times=arc["missing"],
                consistent_timestep_start=arc["cts"],
                block_frames=block_frames,
            )
            table = index.table
        except ParameterError as exc:
            assert "no valid tile" in str(exc)
            assert naive.empty
            event("no valid tile")
            return
    assert not naive.empty
    event("tiles kept, some rejected for gaps" if gap else "tiles kept, no gap rejection")
    event("some rejected for NaN" if nan_rejected else "none rejected for NaN")
    assert index.rejected == {"gap": gap, "nan": nan_rejected}
    assert table["tile_id"].tolist() == list(range(len(table)))
    # kept tiles, in (time, y, x) order, and their statistics
    for c in ("t_start", "y_start", "x_start", "nan_count", "clip_count"):
        np.testing.assert_array_equal(table[c].to_numpy(), naive[c].to_numpy(), err_msg=c)
    for c in ("nan_fraction", "sum", "mean", "max", "frac_wet"):
        np.testing.assert_allclose(
            table[c].to_numpy(np.float64), naive[c].to_numpy(np.float64), rtol=1e-5, atol=1e-6
        )
    # the properties themselves, checked on the index alone
    assert (table["nan_fraction"] <= params.max_nan_fraction + 1e-7).all()
    npix = params.n_time_window * params.tile_size[0] * params.tile_size[1]
    assert (table["nan_count"] <= params.max_nan_fraction * npix + 1e-9).all()
    _check_no_tile_crosses_a_gap(arc, table, params.n_time_window)
    ts = table["time_start"].to_numpy().astype("datetime64[ns]")
    np.testing.assert_array_equal(ts, arc["times"][table["t_start"].to_numpy()])


# --------------------------------------------------------------------------------------------
# epoch plans: exactly once across any number of shards
# --------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    keys=st.lists(st.integers(0, 25), max_size=200),
    n_ranks=st.integers(1, 4),
    n_workers=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
    epoch=st.integers(0, 1000),
)
def test_plan_shard_is_exactly_once(
    keys: list[int], n_ranks: int, n_workers: int, seed: int, epoch: int
) -> None:
    arr = np.asarray(keys, dtype=np.int64)
    shards = [
        combine_shards({2: (n_ranks, rank), 3: (n_workers, worker)})
        for rank in range(n_ranks)
        for worker in range(n_workers)
    ]
    count = n_ranks * n_workers
    assert sorted(s.index for s in shards) == list(range(count))
    assert {s.count for s in shards} == {count}
    delivered: list[int] = []
    sizes = []
    for shard in shards:
        groups = plan_shard(arr, seed=seed, epoch=epoch, shard=shard)
        again = plan_shard(
            arr, seed=seed, epoch=epoch, shard=Shard(shard.count, shard.index, shard.ranks)
        )
        assert [g.tolist() for g in groups] == [g.tolist() for g in again]  # deterministic
        for g in groups:  # positions >= arr.size: padding copies that even out the ranks
            assert g.size > 0 and len(set(arr[g % arr.size].tolist())) == 1  # one read window
        rows = [int(r) for g in groups for r in g]
        delivered += rows
        sizes.append(len(rows))
    real = [r for r in delivered if r < arr.size]
    assert sorted(real) == list(range(arr.size))  # every row exactly once
    assert len(delivered) == even_size(arr.size, n_ranks)  # plus padding to equal ranks
    per_rank = [sum(sizes[r * n_workers : (r + 1) * n_workers]) for r in range(n_ranks)]
    assert len(set(per_rank)) == 1  # every rank the same number of records
    if arr.size:
        largest = max(np.bincount(arr).max(), 1)
        assert max(sizes) - min(sizes) <= largest  # balanced up to one read window


# --------------------------------------------------------------------------------------------
# ids never leave the index folder
# --------------------------------------------------------------------------------------------

_SAFE = re.compile(r"^[A-Za-z0-9_.\-]+$")


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=200))
def test_ids_stay_inside_the_index_folder(text: str) -> None:
    folder = Path(tempfile.gettempdir()) / "mlcast-prop-index"
    did = dataset_sanitize_id(text)
    assert _SAFE.match(did) and not did.startswith(".") and ".." not in did
    assert len(did) <= 120 and dataset_sanitize_id(did) == did
    params = TilingParams(n_time_window=2, tile_size=(4, 4))
    for raw in (did, text):
        try:
            tid = tiling_id(raw, params)
        except ParameterError:
            assert raw == text  # only raw text with nothing usable is refused, never a clean id
            continue
        csv, side = index_paths(folder, tid)
        for path in (csv, side):
            assert path.parent == folder and path.resolve().parent == folder.resolve()
            assert not path.name.startswith(".") and "/" not in path.name
            assert "\\" not in path.name and "\x00" not in path.name
    try:
        cleaned = index_sanitize_id(text)
    except ParameterError:
        return
    assert cleaned not in ("", ".", "..") and not cleaned.startswith(".")
    assert _SAFE.match(cleaned)
