"""GP temporal prior over FTM cores, and its exact posterior under Gaussian observations.

Prior: every core entry follows an independent GP over (normalised) time,
`vec(W) ~ N(m, K_t ⊗ Σ)` with `vec` time-major (index `m * D + d`) and `Σ = diag(core_scale²)`.
With the linear FTM observation operator and Gaussian noise the posterior is Gaussian and
available in closed form: this is the `gp` baseline sampler (`sample_conjugate`).

The closed form works in **observation space** when there are fewer valid observations `N` than
core unknowns `M·D` (the usual sparse case): with `C = K_t ⊗ Σ` and `R = diag(σ²)`,
`S = A C Aᵀ + R` (N×N), mean `m + C Aᵀ S⁻¹ (y - A m)`, variances `diag C - diag(C Aᵀ S⁻¹ A C)`,
draws by pathwise conditioning (Matheron's rule) `w + C Aᵀ S⁻¹ (y - A w - ε)` with
`w ~ N(m, C)`, `ε ~ N(0, R)`. Otherwise it works in whitened **parameter space**
(`W = m + L_C u`, precision `I + Bᵀ R⁻¹ B`, `B = A L_C`, an `M·D`-square matrix). Both use only
Cholesky factorisations and triangular solves, in float64 NumPy.

`gp_temporal_prior` (site `"cores"`, a `KroneckerTimeNormal`) is the reference NumPyro model of the
`gp` sampler: `sample_conjugate` with a run's `GPPriorParams` draws from exactly that model (same
kernel, per-entry mean and scale, jitter) conditioned on Gaussian observations through the design
rows (`tests/test_models.py::test_gp_sampler_posterior_is_the_conditioned_gp_temporal_prior`). The
sampler does not trace the model: it solves the same Gaussian in closed form instead, which NUTS or
SVI on the model (with `models.observation.observation_model`) would only approximate.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import scipy.linalg
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray
from numpyro.distributions import constraints

from sdift_prob.errors import NumericalError, bad_input
from sdift_prob.gp import (
    TemporalKernel,
    cholesky_with_jitter,
    fit_lengthscale,
    gram_float64,
    time_cholesky,
    validate_times,
)
from sdift_prob.validation import check_count

__all__ = [
    "KroneckerTimeNormal",
    "gp_temporal_prior",
    "GPPriorParams",
    "CorePosterior",
    "conjugate_posterior",
    "sample_conjugate",
]


class KroneckerTimeNormal(dist.Distribution):
    """Gaussian over a core sequence `W (M, R1..RK)` with covariance `(L Lᵀ) ⊗ diag(scale²)`.

    Each core entry `e` is an independent Gaussian over time: `W[:, e] ~ N(loc[:, e], scale_e² L Lᵀ)`.

    **Arguments:**

    - `loc`: shape `(M, R1..RK)`.
    - `time_chol`: lower Cholesky factor `L` of the time covariance, shape `(M, M)`.
    - `entry_scale`: positive, shape `(R1..RK)` (or broadcastable to it).
    """

    arg_constraints = {
        "loc": constraints.real,
        "time_chol": constraints.lower_cholesky,
        "entry_scale": constraints.positive,
    }
    pytree_data_fields = ("loc", "time_chol", "entry_scale")
    reparametrized_params = ["loc", "time_chol", "entry_scale"]

    def __init__(
        self, loc: ArrayLike, time_chol: ArrayLike, entry_scale: ArrayLike, *, validate_args: bool | None = None
    ):
        self.loc = jnp.asarray(loc)
        self.time_chol = jnp.asarray(time_chol)
        self.entry_scale = jnp.broadcast_to(jnp.asarray(entry_scale), self.loc.shape[1:])
        super().__init__(batch_shape=(), event_shape=self.loc.shape, validate_args=validate_args)

    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, len(self.event_shape))

    def sample(self, key: PRNGKeyArray, sample_shape: tuple[int, ...] = ()) -> Array:
        shape = tuple(sample_shape) + self.event_shape
        z = jax.random.normal(key, shape, dtype=self.loc.dtype)
        n = len(sample_shape)
        # Apply L along the time axis (axis n of each draw).
        lz = jnp.moveaxis(jnp.tensordot(self.time_chol, jnp.moveaxis(z, n, 0), axes=(1, 0)), 0, n)
        return self.loc + self.entry_scale * lz

    def log_prob(self, value: ArrayLike) -> Array:
        M = self.event_shape[0]
        E = int(np.prod(self.event_shape[1:]))
        r = (jnp.asarray(value) - self.loc) / self.entry_scale
        batch = r.shape[: r.ndim - len(self.event_shape)]
        r = jnp.moveaxis(r.reshape(batch + (M, E)), -2, 0).reshape(M, -1)
        u = jax.scipy.linalg.solve_triangular(self.time_chol, r, lower=True)
        quad = jnp.sum(jnp.moveaxis(u.reshape((M,) + batch + (E,)), 0, -2) ** 2, axis=(-2, -1))
        logdet = E * jnp.sum(jnp.log(jnp.diagonal(self.time_chol))) + M * jnp.sum(jnp.log(self.entry_scale))
        return -0.5 * quad - logdet - 0.5 * M * E * math.log(2.0 * math.pi)

    @property
    def mean(self) -> Array:
        return self.loc

    @property
    def variance(self) -> Array:
        time_var = jnp.sum(self.time_chol**2, axis=1)
        return time_var.reshape((-1,) + (1,) * (len(self.event_shape) - 1)) * self.entry_scale**2


def _check_core_shape(core_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(r) for r in core_shape)
    except TypeError:
        raise bad_input("core_shape", "a tuple of positive ints (R1, ..., RK)", core_shape) from None
    if len(shape) < 1 or any(r < 1 for r in shape) or any(int(r) != r for r in core_shape):
        raise bad_input("core_shape", "a tuple of positive ints (R1, ..., RK)", core_shape)
    return shape


def _entry_array(value: Any, core_shape: tuple[int, ...], argument: str, positive: bool) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    try:
        arr = np.broadcast_to(arr, core_shape)
    except ValueError:
        expected = f"a scalar or an array broadcastable to the core shape {core_shape}"
        raise bad_input(argument, expected, f"shape {arr.shape}") from None
    if not np.isfinite(arr).all() or (positive and not (arr > 0).all()):
        raise bad_input(argument, "positive finite values" if positive else "finite values", value)
    return arr


def gp_temporal_prior(
    times: Float[ArrayLike, " M"],
    core_shape: tuple[int, ...],
    kernel: TemporalKernel,
    core_mean: float | ArrayLike = 0.0,
    core_scale: float | ArrayLike = 1.0,
    *,
    jitter: float = 1e-5,
) -> Float[Array, "M *R"]:
    """NumPyro model: the core sequence as independent GPs over time, one per core entry.

    The reference model of the `gp` sampler (see the module docstring): with
    `GPPriorParams(kernel, core_mean, core_scale, jitter)` conditioned on Gaussian observations it
    is the posterior `conjugate_posterior` / `sample_conjugate` compute in closed form.

    Site `"cores"` of shape `(M, R1..RK)` with `vec(W) ~ N(mean, K_t ⊗ diag(core_scale²))`,
    `K_t = kernel.gram(times)` plus relative jitter (`sdift_prob.gp.time_cholesky`).

    **Arguments:**

    - `times`: normalised time stamps, shape `(M,)`, strictly increasing.
    - `core_shape`: `(R1, ..., RK)`.
    - `kernel`: the temporal kernel (use variance 1 when `core_scale` carries the scale).
    - `core_mean`, `core_scale`: scalars or arrays broadcastable to `core_shape`.
    - `jitter`: base relative jitter of the time covariance.

    **Returns:** the sampled (or conditioned) cores, shape `(M, R1..RK)`.
    """
    shape = _check_core_shape(core_shape)
    if not isinstance(kernel, TemporalKernel):
        raise bad_input("kernel", "a TemporalKernel", type(kernel).__name__)
    L = time_cholesky(kernel, times, jitter)
    mean = jnp.asarray(_entry_array(core_mean, shape, "core_mean", positive=False), dtype=L.dtype)
    scale = jnp.asarray(_entry_array(core_scale, shape, "core_scale", positive=True), dtype=L.dtype)
    M = L.shape[0]
    loc = jnp.broadcast_to(mean, (M,) + shape)
    return numpyro.sample("cores", KroneckerTimeNormal(loc, L, scale))


class GPPriorParams(eqx.Module):
    """Parameters of the GP temporal prior: kernel and per-entry mean and scale of the cores.

    **Fields:**

    - `kernel`: `TemporalKernel` (variance 1 when fitted by `from_training_cores`).
    - `core_mean`, `core_scale`: NumPy float64 arrays of shape `(R1..RK)` (FTM core units).
    - `jitter`: relative jitter of the time covariance.
    """

    kernel: TemporalKernel
    core_mean: np.ndarray
    core_scale: np.ndarray
    jitter: float = eqx.field(static=True, default=1e-5)

    def __check_init__(self) -> None:
        if not isinstance(self.kernel, TemporalKernel):
            raise bad_input("kernel", "a TemporalKernel", type(self.kernel).__name__)
        shape = np.shape(self.core_mean)
        if len(shape) < 1 or np.shape(self.core_scale) != shape:
            raise bad_input("core_scale", f"an array of the core shape {shape}", np.shape(self.core_scale))
        _entry_array(self.core_mean, shape, "core_mean", positive=False)
        _entry_array(self.core_scale, shape, "core_scale", positive=True)
        if not (isinstance(self.jitter, (int, float)) and self.jitter >= 0):
            raise bad_input("jitter", "a number >= 0", self.jitter)

    @property
    def core_shape(self) -> tuple[int, ...]:
        return tuple(np.shape(self.core_mean))

    @classmethod
    def from_training_cores(
        cls,
        cores: Float[ArrayLike, "B T *R"],
        times_norm: Float[ArrayLike, " T"],
        *,
        kernel: TemporalKernel | None = None,
        jitter: float = 1e-5,
        num_steps: int = 300,
    ) -> GPPriorParams:
        """Estimate the prior from training cores.

        Per-entry mean and standard deviation over trajectories and time; the lengthscale is
        fitted by `fit_lengthscale` on the standardised cores with the kernel variance fixed
        at 1 (so `core_scale` carries each entry's scale).

        **Arguments:**

        - `cores`: FTM cores of the training trajectories, shape `(B, T, R1..RK)`.
        - `times_norm`: normalised time stamps, shape `(T,)`, `T ≥ 3`.
        - `kernel`: kernel family and starting lengthscale (default RBF, lengthscale 0.1).
        - `jitter`, `num_steps`: passed on.

        **Returns:** `GPPriorParams`.
        """
        arr = np.asarray(cores, dtype=np.float64)
        tt = validate_times(times_norm, "times_norm")
        if arr.ndim < 3 or arr.shape[1] != tt.size:
            raise bad_input("cores", f"an array of shape (B, T={tt.size}, R1, ..., RK)", f"shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise bad_input("cores", "finite values", "NaN or infinite entries")
        mean = arr.mean(axis=(0, 1))
        scale = arr.std(axis=(0, 1))
        if not (scale > 0).all():
            idx = tuple(int(i) for i in np.argwhere(~(scale > 0))[0])
            raise bad_input("cores", "every core entry to vary over trajectories and time", f"entry {idx} is constant")
        if kernel is None:
            base = TemporalKernel("rbf", 0.1, 1.0)
        else:
            base = TemporalKernel(kernel.name, kernel.lengthscale, 1.0)
        fitted = fit_lengthscale((arr - mean) / scale, tt, base, fit_variance=False, jitter=jitter, num_steps=num_steps)
        return cls(kernel=fitted, core_mean=mean, core_scale=scale, jitter=jitter)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "kernel": self.kernel.to_dict(),
            "core_mean": np.asarray(self.core_mean).tolist(),
            "core_scale": np.asarray(self.core_scale).tolist(),
            "jitter": float(self.jitter),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPPriorParams:
        """Inverse of `to_dict`."""
        if not isinstance(d, dict) or set(d) != {"kernel", "core_mean", "core_scale", "jitter"}:
            raise bad_input("d", "a dict with keys kernel, core_mean, core_scale, jitter", d)
        return cls(
            kernel=TemporalKernel.from_dict(d["kernel"]),
            core_mean=np.asarray(d["core_mean"], dtype=np.float64),
            core_scale=np.asarray(d["core_scale"], dtype=np.float64),
            jitter=float(d["jitter"]),
        )


class CorePosterior(NamedTuple):
    """Exact Gaussian posterior of the cores: per-entry `mean` and `variance`, shape `(M, R1..RK)`."""

    mean: Array
    variance: Array


class _Problem(NamedTuple):
    m0: np.ndarray  # (M, D) prior mean
    s: np.ndarray  # (D,) prior std per entry
    LK: np.ndarray  # (M, M) time Cholesky factor (jitter included)
    tm: np.ndarray  # (N,) time index of each valid observation
    a: np.ndarray  # (N, D) design rows
    y: np.ndarray  # (N,)
    r2: np.ndarray  # (N,) noise variances
    core_shape: tuple[int, ...]


def _build_problem(params: GPPriorParams, design: Any, padded: Any, sigma: Any, times: Any) -> _Problem:
    if not isinstance(params, GPPriorParams):
        raise bad_input("params", "a GPPriorParams", type(params).__name__)
    tt = validate_times(times, "times")
    M = tt.size
    core_shape = params.core_shape
    D = int(np.prod(core_shape))
    A = np.asarray(design, dtype=np.float64)
    if A.ndim != 3 or A.shape[0] != M or A.shape[2] != D:
        raise bad_input("design", f"an array of shape (M={M}, P, D={D})", f"shape {A.shape}")
    P = A.shape[1]
    for name in ("values", "mask", "noise_scale"):
        if not hasattr(padded, name):
            raise bad_input("padded", "a PaddedObservations", type(padded).__name__)
        if np.shape(getattr(padded, name)) != (M, P):
            raise bad_input(f"padded.{name}", f"shape (M={M}, P={P}) matching design", np.shape(getattr(padded, name)))
    mask = np.asarray(padded.mask)
    if mask.dtype != np.bool_:
        raise bad_input("padded.mask", "a boolean array", mask.dtype)
    values = np.asarray(padded.values, dtype=np.float64)
    if isinstance(sigma, str):
        if sigma != "metadata":
            raise bad_input("sigma", "a positive number, an array broadcastable to (M, P), or 'metadata'", sigma)
        sig = np.asarray(padded.noise_scale, dtype=np.float64)
        what = "padded.noise_scale"
    else:
        if sigma is None:
            raise bad_input("sigma", "a positive noise level (the conjugate posterior needs it fixed)", sigma)
        try:
            sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (M, P))
        except ValueError:
            expected = f"a scalar or an array broadcastable to (M={M}, P={P})"
            raise bad_input("sigma", expected, f"shape {np.shape(sigma)}") from None
        what = "sigma"
    tm, pm = np.nonzero(mask)
    y = values[tm, pm]
    if not np.isfinite(y).all():
        i = int(np.flatnonzero(~np.isfinite(y))[0])
        raise bad_input("padded.values", "finite values at every valid point", f"values[{tm[i]}, {pm[i]}] = {y[i]}")
    sv = sig[tm, pm]
    if not (np.isfinite(sv) & (sv > 0)).all():
        i = int(np.flatnonzero(~(np.isfinite(sv) & (sv > 0)))[0])
        raise bad_input(what, "positive finite noise levels at every valid point", f"[{tm[i]}, {pm[i]}] = {sv[i]}")
    a = A[tm, pm]
    if not np.isfinite(a).all():
        raise bad_input("design", "finite rows at every valid point", "NaN or infinite entries")
    K = gram_float64(params.kernel, tt)
    LK = cholesky_with_jitter(K, params.jitter)
    m0 = np.broadcast_to(np.asarray(params.core_mean, dtype=np.float64).reshape(-1), (M, D))
    s = np.asarray(params.core_scale, dtype=np.float64).reshape(-1)
    return _Problem(m0, s, LK, tm, a, y, sv**2, core_shape)


def _cholesky(S: np.ndarray, what: str) -> np.ndarray:
    try:
        return np.linalg.cholesky(S)
    except np.linalg.LinAlgError:
        raise NumericalError(f"conjugate posterior: the {what} matrix is not positive definite; "
                             "check for zero noise levels or non-finite design rows") from None


def _choose(pb: _Problem, method: str) -> str:
    if method not in ("auto", "observation", "parameter"):
        raise bad_input("method", "'auto', 'observation' or 'parameter'", method)
    if method != "auto":
        return method
    return "observation" if pb.y.size <= pb.m0.size else "parameter"


def _observation_space(pb: _Problem) -> tuple[np.ndarray, np.ndarray, Any]:
    M, D = pb.m0.shape
    N = pb.y.size
    K = pb.LK @ pb.LK.T
    as2 = pb.a * pb.s**2  # (N, D): rows of A scaled by Σ
    AC = (K[pb.tm][:, :, None] * as2[:, None, :]).reshape(N, M * D)  # A C, (N, MD)
    S = K[np.ix_(pb.tm, pb.tm)] * (as2 @ pb.a.T) + np.diag(pb.r2)
    LS = _cholesky(S, "observation-space")
    resid = pb.y - np.sum(pb.a * pb.m0[pb.tm], axis=1)
    mean = pb.m0.reshape(-1) + AC.T @ scipy.linalg.cho_solve((LS, True), resid)
    V = scipy.linalg.solve_triangular(LS, AC, lower=True)
    var = (np.diag(K)[:, None] * pb.s[None, :] ** 2).reshape(-1) - np.sum(V**2, axis=0)

    def condition(w_prior: np.ndarray, eps: np.ndarray) -> np.ndarray:
        # Matheron's rule, batched over draws: w + C Aᵀ S⁻¹ (y - A w - ε).
        Aw = np.sum(pb.a[None] * w_prior.reshape(-1, M, D)[:, pb.tm], axis=-1)  # (n, N)
        rhs = (pb.y[None] - Aw - eps).T
        return w_prior + (AC.T @ scipy.linalg.cho_solve((LS, True), rhs)).T

    return mean, var, condition


def _parameter_space(pb: _Problem) -> tuple[np.ndarray, np.ndarray, Any]:
    M, D = pb.m0.shape
    N = pb.y.size
    LC = np.kron(pb.LK, np.diag(pb.s))  # (MD, MD), L_K ⊗ diag(s)
    B = (pb.LK[pb.tm][:, :, None] * (pb.a * pb.s)[:, None, :]).reshape(N, M * D)
    Bw = B / pb.r2[:, None]
    Lam = np.eye(M * D) + B.T @ Bw
    LL = _cholesky(Lam, "posterior precision")
    resid = pb.y - np.sum(pb.a * pb.m0[pb.tm], axis=1)
    mu_u = scipy.linalg.cho_solve((LL, True), Bw.T @ resid)
    mean = pb.m0.reshape(-1) + LC @ mu_u
    G = scipy.linalg.solve_triangular(LL, LC.T, lower=True)
    var = np.sum(G**2, axis=0)

    def condition_white(z: np.ndarray) -> np.ndarray:
        u = mu_u[None] + scipy.linalg.solve_triangular(LL.T, z.T, lower=False).T
        return pb.m0.reshape(-1)[None] + u @ LC.T

    return mean, var, condition_white


def conjugate_posterior(
    params: GPPriorParams,
    design: Float[ArrayLike, "M P D"],
    padded: Any,
    sigma: float | ArrayLike | str,
    times: Float[ArrayLike, " M"],
    *,
    method: str = "auto",
) -> CorePosterior:
    """Exact posterior of the cores under the GP prior and a Gaussian likelihood.

    **Arguments:**

    - `params`: `GPPriorParams` (kernel, per-entry mean and scale).
    - `design`: design rows, shape `(M, P, D)`.
    - `padded`: `PaddedObservations` in normalised field units, shapes `(M, P)`.
    - `sigma`: Gaussian noise std (normalised units): positive number, positive array
      broadcastable to `(M, P)`, or `"metadata"` (`padded.noise_scale`).
    - `times`: normalised time stamps of the `M` frames, shape `(M,)`.
    - `method`: `"auto"` (observation space when `N ≤ M·D`), `"observation"` or `"parameter"`.

    **Returns:** `CorePosterior(mean, variance)`, each shape `(M, R1..RK)`, in JAX's default float
    dtype (computed in float64).
    """
    pb = _build_problem(params, design, padded, sigma, times)
    how = _choose(pb, method)
    mean, var, _ = _observation_space(pb) if how == "observation" else _parameter_space(pb)
    M = pb.m0.shape[0]
    out_shape = (M,) + pb.core_shape
    var = np.maximum(var, 0.0)  # round-off can leave tiny negatives where the data pin an entry
    dtype = jnp.result_type(float)
    return CorePosterior(
        jnp.asarray(mean.reshape(out_shape), dtype=dtype), jnp.asarray(var.reshape(out_shape), dtype=dtype)
    )


def sample_conjugate(
    key: PRNGKeyArray,
    params: GPPriorParams,
    design: Float[ArrayLike, "M P D"],
    padded: Any,
    sigma: float | ArrayLike | str,
    times: Float[ArrayLike, " M"],
    num_draws: int,
    *,
    method: str = "auto",
) -> Float[Array, "num_draws M *R"]:
    """Draws from the exact posterior of the cores (the `gp` baseline sampler).

    Observation space: pathwise conditioning of prior draws (Matheron's rule); parameter space:
    whitened draws through the posterior precision's Cholesky factor. Draw `i` depends only on
    `jax.random.split(key, num_draws)[i]`.

    **Arguments:** `key`; `num_draws ≥ 1`; the rest as `conjugate_posterior`.

    **Returns:** shape `(num_draws, M, R1..RK)`, in JAX's default float dtype.
    """
    num_draws = check_count(num_draws, "num_draws")
    pb = _build_problem(params, design, padded, sigma, times)
    how = _choose(pb, method)
    M, D = pb.m0.shape
    N = pb.y.size
    keys = jax.random.split(key, num_draws)

    def normals(k: PRNGKeyArray) -> tuple[Array, Array]:
        kz, ke = jax.random.split(k)
        return jax.random.normal(kz, (M, D)), jax.random.normal(ke, (N,))

    z, e = jax.vmap(normals)(keys)
    z = np.asarray(z, dtype=np.float64)
    e = np.asarray(e, dtype=np.float64)
    if how == "observation":
        _, _, condition = _observation_space(pb)
        w_prior = pb.m0[None] + pb.s * np.einsum("ij,njd->nid", pb.LK, z)
        draws = condition(w_prior.reshape(num_draws, -1), e * np.sqrt(pb.r2)[None])
    else:
        _, _, condition_white = _parameter_space(pb)
        draws = condition_white(z.reshape(num_draws, -1))
    if not np.isfinite(draws).all():
        raise NumericalError("sample_conjugate: non-finite draws (ill-conditioned posterior)")
    return jnp.asarray(draws.reshape((num_draws, M) + pb.core_shape), dtype=jnp.result_type(float))
