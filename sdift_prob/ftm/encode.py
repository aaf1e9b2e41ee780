"""Encoding a new trajectory: MAP cores per time stamp given the fixed coordinate networks.

With the networks fixed, the observation model is linear in the core (`y ~= A vec(W_t)`), so
the MAP cores under a Gaussian prior are the solution of a ridge-regularised least-squares
problem. The optional smoothness penalty couples neighbouring time stamps; the coupled
normal equations are block tridiagonal and solved exactly by block Cholesky elimination
along time (float64, locally).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.linalg import cho_solve
from jaxtyping import Array, ArrayLike, Float

from ..data.fields import Normalizer
from ..data.observations import ObservationSet, PaddedObservations
from ..errors import NumericalError, bad_input
from ..validation import check_positive
from .tucker import FunctionalTucker, _check_domain_points, _check_model, _design_rows, basis_matrices


def _nonneg_float(name: str, value: object) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if not ok or not (math.isfinite(float(value)) and float(value) >= 0):  # type: ignore[arg-type]
        raise bad_input(name, "a finite number >= 0", value)
    return float(value)  # type: ignore[arg-type]


def _check_times(times: object) -> np.ndarray:
    try:
        t = np.asarray(times, dtype=np.float64)
    except (TypeError, ValueError):
        raise bad_input("times", "a 1-D array of physical time stamps", times) from None
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)):
        raise bad_input("times", "a non-empty 1-D array of finite time stamps", f"shape {t.shape}")
    if t.size > 1 and np.any(np.diff(t) <= 0):
        raise bad_input("times", "strictly increasing time stamps", t)
    return t


def _as_padded(model: FunctionalTucker, obs: object, times: np.ndarray) -> PaddedObservations:
    if isinstance(obs, ObservationSet):
        if tuple(obs.space_dims) != model.space_dims:
            raise bad_input("obs", f"observations over the model's space dims {model.space_dims}", obs.space_dims)
        return obs.to_padded(times)
    if isinstance(obs, PaddedObservations):
        pt = np.asarray(obs.times, dtype=np.float64)
        span = float(times[-1] - times[0]) if times.size > 1 else 1.0
        if pt.shape != times.shape or not np.allclose(pt, times, rtol=0.0, atol=1e-9 * max(span, 1e-300)):
            raise bad_input("obs", "PaddedObservations on the time grid `times`", f"obs.times {pt}")
        m, p = np.shape(obs.mask)
        if np.shape(obs.coords) != (m, p, model.n_modes) or np.shape(obs.values) != (m, p):
            raise bad_input(
                "obs", f"padded arrays of shapes (M, P) and (M, P, {model.n_modes})",
                f"values {np.shape(obs.values)}, coords {np.shape(obs.coords)}",
            )
        return obs
    raise bad_input("obs", "an ObservationSet or PaddedObservations", type(obs).__name__)


@eqx.filter_jit
def _normal_equations(
    model: FunctionalTucker,
    coords: Float[Array, "M P K"],
    values: Float[Array, "M P"],
    weights: Float[Array, "M P"],
) -> tuple[Float[Array, "M D D"], Float[Array, "M D"]]:
    def one(args):
        c, y, w = args
        a = _design_rows(model, c).astype(jnp.float64)
        aw = a * w[:, None]
        return aw.T @ a, aw.T @ y

    # one time stamp at a time keeps memory at P x D rather than M x P x D
    return lax.map(one, (coords, values, weights))


@jax.jit
def _solve_coupled(
    gram: Float[Array, "M D D"], rhs: Float[Array, "M D"], ridge: Float[Array, ""], smooth: Float[Array, ""]
) -> Float[Array, "M D"]:
    """Block-tridiagonal solve of (G_t + ridge I) x_t + s (2 x_t - x_{t-1} - x_{t+1}) = b_t.

    Forward elimination S_t = D_t - s^2 S_{t-1}^{-1}, r_t = b_t + s S_{t-1}^{-1} r_{t-1}, then
    back substitution x_t = S_t^{-1} (r_t + s x_{t+1}). Each S_t is SPD (a Schur complement of
    an SPD matrix), so every step is a Cholesky solve.
    """
    m, d = rhs.shape
    eye = jnp.eye(d, dtype=gram.dtype)
    n_neighbours = (jnp.arange(m) > 0).astype(gram.dtype) + (jnp.arange(m) < m - 1).astype(gram.dtype)
    diag = gram + (ridge + smooth * n_neighbours)[:, None, None] * eye[None, :, :]

    def forward(carry, inputs):
        s_inv_prev, r_prev = carry
        d_t, b_t = inputs
        s_t = d_t - smooth**2 * s_inv_prev
        s_t = 0.5 * (s_t + s_t.T)
        chol = jnp.linalg.cholesky(s_t)
        r_t = b_t + smooth * (s_inv_prev @ r_prev)
        s_inv = cho_solve((chol, True), eye)
        return (s_inv, r_t), (chol, r_t)

    init = (jnp.zeros((d, d), gram.dtype), jnp.zeros((d,), gram.dtype))
    _, (chols, rs) = lax.scan(forward, init, (diag, rhs))

    def backward(x_next, inputs):
        chol, r_t = inputs
        x_t = cho_solve((chol, True), r_t + smooth * x_next)
        return x_t, x_t

    _, xs = lax.scan(backward, jnp.zeros((d,), gram.dtype), (chols, rs), reverse=True)
    return xs


@jax.jit
def _solve_independent(
    gram: Float[Array, "M D D"], rhs: Float[Array, "M D"], ridge: Float[Array, ""]
) -> Float[Array, "M D"]:
    d = rhs.shape[-1]
    chol = jnp.linalg.cholesky(gram + ridge * jnp.eye(d, dtype=gram.dtype)[None, :, :])
    return jax.vmap(lambda c, b: cho_solve((c, True), b))(chol, rhs)


def encode(
    model: FunctionalTucker,
    obs: ObservationSet | PaddedObservations,
    *,
    times: Float[ArrayLike, " T"],
    normalizer: Normalizer,
    ridge: float = 1e-3,
    smoothness: float = 0.0,
    noise_scale: float | None = None,
) -> Float[Array, "T *ranks"]:
    """MAP core sequence of one trajectory from its observations, networks fixed.

    Minimises, in normalised field units,
    `sum_n (y_n - A_n vec(W_t(n)))^2 / s^2 + ridge sum_t |W_t|^2 + smoothness sum_t |W_{t+1} - W_t|^2`
    with `s = noise_scale / normalizer.std` (`s = 1` when `noise_scale` is None). Time stamps
    without observations get the regularised solution (zero when `smoothness == 0`). The
    smoothness term couples neighbouring time stamps of `times` (by order, not spacing).

    **Arguments:**

    - `model`: the fitted `FunctionalTucker`.
    - `obs`: an `ObservationSet` (placed on `times` with `to_padded(times)`; every observation
      time must be one of `times`) or `PaddedObservations` already on `times`.
    - `times`: `(T,)` physical time stamps, strictly increasing.
    - `normalizer`: the field normalisation the model was fitted with.
    - `ridge`: weight of the ridge penalty (> 0).
    - `smoothness`: weight of the temporal smoothness penalty (>= 0).
    - `noise_scale`: observation noise std in physical units (> 0), or None.

    **Returns:** cores of shape `(T, R_1, ..., R_K)` (float32).
    """
    model = _check_model(model)
    if not isinstance(normalizer, Normalizer):
        raise bad_input("normalizer", "a sdift_prob.data.fields.Normalizer", type(normalizer).__name__)
    ridge_v = check_positive(ridge, "ridge")
    smooth_v = _nonneg_float("smoothness", smoothness)
    t = _check_times(times)
    padded = _as_padded(model, obs, t)
    mask = np.asarray(padded.mask, dtype=bool)
    coords = np.asarray(padded.coords, dtype=np.float64)
    values = np.asarray(padded.values, dtype=np.float64)
    if mask.any():
        valid_coords = coords[mask]
        if not np.all(np.isfinite(valid_coords)) or not np.all(np.isfinite(values[mask])):
            raise bad_input("obs", "finite values and coordinates", "non-finite entries")
        _check_domain_points(model, jnp.asarray(valid_coords, dtype=jnp.float32), "obs.coords")
    # padding slots may hold anything: put them at a valid point, they carry zero weight
    fill = coords[mask][0] if mask.any() else np.asarray(model.domain_lo)
    coords = np.where(mask[:, :, None], coords, fill[None, None, :])
    weight = mask.astype(np.float64)
    if noise_scale is not None:
        sigma = check_positive(noise_scale, "noise_scale") / normalizer.std
        weight = weight / sigma**2
    y = np.where(mask, (values - normalizer.mean) / normalizer.std, 0.0)
    with jax.enable_x64(True):
        gram, rhs = _normal_equations(
            model,
            jnp.asarray(coords, dtype=jnp.float32),
            jnp.asarray(y, dtype=jnp.float64),
            jnp.asarray(weight, dtype=jnp.float64),
        )
        if smooth_v > 0.0:
            flat = _solve_coupled(gram, rhs, jnp.asarray(ridge_v, jnp.float64), jnp.asarray(smooth_v, jnp.float64))
        else:
            flat = _solve_independent(gram, rhs, jnp.asarray(ridge_v, jnp.float64))
        out = np.asarray(flat, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise NumericalError("encode: the least-squares solve produced non-finite cores")
    return jnp.asarray(out.reshape((t.size, *model.ranks)))


# ---- full-grid encoding through the fixed basis ----------------------------------------------------


def mode_products(x: np.ndarray, mats: tuple[np.ndarray, ...], lead: int) -> np.ndarray:
    """`x ×_k mats[k]` over the K axes after the first `lead` ones: axis `lead + k` (length
    `mats[k].shape[0]`) becomes `mats[k].shape[1]` long."""
    for k, m in enumerate(mats):
        x = np.moveaxis(np.tensordot(x, m, axes=([lead + k], [0])), -1, lead + k)
    return x


def _grid_solver(bases: tuple[np.ndarray, ...], ridge: float, rcond: float):
    """Per-mode pieces of the exact solve of `(⊗_k U_kᵀU_k + ridge I) w = (⊗_k U_k)ᵀ y`.

    With `U_kᵀU_k = Q_k Λ_k Q_kᵀ` the Gram matrix of the Kronecker design is
    `⊗Q (⊗Λ + ridge) ⊗Qᵀ`: diagonal in the product eigenbasis, so the solve is K small
    eigendecompositions and a division, exact for any ridge. With `ridge == 0` eigenvalues
    below `rcond · max` of a mode are dropped (the pseudo-inverse, minimum-norm cores).
    """
    projs, rotations, lams, keeps = [], [], [], []
    for u in bases:
        lam, q = np.linalg.eigh(u.T @ u)
        keeps.append(lam > rcond * max(float(lam.max()), 0.0))
        lams.append(np.maximum(lam, 0.0))
        projs.append(u @ q)  # (I, R): projects the data straight into the eigenbasis
        rotations.append(q.T)  # (R, R): back from the eigenbasis, as a mode product
    lam_all = lams[0]
    keep_all = keeps[0]
    for lam, keep in zip(lams[1:], keeps[1:]):
        lam_all = np.multiply.outer(lam_all, lam)
        keep_all = np.logical_and.outer(keep_all, keep)
    with np.errstate(divide="ignore"):
        inverse = 1.0 / (lam_all + ridge)
    if ridge == 0.0:
        inverse = np.where(keep_all, inverse, 0.0)
    return tuple(projs), tuple(rotations), inverse


def encode_grid(
    model: FunctionalTucker,
    fields: Float[ArrayLike, "*lead I1 *sizes"],
    grids: tuple[Float[ArrayLike, " _"], ...] | list,
    *,
    normalizer: Normalizer,
    ridge: float = 0.0,
    rcond: float = 1e-10,
) -> Float[np.ndarray, "*lead R1 *ranks"]:
    """Least-squares (ridge / MAP) cores of fields given on a full grid, networks fixed.

    On a full grid the design of one frame is the Kronecker product `⊗_k U_k` of the basis
    matrices `U_k = f_k(grid_k)` (`basis_matrices`), so the least-squares core of every frame is
    `W = Y ×_1 U_1⁺ ... ×_K U_K⁺`: K small matrix products per frame instead of a `D × D`
    solve, exact, in float64. With `ridge > 0` it is the exact minimiser of
    `|y - A vec(W)|² + ridge |W|²` (the same objective as `encode` with `smoothness == 0` and
    `noise_scale=None`), through per-mode eigendecompositions.

    **Arguments:**

    - `model`: the fitted `FunctionalTucker`.
    - `fields`: physical values `(..., I_1, ..., I_K)` on the grid `grids` (any leading axes,
      e.g. `(B, T)`); every value finite (a field with missing entries is not on a full grid:
      use `encode` with its observations).
    - `grids`: K one-dimensional coordinate arrays, `grids[k]` of length `I_k`, inside the
      model's domain.
    - `normalizer`: the field normalisation the model was fitted with.
    - `ridge`: weight of the ridge penalty (>= 0; 0 = the pseudo-inverse).
    - `rcond`: with `ridge == 0`, per-mode eigenvalues below `rcond` times the largest are
      treated as zero (a rank-deficient basis gets the minimum-norm cores).

    **Returns:** cores `(..., R_1, ..., R_K)`, float64 NumPy, in normalised field units.
    """
    model = _check_model(model)
    if not isinstance(normalizer, Normalizer):
        raise bad_input("normalizer", "a sdift_prob.data.fields.Normalizer", type(normalizer).__name__)
    ridge_v = _nonneg_float("ridge", ridge)
    rcond_v = _nonneg_float("rcond", rcond)
    bases = tuple(np.asarray(b, dtype=np.float64) for b in basis_matrices(model, grids))
    sizes = tuple(b.shape[0] for b in bases)
    try:
        y = np.asarray(fields, dtype=np.float64)
    except (TypeError, ValueError):
        raise bad_input("fields", "a numeric array of values on the grid", type(fields).__name__) from None
    k = model.n_modes
    if y.ndim < k or y.shape[y.ndim - k:] != sizes:
        raise bad_input("fields", f"an array ending in the grid's sizes {sizes}", f"shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise bad_input("fields", "finite values on the full grid (use encode for missing entries)",
                        f"{int(np.sum(~np.isfinite(y)))} non-finite entries")
    lead = y.ndim - k
    projs, rotations, inverse = _grid_solver(bases, ridge_v, rcond_v)
    z = mode_products(normalizer.forward(y), projs, lead) * inverse
    out = mode_products(z, rotations, lead)
    if not np.all(np.isfinite(out)):
        raise NumericalError("encode_grid: the solve produced non-finite cores (a degenerate basis: try ridge > 0)")
    return out


def decode_grid_numpy(model: FunctionalTucker, cores: np.ndarray, grids, *, normalizer: Normalizer) -> np.ndarray:
    """`decode_grid` in float64 NumPy (the basis matrices once, then mode products), physical units."""
    bases = tuple(np.asarray(b, dtype=np.float64).T for b in basis_matrices(model, grids))
    c = np.asarray(cores, dtype=np.float64)
    return normalizer.inverse(mode_products(c, bases, c.ndim - model.n_modes))
