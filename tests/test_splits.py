import numpy as np
import pytest

from mlcast_pipes.errors import ParameterError
from mlcast_pipes.splits import (
    TimeSplit,
    split_by_blocks,
    split_by_ranges,
    split_chronological,
    tiles_within,
)

TIMES = np.arange("2020-01-01", "2020-03-01", np.timedelta64(30, "m"), dtype="datetime64[ns]")


def _masks(splits):
    return {name: s.frame_mask(TIMES) for name, s in splits.items()}


def _assert_partition(splits):
    masks = np.stack(list(_masks(splits).values()))
    assert (masks.sum(axis=0) <= 1).all(), "a frame belongs to two splits"
    return masks


def test_split_by_blocks_disjoint_complete_and_seeded():
    splits = split_by_blocks(TIMES, block="2D", seed=3)
    masks = _assert_partition(splits)
    assert masks.sum() == len(TIMES)
    shares = masks.sum(axis=1) / len(TIMES)
    assert shares[0] == pytest.approx(0.7, abs=0.05)
    again = split_by_blocks(TIMES, block="2D", seed=3)
    assert all(splits[k].ranges == again[k].ranges for k in splits)
    other = split_by_blocks(TIMES, block="2D", seed=4)
    assert splits["train"].ranges != other["train"].ranges


def test_split_chronological_order():
    splits = split_chronological(TIMES, {"train": 0.5, "test": 0.5})
    masks = _assert_partition(splits)
    assert masks.sum() == len(TIMES)
    assert TIMES[masks[0]].max() < TIMES[masks[1]].min()


def test_split_by_ranges_rejects_overlap():
    with pytest.raises(ParameterError, match="overlap"):
        split_by_ranges(train=[("2020-01-01", "2020-02-01")], val=[("2020-01-15", "2020-03-01")])
    with pytest.raises(ParameterError, match="empty"):
        TimeSplit.from_ranges("x", [("2020-02-01", "2020-01-01")])
    with pytest.raises(ParameterError, match="ISO 8601"):
        TimeSplit.from_ranges("x", [("yesterday-ish", "2020-01-01")])


def test_bad_fractions():
    with pytest.raises(ParameterError, match="add up to 1"):
        split_by_blocks(TIMES, {"train": 0.9, "test": 0.2})


def test_tiles_within_requires_all_frames():
    mask = np.array([1, 1, 1, 0, 1, 1, 1, 1], dtype=bool)
    starts = np.array([0, 1, 2, 4, 5])
    assert tiles_within(starts, 3, mask).tolist() == [True, False, False, True, True]


def test_token_is_stable_and_distinct():
    a = TimeSplit.from_ranges("val", [("2020-01-01", "2020-01-02")])
    b = TimeSplit.from_ranges("val", [("2020-01-01", "2020-01-03")])
    assert a.token == TimeSplit.from_ranges("val", [("2020-01-01", "2020-01-02")]).token
    assert a.token != b.token and a.token.startswith("val-")
