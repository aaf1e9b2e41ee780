"""The trained GPSD diffusion prior as a NumPyro distribution over core sequences.

A diffusion model knows its prior only through the denoiser `D(x; σ) ≈ E[x₀ | x_σ]`, i.e.
through the score of the noised prior, never through `log p` itself. `ScorePrior` therefore
offers sampling (the diffusion sampler) and the score; `log_prob` raises. For posterior
sampling use the guided samplers in `inference/` (DPS, MPDPS); for an exact `log p` of the
learned prior (evaluation only) integrate the probability-flow ODE.

Its role: the trained prior's score at any noise level, in FTM core units and with the GP-correlated
noise of GPSD undone (`score`, `preconditioned_score`), from the denoiser through Tweedie's formula,
for checks and for user code that needs `∇ log p_σ` (a custom sampler, a Langevin corrector, a
score-matching diagnostic), plus unconditional draws (`sample`). It is not a NumPyro factor: a
diffusion prior has no tractable density, so `log_prob` raises a `NotImplementedError` that says why,
instead of returning a number NUTS or SVI could silently use. `reconstruct` does not go through this
class; its guided samplers call the same denoiser directly (`inference.guided`).

Noise convention of GPSD: `x_σ = x₀ + σ ε` with `ε = L z` GP-correlated over time
(`L Lᵀ = K_noise`, identity over core entries). Tweedie's formula then reads
`D(x; σ) = x + σ² (K_noise ⊗ I) ∇ log p_σ(x)`, so
`∇ log p_σ(x) = (K_noise ⊗ I)⁻¹ (D(x; σ) - x)/σ²` (the plain `(D - x)/σ²` is the score in
GP-whitened coordinates mapped back, here called the *preconditioned* score).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray
from numpyro.distributions import constraints

from sdift_prob.errors import bad_input
from sdift_prob.gp import TemporalKernel, time_cholesky, validate_times

__all__ = ["ScorePrior"]

_REQUIRED = ("denoise", "sample", "normalise", "core_shape")

_LOG_PROB_MESSAGE = (
    "ScorePrior.log_prob is not available: a diffusion prior is known only through its denoiser, "
    "which gives the score ∇log p_σ, not log p. Use the guided posterior samplers in `inference/` "
    "(DPS, MPDPS), or, to evaluate the learned prior's density, a probability-flow-ODE likelihood "
    "(slow, evaluation only). It cannot be used as a NumPyro factor for NUTS/SVI."
)


class ScorePrior(dist.Distribution):
    """NumPyro `Distribution` wrapper of a trained GPSD prior at fixed normalised time stamps.

    **Arguments:**

    - `prior`: a `GPSDPrior`-like object with `denoise(x, sigma, t_norm)` (normalised core units),
      `sample(key, times_norm, num_draws) -> (num_draws, M, R..)` (FTM core units),
      `normalise(W)` (core units -> normalised) and `core_shape`. The noise covariance's Cholesky
      factor comes from `prior.noise_cholesky(times_norm)` when the prior has it (as `GPSDPrior`
      does) and neither `noise_kernel` nor `noise_jitter` is given; otherwise from the kernel
      (`noise_kernel`, else `prior.kernel`) with `sdift_prob.gp.time_cholesky`.
    - `times_norm`: normalised time stamps, shape `(M,)`, strictly increasing.
    - `noise_kernel`: kernel of the diffusion noise over time (`None`: `prior.kernel`; white noise if
      the prior has none).
    - `noise_jitter`: relative jitter of the noise covariance (`None`: `prior.config.jitter`,
      else `prior.jitter`, else `1e-5`).

    Event shape `(M, R1..RK)`, FTM core units.
    """

    pytree_data_fields = ("prior", "times_norm", "noise_chol", "_kernel")
    pytree_aux_fields = ("_jitter", "_use_prior_chol")
    support = constraints.real

    def __init__(
        self,
        prior: Any,
        times_norm: Float[ArrayLike, " M"],
        *,
        noise_kernel: TemporalKernel | None = None,
        noise_jitter: float | None = None,
        validate_args: bool | None = None,
    ):
        missing = [name for name in _REQUIRED if not hasattr(prior, name)]
        if missing:
            raise bad_input("prior", f"a GPSDPrior-like object (missing {', '.join(missing)})", type(prior).__name__)
        tt = validate_times(times_norm, "times_norm")
        kernel = noise_kernel if noise_kernel is not None else getattr(prior, "kernel", None)
        if kernel is not None and not isinstance(kernel, TemporalKernel):
            raise bad_input("noise_kernel", "a TemporalKernel (or None)", type(kernel).__name__)
        jitter = noise_jitter
        if jitter is None:
            jitter = getattr(getattr(prior, "config", None), "jitter", None)
        if jitter is None:
            jitter = getattr(prior, "jitter", 1e-5)
        if not (isinstance(jitter, (int, float)) and math.isfinite(jitter) and jitter >= 0):
            raise bad_input("noise_jitter", "a finite number >= 0", jitter)
        self.prior = prior
        self.times_norm = jnp.asarray(tt, dtype=jnp.result_type(float))
        self._kernel = kernel
        self._jitter = float(jitter)
        self._use_prior_chol = noise_kernel is None and noise_jitter is None and hasattr(prior, "noise_cholesky")
        self.noise_chol = self._noise_chol(tt)
        core_shape = tuple(int(r) for r in prior.core_shape)
        super().__init__(batch_shape=(), event_shape=(tt.size,) + core_shape, validate_args=validate_args)

    @property
    def core_shape(self) -> tuple[int, ...]:
        return self.event_shape[1:]

    def sample(self, key: PRNGKeyArray, sample_shape: tuple[int, ...] = ()) -> Array:
        """Unconditional draws from the diffusion, shape `sample_shape + (M, R1..RK)` (core units)."""
        n = math.prod(sample_shape) if sample_shape else 1
        draws = self.prior.sample(key, self.times_norm, n)
        return jnp.reshape(draws, tuple(sample_shape) + self.event_shape)

    def log_prob(self, value: ArrayLike) -> Array:
        raise NotImplementedError(_LOG_PROB_MESSAGE)

    def _check_w(self, W: Any) -> Array:
        W = jnp.asarray(W)
        if W.shape != self.event_shape:
            raise bad_input("W", f"a core sequence of shape {self.event_shape}", f"shape {W.shape}")
        return W

    def _denoise_residual(self, W: Array, sigma: Any, t: Array) -> tuple[Array, Any]:
        # (D(x; σ) - x)/σ² in normalised units, and the pullback to core units (chain rule).
        x, pullback = jax.vjp(self.prior.normalise, W)
        return (self.prior.denoise(x, sigma, t) - x) / (sigma * sigma), pullback

    def _times(self, t_norm: Any) -> tuple[Array, Array | None]:
        if t_norm is None:
            return self.times_norm, self.noise_chol
        t = jnp.asarray(t_norm)
        if t.shape != (self.event_shape[0],):
            raise bad_input("t_norm", f"shape ({self.event_shape[0]},)", f"shape {t.shape}")
        return t, self._noise_chol(t)

    def _noise_chol(self, t: Any) -> Array | None:
        if self._use_prior_chol:
            return jnp.asarray(self.prior.noise_cholesky(t))
        return None if self._kernel is None else time_cholesky(self._kernel, t, self._jitter)

    def preconditioned_score(
        self, W: Float[ArrayLike, "M *R"], sigma: float | Array, t_norm: Float[ArrayLike, " M"] | None = None
    ) -> Float[Array, "M *R"]:
        """`(D(x; σ) - x)/σ²` pulled back to core units, `x = normalise(W)`; equals `K_noise` times the score.

        **Arguments:** `W` (noisy cores, core units, shape `(M, R1..RK)`), `sigma` (noise level in
        normalised units), `t_norm` (optional other time stamps, shape `(M,)`).

        **Returns:** shape `(M, R1..RK)`.
        """
        W = self._check_w(W)
        t, _ = self._times(t_norm)
        resid, pullback = self._denoise_residual(W, sigma, t)
        return pullback(resid)[0]

    def score(
        self, W: Float[ArrayLike, "M *R"], sigma: float | Array, t_norm: Float[ArrayLike, " M"] | None = None
    ) -> Float[Array, "M *R"]:
        """Score of the noised prior, `∇_W log p_σ(W)`, in core units.

        `∇_x log p_σ(x) = (K_noise ⊗ I)⁻¹ (D(x; σ) - x)/σ²` with `x = normalise(W)` (Cholesky solves
        along time), then the chain rule through `normalise` (for `x = (W - μ)/s`: divide by `s`).

        **Arguments:** `W` (noisy cores in core units, shape `(M, R1..RK)`), `sigma` (the diffusion
        noise level, normalised units), `t_norm` (optional other time stamps, shape `(M,)`).

        **Returns:** shape `(M, R1..RK)`.
        """
        W = self._check_w(W)
        t, chol = self._times(t_norm)
        resid, pullback = self._denoise_residual(W, sigma, t)
        if chol is not None:
            M = resid.shape[0]
            flat = jax.scipy.linalg.cho_solve((chol.astype(resid.dtype), True), resid.reshape(M, -1))
            resid = flat.reshape(resid.shape)
        return pullback(resid)[0]
