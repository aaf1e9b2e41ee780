"""The guided sampler as pure functions over a chain's state: `GuidedState`, `GuidedInfo`, `init`,
`step` (and `_run_chain`, one chain's `lax.scan` over the steps).

The sampler is the EDM Heun sampler over a Karras noise schedule, started from `σ_max · L z`
(GP noise in time), with the denoiser's estimate of the clean sequence corrected by the data at
every step (`inference.guided.estimates`); the last step (to σ = 0) is Euler.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from sdift_prob.errors import bad_input

from ..corrector import langevin_correct
from ..guidance import MomentMatching, Reference
from .config import Denoiser, GuidedConfig
from .estimates import (
    _fisher_estimate,
    _guidance_terms,
    _mmps_estimate,
    _to_cores,
    _tweedie_sigma,
    _update_sigma_tweedie,
    _update_sigma_y,
)
from .problem import GuidedProblem


class GuidedState(NamedTuple):
    """State of one chain: `x (M, R..)` normalised cores at noise level `sigmas[step]`;
    `step` (int); `sigma_y` (current noise level estimate; 1 when unused); `finite` (False once a
    non-finite value appeared); `first_bad` (the first step that produced one, −1 if none);
    `cg_guess` (MMPS with `warm_start`: the whitened solution of the last moment-matching solve,
    where the next one starts; zeros otherwise)."""

    x: Float[Array, "M *R"]
    step: Int[Array, ""]
    sigma_y: Float[Array, ""]
    finite: Bool[Array, ""]
    first_bad: Int[Array, ""]
    cg_guess: Float[Array, "M P"]


class GuidedInfo(NamedTuple):
    """Diagnostics of one step: `noise_level` (σ of the step), `sigma_y` (after the step's
    update), `residual_rms` (RMS of `y − A Ŵ` over the observed points at the step's clean
    estimate, normalised field units), `guidance_rms` (RMS of the guidance correction, normalised
    core units). Stacked over steps (and draws) by `sample_posterior`."""

    noise_level: Float[Array, ""]
    sigma_y: Float[Array, ""]
    residual_rms: Float[Array, ""]
    guidance_rms: Float[Array, ""]


def _zeta(config: GuidedConfig, i: Array) -> Array:
    if config.zeta_schedule == "harmonic":
        return config.zeta / (i + 1.0)
    return jnp.asarray(config.zeta)


def _residual_rms(W: Array, problem: GuidedProblem) -> Array:
    pred = jnp.einsum("mpd,md->mp", problem.design, W)
    mask = problem.padded.mask
    r = jnp.where(mask, problem.padded.values - pred, 0.0)
    return jnp.sqrt(jnp.sum(r**2) / jnp.maximum(jnp.sum(mask), 1))


def _rms(v: Array) -> Array:
    return jnp.sqrt(jnp.mean(v**2))


def init(key: PRNGKeyArray, problem: GuidedProblem, sigma_y: Array | None = None) -> GuidedState:
    """Start one chain at `σ_max · L z` (GP noise over the frames' normalised times).

    **Arguments:**

    - `key`: PRNG key of this chain.
    - `problem`: from `prepare`.
    - `sigma_y`: this chain's noise level (a draw of σ inferred before sampling,
      `inference.sigma_marginal`); default `problem.sigma_y0`.

    **Returns:** `GuidedState` at step 0 with `x (M, R1, .., RK)`.
    """
    M = problem.num_frames
    shape = (M, *problem.core_shape)
    z = jax.random.normal(key, shape, dtype=problem.noise_chol.dtype)
    x = problem.sigmas[0] * jnp.tensordot(problem.noise_chol, z, axes=1)
    return GuidedState(
        x=x, step=jnp.zeros((), jnp.int32), sigma_y=problem.sigma_y0 if sigma_y is None else sigma_y,
        finite=jnp.array(True),
        first_bad=jnp.full((), -1, jnp.int32),
        cg_guess=jnp.zeros(problem.design.shape[:2], x.dtype),
    )


def _step(
    key: PRNGKeyArray, state: GuidedState, denoise: Denoiser, problem: GuidedProblem, config: GuidedConfig,
    i: Array | None = None,
) -> tuple[GuidedState, GuidedInfo]:
    M, D = problem.num_frames, problem.core_size
    # The step index from the scan rather than the state: shared by all chains of a vmap, it
    # keeps the noise level and the preconditioner anchor chosen from it unbatched, so the
    # anchor's eigenbasis is sliced once, not gathered per chain (4x the sampler's time).
    i = state.step if i is None else i
    sig, sig_next = problem.sigmas[i], problem.sigmas[i + 1]
    k_churn, k_sigma = jax.random.split(key)
    k_corr = jax.random.fold_in(key, 2)  # a third stream that leaves the first two as they were
    x = state.x.reshape(M, D)
    sigma_y = state.sigma_y
    zeta = _zeta(config, i.astype(x.dtype))

    if config.churn > 0:
        edm = config.edm
        gamma_max = min(config.churn / config.num_steps, math.sqrt(2.0) - 1.0)
        gamma = jnp.where((sig >= edm.S_min) & (sig <= edm.S_max), gamma_max, 0.0)
        sig_hat = sig * (1.0 + gamma)
        fresh = jnp.tensordot(problem.noise_chol, jax.random.normal(k_churn, (M, D), x.dtype), axes=1)
        x = x + edm.S_noise * jnp.sqrt(sig_hat**2 - sig**2) * fresh
    else:
        sig_hat = sig

    # The last step (to σ = 0) is Euler. One graph serves every step: the Heun correction is
    # always computed (at a harmless noise level on the last step) and then selected away, which
    # costs one extra denoiser call per chain but halves the compiled program.
    heun = sig_next > 0
    sig_2 = jnp.where(heun, sig_next, sig_hat)

    def den(z: Array, s: Array) -> Array:
        return denoise(z.reshape((M, *problem.core_shape)), s, problem.times_norm).reshape(M, D)

    if not isinstance(config.guidance, Reference):
        if isinstance(config.guidance, MomentMatching):
            warm = config.guidance.warm_start

            def estimate(z: Array, s: Array, guess: Array) -> tuple[Array, Array, Array]:
                return _mmps_estimate(denoise, z, s, sigma_y, zeta, problem, config, guess if warm else None)
        else:

            def estimate(z: Array, s: Array, guess: Array) -> tuple[Array, Array, Array]:
                return (*_fisher_estimate(denoise, z, s, sigma_y, zeta, problem, config), guess)

        d1, delta, v1 = estimate(x, sig_hat, state.cg_guess)
        slope = (x - d1) / sig_hat
        x_euler = x + (sig_next - sig_hat) * slope
        d2, _, v2 = estimate(x_euler, sig_2, v1)
        x_next = jnp.where(heun, x + (sig_next - sig_hat) * 0.5 * (slope + (x_euler - d2) / sig_2), x_euler)
        if config.corrector is not None:
            corrected = langevin_correct(
                k_corr, x_next, sig_2, lambda z: estimate(z, sig_2, v2)[0], problem.noise_chol, config.corrector,
            )
            x_next = jnp.where(heun, corrected, x_next)
        cg_guess = v2
        W_est = _to_cores(d1, problem)
    else:
        d1 = den(x, sig_hat)
        slope = (x - d1) / sig_hat
        x_euler = x + (sig_next - sig_hat) * slope
        d2 = den(x_euler, sig_2)
        x_heun = x + (sig_next - sig_hat) * 0.5 * (slope + (x_euler - d2) / sig_2)
        W_est = _to_cores(jnp.where(heun, 0.5 * (d1 + d2), d1), problem)
        # The public rule: no guidance after the final (Euler) step.
        delta = jnp.where(heun, zeta, 0.0) * _guidance_terms(W_est, sigma_y, problem, config)[0]
        x_next = jnp.where(heun, x_heun, x_euler) + delta
        cg_guess = state.cg_guess

    if _tweedie_sigma(problem, config):
        # the unguided estimate at the state: d1 = x̂0 + δ
        new_sigma_y = _update_sigma_tweedie(k_sigma, d1 - delta, sig_hat, sigma_y, i, problem, config)
    else:
        new_sigma_y = _update_sigma_y(k_sigma, W_est, sigma_y, i, problem, config)
    ok = jnp.all(jnp.isfinite(x_next)) & jnp.isfinite(new_sigma_y)
    first_bad = jnp.where(state.finite & ~ok, i, state.first_bad)
    new_state = GuidedState(
        x=x_next.reshape(state.x.shape), step=i + 1, sigma_y=new_sigma_y, finite=state.finite & ok,
        first_bad=first_bad, cg_guess=cg_guess,
    )
    info = GuidedInfo(
        noise_level=sig_hat, sigma_y=new_sigma_y, residual_rms=_residual_rms(W_est, problem), guidance_rms=_rms(delta)
    )
    return new_state, info


def step(
    key: PRNGKeyArray, state: GuidedState, denoise: Denoiser, problem: GuidedProblem, config: GuidedConfig
) -> tuple[GuidedState, GuidedInfo]:
    """One guided Heun step `sigmas[i] → sigmas[i+1]` (Euler on the last step, to σ = 0).

    With `config.infer_sigma`, σ_y is then updated from the step's clean estimate
    (`inference.noise.update_sigma`) once `i ≥ ceil(sigma_burn_in · num_steps)`.

    **Arguments:**

    - `key`: PRNG key of this step (churn noise and the σ_y update).
    - `state`: current `GuidedState` (`state.step < num_steps`).
    - `denoise`: `D(x (M, R..), sigma, t (M,)) -> (M, R..)`, normalised core units.
    - `problem`: from `prepare`; `config`: the `GuidedConfig` it was prepared with.

    **Returns:** `(new_state, info)`.
    """
    if not isinstance(config, GuidedConfig):
        raise bad_input("config", "a GuidedConfig", type(config).__name__)
    if not isinstance(problem, GuidedProblem):
        raise bad_input("problem", "a GuidedProblem from inference.guided.prepare", type(problem).__name__)
    if problem.sigmas.shape != (config.num_steps + 1,):
        raise bad_input("problem", f"a problem prepared with num_steps = {config.num_steps}",
                        f"{problem.sigmas.shape[0] - 1} steps")
    return _step(key, state, denoise, problem, config)


def _run_chain(
    key: PRNGKeyArray, denoise: Denoiser, problem: GuidedProblem, config: GuidedConfig, sigma_y: Array
) -> tuple[GuidedState, GuidedInfo]:
    k_init, k_steps = jax.random.split(key)
    state = init(k_init, problem, sigma_y)

    def body(state: GuidedState, i: Array) -> tuple[GuidedState, GuidedInfo]:
        return _step(jax.random.fold_in(k_steps, i), state, denoise, problem, config, i)

    return jax.lax.scan(body, state, jnp.arange(config.num_steps))
