"""Synthetic but realistic radar rainfall archives that follow the MLCast dataset structure.

Gives tests, the ``mlcast-pipes demo`` command and the benchmarks data without a download.
"""

from __future__ import annotations

import datetime as _dt
import os
import pathlib
import shutil
import uuid
from typing import Any

import numpy as np
import numpy.typing as npt

from mlcast_pipes.demo_events import (
    _F32,
    _F64,
    _WET_THRESHOLD,
    PRESETS,
    DemoPreset,
    _clutter_pixels,
    _coverage,
    _Event,
    _EventModel,
    _layout_events,
    _quantize,
    quantized_rates,
)
from mlcast_pipes.errors import DatasetError, ParameterError

__all__ = [
    "DEMO_FORMAT_VERSION",
    "PRESETS",
    "DemoPreset",
    "describe",
    "ensure_demo",
    "generate_demo",
    "quantized_rates",
]


#: Bumped whenever the generated values or layout change; ``ensure_demo`` replaces older stores.
DEMO_FORMAT_VERSION = 1
#: Name of the data variable in the demo archive.
VAR_NAME = "rainfall_rate"
#: Smallest side (pixels) accepted for a demo grid. The MLCast spec asks >= 256; smaller grids are
#: allowed for quick tests of code paths that do not care.
MIN_SIDE = 32
_PROJ4 = "+proj=laea +lat_0=42.5 +lon_0=12.5 +x_0=0 +y_0=0 +ellps=WGS84 +units=m +no_defs"
_BLOCK_BYTES = 64 * 2**20  # aim of bytes per written block
_TIME_UNITS = "minutes since 2000-01-01 00:00:00"


def _resolve_preset(preset: str | DemoPreset) -> DemoPreset:
    if isinstance(preset, DemoPreset):
        return preset
    try:
        return PRESETS[preset]
    except (KeyError, TypeError):
        raise ParameterError(
            f"unknown demo preset {preset!r}; choose one of {sorted(PRESETS)} "
            "(or pass a DemoPreset)"
        ) from None


def _check_params(
    preset: DemoPreset, seed: int, n_times: int | None, shape: tuple[int, int] | None
) -> tuple[int, tuple[int, int]]:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")
    if n_times is None:
        n_times = preset.n_times
    if isinstance(n_times, bool) or not isinstance(n_times, int | np.integer) or n_times < 1:
        raise ParameterError(f"n_times must be a positive integer, got {n_times!r}")
    if shape is None:
        shape = preset.shape
    try:
        ny, nx = (int(s) for s in shape)
        ok = all(isinstance(s, int | np.integer) and not isinstance(s, bool) for s in shape)
    except (TypeError, ValueError):
        ok = False
    if not ok or ny < MIN_SIDE or nx < MIN_SIDE:
        raise ParameterError(
            f"shape must be two integers (ny, nx), each >= {MIN_SIDE}, got {shape!r}; "
            "the MLCast spec asks >= 256, smaller grids are only for quick tests"
        )
    return int(n_times), (ny, nx)


def _looks_like_zarr(path: pathlib.Path) -> bool:
    return any((path / name).exists() for name in (".zmetadata", ".zgroup", "zarr.json"))


def _remove_store(path: pathlib.Path) -> None:
    """Delete an existing zarr store (refusing anything that is not one)."""
    if path.is_dir():
        if not _looks_like_zarr(path) and any(path.iterdir()):
            raise ParameterError(
                f"{path} exists and is not a zarr store; overwrite=True only replaces zarr stores. "
                "Choose another path or remove it yourself"
            )
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        raise ParameterError(
            f"{path} exists and is a file, not a zarr store; choose another path or remove it"
        )


def _lat_lon(x: _F64, y: _F64) -> tuple[_F32, _F32]:
    from pyproj import CRS, Transformer

    transformer = Transformer.from_crs(CRS.from_proj4(_PROJ4), CRS.from_epsg(4326), always_xy=True)
    xx, yy = np.meshgrid(x, y)
    lon, lat = transformer.transform(xx, yy)
    return np.asarray(lat, dtype=np.float32), np.asarray(lon, dtype=np.float32)


def _skeleton(
    store: pathlib.Path,
    preset: DemoPreset,
    seed: int,
    shape: tuple[int, int],
    times: npt.NDArray[np.datetime64],
    missing: npt.NDArray[np.datetime64],
    step_start: np.datetime64 | None,
    n_events: int,
) -> None:
    """Write coordinates, attributes and the empty data variable (no data chunks)."""
    import dask.array as dask_array
    import numcodecs
    import xarray as xr
    from pyproj import CRS

    ny, nx = shape
    x = (np.arange(nx, dtype=np.float64) - nx / 2 + 0.5) * 1000.0
    y = (ny / 2 - 0.5 - np.arange(ny, dtype=np.float64)) * 1000.0  # decreasing: row 0 is north
    lat, lon = _lat_lon(x, y)
    crs = CRS.from_proj4(_PROJ4)
    wkt = crs.to_wkt()
    crs_attrs: dict[str, Any] = {}
    try:
        crs_attrs.update({k: v for k, v in crs.to_cf().items() if k != "crs_wkt"})
    except Exception:  # pragma: no cover - pyproj without CF support
        crs_attrs["grid_mapping_name"] = "lambert_azimuthal_equal_area"
    crs_attrs.update({"crs_wkt": wkt, "spatial_ref": wkt})

    try:
        from importlib.metadata import version

        lib_version = version("mlcast-pipes")
    except Exception:
        lib_version = "0.0.0"
    global_attrs: dict[str, Any] = {
        "title": f"mlcast-pipes synthetic radar rainfall demo ({preset.name})",
        "summary": (
            "Synthetic radar composite: moving, growing and decaying convective cells over a "
            "drifting stratiform field, quantised to 0.5 dBZ (Z=200R^1.6), NaN outside radar "
            "coverage" + (", with fixed ground-clutter pixels" if preset.clutter else "")
        ),
        "license": "CC-BY-4.0",
        "Conventions": "CF-1.10",
        "mlcast_dataset_identifier": _identifier(preset, seed, len(times), shape),
        "mlcast_dataset_version": f"{DEMO_FORMAT_VERSION}.0.0",
        "mlcast_created_on": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mlcast_created_by": "mlcast_pipes.demo (synthetic data, no real observations)",
        "mlcast_created_with": f"mlcast-pipes {lib_version}",
        "demo_preset": preset.name,
        "demo_seed": int(seed),
        "demo_shape": [ny, nx],
        "demo_n_times": len(times),
        "demo_n_events": n_events,
        "demo_clutter": bool(preset.clutter),
        "demo_format_version": DEMO_FORMAT_VERSION,
    }
    if step_start is not None:
        global_attrs["consistent_timestep_start"] = str(np.datetime_as_string(step_start, unit="s"))

    data = dask_array.zeros((len(times), ny, nx), chunks=(1, ny, nx), dtype=np.float32)
    ds = xr.Dataset(
        data_vars={
            VAR_NAME: (
                ("time", "y", "x"),
                data,
                {
                    "standard_name": "rainfall_flux",
                    "long_name": "rainfall rate (synthetic radar composite)",
                    "units": "mm h-1",
                    "grid_mapping": "crs",
                },
            ),
            "crs": ((), np.int32(0), crs_attrs),
            "missing_times": (
                ("missing_time",),
                missing,
                {"long_name": "nominal time steps absent from the time axis"},
            ),
        },
        coords={
            "time": ("time", times, {"standard_name": "time", "axis": "T", "long_name": "time"}),
            "y": (
                "y",
                y,
                {
                    "standard_name": "projection_y_coordinate",
                    "long_name": "y coordinate of projection",
                    "units": "m",
                    "axis": "Y",
                },
            ),
            "x": (
                "x",
                x,
                {
                    "standard_name": "projection_x_coordinate",
                    "long_name": "x coordinate of projection",
                    "units": "m",
                    "axis": "X",
                },
            ),
            "lat": (
                ("y", "x"),
                lat,
                {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north"},
            ),
            "lon": (
                ("y", "x"),
                lon,
                {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east"},
            ),
        },
        attrs=global_attrs,
    )
    zstd = numcodecs.Zstd(level=3)
    time_enc = {"units": _TIME_UNITS, "calendar": "proleptic_gregorian", "dtype": "int64"}
    encoding: dict[str, dict[str, Any]] = {
        VAR_NAME: {"chunks": (1, ny, nx), "compressors": (zstd,), "dtype": "float32"},
        "lat": {"chunks": (ny, nx), "compressors": (zstd,)},
        "lon": {"chunks": (ny, nx), "compressors": (zstd,)},
        "time": dict(time_enc),
        "missing_times": dict(time_enc),
    }
    ds.to_zarr(store, mode="w-", zarr_format=2, consolidated=True, compute=False, encoding=encoding)


def _identifier(preset: DemoPreset, seed: int, n_times: int, shape: tuple[int, int]) -> str:
    """The archive's ``mlcast_dataset_identifier``, distinct per preset, seed and size."""
    ident = f"zz-mlcastpipes-demo-{preset.name}-seed{seed}"
    if n_times != preset.n_times or tuple(shape) != tuple(preset.shape):
        ident += f"-{n_times}x{shape[0]}x{shape[1]}"
    return ident


def _frame_plan(
    events: list[_Event],
) -> tuple[npt.NDArray[np.datetime64], npt.NDArray[np.int64], _F64, npt.NDArray[np.datetime64]]:
    """Return times, event index and minutes into the event of each frame, and missing times."""
    times: list[npt.NDArray[np.datetime64]] = []
    which: list[npt.NDArray[np.int64]] = []
    minutes: list[_F64] = []
    missing: list[npt.NDArray[np.datetime64]] = []
    for i, ev in enumerate(events):
        slots = ev.present_slots()
        times.append(ev.slot_times(slots))
        which.append(np.full(slots.size, i, dtype=np.int64))
        minutes.append(slots.astype(np.float64) * ev.step_min)
        missing.append(ev.slot_times(np.asarray(ev.missing_slots, dtype=np.int64)))
    return (
        np.concatenate(times).astype("datetime64[ns]"),
        np.concatenate(which),
        np.concatenate(minutes),
        np.concatenate(missing).astype("datetime64[ns]"),
    )


def _write_store(
    store: pathlib.Path,
    preset: DemoPreset,
    seed: int,
    n_times: int,
    shape: tuple[int, int],
    progress: bool,
) -> None:
    """Generate the archive into ``store`` (which must not exist)."""
    import zarr

    events = _layout_events(preset, n_times, seed)
    times, which, minutes, missing = _frame_plan(events)
    step_start: np.datetime64 | None = None
    if preset.first_event_step_minutes is not None and len(events) > 1:
        step_start = events[1].start
    _skeleton(store, preset, seed, shape, times, missing, step_start, len(events))

    ny, nx = shape
    covered = _coverage(shape, preset.radars)
    outside = ~covered
    c_rows, c_cols, c_base = _clutter_pixels(seed, covered, preset.clutter)
    block = int(min(64, max(8, _BLOCK_BYTES // (ny * nx * 4))))
    array = zarr.open_array(str(store / VAR_NAME), mode="r+", zarr_format=2)
    model: _EventModel | None = None
    model_index = -1
    total = len(times)
    buffer = np.empty((block, ny, nx), dtype=np.float32)
    from mlcast_pipes.progress import progress_bar

    bar = progress_bar(total, f"demo archive {preset.name}", enabled=progress)
    for start in range(0, total, block):
        stop = min(total, start + block)
        out = buffer[: stop - start]
        for k in range(start, stop):
            ev = int(which[k])
            if ev != model_index:
                model = None  # free the previous event's fields first
                event = events[ev]
                duration = float(event.n_slots * event.step_min)
                model = _EventModel(seed, ev, shape, duration, preset.cells_per_unit_area)
                model_index = ev
            assert model is not None
            frame = _quantize(model.frame(float(minutes[k])))
            if c_rows.size:
                rng = np.random.default_rng(np.random.SeedSequence([seed, 9, k]))
                flicker = rng.uniform(0.8, 1.2, c_rows.size)
                frame[c_rows, c_cols] = _quantize((c_base * flicker).astype(np.float32))
            frame[outside] = np.nan
            out[k - start] = frame
        array[start:stop] = out
        bar.update(stop - start)
    bar.close()


def generate_demo(
    path: str | os.PathLike[str],
    preset: str | DemoPreset = "small",
    seed: int = 0,
    *,
    n_times: int | None = None,
    shape: tuple[int, int] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> pathlib.Path:
    """Write a synthetic MLCast radar archive (zarr format 2, consolidated) to ``path``; return it.

    Written beside ``path`` and renamed into place (never half-written), in blocks of frames.
    It holds ``rainfall_rate`` (float32 mm h-1, one zstd chunk per frame) on a 1 km grid with
    2-D lat/lon, ``crs`` and ``missing_times``; events are separated by gaps of weeks, rates are
    quantised (:func:`quantized_rates`), pixels outside the radars are NaN. ``preset``: a name of
    :data:`PRESETS` or a :class:`DemoPreset`; the same seed and sizes give identical values;
    ``n_times``/``shape`` override the preset's; an existing store raises ParameterError unless
    ``overwrite``.

    Examples
    --------
    >>> import xarray as xr
    >>> path = generate_demo("demo.zarr", "tiny", seed=1, n_times=6, shape=(64, 64))
    >>> da = xr.open_zarr(path)["rainfall_rate"]
    >>> da.dims, da.shape, da.attrs["units"]
    (('time', 'y', 'x'), (6, 64, 64), 'mm h-1')

    """
    resolved = _resolve_preset(preset)
    n, grid = _check_params(resolved, seed, n_times, shape)
    target = pathlib.Path(path)
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise ParameterError(
            f"{target} already exists; pass overwrite=True to replace it, use ensure_demo() to "
            "reuse it, or choose another path"
        )
    tmp = _temp_beside(target)
    try:
        _write_store(tmp, resolved, int(seed), n, grid, progress)
        if target.exists() or target.is_symlink():
            _remove_store(target)
        os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _temp_beside(target: pathlib.Path) -> pathlib.Path:
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParameterError(
            f"cannot create the folder {parent} for the demo archive ({exc}); "
            "choose a writable path"
        ) from exc
    return parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _read_demo_attrs(path: pathlib.Path) -> dict[str, Any] | None:
    """Global attributes of a complete consolidated store, or None when it is not one."""
    import json

    meta = path / ".zmetadata"
    try:
        with open(meta, encoding="utf-8") as fh:
            consolidated = json.load(fh)
        attrs = consolidated["metadata"][".zattrs"]
        if f"{VAR_NAME}/.zarray" not in consolidated["metadata"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return dict(attrs) if isinstance(attrs, dict) else None


def _matches(attrs: dict[str, Any] | None, preset: DemoPreset, seed: int) -> bool:
    if attrs is None:
        return False
    return (
        attrs.get("demo_preset") == preset.name
        and attrs.get("demo_seed") == seed
        and attrs.get("demo_format_version") == DEMO_FORMAT_VERSION
        and list(attrs.get("demo_shape", [])) == list(preset.shape)
        and attrs.get("demo_n_times") == preset.n_times
    )


def ensure_demo(
    path: str | os.PathLike[str],
    preset: str | DemoPreset = "small",
    seed: int = 0,
    *,
    progress: bool = True,
) -> pathlib.Path:
    """Return a demo archive at ``path``, generating it only when absent (safe across processes).

    Concurrent callers may each generate a copy; the first atomic rename wins. A store of the same
    preset, seed and format version is reused, an older version replaced; ParameterError if
    ``path`` holds anything else.

    Examples
    --------
    >>> path = ensure_demo("tiny.zarr", preset="tiny", seed=0)
    >>> ensure_demo("tiny.zarr", preset="tiny", seed=0) == path  # reused
    True
    >>> ensure_demo("tiny.zarr", preset="tiny", seed=1)
    Traceback (most recent call last):
    ...
    mlcast_pipes.errors.ParameterError: tiny.zarr holds the demo preset 'tiny' with seed 0, not
    'tiny' with seed 1; ...

    """
    resolved = _resolve_preset(preset)
    _check_params(resolved, seed, None, None)
    seed = int(seed)
    target = pathlib.Path(path)
    attrs = _read_demo_attrs(target)
    if _matches(attrs, resolved, seed):
        return target
    if target.exists() or target.is_symlink():
        _raise_if_foreign(target, attrs, resolved, seed)
    tmp = _temp_beside(target)
    try:
        _write_store(tmp, resolved, seed, resolved.n_times, resolved.shape, progress)
        for _ in range(10):
            try:
                os.rename(tmp, target)
                return target
            except OSError:
                if not (target.exists() or target.is_symlink()):
                    raise
            # someone else got there first (or an outdated store is in the way)
            attrs = _read_demo_attrs(target)
            if _matches(attrs, resolved, seed):
                return target
            _raise_if_foreign(target, attrs, resolved, seed)
            _move_aside_and_delete(target)
        raise DatasetError(
            f"could not place the demo archive at {target}: it kept being replaced by other "
            "processes; remove it and call ensure_demo() again"
        )
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _raise_if_foreign(
    target: pathlib.Path, attrs: dict[str, Any] | None, preset: DemoPreset, seed: int
) -> None:
    """Raise unless ``target`` is an outdated (or half-written) demo store we may replace."""
    if attrs is not None and "demo_preset" in attrs:
        same = attrs.get("demo_preset") == preset.name and attrs.get("demo_seed") == seed
        if same:
            return  # an older demo format, or other sizes of the same preset: replace it
        raise ParameterError(
            f"{target} holds the demo preset {attrs.get('demo_preset')!r} with seed "
            f"{attrs.get('demo_seed')!r}, not {preset.name!r} with seed {seed}; use another path "
            "(e.g. one named after the preset and seed) or delete it"
        )
    if target.is_dir() and not any(target.iterdir()):
        return
    raise ParameterError(
        f"{target} exists but is not a demo archive made by mlcast_pipes.demo; choose another "
        "path or delete it"
    )


def _move_aside_and_delete(target: pathlib.Path) -> None:
    aside = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(target, aside)
    except FileNotFoundError:
        return  # another process moved it already
    shutil.rmtree(aside, ignore_errors=True)


def _fmt_minutes(delta: np.timedelta64) -> str:
    seconds = float(delta / np.timedelta64(1, "s"))
    if seconds >= 86400 * 2:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600 * 2:
        return f"{seconds / 3600:.1f} h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def _time_structure(
    times: npt.NDArray[np.datetime64],
    missing: npt.NDArray[np.datetime64],
    step_start: np.datetime64 | None,
) -> tuple[list[np.timedelta64], int, np.timedelta64 | None]:
    """Return the nominal step of each regime, the number of gaps between events, the longest."""
    if times.size < 2:
        return [], 0, None
    diffs = np.diff(times)
    regimes = [np.ones(diffs.size, dtype=bool)]
    if step_start is not None:
        before = times[1:] <= step_start
        regimes = [before, ~before]
    steps: list[np.timedelta64] = []
    n_gaps = 0
    longest: np.timedelta64 | None = None
    missing_set = set(missing.astype("datetime64[ns]").astype(np.int64).tolist())
    for sel in regimes:
        if not sel.any():
            continue
        d = diffs[sel]
        step = d.min()
        steps.append(step)
        for i in np.flatnonzero(sel & (diffs > step)):
            # a hole of whole steps entirely listed in missing_times is not a gap
            slots = np.arange(times[i] + step, times[i + 1], step).astype("datetime64[ns]")
            if slots.size and all(int(s) in missing_set for s in slots.astype(np.int64)):
                continue
            n_gaps += 1
            if longest is None or diffs[i] > longest:
                longest = diffs[i]
    return steps, n_gaps, longest


def describe(path: str | os.PathLike[str], max_frames: int = 64) -> str:
    """Summarise a (demo or real) MLCast archive in a few lines for humans.

    Pixel statistics come from at most ``max_frames`` evenly spaced frames. Raises DatasetError if
    the store cannot be opened or has no ``(time, y, x)`` variable.

    Examples
    --------
    >>> path = generate_demo("describe.zarr", "tiny", seed=0, n_times=12, shape=(64, 64))
    >>> print(describe(path))
    archive describe.zarr (demo preset tiny, seed 0)
      variable rainfall_rate [mm h-1] float32, 12 x 64 x 64 (time, y, x), chunks (1, 64, 64)
      time 2021-06-12T10:00 -> ..., step 5 min, 2 events, 1 gap, longest ... days, ...
      pixels NaN ...%, wet (> 0.1 mm h-1) ...% of valid, max ... mm h-1 (from 12 of 12 frames)

    """
    import xarray as xr

    try:
        ds = xr.open_zarr(os.fspath(path), chunks=None)
    except Exception as exc:
        raise DatasetError(
            f"cannot open {path} as a zarr store ({type(exc).__name__}: {exc}); check the path, "
            "or generate the demo with mlcast_pipes.demo.generate_demo()"
        ) from exc
    candidates = [name for name, v in ds.data_vars.items() if v.dims == ("time", "y", "x")]
    if not candidates:
        raise DatasetError(
            f"{path} has no variable with dims (time, y, x); variables there: "
            f"{sorted(str(k) for k in ds.data_vars)}"
        )
    name = VAR_NAME if VAR_NAME in candidates else str(candidates[0])
    da = ds[name]
    nt, ny, nx = da.shape
    times = np.asarray(ds["time"].values).astype("datetime64[ns]")
    missing = (
        np.asarray(ds["missing_times"].values).astype("datetime64[ns]")
        if "missing_times" in ds
        else np.zeros(0, dtype="datetime64[ns]")
    )
    step_attr = ds.attrs.get("consistent_timestep_start")
    step_start = np.datetime64(str(step_attr).rstrip("Z"), "ns") if step_attr else None
    steps, n_gaps, longest = _time_structure(times, missing, step_start)
    chunks = da.encoding.get("chunks")
    units = da.attrs.get("units", "?")
    a = ds.attrs
    head = f"archive {os.fspath(path)}"
    if "demo_preset" in a:
        head += f" (demo preset {a['demo_preset']}, seed {a.get('demo_seed')})"
    elif "mlcast_dataset_identifier" in a:
        head += f" ({a['mlcast_dataset_identifier']})"
    lines = [
        head,
        f"  variable {name} [{units}] {da.dtype}, {nt} x {ny} x {nx} (time, y, x), chunks {chunks}",
    ]
    if nt:
        step_txt = " then ".join(_fmt_minutes(s) for s in steps) or "-"
        if step_start is not None:
            step_txt += f" (from {np.datetime_as_string(step_start, unit='m')})"
        gap_txt = f", longest {_fmt_minutes(longest)}" if longest is not None else ""
        lines.append(
            f"  time {np.datetime_as_string(times[0], unit='m')} -> "
            f"{np.datetime_as_string(times[-1], unit='m')}, step {step_txt}, "
            f"{n_gaps + 1} event{_s(n_gaps + 1)}, {n_gaps} gap{_s(n_gaps)}{gap_txt}, "
            f"{missing.size} missing time{_s(missing.size)}"
        )
        pick = np.unique(np.linspace(0, nt - 1, min(nt, max(1, max_frames))).round().astype(int))
        n_nan = n_valid = n_wet = 0
        vmax = -np.inf
        for i in pick:
            frame = np.asarray(da[int(i)].values, dtype=np.float32)
            valid = np.isfinite(frame)
            n_nan += int(frame.size - valid.sum())
            n_valid += int(valid.sum())
            vals = frame[valid]
            n_wet += int((vals > _WET_THRESHOLD).sum())
            if vals.size:
                vmax = max(vmax, float(vals.max()))
        total = pick.size * ny * nx
        wet = n_wet / n_valid if n_valid else float("nan")
        lines.append(
            f"  pixels NaN {n_nan / total:.1%}, wet (> {_WET_THRESHOLD} {units}) {wet:.1%} of "
            f"valid, max {vmax:.1f} {units} (from {pick.size} of {nt} frames)"
        )
    return "\n".join(lines)


def _s(n: int) -> str:
    return "" if n == 1 else "s"
