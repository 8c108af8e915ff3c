"""Recognise the data variable and the time/y/x/lat/lon coordinates of an archive.

Names and dims are matched to the MLCast spec's spellings; the result is a (time, y, x) layout.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from mlcast_pipes.errors import DatasetError

__all__ = ["STANDARD_NAMES", "select_variable"]


#: Variable names the MLCast spec allows for each CF standard_name (compared case-insensitively).
STANDARD_NAMES: dict[str, tuple[str, ...]] = {
    "rainfall_flux": ("mmh", "rr", "rain_rate", "rainfall_rate", "rainfall_flux"),
    "precipitation_flux": ("tprate", "prate"),
    "equivalent_reflectivity_factor": ("equivalent_reflectivity_factor", "dbz", "rare"),
    "precipitation_amount": ("rainfall_amount", "mm", "precipitation_amount", "tp"),
    "rainfall_amount": ("rainfall_amount", "mm", "precipitation_amount", "tp"),
}
_TIME_NAMES = ("time", "t", "valid_time", "datetime")
_X_NAMES = ("x", "easting", "projection_x_coordinate")
_Y_NAMES = ("y", "northing", "projection_y_coordinate")
_LON_NAMES = ("lon", "longitude")
_LAT_NAMES = ("lat", "latitude")


def select_variable(ds: xr.Dataset, var_name: str | None, *, hint: str | None = None) -> str:
    """Name of the data variable to use (DatasetError if none or several qualify).

    ``var_name`` None picks by CF ``standard_name``, then by the spec's variable names, then the
    only 3-D variable; ``hint`` (e.g. a catalog's ``variable``) decides between candidates.

    Examples
    --------
    >>> attrs = {"standard_name": "rainfall_flux"}
    >>> rain = xr.Variable(("time", "y", "x"), np.zeros((2, 4, 4)), attrs)
    >>> quality = xr.Variable(("y", "x"), np.ones((4, 4)))
    >>> select_variable(xr.Dataset({"rr": rain, "quality": quality}), None)
    'rr'
    >>> select_variable(xr.Dataset({"rr": rain, "rain_rate": rain}), None, hint="rain_rate")
    'rain_rate'

    """
    label = str(ds.encoding.get("source") or "the dataset")
    return _select(ds, var_name, hint, label)


def _std(var: xr.DataArray | xr.Variable) -> str:
    return str(var.attrs.get("standard_name", "")).strip().lower()


def _select(ds: xr.Dataset, var_name: str | None, hint: str | None, label: str) -> str:
    data_vars = [str(v) for v in ds.data_vars]
    if var_name is not None:
        if var_name in ds.data_vars:
            return var_name
        lower = [v for v in data_vars if v.lower() == str(var_name).lower()]
        maybe = f" Did you mean {lower[0]!r}?" if lower else ""
        kind = " It is a coordinate, not a data variable." if var_name in ds.coords else ""
        raise DatasetError(
            f"variable {var_name!r} is not in {label}.{kind}{maybe} Its data variables are "
            f"{data_vars}; pass one of these as var_name (or None to pick by standard_name)."
        )
    by_std = [v for v in data_vars if _std(ds[v]) in STANDARD_NAMES and ds[v].ndim >= 2]
    if len(by_std) == 1:
        return by_std[0]
    if len(by_std) > 1:
        if hint is not None and hint in by_std:
            return hint
        listed = ", ".join(f"{v!r} ({_std(ds[v])})" for v in by_std)
        raise DatasetError(
            f"{label} has several precipitation variables: {listed}. Pass var_name= one of "
            f"{by_std}."
        )
    if hint is not None and hint in ds.data_vars:
        return hint
    all_names = {n for names in STANDARD_NAMES.values() for n in names}
    by_name = [v for v in data_vars if v.lower() in all_names and ds[v].ndim >= 2]
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise DatasetError(
            f"{label} has several data variables that could be the precipitation field: "
            f"{by_name}; none has a CF standard_name. Pass var_name= one of them."
        )
    three_d = [v for v in data_vars if ds[v].ndim == 3]
    if len(three_d) == 1:
        return three_d[0]
    raise DatasetError(
        f"{label} has no data variable with a precipitation standard_name "
        f"({', '.join(STANDARD_NAMES)}); its data variables are {data_vars}. Pass var_name=, "
        "or set the variable's 'standard_name' attribute."
    )


def _dim_role(ds: xr.Dataset, dim: str) -> str | None:
    """Whether a dimension is time, y or x, from its coordinate's attributes or its name."""
    var = ds.variables.get(dim)
    name = dim.lower()
    if var is not None:
        std = _std(var)
        if std == "time":
            return "time"
        if std in ("projection_x_coordinate", "longitude", "grid_longitude"):
            return "x"
        if std in ("projection_y_coordinate", "latitude", "grid_latitude"):
            return "y"
        axis = str(var.attrs.get("axis", "")).strip().upper()
        if axis == "T":
            return "time"
        if axis in ("X", "Y") and "units" in var.attrs:
            return axis.lower()
        if np.issubdtype(var.dtype, np.datetime64):
            return "time"
    if name in _TIME_NAMES:
        return "time"
    if name in _X_NAMES or name in _LON_NAMES:
        return "x"
    if name in _Y_NAMES or name in _LAT_NAMES:
        return "y"
    return None


def _prepare(
    ds: xr.Dataset, var_name: str | None, hint: str | None, label: str
) -> tuple[xr.Dataset, str, list[str]]:
    """Pick the variable, rename its dims to time/y/x and find 2-D lat/lon.

    Returns the renamed dataset, the variable name and notes for the spec-deviation list.
    """
    notes: list[str] = []
    name = _select(ds, var_name, hint, label)
    var = ds[name]
    dims = tuple(str(d) for d in var.dims)
    if len(dims) != 3:
        raise DatasetError(
            f"variable {name!r} of {label} has {len(dims)} dims {dims}; the pipeline needs "
            "exactly (time, y, x). Select or squeeze the extra dims and rewrite the archive."
        )
    roles = [_dim_role(ds, d) for d in dims]
    if sorted(r or "?" for r in roles) != ["time", "x", "y"]:
        found = ", ".join(f"{d}->{r or 'unknown'}" for d, r in zip(dims, roles, strict=True))
        raise DatasetError(
            f"cannot tell time, y and x apart in the dims {dims} of {name!r} in {label} "
            f"(understood as {found}). Name the dims time, y and x, or give their coordinates "
            "standard_name time / projection_y_coordinate / projection_x_coordinate (or axis "
            "T / Y / X with units)."
        )
    mapping = {d: r for d, r in zip(dims, roles, strict=True) if r is not None and d != r}
    for old, new in mapping.items():
        if new in ds.variables and new not in mapping:
            raise DatasetError(
                f"dim {old!r} of {name!r} in {label} is the {new} axis, but the dataset also has "
                f"another variable named {new!r}; rename one of them."
            )
    if mapping:
        ds = ds.rename(mapping)
    new_dims = tuple(str(d) for d in ds[name].dims)
    if new_dims != ("time", "y", "x"):
        shown = f"{dims} (that is {new_dims})" if mapping else f"{dims}"
        raise DatasetError(
            f"variable {name!r} of {label} has dims in the order {shown}, but MLCast archives "
            "need (time, y, x) with one chunk per time step. Rewrite the archive with "
            "ds.transpose('time', 'y', 'x') and chunks (1, ny, nx)."
        )
    for dim in ("y", "x"):
        if dim in ds.variables and _std(ds.variables[dim]) in ("latitude", "longitude"):
            notes.append(
                f"the {dim} axis is latitude/longitude, not a projected coordinate; MLCast "
                "archives use projected x/y in m or km."
            )
    ds = _find_lat_lon(ds, name)
    if "time" in ds.variables:
        tv = ds.variables["time"]
        if np.issubdtype(tv.dtype, np.datetime64) and tv.dtype != np.dtype("datetime64[ns]"):
            ds = ds.assign_coords(
                time=("time", np.asarray(tv.values).astype("datetime64[ns]"), dict(tv.attrs))
            )
    return ds, name, notes


def _find_lat_lon(ds: xr.Dataset, name: str) -> xr.Dataset:
    coords: list[str] = []
    for target, std, names in (("lat", "latitude", _LAT_NAMES), ("lon", "longitude", _LON_NAMES)):
        found = None
        for vname, var in ds.variables.items():
            v = str(vname)
            if v == name or tuple(var.dims) != ("y", "x"):
                continue
            if _std(var) == std or v.lower() in names:
                found = v
                break
        if found is None:
            continue
        if found != target:
            if target in ds.variables:
                continue
            ds = ds.rename({found: target})
        coords.append(target)
    if coords:
        ds = ds.set_coords(coords)
    return ds
