from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlcast_pipes.errors import DatasetError, ParameterError
from mlcast_pipes.tiling import (
    TilingParams,
    tile_grid,
    tiling_id,
    time_windows,
    window_max,
    window_sum,
)

# ------------------------------------------------------------------------------------------------
# parameters
# ------------------------------------------------------------------------------------------------


def test_defaults_and_derived() -> None:
    p = TilingParams()
    assert p.effective_stride == (12, 128, 128)
    assert p.cell_size == (128, 128)
    assert p.columns[-6:] == ["p50", "p90", "p95", "p99", "p999", "imp_s1"]
    q = TilingParams(tile_size=(128, 96), stride=(3, 32, 48))
    assert q.cell_size == (32, 48)
    assert TilingParams.from_dict(q.to_dict()).effective_stride == q.effective_stride
    # lists (e.g. from YAML) are normalised to tuples
    r = TilingParams(tile_size=[64, 64], stride=[1, 32, 32])  # type: ignore[arg-type]
    assert r.tile_size == (64, 64) and r.stride == (1, 32, 32)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"n_time_window": 0}, "n_time_window"),
        ({"tile_size": (0, 128)}, "positive"),
        ({"tile_size": (128,)}, "2 entries"),
        ({"stride": (1, 0, 4)}, "positive"),
        ({"stride": (1, 4)}, "3 entries"),
        ({"max_nan_fraction": 1.5}, "outside [0, 1]"),
        ({"max_nan_fraction": -0.1}, "outside [0, 1]"),
        ({"wet_threshold": -1}, "negative"),
        ({"quantiles": (0.5, 1.5)}, "[0, 1]"),
        ({"importance_scales": (0.0,)}, "positive"),
        ({"n_time_window": 2.5}, "integer"),
        ({"quantiles": (0.5, 0.5)}, "duplicate"),
    ],
)
def test_bad_params(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ParameterError, match="fix") as info:
        TilingParams(**kwargs)  # type: ignore[arg-type]
    assert needle in str(info.value)


def test_validate_for_domain_and_archive() -> None:
    with pytest.raises(ParameterError, match=r"larger than the domain \(y=100, x=300\)"):
        TilingParams(tile_size=(128, 128)).validate_for(50, 100, 300)
    with pytest.raises(ParameterError, match="larger than the archive"):
        TilingParams(n_time_window=12).validate_for(5, 200, 200)
    TilingParams(n_time_window=5, tile_size=(100, 300)).validate_for(5, 100, 300)


def test_tiling_id_default_and_collision_free() -> None:
    assert tiling_id("it_dpc", TilingParams()) == "it_dpc.128x128.12"
    # explicit default stride gives the same id (same tiling)
    assert tiling_id("d", TilingParams(stride=(12, 128, 128))) == "d.128x128.12"
    variants = [
        TilingParams(),
        TilingParams(n_time_window=24),
        TilingParams(tile_size=(256, 256)),
        TilingParams(tile_size=(128, 256)),
        TilingParams(stride=(6, 64, 64)),
        TilingParams(stride=(6, 128, 128)),
        TilingParams(stride=(12, 64, 128)),
        TilingParams(max_nan_fraction=0.1),
        TilingParams(max_nan_fraction=0.0),
        TilingParams(wet_threshold=0.2),
        TilingParams(quantiles=(0.5, 0.99)),
        TilingParams(quantiles=(0.5, 0.9)),
        TilingParams(importance_scales=(1.0, 4.0)),
        TilingParams(importance_scales=(2.0,)),
        TilingParams(max_nan_fraction=0.1, wet_threshold=0.2),
    ]
    ids = [tiling_id("ds", v) for v in variants]
    assert len(set(ids)) == len(ids)
    assert tiling_id("ds", TilingParams(stride=(6, 64, 64))) == "ds.128x128.12.s6x64x64"
    assert tiling_id("ds", TilingParams(max_nan_fraction=0.1)) == "ds.128x128.12.nan0.1"
    assert tiling_id("ds", TilingParams(wet_threshold=0.2)) == "ds.128x128.12.wet0.2"
    weird = tiling_id("a/b c:d", TilingParams())
    assert "/" not in weird and " " not in weird and ":" not in weird


# ------------------------------------------------------------------------------------------------
# time windows
# ------------------------------------------------------------------------------------------------


def _naive_windows(times, n, st, missing=(), cts=None):  # type: ignore[no-untyped-def]
    t = np.asarray(times, dtype="datetime64[ns]")
    reg = np.zeros(len(t), int) if cts is None else (t >= np.datetime64(cts)).astype(int)
    nominal = {}
    for r in set(reg.tolist()):
        d = [t[i + 1] - t[i] for i in range(len(t) - 1) if reg[i] == reg[i + 1] == r]
        nominal[r] = min(d) if d else None
    rejected = []
    for s in range(0, len(t) - n + 1, st):
        idx = list(range(s, s + n))
        ok = len({reg[i] for i in idx}) == 1
        ok = ok and all(t[i + 1] - t[i] == nominal[reg[s]] for i in idx[:-1])
        ok = ok and not any(t[s] < np.datetime64(m) < t[s + n - 1] for m in missing)
        if not ok:
            rejected.append(s)

    def regular(i: int) -> bool:  # link i -> i + 1
        return bool(
            reg[i] == reg[i + 1]
            and t[i + 1] - t[i] == nominal[reg[i]]
            and not any(t[i] < np.datetime64(m) < t[i + 1] for m in missing)
        )

    firsts = [i for i in range(len(t)) if i == 0 or not regular(i - 1)]
    valid = []
    for a, b in zip(firsts, [*firsts[1:], len(t)], strict=True):
        valid += list(range(a, b - n + 1, st))
    return valid, rejected


def test_time_windows_gaps_missing_and_step_change() -> None:
    a = pd.date_range("2020-01-01 00:00", periods=30, freq="15min")
    b = pd.date_range(a[-1] + pd.Timedelta("5min"), periods=40, freq="5min")
    c = pd.date_range(b[-1] + pd.Timedelta("30D"), periods=25, freq="5min")
    times = np.concatenate([a.values, b.values, c.values])
    times = np.delete(times, [80, 81])  # a gap inside the third block
    missing = [c.values[10] + np.timedelta64(150, "s")]  # between two existing steps
    for n, st in [(1, 1), (3, 1), (6, 6), (12, 5), (4, 3)]:
        w = time_windows(
            times, n, st, missing_times=np.array(missing), consistent_timestep_start=b[0]
        )
        valid, rejected = _naive_windows(times, n, st, missing, cts=b[0])
        assert w.valid_starts.tolist() == valid
        assert w.starts[w.reason != 0].tolist() == rejected
        assert w.counts()["candidates"] == len(valid) + len(rejected)
    w = time_windows(times, 3, 1, consistent_timestep_start=b[0])
    assert w.regimes[0]["step_s"] == 900 and w.regimes[1]["step_s"] == 300
    # window spanning the regime change is a step change
    span = np.flatnonzero(w.starts == 28)[0]
    assert w.reason[span] == 2
    # without the attr the nominal step is 5 min: 15-min windows are gaps
    w2 = time_windows(times, 3, 1)
    assert np.all(w2.reason[:28] == 1)


def test_windows_restart_after_each_gap() -> None:
    """Three events of 6, 8 and 8 steps: a lattice over the whole axis fits 3 windows of 4, the
    events hold 5 (1 + 2 + 2); every one of them is kept, each event's from its first step."""
    step = np.timedelta64(10, "m")
    t0 = np.datetime64("2021-06-01T00:00")
    events = [
        t0 + np.arange(k) * step + np.timedelta64(40 * j, "D") for j, k in enumerate([6, 8, 8])
    ]
    times = np.concatenate(events)
    w = time_windows(times, 4, 4)
    assert w.valid_starts.tolist() == [0, 6, 10, 14, 18]
    global_lattice = [
        s for s in range(0, times.size - 3, 4) if np.all(np.diff(times[s : s + 4]) == step)
    ]
    assert global_lattice == [0, 8, 16]  # what a global lattice would keep
    # the lattice windows that cross a gap are reported as rejected
    assert w.counts() == {
        "candidates": 7,
        "valid": 5,
        "gap": 2,
        "step_change": 0,
        "missing_time": 0,
    }
    # with a stride of 2 every segment restarts as well
    assert time_windows(times, 4, 2).valid_starts.tolist() == [0, 2, 6, 8, 10, 14, 16, 18]


def test_frames_needed_and_validation() -> None:
    times = pd.date_range("2021-01-01", periods=10, freq="10min").values
    w = time_windows(np.delete(times, 4), 3, 3)
    assert w.valid_starts.tolist() == [0, 4]  # the second segment's lattice starts at 4
    assert w.frames_needed().tolist() == [0, 1, 2, 4, 5, 6]
    with pytest.raises(DatasetError, match="strictly increasing"):
        time_windows(times[::-1], 2, 1)
    with pytest.raises(DatasetError, match="datetime64"):
        time_windows(np.array(["a", "b"], dtype=object), 1, 1)


# ------------------------------------------------------------------------------------------------
# grid, window reductions
# ------------------------------------------------------------------------------------------------


def test_tile_grid() -> None:
    g = tile_grid(100, 70, TilingParams(tile_size=(32, 16), stride=(1, 16, 24)))
    assert g.y_starts.tolist() == [0, 16, 32, 48, 64]
    assert g.x_starts.tolist() == [0, 24, 48]
    assert g.cell == (16, 8) and g.crop == (96, 64) and g.n_cells == (6, 8)
    with pytest.raises(ParameterError, match="common"):
        tile_grid(2000, 2000, TilingParams(tile_size=(128, 128), stride=(1, 1, 1)))


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_window_sum_max_match_naive(k: int) -> None:
    rng = np.random.default_rng(k)
    a = rng.integers(0, 50, size=(23, 4, 3)).astype(np.int32)
    f = rng.random((23, 4, 3)).astype(np.float32)
    for starts in (
        np.arange(0, 23 - k + 1, 1),
        np.arange(0, 23 - k + 1, k),
        np.array([0, k + 2, 23 - k]),
        np.array([3]),
    ):
        exp_s = np.stack([a[s : s + k].sum(0) for s in starts])
        exp_m = np.stack([f[s : s + k].max(0) for s in starts])
        np.testing.assert_array_equal(window_sum(a, starts, k), exp_s)
        np.testing.assert_array_equal(window_max(f, starts, k), exp_m)
        np.testing.assert_allclose(
            window_sum(np.moveaxis(f, 0, 1), starts, k, axis=1),
            np.moveaxis(np.stack([f[s : s + k].sum(0) for s in starts]), 0, 1),
            rtol=1e-6,
        )


def test_tiling_params_round_trip_equal() -> None:
    """Parameters rebuilt from the sidecar dict equal the originals, default stride included."""
    for params in (
        TilingParams(n_time_window=4, tile_size=(32, 32)),
        TilingParams(n_time_window=4, tile_size=(32, 32), stride=(4, 32, 32)),
        TilingParams(n_time_window=4, tile_size=(32, 32), stride=(2, 16, 16)),
    ):
        again = TilingParams.from_dict(params.to_dict())
        assert again == params and hash(again) == hash(params)
    assert TilingParams(stride=(12, 128, 128)) == TilingParams()
    assert TilingParams(stride=(12, 128, 128)).stride is None


def test_clip_max_in_id_and_sidecar() -> None:
    assert tiling_id("ds", TilingParams()) == "ds.128x128.12"  # default ids unchanged
    assert tiling_id("ds", TilingParams(clip_max=300)) == "ds.128x128.12"
    assert tiling_id("ds", TilingParams(clip_max=150.0)) == "ds.128x128.12.clip150"
    assert tiling_id("ds", TilingParams(clip_max=None)) == "ds.128x128.12.clipnone"
    for clip in (None, 120.5, 300.0):
        params = TilingParams(clip_max=clip)
        assert params.to_dict()["clip_max"] == clip
        assert TilingParams.from_dict(params.to_dict()) == params
    assert "clip_count" in TilingParams().columns
    with pytest.raises(ParameterError, match="clip_max"):
        TilingParams(clip_max=0)
