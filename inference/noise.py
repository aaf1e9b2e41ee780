"""Inference of the observation noise level σ when it is not known, inside the sampler.

`reconstruct(sigma="infer")` with Gaussian noise does not use these routes: it draws σ before
sampling from the Gaussian model's marginal likelihood (`inference.sigma_marginal`), which the
guided estimate cannot pull (the in-sampler routes below came out 1.15x the truth on the
exactness bench, their intervals missing it). They remain for the other likelihoods and for
`GuidedConfig(infer_sigma=True)`.

Three routes, the first and last with the FTM cores held fixed at a current estimate or a posterior draw:

- **Inside the guided sampler** (`update_sigma`): a Gibbs-style update after a burn-in fraction
  of the steps. For the Gaussian likelihood σ² is drawn from its conjugate inverse-gamma
  conditional; for every other likelihood a few random-walk Metropolis steps on log σ target the
  NumPyro observation model's own log density (its σ prior plus the likelihood), so any
  likelihood of `models.observation` works without new code.
- **Inside the moment-matching sampler, Gaussian noise** (`update_sigma_tweedie`): σ from its
  marginal likelihood given the diffusion state under the Tweedie approximation, with the clean
  sequence integrated out instead of fixed at an estimate that σ itself guided.
- **For the report** (`sigma_posterior_nuts`): NumPyro NUTS over σ with the cores fixed at each
  posterior draw, one σ per draw, all draws in one run (the target factorises over draws).

Units: σ is in normalised field units, the units of `padded.values`.

Priors on σ (both weakly informative, scale s = `prior_scale`, default 0.1 — a tenth of the
field's standard deviation in normalised units):

- Gaussian route: the conjugate σ² ~ InvGamma(a₀ = 1, b₀ = s²). It carries the weight of two
  pseudo-observations of variance s², so any sequence with more than a handful of observed points
  is dominated by the data; its mode σ² = s²/2 keeps σ away from zero when there are almost none.
- Metropolis and NUTS routes: the observation model's own prior, σ ~ HalfNormal(s).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

from models.likelihoods import SIGMA_LIKELIHOODS, Likelihood, as_likelihood
from models.observation import observation_model
from sdift_prob.errors import InputError, bad_input
from sdift_prob.validation import check_count

__all__ = [
    "SIGMA_LIKELIHOODS",
    "DEFAULT_PRIOR_SCALE",
    "sigma_conditional_gaussian",
    "sigma_metropolis",
    "sigma_log_density",
    "update_sigma",
    "update_sigma_tweedie",
    "sigma_posterior_nuts",
]

# SIGMA_LIKELIHOODS (from models.likelihoods): the names of the likelihoods with a scale σ.
DEFAULT_PRIOR_SCALE = 0.1
_PRIOR_SHAPE = 1.0


def _check_positive(value: Any, argument: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise bad_input(argument, "a positive finite number", value) from exc
    if not (np.isfinite(v) and v > 0):
        raise bad_input(argument, "a positive finite number", value)
    return v


def _check_likelihood(likelihood: Any, likelihood_params: dict[str, Any] | None = None) -> Likelihood:
    """The `Likelihood` object of a name (+ parameters) or object; it must have a scale σ."""
    expected = f"a likelihood with a noise scale, one of {SIGMA_LIKELIHOODS} (poisson has no σ to infer)"
    try:
        lik = as_likelihood(likelihood, **dict(likelihood_params or {}))
    except TypeError as exc:
        raise bad_input("likelihood_params", "only df for a likelihood with a noise scale", likelihood_params) from exc
    except InputError as exc:
        if isinstance(likelihood, Likelihood) or likelihood not in SIGMA_LIKELIHOODS:
            raise bad_input("likelihood", expected, likelihood) from exc
        raise
    if not lik.has_sigma:
        raise bad_input("likelihood", expected, lik.name)
    return lik


def sigma_conditional_gaussian(
    key: PRNGKeyArray,
    residual: Float[ArrayLike, "M P"],
    mask: Bool[ArrayLike, "M P"],
    *,
    prior_scale: float = DEFAULT_PRIOR_SCALE,
) -> Float[Array, ""]:
    """One draw of σ from its conditional under Gaussian noise and the conjugate prior.

    With n observed residuals r = y − A w and σ² ~ InvGamma(1, s²) (see the module docstring),
    σ² | r ~ InvGamma(1 + n/2, s² + ½ Σ r²).

    **Arguments:**

    - `key`: PRNG key.
    - `residual`: residuals `y − A vec(W)` in normalised field units, shape `(M, P)`; padding
      entries are ignored through `mask`.
    - `mask`: shape `(M, P)`, True for real observations.
    - `prior_scale`: s > 0, the prior's scale in normalised field units.

    **Returns:** σ, a positive scalar.
    """
    residual = jnp.asarray(residual)
    mask = jnp.asarray(mask)
    if residual.ndim != 2:
        raise bad_input("residual", "an array of shape (M, P)", f"shape {residual.shape}")
    if mask.shape != residual.shape or mask.dtype != jnp.bool_:
        raise bad_input("mask", f"a bool array of shape {residual.shape}", f"{mask.dtype} {mask.shape}")
    if not isinstance(prior_scale, jax.core.Tracer):
        _check_positive(prior_scale, "prior_scale")
    r2 = jnp.where(mask, residual, 0.0) ** 2
    shape = _PRIOR_SHAPE + 0.5 * jnp.sum(mask)
    rate = jnp.asarray(prior_scale, residual.dtype) ** 2 + 0.5 * jnp.sum(r2)
    # σ² = rate / Gamma(shape, 1) is InvGamma(shape, rate).
    g = jax.random.gamma(key, shape.astype(residual.dtype))
    return jnp.sqrt(rate / g)


def sigma_metropolis(
    key: PRNGKeyArray,
    log_density: Callable[[Array], Array],
    sigma: Float[ArrayLike, ""],
    *,
    num_steps: int = 5,
    step_size: float = 0.2,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Random-walk Metropolis on log σ for a few steps.

    The target is `log_density(σ)` on σ > 0; the walk runs on u = log σ, so the Jacobian
    `+ u` is added to the target.

    **Arguments:**

    - `key`: PRNG key.
    - `log_density`: maps a scalar σ > 0 to the log density of σ (up to a constant).
    - `sigma`: the current σ > 0 (scalar).
    - `num_steps`: number of Metropolis steps (≥ 1).
    - `step_size`: standard deviation of the Gaussian proposal on log σ (> 0).

    **Returns:** `(sigma, accept_rate)`: the σ after the last step and the fraction of proposals
    accepted.
    """
    if not callable(log_density):
        raise bad_input("log_density", "a callable sigma -> log density", type(log_density).__name__)
    num_steps = check_count(num_steps, "num_steps")
    _check_positive(step_size, "step_size")
    sigma = jnp.asarray(sigma)
    if sigma.shape != ():
        raise bad_input("sigma", "a scalar", f"shape {sigma.shape}")

    def target(u: Array) -> Array:
        lp = log_density(jnp.exp(u)) + u
        return jnp.where(jnp.isfinite(lp), lp, -jnp.inf)

    def body(carry, k):
        u, lp, accepted = carry
        k_prop, k_acc = jax.random.split(k)
        u_new = u + step_size * jax.random.normal(k_prop, dtype=u.dtype)
        lp_new = target(u_new)
        accept = jnp.log(jax.random.uniform(k_acc, dtype=u.dtype)) < lp_new - lp
        return (jnp.where(accept, u_new, u), jnp.where(accept, lp_new, lp), accepted + accept), None

    u0 = jnp.log(sigma)
    (u, _, accepted), _ = jax.lax.scan(body, (u0, target(u0), jnp.zeros((), jnp.int32)), jax.random.split(key, num_steps))
    return jnp.exp(u), accepted / num_steps


def sigma_log_density(
    sigma: Float[ArrayLike, ""],
    cores: Float[Array, "M *R"],
    design: Float[Array, "M P D"],
    padded: Any,
    *,
    likelihood: Likelihood | str,
    likelihood_params: dict[str, Any] | None = None,
    prior_scale: float = DEFAULT_PRIOR_SCALE,
) -> Float[Array, ""]:
    """Log density of σ given fixed cores: the NumPyro observation model's σ prior + likelihood.

    Evaluated with `numpyro.infer.util.log_density` on `models.observation.observation_model`
    (σ unknown, so it has its `"sigma"` site) with `"sigma"` substituted.

    **Arguments:**

    - `sigma`: σ > 0 (scalar, may be traced).
    - `cores`: FTM cores, shape `(M, R1, .., RK)`.
    - `design`: per-frame design rows, shape `(M, P, D)`.
    - `padded`: `PaddedObservations` with values in normalised field units.
    - `likelihood`: a `models.likelihoods.Likelihood` with a scale σ (`has_sigma`), or one of
      `SIGMA_LIKELIHOODS` by name.
    - `likelihood_params`: the parameters of a likelihood given by name (e.g. `{"df": 4.0}` for
      Student-t); None with an object.
    - `prior_scale`: passed to the model as `sigma_prior_scale`.

    **Returns:** the log density (scalar).
    """
    from numpyro.infer.util import log_density

    lik = _check_likelihood(likelihood, likelihood_params)
    lp, _ = log_density(
        observation_model,
        (cores, design, padded),
        {"likelihood": lik, "sigma": None, "sigma_prior_scale": prior_scale},
        {"sigma": jnp.asarray(sigma)},
    )
    return lp


def update_sigma(
    key: PRNGKeyArray,
    cores: Float[Array, "M *R"],
    design: Float[Array, "M P D"],
    padded: Any,
    sigma: Float[ArrayLike, ""],
    *,
    likelihood: Likelihood | str,
    likelihood_params: dict[str, Any] | None = None,
    prior_scale: float = DEFAULT_PRIOR_SCALE,
    mh_steps: int = 20,
    mh_step_size: float = 0.3,
) -> Float[Array, ""]:
    """One Gibbs-style update of σ given the current clean estimate of the cores.

    Gaussian: an exact draw from the conjugate conditional (`sigma_conditional_gaussian`);
    other likelihoods: `mh_steps` random-walk Metropolis steps on log σ started at `sigma`
    (`sigma_metropolis` on `sigma_log_density`).

    **Arguments:**

    - `key`: PRNG key.
    - `cores`: current clean cores in FTM core units, shape `(M, R1, .., RK)`.
    - `design`: shape `(M, P, D)`, `D = R1 ⋯ RK`.
    - `padded`: `PaddedObservations` (values in normalised field units, mask `(M, P)`).
    - `sigma`: current σ > 0.
    - `likelihood`, `likelihood_params`, `prior_scale`: as in `sigma_log_density`.
    - `mh_steps`, `mh_step_size`: Metropolis settings (non-Gaussian likelihoods).

    **Returns:** the new σ (scalar).
    """
    lik = _check_likelihood(likelihood, likelihood_params)
    M = cores.shape[0]
    if design.ndim != 3 or design.shape[0] != M:
        raise bad_input("design", f"an array of shape (M={M}, P, D)", f"shape {design.shape}")
    if lik.conjugate:
        pred = jnp.einsum("mpd,md->mp", design, cores.reshape(M, -1))
        residual = jnp.asarray(padded.values, pred.dtype) - pred
        return sigma_conditional_gaussian(key, residual, jnp.asarray(padded.mask), prior_scale=prior_scale)
    # The same model with every point as its own one-point frame and the predicted means as
    # its "cores" (design 1): the identical log density, at O(M P) per evaluation instead of
    # O(M P D), since the cores do not change during the Metropolis steps.
    u = jnp.einsum("mpd,md->mp", design, cores.reshape(M, -1))
    MP = u.size
    points = type(padded)(
        times=jnp.zeros((MP,), u.dtype),
        values=jnp.reshape(padded.values, (MP, 1)),
        coords=jnp.zeros((MP, 1, 1), u.dtype),
        noise_scale=jnp.reshape(padded.noise_scale, (MP, 1)),
        mask=jnp.reshape(padded.mask, (MP, 1)),
    )
    ones = jnp.ones((MP, 1, 1), u.dtype)
    new, _ = sigma_metropolis(
        key,
        lambda s: sigma_log_density(
            s, u.reshape(MP, 1), ones, points, likelihood=lik,
            prior_scale=prior_scale,
        ),
        sigma,
        num_steps=mh_steps,
        step_size=mh_step_size,
    )
    return new


def update_sigma_tweedie(
    key: PRNGKeyArray,
    residual: Float[Array, "M P"],
    mask: Bool[Array, "M P"],
    eig_vals: Float[Array, " N"],
    eig_vecs: Float[Array, "N N"],
    tweedie_scale: Float[ArrayLike, ""],
    sigma: Float[ArrayLike, ""],
    *,
    prior_scale: float = DEFAULT_PRIOR_SCALE,
    mh_steps: int = 20,
    mh_step_size: float = 0.3,
) -> Float[Array, ""]:
    """σ drawn from its marginal likelihood given the diffusion state, not given a clean estimate.

    Under the Gaussian (Tweedie) approximation of `p(x0 | x_σ)` the observations of all frames
    are `y ~ N(A x̂0, σ² I + A V Aᵀ)` with x̂0 the *unguided* denoiser output. With the
    covariance approximated as `A V Aᵀ ≈ c G` (`c = tweedie_scale`, the isotropic Tweedie
    variance in field units, and `G = A (Σ_t ⊗ I) Aᵀ` with eigendecomposition `eig_vals`,
    `eig_vecs` over the padded points, as the MMPS preconditioner has it), the log likelihood is
    `−½ Σ_k [(u_kᵀ r)² / (σ² + c g_k) + log(σ² + c g_k)]`. Unlike the residual of a guided
    estimate it does not depend on the σ that guided the estimate, which breaks the feedback of
    σ on itself (too large a σ → weak guidance → large residuals → too large a σ, and the
    reverse); as the diffusion ends (c → 0) it becomes the usual conditional given the draw.
    Padding: its coordinates are zero rows of G (eigenvalue 0, no residual); the `log σ²` term
    each of them adds is taken back out. Prior σ² ~ InvGamma(1, s²) as the Gaussian route.
    `mh_steps` random-walk Metropolis steps on log σ (`sigma_metropolis`).

    **Returns:** the new σ (scalar).
    """
    r = jnp.where(mask, residual, 0.0).reshape(-1)
    proj2 = (eig_vecs.T @ r) ** 2
    lam = jnp.asarray(tweedie_scale, r.dtype) * eig_vals
    n_pad = jnp.sum(~mask)
    s2 = jnp.asarray(prior_scale, r.dtype) ** 2

    def log_density(sig: Array) -> Array:
        var = sig**2 + lam
        ll = -0.5 * jnp.sum(proj2 / var + jnp.log(var)) + n_pad * jnp.log(sig)
        return ll - 3.0 * jnp.log(sig) - s2 / sig**2  # InvGamma(1, s²) on σ², as a density of σ

    new, _ = sigma_metropolis(key, log_density, sigma, num_steps=mh_steps, step_size=mh_step_size)
    return new


def sigma_posterior_nuts(
    key: PRNGKeyArray,
    cores_draws: Float[ArrayLike, "S M *R"],
    design: Float[ArrayLike, "M P D"],
    padded: Any,
    likelihood: Likelihood | str,
    *,
    likelihood_params: dict[str, Any] | None = None,
    prior_scale: float = DEFAULT_PRIOR_SCALE,
    num_warmup: int = 300,
    num_samples: int = 300,
    progress: bool = False,
) -> Float[np.ndarray, "S num_samples"]:
    """Posterior of σ with the cores fixed at each posterior draw, by NumPyro NUTS.

    One σ_s per core draw s; the joint target Σ_s log p(σ_s | W_s, y) factorises, so a single
    NUTS run over the vector (σ_1..σ_S) samples all of them at once.

    **Arguments:**

    - `key`: PRNG key.
    - `cores_draws`: posterior core draws in FTM core units, shape `(S, M, R1, .., RK)`.
    - `design`: shape `(M, P, D)`.
    - `padded`: `PaddedObservations` with values in normalised field units.
    - `likelihood`: as in `sigma_log_density`.
    - `likelihood_params`, `prior_scale`: as in `sigma_log_density`.
    - `num_warmup`, `num_samples`: NUTS settings (≥ 1).
    - `progress`: show NumPyro's progress bar.

    **Returns:** σ draws, NumPy array of shape `(S, num_samples)`.
    """
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS, init_to_value

    lik = _check_likelihood(likelihood, likelihood_params)
    num_warmup = check_count(num_warmup, "num_warmup")
    num_samples = check_count(num_samples, "num_samples")
    _check_positive(prior_scale, "prior_scale")
    draws = jnp.asarray(cores_draws)
    design = jnp.asarray(design)
    if draws.ndim < 3:
        raise bad_input("cores_draws", "an array of shape (S, M, R1, .., RK)", f"shape {draws.shape}")
    S, M = draws.shape[:2]
    D = int(np.prod(draws.shape[2:]))
    if design.ndim != 3 or design.shape[0] != M or design.shape[2] != D:
        raise bad_input("design", f"an array of shape (M={M}, P, D={D})", f"shape {design.shape}")
    if not bool(jnp.all(jnp.isfinite(draws))):
        raise bad_input("cores_draws", "finite values", "NaN or infinite entries")
    padded = type(padded)(*(jnp.asarray(a) for a in padded))

    def one(s: Array, cores: Array) -> Array:
        # Evaluated inside the outer model: block it so its sites stay out of the outer trace.
        with numpyro.handlers.block():
            return sigma_log_density(
                s, cores, design, padded, likelihood=lik,
                prior_scale=prior_scale,
            )

    def model() -> None:
        # Flat on σ > 0 here: the observation model's own σ prior is inside `one`.
        sigma = numpyro.sample("sigma", dist.ImproperUniform(dist.constraints.positive, (), (S,)))
        numpyro.factor("log_density", jnp.sum(jax.vmap(one)(sigma, draws)))

    # Start each σ_s at the RMS residual of its draw: the right order for every likelihood.
    pred = jnp.einsum("mpd,smd->smp", design, draws.reshape(S, M, D))
    resid = jnp.where(padded.mask, padded.values - pred, 0.0)
    n = jnp.maximum(jnp.sum(padded.mask), 1)
    start = jnp.maximum(jnp.sqrt(jnp.sum(resid**2, axis=(1, 2)) / n), 1e-3 * prior_scale)
    kernel = NUTS(model, init_strategy=init_to_value(values={"sigma": start}))
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, progress_bar=progress)
    mcmc.run(key)
    out = np.asarray(mcmc.get_samples()["sigma"]).T
    return out

