"""Kernel lengthscale (and variance) of core sequences by GP marginal likelihood.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float
import numpy as np
import optax

from ..errors import NumericalError, bad_input
from .kernels import TemporalKernel, _GPJAX_KERNELS, validate_times


def _gp_nll(name: str, t: Array, S: Array, n: Array, jitter: Array, ell: Array, var: Array) -> Array:
    # Negative log marginal likelihood per series (constants dropped) of n zero-mean series with
    # scatter matrix S under covariance var * (R(ell) + jitter I).
    T = t.shape[0]
    R = _GPJAX_KERNELS[name](lengthscale=ell, variance=1.0, n_dims=1).gram(t[:, None]).as_matrix()
    L = jnp.linalg.cholesky(R + jitter * jnp.eye(T, dtype=t.dtype))
    quad = jnp.trace(jax.scipy.linalg.cho_solve((L, True), S))
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))
    nll = 0.5 * (quad / var + n * logdet + n * T * jnp.log(var)) / n
    return jnp.where(jnp.isfinite(nll), nll, jnp.inf)


@functools.partial(jax.jit, static_argnames=("name", "fit_variance", "num_steps", "learning_rate"))
def _fit_kernel_params(
    t: Array, S: Array, n: Array, jitter: Array, v_fixed: Array, ells: Array,
    *, name: str, fit_variance: bool, num_steps: int, learning_rate: float,
) -> tuple[Array, Array, Array]:
    T = t.shape[0]

    # Start: grid over lengthscales with the variance at its closed-form optimum quad / (n T).
    def profile(ell: Array) -> tuple[Array, Array]:
        R = _GPJAX_KERNELS[name](lengthscale=ell, variance=1.0, n_dims=1).gram(t[:, None]).as_matrix()
        L = jnp.linalg.cholesky(R + jitter * jnp.eye(T, dtype=t.dtype))
        v = jnp.trace(jax.scipy.linalg.cho_solve((L, True), S)) / (n * T) if fit_variance else v_fixed
        v = jnp.where(jnp.isfinite(v) & (v > 0), v, 1.0)
        return _gp_nll(name, t, S, n, jitter, ell, v), v

    scores, vs = jax.vmap(profile)(ells)
    i = jnp.argmin(scores)
    params = {"log_ell": jnp.log(ells[i]), "log_var": jnp.log(vs[i])}

    def loss(p: dict[str, Array]) -> Array:
        var = jnp.exp(p["log_var"]) if fit_variance else v_fixed
        return _gp_nll(name, t, S, n, jitter, jnp.exp(p["log_ell"]), var)

    opt = optax.adam(learning_rate)

    def step(carry, _):
        p, state, best_p, best_f = carry
        f, g = jax.value_and_grad(loss)(p)
        better = f < best_f
        best_p = jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), p, best_p)
        best_f = jnp.where(better, f, best_f)
        g = jax.tree_util.tree_map(lambda x: jnp.where(jnp.isfinite(x), x, 0.0), g)
        upd, state = opt.update(g, state, p)
        return (optax.apply_updates(p, upd), state, best_p, best_f), None

    init = (params, opt.init(params), params, loss(params))
    (p, _, best_p, best_f), _ = jax.lax.scan(step, init, None, length=num_steps)
    f_last = loss(p)
    use_last = f_last < best_f
    best_p = jax.tree_util.tree_map(lambda a, b: jnp.where(use_last, a, b), p, best_p)
    log_var = best_p["log_var"] if fit_variance else jnp.log(v_fixed)
    return best_p["log_ell"], log_var, jnp.minimum(f_last, best_f)


def _profile_grid(t: np.ndarray) -> np.ndarray:
    gaps = np.diff(t)
    lo = float(gaps.min()) / 4.0
    hi = 4.0 * float(t[-1] - t[0])
    return np.geomspace(lo, hi, 48)


def fit_lengthscale(
    sequences: Float[ArrayLike, "B T ..."],
    t: Float[ArrayLike, " T"],
    kernel: TemporalKernel | None = None,
    *,
    fit_variance: bool = True,
    jitter: float = 1e-5,
    num_steps: int = 300,
    learning_rate: float = 0.05,
) -> TemporalKernel:
    """Fit the kernel lengthscale (and variance) by maximising the GP marginal likelihood.

    Each `(trajectory, entry)` series over time, after removing the per-entry mean (over
    trajectories and time), is treated as an independent draw of a zero-mean GP with covariance
    `k(t, t') + jitter mean(diag k) I`. The jitter acts as a small nugget: series smoother than
    that (e.g. exact RBF draws, whose covariance has eigenvalues far below the jitter) get a
    somewhat low variance estimate. The start value comes from a grid over lengthscales (with the
    variance at its closed-form optimum); Adam (optax) on the log-parameters refines it, keeping
    the best value seen. Computed in float64; the optimiser is compiled once per
    `(T, kernel name, fit_variance, num_steps, learning_rate)`.

    **Arguments:**

    - `sequences`: shape `(B, T, ...)`: B trajectories, T time stamps, any entry shape.
    - `t`: time stamps, shape `(T,)`, strictly increasing, `T ≥ 3`.
    - `kernel`: kernel family (its `name`) and the variance kept when `fit_variance=False`;
      default `TemporalKernel("rbf")`.
    - `fit_variance`: also fit the variance (else keep `kernel.variance`).
    - `jitter`, `num_steps`, `learning_rate`: numerical settings.

    **Returns:** a `TemporalKernel` of the same family with the fitted parameters.
    """
    kernel = TemporalKernel() if kernel is None else kernel
    if not isinstance(kernel, TemporalKernel):
        raise bad_input("kernel", "a TemporalKernel", type(kernel).__name__)
    tt = validate_times(t, "t")
    if tt.size < 3:
        raise bad_input("t", "at least 3 time stamps to fit a lengthscale", f"{tt.size} time stamps")
    y = np.asarray(sequences, dtype=np.float64)
    if y.ndim < 2 or y.shape[1] != tt.size or y.shape[0] < 1:
        raise bad_input("sequences", f"an array of shape (B, T={tt.size}, ...)", f"shape {y.shape}")
    if not np.isfinite(y).all():
        raise bad_input("sequences", "finite values", "NaN or infinite entries")
    if not (isinstance(num_steps, int) and num_steps >= 0):
        raise bad_input("num_steps", "an integer >= 0", num_steps)
    if not (isinstance(learning_rate, (int, float)) and learning_rate > 0):
        raise bad_input("learning_rate", "a positive number", learning_rate)
    if not (isinstance(jitter, (int, float)) and math.isfinite(jitter) and jitter >= 0):
        raise bad_input("jitter", "a finite number >= 0", jitter)
    B, T = y.shape[:2]
    series = y.reshape(B, T, -1)
    series = series - series.mean(axis=(0, 1), keepdims=True)
    series = np.moveaxis(series, 1, 0).reshape(T, -1)  # (T, n): one column per series
    n = series.shape[1]
    S = series @ series.T
    if not np.trace(S) > 0:
        raise bad_input("sequences", "series that vary over time (after removing each entry's mean)", "constant series")

    ells = _profile_grid(tt)
    with jax.enable_x64(True):
        log_ell, log_var, best = _fit_kernel_params(
            jnp.asarray(tt), jnp.asarray(S), jnp.asarray(float(n)), jnp.asarray(float(jitter)),
            jnp.asarray(float(kernel.variance)), jnp.asarray(ells),
            name=kernel.name, fit_variance=bool(fit_variance), num_steps=num_steps,
            learning_rate=float(learning_rate),
        )
        ell, var, best = float(jnp.exp(log_ell)), float(jnp.exp(log_var)), float(best)
    if not math.isfinite(best):
        raise NumericalError("fit_lengthscale: no lengthscale gave a positive-definite kernel matrix")
    if not (math.isfinite(ell) and math.isfinite(var) and ell > 0 and var > 0):
        raise NumericalError(f"fit_lengthscale: optimisation diverged (lengthscale {ell}, variance {var})")
    return TemporalKernel(kernel.name, ell, var)
