"""ArviZ report of a posterior over FTM cores and fields — the only module that imports ArviZ.

`to_inference_data` assembles an `az.InferenceData` (arviz 0.23) with named dims:

- `posterior`: `cores (chain, draw, time_grid, rank_1..rank_K)` in FTM core units, `field
  (chain, draw, time, *space_dims)` in physical units with the physical coords, and `sigma
  (chain, draw)` (physical units) when the noise level was inferred;
- `posterior_predictive`: `y (chain, draw, obs_id)`, replicated observations (physical);
- `observed_data`: `y (obs_id)`;
- `log_likelihood`: `y (chain, draw, obs_id)`, pointwise log density per physical unit;
- `sample_stats`: sampler diagnostics per draw.

The observation groups carry the non-dim coords `obs_time` and `obs_<dim>` over `obs_id`, which
is the order of the points in the `ObservationSet`. "chain" means independent sampler runs,
"draw" the draws of one run.

`pointwise_log_likelihood` and `posterior_predictive` build the observation pieces from the
NumPyro observation model (`models.observation`), which works in normalised field units on the
padded (M, P) layout; they map the entries back to `obs_id` order and to physical units.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import arviz as az
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import xarray as xr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray
from numpyro.distributions import constraints
from numpyro.handlers import uncondition
from numpyro.infer import Predictive, log_likelihood

import sdift_prob
from models.likelihoods import Likelihood
from models.observation import check_observation_inputs, observation_model, resolve_likelihood
from sdift_prob.data.fields import Normalizer
from sdift_prob.data.observations import ObservationSet, PaddedObservations
from sdift_prob.errors import FormatError, InputError, NumericalError, bad_input
from sdift_prob.io import NETCDF_ENGINE, atomic_file, probe_hdf5
from sdift_prob.metrics import (
    INTERVAL_METHODS,
    _check_levels,
    crps_ensemble,
    energy_score,
    interval_bounds,
    interval_coverage,
    pit_values,
    rmse,
    variogram_score,
    vrmse,
)
from sdift_prob.validation import check_key

from .calibrate import apply_temperature

__all__ = [
    "INFERENCE_LIBRARY",
    "POSTERIOR_FORMAT_VERSION",
    "POSTERIOR_KIND",
    "COVERAGE_METHODS",
    "coverage",
    "coverage_by",
    "crps",
    "evaluate",
    "load_posterior",
    "loo",
    "loo_pit",
    "observation_order",
    "p_exceed",
    "pit",
    "pointwise_log_likelihood",
    "posterior_attrs",
    "posterior_mean",
    "posterior_predictive",
    "psis_log_weights",
    "save_posterior",
    "temper_posterior",
    "to_inference_data",
    "UnreliableLOOWarning",
    "vrmse_of_mean",
]

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


def _core_model(design: Any, padded: Any, *, core_shape: tuple[int, ...], **model_kwargs: Any) -> None:
    # The cores are an argument of the observation model; a site for them lets NumPyro's
    # log_likelihood / Predictive substitute one draw at a time.
    cores = numpyro.sample("cores", dist.ImproperUniform(constraints.real, (), core_shape))
    observation_model(cores, design, padded, validate=False, **model_kwargs)


def _check_model_inputs(
    core_draws: Any, design: Any, padded: Any, obs_order: Any, likelihood: Any, sigma_draws: Any,
    sigma: Any, normalizer: Any, batch_size: Any, model_kwargs: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, int, dict[str, Any]]:
    unknown = sorted(set(model_kwargs) - set(_MODEL_OPTIONS))
    if unknown:
        raise bad_input("model_kwargs", f"only observation_model options {_MODEL_OPTIONS}", unknown)
    # The likelihood object, once: from an object, or from a name with its parameters in model_kwargs.
    lik_params = {k: model_kwargs[k] for k in _LIKELIHOOD_OPTIONS if k in model_kwargs}
    model_kwargs = {k: v for k, v in model_kwargs.items() if k not in _LIKELIHOOD_OPTIONS}
    lik = resolve_likelihood(likelihood, **lik_params)
    cores = _check_draws(core_draws, "core_draws", None, ", M, R1, .., RK)", min_ndim=4)
    if not isinstance(padded, PaddedObservations):
        raise bad_input("padded", "a PaddedObservations (normalised units, see models.observation.normalise_padded)",
                        type(padded).__name__)
    mask = np.asarray(padded.mask)
    order = _numeric(obs_order, "obs_order")
    if order.dtype.kind not in "iu":
        raise bad_input("obs_order", "an integer array (from observation_order)", f"dtype {order.dtype}")
    if order.shape != mask.shape:
        raise bad_input("obs_order", f"shape {mask.shape} like padded.mask", f"shape {order.shape}")
    if not np.array_equal(order >= 0, mask):
        raise bad_input("obs_order", "ids >= 0 exactly where padded.mask is True (see observation_order)",
                        f"{int(((order >= 0) != mask).sum())} entries disagree")
    ids = order[mask]
    n = ids.size
    if n == 0:
        raise bad_input("padded", "at least one valid observation", "an all-False mask")
    if not np.array_equal(np.sort(ids), np.arange(n)):
        raise bad_input("obs_order", f"each obs_id 0..{n - 1} exactly once", "repeated or missing ids")
    sig = None
    if sigma_draws is not None:
        if not lik.has_sigma:
            raise bad_input("sigma_draws", f"None for likelihood={lik.name!r} (it has no sigma)", "an array")
        if sigma is not None:
            raise bad_input("sigma", "None when sigma_draws is given (one source of the noise level)", sigma)
        sig = _check_draws(sigma_draws, "sigma_draws", cores.shape[:2], ")").astype(np.float64)
        if sig.shape != cores.shape[:2]:
            raise bad_input("sigma_draws", f"shape (chain, draw) = {cores.shape[:2]}", f"shape {sig.shape}")
        if not (np.isfinite(sig) & (sig > 0)).all():
            raise bad_input("sigma_draws", "positive finite noise levels", "zero, negative or non-finite entries")
    elif lik.has_sigma and sigma is None:
        raise bad_input("sigma", "a fixed noise level (number, array or 'metadata') when sigma_draws is None", sigma)
    if normalizer is not None and not isinstance(normalizer, Normalizer):
        raise bad_input("normalizer", "a Normalizer or None (model units are physical)", type(normalizer).__name__)
    n_flat = cores.shape[0] * cores.shape[1]
    if batch_size is None:
        chunk = n_flat
    elif isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise bad_input("batch_size", "a positive int or None", batch_size)
    else:
        chunk = min(int(batch_size), n_flat)
    if not np.isfinite(cores).all():
        bad = int((~np.isfinite(cores)).reshape(n_flat, -1).any(axis=1).sum())
        raise bad_input("core_draws", "finite values (leave out diverged draws first)",
                        f"{bad} of {n_flat} draws with NaN/inf")
    kwargs = dict(likelihood=lik, sigma=sigma, **model_kwargs)
    check_observation_inputs(cores[0, 0], design, padded, **kwargs)
    return cores, sig, order, mask, chunk, kwargs


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _pad_rows(x: Any, size: int) -> Any:
    """Pad the leading axis to `size` by repeating the last row (keeps one compiled shape)."""
    short = size - x.shape[0]
    if short == 0:
        return x
    return jnp.concatenate([x, jnp.repeat(x[-1:], short, axis=0)], axis=0)


@eqx.filter_jit
def _loglik_chunk(samples: dict[str, Array], design: Array, padded: PaddedObservations,
                  core_shape: tuple[int, ...], kwargs: dict[str, Any]) -> Array:
    def one(sample: dict[str, Array]) -> Array:
        out = log_likelihood(_core_model, sample, design, padded, batch_ndims=0, core_shape=core_shape, **kwargs)
        return out["y"]

    # lax.map over draws (as in _predict_chunk): bitwise the same result for every batch_size.
    return jax.lax.map(one, samples)


@eqx.filter_jit
def _predict_chunk(keys: Array, samples: dict[str, Array], design: Array, padded: PaddedObservations,
                   core_shape: tuple[int, ...], kwargs: dict[str, Any]) -> Array:
    def one(args: tuple[Array, dict[str, Array]]) -> Array:
        key, sample = args
        # batch_ndims=0: one draw per call with its own pre-split key, so chunking cannot
        # change which key a draw gets.
        pred = Predictive(uncondition(_core_model), sample, batch_ndims=0, return_sites=["y"])
        return pred(key, design, padded, core_shape=core_shape, **kwargs)["y"]

    # lax.map, not vmap: every draw runs through the same compiled one-draw body, so the
    # result is bitwise the same for every batch_size (a vmap over a different batch size
    # may round differently).
    return jax.lax.map(one, (keys, samples))


def _to_obs_order(entries: np.ndarray, order: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`(F, M, P)` padded entries -> `(F, N)` in obs_id order."""
    out = np.empty((entries.shape[0], int(mask.sum())), dtype=entries.dtype)
    out[:, order[mask]] = entries[:, mask]
    return out


def _samples(cores: np.ndarray, sig: np.ndarray | None) -> dict[str, Array]:
    flat = {"cores": jnp.asarray(cores.reshape((-1,) + cores.shape[2:]))}
    if sig is not None:
        flat["sigma"] = jnp.asarray(sig.reshape(-1), dtype=flat["cores"].dtype)
    return flat


def _model_batch(core_draws, design, padded, obs_order, likelihood, sigma_draws, sigma, normalizer,
                 batch_size, model_kwargs):
    """Checked inputs of the per-draw NumPyro computations: draw samples and JAX arrays."""
    cores, sig, order, mask, chunk, kwargs = _check_model_inputs(
        core_draws, design, padded, obs_order, likelihood, sigma_draws, sigma, normalizer, batch_size,
        model_kwargs,
    )
    if sig is not None:
        kwargs["sigma"] = None  # each draw's sample carries its own sigma
    samples = _samples(cores, sig)
    design_j = jnp.asarray(design, dtype=samples["cores"].dtype)
    padded_j = jax.tree.map(jnp.asarray, padded)
    return cores.shape[:2], cores.shape[2:], samples, design_j, padded_j, order, mask, chunk, kwargs


def pointwise_log_likelihood(
    core_draws: Float[ArrayLike, "chain draw M *R"],
    design: Float[ArrayLike, "M P D"],
    padded: PaddedObservations,
    obs_order: Int[ArrayLike, "M P"],
    likelihood: Likelihood | str = "gaussian",
    sigma_draws: Float[ArrayLike, "chain draw"] | None = None,
    *,
    sigma: float | ArrayLike | str | None = None,
    normalizer: Normalizer | None = None,
    batch_size: int | None = None,
    **model_kwargs: Any,
) -> Float[np.ndarray, "chain draw N"]:
    """Log density of each observation under each posterior draw (for `az.loo` / `az.waic`).

    Uses `numpyro.infer.log_likelihood` on `models.observation.observation_model`, one NumPyro
    trace per draw, with the cores (and sigma) of the draw substituted.

    **Arguments:**

    - `core_draws`: `(chain, draw, M, R1..RK)` cores on the padded time grid (FTM core units).
    - `design`: `(M, P, D)` design rows of the padded points.
    - `padded`: `PaddedObservations` in the model's (normalised) units.
    - `obs_order`: `(M, P)` obs_id of each padded entry, -1 on padding (`observation_order`).
    - `likelihood`: as `observation_model` (a `models.likelihoods.Likelihood` or its name).
    - `sigma_draws`: `(chain, draw)` noise std per draw in model units, when it was inferred.
    - `sigma`: the fixed noise level when `sigma_draws` is None (as `observation_model`).
    - `normalizer`: the field normaliser the model units come from; the result is then a
      density per physical unit (`- log std` per point). None: model units are physical.
    - `batch_size`: draws per compiled chunk (None = all at once); the result does not depend
      on it.
    - `model_kwargs`: further `observation_model` options (`sigma_prior_scale`; `df`,
      `poisson_offset`, `poisson_scale` with a likelihood given by name).

    **Returns:** `(chain, draw, N)` float, in the order of the `ObservationSet` (obs_id).
    """
    (c, s), core_shape, samples, design_j, padded_j, order, mask, chunk, kwargs = _model_batch(
        core_draws, design, padded, obs_order, likelihood, sigma_draws, sigma, normalizer, batch_size,
        model_kwargs,
    )
    parts = []
    for start, stop in _chunks(c * s, chunk):
        part = {k: _pad_rows(v[start:stop], chunk) for k, v in samples.items()}
        ll = _loglik_chunk(part, design_j, padded_j, core_shape, kwargs)
        parts.append(np.asarray(ll)[: stop - start])
    entries = np.concatenate(parts, axis=0)
    out = _to_obs_order(entries, order, mask)
    if normalizer is not None:
        out = out - np.log(normalizer.std).astype(out.dtype)
    return out.reshape(c, s, -1)


def posterior_predictive(
    key: PRNGKeyArray,
    core_draws: Float[ArrayLike, "chain draw M *R"],
    design: Float[ArrayLike, "M P D"],
    padded: PaddedObservations,
    obs_order: Int[ArrayLike, "M P"],
    likelihood: Likelihood | str = "gaussian",
    sigma_draws: Float[ArrayLike, "chain draw"] | None = None,
    *,
    sigma: float | ArrayLike | str | None = None,
    normalizer: Normalizer | None = None,
    batch_size: int | None = None,
    **model_kwargs: Any,
) -> Float[np.ndarray, "chain draw N"]:
    """Replicated observations, one per posterior draw, from `numpyro.infer.Predictive`.

    Each draw gets its own key, split from `key` up front (`jax.random.split(key, chain *
    draw)` in row-major (chain, draw) order), so `batch_size` never changes the result.

    **Arguments:** as `pointwise_log_likelihood`, plus `key` (typed PRNG key).

    **Returns:** `(chain, draw, N)` in physical units (`normalizer.inverse` applied when given),
    in obs_id order.
    """
    check_key(key)
    (c, s), core_shape, samples, design_j, padded_j, order, mask, chunk, kwargs = _model_batch(
        core_draws, design, padded, obs_order, likelihood, sigma_draws, sigma, normalizer, batch_size,
        model_kwargs,
    )
    keys = jax.random.split(key, c * s)
    parts = []
    for start, stop in _chunks(c * s, chunk):
        part = {k: _pad_rows(v[start:stop], chunk) for k, v in samples.items()}
        y = _predict_chunk(_pad_rows(keys[start:stop], chunk), part, design_j, padded_j, core_shape, kwargs)
        parts.append(np.asarray(y)[: stop - start])
    entries = np.concatenate(parts, axis=0)
    out = _to_obs_order(entries, order, mask)
    if normalizer is not None:
        out = normalizer.inverse(out)
    return out.reshape(c, s, -1)


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


# -- evaluation against a truth field -----------------------------------------------------------
# `truth` may hold NaN (land masks, gaps, e.g. a field read with `sdift_prob.data.from_xarray`):
# those entries are left out of every score (`sdift_prob.metrics`), and `pit` is NaN there.
def _field(idata: Any) -> xr.DataArray:
    _check_idata(idata)
    if "field" not in idata.posterior:
        raise bad_input("idata", "a posterior with a 'field' variable", list(idata.posterior.data_vars))
    return idata.posterior["field"]


def _truth_array(field: xr.DataArray, truth: Any) -> np.ndarray:
    dims = tuple(d for d in field.dims if d not in ("chain", "draw"))
    shape = tuple(field.sizes[d] for d in dims)
    if isinstance(truth, xr.DataArray):
        if set(truth.dims) != set(dims):
            raise bad_input("truth", f"a DataArray with dims {dims}", tuple(truth.dims))
        truth = truth.transpose(*dims)
        if truth.shape != shape:
            raise bad_input("truth", f"shape {shape} = {dims} of the posterior field (same grid)",
                            f"shape {truth.shape}")
        for d in dims:
            if d in truth.coords and not np.allclose(np.asarray(truth.coords[d], dtype=np.float64),
                                                     np.asarray(field.coords[d], dtype=np.float64),
                                                     rtol=1e-9, atol=0.0):
                raise bad_input("truth", f"coords of {d!r} equal to the posterior field's",
                                "different coordinate values")
        arr = _numeric(truth.values, "truth")
    else:
        arr = _numeric(truth, "truth")
    if arr.shape != shape:
        raise bad_input("truth", f"shape {shape} = (time, *space) of the posterior field", f"shape {arr.shape}")
    arr = arr.astype(np.float64)
    # NaN = missing truth (land, gaps): sdift_prob.metrics leaves those entries out of every
    # score. Infinities are errors.
    if np.isinf(arr).any():
        raise bad_input("truth", "finite values or NaN (missing entries)",
                        f"{int(np.isinf(arr).sum())} infinite entries of {arr.size}")
    if arr.size and np.isnan(arr).all():
        raise bad_input("truth", "at least one entry that is not missing (NaN)", f"all {arr.size} entries NaN")
    return arr


def _draws(field: xr.DataArray) -> np.ndarray:
    values = np.asarray(field.values, dtype=np.float64)
    flat = values.reshape((-1,) + values.shape[2:])
    if not np.isfinite(flat).all():
        bad = int((~np.isfinite(flat)).reshape(flat.shape[0], -1).any(axis=1).sum())
        raise bad_input("idata", "finite field draws", f"{bad} of {flat.shape[0]} draws with NaN/inf "
                        "(drop them with idata.sel / isel first)")
    return flat


def posterior_mean(idata: az.InferenceData) -> xr.DataArray:
    """Posterior mean field over chains and draws: `(time, *space)`, physical units and coords."""
    field = _field(idata)
    _draws(field)
    return field.mean(dim=("chain", "draw")).rename("field_mean")


def vrmse_of_mean(idata: az.InferenceData, truth: xr.DataArray | Float[ArrayLike, "T *space"]) -> float:
    """VRMSE (`sdift_prob.metrics.vrmse`) of the posterior mean against `truth (time, *space)`."""
    field = _field(idata)
    return float(vrmse(_truth_array(field, truth), _draws(field).mean(axis=0)))


# Three kinds of central interval, all from the same draws (chains and draws pooled):
# - "predictive": Student-t prediction interval m ± t_{S-1} s sqrt(1 + 1/S) (metrics.interval_bounds),
#   right for a calibrated, roughly Gaussian posterior at any draw count; `evaluate`'s coverage_50/90.
# - "quantile": equal-tailed empirical quantiles (np.quantile, as ArviZ's ETI) — what an analyst
#   computes; too narrow at few draws (8 draws of a calibrated posterior cover ~0.72 at 90%).
# - "hdi": ArviZ's highest-density interval (az.hdi), the narrowest interval holding the level's share
#   of the draws; as narrow as or narrower than the quantile interval, so it covers less at few draws.
COVERAGE_METHODS = (*INTERVAL_METHODS, "hdi")


def _check_method(method: Any) -> None:
    if method not in COVERAGE_METHODS:
        raise bad_input("method", f"one of {COVERAGE_METHODS}", method)


def _covered(u: np.ndarray, draws: np.ndarray, level: float, method: str) -> np.ndarray:
    """`(T, *space)`: 1.0 where the truth lies in the central interval (ends included), 0.0 where
    not, NaN where the truth is missing."""
    observed = ~np.isnan(u)
    if method == "hdi":
        # az.hdi loops over entries in Python: only the entries with a truth are computed.
        bounds = az.hdi(draws[:, observed][None], hdi_prob=level)  # (N, 2) for (chain, draw, N)
        lo, hi = np.full(u.shape, np.nan), np.full(u.shape, np.nan)
        lo[observed], hi[observed] = bounds[:, 0], bounds[:, 1]
    else:
        lo, hi = interval_bounds(draws, level, method)
    inside = ((u >= lo) & (u <= hi)).astype(np.float64)
    return np.where(observed, inside, np.nan)


def coverage(
    idata: az.InferenceData,
    truth: xr.DataArray | Float[ArrayLike, "T *space"],
    levels: Sequence[float] = (0.5, 0.9),
    *,
    method: str = "predictive",
) -> dict[float, float]:
    """Fraction of truth entries inside the central posterior intervals of each level, draws =
    all chains and draws. `method`: `"predictive"` (default) = draw-count-aware Student-t
    intervals (`sdift_prob.metrics.interval_bounds`), `"quantile"` = equal-tailed empirical
    quantiles (ArviZ's ETI), `"hdi"` = `az.hdi` (see `COVERAGE_METHODS`)."""
    _check_method(method)
    field = _field(idata)
    u, draws = _truth_array(field, truth), _draws(field)
    if method != "hdi":
        return dict(interval_coverage(u, draws, levels, method=method))
    return {level: float(np.nanmean(_covered(u, draws, level, method))) for level in _check_levels(levels)}


def coverage_by(
    idata: az.InferenceData,
    truth: xr.DataArray | Float[ArrayLike, "T *space"],
    dim: str,
    levels: Sequence[float] = (0.5, 0.9),
    *,
    method: str = "quantile",
) -> xr.DataArray:
    """Coverage of the true field per value of one dim (per depth level, latitude, time stamp...).

    **Arguments:** `idata` (posterior `field`), `truth (time, *space)` as in `evaluate`; `dim` one
    of the field's dims other than chain/draw; `levels` central interval levels in (0, 1);
    `method` one of `COVERAGE_METHODS` (default `"quantile"`, the equal-tailed intervals an
    analyst computes; see `coverage`).

    **Returns:** `coverage (level, dim)`: the fraction of non-missing truth entries at each value
    of `dim` inside the interval (NaN where there is none), with the coord `n_entries (dim)` (how
    many entries each fraction is over) and attrs `method`, `n_draws`. With n entries the
    fraction's sampling error is about `sqrt(l (1 - l) / n)` if the entries were independent;
    neighbouring points are correlated, so it is larger.
    """
    _check_method(method)
    field = _field(idata)
    dims = tuple(d for d in field.dims if d not in ("chain", "draw"))
    if not isinstance(dim, str) or dim not in dims:
        raise bad_input("dim", f"one of the field's dims {dims}", dim)
    lv = _check_levels(levels)
    u, draws = _truth_array(field, truth), _draws(field)
    axis = dims.index(dim)
    others = tuple(a for a in range(u.ndim) if a != axis)
    n = (~np.isnan(u)).sum(axis=others)
    rows = []
    for level in lv:
        inside = np.nansum(_covered(u, draws, level, method), axis=others)
        rows.append(np.where(n > 0, inside / np.maximum(n, 1), np.nan))
    coord = field.coords[dim]
    return xr.DataArray(
        np.stack(rows), dims=("level", dim),
        coords={"level": list(lv), dim: (dim, coord.values, coord.attrs), "n_entries": (dim, n)},
        name="coverage", attrs={"method": method, "n_draws": int(draws.shape[0])},
    )


def crps(idata: az.InferenceData, truth: xr.DataArray | Float[ArrayLike, "T *space"]) -> float:
    """Mean (fair) ensemble CRPS of the posterior field against `truth` (physical units)."""
    field = _field(idata)
    return float(crps_ensemble(_truth_array(field, truth), _draws(field), fair=True))


def pit(
    idata: az.InferenceData, truth: xr.DataArray | Float[ArrayLike, "T *space"], *, key: PRNGKeyArray | None = None
) -> xr.DataArray:
    """Randomised PIT of each truth entry among the posterior draws (`metrics.pit_values`).

    **Returns:** `(time, *space)` DataArray of values in [0, 1] with the field's coords (NaN
    where the truth is NaN).
    """
    field = _field(idata)
    values = pit_values(_truth_array(field, truth), _draws(field), key=key)
    template = field.isel(chain=0, draw=0, drop=True)
    return xr.DataArray(values, dims=template.dims, coords=template.coords, name="pit")


def evaluate(
    idata: az.InferenceData, truth: xr.DataArray | Float[ArrayLike, "T *space"]
) -> dict[str, float | int]:
    """Accuracy and calibration of the posterior field against `truth (time, *space)`.

    All draws (chains and draws pooled) count; NaN entries of `truth` (missing: land, gaps) are
    left out of every score. Physical units.

    **Returns:** a dict of floats (`n_draws` an int):

    - `vrmse`, `rmse`: of the posterior mean.
    - `coverage_50`, `coverage_90`: fraction of truth entries inside the central 50% / 90%
      **Student-t predictive** intervals `m ± t_{S-1} s sqrt(1 + 1/S)` (`metrics.interval_bounds`,
      method "predictive"): nominal for a calibrated, roughly Gaussian posterior at any draw count.
    - `coverage_50_quantile`, `coverage_90_quantile`: the same with **equal-tailed quantile**
      intervals of the draws (`np.quantile`, ArviZ's ETI) — what an analyst computes; below nominal
      at few draws even for a calibrated posterior (about 0.72 at 90% with 8 draws).
    - `coverage_50_hdi`, `coverage_90_hdi`: with ArviZ's **HDI** (`az.hdi`): at most as wide as
      the quantile interval, so at most its coverage for symmetric posteriors. It is the slowest
      figure here (az.hdi loops over entries in Python: ~2.5 s per level for 32 draws of a
      20 × 24 × 24 × 16 field).
    - `n_draws`: number of draws behind every figure (chains × draws).
    - `crps`: mean ensemble CRPS per entry (fair estimator).
    - `energy_score`: fair energy score of whole frames (all points of a time stamp), mean over
      time stamps (`metrics.energy_score`).
    - `variogram_score`: variogram score, p = 0.5, on at most `metrics.VARIOGRAM_MAX_POINTS`
      points per frame drawn with seed 0 (the same points in every frame and for every posterior
      on the grid), mean over time stamps (`metrics.variogram_score`).

    The two multivariate scores see a wrong spatial correlation of the draws, which coverage and
    CRPS (one entry at a time) cannot; their values depend on the grid size, so compare them only
    between posteriors on the same grid.
    """
    field = _field(idata)
    u = _truth_array(field, truth)
    draws = _draws(field)
    mean = draws.mean(axis=0)
    predictive = interval_coverage(u, draws, (0.5, 0.9), method="predictive")
    quantile = interval_coverage(u, draws, (0.5, 0.9), method="quantile")
    hdi = {level: float(np.nanmean(_covered(u, draws, level, "hdi"))) for level in (0.5, 0.9)}
    return {
        "vrmse": float(vrmse(u, mean)),
        "rmse": float(rmse(u, mean)),
        "coverage_50": float(predictive[0.5]),
        "coverage_90": float(predictive[0.9]),
        "coverage_50_quantile": float(quantile[0.5]),
        "coverage_90_quantile": float(quantile[0.9]),
        "coverage_50_hdi": hdi[0.5],
        "coverage_90_hdi": hdi[0.9],
        "n_draws": int(draws.shape[0]),
        "crps": float(crps_ensemble(u, draws, fair=True)),
        "energy_score": float(energy_score(u, draws)),
        "variogram_score": float(variogram_score(u, draws, p=0.5)),
    }


# -- uncertainty products -------------------------------------------------------------------------
def _threshold(threshold: Any, var: xr.DataArray) -> float | xr.DataArray:
    if isinstance(threshold, xr.DataArray):
        inner = tuple(d for d in var.dims if d not in ("chain", "draw"))
        if not set(threshold.dims) <= set(inner):
            raise bad_input("threshold", f"a DataArray over some of the dims {inner}", tuple(threshold.dims))
        values = _numeric(threshold.values, "threshold")
        if not np.isfinite(values).all():
            raise bad_input("threshold", "finite values", "NaN or infinite entries")
        try:
            # join="exact": a threshold on another grid is an error, not a silent intersection.
            xr.align(var, threshold, join="exact")
        except ValueError as exc:
            raise bad_input("threshold", f"coords equal to those of {var.name!r} on its dims", str(exc)) from exc
        return threshold
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)) \
            or not np.isfinite(threshold):
        raise bad_input("threshold", "a finite number (physical units) or a DataArray of them", threshold)
    return float(threshold)


def p_exceed(
    idata: az.InferenceData, threshold: float | xr.DataArray, *, var_name: str = "field"
) -> xr.DataArray:
    """Posterior probability that a variable exceeds a threshold, per entry: the fraction of the
    draws (chains and draws pooled) strictly above `threshold`.

    **Arguments:**

    - `idata`: a posterior from `to_inference_data` / `reconstruct`.
    - `threshold`: a number in the variable's physical units (e.g. a sound speed c₀ in m/s), or a
      DataArray over some of its dims (e.g. one threshold per depth) on the same coords.
    - `var_name`: the posterior variable (default `"field"`; `"sigma"` works too).

    **Returns:** `p_exceed` DataArray over the variable's dims less chain/draw (for the field
    `(time, *space)`, with its coords), values in {0, 1/S, ..., 1} for S draws; attrs
    `n_draws`, `threshold` (when a number), `var_name`, `threshold_units`. It is a Monte Carlo estimate:
    its standard error is about `sqrt(p (1 - p) / S)` (0.09 at p = 0.5 with 32 draws), and it
    is only as calibrated as the posterior is.
    """
    _check_idata(idata)
    names = list(idata.posterior.data_vars)
    if not isinstance(var_name, str) or var_name not in idata.posterior:
        raise bad_input("var_name", f"a posterior variable, one of {names}", var_name)
    var = idata.posterior[var_name]
    if var.dims[:2] != ("chain", "draw"):
        raise bad_input("var_name", "a variable with dims (chain, draw, ...)", tuple(var.dims))
    if not np.isfinite(var.values).all():
        raise bad_input("idata", f"finite draws of {var_name!r}", "NaN or infinite entries "
                        "(drop those draws with idata.sel / isel first)")
    thr = _threshold(threshold, var)
    n_draws = int(var.sizes["chain"] * var.sizes["draw"])
    out = (var > thr).mean(dim=("chain", "draw")).rename("p_exceed")
    out.attrs = {"n_draws": n_draws, "var_name": var_name, "long_name": f"P({var_name} > threshold)"}
    if not isinstance(thr, xr.DataArray):
        out.attrs["threshold"] = thr
    if "units" in var.attrs:
        # Not `units`: the probability has none, and plots label values with `units`.
        out.attrs["threshold_units"] = var.attrs["units"]
    return out


# -- PSIS-LOO and LOO-PIT with independent draws -------------------------------------------------
# The guided sampler's draws are independent runs (no Markov chain): their relative efficiency is
# 1. ArviZ otherwise estimates it from the effective sample size of every posterior variable (the
# whole field included) whenever there is more than one chain, which takes tens of seconds and
# adds nothing here.
def _log_likelihood(idata: Any, var_name: str) -> xr.DataArray:
    _check_idata(idata)
    if not isinstance(var_name, str):
        raise bad_input("var_name", "the name of an observed variable (str)", var_name)
    for group in ("log_likelihood", "observed_data", "posterior_predictive"):
        if group not in idata.groups() or var_name not in idata[group]:
            raise bad_input("idata", f"a posterior with observations: group {group!r} holding {var_name!r} "
                            "(reconstructions from zero observations have none)", list(idata.groups()))
    ll = idata.log_likelihood[var_name]
    if not np.isfinite(ll.values).all():
        raise bad_input("idata", f"finite log_likelihood.{var_name}", "NaN or infinite entries")
    return ll


class UnreliableLOOWarning(UserWarning):
    """PSIS-LOO's Pareto k diagnostic exceeds its threshold at too many observations: the elpd
    estimate and any ranking built on it are unreliable (use `inference.checks.kfold_elpd`)."""


# Default gate of `loo`: k above 0.7 at more than 5% of the observations. 0.7 is the threshold of the
# PSIS paper (Vehtari et al.) for any draw count; ArviZ's own min(1 - 1/log10(S), 0.7) is stricter at
# few draws. The 5% is a judgment call: a handful of high-k points biases the elpd little.
LOO_K_THRESHOLD = 0.7
LOO_MAX_BAD_FRACTION = 0.05


def loo(idata: az.InferenceData, *, var_name: str = "y", pointwise: bool = True,
        scale: str | None = None, k_threshold: float = LOO_K_THRESHOLD,
        max_bad_fraction: float = LOO_MAX_BAD_FRACTION, on_unreliable: str = "warn") -> Any:
    """PSIS-LOO of the observations (`az.loo` with `reff=1`: the draws are independent), behind a
    Pareto-k gate.

    At the draw counts of a guided diffusion sampler (8-32 draws) and with each draw following the
    data closely, the importance ratios of PSIS are heavy-tailed: on the ocean test trajectory
    (16 draws) every one of 1,840 observations had k > 1. The estimate is then not an elpd at all,
    and `az.compare` on such estimates can rank models wrongly. The gate counts the observations
    with `pareto_k > k_threshold`; when they are more than `max_bad_fraction` of all, it warns
    (`UnreliableLOOWarning`) or raises (`NumericalError`), naming the count and recommending K-fold
    cross-validation (`inference.checks.kfold_elpd`, K refits over observation subsets; or
    `inference.checks.elpd`, which falls back to it).

    **Arguments:** `idata` from `to_inference_data` / `reconstruct` (with observations);
    `var_name` the observed variable; `pointwise` keep `loo_i` and `pareto_k` per observation
    (forced on while the gate is on); `scale` as `az.loo` (default "log"); `k_threshold` (default 0.7),
    `max_bad_fraction` in [0, 1] (default 0.05); `on_unreliable` "warn" (default), "raise" or "ignore".

    **Returns:** ArviZ's `ELPDData` (`elpd_loo`, `se`, `p_loo`, `pareto_k`, ...), with
    `n_bad_k` and `loo_reliable` added; a dict of them goes into `az.compare` as it is.
    """
    import warnings

    _log_likelihood(idata, var_name)
    if on_unreliable not in ("warn", "raise", "ignore"):
        raise bad_input("on_unreliable", "'warn', 'raise' or 'ignore'", on_unreliable)
    for name, value, hi in (("k_threshold", k_threshold, np.inf), ("max_bad_fraction", max_bad_fraction, 1.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 <= value <= hi:
            raise bad_input(name, f"a number in [0, {hi}]", value)
    gate = on_unreliable != "ignore"
    with warnings.catch_warnings():
        if gate:  # our message replaces ArviZ's generic one
            warnings.filterwarnings("ignore", message=".*shape parameter of Pareto.*", category=UserWarning)
        result = az.loo(idata, pointwise=pointwise or gate, var_name=var_name, reff=1.0, scale=scale)
    if "pareto_k" in result:
        k = np.asarray(result["pareto_k"])
        n_bad = int((k > k_threshold).sum())
        result["n_bad_k"] = n_bad
        result["loo_reliable"] = bool(n_bad <= max_bad_fraction * k.size)
        if gate and not result["loo_reliable"]:
            message = (f"PSIS-LOO is unreliable here: Pareto k > {k_threshold:g} at {n_bad} of {k.size} observations "
                       f"({n_bad / k.size:.0%}, gate {max_bad_fraction:.0%}) with {int(result['n_samples'])} draws; "
                       "its elpd (and an az.compare ranking built on it) should not be used. Use K-fold "
                       "cross-validation instead: inference.checks.kfold_elpd (K refits over observation subsets), "
                       "or inference.checks.elpd, which falls back to it.")
            if on_unreliable == "raise":
                raise NumericalError(message)
            warnings.warn(message, UnreliableLOOWarning, stacklevel=2)
    return result


def psis_log_weights(idata: az.InferenceData, *, var_name: str = "y") -> tuple[xr.DataArray, xr.DataArray]:
    """Pareto-smoothed leave-one-out importance log weights of the draws (`az.psislw`, `reff=1`).

    **Returns:** `(log_weights, pareto_k)`: `log_weights (obs_id, __sample__)` normalised per
    observation, the draws stacked as `(chain, draw)` like ArviZ's `__sample__` dim (pass it as
    `log_weights=` to `az.loo_pit` / `az.plot_loo_pit`); `pareto_k (obs_id)` (> 0.7: unreliable).
    """
    ll = _log_likelihood(idata, var_name).stack(__sample__=("chain", "draw"))
    log_weights, pareto_k = az.psislw(-ll, reff=1.0)
    return log_weights.transpose(..., "__sample__"), pareto_k


def loo_pit(idata: az.InferenceData, *, var_name: str = "y") -> xr.DataArray:
    """LOO-PIT of each observation: `az.loo_pit` with the PSIS weights of `psis_log_weights`.

    **Returns:** `(obs_id)` values in [0, 1] (uniform when the predictions are calibrated).
    """
    log_weights, _ = psis_log_weights(idata, var_name=var_name)
    return az.loo_pit(idata, y=var_name, log_weights=log_weights)


# -- tempering a whole posterior -----------------------------------------------------------------
def temper_posterior(
    idata: az.InferenceData,
    tau: float,
    *,
    field_at_obs: Float[ArrayLike, "chain draw N"] | None = None,
    log_lik_fn: Any = None,
) -> az.InferenceData:
    """Apply a posterior temperature τ (e.g. from `inference.calibrate.calibrate_kfold`) to every
    group of `idata` that depends on the draws, and say in the attrs what was done.

    - `posterior.field` and `posterior.cores`: `apply_temperature(., tau)` over (chain, draw)
      pooled: the mean is kept and the spread about it scaled by `sqrt(tau)`. The field is linear in
      the cores, so the tempered cores decode to the tempered field.
    - `posterior.sigma` (the noise level) is left as it is: τ tempers the field's share only.
    - `posterior_predictive.y`: with `field_at_obs` (the field of each draw at the observation
      points, `(chain, draw, N)` physical units), each replicate keeps its own noise realisation:
      `y_rep' = y_rep - f + f'` with `f'` the tempered `field_at_obs`. Without it the group is
      **removed** (its draws would be those of the untempered posterior).
    - `log_likelihood.y`: recomputed as `log_lik_fn(f')` -> `(chain, draw, N)` when both
      `field_at_obs` and `log_lik_fn` are given; otherwise **removed**.
    - `observed_data`, `sample_stats`: unchanged.

    Every group's attrs get `tempering` (JSON, decoded by `posterior_attrs`): `{"tau": ..,
    "tempered": [group.var, ..], "removed": [group, ..], "unchanged": [..]}`.

    **Returns:** a new InferenceData (the input is not changed). A posterior that was tempered
    already is refused (temper the original with the product of the two τ).
    """
    _check_idata(idata)
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.number)) or not (0 < tau < np.inf):
        raise bad_input("tau", "a finite temperature > 0", tau)
    if "tempering" in idata.posterior.attrs:
        raise bad_input("idata", "an untempered posterior (temper the original with the product of the two tau)",
                        idata.posterior.attrs["tempering"])
    if log_lik_fn is not None and not callable(log_lik_fn):
        raise bad_input("log_lik_fn", "a callable f (chain, draw, N) -> log-likelihood (chain, draw, N), or None",
                        log_lik_fn)
    out = idata.copy()
    tempered, removed = [], []
    for name in ("field", "cores"):
        if name in out.posterior:
            var = out.posterior[name]
            out.posterior[name] = var.copy(data=np.asarray(
                apply_temperature(np.asarray(var.values, dtype=np.float64), float(tau), axis=(0, 1)),
                dtype=var.dtype))
            tempered.append(f"posterior.{name}")
    groups = out.groups()
    if "posterior_predictive" in groups:
        y = out.posterior_predictive["y"]
        if field_at_obs is None:
            removed.append("posterior_predictive")
        else:
            f = _numeric(field_at_obs, "field_at_obs").astype(np.float64)
            if f.shape != y.shape:
                raise bad_input("field_at_obs", f"shape (chain, draw, N) = {y.shape} like posterior_predictive.y",
                                f"shape {f.shape}")
            if not np.isfinite(f).all():
                raise bad_input("field_at_obs", "finite values", "NaN or infinite entries")
            f_t = np.asarray(apply_temperature(f, float(tau), axis=(0, 1)))
            out.posterior_predictive["y"] = y.copy(data=(np.asarray(y.values, dtype=np.float64) - f + f_t)
                                                   .astype(y.dtype))
            tempered.append("posterior_predictive.y")
            if "log_likelihood" in groups:
                if log_lik_fn is None:
                    removed.append("log_likelihood")
                else:
                    ll = _numeric(log_lik_fn(f_t), "log_lik_fn(field)").astype(np.float64)
                    old = out.log_likelihood["y"]
                    if ll.shape != old.shape or not np.isfinite(ll).all():
                        raise bad_input("log_lik_fn", f"finite values of shape {old.shape}", f"shape {ll.shape}")
                    out.log_likelihood["y"] = old.copy(data=ll.astype(old.dtype))
                    tempered.append("log_likelihood.y")
    if "log_likelihood" in groups and "log_likelihood" not in removed and "log_likelihood.y" not in tempered:
        removed.append("log_likelihood")
    for group in removed:
        del out[group]
    unchanged = [g for g in out.groups() if g not in {t.split(".")[0] for t in tempered}]
    if "sigma" in out.posterior:
        unchanged.append("posterior.sigma")
    info = json.dumps({"tau": float(tau), "tempered": tempered, "removed": removed, "unchanged": unchanged},
                      sort_keys=True)
    for group in out.groups():
        attrs = out[group].attrs
        attrs["tempering"] = info
        encoded = set(json.loads(attrs.get("json_attrs", "[]")))
        attrs["json_attrs"] = json.dumps(sorted(encoded | {"tempering"}))
    return out
