"""Pointwise log-likelihood and posterior predictive of core draws, from the NumPyro observation
model (`models.observation`): normalised field units on the padded (M, P) layout inside, `obs_id`
order and physical units outside.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.handlers import uncondition
from numpyro.infer import Predictive, log_likelihood

from models.likelihoods import Likelihood
from models.observation import check_observation_inputs, observation_model, resolve_likelihood
from sdift_prob.data.fields import Normalizer
from sdift_prob.data.observations import PaddedObservations
from sdift_prob.errors import bad_input
from sdift_prob.validation import check_key

from .idata import _check_draws, _numeric, _LIKELIHOOD_OPTIONS, _MODEL_OPTIONS


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
