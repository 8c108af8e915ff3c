"""Tests of mlcast_pipes.transforms: unit conversions, registry, Normalizer, statistics."""

from __future__ import annotations

import datetime as dt
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mlcast_pipes.errors import IndexFileError, ParameterError
from mlcast_pipes.indexes.stats import read_stats_csv, stats_filename, write_stats_csv
from mlcast_pipes.transforms import (
    DEFAULT_CLIP_MAX,
    MeanStdAccumulator,
    Normalizer,
    Transform,
    available_transforms,
    dbz_to_rate,
    denormalize,
    fit_mean_std,
    from_rain_rate_fn,
    get_transform,
    known_units,
    make_normalizer,
    rate_to_dbz,
    register_transform,
    to_rain_rate_fn,
    variable_kind,
)

RATE = {"standard_name": "rainfall_flux", "units": "mm h-1"}
DBZ = {"standard_name": "equivalent_reflectivity_factor", "units": "dBZ"}
AMOUNT = {"standard_name": "precipitation_amount", "units": "mm"}
FIVE_MIN = np.timedelta64(5, "m")
LDCAST_ZERO = (math.log10(0.02) + 0.051) / 0.528
FAST = settings(max_examples=60, deadline=None)

rates_invertible = st.floats(float(np.float32(0.1)), 500.0, width=32)


def ldcast_naive(r: np.ndarray) -> np.ndarray:
    r = np.where(r < 0.1, 0.02, r)
    return (np.log10(r) + 0.051) / 0.528


def radar_field(seed: int = 0, shape: tuple[int, ...] = (4, 32, 32)) -> np.ndarray:
    """Rain rates with a NaN region outside a 'radar circle', dry pixels and some clutter."""
    rng = np.random.default_rng(seed)
    r = rng.gamma(0.5, 4.0, size=shape).astype(np.float32)
    r[rng.random(shape) < 0.5] = 0.0
    yy, xx = np.mgrid[: shape[-2], : shape[-1]]
    outside = (yy - shape[-2] / 2) ** 2 + (xx - shape[-1] / 2) ** 2 > (shape[-1] / 2.2) ** 2
    r[..., outside] = np.nan
    r[..., 3, 5] = 8600.0  # clutter
    return r


# ------------------------------------------------------------------------------------------
# units
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("standard_name", "units", "kind"),
    [
        ("rainfall_flux", "mm h-1", "rate"),
        ("precipitation_flux", "kg m-2 s-1", "rate"),
        ("RAINFALL_FLUX", "mm/h", "rate"),
        ("rainfall_flux", "mm  hr-1", "rate"),
        ("rainfall_flux", "kg m-2 h-1", "rate"),
        ("equivalent_reflectivity_factor", "dBZ", "reflectivity"),
        (None, "dbz", "reflectivity"),
        ("something_else", "dBZ", "reflectivity"),
        ("precipitation_amount", "mm", "amount"),
        ("rainfall_amount", "kg m-2", "amount"),
        ("equivalent_reflectivity_factor", None, "reflectivity"),
    ],
)
def test_variable_kind(standard_name: str | None, units: str | None, kind: str) -> None:
    assert variable_kind(standard_name, units) == kind


def test_unknown_units_lists_known() -> None:
    with pytest.raises(ParameterError) as err:
        variable_kind("rainfall_flux", "furlongs/fortnight")
    msg = str(err.value)
    assert "furlongs/fortnight" in msg
    for unit in ["mm h-1", "mm/h", "mm hr-1", "kg m-2 h-1", "kg m-2 s-1", "dBZ", "mm", "kg m-2"]:
        assert unit in msg
    assert set(known_units()) >= {"mm h-1", "dBZ", "kg m-2"}


def test_units_contradict_standard_name() -> None:
    with pytest.raises(ParameterError, match=r"rainfall_flux.*rate.*amount"):
        variable_kind("rainfall_flux", "mm")


def test_nothing_to_decide_from() -> None:
    with pytest.raises(ParameterError, match="units"):
        variable_kind(None, None)
    with pytest.raises(ParameterError, match="no units"):
        to_rain_rate_fn("rainfall_flux", None, None)


def test_marshall_palmer_known_values() -> None:
    assert float(rate_to_dbz(1.0)) == pytest.approx(10 * math.log10(200))
    assert float(rate_to_dbz(10.0)) == pytest.approx(10 * math.log10(200 * 10**1.6))
    assert float(dbz_to_rate(10 * math.log10(200))) == pytest.approx(1.0)
    assert float(dbz_to_rate(30.0, a=300, b=1.5)) == pytest.approx((1000 / 300) ** (1 / 1.5))
    assert np.isnan(rate_to_dbz(np.nan))
    assert rate_to_dbz(np.float32(2.0)).dtype == np.float32


@FAST
@given(st.floats(1e-3, 1e4, allow_nan=False))
def test_marshall_palmer_round_trip(r: float) -> None:
    assert float(dbz_to_rate(rate_to_dbz(r))) == pytest.approx(r, rel=1e-9)
    d = float(rate_to_dbz(r, a=300, b=1.4))
    assert float(dbz_to_rate(d, a=300, b=1.4)) == pytest.approx(r, rel=1e-9)


def test_to_rain_rate_fn_rates() -> None:
    assert to_rain_rate_fn("rainfall_flux", "mm h-1", None) is None
    assert from_rain_rate_fn("rainfall_flux", "mm/h", None) is None
    f = to_rain_rate_fn("precipitation_flux", "kg m-2 s-1", None)
    g = from_rain_rate_fn("precipitation_flux", "kg m-2 s-1", None)
    assert f is not None and g is not None
    x = np.array([0.0, 1e-3, np.nan], dtype=np.float32)
    np.testing.assert_allclose(f(x), [0.0, 3.6, np.nan], rtol=1e-6)
    np.testing.assert_allclose(g(f(x)), x, rtol=1e-6)


def test_to_rain_rate_fn_dbz_floor_and_nan() -> None:
    f = to_rain_rate_fn(**DBZ, time_step=None)
    assert f is not None
    dbz = np.array([-32.0, -0.5, 0.0, 23.0103, 40.0, np.nan], dtype=np.float32)
    out = f(dbz)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[:3], 0.0)
    assert out[3] == pytest.approx(1.0, rel=1e-4)
    assert out[4] == pytest.approx((10**4 / 200) ** (1 / 1.6), rel=1e-5)
    assert np.isnan(out[5])
    # a product whose "no rain" value is 7 dBZ
    f7 = to_rain_rate_fn(**DBZ, time_step=None, dbz_floor=7.0)
    assert f7 is not None
    assert f7(np.array([7.0, 7.5]))[0] == 0.0
    assert f7(np.array([7.0, 7.5]))[1] > 0.0
    g = from_rain_rate_fn(**DBZ, time_step=None)
    assert g is not None
    back = g(out)
    np.testing.assert_allclose(back[3:5], dbz[3:5], rtol=1e-5)
    np.testing.assert_array_equal(back[:3], 0.0)  # the floor
    assert np.isnan(back[5])


@pytest.mark.parametrize(
    "step", [FIVE_MIN, np.timedelta64(300, "s"), dt.timedelta(minutes=5), "5min"]
)
def test_amount_to_rate_with_time_step(step: Any) -> None:
    f = to_rain_rate_fn(**AMOUNT, time_step=step)
    g = from_rain_rate_fn(**AMOUNT, time_step=step)
    assert f is not None and g is not None
    amounts = np.array([0.0, 0.5, 2.0, np.nan])
    np.testing.assert_allclose(f(amounts), [0.0, 6.0, 24.0, np.nan])
    np.testing.assert_allclose(g(f(amounts)), amounts)


def test_amount_needs_time_step() -> None:
    with pytest.raises(ParameterError, match="time_step"):
        to_rain_rate_fn(**AMOUNT, time_step=None)
    with pytest.raises(ParameterError, match="no time unit"):
        to_rain_rate_fn(**AMOUNT, time_step=np.timedelta64(5))
    with pytest.raises(ParameterError, match="positive"):
        to_rain_rate_fn(**AMOUNT, time_step=np.timedelta64(0, "m"))
    with pytest.raises(ParameterError, match="not a time span"):
        to_rain_rate_fn(**AMOUNT, time_step="five minutes")


def test_conversion_is_picklable() -> None:
    f = to_rain_rate_fn(**DBZ, time_step=None)
    g = pickle.loads(pickle.dumps(f))
    x = np.array([10.0, 35.0])
    np.testing.assert_array_equal(f(x), g(x))  # type: ignore[misc]


# ------------------------------------------------------------------------------------------
# registry and transforms
# ------------------------------------------------------------------------------------------


def test_registry_lists_builtins() -> None:
    assert set(available_transforms()) >= {
        "ldcast",
        "mlcast_dbz",
        "log1p",
        "scale",
        "identity",
        "fitted",
    }
    for name in ["ldcast", "mlcast_dbz", "log1p", "scale", "identity"]:
        t = get_transform(name)
        assert isinstance(t, Transform)
        assert t.name == name
        assert t.kind in t.accepts


def test_unknown_method_lists_names() -> None:
    for call in (
        lambda: get_transform("zscore"),
        lambda: make_normalizer("zscore", **RATE),
        lambda: denormalize(np.zeros(2), "zscore"),
    ):
        with pytest.raises(ParameterError) as err:
            call()
        msg = str(err.value)
        assert "zscore" in msg
        for name in ["auto", "ldcast", "mlcast_dbz", "log1p", "scale", "identity", "fitted"]:
            assert name in msg


def test_bad_transform_parameters() -> None:
    with pytest.raises(ParameterError, match=r"'scale'.*offset"):
        get_transform("scale", ofset=1.0)
    with pytest.raises(ParameterError, match="must not be 0"):
        get_transform("scale", scale=0.0)
    with pytest.raises(ParameterError, match="finite"):
        get_transform("scale", offset=math.inf)
    with pytest.raises(ParameterError, match="positive"):
        get_transform("log1p", scale=-1.0)
    with pytest.raises(ParameterError, match="mean and std"):
        get_transform("fitted")
    with pytest.raises(ParameterError, match="positive"):
        get_transform("fitted", mean=1.0, std=0.0)
    with pytest.raises(ParameterError, match="cannot read amount"):
        get_transform("ldcast", kind="amount")
    with pytest.raises(ParameterError, match="kind"):
        make_normalizer("ldcast", **RATE, kind="rate")


def test_register_custom_transform() -> None:
    @register_transform("test_sqrt")
    class Sqrt(Transform):
        def forward(self, x: np.ndarray) -> np.ndarray:
            return np.sqrt(np.maximum(x, 0))

        def inverse(self, y: np.ndarray) -> np.ndarray:
            return np.square(y)

    assert "test_sqrt" in available_transforms()
    norm = make_normalizer("test_sqrt", **RATE)
    np.testing.assert_allclose(norm(np.array([4.0, np.nan, 900.0])), [2.0, 0.0, 300**0.5])
    assert norm.name == "test_sqrt"

    with pytest.raises(ParameterError, match="already registered"):

        @register_transform("ldcast")
        class Other(Transform):
            pass

    with pytest.raises(ParameterError, match="cannot name"):
        register_transform("auto")

    @register_transform("test_not_a_transform")
    def factory() -> Any:
        return object()

    with pytest.raises(ParameterError, match="not a Transform"):
        get_transform("test_not_a_transform")


def test_ldcast_known_values() -> None:
    t = get_transform("ldcast")
    r = np.array([0.0, 0.05, 0.1, 1.0, 10.0, 100.0, -3.0])
    np.testing.assert_allclose(t.forward(r), ldcast_naive(r), rtol=1e-12)
    assert t.forward(np.zeros(1))[0] == pytest.approx(LDCAST_ZERO)
    assert t.fill_value == pytest.approx(LDCAST_ZERO)
    assert t.forward(np.array([1.0]))[0] == pytest.approx(0.051 / 0.528)
    back = t.inverse(t.forward(r))
    np.testing.assert_array_equal(back[[0, 1, 6]], 0.0)
    np.testing.assert_allclose(back[2:6], r[2:6], rtol=1e-12)
    assert np.isnan(t.forward(np.array([np.nan]))[0])


@FAST
@given(hnp.arrays(np.float32, st.integers(1, 50), elements=rates_invertible))
def test_ldcast_round_trip(r: np.ndarray) -> None:
    norm = make_normalizer("ldcast", **RATE, clip_max=None)
    y = norm(r)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    np.testing.assert_allclose(norm.inverse(y), r, rtol=2e-5)
    np.testing.assert_allclose(denormalize(y, "ldcast"), r, rtol=2e-5)


def test_mlcast_dbz_known_values() -> None:
    t = get_transform("mlcast_dbz")
    assert t.forward(np.array([1.0]))[0] == pytest.approx(10 * math.log10(200) / 30 - 1)
    assert t.forward(np.array([0.0]))[0] == -1.0
    assert t.forward(np.array([-2.0]))[0] == -1.0
    assert t.forward(np.array([1e4]))[0] == 1.0  # 90 dBZ clipped to 60
    assert t.fill_value == -1.0
    assert np.isnan(t.forward(np.array([np.nan]))[0])
    r = np.array([0.0, 0.01, 0.5, 5.0, 50.0, 1e4])
    naive = np.clip(10 * np.log10(200 * r**1.6, where=r > 0, out=np.zeros_like(r)), 0, 60) / 30 - 1
    np.testing.assert_allclose(t.forward(r), naive, rtol=1e-12)
    # directly from a reflectivity archive
    td = get_transform("mlcast_dbz", kind="reflectivity")
    np.testing.assert_allclose(
        td.forward(np.array([-10.0, 0.0, 15.0, 45.0, 70.0])), [-1, -1, -0.5, 0.5, 1]
    )
    np.testing.assert_allclose(td.inverse(np.array([-3.0, 0.5, 4.0])), [0.0, 45.0, 60.0])
    # inverse to rate: 0 dBZ is no rain, beyond the range clipped to 60 dBZ
    back = t.inverse(np.array([-1.0, -2.0, 1.0, 3.0]))
    np.testing.assert_allclose(back, [0.0, 0.0, dbz_to_rate(60.0), dbz_to_rate(60.0)])


@FAST
@given(
    hnp.arrays(
        np.float32, st.integers(1, 50), elements=st.floats(float(np.float32(0.04)), 200.0, width=32)
    )
)
def test_mlcast_dbz_round_trip_inside_clip_range(r: np.ndarray) -> None:
    norm = make_normalizer("mlcast_dbz", **RATE)
    np.testing.assert_allclose(norm.inverse(norm(r)), r, rtol=5e-5)
    ndbz = make_normalizer(**DBZ)
    dbz = rate_to_dbz(r)
    assert ndbz.name == "mlcast_dbz"
    np.testing.assert_allclose(ndbz.inverse(ndbz(dbz), native=True), dbz, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ndbz.inverse(ndbz(dbz)), r, rtol=5e-5)


@FAST
@given(
    hnp.arrays(np.float64, st.integers(1, 30), elements=st.floats(0, 1e3)),
    st.floats(0.1, 10),
    st.floats(-50, 50),
)
def test_exact_round_trips(v: np.ndarray, scale: float, offset: float) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("scale", {"offset": offset, "scale": scale}),
        ("fitted", {"mean": offset, "std": scale}),
        ("identity", {}),
        ("log1p", {"scale": scale}),
    ]
    for name, params in cases:
        t = get_transform(name, **params)
        np.testing.assert_allclose(t.inverse(t.forward(v)), v, rtol=1e-9, atol=1e-9)
        norm = make_normalizer(name, **RATE, clip_max=None, **params)
        np.testing.assert_allclose(norm.inverse(norm(v)), v, rtol=1e-5, atol=1e-4 * scale)
        rnd = denormalize(norm(v), name, **RATE, **params)
        np.testing.assert_allclose(rnd, v, rtol=1e-5, atol=1e-4 * scale)


def test_simple_transform_values() -> None:
    v = np.array([0.0, 1.0, 10.0])
    np.testing.assert_allclose(get_transform("scale", offset=1, scale=4).forward(v), (v - 1) / 4)
    assert get_transform("scale", offset=1, scale=4).fill_value == -0.25
    np.testing.assert_allclose(get_transform("fitted", mean=2, std=4).forward(v), (v - 2) / 4)
    assert get_transform("fitted", mean=2, std=4).fill_value == -0.5
    np.testing.assert_allclose(get_transform("log1p", scale=2).forward(v), np.log1p(v) / 2)
    assert get_transform("log1p").fill_value == 0.0
    assert get_transform("identity").fill_value == 0.0
    assert get_transform("scale", scale=2.0) == get_transform("scale", scale=2.0)
    assert get_transform("scale", scale=2.0) != get_transform("scale", scale=3.0)
    assert "scale=2.0" in repr(get_transform("scale", scale=2.0))


# ------------------------------------------------------------------------------------------
# Normalizer
# ------------------------------------------------------------------------------------------


def test_auto_method_by_kind() -> None:
    assert make_normalizer(**RATE).name == "ldcast"
    assert make_normalizer(**AMOUNT, time_step=FIVE_MIN).name == "ldcast"
    assert make_normalizer(**DBZ).name == "mlcast_dbz"
    assert make_normalizer(**DBZ).work_kind == "reflectivity"
    assert make_normalizer("ldcast", **DBZ).work_kind == "rate"


def test_normalizer_nan_policy_and_mask() -> None:
    r = radar_field()
    original = r.copy()
    norm = make_normalizer(**RATE)
    y = norm(r)
    assert isinstance(y, np.ndarray)
    assert y.dtype == np.float32 and y.shape == r.shape
    assert not np.isnan(y).any()
    nan = np.isnan(r)
    np.testing.assert_allclose(y[nan], np.float32(LDCAST_ZERO))
    expected = ldcast_naive(np.minimum(np.nan_to_num(r, nan=0.0), DEFAULT_CLIP_MAX))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(r, original)  # input untouched

    yk, valid = make_normalizer(**RATE, mask=True)(r)
    assert valid.dtype == bool and valid.shape == r.shape
    np.testing.assert_array_equal(valid, ~nan)
    np.testing.assert_array_equal(yk, y)

    kept = make_normalizer(**RATE, fill_nan=None)(r)
    assert isinstance(kept, np.ndarray)
    np.testing.assert_array_equal(np.isnan(kept), nan)

    custom = make_normalizer(**DBZ, fill_nan=-2.0)(np.array([np.nan, 0.0], dtype=np.float32))
    np.testing.assert_array_equal(custom, [-2.0, -1.0])
    with pytest.raises(ParameterError, match="fill_nan"):
        make_normalizer(**RATE, fill_nan="zero")


def test_identity_returns_a_copy() -> None:
    x = np.array([1.0, 2.0], dtype=np.float32)
    y = make_normalizer("identity", **RATE, clip_max=None)(x)
    assert isinstance(y, np.ndarray)
    y[0] = 99.0
    assert x[0] == 1.0


def test_clutter_clipping() -> None:
    r = np.array([-1.0, 5.0, 299.0, 301.0, 8600.0], dtype=np.float32)
    y = make_normalizer("identity", **RATE)(r)
    np.testing.assert_array_equal(y, [0.0, 5.0, 299.0, 300.0, 300.0])
    y = make_normalizer("identity", **RATE, clip_max=150)(r)
    np.testing.assert_array_equal(y, [0.0, 5.0, 150.0, 150.0, 150.0])
    y = make_normalizer("identity", **RATE, clip_max=None)(r)
    np.testing.assert_array_equal(y, r)
    ld = make_normalizer(**RATE)
    assert ld(np.array([8600.0]))[0] == ld(np.array([300.0]))[0]  # type: ignore[index]
    # kg m-2 s-1: clipping happens in mm/h
    y = make_normalizer("identity", standard_name="precipitation_flux", units="kg m-2 s-1")(
        np.array([1e-3, 1.0])
    )
    np.testing.assert_allclose(y, [3.6, 300.0])
    # dBZ archive read natively: clip at the reflectivity of clip_max
    yd = make_normalizer("identity", **DBZ, clip_max=100.0)(np.array([30.0, 80.0]))
    np.testing.assert_allclose(yd, [30.0, rate_to_dbz(100.0)], rtol=1e-6)
    # amounts read natively: clip at clip_max * step hours
    ya = make_normalizer("identity", **AMOUNT, time_step=FIVE_MIN)(np.array([1.0, 100.0]))
    np.testing.assert_allclose(ya, [1.0, 25.0])
    with pytest.raises(ParameterError, match="clip_max"):
        make_normalizer("identity", **AMOUNT)
    with pytest.raises(ParameterError, match="positive"):
        make_normalizer(**RATE, clip_max=0)


def test_amount_archive_with_time_step() -> None:
    amounts = np.array([0.0, 0.005, 0.5, 2.0, np.nan], dtype=np.float32)
    norm = make_normalizer(**AMOUNT, time_step=np.timedelta64(10, "m"))
    y = norm(amounts)
    rate = np.nan_to_num(amounts.astype(np.float64), nan=0.0) * 6
    np.testing.assert_allclose(y, ldcast_naive(rate), rtol=1e-5)
    back = norm.inverse(y)
    np.testing.assert_allclose(back[2:4], [3.0, 12.0], rtol=1e-5)
    np.testing.assert_allclose(norm.inverse(y, native=True)[2:4], [0.5, 2.0], rtol=1e-5)
    assert back[0] == 0.0 and back[1] == 0.0  # 0.03 mm/h is below LDCast's 0.1


def test_method_variable_mismatch_messages() -> None:
    with pytest.raises(ParameterError, match=r"reads rain rate.*amounts.*time_step"):
        make_normalizer("ldcast", **AMOUNT)
    with pytest.raises(ParameterError, match=r"mlcast_dbz.*amounts.*time_step"):
        make_normalizer("mlcast_dbz", **AMOUNT)
    with pytest.raises(ParameterError, match=r"auto|ldcast"):
        make_normalizer(**AMOUNT)
    with pytest.raises(ParameterError, match=r"standard_name.*units"):
        make_normalizer(standard_name="rainfall_flux", units="dBZ")
    # amounts read natively cannot be turned into mm/h without a step
    norm = make_normalizer("scale", **AMOUNT, scale=2.0, clip_max=None)
    np.testing.assert_allclose(norm(np.array([4.0])), [2.0])
    np.testing.assert_allclose(norm.inverse(np.array([2.0]), native=True), [4.0])
    with pytest.raises(ParameterError, match=r"time_step.*native=True"):
        norm.inverse(np.array([2.0]))


def test_dbz_archive_through_rain_rate_transforms() -> None:
    dbz = np.array([-20.0, 0.0, 23.0103, 45.0, np.nan], dtype=np.float32)
    norm = make_normalizer("ldcast", **DBZ)
    y = norm(dbz)
    rate = np.array([0.0, 0.0, 1.0, (10**4.5 / 200) ** (1 / 1.6), 0.0])
    np.testing.assert_allclose(y, ldcast_naive(rate), rtol=1e-4)
    np.testing.assert_allclose(norm.inverse(y)[2:4], rate[2:4], rtol=1e-4)
    np.testing.assert_allclose(norm.inverse(y, native=True)[2:4], dbz[2:4], rtol=1e-4)
    fitted = make_normalizer("fitted", **DBZ, mean=1.0, std=2.0)
    np.testing.assert_allclose(fitted(dbz)[2], 0.0, atol=1e-4)


def test_input_dtypes_and_shapes() -> None:
    norm = make_normalizer(**RATE)
    for x in (
        np.array([[1.0, 2.0]], dtype=np.float16),
        np.array([[1, 2]], dtype=np.int16),
        np.array([[1.0, 2.0]], dtype=np.float64),
    ):
        y = norm(x)
        assert isinstance(y, np.ndarray)
        assert y.dtype == np.float32 and y.shape == (1, 2)
        np.testing.assert_allclose(y, ldcast_naive(np.array([[1.0, 2.0]])), rtol=1e-6)
    assert norm(np.float32(5.0)).shape == ()  # type: ignore[union-attr]


def test_normalizer_pickles() -> None:
    norm = make_normalizer(**DBZ, mask=True)
    clone = pickle.loads(pickle.dumps(norm))
    assert isinstance(clone, Normalizer)
    x = np.array([np.nan, 12.0, 55.0])
    a, b = norm(x), clone(x)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert clone == norm


def test_denormalize_defaults_to_rates() -> None:
    r = np.array([0.0, 0.5, 12.0, 80.0], dtype=np.float32)
    y = make_normalizer(**RATE)(r)
    np.testing.assert_allclose(denormalize(y), [0.0, 0.5, 12.0, 80.0], rtol=2e-5)
    yd = make_normalizer(**DBZ)(rate_to_dbz(r[1:]))
    np.testing.assert_allclose(denormalize(yd, **DBZ), r[1:], rtol=5e-5)
    np.testing.assert_allclose(denormalize(yd, **DBZ, native=True), rate_to_dbz(r[1:]), rtol=1e-5)
    ya = make_normalizer(**AMOUNT, time_step=FIVE_MIN)(r / 12)
    np.testing.assert_allclose(denormalize(ya, **AMOUNT, time_step=FIVE_MIN)[1:], r[1:], rtol=2e-5)


# ------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------


@FAST
@given(
    st.lists(
        hnp.arrays(
            np.float32,
            hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
            elements=st.one_of(st.floats(0, 300, width=32), st.just(np.nan)),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_fit_mean_std_matches_numpy(chunks: list[np.ndarray]) -> None:
    flat = np.concatenate([c.ravel() for c in chunks]).astype(np.float64)
    if np.isnan(flat).all():
        with pytest.raises(ParameterError, match="non-NaN"):
            fit_mean_std(chunks)
        return
    mean, std = fit_mean_std(iter(chunks))
    assert mean == pytest.approx(np.nanmean(flat), rel=1e-9, abs=1e-9)
    assert std == pytest.approx(np.nanstd(flat), rel=1e-7, abs=1e-7)


def test_fit_mean_std_large_offset_and_merge() -> None:
    rng = np.random.default_rng(3)
    chunks = [1e6 + rng.normal(size=(5, 7)) for _ in range(20)]
    chunks[4][0, :3] = np.nan
    flat = np.concatenate([c.ravel() for c in chunks])
    mean, std = fit_mean_std(chunks)
    assert mean == pytest.approx(np.nanmean(flat), rel=1e-12)
    assert std == pytest.approx(np.nanstd(flat), rel=1e-9)
    assert fit_mean_std(chunks, ddof=1)[1] == pytest.approx(np.nanstd(flat, ddof=1), rel=1e-9)
    a, b = MeanStdAccumulator(), MeanStdAccumulator()
    for c in chunks[:7]:
        a.update(c)
    for c in chunks[7:]:
        b.update(c)
    a.merge(b).merge(MeanStdAccumulator())
    assert a.count == np.count_nonzero(~np.isnan(flat))
    assert a.mean == pytest.approx(mean, rel=1e-12)
    assert a.std() == pytest.approx(std, rel=1e-9)
    with pytest.raises(ParameterError, match="non-NaN"):
        fit_mean_std([])


def test_stats_csv_round_trip(tmp_path: Path) -> None:
    stats = {"RR": (0.123456789012345, 1.5e-7), "dbz": (-3.0, 0.0)}
    path = write_stats_csv(tmp_path / "sub" / stats_filename("abc123"), stats)
    assert path.name == "abc123.stats.csv"
    assert path.read_text().splitlines()[0] == "variable,mean,std"
    assert read_stats_csv(path) == stats
    assert not list((tmp_path / "sub").glob("*.tmp"))


def test_fitted_from_stats_file(tmp_path: Path) -> None:
    one = write_stats_csv(tmp_path / "one.stats.csv", {"RR": (2.0, 4.0)})
    t = get_transform("fitted", stats_file=one)
    assert (t.mean, t.std) == (2.0, 4.0)  # type: ignore[attr-defined]
    two = write_stats_csv(tmp_path / "two.stats.csv", {"a": (1.0, 2.0), "b": (3.0, 5.0)})
    assert get_transform("fitted", stats_file=two, variable="b").forward(np.array([8.0]))[0] == 1
    with pytest.raises(ParameterError, match="variable="):
        get_transform("fitted", stats_file=two)
    with pytest.raises(ParameterError, match=r"no statistics for variable 'c'.*'a', 'b'"):
        get_transform("fitted", stats_file=two, variable="c")
    with pytest.raises(ParameterError, match="not both"):
        get_transform("fitted", stats_file=one, mean=1.0)
    norm = make_normalizer("fitted", **RATE, stats_file=one)
    np.testing.assert_allclose(norm(np.array([np.nan, 6.0])), [-0.5, 1.0])


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "header"),
        ("name,mean,std\nRR,1,2\n", "header"),
        ("variable,mean,std\n", "no statistics"),
        ("variable,mean,std\nRR,one,2\n", "line 2 is malformed"),
        ("variable,mean,std\nRR,1\n", "malformed"),
        ("variable,mean,std\nRR,1,-2\n", "std >= 0"),
        ("variable,mean,std\nRR,nan,2\n", "finite"),
        ("variable,mean,std\nRR,1,2\nRR,1,2\n", "twice"),
    ],
)
def test_stats_csv_bad_files(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "x.stats.csv"
    path.write_text(content)
    with pytest.raises(IndexFileError, match=match) as err:
        read_stats_csv(path)
    assert "recompute" in str(err.value)


def test_stats_csv_errors(tmp_path: Path) -> None:
    with pytest.raises(IndexFileError, match="cannot read"):
        read_stats_csv(tmp_path / "missing.stats.csv")
    with pytest.raises(ParameterError, match="negative"):
        write_stats_csv(tmp_path / "s.csv", {"RR": (1.0, -1.0)})
    with pytest.raises(ParameterError, match="finite"):
        write_stats_csv(tmp_path / "s.csv", {"RR": (math.nan, 1.0)})
    with pytest.raises(ParameterError, match="pair"):
        write_stats_csv(tmp_path / "s.csv", {"RR": (1.0,)})  # type: ignore[dict-item]
    with pytest.raises(ParameterError, match="no statistics"):
        write_stats_csv(tmp_path / "s.csv", {})


@pytest.mark.parametrize("method", ["ldcast", "log1p", "scale", "identity", "mlcast_dbz"])
def test_normalizer_never_touches_or_returns_its_input(method: str) -> None:
    """Normalising works on its own buffer: the input keeps its values, the output is new."""
    attrs = DBZ if method == "mlcast_dbz" else RATE
    x = np.array([[np.nan, 0.0, 0.05], [0.5, 12.0, 300.0]], dtype=np.float32)
    before = x.copy()
    norm = make_normalizer(method, **attrs)
    out = norm(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert not np.shares_memory(out, x)
    np.testing.assert_array_equal(x, before)
    assert not np.isnan(out).any()


@pytest.mark.parametrize("method", ["ldcast", "mlcast_dbz", "log1p", "identity"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_fill_equals_dry_pixels_exactly(method: str, dtype: type) -> None:
    """NaN outside the radar circle and dry pixels inside must not differ by a float32 step."""
    norm = make_normalizer(method, standard_name="rainfall_flux", units="mm h-1")
    out = norm(np.array([0.0, np.nan, 0.05, 3.0], dtype=dtype))
    assert out[1] == out[0]
    if method == "ldcast":
        assert out[2] == out[0]  # below 0.1 mm/h: no rain as well


def test_one_units_table_for_dataset_and_transforms() -> None:
    from mlcast_pipes.dataset import KNOWN_UNITS
    from mlcast_pipes.transforms import canonical_units

    assert list(KNOWN_UNITS) == known_units()
    for spelling in ["mm/hr", "mm/h", "MM H-1", "mm h**-1", "mm per hour", "kg/m2/h"]:
        assert variable_kind("rainfall_flux", spelling) == "rate", spelling
    assert canonical_units("kg m^-2 s^-1") == "kg m-2 s-1"
    f = to_rain_rate_fn("precipitation_flux", "kg/m2/s", None)
    assert f is not None and float(f(np.array([0.001]))[0]) == pytest.approx(3.6)
    assert canonical_units("inch/h") is None
