"""Tests of mlcast_pipes.tiling's statistics: histogram bins, quantiles, importance, kernels."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mlcast_pipes.tiling import (
    HIST_LOG_EDGES,
    N_BINS,
    KernelSpec,
    TilingParams,
    frame_partials,
    hist_bin,
    hist_importance,
    hist_quantiles,
    importance_weights,
    iter_tile_statistics,
    time_windows,
)

# ------------------------------------------------------------------------------------------------
# histogram statistics
# ------------------------------------------------------------------------------------------------


def test_hist_bins_edges() -> None:
    v = np.array([-1.0, 0.0, 1e-5, 0.0099, 0.01, 0.1, 0.11, 1.0, 999.0, 1000.0, 8600.0])
    b = hist_bin(v)
    assert b.tolist()[:5] == [0, 0, 1, 1, 2]
    assert b[-1] == b[-2] == N_BINS - 1
    for val, bi in zip(v[4:-2], b[4:-2], strict=True):
        assert HIST_LOG_EDGES[bi - 2] <= val * (1 + 1e-9)
        assert val < HIST_LOG_EDGES[bi - 1] * (1 + 1e-9)


def _hist_of(values: np.ndarray) -> np.ndarray:
    return np.bincount(hist_bin(values), minlength=N_BINS)


def test_quantiles_within_one_bin() -> None:
    rng = np.random.default_rng(3)
    qs = (0.1, 0.5, 0.9, 0.95, 0.99, 0.999)
    for case in range(6):
        n = int(rng.integers(50, 5000))
        v = rng.lognormal(mean=rng.normal(0, 1), sigma=1.5, size=n)
        v[rng.random(n) < rng.random()] = 0.0
        if case == 5:
            v[:3] = 5000.0  # clutter in the overflow bin
        est = hist_quantiles(_hist_of(v)[None], np.array([v.max()]), qs)[0]
        for q, e in zip(qs, est, strict=True):
            lo = np.quantile(v, q, method="lower")
            hi = np.quantile(v, q, method="higher")
            be = hist_bin([e])[0]
            assert hist_bin([lo])[0] - 1 <= be <= hist_bin([hi])[0] + 1, (case, q, e, lo, hi)
            assert e <= v.max() + 1e-12
    # all dry, no valid pixel
    out = hist_quantiles(
        np.zeros((2, N_BINS), int) + np.eye(1, N_BINS, 0, dtype=int) * [[5], [0]],
        np.array([0.0, np.nan]),
        (0.5,),
    )
    assert out[0, 0] == 0 and np.isnan(out[1, 0])


def test_importance_from_histogram_close_to_exact() -> None:
    rng = np.random.default_rng(5)
    scales = (0.5, 1.0, 4.0)
    w = importance_weights(scales)
    for _ in range(5):
        v = rng.lognormal(0, 1.5, 3000)
        v[rng.random(3000) < 0.6] = 0
        est = hist_importance(_hist_of(v)[None], w)[0]
        exact = [np.mean(1 - np.exp(-v / s)) for s in scales]
        np.testing.assert_allclose(est, exact, atol=3e-3)


# ------------------------------------------------------------------------------------------------
# per-frame kernel
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cy", "cx"), [(8, 8), (4, 6), (16, 5)])
def test_frame_partials_match_naive(cy: int, cx: int) -> None:
    rng = np.random.default_rng(cy * cx)
    h, w = 35, 33
    ncy, ncx = h // cy, w // cx
    block = rng.gamma(0.4, 3.0, (3, h, w)).astype(np.float32)
    block[block < 0.3] = 0.0
    block[0, :10, :10] = np.nan
    block[1] = np.nan  # all-NaN frame
    block[2, 5, 5] = -2.0  # negative rates count as dry
    block[2, 6, 6] = 5000.0  # clutter
    spec = KernelSpec(h, w, cy, cx, ncy, ncx, 0.1, None)
    out = frame_partials(block, spec)
    for f, (i, j) in itertools.product(range(3), itertools.product(range(ncy), range(ncx))):
        c = i * ncx + j
        cell = block[f, i * cy : (i + 1) * cy, j * cx : (j + 1) * cx]
        valid = cell[~np.isnan(cell)]
        clipped = np.maximum(valid, 0)
        assert out["nan"][f, c] == np.isnan(cell).sum()
        np.testing.assert_allclose(out["sum"][f, c], clipped.sum(), rtol=1e-6)
        assert out["max"][f, c] == (clipped.max() if valid.size else 0)
        assert out["wet"][f, c] == np.count_nonzero(valid > np.float32(0.1))
        exp_hist = _hist_of(valid.astype(np.float64))
        exp_hist[0] = 0
        np.testing.assert_array_equal(out["hist"][f, c], exp_hist)


def test_frame_partials_to_rate_and_dtype() -> None:
    block = np.full((1, 8, 8), 20.0, dtype=np.float16)  # e.g. dBZ
    spec = KernelSpec(8, 8, 4, 4, 2, 2, 0.1, lambda z: (10 ** (z / 10) / 200) ** (1 / 1.6))
    out = frame_partials(block, spec)
    rate = (10 ** (20 / 10) / 200) ** (1 / 1.6)
    np.testing.assert_allclose(out["sum"][0], 16 * rate, rtol=1e-5)
    np.testing.assert_allclose(out["max"][0], rate, rtol=1e-5)


def test_clip_max_caps_statistics_and_counts_clutter() -> None:
    """A clutter pixel (8646 mm/h, as on an OPERA composite) is capped at clip_max and counted."""
    times = np.datetime64("2024-05-01T00:00") + np.arange(2) * np.timedelta64(5, "m")
    data = np.zeros((2, 16, 32), dtype=np.float32)
    data[:, :, :16] = 2.0
    data[0, 3, 20] = 8646.0  # clutter in the right tile
    data[1, 4, 21] = 500.0
    blocks = list(
        iter_tile_statistics(
            data,
            times,
            TilingParams(n_time_window=2, tile_size=(16, 16)),
            time_windows(times, 2, 2),
        )
    )
    cols = blocks[0].columns
    assert cols["clip_count"].tolist() == [0, 2]
    assert cols["max"].tolist() == [2.0, 300.0]
    assert cols["sum"][1] == pytest.approx(600.0)
    assert cols["p999"][1] <= 300.0
    raw = TilingParams(n_time_window=2, tile_size=(16, 16), clip_max=None)
    cols = next(iter_tile_statistics(data, times, raw, time_windows(times, 2, 2))).columns
    assert cols["clip_count"].tolist() == [0, 0]
    assert cols["max"].tolist() == [2.0, 8646.0]
