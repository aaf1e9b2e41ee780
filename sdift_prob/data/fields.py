"""Field collections: many trajectories of one physical field on a grid, as an xarray Dataset.

A field collection holds the data variable ``field`` with dims
``("trajectory", "time", *space_dims)`` in physical units, float coordinates ``time`` and one
per space dim (each with attrs ``units`` and ``long_name``), a ``split`` coordinate over
``trajectory`` (``"train"``/``"test"``) and provenance attrs (``simulator``, ``parameters`` as
a JSON string, ``seed``) so a file says how it was made.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import xarray as xr
from jaxtyping import ArrayLike, Float

from ..errors import FormatError, InputError, bad_input
from ..io import NETCDF_ENGINE, atomic_file, read_netcdf
from ..validation import check_key

FIELD_KIND = "field_collection"
FIELD_FORMAT_VERSION = 1
SPLIT_VALUES = ("train", "test")
# Attrs this module owns; provenance may not overwrite them.
_RESERVED_ATTRS = frozenset(
    {"sdift_kind", "sdift_format_version", "simulator", "parameters", "seed", "units", "long_name", "n_missing"}
)


def _float_array(x: Any, argument: str, ndim: int | None = None) -> np.ndarray:
    """NumPy float array (float32/float64 kept as is; integers become float64)."""
    try:
        arr = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - anything that is not array-like
        raise bad_input(argument, "an array of numbers", type(x).__name__) from exc
    if arr.dtype.kind in "iu":
        arr = arr.astype(np.float64)
    if arr.dtype.kind != "f":
        raise bad_input(argument, "a float array", f"dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise bad_input(argument, f"a {ndim}-D array", f"shape {arr.shape}")
    return arr


def _check_finite(arr: np.ndarray, argument: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        raise bad_input(argument, "finite values only", f"{int(bad.sum())} NaN/inf entries of {arr.size}")


def _check_missing(arr: np.ndarray, argument: str, allow_missing: bool) -> None:
    """Finite values, or (with `allow_missing`) NaN as the mask of missing entries: infinities are
    always an error, and so is an array with no finite value at all."""
    if not allow_missing:
        bad = ~np.isfinite(arr)
        if bad.any():
            raise bad_input(argument, "finite values only (this step needs complete fields; NaN masks of "
                            "missing/land entries are accepted by from_xarray, save/load, sample_observations "
                            "and the metrics)", f"{int(bad.sum())} NaN/inf entries of {arr.size}")
        return
    inf = np.isinf(arr)
    if inf.any():
        raise bad_input(argument, "finite values or NaN (missing)", f"{int(inf.sum())} infinite entries of {arr.size}")
    if arr.size and np.isnan(arr).all():
        raise bad_input(argument, "at least one value that is not missing", f"all {arr.size} entries NaN")


def _check_axis(values: np.ndarray, argument: str) -> None:
    """1-D, finite, strictly increasing coordinate (no duplicates)."""
    if values.ndim != 1 or values.size == 0:
        raise bad_input(argument, "a non-empty 1-D coordinate", f"shape {values.shape}")
    if values.dtype.kind != "f":
        raise bad_input(argument, "a float coordinate", f"dtype {values.dtype}")
    _check_finite(values, argument)
    steps = np.diff(values)
    if (steps <= 0).any():
        i = int(np.argmax(steps <= 0))
        what = "duplicate" if steps[i] == 0 else "decreasing"
        raise bad_input(
            argument,
            "strictly increasing values",
            f"{what} entries at positions {i} and {i + 1} ({values[i]!r}, {values[i + 1]!r})",
        )


def make_field_dataset(
    values: Float[ArrayLike, "B T *space"],
    time: Float[ArrayLike, " T"],
    space_coords: Mapping[str, Float[ArrayLike, " _"]],
    *,
    units: str,
    long_name: str,
    coord_units: Mapping[str, str],
    provenance: Mapping[str, Any],
    coord_long_names: Mapping[str, str] | None = None,
    allow_missing: bool = False,
) -> xr.Dataset:
    """Build a validated field collection (without a train/test split; see `assign_split`).

    **Arguments:**

    - `values`: `(B, T, I_1, .., I_K)` field values in physical units (float32 or float64 is
      kept; integers become float64). Must be finite.
    - `time`: `(T,)` physical time stamps, strictly increasing.
    - `space_coords`: ordered mapping `dim name -> (I_k,)` physical coordinates, strictly
      increasing; its order gives the order of the space dims.
    - `units`, `long_name`: of the field.
    - `coord_units`: units of `"time"` and of every space dim (all required).
    - `provenance`: must hold `"simulator"` (str), `"parameters"` (JSON-serialisable dict;
      stored as a JSON string) and `"seed"` (int). Further str/int/float entries are stored as
      attrs as they are.
    - `coord_long_names`: optional long names of `"time"`/space dims (default: the dim name).
    - `allow_missing`: accept NaN in `values` as the mask of missing entries (land, gaps);
      the count goes into attrs `n_missing`. Infinities are always an error.

    **Returns:**

    An `xr.Dataset` with variable `field` of dims `("trajectory", "time", *space_dims)`,
    `trajectory` coord `0..B-1`, and the attrs of a field collection (no `split` yet).
    """
    arr = _float_array(values, "values")
    if not isinstance(space_coords, Mapping) or len(space_coords) == 0:
        raise bad_input("space_coords", "a non-empty mapping dim name -> 1-D coordinate", space_coords)
    dims = tuple(space_coords)
    for name in dims:
        if not isinstance(name, str) or not name or name in ("trajectory", "time", "split", "field"):
            raise bad_input("space_coords", "dim names that are non-empty strings other than "
                            "'trajectory', 'time', 'split', 'field'", name)
    if arr.ndim != 2 + len(dims):
        raise bad_input("values", f"a {2 + len(dims)}-D array (trajectory, time, {', '.join(dims)})",
                        f"shape {arr.shape}")
    if arr.shape[0] < 1:
        raise bad_input("values", "at least one trajectory", f"shape {arr.shape}")
    if not isinstance(allow_missing, bool):
        raise bad_input("allow_missing", "True or False", allow_missing)
    _check_missing(arr, "values", allow_missing)
    t = _float_array(time, "time", ndim=1).astype(np.float64)
    _check_axis(t, "time")
    if t.shape[0] != arr.shape[1]:
        raise bad_input("time", f"length {arr.shape[1]} (values.shape[1])", f"length {t.shape[0]}")
    axes: dict[str, np.ndarray] = {}
    for k, name in enumerate(dims):
        c = _float_array(space_coords[name], f"space_coords[{name!r}]", ndim=1).astype(np.float64)
        _check_axis(c, f"space_coords[{name!r}]")
        if c.shape[0] != arr.shape[2 + k]:
            raise bad_input(f"space_coords[{name!r}]", f"length {arr.shape[2 + k]} (values.shape[{2 + k}])",
                            f"length {c.shape[0]}")
        axes[name] = c
    for argument, s in (("units", units), ("long_name", long_name)):
        if not isinstance(s, str):
            raise bad_input(argument, "a string", s)
    if not isinstance(coord_units, Mapping):
        raise bad_input("coord_units", "a mapping dim name -> units string", coord_units)
    missing = [d for d in ("time", *dims) if d not in coord_units]
    if missing:
        raise bad_input("coord_units", f"units for every coordinate {('time', *dims)}", f"missing {missing}")
    extra = sorted(set(coord_units) - {"time", *dims})
    if extra:
        raise bad_input("coord_units", f"only the coordinates {('time', *dims)}", f"unknown {extra}")
    for name, u in coord_units.items():
        if not isinstance(u, str):
            raise bad_input(f"coord_units[{name!r}]", "a string", u)
    long_names = dict(coord_long_names or {})
    extra = sorted(set(long_names) - {"time", *dims})
    if extra:
        raise bad_input("coord_long_names", f"only the coordinates {('time', *dims)}", f"unknown {extra}")
    attrs = _provenance_attrs(provenance)
    n_missing = int(np.isnan(arr).sum())
    if n_missing:
        attrs["n_missing"] = n_missing

    coords: dict[str, Any] = {
        "trajectory": ("trajectory", np.arange(arr.shape[0], dtype=np.int64)),
        "time": ("time", t, {"units": coord_units["time"], "long_name": str(long_names.get("time", "time"))}),
    }
    for name in dims:
        coords[name] = (name, axes[name], {"units": coord_units[name], "long_name": str(long_names.get(name, name))})
    ds = xr.Dataset(
        {"field": (("trajectory", "time", *dims), arr, {"units": units, "long_name": long_name})},
        coords=coords,
        attrs={
            "sdift_kind": FIELD_KIND,
            "sdift_format_version": FIELD_FORMAT_VERSION,
            "units": units,
            "long_name": long_name,
            **attrs,
        },
    )
    return validate_field_dataset(ds, require_split=False, allow_missing=allow_missing)


def _provenance_attrs(provenance: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(provenance, Mapping):
        raise bad_input("provenance", "a mapping with 'simulator', 'parameters' and 'seed'", provenance)
    missing = [k for k in ("simulator", "parameters", "seed") if k not in provenance]
    if missing:
        raise bad_input("provenance", "keys 'simulator', 'parameters', 'seed'", f"missing {missing}")
    if not isinstance(provenance["simulator"], str):
        raise bad_input("provenance['simulator']", "a string", provenance["simulator"])
    params = provenance["parameters"]
    if not isinstance(params, Mapping):
        raise bad_input("provenance['parameters']", "a dict of simulator parameters", params)
    try:
        params_json = json.dumps(dict(params), sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise bad_input("provenance['parameters']", "JSON-serialisable values (str, int, float, lists, dicts)",
                        str(exc)) from exc
    seed = provenance["seed"]
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise bad_input("provenance['seed']", "an int", seed)
    attrs: dict[str, Any] = {"simulator": provenance["simulator"], "parameters": params_json, "seed": int(seed)}
    for name, value in provenance.items():
        if name in ("simulator", "parameters", "seed"):
            continue
        if name in _RESERVED_ATTRS or not isinstance(name, str):
            raise bad_input("provenance", f"extra keys other than {sorted(_RESERVED_ATTRS)}", name)
        if isinstance(value, bool) or not isinstance(value, (str, int, float, np.integer, np.floating)):
            raise bad_input(f"provenance[{name!r}]", "a str, int or float (put structured data in 'parameters')",
                            value)
        attrs[name] = value.item() if isinstance(value, np.generic) else value
    return attrs


def space_dims(ds: xr.Dataset) -> tuple[str, ...]:
    """The space dims of a field collection, in order (the dims of `field` after trajectory, time)."""
    if not isinstance(ds, xr.Dataset) or "field" not in ds.data_vars:
        raise bad_input("ds", "a field collection (xr.Dataset with data variable 'field')", type(ds).__name__)
    return tuple(str(d) for d in ds["field"].dims[2:])


def field_metadata(ds: xr.Dataset) -> dict[str, Any]:
    """What a run records about its data: `units` and `long_name` of the field, `coord_units`
    (time and each space dim; "" where the coordinate has none) and the `simulator` ("" for data
    that was not simulated) — from the field collection's attrs.

    `save_run` stores them in the run's provenance (`Run.provenance`), where `reconstruct` reads
    the units it puts on the posterior.
    """
    dims = space_dims(ds)
    field = ds["field"]
    return {
        "units": str(field.attrs.get("units", ds.attrs.get("units", ""))),
        "long_name": str(field.attrs.get("long_name", ds.attrs.get("long_name", ""))),
        "coord_units": {d: str(ds[d].attrs.get("units", "")) if d in ds.coords else "" for d in ("time", *dims)},
        "simulator": str(ds.attrs.get("simulator", "")),
    }


def validate_field_dataset(ds: xr.Dataset, *, require_split: bool = True, allow_missing: bool = False) -> xr.Dataset:
    """Check that `ds` is a well-formed field collection; return it unchanged.

    **Arguments:**

    - `ds`: the dataset to check.
    - `require_split`: also require the `split` coordinate (set by `assign_split`).
    - `allow_missing`: accept NaN entries of `field` (missing values / land mask, e.g. from
      `from_xarray`); infinities and an all-NaN field are errors either way. Steps that need
      complete fields keep the default False and fail with a message saying so.

    **Returns:**

    `ds` itself. Raises `InputError` naming what is wrong: not one of ours (`sdift_kind`),
    wrong dims or names, non-float or non-finite values, coordinates missing, non-monotonic or
    duplicated, missing units, missing or malformed `split`, missing provenance.
    """
    if not isinstance(ds, xr.Dataset):
        raise bad_input("ds", "an xr.Dataset field collection", type(ds).__name__)
    kind = ds.attrs.get("sdift_kind")
    if kind != FIELD_KIND:
        raise bad_input("ds", f"a field collection (attrs['sdift_kind'] == {FIELD_KIND!r})", f"sdift_kind={kind!r}")
    version = ds.attrs.get("sdift_format_version")
    if version != FIELD_FORMAT_VERSION:
        raise bad_input("ds", f"sdift_format_version {FIELD_FORMAT_VERSION}", version)
    if "field" not in ds.data_vars:
        raise bad_input("ds", "a data variable named 'field'", sorted(map(str, ds.data_vars)))
    field = ds["field"]
    dims = tuple(map(str, field.dims))
    if len(dims) < 3 or dims[:2] != ("trajectory", "time"):
        raise bad_input("ds['field'].dims", "('trajectory', 'time', *space_dims) with at least one space dim", dims)
    if field.dtype.kind != "f":
        raise bad_input("ds['field']", "float values", f"dtype {field.dtype}")
    _check_missing(np.asarray(field.values), "ds['field']", allow_missing)
    for d in dims[1:]:
        if d not in ds.coords:
            raise bad_input("ds", f"a coordinate for dim {d!r}", "none")
        c = ds.coords[d]
        _check_axis(np.asarray(c.values), f"ds.coords[{d!r}]")
        for a in ("units", "long_name"):
            if not isinstance(c.attrs.get(a), str):
                raise bad_input(f"ds.coords[{d!r}].attrs", f"a string attr {a!r}", dict(c.attrs))
    if "trajectory" in ds.coords:
        ids = np.asarray(ds.coords["trajectory"].values)
        if np.unique(ids).size != ids.size:
            raise bad_input("ds.coords['trajectory']", "unique trajectory ids", ids)
    for a in ("units", "long_name", "simulator", "parameters"):
        if not isinstance(ds.attrs.get(a), str):
            raise bad_input("ds.attrs", f"a string attr {a!r}", ds.attrs.get(a))
    try:
        json.loads(ds.attrs["parameters"])
    except ValueError as exc:
        raise bad_input("ds.attrs['parameters']", "a JSON string", ds.attrs["parameters"]) from exc
    seed = ds.attrs.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise bad_input("ds.attrs['seed']", "an int", seed)
    if "split" in ds.coords:
        split = ds.coords["split"]
        if split.dims != ("trajectory",):
            raise bad_input("ds.coords['split']", "a coordinate over 'trajectory'", split.dims)
        labels = np.asarray(split.values).astype(str)
        bad = sorted(set(labels) - set(SPLIT_VALUES))
        if bad:
            raise bad_input("ds.coords['split']", f"values in {SPLIT_VALUES}", bad)
    elif require_split:
        raise bad_input("ds", "a 'split' coordinate over trajectory (use assign_split)", "none")
    return ds


def assign_split(ds: xr.Dataset, *, n_test: int, key: jax.Array) -> xr.Dataset:
    """Mark `n_test` trajectories as test and the rest as train, from one random permutation.

    **Arguments:**

    - `ds`: a field collection with `B` trajectories (an existing split is replaced).
    - `n_test`: number of test trajectories, `0 <= n_test < B` (at least one stays train).
    - `key`: typed PRNG key; the same key gives the same split.

    **Returns:**

    A copy of `ds` with coord `split` `(B,)` of `"train"`/`"test"`. Train and test never
    overlap and together cover every trajectory.
    """
    validate_field_dataset(ds, require_split=False, allow_missing=True)
    check_key(key)
    b = ds.sizes["trajectory"]
    if isinstance(n_test, bool) or not isinstance(n_test, (int, np.integer)) or not 0 <= n_test < b:
        raise bad_input("n_test", f"an int in [0, {b - 1}] (the collection has {b} trajectories)", n_test)
    perm = np.asarray(jax.random.permutation(key, b))
    labels = np.full(b, "train", dtype="<U5")
    labels[perm[: int(n_test)]] = "test"
    return ds.assign_coords(split=("trajectory", labels))


def _part(ds: xr.Dataset, which: str) -> xr.Dataset:
    validate_field_dataset(ds, allow_missing=True)
    sel = np.asarray(ds.coords["split"].values).astype(str) == which
    if not sel.any():
        raise bad_input("ds", f"at least one {which!r} trajectory", "none in split")
    return ds.isel(trajectory=np.flatnonzero(sel))


def train_part(ds: xr.Dataset) -> xr.Dataset:
    """The training trajectories of a field collection (InputError if there are none)."""
    return _part(ds, "train")


def test_part(ds: xr.Dataset) -> xr.Dataset:
    """The test trajectories of a field collection (InputError if there are none)."""
    return _part(ds, "test")


# pytest would collect `test_part` from modules that import it by name.
test_part.__test__ = False  # type: ignore[attr-defined]


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """Scalar affine normalisation `(x - mean) / std` of field values.

    `from_fields` computes mean and std (population std, in float64) over the training
    trajectories only, so test data never leaks into the model.
    """

    mean: float
    std: float

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
                raise bad_input(name, "a finite number", v)
            object.__setattr__(self, name, float(v))
        if self.std <= 0:
            raise bad_input("std", "a positive number", self.std)

    @classmethod
    def from_fields(cls, ds: xr.Dataset) -> Normalizer:
        """Mean and std of all entries of the training trajectories of `ds` (missing entries,
        NaN, are left out)."""
        values = np.asarray(train_part(ds)["field"].values, dtype=np.float64)
        if np.isnan(values).any():
            values = values[~np.isnan(values)]
        std = float(values.std())
        if std <= 0:
            raise bad_input("ds", "training fields that are not constant", f"std {std}")
        return cls(mean=float(values.mean()), std=std)

    def forward(self, x: Any) -> Any:
        """Physical -> normalised units; works on NumPy/JAX arrays and xarray objects."""
        return (x - self.mean) / self.std

    def inverse(self, x: Any) -> Any:
        """Normalised -> physical units (inverse of `forward` up to float rounding)."""
        return x * self.std + self.mean

    def to_dict(self) -> dict[str, float]:
        """`{"mean": .., "std": ..}` (JSON-serialisable, exact for float64)."""
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Normalizer:
        """Inverse of `to_dict`."""
        if not isinstance(d, Mapping) or set(d) != {"mean", "std"}:
            raise bad_input("d", "a mapping with exactly the keys 'mean' and 'std'", d)
        return cls(mean=d["mean"], std=d["std"])


def save_fields(ds: xr.Dataset, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a field collection to netCDF (h5netcdf), atomically.

    **Arguments:**

    - `ds`: a validated field collection with a `split` (NaN entries, a missing-value mask,
      are written as NaN).
    - `path`: target file; refused if it exists unless `overwrite=True`.

    **Returns:**

    The path written. The values keep their float dtype; `load_fields` gives back an identical
    dataset.
    """
    validate_field_dataset(ds, allow_missing=True)
    out = ds.copy()
    # Strings as fixed-width unicode so they come back as the same dtype.
    out = out.assign_coords(split=("trajectory", np.asarray(out.coords["split"].values).astype("<U5")))
    # No fill values: the data are finite by contract, and a fill value would mask real numbers.
    encoding: dict[str, dict[str, Any]] = {}
    for name in out.coords:
        if out.coords[name].dtype.kind == "f":
            encoding[str(name)] = {"_FillValue": None}
    for name in out.data_vars:
        if out[name].dtype.kind == "f":
            encoding[str(name)] = {"_FillValue": None, "zlib": True, "complevel": 4}
    target = Path(path)
    with atomic_file(target, overwrite=overwrite) as tmp:
        out.to_netcdf(tmp, engine=NETCDF_ENGINE, encoding=encoding)
    return target


def load_fields(path: str | os.PathLike) -> xr.Dataset:
    """Read a field collection written by `save_fields` (fully into memory; missing entries
    stay NaN).

    Raises `InputError` if the file does not exist and `FormatError` if it is not a readable
    netCDF file, not a field collection, or fails validation.
    """
    p = Path(path)
    ds = read_netcdf(p)
    if ds.attrs.get("sdift_kind") != FIELD_KIND:
        raise FormatError(f"{p}: not an sdift field collection (sdift_kind={ds.attrs.get('sdift_kind')!r})")
    if "split" in ds.coords:
        ds = ds.assign_coords(split=("trajectory", np.asarray(ds.coords["split"].values).astype("<U5")))
    for name in ("seed", "sdift_format_version", "n_missing"):
        if isinstance(ds.attrs.get(name), np.integer):
            ds.attrs[name] = int(ds.attrs[name])
    try:
        validate_field_dataset(ds, allow_missing=True)
    except InputError as exc:
        raise FormatError(f"{p}: not a valid field collection: {exc}") from exc
    for name in ds.variables:
        ds[name].encoding = {}
    return ds
