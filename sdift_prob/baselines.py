"""Classical baselines that every reconstruction is compared with.

- `training_mean_field`: the climatology — the mean of the training trajectories per time stamp
  and grid point. A method scoring worse than it has learnt nothing from the observations.
- `linear_interpolation`: per time stamp, SciPy's piecewise-linear interpolation of the observed
  values in space (nearest value outside the convex hull); time stamps without observations copy
  the nearest observed time stamp.
- `fit_kriging` / `KrigingModel`: spatio-temporal GP regression ("kriging") directly on the
  observations, with GPJax. The kernel is separable — a product of one-dimensional kernels over
  every space axis and time — with a constant mean, a variance, one lengthscale per axis and the
  noise variance fitted by maximising the marginal likelihood (`gpx.fit_scipy`, L-BFGS) on a
  random subset of the points. Prediction conditions on all points exactly up to `max_exact`
  points; beyond that on `num_inducing` inducing points chosen among the observations (the
  Titsias collapsed bound, GPJax's `CollapsedVariationalGaussian`, with the fitted
  hyperparameters). Its predictive mean and standard deviation are Gaussian, so it has coverage
  and CRPS like the probabilistic methods; `KrigingModel.sample` draws jointly from the Gaussian
  predictive at a set of points, for the multivariate (energy, variogram) scores.

Inputs are in physical units; inside, each axis is scaled to `[0, 1]` over the observed extent
(so lengthscales are comparable) and the values are standardised. Computed in float64.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import gpjax as gpx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float, PRNGKeyArray
from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator
from scipy.spatial import QhullError

from .data.observations import ObservationSet
from .errors import InputError, bad_input
from .validation import check_count, check_key

__all__ = ["KRIGING_KERNELS", "KrigingModel", "fit_kriging", "linear_interpolation", "training_mean_field"]

KRIGING_KERNELS = ("rbf", "matern32", "matern52")
_KERNELS = {"rbf": gpx.kernels.RBF, "matern32": gpx.kernels.Matern32, "matern52": gpx.kernels.Matern52}


def _grid_points(grids: Sequence[Any]) -> np.ndarray:
    axes = [np.asarray(g, dtype=np.float64) for g in grids]
    for k, a in enumerate(axes):
        if a.ndim != 1 or a.size < 1 or not np.isfinite(a).all():
            raise bad_input(f"grids[{k}]", "a non-empty 1-D array of finite coordinates", a)
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))


def _check_obs(obs: Any, n_dims: int) -> ObservationSet:
    if not isinstance(obs, ObservationSet):
        raise bad_input("obs", "an ObservationSet", type(obs).__name__)
    if obs.coords.shape[1] != n_dims:
        raise bad_input("grids", f"one grid per space dim of the observations {obs.space_dims}",
                        f"{n_dims} grids")
    if obs.n_points == 0:
        raise InputError("obs: at least one observation is needed (got an empty ObservationSet)")
    return obs


def training_mean_field(fields: Any) -> np.ndarray:
    """The climatology: mean over trajectories of a `(B, T, *space)` array (or field collection's
    training part, an `xr.Dataset` with a `field` variable) -> `(T, *space)`."""
    values = fields["field"].values if hasattr(fields, "data_vars") else np.asarray(fields, dtype=np.float64)
    if values.ndim < 3 or values.shape[0] < 1:
        raise bad_input("fields", "an array (B, T, *space) with B >= 1", values.shape)
    if not np.isfinite(values).all():
        return np.nanmean(values, axis=0)
    return values.mean(axis=0)


def linear_interpolation(
    obs: ObservationSet, times: Float[np.ndarray, " T"], grids: Sequence[Float[np.ndarray, " I"]]
) -> Float[np.ndarray, "T *space"]:
    """Per-time-stamp linear interpolation of the observations onto a grid.

    **Arguments:**

    - `obs`: the observations (physical units); a point belongs to output time `times[i]` when
      its time is within 1e-6 of the time span of it.
    - `times`: `(T,)` output time stamps; `grids`: one 1-D coordinate array per space dim.

    Each axis is scaled to `[0, 1]` over the grid so that distances are comparable across units.
    Time stamps with fewer than K + 2 points (or a degenerate, e.g. coplanar, point set) use the
    nearest observation; time stamps without any copy the nearest time stamp that has some.

    **Returns:** `(T, I1, .., IK)`.
    """
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1 or t.size < 1 or not np.isfinite(t).all():
        raise bad_input("times", "a non-empty 1-D array of finite times", times)
    grid = _grid_points(grids)
    obs = _check_obs(obs, grid.shape[1])
    shape = tuple(len(g) for g in grids)
    lo, hi = grid.min(axis=0), grid.max(axis=0)
    scale = np.where(hi > lo, hi - lo, 1.0)
    g = (grid - lo) / scale
    span = float(np.ptp(np.concatenate([t, obs.time]))) or 1.0
    out = np.full((t.size, grid.shape[0]), np.nan)
    observed = []
    for i, ti in enumerate(t):
        sel = np.abs(obs.time - ti) <= 1e-6 * span
        if not sel.any():
            continue
        pts = (obs.coords[sel] - lo) / scale
        vals = obs.value[sel]
        est = NearestNDInterpolator(pts, vals)(g)
        if sel.sum() > grid.shape[1] + 1:
            try:
                lin = LinearNDInterpolator(pts, vals)(g)
                est = np.where(np.isnan(lin), est, lin)
            except QhullError:  # degenerate point sets (e.g. all on one plane): nearest only
                pass
        out[i] = est
        observed.append(i)
    if not observed:
        raise InputError("obs: no observation falls on any of the requested times")
    observed_idx = np.asarray(observed)
    for i in range(t.size):
        if np.isnan(out[i, 0]):
            out[i] = out[observed_idx[np.argmin(np.abs(observed_idx - i))]]
    return out.reshape((t.size, *shape))


@dataclasses.dataclass(frozen=True)
class KrigingModel:
    """A fitted spatio-temporal GP (`fit_kriging`). Predict with `predict` / `predict_grid`.

    **Fields:** `kernel` (family name), `lengthscales` (per axis: the space dims then time, in
    physical units), `variance`, `noise_std`, `mean` (physical units); `n_points`,
    `n_inducing` (0 for the exact posterior), `log_marginal_likelihood` of the fit subset.
    """

    kernel: str
    lengthscales: tuple[float, ...]
    variance: float
    noise_std: float
    mean: float
    n_points: int
    n_inducing: int
    log_marginal_likelihood: float
    _posterior: Any = dataclasses.field(repr=False)
    _lo: np.ndarray = dataclasses.field(repr=False)
    _scale: np.ndarray = dataclasses.field(repr=False)
    _y_mean: float = dataclasses.field(repr=False)
    _y_std: float = dataclasses.field(repr=False)

    def summary(self) -> dict[str, Any]:
        """JSON-ready hyperparameters."""
        return {"kernel": self.kernel, "lengthscales": list(self.lengthscales), "variance": self.variance,
                "noise_std": self.noise_std, "mean": self.mean, "n_points": self.n_points,
                "n_inducing": self.n_inducing, "log_marginal_likelihood": self.log_marginal_likelihood}

    def predict(
        self, coords: Float[np.ndarray, "N K"], time: Float[np.ndarray, " N"], *, chunk: int = 8192,
        return_std: bool = True,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictive mean and standard deviation of the latent field (without observation
        noise) at `(coords, time)` points, physical units. `return_std=False` skips the
        variance (much cheaper: O(N) per point instead of O(N²))."""
        c = np.asarray(coords, dtype=np.float64)
        t = np.asarray(time, dtype=np.float64).reshape(-1)
        if c.ndim != 2 or c.shape[0] != t.size or c.shape[1] + 1 != self._lo.size:
            raise bad_input("coords", f"shape (N, {self._lo.size - 1}) matching time (N,)", c.shape)
        x = (np.column_stack([c, t]) - self._lo) / self._scale
        means, stds = [], []
        with jax.enable_x64(True):
            for start in range(0, x.shape[0], chunk):
                xs = jnp.asarray(x[start:start + chunk])
                m, s = _predict(self._posterior, xs, return_std)
                means.append(np.asarray(m))
                if return_std:
                    stds.append(np.asarray(s))
        mean = self._y_mean + self._y_std * np.concatenate(means)
        std = self._y_std * np.concatenate(stds) if return_std else None
        return mean, std

    def predict_grid(
        self, times: Float[np.ndarray, " T"], grids: Sequence[Float[np.ndarray, " I"]], *, return_std: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """`predict` on every `(time, grid point)`; returns arrays `(T, I1, .., IK)`.

        The mean uses the kernel's separability: `k(x*, x_n) = Π_d k_d(x*_d, x_nd)`, so the
        mean over a grid is one contraction of per-axis cross-covariances with the representer
        weights, `O(N Π I_d)` multiply-adds instead of that many kernel evaluations. The standard
        deviation (O(N²) per point) is computed point by point."""
        t = np.asarray(times, dtype=np.float64)
        axes = [np.asarray(g, dtype=np.float64) for g in grids]
        grid = _grid_points(axes)  # validates
        shape = (t.size, *(a.size for a in axes))
        if len(axes) + 1 != self._lo.size:
            raise bad_input("grids", f"{self._lo.size - 1} coordinate arrays (one per space dim)", len(axes))
        with jax.enable_x64(True):
            mean = np.asarray(_separable_mean(self._posterior, [*axes, t], self._lo, self._scale))
        mean = self._y_mean + self._y_std * np.moveaxis(mean, -1, 0)  # (T, I1, .., IK)
        if not return_std:
            return mean, None
        pts = np.tile(grid, (t.size, 1))
        _, std = self.predict(pts, np.repeat(t, grid.shape[0]))
        return mean, std.reshape(shape)

    def sample(
        self, coords: Float[np.ndarray, "N K"], time: Float[np.ndarray, " N"], *, key: PRNGKeyArray,
        n_samples: int,
    ) -> Float[np.ndarray, "S N"]:
        """`n_samples` joint draws of the latent field (without observation noise) at the N points
        `(coords, time)` from the Gaussian predictive: its mean plus `C^{1/2} z`, with the dense
        N × N predictive covariance C (symmetric square root by eigendecomposition, negative
        rounding-level eigenvalues clipped to 0) and `z ~ N(0, I)` drawn with `key`.

        Joint draws keep the predictive's correlation between points, so multivariate scores
        (energy, variogram) can be computed as for a sampler's draws. Cost: one dense predictive,
        `O(n_points² N + N³)`: meant for a few hundred points at a time (e.g. one frame's subset).

        **Returns:** `(n_samples, N)`, physical units.
        """
        c = np.asarray(coords, dtype=np.float64)
        t = np.asarray(time, dtype=np.float64).reshape(-1)
        if c.ndim != 2 or c.shape[0] != t.size or c.shape[1] + 1 != self._lo.size or t.size == 0:
            raise bad_input("coords", f"shape (N, {self._lo.size - 1}) with N >= 1, matching time (N,)", c.shape)
        check_key(key)
        check_count(n_samples, "n_samples")
        x = (np.column_stack([c, t]) - self._lo) / self._scale
        with jax.enable_x64(True):
            mean, cov = _predict_dense(self._posterior, jnp.asarray(x))
            z = np.asarray(jax.random.normal(key, (int(n_samples), t.size), dtype=jnp.float64))
        mean, cov = np.asarray(mean), np.asarray(cov)
        vals, vecs = np.linalg.eigh(0.5 * (cov + cov.T))
        root = vecs * np.sqrt(np.clip(vals, 0.0, None))
        return self._y_mean + self._y_std * (mean + z @ root.T)


@eqx.filter_jit
def _predict_dense(posterior: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    dist = posterior(x, covariance="dense")
    return dist.mean.reshape(-1), dist.covariance()


def _separable_mean(posterior: Any, axes: list[np.ndarray], lo: np.ndarray, scale: np.ndarray) -> jax.Array:
    """Posterior mean on the grid `axes[0] x .. x axes[-1]` (space dims, then time), in the
    standardised units of the fit, shape `(I1, .., IK, T)`."""
    support = getattr(posterior, "inducing_inputs", None)
    if support is None:
        support = posterior.train_data.X
    prior = posterior.prior if hasattr(posterior, "prior") else posterior.model.prior
    factors = _kernel_factors(prior.kernel)
    weights = jnp.asarray(posterior.representer_weights)[:, 0]  # (N,)
    mats = []
    for d, (a, k) in enumerate(zip(axes, factors)):
        # Inputs that vary only along axis d: factor d reads only its own column (active_dims).
        x = jnp.zeros((a.size, lo.size)).at[:, d].set((a - lo[d]) / scale[d])
        mats.append(k.cross_covariance(x, support))  # (I_d, N)
    letters = "abcdefghij"[: len(mats)]
    expr = ",".join(f"{c}n" for c in letters) + ",n->" + letters
    const = prior.mean_function(jnp.zeros((1, lo.size)))[0, 0]
    return const + jnp.einsum(expr, *mats, weights, optimize="greedy")


@eqx.filter_jit
def _predict(posterior: Any, x: jax.Array, return_std: bool) -> tuple[jax.Array, jax.Array | None]:
    if not return_std:
        # The mean alone is m(x*) + k(x*, X) α with the cached representer weights α: O(N) per
        # point, where the variance needs a triangular solve, O(N²) per point.
        support = getattr(posterior, "inducing_inputs", None)
        if support is None:
            support = posterior.train_data.X
        prior = posterior.prior if hasattr(posterior, "prior") else posterior.model.prior
        kernel, mean_fn = prior.kernel, prior.mean_function
        mean = mean_fn(x) + kernel.cross_covariance(x, support) @ posterior.representer_weights
        return mean[:, 0], None
    dist = posterior(x, covariance="diagonal")
    return dist.mean.reshape(-1), jnp.sqrt(jnp.maximum(dist.variance.reshape(-1), 0.0))


def _product_kernel(name: str, n_dims: int, lengthscales: np.ndarray, variance: float) -> Any:
    cls = _KERNELS[name]
    kern = cls(active_dims=[0], lengthscale=float(lengthscales[0]), variance=float(variance))
    for d in range(1, n_dims):
        # Every factor carries a variance (GPJax's kernels always do); only their product matters.
        kern = kern * cls(active_dims=[d], lengthscale=float(lengthscales[d]), variance=1.0)
    return kern


def _unwrap_float(x: Any) -> float:
    leaf = x.unwrap() if hasattr(x, "unwrap") else x
    return float(np.asarray(leaf))


# (lengthscale on the unit cube, noise std in units of the data std) tried in turn
_KRIGING_STARTS = ((0.2, 0.3), (0.5, 0.5), (1.0, 1.0))


def _fit_hyperparameters(kernel: str, n_dims: int, data_fit: Any, max_iters: int) -> tuple[Any, float]:
    """`(fitted GPJax posterior model, its log marginal likelihood)` by L-BFGS from the first of
    `_KRIGING_STARTS` that ends finite (call under `jax.enable_x64`)."""
    # L-BFGS can step into a region where the Cholesky factorisation fails (seen with heavy-
    # tailed Laplace noise): the fit is then restarted from a smoother, noisier start; the
    # first start that ends with a finite marginal likelihood is kept.
    model, lml = None, -math.inf
    for init_ls, init_noise in _KRIGING_STARTS:
        prior = gpx.gps.Prior(mean_function=gpx.mean_functions.Constant(),
                              kernel=_product_kernel(kernel, n_dims, np.full(n_dims, init_ls), 1.0))
        fitted, history = gpx.fit_scipy(
            model=prior * gpx.likelihoods.Gaussian(obs_stddev=init_noise),
            objective=lambda m, d: -gpx.objectives.conjugate_mll(m, d), train_data=data_fit,
            max_iters=int(max_iters), verbose=False,
        )
        value = -float(np.asarray(history)[-1])
        if math.isfinite(value):
            model, lml = fitted, value
            break
    if model is None:
        raise InputError("obs: the kriging marginal likelihood is not finite from any starting point; "
                         "check the observation values")
    return model, lml


def fit_kriging(
    obs: ObservationSet,
    *,
    key: PRNGKeyArray,
    kernel: str = "matern32",
    n_fit: int = 500,
    max_iters: int = 100,
    max_exact: int = 6000,
    num_inducing: int = 1500,
) -> KrigingModel:
    """Fit a separable spatio-temporal GP to the observations by marginal likelihood.

    **Arguments:**

    - `obs`: the observations (physical units, any times and off-grid coordinates, ≥ 3 points).
    - `key`: typed PRNG key (choice of the fitting subset and the inducing points).
    - `kernel`: `"rbf" | "matern32" | "matern52"`, one factor per axis (space dims, then time).
    - `n_fit`: hyperparameters are fitted on a random subset of at most this many points (the
      marginal likelihood costs O(n³) per iteration).
    - `max_iters`: L-BFGS iterations.
    - `max_exact`: condition exactly on all points up to this many; above it, on
      `num_inducing` inducing points drawn from the observations (collapsed variational bound).

    **Returns:** a `KrigingModel`.
    """
    if kernel not in KRIGING_KERNELS:
        raise bad_input("kernel", f"one of {KRIGING_KERNELS}", kernel)
    for name, v, lo in (("n_fit", n_fit, 10), ("max_iters", max_iters, 1), ("max_exact", max_exact, 10),
                        ("num_inducing", num_inducing, 10)):
        check_count(v, name, minimum=lo)
    if not isinstance(obs, ObservationSet):
        raise bad_input("obs", "an ObservationSet", type(obs).__name__)
    if obs.n_points < 3:
        raise bad_input("obs", "at least 3 observations to fit a kriging model", f"{obs.n_points} points")
    x_phys = np.column_stack([obs.coords, obs.time])
    lo = x_phys.min(axis=0)
    scale = np.ptp(x_phys, axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    x = (x_phys - lo) / scale
    y_mean = float(obs.value.mean())
    y_std = float(obs.value.std()) or 1.0
    y = (obs.value - y_mean) / y_std
    n, n_dims = x.shape
    k_fit, k_ind = jax.random.split(key)
    fit_idx = np.sort(np.asarray(jax.random.permutation(k_fit, n))[: min(n, n_fit)])

    with jax.enable_x64(True):
        data_fit = gpx.Dataset(X=jnp.asarray(x[fit_idx]), y=jnp.asarray(y[fit_idx, None]))
        model, lml = _fit_hyperparameters(kernel, n_dims, data_fit, max_iters)
        data = gpx.Dataset(X=jnp.asarray(x), y=jnp.asarray(y[:, None]))
        if n <= max_exact:
            posterior = model.condition(data)
            n_ind = 0
        else:
            n_ind = int(min(num_inducing, n))
            z = jnp.asarray(x[np.sort(np.asarray(jax.random.permutation(k_ind, n))[:n_ind])])
            q = gpx.variational_families.CollapsedVariationalGaussian(model=model, inducing_inputs=z)
            posterior = q.condition(data)
        kernels = _kernel_factors(model.prior.kernel)
        lengthscales = tuple(_unwrap_float(k.lengthscale) * float(scale[d]) for d, k in enumerate(kernels))
        variance = float(np.prod([_unwrap_float(k.variance) for k in kernels])) * y_std**2
        noise_std = _unwrap_float(model.likelihood.obs_stddev) * y_std
        mean_const = y_mean + y_std * _unwrap_float(model.prior.mean_function.constant)
    return KrigingModel(
        kernel=kernel, lengthscales=lengthscales, variance=variance, noise_std=noise_std, mean=mean_const,
        n_points=n, n_inducing=n_ind, log_marginal_likelihood=lml, _posterior=posterior, _lo=lo, _scale=scale,
        _y_mean=y_mean, _y_std=y_std,
    )


def _kernel_factors(kernel: Any) -> list[Any]:
    if hasattr(kernel, "kernels"):
        out: list[Any] = []
        for k in kernel.kernels:
            out.extend(_kernel_factors(k))
        return out
    return [kernel]
