"""Gaussian processes over time: kernels, jittered Cholesky factors, GP noise, leave-one-out weights.

One GP over (normalised) time is used in three places: it correlates the diffusion noise of the
GPSD prior, it carries evidence between time stamps in MPDPS (leave-one-out weights), and it is
the temporal prior of the conjugate `gp` baseline. The covariances come from GPJax kernels; the
random variables live in NumPyro (`models/`).

Jitter convention: every jitter here is *relative* to the mean of the kernel matrix's diagonal,
`K + jitter * mean(diag K) * I`, so it means the same thing whatever the kernel variance. For a
unit-variance kernel it is the plain `K + jitter * I` of the reference code (`1e-5`).
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import equinox as eqx
import gpjax as gpx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .errors import InputError, NumericalError, bad_input

__all__ = [
    "KERNEL_NAMES",
    "TemporalKernel",
    "validate_times",
    "cholesky_with_jitter",
    "cholesky_jittered",
    "time_cholesky",
    "gram_float64",
    "gp_noise",
    "loo_weights",
    "fit_lengthscale",
]

KERNEL_NAMES = ("rbf", "matern12", "matern32", "matern52")
_GPJAX_KERNELS = {
    "rbf": gpx.kernels.RBF,
    "matern12": gpx.kernels.Matern12,
    "matern32": gpx.kernels.Matern32,
    "matern52": gpx.kernels.Matern52,
}


def _is_traced(*xs: Any) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for x in xs for leaf in jax.tree_util.tree_leaves(x))


def _check_positive_scalar(value: Any, argument: str) -> None:
    if _is_traced(value):
        return
    arr = np.asarray(value)
    if arr.shape != () or not np.issubdtype(arr.dtype, np.number):
        raise bad_input(argument, "a positive finite scalar", value)
    if not np.isfinite(arr) or arr <= 0:
        raise bad_input(argument, "a positive finite scalar", float(arr))


class TemporalKernel(eqx.Module):
    """A stationary kernel over one (normalised) time axis, built with GPJax.

    `rbf`: `v exp(-Δt² / (2 ℓ²))`; `matern12`: `v exp(-|Δt|/ℓ)`;
    `matern32`: `v (1 + √3|Δt|/ℓ) exp(-√3|Δt|/ℓ)`;
    `matern52`: `v (1 + √5|Δt|/ℓ + 5Δt²/(3ℓ²)) exp(-√5|Δt|/ℓ)`.
    The reference diffusion-noise kernel `exp(-50 Δt²)` on `t ∈ [0, 1]` is `rbf` with
    `lengthscale=0.1`, `variance=1`.

    **Arguments:**

    - `name`: one of `"rbf"`, `"matern12"`, `"matern32"`, `"matern52"`.
    - `lengthscale`: ℓ > 0, in the units of the time axis it is applied to.
    - `variance`: v > 0.
    """

    name: str = eqx.field(static=True, default="rbf")
    lengthscale: Any = 0.1
    variance: Any = 1.0

    def __check_init__(self) -> None:
        if self.name not in KERNEL_NAMES:
            raise bad_input("name", f"one of {KERNEL_NAMES}", self.name)
        _check_positive_scalar(self.lengthscale, "lengthscale")
        _check_positive_scalar(self.variance, "variance")

    def gpjax_kernel(self) -> gpx.kernels.AbstractKernel:
        """The equivalent GPJax kernel object (one input dimension)."""
        return _GPJAX_KERNELS[self.name](lengthscale=self.lengthscale, variance=self.variance, n_dims=1)

    def gram(self, t: Float[ArrayLike, " M"]) -> Float[Array, "M M"]:
        """Kernel matrix over time stamps.

        **Arguments:**

        - `t`: time stamps, shape `(M,)`.

        **Returns:** `K` with shape `(M, M)`, `K[i, j] = k(t_i, t_j)` (no jitter added).
        """
        t = _as_time_vector(t, "t")
        return _gram(self, t)

    def cross(self, t1: Float[ArrayLike, " M1"], t2: Float[ArrayLike, " M2"]) -> Float[Array, "M1 M2"]:
        """Cross-covariance between two sets of time stamps.

        **Arguments:**

        - `t1`: shape `(M1,)`; `t2`: shape `(M2,)`.

        **Returns:** shape `(M1, M2)`, entry `[i, j] = k(t1_i, t2_j)`.
        """
        t1 = _as_time_vector(t1, "t1")
        t2 = _as_time_vector(t2, "t2")
        return _cross(self, t1, t2)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (for run manifests)."""
        return {"name": self.name, "lengthscale": float(self.lengthscale), "variance": float(self.variance)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TemporalKernel:
        """Inverse of `to_dict`."""
        if not isinstance(d, dict) or set(d) != {"name", "lengthscale", "variance"}:
            raise bad_input("d", "a dict with keys name, lengthscale, variance", d)
        return cls(name=d["name"], lengthscale=float(d["lengthscale"]), variance=float(d["variance"]))


# One compiled program per (kernel name, shape, dtype) instead of many eagerly dispatched ops.
@jax.jit
def _gram(kernel: TemporalKernel, t: Array) -> Array:
    return kernel.gpjax_kernel().gram(t[:, None]).as_matrix()


@jax.jit
def _cross(kernel: TemporalKernel, t1: Array, t2: Array) -> Array:
    return kernel.gpjax_kernel().cross_covariance(t1[:, None], t2[:, None])


def _as_time_vector(t: Any, argument: str) -> Array:
    arr = t if _is_traced(t) else jnp.asarray(t)
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise bad_input(argument, "a non-empty 1-D array of time stamps", getattr(arr, "shape", t))
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    if not _is_traced(arr) and not bool(jnp.all(jnp.isfinite(arr))):
        bad = int(np.flatnonzero(~np.isfinite(np.asarray(arr)))[0])
        raise bad_input(argument, "finite time stamps", f"{argument}[{bad}] = {float(arr[bad])}")
    return arr


def validate_times(t: ArrayLike, argument: str = "t") -> np.ndarray:
    """Check a vector of time stamps: 1-D, non-empty, finite, strictly increasing.

    **Arguments:**

    - `t`: time stamps, shape `(M,)` (concrete: NumPy or an eager JAX array).
    - `argument`: the argument name to put in error messages.

    **Returns:** the time stamps as a float64 NumPy array of shape `(M,)`.

    **Raises:** `InputError` naming `argument` and the first offending index; repeated time stamps
    are reported as duplicates.
    """
    if _is_traced(t):
        raise bad_input(argument, "concrete time stamps (validate_times cannot run under jit)", "a tracer")
    try:
        arr = np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise bad_input(argument, "a 1-D array of real time stamps", t) from exc
    if arr.ndim != 1 or arr.size == 0:
        raise bad_input(argument, "a non-empty 1-D array of time stamps", f"shape {arr.shape}")
    finite = np.isfinite(arr)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise bad_input(argument, "finite time stamps", f"{argument}[{i}] = {arr[i]}")
    diffs = np.diff(arr)
    if (diffs <= 0).any():
        i = int(np.flatnonzero(diffs <= 0)[0]) + 1
        if diffs[i - 1] == 0:
            raise InputError(
                f"{argument}: expected strictly increasing time stamps, got a duplicate: "
                f"{argument}[{i}] = {float(arr[i])!r} repeats {argument}[{i - 1}]"
            )
        raise InputError(
            f"{argument}: expected strictly increasing time stamps, got "
            f"{argument}[{i}] = {float(arr[i])!r} after {argument}[{i - 1}] = {float(arr[i - 1])!r}"
        )
    return arr


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
