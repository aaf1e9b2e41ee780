"""Bring your own data: fields and point observations from the files analysts already have.

- `from_xarray(obj, ...)` turns a gridded `xr.Dataset` / `xr.DataArray` (any data variable,
  dims in any order, found by name; e.g. a reanalysis with `time, depth, lat, lon`) into a
  field collection. CF-encoded datetimes become a float time axis (origin and units kept in
  attrs); missing values (land, gaps) stay NaN, a mask rather than an error.
- `observations_from_dataframe(df, ...)` reads a point table (one row per observation: value,
  time, one column per space dim) into an `ObservationSet`.
- `observations_from_xarray(ds, ...)` reads point data on any dims into an `ObservationSet`,
  e.g. Argo-style profiles `(N_PROF, N_LEVELS)` with per-profile time and position: every
  variable is broadcast to the value's dims and flattened.

Rows / levels with a missing value, time or coordinate are dropped, never silently: the counts
are in `attrs["dropped"]` of the result (with `attrs["n_rows"]`, the number read).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import bad_input
from .fields import SPLIT_VALUES, make_field_dataset
from .observations import ObservationSet
from .time_units import _CF_SINCE, TIME_UNITS, to_float_time

__all__ = ["TIME_UNITS", "from_xarray", "observations_from_dataframe", "observations_from_xarray", "to_float_time"]

_TIME_NAMES = ("time", "t", "TIME", "Time", "JULD", "date", "datetime")
_TRAJECTORY_NAMES = ("trajectory",)


# -- fields ---------------------------------------------------------------------------------------
def _pick_variable(obj: Any, variable: str | None) -> xr.DataArray:
    if isinstance(obj, xr.DataArray):
        if variable is not None and variable != obj.name:
            raise bad_input("variable", f"None or the DataArray's name {obj.name!r}", variable)
        return obj
    if not isinstance(obj, xr.Dataset):
        raise bad_input("obj", "an xr.Dataset or xr.DataArray", type(obj).__name__)
    names = [str(v) for v in obj.data_vars]
    if variable is None:
        if len(names) != 1:
            raise bad_input("variable", f"the name of the data variable to read, one of {names}", variable)
        variable = names[0]
    if variable not in obj.data_vars:
        raise bad_input("variable", f"a data variable of the dataset, one of {names}", variable)
    return obj[variable]


def _check_dim_map(dims: Any, available: Sequence[str], argument: str = "dims") -> dict[str, str]:
    if dims is None:
        return {}
    if not isinstance(dims, Mapping):
        raise bad_input(argument, "a mapping {name in the data: name to use}, e.g. {'latitude': 'lat'}", dims)
    out: dict[str, str] = {}
    for src, dst in dims.items():
        if src not in available:
            raise bad_input(argument, f"keys that are dims of the data {tuple(available)}", src)
        if not isinstance(dst, str) or not dst:
            raise bad_input(f"{argument}[{src!r}]", "a non-empty string", dst)
        out[str(src)] = dst
    targets = [*out.values(), *(d for d in available if d not in out)]
    dup = sorted({d for d in targets if targets.count(d) > 1})
    if dup:
        raise bad_input(argument, "a mapping that leaves every dim a distinct name", f"duplicate names {dup}")
    return out


def _find_time_dim(da: xr.DataArray) -> str | None:
    for name in _TIME_NAMES:
        if name in da.dims:
            return name
    hits = []
    for d in da.dims:
        if d in da.coords:
            c = da.coords[d]
            cf_units = isinstance(c.attrs.get("units"), str) and _CF_SINCE.match(c.attrs["units"])
            if c.dtype.kind == "M" or c.attrs.get("axis") == "T" or c.attrs.get("standard_name") == "time" or cf_units:
                hits.append(str(d))
    return hits[0] if len(hits) == 1 else None


def from_xarray(
    obj: xr.Dataset | xr.DataArray,
    *,
    variable: str | None = None,
    dims: Mapping[str, str] | None = None,
    space_dims: Sequence[str] | None = None,
    time_origin: Any = None,
    time_units: str = "days",
    units: str | None = None,
    long_name: str | None = None,
    coord_units: Mapping[str, str] | None = None,
    split: str = "train",
) -> xr.Dataset:
    """A field collection from any gridded xarray data (e.g. an ocean reanalysis file).

    Dims are found by name, in any order: `time` (or a dim named `t`, `TIME`, `JULD`, or the
    one dim whose coordinate is datetime / CF time), an optional `trajectory` (else one
    trajectory is made), and every other dim is a space dim with a 1-D coordinate. Rename dims
    with `dims`, e.g. `{"latitude": "lat", "longitude": "lon", "ocean_time": "time"}`.

    **Arguments:**

    - `obj`: `xr.Dataset` (pick the data variable with `variable`) or `xr.DataArray`.
    - `variable`: data variable to read (default: the only one).
    - `dims`: mapping *name in the data -> name to use*, applied first.
    - `space_dims`: order of the space dims in the result (after renaming), e.g. a trained
      run's `run.space_dims`; default the order in the data. Must name exactly the space dims.
    - `time_origin`, `time_units`: for datetime (or CF-encoded) time axes, the date that becomes
      0 (default the first time stamp) and the float units (`"days"`, `"hours"`, `"minutes"`,
      `"seconds"`). The time coordinate keeps `time_origin` and `calendar` in its attrs.
    - `units`, `long_name`: of the field (default: the variable's attrs; `"unknown"` / the
      variable name if absent); `coord_units`: units per coordinate where the data has no
      `units` attr (default `"unknown"`).
    - `split`: `"train"` (default: data to fit a model on) or `"test"`, given to every trajectory
      (re-split with `assign_split`).

    Coordinates that decrease (e.g. latitude north to south) are sorted increasing; duplicated
    coordinate values are an error. Missing values (NaN, or the `_FillValue` / `missing_value`
    of undecoded data) stay NaN: a mask that `save_fields`, `sample_observations` and the
    metrics respect (`attrs["n_missing"]` counts them). Infinities are an error.

    **Returns:** a field collection (`field (trajectory, time, *space_dims)`, physical units)
    with a `split`; `attrs["simulator"] = "external"` and `attrs["parameters"]` recording the
    source variable, the dims mapping, the time origin and what was sorted.
    """
    da = _pick_variable(obj, variable)
    name = str(da.name) if da.name is not None else "field"
    mapping = _check_dim_map(dims, [str(d) for d in da.dims])
    if mapping:
        # Rename the dims and their coordinates; a non-dim coordinate that already has the new
        # name (e.g. dim `x` with coordinate `lon(x)`) becomes the dim's coordinate.
        for src, dst in mapping.items():
            if dst in da.coords and dst not in da.dims and src in da.coords:
                da = da.drop_vars(dst)
        da = da.rename(mapping)
    time_dim = "time" if "time" in da.dims else _find_time_dim(da)
    if time_dim is None:
        raise bad_input("dims", "a mapping that names the time dim, e.g. {'ocean_time': 'time'} (no dim named "
                        f"'time' among {tuple(map(str, da.dims))})", dims)
    if time_dim != "time":
        if "time" in da.coords:
            da = da.drop_vars("time")
        da = da.rename({time_dim: "time"})
    space = [str(d) for d in da.dims if d not in ("time", *_TRAJECTORY_NAMES)]
    if not space:
        raise bad_input("obj", "at least one space dim besides time/trajectory", tuple(map(str, da.dims)))
    if space_dims is None:
        order = space
    else:
        if isinstance(space_dims, str) or not isinstance(space_dims, Sequence):
            raise bad_input("space_dims", "a sequence of dim names", space_dims)
        order = [str(d) for d in space_dims]
        if sorted(order) != sorted(space) or len(set(order)) != len(order):
            missing = sorted(set(order) - set(space))
            extra = sorted(set(space) - set(order))
            raise bad_input("space_dims", f"the data's space dims {tuple(space)} in some order (map other names "
                            "with dims={'name in the data': 'name'})",
                            f"{tuple(order)}: not in the data {missing}, not named {extra}")
    for d in ("time", *order):
        if d not in da.coords:
            raise bad_input("obj", f"a 1-D coordinate for dim {d!r}", "none")
        if da.coords[d].ndim != 1:
            raise bad_input("obj", f"a 1-D coordinate for dim {d!r}", f"{da.coords[d].ndim}-D")
    if "trajectory" not in da.dims:
        da = da.expand_dims(trajectory=[0])
    da = da.transpose("trajectory", "time", *order)
    # Drop the non-dim coordinates (they are not part of a field collection).
    da = da.reset_coords(drop=True)

    t, time_info = to_float_time(da["time"].values, da["time"].attrs, time_origin=time_origin,
                                 time_units=time_units, argument="obj['time']")
    if np.isnan(t).any():
        raise bad_input("obj['time']", "no missing time stamps", f"{int(np.isnan(t).sum())} NaT")
    da = da.assign_coords(time=("time", t, da["time"].attrs))
    sorted_dims = []
    for d in ("time", *order):
        c = np.asarray(da[d].values)
        if c.dtype.kind not in "iuf":
            raise bad_input(f"obj[{d!r}]", "a numeric coordinate", f"dtype {c.dtype}")
        if c.size > 1 and (np.diff(c.astype(np.float64)) < 0).any():
            da = da.sortby(d)
            sorted_dims.append(d)
        if np.unique(c).size != c.size:
            raise bad_input(f"obj[{d!r}]", "a coordinate without repeated values",
                            f"{c.size - np.unique(c).size} repeated")

    values = np.asarray(da.values)
    if values.dtype.kind in "iub":
        values = values.astype(np.float64)
    if values.dtype.kind != "f":
        raise bad_input("obj", f"a numeric data variable {name!r}", f"dtype {values.dtype}")
    n_fill = 0
    for attr in ("_FillValue", "missing_value"):
        fill = da.attrs.get(attr)
        if fill is not None:
            hit = np.isin(values, np.atleast_1d(np.asarray(fill, dtype=values.dtype)))
            if hit.any():
                values = np.where(hit, np.nan, values)
                n_fill += int(hit.sum())
    if np.isinf(values).any():
        raise bad_input("obj", f"finite values or NaN (missing) in {name!r}",
                        f"{int(np.isinf(values).sum())} infinite entries")

    def coord_unit(d: str) -> str:
        u = da[d].attrs.get("units")
        if d == "time":
            return str(time_info["units"])
        if isinstance(u, str) and u:
            return u
        return str((coord_units or {}).get(d, "unknown"))

    if coord_units is not None and not isinstance(coord_units, Mapping):
        raise bad_input("coord_units", "a mapping dim name -> units string", coord_units)
    f_units = units if units is not None else da.attrs.get("units", "unknown")
    f_long = long_name if long_name is not None else da.attrs.get("long_name", da.attrs.get("standard_name", name))
    if split not in SPLIT_VALUES:
        raise bad_input("split", f"one of {SPLIT_VALUES}", split)
    parameters = {
        "source": "from_xarray",
        "variable": name,
        "dims": mapping,
        "space_dims": order,
        "sorted": sorted_dims,
        "fill_values_masked": n_fill,
        **{k: v for k, v in time_info.items() if k != "units"},
    }
    provenance: dict[str, Any] = {"simulator": "external", "parameters": parameters, "seed": -1}
    if "time_origin" in time_info:
        provenance["time_origin"] = time_info["time_origin"]
    ds = make_field_dataset(
        values,
        np.asarray(da["time"].values, dtype=np.float64),
        {d: np.asarray(da[d].values, dtype=np.float64) for d in order},
        units=str(f_units),
        long_name=str(f_long),
        coord_units={d: coord_unit(d) for d in ("time", *order)},
        coord_long_names={
            "time": f"time since {time_info['time_origin']}" if "time_origin" in time_info
            else str(da["time"].attrs.get("long_name", "time")),
            **{d: str(da[d].attrs.get("long_name", d)) for d in order},
        },
        provenance=provenance,
        allow_missing=True,
    )
    for k in ("time_origin", "calendar"):
        if k in time_info:
            ds["time"].attrs[k] = time_info[k]
    n_missing = int(ds.attrs.get("n_missing", 0))
    ds.attrs["missing_fraction"] = float(n_missing / values.size)
    return ds.assign_coords(split=("trajectory", np.full(ds.sizes["trajectory"], split, dtype="<U5")))


# -- point observations ---------------------------------------------------------------------------
def _coords_map(coords: Any, argument: str = "coords") -> dict[str, str]:
    """`{space dim: column/variable name}` from a mapping or a sequence of names (used as is)."""
    if isinstance(coords, Mapping):
        out = {}
        for dim, col in coords.items():
            if not isinstance(dim, str) or not dim or not isinstance(col, str) or not col:
                raise bad_input(argument, "a mapping {space dim: column name} of non-empty strings", coords)
            out[dim] = col
    elif isinstance(coords, Sequence) and not isinstance(coords, str):
        if not all(isinstance(c, str) and c for c in coords):
            raise bad_input(argument, "a sequence of column names", coords)
        out = {c: c for c in coords}
    else:
        raise bad_input(argument, "a mapping {space dim: column name}, e.g. {'lat': 'LATITUDE'}, or a sequence "
                        "of column names", coords)
    if not out:
        raise bad_input(argument, "at least one space dim", coords)
    return out


def _build_observations(
    columns: Mapping[str, np.ndarray],
    col_attrs: Mapping[str, Mapping[str, Any]],
    *,
    value: str,
    time: str,
    coords: dict[str, str],
    noise_scale: Any,
    noise_model: str,
    time_origin: Any,
    time_units: str,
    attrs: Mapping[str, Any] | None,
    source: dict[str, Any],
) -> ObservationSet:
    n_rows = int(np.asarray(columns[value]).size)
    val = np.asarray(columns[value])
    if val.dtype.kind not in "iuf":
        raise bad_input("value", f"a numeric column/variable {value!r}", f"dtype {val.dtype}")
    val = val.astype(np.float64)
    if np.isinf(val).any():
        raise bad_input("value", f"finite values or NaN (missing) in {value!r}", f"{int(np.isinf(val).sum())} infinite")
    t, time_info = to_float_time(columns[time], col_attrs.get(time, {}), time_origin=time_origin,
                                 time_units=time_units, argument="time")
    xyz = []
    for dim, col in coords.items():
        c = np.asarray(columns[col])
        if c.dtype.kind not in "iuf":
            raise bad_input("coords", f"a numeric column/variable {col!r} for space dim {dim!r}", f"dtype {c.dtype}")
        c = c.astype(np.float64)
        if np.isinf(c).any():
            raise bad_input("coords", f"finite values or NaN (missing) in {col!r}", f"{int(np.isinf(c).sum())} infinite")
        xyz.append(c)
    xyz_arr = np.stack(xyz, axis=-1) if xyz else np.zeros((n_rows, 0))
    if isinstance(noise_scale, str):
        ns = np.asarray(columns[noise_scale])
        if ns.dtype.kind not in "iuf":
            raise bad_input("noise_scale", f"a numeric column/variable {noise_scale!r}", f"dtype {ns.dtype}")
        ns = ns.astype(np.float64)
    elif noise_scale is None:
        ns = np.full(n_rows, np.nan)
    else:
        if isinstance(noise_scale, bool) or not isinstance(noise_scale, (int, float, np.number)):
            raise bad_input("noise_scale", "None, a column/variable name or a number (std, physical units)",
                            noise_scale)
        ns = np.full(n_rows, float(noise_scale))

    # Drop what cannot be used, and count every reason (a row counts once, under its first reason).
    miss_value = np.isnan(val)
    miss_time = np.isnan(t) & ~miss_value
    miss_coords = np.isnan(xyz_arr).any(axis=1) & ~miss_value & ~miss_time
    keep = ~(miss_value | miss_time | miss_coords)
    dropped = {"missing_value": int(miss_value.sum()), "missing_time": int(miss_time.sum()),
               "missing_coords": int(miss_coords.sum())}
    out_attrs: dict[str, Any] = dict(attrs or {})
    units = col_attrs.get(value, {}).get("units")
    if isinstance(units, str) and "units" not in out_attrs:
        out_attrs["units"] = units
    out_attrs.update({
        "source": source,
        "n_rows": n_rows,
        "n_kept": int(keep.sum()),
        "dropped": dropped,
        "time_units": time_info.get("time_units", time_info["units"]),
    })
    for k in ("time_origin", "calendar"):
        if k in time_info:
            out_attrs[k] = time_info[k]
    return ObservationSet(
        value=val[keep],
        time=t[keep],
        coords=xyz_arr[keep],
        space_dims=tuple(coords),
        noise_scale=ns[keep],
        noise_model=noise_model,
        attrs=out_attrs,
    )


def observations_from_dataframe(
    df: Any,
    *,
    value: str,
    coords: Mapping[str, str] | Sequence[str],
    time: str = "time",
    noise_scale: str | float | None = None,
    noise_model: str = "unknown",
    time_origin: Any = None,
    time_units: str = "days",
    attrs: Mapping[str, Any] | None = None,
) -> ObservationSet:
    """An `ObservationSet` from a point table (`pandas.DataFrame`, one row per observation).

    **Arguments:**

    - `df`: the table; index levels count as columns (e.g. a time index).
    - `value`: column of the observed values (physical units).
    - `coords`: `{space dim: column}` in the order of the model's space dims, e.g.
      `{"lat": "latitude", "lon": "longitude", "depth": "depth"}` (or a list of column names
      used as dim names).
    - `time`: column of the times: datetimes, date strings (ISO 8601; time zones converted to
      UTC) or numbers (a float time axis used as it is).
    - `noise_scale`: column of per-row noise std, or one number for all rows, or None (unknown).
    - `noise_model`: `"gaussian" | "laplace" | "poisson" | "none" | "unknown"`.
    - `time_origin`, `time_units`: see `to_float_time`; give the origin of the model's time axis
      (e.g. the date of its time 0) so that your times line up with it.
    - `attrs`: extra provenance.

    Rows with a missing (NaN/NaT) value, time or coordinate are dropped and counted in
    `attrs["dropped"]` (`missing_value`, `missing_time`, `missing_coords`); `attrs["n_rows"]` is
    the number of rows read, `attrs["time_origin"]` / `["time_units"]` the time axis.
    """
    if not isinstance(df, pd.DataFrame):
        raise bad_input("df", "a pandas.DataFrame (one row per observation)", type(df).__name__)
    cmap = _coords_map(coords)
    table = df.reset_index() if any(n is not None for n in df.index.names) else df
    names = [str(c) for c in table.columns]
    for argument, col in (("value", value), ("time", time), *(("coords", c) for c in cmap.values()),
                          *((("noise_scale", noise_scale),) if isinstance(noise_scale, str) else ())):
        if not isinstance(col, str) or col not in names:
            raise bad_input(argument, f"a column of the table, one of {names}", col)
    wanted = {value, time, *cmap.values(), *([noise_scale] if isinstance(noise_scale, str) else [])}
    columns = {c: table[c].to_numpy() for c in wanted}
    # pandas keeps dates with a time zone as objects: convert them to UTC datetime64 here.
    if isinstance(table[time].dtype, pd.DatetimeTZDtype):
        columns[time] = table[time].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    source = {"kind": "dataframe", "value": value, "time": time, "coords": cmap}
    return _build_observations(columns, {}, value=value, time=time, coords=cmap, noise_scale=noise_scale,
                               noise_model=noise_model, time_origin=time_origin, time_units=time_units,
                               attrs=attrs, source=source)


def observations_from_xarray(
    ds: xr.Dataset,
    *,
    value: str,
    coords: Mapping[str, str] | Sequence[str],
    time: str = "time",
    noise_scale: str | float | None = None,
    noise_model: str = "unknown",
    time_origin: Any = None,
    time_units: str = "days",
    attrs: Mapping[str, Any] | None = None,
) -> ObservationSet:
    """An `ObservationSet` from point data in an `xr.Dataset` on any dims.

    The value variable may have any dims, e.g. Argo-style profiles `(N_PROF, N_LEVELS)`; the
    time, coordinate and noise variables (data variables or coordinates) must have dims among
    the value's (e.g. `JULD (N_PROF)`, `LATITUDE (N_PROF)`, `DEPTH (N_PROF, N_LEVELS)`). All are
    broadcast to the value's dims and flattened (C order: profile by profile). CF-encoded times
    (decoded by xarray, or raw numbers with a `"days since ..."` units attr) become a float
    time axis since `time_origin`.

    **Arguments:** as `observations_from_dataframe`, with variable names instead of columns;
    the value variable's `units` attr goes into `attrs["units"]`.

    Entries with a missing value (NaN levels below the bottom of a profile, bad data), time or
    coordinate are dropped and counted in `attrs["dropped"]`; `attrs["n_rows"]` is the number
    of entries of the value variable and `attrs["source"]` records the variables and dims.
    """
    if not isinstance(ds, xr.Dataset):
        raise bad_input("ds", "an xr.Dataset", type(ds).__name__)
    cmap = _coords_map(coords)
    names = sorted(str(v) for v in ds.variables)
    for argument, var in (("value", value), ("time", time), *(("coords", c) for c in cmap.values()),
                          *((("noise_scale", noise_scale),) if isinstance(noise_scale, str) else ())):
        if not isinstance(var, str) or var not in ds.variables:
            raise bad_input(argument, f"a variable or coordinate of the dataset, one of {names}", var)
    target = ds[value]
    wanted = [time, *cmap.values(), *([noise_scale] if isinstance(noise_scale, str) else [])]
    columns: dict[str, np.ndarray] = {value: np.asarray(target.values).ravel()}
    col_attrs: dict[str, Mapping[str, Any]] = {value: dict(target.attrs)}
    for var in wanted:
        v = ds[var]
        extra = [d for d in v.dims if d not in target.dims]
        if extra:
            raise bad_input("ds", f"variable {var!r} with dims among those of {value!r} {tuple(target.dims)}",
                            f"dims {tuple(v.dims)}")
        # Plain arrays on the dims only (no coordinates), broadcast to the value's dims.
        plain = xr.DataArray(v.values, dims=v.dims)
        full = plain.broadcast_like(xr.DataArray(np.empty(target.shape, np.int8), dims=target.dims))
        columns[var] = np.asarray(full.transpose(*target.dims).values).ravel()
        col_attrs[var] = dict(v.attrs)  # CF `units`/`calendar` of undecoded times live here
    source = {"kind": "xarray", "value": value, "time": time, "coords": cmap,
              "dims": {str(d): int(n) for d, n in target.sizes.items()}}
    return _build_observations(columns, col_attrs, value=value, time=time, coords=cmap, noise_scale=noise_scale,
                               noise_model=noise_model, time_origin=time_origin, time_units=time_units,
                               attrs=attrs, source=source)

