"""MLCast dataset spec checks: what the pipeline needs (errors) and deviations (warnings).

Also the spec's tables of allowed units and global attributes.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import xarray as xr

from mlcast_pipes.dataset.select import STANDARD_NAMES, _prepare, _std
from mlcast_pipes.errors import DatasetError
from mlcast_pipes.transforms import canonical_units, known_units, units_kind

__all__ = [
    "KNOWN_UNITS",
    "SPEC_GLOBAL_ATTRS",
    "UNITS_BY_STANDARD_NAME",
    "MLCastSpecWarning",
    "validate",
]


_RATE_UNITS = ("mm h-1", "mm/h", "kg m-2 h-1")
_AMOUNT_UNITS = ("mm", "kg m-2")
_DBZ_UNITS = ("dBZ",)
#: Units the spec allows for each standard_name.
UNITS_BY_STANDARD_NAME: dict[str, tuple[str, ...]] = {
    "rainfall_flux": _RATE_UNITS,
    "precipitation_flux": _RATE_UNITS,
    "equivalent_reflectivity_factor": _DBZ_UNITS,
    "precipitation_amount": _AMOUNT_UNITS,
    "rainfall_amount": _AMOUNT_UNITS,
}
#: Every unit the pipeline can convert to a rain rate, in canonical spelling (the one units table
#: of :mod:`mlcast_pipes.transforms`); other spellings such as ``mm/hr`` reduce to these.
KNOWN_UNITS: tuple[str, ...] = tuple(known_units())
#: Global attributes the spec asks for.
SPEC_GLOBAL_ATTRS: tuple[str, ...] = (
    "license",
    "mlcast_dataset_identifier",
    "mlcast_dataset_version",
    "mlcast_created_on",
    "mlcast_created_by",
    "mlcast_created_with",
)
_MIN_SIDE = 256
_MAX_RESOLUTION_M = 1000.0


class MLCastSpecWarning(UserWarning):
    """An archive deviates from the MLCast dataset spec in a way the pipeline can live with.

    Examples
    --------
    >>> import warnings
    >>> from mlcast_pipes.dataset import open_mlcast
    >>> from mlcast_pipes.demo import generate_demo
    >>> path = generate_demo("grid64.zarr", "tiny", seed=0, n_times=4, shape=(64, 64))
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     da = open_mlcast(path)  # smaller than the 256 pixels the spec asks
    >>> [w.category.__name__ for w in caught]
    ['MLCastSpecWarning']

    """


def validate(
    ds: xr.Dataset,
    var_name: str | None = None,
    *,
    strict: bool = False,
    hint: str | None = None,
) -> list[str]:
    """Check a dataset (as stored) against the MLCast structure; return the deviations warned about.

    What the pipeline needs raises DatasetError: one usable data variable, dims (time, y, x),
    float dtype, increasing times, units from :data:`KNOWN_UNITS`, a decodable ``missing_times``.
    Other deviations (chunking, compression, CRS, global attributes, grid size, resolution, ...)
    warn with :class:`MLCastSpecWarning`, or raise when ``strict``. ``hint`` names the preferred
    variable when several have a suitable ``standard_name``.

    Examples
    --------
    >>> import warnings
    >>> times = np.array(["2021-06-12T10:00", "2021-06-12T10:05"], "M8[ns]")
    >>> rain = (("time", "y", "x"), np.zeros((2, 8, 8), "f4"), {"units": "mm h-1"})
    >>> with warnings.catch_warnings(record=True):
    ...     messages = validate(xr.Dataset({"rainfall_rate": rain}, coords={"time": times}))
    >>> print(messages[0])
    variable 'rainfall_rate' has no 'standard_name' attribute; set it (e.g. 'rainfall_flux' for
    units 'mm h-1').

    """
    label = str(ds.encoding.get("source") or "the dataset")
    _, _, messages = _validated(ds, var_name, strict=strict, hint=hint, label=label)
    return messages


def _canonical_units(units: Any) -> str | None:
    return canonical_units(units)


def _infer_standard_name(units: str) -> str:
    kind = units_kind(units) if canonical_units(units) else "amount"
    if kind == "reflectivity":
        return "equivalent_reflectivity_factor"
    if kind == "rate":
        return "rainfall_flux"
    return "precipitation_amount"


def _spec_spelling(units: Any, allowed: tuple[str, ...]) -> bool:
    """Whether ``units`` is written as the spec allows (case and spacing aside)."""
    text = " ".join(str(units).split()).lower()
    return text in {a.lower() for a in allowed}


def _to_datetime64(value: Any, what: str) -> np.datetime64:
    import pandas as pd

    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise DatasetError(
            f"{what} = {value!r} is not a date/time; write it as ISO 8601, e.g. "
            "'2020-01-01T00:00:00'."
        ) from exc
    if pd.isna(ts):
        raise DatasetError(f"{what} = {value!r} is not a date/time; write it as ISO 8601.")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    out: np.datetime64 = ts.to_datetime64().astype("datetime64[ns]")
    return out


def _read_missing_times(ds: xr.Dataset, label: str) -> np.ndarray:
    if "missing_times" not in ds.variables:
        return np.array([], dtype="datetime64[ns]")
    var = ds.variables["missing_times"]
    if isinstance(var, xr.IndexVariable):  # on its own dimension: in memory already
        values = np.asarray(var.values)
    else:  # synchronously: a forked worker inherits dask's thread pool without its threads
        values = np.asarray(var.compute(scheduler="synchronous").values)
    values = values.ravel()
    if values.size == 0:
        return np.array([], dtype="datetime64[ns]")
    if not np.issubdtype(values.dtype, np.datetime64):
        raise DatasetError(
            f"'missing_times' of {label} holds {values.dtype} values, not date/times; give it CF "
            "time units (e.g. attrs units='minutes since 2000-01-01 00:00:00') so it decodes to "
            "datetime64."
        )
    values = values.astype("datetime64[ns]")
    return np.unique(values[~np.isnat(values)])


def _check_needed(ds: xr.Dataset, name: str, label: str) -> None:
    """Raise DatasetError for what the pipeline cannot work without."""
    var = ds[name]
    if not np.issubdtype(var.dtype, np.floating):
        raise DatasetError(
            f"variable {name!r} of {label} has dtype {var.dtype}; the pipeline needs float16/32/"
            "64 with NaN for no data. Convert it, or give it scale_factor/_FillValue attributes "
            "so xarray decodes it to float."
        )
    if "time" not in ds.variables:
        raise DatasetError(
            f"{label} has no time coordinate values; add a 'time' coordinate with CF time units."
        )
    times = np.asarray(ds.variables["time"].values)
    if not np.issubdtype(times.dtype, np.datetime64):
        raise DatasetError(
            f"the time coordinate of {label} has dtype {times.dtype}, not datetime64; give it CF "
            "units such as 'minutes since 2000-01-01 00:00:00' (standard calendar) so it decodes."
        )
    if times.size == 0:
        raise DatasetError(f"{label} has no time steps; write some frames first.")
    if np.isnat(times).any():
        first = int(np.flatnonzero(np.isnat(times))[0])
        raise DatasetError(
            f"the time coordinate of {label} has a missing value (NaT) at index {first}; every "
            "frame needs a valid time. Remove or fix that frame."
        )
    diffs = np.diff(times.astype("datetime64[ns]").view(np.int64))
    bad = np.flatnonzero(diffs <= 0)
    if bad.size:
        i = int(bad[0])
        a, b = _fmt_time(times[i]), _fmt_time(times[i + 1])
        kind = "duplicate" if diffs[i] == 0 else "decreasing"
        more = f" ({bad.size} such places in all)" if bad.size > 1 else ""
        raise DatasetError(
            f"the time coordinate of {label} is not strictly increasing: {kind} times at "
            f"indices {i} and {i + 1} ({a} then {b}){more}. Sort the archive by time and drop "
            "duplicate frames (e.g. ds.sortby('time').drop_duplicates('time')) and rewrite it."
        )
    units = var.attrs.get("units")
    if units is None or not str(units).strip():
        raise DatasetError(
            f"variable {name!r} of {label} has no 'units' attribute; set it to one of "
            f"{list(KNOWN_UNITS)}."
        )
    if _canonical_units(units) is None:
        raise DatasetError(
            f"variable {name!r} of {label} has units {str(units)!r}, which the pipeline does not "
            f"know; known units are {list(KNOWN_UNITS)} (other spellings such as 'mm/h', "
            "'mm/hr', 'mm h^-1' or 'kg/m2/s' are read too). Convert the data or fix the "
            "'units' attribute."
        )
    _read_missing_times(ds, label)


def _fmt_time(value: Any) -> str:
    return str(np.datetime_as_string(np.datetime64(value, "s"), unit="s"))


def _deviations(ds: xr.Dataset, name: str, label: str) -> list[str]:
    """Spec deviations the pipeline can live with, each with its fix."""
    out: list[str] = []
    var = ds[name]
    _, ny, nx = (int(n) for n in var.shape)
    std = _std(var)
    units = _canonical_units(var.attrs.get("units")) or ""
    if not std:
        out.append(
            f"variable {name!r} has no 'standard_name' attribute; set it (e.g. "
            f"'{_infer_standard_name(units)}' for units {units!r})."
        )
    elif std not in STANDARD_NAMES:
        out.append(
            f"variable {name!r} has standard_name {std!r}, not one of {list(STANDARD_NAMES)}; "
            "fix the attribute."
        )
    else:
        if name.lower() not in STANDARD_NAMES[std]:
            out.append(
                f"variable name {name!r} is not one the spec allows for standard_name {std!r} "
                f"({', '.join(STANDARD_NAMES[std])}); rename the variable."
            )
        allowed = UNITS_BY_STANDARD_NAME[std]
        if units and units_kind(units) != units_kind(allowed[0]):
            out.append(
                f"units {units!r} do not fit standard_name {std!r} (expected one of "
                f"{list(allowed)}); fix the attributes."
            )
        elif units and not _spec_spelling(var.attrs.get("units"), allowed):
            out.append(
                f"units {var.attrs.get('units')!r} are read as {units!r} (converted to mm/h where "
                f"needed); the spec asks for one of {list(allowed)}: fix the attribute or "
                "convert the data."
            )
    if not var.attrs.get("long_name"):
        out.append(f"variable {name!r} has no 'long_name' attribute; add one.")
    chunks = var.encoding.get("chunks")
    if chunks is not None and tuple(int(c) for c in chunks) != (1, ny, nx):
        out.append(
            f"variable {name!r} is chunked {tuple(int(c) for c in chunks)} on disk, not one chunk "
            f"per time step (1, {ny}, {nx}); reading tiles will decode more than needed. Rewrite "
            "it with encoding chunks (1, ny, nx)."
        )
    if "compressors" in var.encoding or "compressor" in var.encoding:
        comp = var.encoding.get("compressors", var.encoding.get("compressor"))
        if not comp:
            out.append(
                f"variable {name!r} is stored without compression; rewrite it with a compressor "
                "(zstd recommended)."
            )
    grid_mapping = var.attrs.get("grid_mapping") or var.encoding.get("grid_mapping")
    if not grid_mapping:
        out.append(
            f"variable {name!r} has no 'grid_mapping' attribute; add one naming a CRS variable "
            "(usually 'crs') holding crs_wkt and spatial_ref."
        )
    elif str(grid_mapping) not in ds.variables:
        out.append(
            f"grid_mapping {grid_mapping!r} of {name!r} names no variable in the dataset; add a "
            "CRS variable of that name with crs_wkt and spatial_ref."
        )
    else:
        crs = ds.variables[str(grid_mapping)]
        if not (crs.attrs.get("crs_wkt") or crs.attrs.get("spatial_ref")):
            out.append(
                f"CRS variable {grid_mapping!r} has neither 'crs_wkt' nor 'spatial_ref'; add "
                "the projection's WKT."
            )
    missing_attrs = [a for a in SPEC_GLOBAL_ATTRS if a not in ds.attrs]
    if missing_attrs:
        out.append(f"global attributes {missing_attrs} are missing; add them.")
    small = [f"{d}={n}" for d, n in (("y", ny), ("x", nx)) if n < _MIN_SIDE]
    if small:
        out.append(
            f"the grid is smaller than {_MIN_SIDE} pixels along {', '.join(small)}; the spec asks "
            f"each spatial dim to be >= {_MIN_SIDE}."
        )
    out.extend(_resolution_deviations(ds))
    if "lat" not in ds.coords or "lon" not in ds.coords:
        out.append("there are no 2-D 'lat'/'lon' coordinates on (y, x); add them.")
    if "missing_times" not in ds.variables:
        out.append(
            "there is no 'missing_times' variable; add one (empty if no nominal step is absent) "
            "so that windows never span absent frames."
        )
    else:
        mt = _read_missing_times(ds, label)
        times = np.asarray(ds.variables["time"].values).astype("datetime64[ns]")
        overlap = np.intersect1d(mt, times)
        if overlap.size:
            out.append(
                f"{overlap.size} 'missing_times' values are also in the time coordinate (first "
                f"{_fmt_time(overlap[0])}); missing_times must be disjoint from time."
            )
    cts = ds.attrs.get("consistent_timestep_start")
    if cts is not None:
        try:
            _to_datetime64(cts, "consistent_timestep_start")
        except DatasetError as exc:
            out.append(str(exc))
    return out


def _resolution_deviations(ds: xr.Dataset) -> list[str]:
    out: list[str] = []
    for dim in ("y", "x"):
        if dim not in ds.variables:
            out.append(
                f"there is no {dim!r} coordinate; add projected {dim} values (m) so resolution "
                "and positions are known."
            )
            continue
        coord = ds.variables[dim]
        values = np.asarray(coord.values, dtype=np.float64)
        if values.size < 2:
            continue
        units = str(coord.attrs.get("units", "m")).strip().lower()
        if units in ("m", "metre", "meter", "metres", "meters"):
            factor = 1.0
        elif units in ("km", "kilometre", "kilometer", "kilometres", "kilometers"):
            factor = 1000.0
        else:
            out.append(
                f"coordinate {dim!r} has units {units!r}; the spec asks for projected m or km."
            )
            continue
        step = float(np.nanmedian(np.abs(np.diff(values)))) * factor
        if step > _MAX_RESOLUTION_M:
            out.append(
                f"the {dim} resolution is {step:g} m, coarser than the spec's 1 km; the pipeline "
                "works, but the archive does not meet the spec."
            )
    return out


def _validated(
    ds: xr.Dataset, var_name: str | None, *, strict: bool, hint: str | None, label: str
) -> tuple[xr.Dataset, str, list[str]]:
    """Prepare, check what is needed, then warn about (or, if strict, raise on) deviations."""
    ds, name, notes = _prepare(ds, var_name, hint, label)
    _check_needed(ds, name, label)
    messages = notes + _deviations(ds, name, label)
    if not messages:
        return ds, name, messages
    if strict:
        listed = "\n".join(f"  - {m}" for m in messages)
        raise DatasetError(
            f"{label} deviates from the MLCast dataset spec (strict=True):\n{listed}\n"
            "Fix the archive, or open it with strict=False to only warn."
        )
    for message in messages:
        warnings.warn(f"{label}: {message}", MLCastSpecWarning, stacklevel=3)
    return ds, name, messages
