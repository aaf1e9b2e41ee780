"""Sparse, irregular, noisy observations of one trajectory.

An `ObservationSet` is ragged: N points, each with its own physical time and (possibly
off-grid) physical coordinates. Jitted code gets a `PaddedObservations` instead: one row per
time stamp, padded to a fixed number of points with a mask.

Synthetic observations of a simulated trajectory are drawn by `sdift_prob.data.sampling`; point
data from the analyst's own files are read by `sdift_prob.data.readers`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import xarray as xr
from jaxtyping import ArrayLike, Bool, Float

from ..errors import FormatError, InputError, as_float64, bad_input
from ..io import NETCDF_ENGINE, atomic_file, read_netcdf

OBSERVATION_KIND = "observation_set"
OBSERVATION_FORMAT_VERSION = 1
NOISE_MODELS = ("gaussian", "laplace", "poisson", "none", "unknown")
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


__all__ = [
    "NOISE_MODELS",
    "ObservationSet",
    "PaddedObservations",
]
