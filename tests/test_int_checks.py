"""One integer rule for every parameter: integers and integral floats, nothing else."""

from __future__ import annotations

import pytest

from mlcast_pipes._checks import as_int
from mlcast_pipes.errors import ParameterError
from mlcast_pipes.reader.requests import _as_int
from mlcast_pipes.sampling.base import _int_param
from mlcast_pipes.tiling import TilingParams


def test_integral_floats_are_accepted_everywhere():
    assert as_int("batch_size", 4.0, minimum=1) == 4
    assert _int_param(5.0, "n_samples", 1) == 5
    assert _as_int(2.0, "t0") == 2
    assert TilingParams(n_time_window=4.0, tile_size=(64.0, 64)).n_time_window == 4


@pytest.mark.parametrize("value", [2.5, True, "4", [4]])
def test_anything_else_is_refused_everywhere_naming_the_fix(value):
    checks = [
        lambda: as_int("batch_size", value, minimum=1),
        lambda: _int_param(value, "n_samples", 1),
        lambda: _as_int(value, "t0"),
        lambda: TilingParams(n_time_window=value),
    ]
    for check in checks:
        with pytest.raises(ParameterError, match=r"must be an integer.*fix: pass a whole number"):
            check()
