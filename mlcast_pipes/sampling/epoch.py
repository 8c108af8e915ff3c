"""Epoch draws: per-tile hashed uniforms, the epoch's rows and their time offsets.

Deterministic from (seed, epoch), so every worker and rank draws the same epoch.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd

from mlcast_pipes.errors import ParameterError
from mlcast_pipes.sampling.base import _SMALL_BIN, _check_n_time_sample, _check_seed, _int_param

__all__ = [
    "assign_time_offsets",
    "draw_epoch",
    "per_tile_uniform",
]


# Stream tags keep the random streams derived from one seed apart.
_TAG_KEEP = 1


_TAG_OFFSET = 2


_TAG_SUBSET = 3


_TAG_BIN_ORDER = 11


_TAG_CYCLE = 12


_TAG_EPOCH = 13


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


_MIX1 = np.uint64(0xBF58476D1CE4E5B9)


_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64 finaliser (wrapping uint64 arithmetic, array in, array out)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def _as_u64(value: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    arr = np.asarray(value)
    if arr.dtype == np.uint64:
        return arr
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64).view(np.uint64)
    if arr.dtype == object and arr.ndim == 0 and isinstance(arr.item(), int):
        return np.asarray(arr.item() % 2**64, dtype=np.uint64)
    raise ParameterError(f"expected integer keys for a random stream, got dtype {arr.dtype}")


def _hash_u64(*keys: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    """Hash integer keys (broadcast together) to uint64, one independent value per key tuple."""
    u64 = [_as_u64(k) for k in keys]
    shape = np.broadcast_shapes(*(k.shape for k in u64))
    arrays = np.broadcast_arrays(*[np.atleast_1d(k) for k in u64])  # no 0-d: no scalar warnings
    h = _mix64(np.array(arrays[0], dtype=np.uint64, copy=True))
    for k in arrays[1:]:
        h = _mix64(h ^ _mix64(np.asarray(k, dtype=np.uint64)))
    return h.reshape(shape)


def _tile_keys(tile_ids: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    arr = np.asarray(tile_ids)
    if arr.dtype.kind in "iu":
        return _as_u64(arr)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return _as_u64(arr.astype(np.int64))
    # Strings or other labels: pandas' stable hash (fixed key), identical across runs.
    hashed = pd.util.hash_array(np.asarray(arr.astype(str), dtype=object))
    return np.asarray(hashed, dtype=np.uint64)


def per_tile_uniform(
    tile_ids: npt.ArrayLike, seed: int, stream: int = 0
) -> npt.NDArray[np.float64]:
    """One uniform number in [0, 1) per tile, from an independent stream per (seed, tile_id).

    A counter-based hash (SplitMix64 of seed, ``stream`` and tile id): independent of the order
    and number of tiles. ``stream`` separates uses of one seed (keep/drop, offsets, ...).

    Examples
    --------
    >>> u = per_tile_uniform([0, 1, 2], seed=0)
    >>> bool(((u >= 0) & (u < 1)).all()) and len(set(u.tolist())) == 3
    True

    """
    _check_seed(seed, "seed")
    h = _hash_u64(seed, stream, _tile_keys(tile_ids))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _extras(total: int, n_bins: int, position: int) -> int:
    """How many of the first ``total`` round-robin extras land on bin ``position``."""
    return total // n_bins + (1 if position < total % n_bins else 0)


def _stream_slice(m: int, start: int, count: int, seed: int, stream: int) -> npt.NDArray[np.int64]:
    """Items ``[start, start + count)`` of an endless stream of fresh permutations of ``range(m)``.

    Cycle ``c`` of the stream is a permutation that depends only on (seed, stream, c, m).
    """
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    first = start // m
    last = (start + count - 1) // m
    if m <= _SMALL_BIN:
        cycles = np.arange(first, last + 1, dtype=np.int64)[:, None]
        keys = _hash_u64(seed, _TAG_CYCLE, stream, cycles, np.arange(m, dtype=np.int64)[None, :])
        perms = np.argsort(keys, axis=1, kind="stable").ravel()
    else:
        perms = np.concatenate(
            [
                np.random.default_rng([seed, _TAG_CYCLE, stream, c]).permutation(m)
                for c in range(first, last + 1)
            ]
        )
    offset = start - first * m
    return np.asarray(perms[offset : offset + count], dtype=np.int64)


def draw_epoch(
    pool: pd.DataFrame, *, n_samples: int | None, seed: int, epoch: int
) -> npt.NDArray[np.int64]:
    """Shuffled row positions into ``pool`` for one epoch, the same for the same (seed, epoch).

    Binned pools (``bin_id`` >= 0) draw every bin equally often, a small bin repeating, a big one
    subsampled without repeats across epochs; unbinned pools walk permutations of all rows.
    ``n_samples`` None: the pool's rows. ParameterError for bad counts or an empty pool.

    Examples
    --------
    >>> pool = pd.DataFrame({"bin_id": [0] * 8 + [1, 1]})
    >>> rows = draw_epoch(pool, n_samples=10, seed=0, epoch=0)
    >>> np.bincount(pool["bin_id"].to_numpy()[rows]).tolist()
    [5, 5]

    """
    seed = _check_seed(seed, "seed")
    epoch = _check_seed(epoch, "epoch")
    if n_samples is not None:
        n_samples = _int_param(n_samples, "n_samples", 1, " (or None for the pool size)")
    if len(pool) == 0:
        raise ParameterError(
            "the sample pool is empty: the sampler kept no tile; loosen its parameters"
        )
    bins = (
        np.asarray(pool["bin_id"].to_numpy(), dtype=np.int64)
        if "bin_id" in pool.columns
        else np.full(len(pool), -1, dtype=np.int64)
    )
    binned = np.flatnonzero(bins >= 0)
    labels = np.unique(bins[binned])
    if labels.size <= 1:
        m = len(pool)
        n = m if n_samples is None else int(n_samples)
        return _stream_slice(m, epoch * n, n, seed, 0)
    order = binned[np.argsort(bins[binned], kind="stable")]
    starts = np.searchsorted(bins[order], labels, side="left")
    ends = np.append(starts[1:], order.size)
    n_bins = labels.size
    n = order.size if n_samples is None else int(n_samples)
    base, rest = divmod(n, n_bins)
    position = np.empty(n_bins, dtype=np.int64)
    position[np.random.default_rng([seed, _TAG_BIN_ORDER]).permutation(n_bins)] = np.arange(n_bins)
    parts = []
    for i in range(n_bins):
        before = _extras(epoch * rest, n_bins, int(position[i]))
        after = _extras((epoch + 1) * rest, n_bins, int(position[i]))
        members = order[starts[i] : ends[i]]
        picks = _stream_slice(
            members.size, epoch * base + before, base + after - before, seed, int(labels[i]) + 1
        )
        parts.append(members[picks])
    drawn = np.concatenate(parts)
    return np.random.default_rng([seed, _TAG_EPOCH, epoch]).permutation(drawn)


def assign_time_offsets(
    pool: pd.DataFrame,
    n_time_window: int | npt.ArrayLike,
    n_time_sample: int,
    seed: int,
) -> npt.NDArray[np.int64]:
    """Seeded start offsets in ``[0, n_time_window - n_time_sample]`` of each tile's sub-window.

    The offset depends only on (seed, source_tile_id); ``n_time_window`` is one value or one per
    row. Raises ParameterError if ``n_time_sample`` < 1 or longer than a window.

    Examples
    --------
    >>> pool = pd.DataFrame({"source_tile_id": [0, 1, 2, 3]})
    >>> offsets = assign_time_offsets(pool, n_time_window=8, n_time_sample=4, seed=0)
    >>> bool(((offsets >= 0) & (offsets <= 4)).all())
    True

    """
    _check_seed(seed, "seed")
    window = np.broadcast_to(np.asarray(n_time_window, dtype=np.int64), (len(pool),))
    n_time_sample = _check_n_time_sample(
        n_time_sample, int(window.min()) if window.size else n_time_sample
    )
    span = window - n_time_sample + 1
    u = per_tile_uniform(pool["source_tile_id"].to_numpy(), seed, _TAG_OFFSET)
    return np.minimum(np.floor(u * span).astype(np.int64), span - 1)
