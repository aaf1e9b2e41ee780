"""Langevin corrector of the guided sampler (predictor-corrector sampling, Song et al. 2021; SDA).

After the predictor step to noise level σ, a few Langevin steps target the guided marginal
`p_σ(x | y)` at that level. Its score is `Σ⁻¹ (x̂0'(x) − x) / σ²` with `Σ = Σ_t ⊗ I` the
diffusion noise's covariance and `x̂0'` the guided estimate (the posterior denoiser); with the
preconditioner `τ σ² Σ` one step is

    x ← x + τ (x̂0'(x) − x) + σ √(2τ) (L ⊗ I) z,      z ~ N(0, I),

so `τ` is a dimensionless step (the fraction of the way to the estimate) and the injected noise
has the diffusion's own temporal correlation. Small τ keeps the discretisation bias small; each
step costs one guided estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from sdift_prob.errors import bad_input

__all__ = ["LangevinCorrector", "langevin_correct"]


class LangevinCorrector(eqx.Module):
    """`steps` Langevin steps of size `tau` after every predictor step but the last."""

    steps: int = eqx.field(static=True, default=1)
    tau: float = eqx.field(static=True, default=0.1)

    def __check_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise bad_input("steps", "an integer >= 1", self.steps)
        t = self.tau
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1:
            raise bad_input("tau", "a number in (0, 1]", t)

    def to_dict(self) -> dict[str, Any]:
        return {"name": "langevin", "steps": self.steps, "tau": self.tau}


def langevin_correct(
    key: PRNGKeyArray,
    x: Float[Array, "M D"],
    sigma: Float[Array, ""],
    estimate: Callable[[Array], Array],
    noise_chol: Float[Array, "M M"],
    corrector: LangevinCorrector,
) -> Float[Array, "M D"]:
    """`corrector.steps` Langevin steps at noise level σ; `estimate(x)` is the guided x̂0'."""

    def body(x: Array, k: PRNGKeyArray) -> tuple[Array, None]:
        z = noise_chol @ jax.random.normal(k, x.shape, x.dtype)
        return x + corrector.tau * (estimate(x) - x) + sigma * jnp.sqrt(2.0 * corrector.tau) * z, None

    x, _ = jax.lax.scan(body, x, jax.random.split(key, corrector.steps))
    return x
