"""Jittered Cholesky factors of kernel matrices, GP noise along the time axis, leave-one-out weights.

Jitter convention: relative to the mean of the kernel matrix's diagonal (see `sdift_prob.gp`).
"""

from __future__ import annotations

import math
from typing import Any
import warnings

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray
import numpy as np
import scipy.linalg

from ..errors import NumericalError, bad_input
from .kernels import TemporalKernel, _is_traced, validate_times


def _check_square(K: Any, argument: str) -> None:
    shape = getattr(K, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
        raise bad_input(argument, "a square (M, M) matrix", f"shape {shape}")


def _jitter_scale(K: np.ndarray) -> float:
    scale = float(np.mean(np.diag(K)))
    return scale if scale > 0 else 1.0


def cholesky_with_jitter(
    K: Float[ArrayLike, "M M"], jitter: float = 1e-5, max_tries: int = 5
) -> Float[np.ndarray, "M M"]:
    """Lower Cholesky factor of a kernel matrix, adding jitter until it succeeds.

    Computed in float64 with NumPy on concrete input (use `cholesky_jittered` inside traced
    code). Tries `K + j mean(diag K) I` for `j = jitter, 10 jitter, 100 jitter, ...`
    (`max_tries` values); warns when more than `jitter` was needed.

    **Arguments:**

    - `K`: symmetric kernel matrix, shape `(M, M)`.
    - `jitter`: base relative jitter (≥ 0).
    - `max_tries`: how many jitter values to try (≥ 1).

    **Returns:** lower-triangular `L` (float64 NumPy array, shape `(M, M)`) with
    `L Lᵀ = K + j mean(diag K) I`.

    **Raises:** `NumericalError` when no jitter works, explaining the usual causes.
    """
    if _is_traced(K):
        raise bad_input("K", "a concrete matrix (inside jit use cholesky_jittered)", "a tracer")
    _check_square(K, "K")
    if not (isinstance(jitter, (int, float)) and math.isfinite(jitter) and jitter >= 0):
        raise bad_input("jitter", "a finite number >= 0", jitter)
    if not (isinstance(max_tries, int) and max_tries >= 1):
        raise bad_input("max_tries", "an integer >= 1", max_tries)
    A = np.asarray(K, dtype=np.float64)
    if not np.isfinite(A).all():
        raise NumericalError("K: the kernel matrix has non-finite entries (check the time stamps and kernel)")
    if not np.allclose(A, A.T, rtol=1e-5, atol=1e-8 * max(1.0, float(np.abs(A).max()))):
        raise bad_input("K", "a symmetric matrix", "a non-symmetric matrix")
    scale = _jitter_scale(A)
    eye = np.eye(A.shape[0])
    j = float(jitter)
    for attempt in range(max_tries):
        try:
            L = np.linalg.cholesky(A + j * scale * eye)
        except np.linalg.LinAlgError:
            L = None
        # LAPACK accepts pivots that are positive only by round-off (exactly duplicated time
        # stamps); such a factor is meaningless, so demand pivots clearly above round-off.
        floor = 100.0 * np.finfo(np.float64).eps * A.shape[0] * scale
        if L is not None and np.isfinite(L).all() and float(np.min(np.diag(L))) ** 2 > floor:
            if attempt > 0:
                warnings.warn(
                    f"cholesky_with_jitter: the kernel matrix needed relative jitter {j:g} "
                    f"(base {jitter:g}) to be positive definite; time stamps may be nearly "
                    "duplicated or the lengthscale long relative to their spacing",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return L
        j = j * 10.0 if j > 0 else 1e-10
    raise NumericalError(
        f"K ({A.shape[0]}x{A.shape[0]}) is not positive definite even with relative jitter {j / 10:g}. "
        "This usually means two time stamps are identical or nearly identical, or the kernel "
        "lengthscale is long relative to the spacing of the time stamps so that the kernel matrix is "
        "numerically rank-deficient. Remove duplicate time stamps, shorten the lengthscale, or "
        "raise the jitter."
    )


def cholesky_jittered(K: Float[Array, "M M"], jitter: float = 1e-5) -> Float[Array, "M M"]:
    """Lower Cholesky factor of `K + jitter mean(diag K) I`, jit-safe (no retries, no checks of values).

    **Arguments:**

    - `K`: symmetric kernel matrix, shape `(M, M)` (may be traced).
    - `jitter`: relative jitter.

    **Returns:** `L`, shape `(M, M)`, in the dtype of `K`; NaN entries when the factorisation fails
    (check with `jnp.isfinite` or use `cholesky_with_jitter` on concrete input).
    """
    _check_square(K, "K")
    K = jnp.asarray(K)
    scale = jnp.mean(jnp.diagonal(K))
    scale = jnp.where(scale > 0, scale, 1.0)
    return jnp.linalg.cholesky(K + jitter * scale * jnp.eye(K.shape[0], dtype=K.dtype))


def time_cholesky(kernel: TemporalKernel, t: Float[ArrayLike, " M"], jitter: float = 1e-5) -> Float[Array, "M M"]:
    """Cholesky factor of a kernel matrix over time stamps, the way the rest of the package builds it.

    On concrete input: validates `t`, builds the kernel matrix in float64 and factors it with
    `cholesky_with_jitter` (adaptive jitter, warning when raised). On traced input: the fixed-jitter
    `cholesky_jittered` in the traced dtype.

    **Arguments:**

    - `kernel`: the temporal kernel.
    - `t`: time stamps, shape `(M,)`, strictly increasing.
    - `jitter`: base relative jitter.

    **Returns:** lower-triangular `L`, shape `(M, M)`, in JAX's default float dtype when concrete.
    """
    if not isinstance(kernel, TemporalKernel):
        raise bad_input("kernel", "a TemporalKernel", type(kernel).__name__)
    if _is_traced(kernel, t):
        return cholesky_jittered(kernel.gram(t), jitter)
    tt = validate_times(t, "t")
    K = gram_float64(kernel, tt)
    with jax.ensure_compile_time_eval():
        return jnp.asarray(cholesky_with_jitter(K, jitter), dtype=jnp.result_type(float))


def gram_float64(kernel: TemporalKernel, t: Float[ArrayLike, " M"]) -> Float[np.ndarray, "M M"]:
    """Kernel matrix over concrete time stamps, computed in float64 even when JAX runs in float32.

    Evaluated eagerly (`jax.ensure_compile_time_eval`), so it also works while an outer function
    is being traced (e.g. inside a NumPyro model run by NUTS), as long as `kernel` and `t` are
    concrete.

    **Arguments:** `kernel`; `t`, time stamps of shape `(M,)` (not validated beyond shape).

    **Returns:** float64 NumPy array of shape `(M, M)`.
    """
    if _is_traced(kernel, t):
        raise bad_input("t", "concrete time stamps and kernel parameters", "a tracer")
    with jax.ensure_compile_time_eval(), jax.enable_x64(True):
        return np.asarray(kernel.gram(np.asarray(t, dtype=np.float64)), dtype=np.float64)


def gp_noise(
    key: PRNGKeyArray, chol: Float[ArrayLike, "M M"], shape: tuple[int, ...]
) -> Float[Array, "M ..."]:
    """GP-correlated standard noise: `L @ z` along axis 0, `z ~ N(0, I)` of the given shape.

    Every column `[:, i, j, ...]` is an independent draw from `N(0, L Lᵀ)`.

    **Arguments:**

    - `key`: PRNG key.
    - `chol`: lower Cholesky factor `L` of the time covariance, shape `(M, M)`.
    - `shape`: output shape `(M, ...)`; its first entry must equal `M`.

    **Returns:** array of shape `shape`, in the dtype of `chol`.
    """
    _check_square(chol, "chol")
    shape = tuple(shape)
    if len(shape) < 1 or shape[0] != chol.shape[0] or any(
        isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in shape
    ):
        raise bad_input("shape", f"a tuple of non-negative ints starting with M = {chol.shape[0]}", shape)
    chol = jnp.asarray(chol)
    if not jnp.issubdtype(chol.dtype, jnp.floating):
        chol = chol.astype(jnp.result_type(float))
    z = jax.random.normal(key, tuple(int(s) for s in shape), dtype=chol.dtype)
    return jnp.tensordot(chol, z, axes=(1, 0))


def loo_weights(K: Float[ArrayLike, "M M"], jitter: float = 1e-5) -> Float[Array, "M M"]:
    """Leave-one-out GP regression weights for all time stamps at once.

    `C[l, j]` (j ≠ l) is the weight of frame j in the GP prediction of frame l from all the other
    frames, `C[l, :] = k_{l,-l} K_{-l,-l}^{-1}`; equivalently `C[l, j] = -P[l, j] / P[l, l]` with
    `P = (K + jitter)^{-1}` obtained by Cholesky solves (no explicit inverse of K). The diagonal
    is zero.

    On concrete input the factor comes from `cholesky_with_jitter` (float64, adaptive jitter) and
    the result is returned in JAX's default float dtype; on traced input a fixed-jitter factor is
    used.

    **Arguments:**

    - `K`: kernel matrix over the time stamps, shape `(M, M)`, `M ≥ 2`.
    - `jitter`: relative jitter (see the module docstring).

    **Returns:** `C`, shape `(M, M)`.
    """
    _check_square(K, "K")
    if K.shape[0] < 2:
        raise bad_input("K", "at least 2 time stamps for leave-one-out weights", f"shape {K.shape}")
    if _is_traced(K):
        L = cholesky_jittered(K, jitter)
        P = jax.scipy.linalg.cho_solve((L, True), jnp.eye(K.shape[0], dtype=L.dtype))
        C = -P / jnp.diagonal(P)[:, None]
        return C * (1.0 - jnp.eye(K.shape[0], dtype=C.dtype))
    L = cholesky_with_jitter(K, jitter)
    P = scipy.linalg.cho_solve((L, True), np.eye(L.shape[0]))
    C = -P / np.diag(P)[:, None]
    np.fill_diagonal(C, 0.0)
    return jnp.asarray(C, dtype=jnp.result_type(float))
