"""The posterior as an `az.InferenceData`: assembly from the draws (`to_inference_data`), its attrs,
the observation order of the padded layout, and saving / loading it as netCDF.

Layout of the groups: see `inference.report`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
import os
from pathlib import Path
from typing import Any

import arviz as az
from jaxtyping import ArrayLike, Float, Int
import numpy as np

import sdift_prob
from sdift_prob.data.observations import ObservationSet
from sdift_prob.errors import FormatError, InputError, bad_input
from sdift_prob.io import NETCDF_ENGINE, atomic_file, probe_hdf5



INFERENCE_LIBRARY = "sdift-prob"
POSTERIOR_KIND = "posterior"
POSTERIOR_FORMAT_VERSION = 1
_MODEL_OPTIONS = ("df", "poisson_offset", "poisson_scale", "sigma_prior_scale")
_LIKELIHOOD_OPTIONS = ("df", "poisson_offset", "poisson_scale")  # the parameters of a likelihood given by name
_GROUPS_WITH_OBS = ("posterior_predictive", "observed_data", "log_likelihood")
_RESERVED = ("chain", "draw", "time", "time_grid", "obs_id", "obs_time", "field", "cores", "sigma")


# -- small checks ---------------------------------------------------------------------------------
def _numeric(x: Any, argument: str, *, allow_bool: bool = False) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - anything that is not array-like
        raise bad_input(argument, "an array of numbers", type(x).__name__) from exc
    kinds = "iufb" if allow_bool else "iuf"
    if arr.dtype.kind not in kinds:
        raise bad_input(argument, "a numeric array", f"dtype {arr.dtype}")
    return arr


def _check_coordinate(values: Any, argument: str, length: int) -> np.ndarray:
    arr = _numeric(values, argument).astype(np.float64)
    if arr.shape != (length,):
        raise bad_input(argument, f"a 1-D array of length {length}", f"shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise bad_input(argument, "finite values", "NaN or infinite entries")
    return arr


def _netcdf_attr(name: str, value: Any) -> tuple[Any, bool]:
    """A netCDF-safe attribute value, and whether it was JSON-encoded."""
    if isinstance(value, (bool, np.bool_)):
        return int(value), False
    if isinstance(value, str):
        return value, False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return value.item() if isinstance(value, np.generic) else value, False
    if isinstance(value, os.PathLike):
        return os.fspath(value), False
    if value is None or isinstance(value, (Mapping, list, tuple, np.ndarray)):

        def default(o: Any) -> Any:
            if isinstance(o, np.ndarray):
                return o.tolist()
            if isinstance(o, np.generic):
                return o.item()
            if isinstance(o, os.PathLike):
                return os.fspath(o)
            raise TypeError(f"{type(o).__name__} is not JSON-serialisable")

        try:
            return json.dumps(value, default=default, sort_keys=True, allow_nan=True), True
        except (TypeError, ValueError) as exc:
            raise bad_input(f"attrs[{name!r}]", "a JSON-serialisable value", str(exc)) from exc
    raise bad_input(f"attrs[{name!r}]", "a str, number, bool, None, path, list, tuple, dict or array",
                    type(value).__name__)


def _check_attrs(attrs: Any) -> dict[str, Any]:
    if attrs is None:
        attrs = {}
    if not isinstance(attrs, Mapping):
        raise bad_input("attrs", "a dict of attribute name -> value", type(attrs).__name__)
    out: dict[str, Any] = {}
    encoded: list[str] = []
    for name, value in attrs.items():
        if not isinstance(name, str) or not name:
            raise bad_input("attrs", "non-empty string keys", name)
        if name in ("inference_library", "inference_library_version", "sdift_kind", "sdift_format_version",
                    "json_attrs", "created_at", "arviz_version"):
            raise bad_input("attrs", "no key that this module sets itself", name)
        out[name], was_json = _netcdf_attr(name, value)
        if was_json:
            encoded.append(name)
    out["json_attrs"] = json.dumps(sorted(encoded))
    out["inference_library"] = INFERENCE_LIBRARY
    out["inference_library_version"] = sdift_prob.__version__
    out["sdift_kind"] = POSTERIOR_KIND
    out["sdift_format_version"] = POSTERIOR_FORMAT_VERSION
    return out


def _check_draws(x: Any, argument: str, chains_draws: tuple[int, int] | None, tail: str,
                 min_ndim: int = 2) -> np.ndarray:
    arr = _numeric(x, argument)
    if arr.ndim < min_ndim:
        raise bad_input(argument, f"an array of shape (chain, draw{tail})", f"shape {arr.shape}")
    if chains_draws is not None and arr.shape[:2] != chains_draws:
        raise bad_input(argument, f"leading dims (chain, draw) = {chains_draws} like core_draws",
                        f"shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise bad_input(argument, "at least one chain and one draw", f"shape {arr.shape}")
    return arr


# -- observation order and NumPyro pieces ---------------------------------------------------------
def observation_order(
    obs: ObservationSet, times: Float[ArrayLike, " M"] | None = None, max_points: int | None = None
) -> Int[np.ndarray, "M P"]:
    """Where each point of `obs` lands in `obs.to_padded(times, max_points)`.

    **Arguments:** as `ObservationSet.to_padded`.

    **Returns:** `(M, P)` int64: the `obs_id` (position in `obs`) of each padded entry, -1 on
    padding. `order >= 0` equals the padded mask.
    """
    if not isinstance(obs, ObservationSet):
        raise bad_input("obs", "an ObservationSet", type(obs).__name__)
    labelled = ObservationSet(
        value=np.arange(obs.n_points, dtype=np.float64), time=obs.time, coords=obs.coords,
        space_dims=obs.space_dims,
    )
    padded = labelled.to_padded(times, max_points)
    return np.where(padded.mask, np.rint(padded.values).astype(np.int64), -1)


# -- InferenceData -------------------------------------------------------------------------------
def _units_by_name(units: Any) -> dict[str, str]:
    if units is None:
        return {}
    if isinstance(units, str):
        return {"field": units, "y": units}
    if isinstance(units, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in units.items()):
        return dict(units)
    raise bad_input("attrs['units']", "a str (field units) or a dict of name -> unit string", units)


def to_inference_data(
    *,
    core_draws: Float[ArrayLike, "chain draw M *R"],
    field_draws: Float[ArrayLike, "chain draw T *space"],
    field_times: Float[ArrayLike, " T"],
    field_coords: Mapping[str, Float[ArrayLike, " I"]],
    space_dims: Sequence[str],
    obs: ObservationSet,
    y_rep: Float[ArrayLike, "chain draw N"],
    log_lik: Float[ArrayLike, "chain draw N"],
    sigma_draws: Float[ArrayLike, "chain draw"] | None = None,
    sample_stats: Mapping[str, ArrayLike] | None = None,
    attrs: Mapping[str, Any] | None = None,
    core_times: Float[ArrayLike, " M"] | None = None,
) -> az.InferenceData:
    """Assemble the posterior of one trajectory as an `az.InferenceData` with named dims.

    **Arguments (keyword-only):**

    - `core_draws`: `(chain, draw, M, R1..RK)` FTM cores -> `posterior.cores` with dims
      `(time_grid, rank_1..rank_K)`.
    - `field_draws`: `(chain, draw, T, I1..IK)` decoded fields in physical units ->
      `posterior.field` with dims `(time, *space_dims)`.
    - `field_times`: `(T,)` physical times of the field; `field_coords`: each space dim name ->
      its `(I_k,)` physical coordinate; `space_dims`: their order (the field's axes).
    - `obs`: the `ObservationSet` -> `observed_data.y (obs_id)` and the coords `obs_time`,
      `obs_<dim>`. Its `space_dims` must equal `space_dims`.
    - `y_rep`: `(chain, draw, N)` posterior predictive at the observation points (physical).
    - `log_lik`: `(chain, draw, N)` pointwise log-likelihood.
    - `sigma_draws`: `(chain, draw)` noise std in physical units, or None (noise fixed).
    - `sample_stats`: name -> `(chain, draw)` array (e.g. wall time per draw, guidance norms,
      NaN flags, zeta).
    - `attrs`: provenance (sampler, settings, seed, versions, units); made netCDF-safe: dicts,
      lists, tuples, arrays and None become JSON strings (listed in attr `json_attrs`), bools
      become ints. `attrs["units"]` (a str, or a dict name -> unit) also sets the `units` attr
      of `field`/`y` and of coords with those names.
    - `core_times`: `(M,)` physical times of the core grid (coord of `time_grid`); default
      0..M-1.

    **Returns:** `az.InferenceData` with groups posterior, posterior_predictive, log_likelihood,
    sample_stats (if given), observed_data; the same attrs on every group, plus
    `inference_library="sdift-prob"`, its version, `sdift_kind="posterior"`,
    `sdift_format_version`.
    """
    cores = _check_draws(core_draws, "core_draws", None, ", M, R1, .., RK)", min_ndim=4)
    chains_draws = cores.shape[:2]
    if isinstance(space_dims, str) or not isinstance(space_dims, Sequence) or len(space_dims) == 0 \
            or not all(isinstance(d, str) and d for d in space_dims) or len(set(space_dims)) != len(space_dims):
        raise bad_input("space_dims", "a non-empty sequence of distinct dim names", space_dims)
    dims_space = tuple(space_dims)
    clash = [d for d in dims_space if d in _RESERVED or d.startswith(("rank_", "obs_"))]
    if clash:
        raise bad_input("space_dims", f"names other than {_RESERVED} and rank_*/obs_*", clash)
    field = _check_draws(field_draws, "field_draws", chains_draws, ", T, *space)", min_ndim=3)
    if field.ndim != 3 + len(dims_space):
        raise bad_input("field_draws", f"shape (chain, draw, T, *space) with {len(dims_space)} space dims "
                        f"{dims_space}", f"shape {field.shape}")
    times = _check_coordinate(field_times, "field_times", field.shape[2])
    if not isinstance(field_coords, Mapping) or set(field_coords) != set(dims_space):
        got = sorted(field_coords) if isinstance(field_coords, Mapping) else type(field_coords).__name__
        raise bad_input("field_coords", f"a dict with exactly the keys {list(dims_space)}", got)
    space_coords = {d: _check_coordinate(field_coords[d], f"field_coords[{d!r}]", field.shape[3 + k])
                    for k, d in enumerate(dims_space)}
    if not isinstance(obs, ObservationSet):
        raise bad_input("obs", "an ObservationSet", type(obs).__name__)
    if obs.space_dims != dims_space:
        raise bad_input("obs", f"observations over the space dims {dims_space}", obs.space_dims)
    n = obs.n_points  # 0: unconditioned (prior) draws; the observation groups are then left out
    rep = _check_draws(y_rep, "y_rep", chains_draws, ", N)", min_ndim=3)
    if rep.shape != chains_draws + (n,):
        raise bad_input("y_rep", f"shape (chain, draw, N) = {chains_draws + (n,)}", f"shape {rep.shape}")
    ll = _check_draws(log_lik, "log_lik", chains_draws, ", N)", min_ndim=3)
    if ll.shape != chains_draws + (n,):
        raise bad_input("log_lik", f"shape (chain, draw, N) = {chains_draws + (n,)}", f"shape {ll.shape}")
    m = cores.shape[2]
    grid = np.arange(m, dtype=np.float64) if core_times is None else _check_coordinate(core_times, "core_times", m)
    meta = _check_attrs(attrs)
    units = _units_by_name(attrs.get("units") if isinstance(attrs, Mapping) else None)

    posterior: dict[str, np.ndarray] = {"cores": cores, "field": field}
    if sigma_draws is not None:
        sig = _check_draws(sigma_draws, "sigma_draws", chains_draws, ")")
        if sig.shape != chains_draws:
            raise bad_input("sigma_draws", f"shape (chain, draw) = {chains_draws}", f"shape {sig.shape}")
        posterior["sigma"] = sig
    stats: dict[str, np.ndarray] = {}
    if sample_stats is not None:
        if not isinstance(sample_stats, Mapping):
            raise bad_input("sample_stats", "a dict of name -> (chain, draw) array", type(sample_stats).__name__)
        for name, value in sample_stats.items():
            if not isinstance(name, str) or not name:
                raise bad_input("sample_stats", "non-empty string names", name)
            arr = _numeric(value, f"sample_stats[{name!r}]", allow_bool=True)
            if arr.shape != chains_draws:
                raise bad_input(f"sample_stats[{name!r}]", f"shape (chain, draw) = {chains_draws}",
                                f"shape {arr.shape}")
            stats[name] = arr

    rank_dims = [f"rank_{k + 1}" for k in range(cores.ndim - 3)]
    coords: dict[str, Any] = {"time_grid": grid, "time": times, "obs_id": np.arange(n), **space_coords}
    for d, size in zip(rank_dims, cores.shape[3:]):
        coords[d] = np.arange(size)
    dims = {"cores": ["time_grid", *rank_dims], "field": ["time", *dims_space]}
    with_obs = n > 0
    # Two builds, so that a space dim may be called "y" (e.g. fluid2d's x, y) without clashing
    # with the observed variable "y": the observation groups never see the field's coords.
    idata = az.from_dict(
        posterior=posterior,
        sample_stats=stats or None,
        coords=coords,
        dims=dims,
        attrs=meta,
        posterior_attrs=meta,
        sample_stats_attrs=meta,
    )
    if with_obs:
        idata.extend(az.from_dict(
            posterior_predictive={"y": rep},
            log_likelihood={"y": ll},
            observed_data={"y": obs.value},
            coords={"obs_id": np.arange(n)},
            dims={"y": ["obs_id"]},
            attrs=meta,
            posterior_predictive_attrs=meta,
            log_likelihood_attrs=meta,
        ))
    obs_coords = {"obs_time": ("obs_id", obs.time)}
    for k, d in enumerate(dims_space):
        obs_coords[f"obs_{d}"] = ("obs_id", obs.coords[:, k])
    if with_obs:
        idata = idata.assign_coords(obs_coords, groups=list(_GROUPS_WITH_OBS))
    for group in idata.groups():
        ds = idata[group]
        for name, unit in units.items():
            # A coordinate's unit also applies to the observations' copy of it (obs_time, obs_lat..).
            for target in (name, f"obs_{name}" if name in ("time", *dims_space) else None):
                if target is not None and target in ds.variables:
                    ds[target].attrs["units"] = unit
        if "y" in ds.data_vars and "field" in units:
            ds["y"].attrs["units"] = units["field"]  # the observed values, not a coordinate named y
    return idata


def posterior_attrs(idata: az.InferenceData) -> dict[str, Any]:
    """The posterior group's attrs with the JSON-encoded values (attr `json_attrs`) decoded."""
    _check_idata(idata)
    raw = dict(idata.posterior.attrs)
    encoded = json.loads(raw.pop("json_attrs", "[]"))
    for name in encoded:
        if name in raw:
            raw[name] = json.loads(raw[name])
    return raw


# -- files ----------------------------------------------------------------------------------------
def _check_idata(idata: Any) -> None:
    if not isinstance(idata, az.InferenceData):
        raise bad_input("idata", "an arviz.InferenceData", type(idata).__name__)
    if "posterior" not in idata.groups() or idata.posterior.attrs.get("sdift_kind") != POSTERIOR_KIND:
        raise bad_input("idata", "an InferenceData made by to_inference_data (posterior attr sdift_kind="
                        f"{POSTERIOR_KIND!r})", "a foreign InferenceData")


def save_posterior(idata: az.InferenceData, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write `idata` to one netCDF file (h5netcdf, compressed), atomically.

    **Arguments:** `idata` from `to_inference_data`; `path` target file, refused if it exists
    unless `overwrite=True`.

    **Returns:** the path written.
    """
    _check_idata(idata)
    target = Path(path)
    with atomic_file(target, overwrite=overwrite) as tmp:
        idata.to_netcdf(str(tmp), engine=NETCDF_ENGINE, overwrite_existing=True)
    return target


def load_posterior(path: str | os.PathLike) -> az.InferenceData:
    """Read a posterior written by `save_posterior` (all groups loaded into memory).

    **Raises:** `InputError` if the file does not exist; `FormatError` if it is not a netCDF
    posterior of this project or has a newer format version.
    """
    target = Path(path)
    if not target.is_file():
        raise InputError(f"path: expected an existing posterior file, got {str(target)!r} (not found)")
    probe_hdf5(target)  # a corrupt file can hang the HDF5 library: read its metadata aside first
    try:
        idata = az.from_netcdf(str(target), engine=NETCDF_ENGINE)
        idata = idata.map(lambda ds: ds.load())
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not one of our files"
        raise FormatError(f"{target}: not a readable netCDF InferenceData ({type(exc).__name__}: {exc})") from exc
    if "posterior" not in idata.groups() or idata.posterior.attrs.get("sdift_kind") != POSTERIOR_KIND:
        raise FormatError(f"{target}: not an sdift-prob posterior (posterior attr sdift_kind is "
                          f"{idata.posterior.attrs.get('sdift_kind') if 'posterior' in idata.groups() else None!r})")
    version = idata.posterior.attrs.get("sdift_format_version")
    if not isinstance(version, (int, np.integer)) or not 1 <= int(version) <= POSTERIOR_FORMAT_VERSION:
        raise FormatError(f"{target}: posterior format version {version!r}; this version of sdift-prob reads "
                          f"1..{POSTERIOR_FORMAT_VERSION}")
    return idata
