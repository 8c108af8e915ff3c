"""Train / validation / test splits by time: explicit ranges, seeded blocks, chronological shares.

A split is a set of frames; a tile belongs to a split only if all its frames do.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlcast_pipes.errors import ParameterError

__all__ = [
    "TimeSplit",
    "split_by_blocks",
    "split_by_ranges",
    "split_chronological",
    "tiles_within",
]

TimeLike = str | np.datetime64 | pd.Timestamp


@dataclass(frozen=True)
class TimeSplit:
    """A named set of sorted, disjoint half-open time ranges ``[start, end)``.

    The ``name`` (e.g. ``"train"``) becomes part of the index ids.

    Examples
    --------
    >>> s = TimeSplit.from_ranges("val", [("2020-01-02", "2020-01-03")])
    >>> times = np.array(["2020-01-01T12", "2020-01-02T12"], dtype="datetime64[ns]")
    >>> s.frame_mask(times).tolist()
    [False, True]

    """

    name: str
    ranges: tuple[tuple[np.datetime64, np.datetime64], ...]

    @classmethod
    def from_ranges(cls, name: str, ranges: Sequence[tuple[TimeLike, TimeLike]]) -> TimeSplit:
        """Build a split from ``(start, end)`` pairs (strings or datetimes), end excluded."""
        parsed = []
        for start, end in ranges:
            s, e = _to_ns(start), _to_ns(end)
            if not s < e:
                raise ParameterError(
                    f"split {name!r}: range ({start}, {end}) is empty; the start must come before "
                    "the end (ranges are [start, end))"
                )
            parsed.append((s, e))
        parsed.sort(key=lambda r: r[0])
        for (_, e0), (s1, _) in itertools.pairwise(parsed):
            if s1 < e0:
                raise ParameterError(f"split {name!r}: its ranges overlap at {s1}; merge them")
        return cls(name, tuple(parsed))

    def frame_mask(self, times: np.ndarray) -> np.ndarray:
        """Boolean mask of the frames whose time lies in one of the ranges."""
        t = np.asarray(times).astype("datetime64[ns]")
        mask = np.zeros(t.shape, dtype=bool)
        for start, end in self.ranges:
            mask |= (t >= start) & (t < end)
        return mask

    @property
    def token(self) -> str:
        """A short, stable text that identifies the split in file names."""
        text = ";".join(f"{s}/{e}" for s, e in self.ranges)
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        return f"{self.name}-{digest}"


def _to_ns(value: TimeLike) -> np.datetime64:
    try:
        return np.datetime64(pd.Timestamp(value).tz_localize(None), "ns")
    except (ValueError, TypeError) as exc:
        raise ParameterError(
            f"cannot read {value!r} as a time; use ISO 8601, e.g. '2020-06-01T00:00'"
        ) from exc


def split_by_ranges(**ranges: Sequence[tuple[TimeLike, TimeLike]]) -> dict[str, TimeSplit]:
    """Named splits from explicit time ranges; raises if two splits share a moment.

    Examples
    --------
    >>> s = split_by_ranges(train=[("2020", "2021")], test=[("2021", "2022")])
    >>> sorted(s)
    ['test', 'train']

    """
    splits = {name: TimeSplit.from_ranges(name, r) for name, r in ranges.items()}
    _check_disjoint(splits)
    return splits


def split_by_blocks(
    times: np.ndarray,
    fractions: Mapping[str, float] | None = None,
    *,
    block: str = "2D",
    seed: int = 0,
) -> dict[str, TimeSplit]:
    """Split time into blocks of length ``block`` dealt at random to the splits (LDCast style).

    ``fractions`` are shares of blocks (default train 0.7, validation 0.15, test 0.15); ``block``
    is a pandas offset alias (``"2D"``, LDCast's choice); ``seed`` seeds the assignment.

    Examples
    --------
    >>> times = np.arange("2020-01-01", "2020-03-01", dtype="datetime64[h]")
    >>> splits = split_by_blocks(times, block="2D", seed=0)
    >>> sorted(splits), int(splits["train"].frame_mask(times).sum()) > 0.6 * len(times)
    (['test', 'train', 'validation'], True)

    """
    fractions = dict(fractions or {"train": 0.7, "validation": 0.15, "test": 0.15})
    _check_fractions(fractions)
    length = pd.Timedelta(block)
    t = pd.DatetimeIndex(np.asarray(times).astype("datetime64[ns]"))
    if len(t) == 0:
        raise ParameterError("cannot split an empty time axis")
    origin = t[0].floor("D")
    ids = np.unique(((t - origin) // length).to_numpy())
    rng = np.random.default_rng(seed)
    ids = ids[rng.permutation(len(ids))]
    bounds = np.round(np.cumsum([0.0, *fractions.values()]) * len(ids)).astype(int)
    out = {}
    for (name, _), lo, hi in zip(fractions.items(), bounds[:-1], bounds[1:], strict=True):
        chosen = np.sort(ids[lo:hi])
        ranges = [(origin + k * length, origin + (k + 1) * length) for k in chosen]
        out[name] = TimeSplit(name, tuple((_to_ns(a), _to_ns(b)) for a, b in _merge(ranges)))
    return out


def split_chronological(
    times: np.ndarray, fractions: Mapping[str, float] | None = None
) -> dict[str, TimeSplit]:
    """Split the time axis into consecutive periods (the community loader's 70/15/15 by time).

    Examples
    --------
    >>> times = np.arange("2020-01-01", "2020-01-11", dtype="datetime64[D]")
    >>> s = split_chronological(times, {"train": 0.8, "test": 0.2})
    >>> s["test"].frame_mask(times).tolist()[-3:]
    [False, True, True]

    """
    fractions = dict(fractions or {"train": 0.7, "validation": 0.15, "test": 0.15})
    _check_fractions(fractions)
    t = np.sort(np.asarray(times).astype("datetime64[ns]"))
    if len(t) == 0:
        raise ParameterError("cannot split an empty time axis")
    cuts = np.round(np.cumsum([0.0, *fractions.values()]) * len(t)).astype(int)
    end = t[-1] + np.timedelta64(1, "ns")
    edges = [t[c] if c < len(t) else end for c in cuts]
    return {
        name: TimeSplit(name, ((edges[i], edges[i + 1]),) if edges[i] < edges[i + 1] else ())
        for i, name in enumerate(fractions)
    }


def tiles_within(
    t_start: np.ndarray, n_time: np.ndarray | int, frame_mask: np.ndarray
) -> np.ndarray:
    """True for each window ``[t_start, t_start + n_time)`` whose frames are all in the mask.

    Examples
    --------
    >>> mask = np.array([True, True, True, False, True])
    >>> tiles_within(np.array([0, 1, 2]), 2, mask).tolist()
    [True, True, False]

    """
    csum = np.concatenate([[0], np.cumsum(frame_mask.astype(np.int64))])
    start = np.asarray(t_start, dtype=np.int64)
    n = np.broadcast_to(np.asarray(n_time, dtype=np.int64), start.shape)
    return np.asarray((csum[start + n] - csum[start]) == n)


def _merge(
    ranges: list[tuple[pd.Timestamp, pd.Timestamp]],
) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    merged: list[tuple[pd.Timestamp, pd.Timestamp]] = []
    for s, e in ranges:
        if merged and merged[-1][1] == s:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return merged


def _check_fractions(fractions: Mapping[str, float]) -> None:
    if not fractions or any(f < 0 for f in fractions.values()):
        raise ParameterError(f"split fractions must be non-negative, got {dict(fractions)}")
    total = sum(fractions.values())
    if not np.isclose(total, 1.0):
        raise ParameterError(f"split fractions must add up to 1, got {total:g}: {dict(fractions)}")


def _check_disjoint(splits: Mapping[str, TimeSplit]) -> None:
    items = [(s, e, name) for name, sp in splits.items() for s, e in sp.ranges]
    items.sort(key=lambda r: r[0])
    for (_, e0, n0), (s1, _, n1) in itertools.pairwise(items):
        if s1 < e0:
            raise ParameterError(
                f"splits {n0!r} and {n1!r} overlap at {s1}: a frame may belong to one split only"
            )
