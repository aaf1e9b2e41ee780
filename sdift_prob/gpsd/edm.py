"""EDM (Karras et al. 2022) with noise that is a Gaussian process in time.

The forward process adds `σ · L z` to a clean (normalised) core sequence `x0 (T, R..)`, with
`L` the Cholesky factor of the time kernel over the sequence's own time stamps and `z` white.
Tweedie's formula keeps the EDM probability-flow ODE unchanged under correlated noise:
with noise covariance `σ² Σ`, `E[x0 | x] = x + σ² Σ ∇log p_σ(x)` and
`dx/dσ = -σ Σ ∇log p_σ(x) = (x - D(x; σ)) / σ`, so the Heun sampler below is the EDM one
with GP noise wherever fresh noise enters.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..errors import bad_input
from ..gp import gp_noise

Denoiser = Callable[[Array, Array, Array], Array]


@dataclasses.dataclass(frozen=True)
class EDMConfig:
    """EDM hyperparameters (defaults from Karras et al. 2022 and the SDIFT reference code).

    - `sigma_data`: standard deviation the normalised training cores are scaled to.
    - `P_mean`, `P_std`: training noise levels, `ln σ ~ N(P_mean, P_std²)`.
    - `sigma_min`, `sigma_max`, `rho`, `num_steps`: the sampler's noise schedule.
    - `S_churn`, `S_min`, `S_max`, `S_noise`: stochastic "churn" of the sampler (0 = deterministic).
    - `jitter`: added to the kernel diagonal before its Cholesky factorisation.
    """

    sigma_data: float = 0.5
    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    num_steps: int = 20
    S_churn: float = 0.0
    S_min: float = 0.0
    S_max: float = float("inf")
    S_noise: float = 1.0
    jitter: float = 1e-5

    def __post_init__(self):
        for name in ("sigma_data", "P_std", "sigma_min", "sigma_max", "rho", "S_noise"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise bad_input(name, "a finite positive number", value)
        if not math.isfinite(self.P_mean):
            raise bad_input("P_mean", "a finite number", self.P_mean)
        if self.sigma_min >= self.sigma_max:
            raise bad_input("sigma_min", f"less than sigma_max = {self.sigma_max}", self.sigma_min)
        if int(self.num_steps) != self.num_steps or self.num_steps < 1:
            raise bad_input("num_steps", "a positive integer", self.num_steps)
        if not (self.S_churn >= 0 and math.isfinite(self.S_churn)):
            raise bad_input("S_churn", "a finite number >= 0", self.S_churn)
        if not (0 <= self.S_min <= self.S_max):
            raise bad_input("S_min", f"0 <= S_min <= S_max = {self.S_max}", self.S_min)
        if not (math.isfinite(self.jitter) and self.jitter >= 0):
            raise bad_input("jitter", "a finite number >= 0", self.jitter)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["S_max"] = None if math.isinf(self.S_max) else self.S_max  # JSON has no infinity
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EDMConfig:
        d = dict(d)
        if d.get("S_max") is None:
            d["S_max"] = float("inf")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise bad_input("d", f"only EDMConfig fields {[f.name for f in dataclasses.fields(cls)]}", sorted(unknown))
        return cls(**d)


def preconditioning(sigma: Float[Array, "*s"], sigma_data: float = 0.5):
    """EDM preconditioning coefficients at noise level `sigma` (any shape).

    c_skip = sd² / (σ² + sd²),  c_out = σ·sd / sqrt(σ² + sd²),  c_in = 1 / sqrt(σ² + sd²),
    c_noise = ln(σ) / 4,  with sd = `sigma_data`. They make the network's input and its
    training target unit-variance for data of std sd at every σ.

    **Returns:** `(c_skip, c_out, c_in, c_noise)`, each of the shape of `sigma`.
    """
    sigma = jnp.asarray(sigma)
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / jnp.sqrt(total)
    c_in = 1.0 / jnp.sqrt(total)
    c_noise = jnp.log(sigma) / 4.0
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: Float[Array, "*s"], sigma_data: float = 0.5) -> Float[Array, "*s"]:
    """λ(σ) = (σ² + sd²) / (σ·sd)², which is 1 / c_out²: the effective target has unit weight."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def precondition(
    net: Callable, x: Float[Array, "T *core"], sigma: Float[Array, ""] | float, t: Float[Array, " T"],
    *, sigma_data: float = 0.5,
) -> Float[Array, "T *core"]:
    """The denoiser D(x; σ) = c_skip x + c_out F(c_in x; c_noise, t).

    **Arguments:**

    - `net`: the network `F(x (T, R..), c_noise, t (T,)) -> (T, R..)`.
    - `x`: noisy core sequence `(T, R1, .., RK)` in normalised units.
    - `sigma`: scalar noise level.
    - `t`: normalised time stamps `(T,)`.

    **Returns:** the denoised estimate of the clean sequence, shape of `x`.
    """
    sigma = jnp.asarray(sigma, jnp.float32)
    if sigma.ndim != 0:
        raise bad_input("sigma", "a scalar noise level", sigma.shape)
    c_skip, c_out, c_in, c_noise = preconditioning(sigma, sigma_data)
    return c_skip * x + c_out * net(c_in * x, c_noise, t)


def sample_sigma(key: PRNGKeyArray, shape: tuple[int, ...], config: EDMConfig) -> Float[Array, "*shape"]:
    """Training noise levels: ln σ ~ N(P_mean, P_std²)."""
    return jnp.exp(config.P_mean + config.P_std * jax.random.normal(key, shape))


def edm_loss(
    net: Callable,
    key: PRNGKeyArray,
    x0: Float[Array, "B T *core"],
    t: Float[Array, "B T"],
    chol: Float[Array, "B T T"],
    config: EDMConfig,
) -> Float[Array, ""]:
    """EDM denoising loss with GP-correlated noise, averaged over sequences and entries.

    For each sequence b: σ_b with ln σ_b ~ N(P_mean, P_std²), noise n_b = σ_b L_b z_b, and
    loss λ(σ_b) · mean |D(x0_b + n_b; σ_b, t_b) − x0_b|².

    **Arguments:**

    - `net`: the network F (see `precondition`).
    - `key`: typed PRNG key.
    - `x0`: clean normalised core sequences `(B, T, R1, .., RK)`.
    - `t`: normalised time stamps of each sequence `(B, T)` (irregular allowed).
    - `chol`: lower Cholesky factors of each sequence's kernel matrix plus jitter `(B, T, T)`.
    - `config`: `EDMConfig`.

    **Returns:** the scalar loss.
    """
    if x0.ndim < 3:
        raise bad_input("x0", "core sequences of shape (B, T, R1, .., RK)", x0.shape)
    B, T = x0.shape[:2]
    if t.shape != (B, T):
        raise bad_input("t", f"time stamps of shape ({B}, {T})", t.shape)
    if chol.shape != (B, T, T):
        raise bad_input("chol", f"Cholesky factors of shape ({B}, {T}, {T})", chol.shape)
    noisy, sigma = add_noise(key, x0, chol, config)

    def one(x, y, tt, s):
        d = precondition(net, y, s, tt, sigma_data=config.sigma_data)
        return loss_weight(s, config.sigma_data) * jnp.mean((d - x) ** 2)

    return jnp.mean(jax.vmap(one)(x0, noisy, t, sigma))


def add_noise(
    key: PRNGKeyArray, x0: Float[Array, "B T *core"], chol: Float[Array, "B T T"], config: EDMConfig
) -> tuple[Float[Array, "B T *core"], Float[Array, " B"]]:
    """The forward process of the loss: one σ per sequence (ln σ ~ N(P_mean, P_std²)) and
    `x0 + σ L z`, with `L` the sequence's own Cholesky factor.

    **Returns:** `(noisy (B, T, R..), sigma (B,))`.
    """
    B = x0.shape[0]
    k_sigma, k_noise = jax.random.split(key)
    sigma = sample_sigma(k_sigma, (B,), config)
    noise = jax.vmap(lambda k, L: gp_noise(k, L, x0.shape[1:]))(jax.random.split(k_noise, B), chol)
    return x0 + sigma.reshape((B,) + (1,) * (x0.ndim - 1)) * noise, sigma


def karras_sigmas(num_steps: int, config: EDMConfig) -> Float[Array, " num_steps+1"]:
    """Noise levels of the sampler, σ_max → σ_min in `num_steps` steps, spaced as in EDM
    (uniform in σ^(1/ρ)), followed by a final 0.

    **Returns:** shape `(num_steps + 1,)`, decreasing, last entry 0.
    """
    if int(num_steps) != num_steps or num_steps < 1:
        raise bad_input("num_steps", "a positive integer", num_steps)
    inv = 1.0 / config.rho
    frac = jnp.arange(num_steps, dtype=jnp.float32) / max(num_steps - 1, 1)
    sig = (config.sigma_max**inv + frac * (config.sigma_min**inv - config.sigma_max**inv)) ** config.rho
    return jnp.concatenate([sig, jnp.zeros((1,), jnp.float32)])


def heun_sample(
    denoise: Denoiser,
    key: PRNGKeyArray,
    t: Float[Array, " M"],
    core_shape: tuple[int, ...],
    chol: Float[Array, "M M"],
    config: EDMConfig,
    *,
    num_steps: int | None = None,
) -> Float[Array, "M *core"]:
    """One draw from the EDM Heun sampler (2nd order; last step Euler), GP noise in time.

    Starts from `σ_max · L z`. With `config.S_churn > 0`, at each step with
    `S_min <= σ <= S_max` the level is raised to `σ̂ = σ(1 + γ)`, γ = min(S_churn/N, √2 − 1),
    by adding fresh GP noise of std `S_noise·sqrt(σ̂² − σ²)`. Step `i`'s noise comes from
    `fold_in(key, i)`. Use `jax.vmap` over keys for several draws.

    **Arguments:**

    - `denoise`: `D(x (M, R..), sigma scalar, t (M,)) -> (M, R..)` in normalised units.
    - `key`: typed PRNG key of this draw.
    - `t`: normalised time stamps `(M,)`.
    - `core_shape`: `(R1, .., RK)`.
    - `chol`: lower Cholesky factor `(M, M)` of the noise kernel over `t` (plus jitter).
    - `config`: `EDMConfig`; `num_steps` overrides `config.num_steps`.

    **Returns:** the sample `(M, R1, .., RK)` in normalised units.
    """
    num_steps = config.num_steps if num_steps is None else num_steps
    core_shape = tuple(core_shape)
    M = t.shape[0] if jnp.ndim(t) == 1 else -1
    if jnp.ndim(t) != 1 or M < 1:
        raise bad_input("t", "a 1-D array of at least one time stamp", jnp.shape(t))
    if chol.shape != (M, M):
        raise bad_input("chol", f"a Cholesky factor of shape ({M}, {M})", chol.shape)
    sigmas = karras_sigmas(num_steps, config)
    shape = (M, *core_shape)
    x = sigmas[0] * gp_noise(jax.random.fold_in(key, num_steps), chol, shape)
    gamma_max = min(config.S_churn / num_steps, math.sqrt(2.0) - 1.0)

    def slope(x, s):
        return (x - denoise(x, s, t)) / s

    def churn(x, s, i):
        if config.S_churn == 0:
            return x, s
        gamma = jnp.where((s >= config.S_min) & (s <= config.S_max), gamma_max, 0.0)
        s_hat = s * (1.0 + gamma)
        fresh = gp_noise(jax.random.fold_in(key, i), chol, shape)
        # sqrt(s_hat² − s²) written so that γ = 0 gives exactly 0 (the difference can round below 0)
        return x + s * jnp.sqrt(gamma * (2.0 + gamma)) * config.S_noise * fresh, s_hat

    def heun(x, i):
        s, s_next = sigmas[i], sigmas[i + 1]
        x_hat, s_hat = churn(x, s, i)
        d = slope(x_hat, s_hat)
        x_euler = x_hat + (s_next - s_hat) * d
        x_next = x_hat + (s_next - s_hat) * 0.5 * (d + slope(x_euler, s_next))
        return x_next, None

    x, _ = jax.lax.scan(heun, x, jnp.arange(num_steps - 1))
    # last step to σ = 0: Euler, since the slope at σ = 0 is undefined
    i = num_steps - 1
    x_hat, s_hat = churn(x, sigmas[i], i)
    return x_hat + (sigmas[i + 1] - s_hat) * slope(x_hat, s_hat)
