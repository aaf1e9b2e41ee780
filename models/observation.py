"""NumPyro observation model: sparse noisy point values of a field decoded from FTM cores.

`y[m, p] ~ Likelihood(design[m, p] @ vec(cores[m]), sigma)` for every valid (unmasked) point,
in **normalised field units** (see `normalise_padded`). The guided samplers get the likelihood
gradient from this model's log density (`likelihood_grad`), so every likelihood here works for
guidance without new code.

Likelihoods are the objects of `models.likelihoods` (all parametrised so that `sigma` is the
standard deviation of the noise); every function here also takes the old names with their
parameters (`df`, `poisson_offset`, `poisson_scale`) and converts them once with `as_likelihood`:

- `Gaussian()` / `"gaussian"`: `N(u, σ²)`.
- `Laplace()` / `"laplace"`: `Laplace(u, b)` with `b = σ/√2`.
- `StudentT(df)` / `"student_t"`: `StudentT(df, u, σ)` (here `σ` is the scale; the std is `σ √(df/(df-2))`).
- `likelihoods.PoissonExcess(o, s)` / `"poisson"` (shot noise on the excess over an offset `o`, as
  the observation sampler draws it): `k = (y - o)/s ~ Poisson(λ)` with `λ = max((u - o)/s, 1e-6)`.
  `sigma` is not used: the noise level is set by `s` (`Var y = s (u - o)`). See the distribution
  `PoissonExcess` here for the relaxation to real `y`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import gammaln, xlogy
from jaxtyping import Array, ArrayLike, Float
from numpyro.distributions import constraints
from numpyro.distributions.util import promote_shapes
from numpyro.infer.util import log_density

from sdift_prob.errors import bad_input

from .likelihoods import LIKELIHOODS, POISSON_RATE_FLOOR, Likelihood, as_likelihood

__all__ = [
    "LIKELIHOODS",
    "POISSON_RATE_FLOOR",
    "PoissonExcess",
    "observation_model",
    "resolve_likelihood",
    "check_observation_inputs",
    "log_likelihood_fn",
    "likelihood_grad",
    "fisher_diag_scale",
    "normalise_padded",
]



class PoissonExcess(dist.Distribution):
    """Shot noise on the excess over an offset: `y = o + s k`, `k ~ Poisson(λ)`, `λ = max((u-o)/s, 1e-6)`.

    A density over real `y`: `log p(y) = k log λ - λ - lgamma(k + 1) - log s` with `k = (y-o)/s`.
    At lattice points `y = o + s k` it is the Poisson pmf of `k` divided by the lattice spacing
    `s` (a density in `y` units, comparable with the continuous likelihoods); between lattice
    points it is the continuous relaxation through `lgamma` (not normalised over the reals).
    `E[y] = u` and `Var[y] = s (u - o)` when `u > o`.

    **Arguments:**

    - `loc`: `u`, the noise-free value (any shape); `offset`: `o`; `scale`: `s > 0`. Broadcast.
    """

    arg_constraints = {"loc": constraints.real, "offset": constraints.real, "scale": constraints.positive}
    support = constraints.real
    pytree_data_fields = ("loc", "offset", "scale")

    def __init__(self, loc: ArrayLike, offset: ArrayLike, scale: ArrayLike, *, validate_args: bool | None = None):
        batch_shape = jax.lax.broadcast_shapes(jnp.shape(loc), jnp.shape(offset), jnp.shape(scale))
        self.loc, self.offset, self.scale = promote_shapes(loc, offset, scale)
        super().__init__(batch_shape=batch_shape, validate_args=validate_args)

    @property
    def rate(self) -> Array:
        """Poisson rate `λ = max((u - o)/s, 1e-6)`."""
        return jnp.maximum((self.loc - self.offset) / self.scale, POISSON_RATE_FLOOR)

    @property
    def mean(self) -> Array:
        return jnp.broadcast_to(self.offset + self.scale * self.rate, self.batch_shape)

    def sample(self, key: Array, sample_shape: tuple[int, ...] = ()) -> Array:
        shape = tuple(sample_shape) + self.batch_shape
        rate = jnp.broadcast_to(self.rate, shape)
        k = jax.random.poisson(key, rate, shape=shape).astype(jnp.result_type(self.rate))
        return self.offset + self.scale * k

    def log_prob(self, value: ArrayLike) -> Array:
        k = (value - self.offset) / self.scale
        lam = self.rate
        return xlogy(k, lam) - lam - gammaln(k + 1.0) - jnp.log(self.scale)

    @property
    def variance(self) -> Array:
        return jnp.broadcast_to(self.scale * self.scale * self.rate, self.batch_shape)


def _is_traced(*xs: Any) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for x in xs for leaf in jax.tree_util.tree_leaves(x))


def _shape(x: Any) -> tuple[int, ...] | None:
    return tuple(x.shape) if hasattr(x, "shape") else None


def _padded_fields(padded: Any) -> tuple[Any, Any, Any]:
    for name in ("values", "mask", "noise_scale"):
        if not hasattr(padded, name):
            raise bad_input("padded", "a PaddedObservations (fields values, mask, noise_scale)", type(padded).__name__)
    return padded.values, padded.mask, padded.noise_scale


def _scalar_ok(value: Any, positive: bool = True) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        return False
    return math.isfinite(value) and (value > 0 if positive else True)


def resolve_likelihood(
    likelihood: Likelihood | str,
    df: float | None = None,
    poisson_offset: float | None = None,
    poisson_scale: float | None = None,
) -> Likelihood:
    """The `Likelihood` object of the arguments of the functions here (old name + parameters, or
    an object); `poisson_offset`/`poisson_scale` with a likelihood that is not Poisson are an error."""
    lik = as_likelihood(likelihood, df=df, poisson_offset=poisson_offset, poisson_scale=poisson_scale)
    if (poisson_offset is not None or poisson_scale is not None) and "poisson_offset" not in lik.params():
        raise bad_input(
            "poisson_offset/poisson_scale", "None unless likelihood='poisson'", (poisson_offset, poisson_scale)
        )
    return lik


def _check_sigma_argument(lik: Likelihood, sigma: Any, M: int, P: int) -> None:
    """`sigma` of `observation_model` by kind and shape: None where the likelihood has no σ, else
    None, "metadata", or a number / array broadcastable to `(M, P)` (values are checked later)."""
    if not lik.has_sigma and sigma is not None:
        raise bad_input("sigma", f"None for likelihood={lik.name!r} (it has no noise scale sigma)", sigma)
    if isinstance(sigma, str) and sigma != "metadata":
        raise bad_input(
            "sigma", "None, a positive number, a positive array broadcastable to (M, P), or 'metadata'", sigma
        )
    if sigma is not None and not isinstance(sigma, str):
        sshape = jnp.shape(sigma)
        try:
            if jnp.broadcast_shapes(sshape, (M, P)) != (M, P):
                raise ValueError
        except ValueError:
            expected = f"a scalar or an array broadcastable to (M={M}, P={P})"
            raise bad_input("sigma", expected, f"shape {sshape}") from None


def check_observation_inputs(
    cores: Float[ArrayLike, "M *R"],
    design: Float[ArrayLike, "M P D"],
    padded: Any,
    *,
    likelihood: Likelihood | str = "gaussian",
    sigma: float | ArrayLike | str | None = None,
    sigma_prior_scale: float = 1.0,
    df: float | None = None,
    poisson_offset: float | None = None,
    poisson_scale: float | None = None,
) -> None:
    """Validate the inputs of `observation_model` (shapes always; values when they are concrete).

    Call it once before a traced loop that uses `likelihood_grad` / `log_likelihood_fn` (which do
    not validate). Arguments as for `observation_model`.

    **Raises:** `InputError` naming the bad argument: wrong shapes, NaN/infinite values at valid
    points, a non-positive sigma (fixed, per point, or from metadata), a Poisson observation below
    the offset, unknown likelihood names, bad `df`.
    """
    lik = resolve_likelihood(likelihood, df, poisson_offset, poisson_scale)
    cshape, dshape = _shape(cores), _shape(design)
    if cshape is None or len(cshape) < 2:
        raise bad_input("cores", "an array of shape (M, R1, ..., RK)", cshape if cshape is not None else cores)
    M = cshape[0]
    D = int(np.prod(cshape[1:]))
    if dshape is None or len(dshape) != 3 or dshape[0] != M or dshape[2] != D:
        raise bad_input("design", f"an array of shape (M={M}, P, D={D})", dshape)
    P = dshape[1]
    values, mask, noise_scale = _padded_fields(padded)
    for name, arr in (("padded.values", values), ("padded.mask", mask), ("padded.noise_scale", noise_scale)):
        if _shape(arr) != (M, P):
            raise bad_input(name, f"shape (M={M}, P={P}) matching design", _shape(arr))
    mask_dtype = mask.dtype if hasattr(mask, "dtype") else np.asarray(mask).dtype
    if mask_dtype != np.bool_:
        raise bad_input("padded.mask", "a boolean array", getattr(mask, "dtype", mask))
    if not _scalar_ok(sigma_prior_scale):
        raise bad_input("sigma_prior_scale", "a positive finite number", sigma_prior_scale)
    _check_sigma_argument(lik, sigma, M, P)

    if _is_traced(padded):
        return
    m = np.asarray(mask, dtype=bool)
    v = np.asarray(values, dtype=np.float64)
    bad = m & ~np.isfinite(v)
    if bad.any():
        i, j = (int(a[0]) for a in np.nonzero(bad))
        raise bad_input(
            "padded.values", "finite values at every valid (mask True) point", f"values[{i}, {j}] = {v[i, j]}"
        )
    if not _is_traced(design):
        d = np.asarray(design, dtype=np.float64)
        rows_bad = m & ~np.isfinite(d).all(axis=-1)
        if rows_bad.any():
            i, j = (int(a[0]) for a in np.nonzero(rows_bad))
            raise bad_input("design", "finite rows at every valid point", f"non-finite design[{i}, {j}]")
    if not _is_traced(cores) and not np.isfinite(np.asarray(cores, dtype=np.float64)).all():
        raise bad_input("cores", "finite values", "NaN or infinite entries")
    if isinstance(sigma, str):  # "metadata"
        ns = np.asarray(noise_scale, dtype=np.float64)
        bad = m & ~(np.isfinite(ns) & (ns > 0))
        if bad.any():
            i, j = (int(a[0]) for a in np.nonzero(bad))
            raise bad_input(
                "sigma",
                "'metadata' only when every valid point has a known positive noise_scale",
                f"padded.noise_scale[{i}, {j}] = {ns[i, j]}",
            )
    elif sigma is not None and not _is_traced(sigma):
        s = np.broadcast_to(np.asarray(sigma, dtype=np.float64), m.shape)
        bad = m & ~(np.isfinite(s) & (s > 0))
        if bad.any():
            i, j = (int(a[0]) for a in np.nonzero(bad))
            raise bad_input("sigma", "positive finite noise levels", f"sigma at [{i}, {j}] = {s[i, j]}")
    lik.check_values(v, m)


def observation_model(
    cores: Float[ArrayLike, "M *R"],
    design: Float[ArrayLike, "M P D"],
    padded: Any,
    *,
    likelihood: Likelihood | str = "gaussian",
    sigma: float | ArrayLike | str | None = None,
    sigma_prior_scale: float = 1.0,
    df: float | None = None,
    poisson_offset: float | None = None,
    poisson_scale: float | None = None,
    validate: bool = True,
) -> None:
    """NumPyro model of the observations given the cores of one trajectory.

    Predicted mean `u[m, p] = design[m, p] @ cores[m].reshape(-1)` (row-major `vec`). Sites:
    `"sigma"` (only when `sigma is None`: `HalfNormal(sigma_prior_scale)`, a scalar) and `"y"`
    (shape `(M, P)`, plates `"time"` and `"point"`, observed at `padded.values`; the padding is
    masked out with `numpyro.handlers.mask`, so it contributes nothing to the log density).

    **Arguments:**

    - `cores`: shape `(M, R1, ..., RK)`, normalised core units of the FTM.
    - `design`: shape `(M, P, D)`, `D = R1 ⋯ RK`: design rows `A` of each padded point.
    - `padded`: `PaddedObservations` (`values`, `mask`, `noise_scale` of shape `(M, P)`), in
      normalised field units (`normalise_padded`).
    - `likelihood`: a `models.likelihoods.Likelihood`, or its name `"gaussian" | "laplace" |
      "student_t" | "poisson"` with the parameters below.
    - `sigma`: noise std (normalised units): `None` (inferred, site `"sigma"`), a positive number,
      a positive array broadcastable to `(M, P)`, or `"metadata"` (per point, from
      `padded.noise_scale`). Must be `None` for a likelihood without σ (Poisson).
    - `sigma_prior_scale`: scale of the `HalfNormal` prior on sigma.
    - `df`: degrees of freedom of `"student_t"` (None: 4); only with a name.
    - `poisson_offset`, `poisson_scale`: `o` and `s` of `"poisson"` (normalised units); only with a name.
    - `validate`: run `check_observation_inputs` (value checks only run on concrete input).
    """
    lik = resolve_likelihood(likelihood, df, poisson_offset, poisson_scale)
    if validate:
        check_observation_inputs(cores, design, padded, likelihood=lik, sigma=sigma,
                                 sigma_prior_scale=sigma_prior_scale)
    cores = jnp.asarray(cores)
    M = cores.shape[0]
    design = jnp.asarray(design)
    P = design.shape[1]
    mask = jnp.asarray(padded.mask, dtype=bool)
    pred = jnp.einsum("mpd,md->mp", design, cores.reshape(M, -1))
    # Padded entries get harmless stand-in values: the mask zeroes their log density, but NaN or
    # out-of-support values there would still poison gradients through jnp.where.
    y = jnp.where(mask, jnp.asarray(padded.values, dtype=pred.dtype), lik.pad_value())

    if not lik.has_sigma:
        noise = None
    elif sigma is None:
        noise = numpyro.sample("sigma", dist.HalfNormal(sigma_prior_scale))
    elif isinstance(sigma, str):  # "metadata"
        noise = jnp.where(mask, jnp.asarray(padded.noise_scale, dtype=pred.dtype), 1.0)
    else:
        noise = jnp.where(mask, jnp.broadcast_to(jnp.asarray(sigma, dtype=pred.dtype), (M, P)), 1.0)

    obs_dist = lik.distribution(pred, noise)

    with numpyro.plate("time", M, dim=-2), numpyro.plate("point", P, dim=-1), numpyro.handlers.mask(mask=mask):
        numpyro.sample("y", obs_dist, obs=y)


def log_likelihood_fn(
    cores: Float[Array, "M *R"],
    design: Float[Array, "M P D"],
    padded: Any,
    *,
    likelihood: Likelihood | str = "gaussian",
    sigma: float | ArrayLike | str,
    df: float | None = None,
    poisson_offset: float | None = None,
    poisson_scale: float | None = None,
) -> Float[Array, ""]:
    """Total log-likelihood of the valid observations at the given cores (NumPyro `log_density`).

    Pure and traceable (jit/vmap/grad): it does not validate values; call
    `check_observation_inputs` once beforehand. `likelihood` must be static under `jit`.

    **Arguments:** as `observation_model`, except that `sigma` is required (the fixed noise level
    substituted for the `"sigma"` site), and is ignored for a likelihood without σ (pass `None`).

    **Returns:** scalar log p(y | cores).
    """
    lik = as_likelihood(likelihood, df=df, poisson_offset=poisson_offset, poisson_scale=poisson_scale)
    if lik.has_sigma and sigma is None:
        raise bad_input("sigma", "a fixed noise level (number, array or 'metadata') to substitute", sigma)
    kwargs = dict(likelihood=lik, sigma=sigma if lik.has_sigma else None, validate=False)
    logp, _ = log_density(observation_model, (cores, design, padded), kwargs, {})
    return logp


def likelihood_grad(
    cores: Float[Array, "M *R"],
    design: Float[Array, "M P D"],
    padded: Any,
    *,
    likelihood: Likelihood | str = "gaussian",
    sigma: float | ArrayLike | str,
    df: float | None = None,
    poisson_offset: float | None = None,
    poisson_scale: float | None = None,
) -> Float[Array, "M *R"]:
    """Gradient of `log_likelihood_fn` with respect to the cores (the guidance term).

    For the Gaussian likelihood this is `Aᵀ (y - A w) / σ²` per time stamp, padding excluded.
    Pure and traceable (jit/vmap); no value validation (see `check_observation_inputs`).

    **Returns:** array with the shape of `cores`.
    """
    return jax.grad(log_likelihood_fn)(
        jnp.asarray(cores), design, padded, likelihood=likelihood, sigma=sigma, df=df,
        poisson_offset=poisson_offset, poisson_scale=poisson_scale,
    )


def fisher_diag_scale(
    likelihood: Likelihood | str,
    sigma: float | ArrayLike | None = None,
    df: float | None = None,
    *,
    mean: ArrayLike | None = None,
    poisson_offset: float | None = None,
    poisson_scale: float | None = None,
) -> Array:
    """Fisher information of one observation about its mean `u` (for preconditioning guidance).

    Validates its arguments and calls `Likelihood.fisher`. Exact values (per point; `sigma` is
    the parameter of `observation_model`):

    - `"gaussian"`: `1/σ²`;
    - `"laplace"`: `1/b² = 2/σ²` (`b = σ/√2`);
    - `"student_t"`: `(df + 1) / ((df + 3) σ²)`;
    - `"poisson"`: `1/(s² λ) = 1/(s (u - o))` in `y` units (`λ` floored as in `PoissonExcess`);
      needs `mean` (`u`), `poisson_offset`, `poisson_scale`. Equals `1/Var[y]`.

    **Returns:** the Fisher information, broadcast over `sigma` (or `mean` for Poisson).
    """
    lik = resolve_likelihood(likelihood, df, poisson_offset, poisson_scale)
    if not lik.has_sigma:
        return lik.fisher(mean=mean)
    if sigma is None or isinstance(sigma, str):
        raise bad_input("sigma", "a positive noise level (number or array)", sigma)
    s = jnp.asarray(sigma)
    if not _is_traced(s) and not bool(jnp.all(jnp.isfinite(s) & (s > 0))):
        raise bad_input("sigma", "positive finite noise levels", sigma)
    return lik.fisher(sigma)


def normalise_padded(padded: Any, mean: float, std: float) -> Any:
    """Put padded observations into normalised field units: `(values - mean)/std`, `noise_scale/std`.

    Padding entries keep their stand-in values. For the Poisson likelihood, map the offset the
    same way (`(o - mean)/std`) and divide the scale by `std`.

    **Arguments:**

    - `padded`: `PaddedObservations` in physical units.
    - `mean`, `std`: the field normaliser (`Normalizer.mean`, `Normalizer.std`).

    **Returns:** a `PaddedObservations` of the same shapes.
    """
    _padded_fields(padded)
    if not _scalar_ok(mean, positive=False):
        raise bad_input("mean", "a finite number", mean)
    if not _scalar_ok(std):
        raise bad_input("std", "a positive finite number", std)
    mask = np.asarray(padded.mask, dtype=bool)
    values = np.where(mask, (np.asarray(padded.values, dtype=np.float64) - mean) / std, np.asarray(padded.values))
    noise = np.where(mask, np.asarray(padded.noise_scale, dtype=np.float64) / std, np.asarray(padded.noise_scale))
    return padded._replace(values=values, noise_scale=noise)
