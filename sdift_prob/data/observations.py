"""Sparse, irregular, noisy observations of one trajectory, and samplers that make them.

An `ObservationSet` is ragged: N points, each with its own physical time and (possibly
off-grid) physical coordinates. Jitted code gets a `PaddedObservations` instead: one row per
time stamp, padded to a fixed number of points with a mask.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import xarray as xr
from jaxtyping import ArrayLike, Bool, Float

from ..errors import FormatError, InputError, as_float64, bad_input
from ..io import NETCDF_ENGINE, atomic_file, read_netcdf
from .fields import _check_key, validate_field_dataset

OBSERVATION_KIND = "observation_set"
OBSERVATION_FORMAT_VERSION = 1
NOISE_MODELS = ("gaussian", "laplace", "poisson", "none", "unknown")
PATTERNS = ("random", "profiles", "forecast")
# Observation times closer than this fraction of the time span count as the same time stamp.
TIME_RTOL = 1e-9
_VARIABLES = ("value", "time", "noise_scale")


_as_float64 = as_float64


def _count_nonfinite(arr: np.ndarray, argument: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        raise bad_input(argument, "finite values only", f"{int(bad.sum())} NaN/inf entries of {arr.size}")


def _time_tolerance(*arrays: np.ndarray) -> float:
    joined = np.concatenate([np.ravel(a) for a in arrays])
    if joined.size == 0:
        return TIME_RTOL
    span = float(np.max(joined) - np.min(joined))
    scale = span if span > 0 else max(1.0, float(np.max(np.abs(joined))))
    return TIME_RTOL * scale


def _match_times(obs_times: np.ndarray, times: np.ndarray, tol: float) -> np.ndarray:
    """Index into `times` (sorted) of each observation time, or -1 where none is within `tol`."""
    if times.size == 0:
        return np.full(obs_times.shape, -1, dtype=np.int64)
    right = np.clip(np.searchsorted(times, obs_times), 0, times.size - 1)
    left = np.clip(right - 1, 0, times.size - 1)
    pick = np.where(np.abs(times[left] - obs_times) <= np.abs(times[right] - obs_times), left, right)
    return np.where(np.abs(times[pick] - obs_times) <= tol, pick, -1)


def _check_times_grid(times: Any, argument: str = "times") -> np.ndarray:
    t = _as_float64(times, argument)
    if t.ndim != 1:
        raise bad_input(argument, "a 1-D array of time stamps", f"shape {t.shape}")
    _count_nonfinite(t, argument)
    if t.size > 1 and (np.diff(t) <= 0).any():
        i = int(np.argmax(np.diff(t) <= 0))
        raise bad_input(argument, "strictly increasing time stamps", f"{t[i]!r} then {t[i + 1]!r} at position {i}")
    return t


class PaddedObservations(NamedTuple):
    """Observations on a time grid, padded to `P` points per time stamp.

    Padding entries have `mask False`, `values 0`, `noise_scale 1` and the coordinates of a
    real observation (so that they lie inside the data's domain and never produce NaN in
    masked likelihood terms or their gradients). A time stamp may have no valid point.

    - `times`: `(M,)` physical time stamps, strictly increasing.
    - `values`: `(M, P)` physical values.
    - `coords`: `(M, P, K)` physical coordinates.
    - `noise_scale`: `(M, P)` noise std in physical units (NaN = unknown).
    - `mask`: `(M, P)` bool, True for real observations.
    """

    times: Float[np.ndarray, " M"]
    values: Float[np.ndarray, "M P"]
    coords: Float[np.ndarray, "M P K"]
    noise_scale: Float[np.ndarray, "M P"]
    mask: Bool[np.ndarray, "M P"]


@dataclasses.dataclass(frozen=True, eq=False)
class ObservationSet:
    """Ragged point observations of one trajectory, in physical units.

    **Fields:**

    - `value`: `(N,)` observed values.
    - `time`: `(N,)` physical time of each point.
    - `coords`: `(N, K)` physical coordinates (off-grid allowed), columns in `space_dims` order.
    - `space_dims`: `(K,)` names of the space dims.
    - `noise_scale`: `(N,)` std of the observation noise in physical units; NaN = unknown.
      Defaults to all NaN.
    - `noise_model`: one of `"gaussian" | "laplace" | "poisson" | "none" | "unknown"`.
    - `attrs`: JSON-compatible provenance (stored canonically: tuples become lists).

    All arrays are stored as float64 NumPy arrays; values, times and coords must be finite.
    """

    value: Float[np.ndarray, " N"]
    time: Float[np.ndarray, " N"]
    coords: Float[np.ndarray, "N K"]
    space_dims: tuple[str, ...]
    noise_scale: Float[np.ndarray, " N"] | None = None
    noise_model: str = "unknown"
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        dims = self.space_dims
        if isinstance(dims, str) or not isinstance(dims, Sequence) or len(dims) == 0:
            raise bad_input("space_dims", "a non-empty sequence of dim names", dims)
        dims = tuple(dims)
        if not all(isinstance(d, str) and d for d in dims) or len(set(dims)) != len(dims):
            raise bad_input("space_dims", "distinct non-empty strings", dims)
        clash = sorted(set(dims) & {*_VARIABLES, "obs"})
        if clash:
            raise bad_input("space_dims", f"names other than {(*_VARIABLES, 'obs')}", clash)
        value = _as_float64(self.value, "value")
        if value.ndim != 1:
            raise bad_input("value", "a 1-D array (N,)", f"shape {value.shape}")
        n = value.shape[0]
        time = _as_float64(self.time, "time")
        if time.shape != (n,):
            raise bad_input("time", f"shape ({n},) like value", f"shape {time.shape}")
        coords = _as_float64(self.coords, "coords")
        if coords.shape != (n, len(dims)):
            raise bad_input("coords", f"shape ({n}, {len(dims)}) = (len(value), len(space_dims))",
                            f"shape {coords.shape}")
        _count_nonfinite(value, "value")
        _count_nonfinite(time, "time")
        _count_nonfinite(coords, "coords")
        if self.noise_scale is None:
            noise = np.full(n, np.nan)
        else:
            noise = _as_float64(self.noise_scale, "noise_scale")
            if noise.ndim == 0:
                noise = np.full(n, float(noise))
            if noise.shape != (n,):
                raise bad_input("noise_scale", f"shape ({n},) like value (or a scalar)", f"shape {noise.shape}")
        bad = np.isinf(noise) | (noise < 0)
        if bad.any():
            raise bad_input("noise_scale", "values >= 0 or NaN (unknown)", f"{int(bad.sum())} negative/inf entries")
        if self.noise_model not in NOISE_MODELS:
            raise bad_input("noise_model", f"one of {NOISE_MODELS}", self.noise_model)
        if not isinstance(self.attrs, Mapping):
            raise bad_input("attrs", "a dict", self.attrs)
        try:
            attrs = json.loads(json.dumps(dict(self.attrs), allow_nan=True))
        except (TypeError, ValueError) as exc:
            raise bad_input("attrs", "JSON-serialisable values", str(exc)) from exc
        for name, arr in (("value", value), ("time", time), ("coords", coords), ("noise_scale", noise)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "space_dims", dims)
        object.__setattr__(self, "attrs", attrs)

    # -- queries -------------------------------------------------------------------------------
    @property
    def n_points(self) -> int:
        """Number of observed points N."""
        return int(self.value.shape[0])

    def time_stamps(self) -> Float[np.ndarray, " M"]:
        """Sorted unique observation times `(M,)`."""
        return np.unique(self.time)

    def counts(self, times: Float[ArrayLike, " M"] | None = None) -> Float[np.ndarray, " M"]:
        """Number of points at each of `times` (default: `time_stamps()`), matched with a
        tolerance of 1e-9 of the time span. Observations at other times are not counted.

        **Returns:** `(M,)` int array.
        """
        t = self.time_stamps() if times is None else _check_times_grid(times)
        idx = _match_times(self.time, t, _time_tolerance(self.time, t))
        return np.bincount(idx[idx >= 0], minlength=t.size).astype(np.int64)

    def check_domain(self, lo: Float[ArrayLike, " K"], hi: Float[ArrayLike, " K"], margin: float = 0.0) -> None:
        """Raise `InputError` if a point lies outside the box `[lo - margin*w, hi + margin*w]`
        (w = hi - lo, per dim), e.g. outside the domain a model was trained on.

        **Arguments:**

        - `lo`, `hi`: `(K,)` physical bounds per space dim, `lo <= hi`.
        - `margin`: allowed excursion as a fraction of the box width (>= 0).
        """
        k = len(self.space_dims)
        lo_a = _as_float64(lo, "lo")
        hi_a = _as_float64(hi, "hi")
        for name, a in (("lo", lo_a), ("hi", hi_a)):
            if a.shape != (k,):
                raise bad_input(name, f"shape ({k},) (one bound per space dim {self.space_dims})", f"shape {a.shape}")
            _count_nonfinite(a, name)
        if (hi_a < lo_a).any():
            raise bad_input("hi", "hi >= lo in every dim", f"lo={lo_a.tolist()}, hi={hi_a.tolist()}")
        if isinstance(margin, bool) or not isinstance(margin, (int, float, np.number)) or not (margin >= 0) \
                or not np.isfinite(margin):
            raise bad_input("margin", "a finite number >= 0", margin)
        width = hi_a - lo_a
        low, high = lo_a - margin * width, hi_a + margin * width
        outside = (self.coords < low) | (self.coords > high)
        if outside.any():
            parts = []
            for j, d in enumerate(self.space_dims):
                m = int(outside[:, j].sum())
                if m:
                    c = self.coords[outside[:, j], j]
                    parts.append(f"{d}: {m} points in [{c.min():.6g}, {c.max():.6g}] vs domain "
                                 f"[{low[j]:.6g}, {high[j]:.6g}]")
            raise InputError("coords: expected every observation inside the model's domain "
                             f"(margin {margin}); outside: " + "; ".join(parts))

    # -- conversions ---------------------------------------------------------------------------
    def to_padded(
        self, times: Float[ArrayLike, " M"] | None = None, max_points: int | None = None
    ) -> PaddedObservations:
        """Place the observations on a time grid, padded to `max_points` per time stamp.

        **Arguments:**

        - `times`: `(M,)` strictly increasing physical time stamps (default: `time_stamps()`).
          Every observation time must be one of them (tolerance 1e-9 of the time span);
          time stamps without observations get an all-False mask row.
        - `max_points`: `P`; default the largest count at one time stamp (at least 1). A value
          smaller than that is an error: observations are never dropped.

        **Returns:** `PaddedObservations` with arrays `(M,)`, `(M, P)`, `(M, P, K)`; the
        points of each time stamp keep their order in the set.
        """
        t = self.time_stamps() if times is None else _check_times_grid(times)
        if t.size == 0:
            raise bad_input("times", "at least one time stamp", "an empty grid")
        idx = _match_times(self.time, t, _time_tolerance(self.time, t))
        missing = idx < 0
        if missing.any():
            shown = np.unique(self.time[missing])[:5].tolist()
            raise bad_input("times", "every observation time to be on the grid",
                            f"{int(missing.sum())} points at times not in it, e.g. {shown}")
        counts = np.bincount(idx, minlength=t.size)
        needed = int(max(1, counts.max(initial=0)))
        if max_points is None:
            p = needed
        else:
            if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)) or max_points < needed:
                at = float(t[int(np.argmax(counts))])
                raise bad_input("max_points", f"an int >= {needed} (the most points at one time stamp, t={at!r})",
                                max_points)
            p = int(max_points)
        m, k = t.size, len(self.space_dims)
        values = np.zeros((m, p))
        noise = np.ones((m, p))
        mask = np.zeros((m, p), dtype=bool)
        fill = self.coords[0] if self.n_points else np.zeros(k)
        coords = np.broadcast_to(fill, (m, p, k)).copy()
        order = np.argsort(idx, kind="stable")
        rows = idx[order]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slots = np.arange(order.size) - starts[rows]
        values[rows, slots] = self.value[order]
        coords[rows, slots] = self.coords[order]
        noise[rows, slots] = self.noise_scale[order]
        mask[rows, slots] = True
        return PaddedObservations(times=t, values=values, coords=coords, noise_scale=noise, mask=mask)

    def subset(self, mask: Bool[ArrayLike, " N"]) -> ObservationSet:
        """The points where the boolean `mask` `(N,)` is True (attrs are kept)."""
        sel = np.asarray(mask)
        if sel.dtype != bool or sel.shape != (self.n_points,):
            raise bad_input("mask", f"a boolean array of shape ({self.n_points},)", f"{sel.dtype} {sel.shape}")
        return dataclasses.replace(
            self, value=self.value[sel], time=self.time[sel], coords=self.coords[sel], noise_scale=self.noise_scale[sel]
        )

    def to_dataset(self) -> xr.Dataset:
        """As an `xr.Dataset` over dim `obs`: variables `value`, `time`, one per space dim,
        `noise_scale`; attrs `noise_model`, `space_dims` (JSON list), `provenance` (JSON)."""
        data: dict[str, Any] = {"value": ("obs", self.value), "time": ("obs", self.time)}
        for j, d in enumerate(self.space_dims):
            data[d] = ("obs", self.coords[:, j])
        data["noise_scale"] = ("obs", self.noise_scale)
        return xr.Dataset(
            data,
            attrs={
                "sdift_kind": OBSERVATION_KIND,
                "sdift_format_version": OBSERVATION_FORMAT_VERSION,
                "noise_model": self.noise_model,
                "space_dims": json.dumps(list(self.space_dims)),
                "provenance": json.dumps(self.attrs, sort_keys=True, allow_nan=True),
            },
        )

    @classmethod
    def from_dataset(cls, ds: xr.Dataset) -> ObservationSet:
        """Inverse of `to_dataset`; `FormatError` if `ds` is not an observation set."""
        if not isinstance(ds, xr.Dataset) or ds.attrs.get("sdift_kind") != OBSERVATION_KIND:
            kind = ds.attrs.get("sdift_kind") if isinstance(ds, xr.Dataset) else type(ds).__name__
            raise FormatError(f"not an sdift observation set (sdift_kind={kind!r})")
        version = ds.attrs.get("sdift_format_version")
        if version != OBSERVATION_FORMAT_VERSION:
            raise FormatError(f"observation set format version {version!r}, expected {OBSERVATION_FORMAT_VERSION}")
        try:
            for name in ("space_dims", "noise_model"):
                if name not in ds.attrs:
                    raise FormatError(f"malformed observation set: no attribute {name!r}")
            dims = tuple(json.loads(ds.attrs["space_dims"]))
            for name in ("value", "time", *dims):
                if name not in ds.variables:
                    raise FormatError(f"malformed observation set: no variable {name!r}")
            attrs = json.loads(ds.attrs.get("provenance", "{}"))
            # noise_scale is optional, as in the constructor: without it every point's is unknown
            noise = ds["noise_scale"].values if "noise_scale" in ds.variables else None
            return cls(
                value=ds["value"].values,
                time=ds["time"].values,
                coords=np.stack([ds[d].values for d in dims], axis=-1),
                space_dims=dims,
                noise_scale=noise,
                noise_model=str(ds.attrs["noise_model"]),
                attrs=attrs,
            )
        except FormatError:
            raise
        except (KeyError, ValueError, TypeError) as exc:  # InputError is a ValueError
            raise FormatError(f"malformed observation set: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def concatenate(cls, sets: Sequence[ObservationSet], *, attrs: Mapping[str, Any] | None = None) -> ObservationSet:
        """One set with the points of all `sets` (in order), e.g. profiles and ship samples.

        All sets must have the same `space_dims`. The noise model is kept when all agree (else
        `"unknown"`; per-point `noise_scale` is kept either way). `attrs` (default
        `{"sources": [each set's attrs]}`) becomes the result's provenance.
        """
        if isinstance(sets, ObservationSet) or not isinstance(sets, Sequence) or len(sets) == 0 \
                or not all(isinstance(o, ObservationSet) for o in sets):
            raise bad_input("sets", "a non-empty sequence of ObservationSets", type(sets).__name__)
        dims = sets[0].space_dims
        for i, o in enumerate(sets):
            if o.space_dims != dims:
                raise bad_input(f"sets[{i}].space_dims", f"the space dims of sets[0] {dims}", o.space_dims)
        models = {o.noise_model for o in sets}
        return cls(
            value=np.concatenate([o.value for o in sets]),
            time=np.concatenate([o.time for o in sets]),
            coords=np.concatenate([o.coords for o in sets]),
            space_dims=dims,
            noise_scale=np.concatenate([o.noise_scale for o in sets]),
            noise_model=models.pop() if len(models) == 1 else "unknown",
            attrs=dict(attrs) if attrs is not None else {"sources": [o.attrs for o in sets]},
        )

    @classmethod
    def from_dataframe(cls, df: Any, *, value: str, coords: Mapping[str, str] | Sequence[str], time: str = "time",
                       noise_scale: str | float | None = None, noise_model: str = "unknown",
                       time_origin: Any = None, time_units: str = "days",
                       attrs: Mapping[str, Any] | None = None) -> ObservationSet:
        """Read a point table (`pandas.DataFrame`, one row per observation); rows with a missing
        value, time or coordinate are dropped and counted in `attrs["dropped"]`. See
        `sdift_prob.data.readers.observations_from_dataframe` for the arguments."""
        from .readers import observations_from_dataframe

        return observations_from_dataframe(df, value=value, coords=coords, time=time, noise_scale=noise_scale,
                                           noise_model=noise_model, time_origin=time_origin,
                                           time_units=time_units, attrs=attrs)

    @classmethod
    def from_xarray(cls, ds: xr.Dataset, *, value: str, coords: Mapping[str, str] | Sequence[str],
                    time: str = "time", noise_scale: str | float | None = None, noise_model: str = "unknown",
                    time_origin: Any = None, time_units: str = "days",
                    attrs: Mapping[str, Any] | None = None) -> ObservationSet:
        """Read point data on any dims, e.g. Argo-style profiles `(N_PROF, N_LEVELS)` (flattened;
        missing levels dropped and counted in `attrs["dropped"]`). See
        `sdift_prob.data.readers.observations_from_xarray` for the arguments."""
        from .readers import observations_from_xarray

        return observations_from_xarray(ds, value=value, coords=coords, time=time, noise_scale=noise_scale,
                                        noise_model=noise_model, time_origin=time_origin,
                                        time_units=time_units, attrs=attrs)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write to netCDF (h5netcdf) atomically; refused if `path` exists unless `overwrite`."""
        ds = self.to_dataset()
        target = Path(path)
        with atomic_file(target, overwrite=overwrite) as tmp:
            ds.to_netcdf(tmp, engine=NETCDF_ENGINE, encoding={v: {"_FillValue": None} for v in ds.data_vars})
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> ObservationSet:
        """Read a file written by `save`; `FormatError` for foreign or corrupt files."""
        p = Path(path)
        ds = read_netcdf(p)
        if isinstance(ds.attrs.get("sdift_format_version"), np.integer):
            ds.attrs["sdift_format_version"] = int(ds.attrs["sdift_format_version"])
        try:
            return cls.from_dataset(ds)
        except (FormatError, InputError) as exc:
            raise FormatError(f"{p}: {exc}") from exc


# -- noise ------------------------------------------------------------------------------------
def _numpy_rng(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded from a typed JAX key: host-side sampling of index sets and
    noise needs no compilation per shape, and the draws are still fixed by the key alone."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())


def _check_scale(scale: Any, argument: str = "scale") -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.number)) or not np.isfinite(scale) \
            or scale < 0:
        raise bad_input(argument, "a finite number >= 0 (physical units)", scale)
    return float(scale)


def add_noise(
    key: jax.Array,
    values: Float[ArrayLike, " N"],
    noise: str,
    scale: float,
    offset: float | None = None,
) -> tuple[Float[np.ndarray, " N"], Float[np.ndarray, " N"]]:
    """Add observation noise to exact values (all in physical units).

    - `"gaussian"`: `y = u + e`, `e ~ N(0, scale^2)`.
    - `"laplace"`: `y = u + e`, `e ~ Laplace(0, b)` with `b = scale / sqrt(2)`, so std = scale.
    - `"poisson"` (Poisson-like, shot noise on the excess over an offset `o`):
      `k ~ Poisson((u - o) / scale)`, `y = o + scale * k`; hence `E[y] = u` and
      `Var[y] = scale * (u - o)`, so the per-point std is `sqrt(scale * (u - o))`.
      `o` defaults to `min(values)` and must not exceed any value.
    - `"none"`: `y = u` (scale must be 0).

    With `scale == 0` every model returns the values unchanged.

    **Arguments:**

    - `key`: typed PRNG key.
    - `values`: `(N,)` exact values.
    - `noise`: model name; `scale`: >= 0; `offset`: poisson offset (only for `"poisson"`).

    **Returns:** `(noisy (N,), std (N,))`, both float64; `std` is the std of the added noise per
    point.
    """
    _check_key(key)
    u = _as_float64(values, "values")
    if u.ndim != 1:
        raise bad_input("values", "a 1-D array (N,)", f"shape {u.shape}")
    _count_nonfinite(u, "values")
    if noise not in ("gaussian", "laplace", "poisson", "none"):
        raise bad_input("noise", "one of 'gaussian', 'laplace', 'poisson', 'none'", noise)
    s = _check_scale(scale)
    if offset is not None and noise != "poisson":
        raise bad_input("offset", "None unless noise='poisson'", offset)
    if noise == "none" and s != 0:
        raise bad_input("scale", "0 when noise='none'", scale)
    n = u.shape[0]
    if noise == "poisson":
        if offset is not None and (isinstance(offset, bool) or not isinstance(offset, (int, float, np.number))
                                   or not np.isfinite(offset)):
            raise bad_input("offset", "a finite number", offset)
        if s == 0 or n == 0:
            return u.copy(), np.zeros(n)
        o = float(u.min()) if offset is None else float(offset)
        if u.min() < o:
            raise bad_input("offset", f"a number <= min(values) = {u.min()!r}", offset)
        excess = u - o
        rate = excess / s
        if rate.max() > 1e15:
            raise bad_input("scale", f"a larger scale: rate (u - offset)/scale reaches {rate.max():.3g} "
                            "(> 1e15 counts, beyond exact float64 counts)", scale)
        k = _numpy_rng(key).poisson(rate).astype(np.float64)
        return o + s * k, np.sqrt(s * excess)
    if s == 0 or n == 0 or noise == "none":
        return u.copy(), np.zeros(n)
    if noise == "gaussian":
        z = _numpy_rng(key).standard_normal(n)
        return u + s * z, np.full(n, s)
    z = _numpy_rng(key).laplace(0.0, 1.0, n)
    return u + (s / math.sqrt(2.0)) * z, np.full(n, s)


# -- samplers ---------------------------------------------------------------------------------
def select_trajectory(ds: xr.Dataset, index: int) -> xr.DataArray:
    """Trajectory `index` (position, `0 <= index < B`) of a field collection as a DataArray
    with dims `("time", *space_dims)`, physical coords and the field's attrs (NaN entries, a
    missing-value mask, are kept)."""
    validate_field_dataset(ds, require_split=False, allow_missing=True)
    b = ds.sizes["trajectory"]
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < b:
        raise bad_input("index", f"a trajectory position in [0, {b - 1}]", index)
    return ds["field"].isel(trajectory=int(index))


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _check_trajectory(trajectory: Any) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], list[np.ndarray]]:
    if not isinstance(trajectory, xr.DataArray):
        raise bad_input("trajectory", "an xr.DataArray with dims ('time', *space_dims) (see select_trajectory)",
                        type(trajectory).__name__)
    dims = tuple(map(str, trajectory.dims))
    if len(dims) < 2 or dims[0] != "time":
        raise bad_input("trajectory", "dims ('time', *space_dims) with at least one space dim", dims)
    values = np.asarray(trajectory.values)
    if values.dtype.kind != "f":
        raise bad_input("trajectory", "float values", f"dtype {values.dtype}")
    # NaN marks missing entries (land, gaps): never observed. Infinities are an error.
    inf = np.isinf(values)
    if inf.any():
        raise bad_input("trajectory", "finite values or NaN (missing)", f"{int(inf.sum())} infinite entries "
                        f"of {values.size}")
    if values.size and np.isnan(values).all():
        raise bad_input("trajectory", "at least one value that is not missing", f"all {values.size} entries NaN")
    axes = []
    for d in dims:
        if d not in trajectory.coords:
            raise bad_input("trajectory", f"a physical coordinate for dim {d!r}", "none")
        a = _as_float64(trajectory.coords[d].values, f"trajectory.coords[{d!r}]")
        _count_nonfinite(a, f"trajectory.coords[{d!r}]")
        if a.size > 1 and (np.diff(a) <= 0).any():
            raise bad_input(f"trajectory.coords[{d!r}]", "strictly increasing values", a)
        axes.append(a)
    return values, axes[0], dims[1:], axes[1:]


def _jitter_coords(
    key: jax.Array, index: np.ndarray, axes: list[np.ndarray], jitter: float
) -> np.ndarray:
    """Off-grid coordinates: grid point `index (n, k)` moved by up to `jitter` local spacings
    along each of the given axes (towards the neighbour on the side it moves to), clipped to
    the grid's extent."""
    u = _numpy_rng(key).uniform(-1.0, 1.0, index.shape)
    out = np.empty(index.shape)
    for j, a in enumerate(axes):
        i = index[:, j]
        x = a[i]
        if a.size < 2:
            out[:, j] = x
            continue
        gaps = np.diff(a)
        up = gaps[np.minimum(i, a.size - 2)]
        down = gaps[np.maximum(i - 1, 0)]
        step = np.where(u[:, j] >= 0, up, down)
        out[:, j] = np.clip(x + jitter * u[:, j] * step, a[0], a[-1])
    return out


def _interpolate(frame: np.ndarray, axes: list[np.ndarray], points: np.ndarray) -> np.ndarray:
    """Multilinear interpolation of one snapshot `frame (I_1..I_K)` at `points (n, K)`;
    dims of size 1 are constant and are left out of the interpolation."""
    from scipy.interpolate import RegularGridInterpolator  # deferred: slow import, jitter only

    keep = [j for j, a in enumerate(axes) if a.size > 1]
    sub = frame.reshape([a.size for a in axes if a.size > 1]) if keep else frame.reshape(())
    if not keep:
        return np.full(points.shape[0], float(sub))
    interp = RegularGridInterpolator([axes[j] for j in keep], np.asarray(sub, dtype=np.float64), method="linear")
    return interp(points[:, keep])


def sample_observations(
    key: jax.Array,
    trajectory: xr.DataArray,
    *,
    rho: float | None,
    setting: int = 1,
    pattern: str = "random",
    n_profiles: int | None = None,
    forecast_after: float | None = None,
    jitter: float = 0.0,
    noise: str = "gaussian",
    noise_scale: float = 0.0,
    poisson_offset: float | None = None,
) -> ObservationSet:
    """Sample sparse noisy observations of one trajectory.

    **Arguments:**

    - `key`: typed PRNG key.
    - `trajectory`: `xr.DataArray` with dims `("time", *space_dims)` and physical coords (one
      trajectory of a field collection, e.g. from `select_trajectory`).
    - `rho`: fraction in (0, 1] of the grid observed per observed time stamp: for `"random"`
      and `"forecast"`, `max(1, round(rho * n_grid))` grid entries drawn without replacement
      (round half up); for `"profiles"`, `max(1, round(rho * n_horizontal))` columns unless
      `n_profiles` is given (then `rho` must be None).
    - `setting`: 1 = every time stamp observed; 2 = time indices 0, 2, 4, .. observed, the
      others have no observations.
    - `pattern`: `"random"`; `"profiles"` — `n_profiles` positions over all space dims but the
      last per observed time stamp, each a full column over the last dim (like CTD/Argo
      casts); `"forecast"` — like `"random"`, but nothing at times `> forecast_after`.
    - `n_profiles`: number of columns (only for `"profiles"`).
    - `forecast_after`: physical time cut-off (only for `"forecast"`, required there).
    - `jitter`: >= 0; moves points off the grid by up to `jitter` grid spacings per dim
      (uniformly, clipped to the domain; for profiles the horizontal position of the whole
      column moves). Values are then the multilinear interpolation of the field at the
      reported coordinates, so they are the field's true values there.
    - `noise`, `noise_scale`: noise model and scale in physical units (see `add_noise`).
    - `poisson_offset`: offset of the poisson model; default the trajectory's minimum.

    Missing entries (NaN in `trajectory`, e.g. land) are never observed: only entries (for
    profiles, columns with at least one level) that are not missing are drawn, `rho` is then a
    fraction of those, and profile levels or off-grid points that fall on missing entries are
    dropped. `attrs["missing_entries"]` (missing grid entries at the observed time stamps) and
    `attrs["dropped_missing"]` (points dropped) count them.

    **Returns:** an `ObservationSet` (points sorted by time) whose `attrs` record the sampling
    parameters (and `poisson_offset` for poisson noise).
    """
    _check_key(key)
    values, t_axis, dims, axes = _check_trajectory(trajectory)
    if pattern not in PATTERNS:
        raise bad_input("pattern", f"one of {PATTERNS}", pattern)
    if isinstance(setting, bool) or setting not in (1, 2):
        raise bad_input("setting", "1 (every time stamp) or 2 (every other time stamp)", setting)
    if n_profiles is not None and pattern != "profiles":
        raise bad_input("n_profiles", "None unless pattern='profiles'", n_profiles)
    if forecast_after is not None and pattern != "forecast":
        raise bad_input("forecast_after", "None unless pattern='forecast'", forecast_after)
    if pattern == "profiles" and n_profiles is not None:
        if rho is not None:
            raise bad_input("rho", "None when n_profiles is given (one way to set the number of profiles)", rho)
    elif rho is None or isinstance(rho, bool) or not isinstance(rho, (int, float, np.number)) \
            or not (0 < rho <= 1):
        raise bad_input("rho", "a fraction in (0, 1]", rho)
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float, np.number)) or not np.isfinite(jitter) \
            or jitter < 0:
        raise bad_input("jitter", "a finite number >= 0 (in grid spacings)", jitter)
    if noise not in ("gaussian", "laplace", "poisson", "none"):
        raise bad_input("noise", "one of 'gaussian', 'laplace', 'poisson', 'none'", noise)
    scale = _check_scale(noise_scale, "noise_scale")
    if noise == "none" and scale != 0:
        raise bad_input("noise_scale", "0 when noise='none'", noise_scale)
    if poisson_offset is not None and noise != "poisson":
        raise bad_input("poisson_offset", "None unless noise='poisson'", poisson_offset)

    n_time = t_axis.size
    observed = np.arange(n_time) if setting == 1 else np.arange(0, n_time, 2)
    if pattern == "forecast":
        if forecast_after is None or isinstance(forecast_after, bool) \
                or not isinstance(forecast_after, (int, float, np.number)) or not np.isfinite(forecast_after):
            raise bad_input("forecast_after", "a finite physical time (required for pattern='forecast')",
                            forecast_after)
        observed = observed[t_axis[observed] <= forecast_after]
        if observed.size == 0:
            raise bad_input("forecast_after", f"a time >= the first observed time stamp {t_axis[0]!r}",
                            forecast_after)

    shape = values.shape[1:]
    missing = np.isnan(values)
    has_missing = bool(missing.any())
    k_sel, k_jit, k_noise = jax.random.split(key, 3)
    # One key per time stamp of the grid, so the draw at a time does not depend on the others
    # (settings 1 and 2 pick the same points at the time stamps they share).
    seeds = np.asarray(jax.random.key_data(jax.random.split(k_sel, n_time))).reshape(n_time, -1)
    if pattern == "profiles":
        if len(shape) < 2:
            raise bad_input("pattern", "'random' or 'forecast' for a field with one space dim "
                            "(profiles need a last dim to run along)", pattern)
        n_h = int(np.prod(shape[:-1]))
        if n_profiles is None:
            count = max(1, _round_half_up(rho * n_h))
        elif isinstance(n_profiles, bool) or not isinstance(n_profiles, (int, np.integer)) \
                or not 1 <= n_profiles <= n_h:
            raise bad_input("n_profiles", f"an int in [1, {n_h}] (the number of horizontal positions)", n_profiles)
        else:
            count = int(n_profiles)
        n_pool = n_h
    else:
        n_pool = int(np.prod(shape))
        count = max(1, _round_half_up(rho * n_pool))
    if not has_missing:
        picks = np.stack(
            [np.random.default_rng(seeds[i]).choice(n_pool, size=count, replace=False) for i in observed]
        ).astype(np.int64).reshape(observed.size, count).ravel()
        counts = np.full(observed.size, count, dtype=np.int64)
    else:
        # Missing entries (NaN) are never drawn: the pool at each time stamp is the entries (or,
        # for profiles, the columns with at least one level) that are not missing, and `rho` is a
        # fraction of that pool.
        chosen, sizes = [], []
        for i in observed:
            valid = ~missing[i]
            valid = valid.reshape(n_h, -1).any(axis=1) if pattern == "profiles" else valid.ravel()
            pool = np.flatnonzero(valid)
            if pattern == "profiles" and n_profiles is not None:
                c = count
                if c > pool.size:
                    raise bad_input("n_profiles", f"an int in [1, {pool.size}] (horizontal positions with data "
                                    f"at time {t_axis[i]!r}; the others are missing)", n_profiles)
            else:
                c = max(1, _round_half_up(rho * pool.size)) if pool.size else 0
            chosen.append(pool[np.random.default_rng(seeds[i]).choice(pool.size, size=c, replace=False)])
            sizes.append(c)
        picks = np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)
        counts = np.asarray(sizes, dtype=np.int64)

    if pattern == "profiles":
        depth = shape[-1]
        h_index = np.stack(np.unravel_index(picks, shape[:-1]), axis=-1).reshape(-1, len(shape) - 1)  # (n_cols, K-1)
        if jitter > 0:
            h_coords = _jitter_coords(k_jit, h_index, axes[:-1], float(jitter))
        else:
            h_coords = np.stack([axes[j][h_index[:, j]] for j in range(len(axes) - 1)], axis=-1)
        n_cols = h_index.shape[0]
        index = np.concatenate(
            [np.repeat(h_index, depth, axis=0), np.tile(np.arange(depth), n_cols)[:, None]], axis=1
        )
        coords = np.concatenate(
            [np.repeat(h_coords, depth, axis=0), np.tile(axes[-1], n_cols)[:, None]], axis=1
        )
        t_index = np.repeat(observed, counts * depth)
    else:
        index = np.stack(np.unravel_index(picks, shape), axis=-1).reshape(-1, len(shape))
        if jitter > 0:
            coords = _jitter_coords(k_jit, index, axes, float(jitter))
        else:
            coords = np.stack([axes[j][index[:, j]] for j in range(len(axes))], axis=-1)
        t_index = np.repeat(observed, counts)

    if jitter > 0:
        exact = np.empty(t_index.size)
        for ti in observed:
            rows = t_index == ti
            exact[rows] = _interpolate(values[ti], axes, coords[rows])
    else:
        exact = values[(t_index, *index.T)].astype(np.float64)
    dropped_missing = 0
    if has_missing:
        # Profile levels that are missing, and off-grid points next to a missing entry (their
        # interpolated value is NaN), are dropped and counted in attrs["dropped_missing"].
        keep = np.isfinite(exact)
        dropped_missing = int((~keep).sum())
        exact, coords, t_index = exact[keep], coords[keep], t_index[keep]

    offset = None
    if noise == "poisson":
        offset = float(np.nanmin(values)) if poisson_offset is None else poisson_offset
    noisy, std = add_noise(k_noise, exact, noise, scale, offset=offset)

    attrs: dict[str, Any] = {
        "pattern": pattern,
        "setting": int(setting),
        "rho": None if rho is None else float(rho),
        "n_profiles": None if n_profiles is None else int(n_profiles),
        "forecast_after": None if forecast_after is None else float(forecast_after),
        "jitter": float(jitter),
        "noise": noise,
        "noise_scale": scale,
        "points_per_time_stamp": int(t_index.size // max(1, observed.size)),
    }
    if has_missing:
        attrs["missing_entries"] = int(missing[observed].sum())
        attrs["dropped_missing"] = dropped_missing
    if offset is not None:
        attrs["poisson_offset"] = float(offset)
    if isinstance(trajectory.attrs.get("units"), str):
        attrs["units"] = trajectory.attrs["units"]
    return ObservationSet(
        value=noisy,
        time=t_axis[t_index],
        coords=coords,
        space_dims=dims,
        noise_scale=std,
        noise_model=noise,
        attrs=attrs,
    )


__all__ = [
    "NOISE_MODELS",
    "PATTERNS",
    "ObservationSet",
    "PaddedObservations",
    "add_noise",
    "sample_observations",
    "select_trajectory",
]
