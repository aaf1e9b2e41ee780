"""Accuracy and calibration metrics (NumPy; JAX arrays are accepted and converted).

Point accuracy: `vrmse` (as in The Well and the SDIFT paper), `rmse`, `mae`.
Uncertainty: `crps_ensemble` (the `scoringrules` library's ensemble CRPS), `interval_coverage`,
`pit_values`. Report figures over test trajectories with `summarise`.
Multivariate (whole frames, from the `scoringrules` library): `energy_score`, `variogram_score`.
Marginal scores (CRPS, coverage, PIT) look at one entry at a time and cannot see a wrong spatial
correlation of the draws; these two can.

Missing truth: NaN entries of `truth` (land, gaps; e.g. a field read with
`sdift_prob.data.from_xarray`) are masked — left out of every mean, and NaN in per-entry
results. The estimate (or draws) must be finite wherever the truth is not missing; infinities
are an error anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import jax
import numpy as np
from jaxtyping import ArrayLike, Float

from .errors import as_float64, bad_input
from .validation import check_count, check_key


def _array(x: Any, argument: str) -> np.ndarray:
    arr = as_float64(x, argument)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise bad_input(argument, "finite values only", f"{int(bad.sum())} NaN/inf entries of {arr.size}")
    return arr


def _truth(x: Any) -> np.ndarray:
    """The truth array: float64, NaN allowed (missing entries), infinities not."""
    arr = as_float64(x, "truth")
    inf = np.isinf(arr)
    if inf.any():
        raise bad_input("truth", "finite values or NaN (missing)", f"{int(inf.sum())} infinite entries of {arr.size}")
    if arr.size and np.isnan(arr).all():
        raise bad_input("truth", "at least one entry that is not missing (NaN)", f"all {arr.size} entries NaN")
    return arr


def _finite_where_observed(arr: np.ndarray, argument: str, observed: np.ndarray) -> np.ndarray:
    """Check `arr` is finite wherever `observed` (broadcast on its trailing axes) and never
    infinite; return it with NaN where the truth is missing."""
    bad = np.isinf(arr) | (np.isnan(arr) & observed)
    if bad.any():
        raise bad_input(argument, "finite values only (where the truth is not missing)",
                        f"{int(bad.sum())} NaN/inf entries of {arr.size}")
    return arr if observed.all() else np.where(observed, arr, np.nan)


def _pair(truth: Any, estimate: Any, batched: bool) -> tuple[np.ndarray, np.ndarray]:
    u = _truth(truth)
    e = as_float64(estimate, "estimate")
    if u.shape != e.shape:
        raise bad_input("estimate", f"the shape of truth {u.shape}", f"shape {e.shape}")
    e = _finite_where_observed(e, "estimate", ~np.isnan(u))
    if u.size == 0:
        raise bad_input("truth", "at least one entry", f"shape {u.shape}")
    if not isinstance(batched, bool):
        raise bad_input("batched", "True or False", batched)
    if batched and (u.ndim < 2 or u.shape[0] == 0 or u[0].size == 0):
        raise bad_input("truth", "shape (B, ...) with B >= 1 and at least one entry per trajectory when "
                        "batched=True", f"shape {u.shape}")
    if batched:
        empty = np.isnan(u.reshape(u.shape[0], -1)).all(axis=1)
        if empty.any():
            raise bad_input("truth", "at least one entry that is not missing in every trajectory",
                            f"trajectories {np.flatnonzero(empty).tolist()} all NaN")
    return u, e


def _mean(x: np.ndarray, axis: int | None = None) -> Any:
    """Mean over the entries that are not NaN (plain mean when there is no NaN)."""
    if np.isnan(x).any():
        return np.nanmean(x, axis=axis)
    return x.mean(axis=axis)


def _per_trajectory_mean(x: np.ndarray, batched: bool) -> np.ndarray | float:
    if batched:
        return _mean(x.reshape(x.shape[0], -1), axis=1)
    return float(_mean(x))


def vrmse(
    truth: Float[ArrayLike, "*shape"],
    estimate: Float[ArrayLike, "*shape"],
    *,
    eps: float = 1e-7,
    batched: bool = False,
) -> float | Float[np.ndarray, " B"]:
    """Variance-scaled RMSE: `sqrt(mean((u - û)^2) / (mean((u - ū)^2) + eps))`.

    Both means run over all space-time entries of one trajectory, and `ū` is that
    trajectory's own mean, so predicting `ū` everywhere scores 1 (up to `eps`).

    **Arguments:**

    - `truth`, `estimate`: same shape; one trajectory `(T, ...)`, or `(B, T, ...)` with
      `batched=True` (leading axis = trajectory). Physical units.
    - `eps`: >= 0, guards constant fields.

    **Returns:** a float, or `(B,)` per trajectory when `batched`.
    """
    u, e = _pair(truth, estimate, batched)
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.number)) or not (eps >= 0):
        raise bad_input("eps", "a number >= 0", eps)
    if batched:
        flat_u = u.reshape(u.shape[0], -1)
        flat_e = e.reshape(e.shape[0], -1)
        mse = _mean((flat_u - flat_e) ** 2, axis=1)
        var = _mean((flat_u - _mean(flat_u, axis=1)[:, None]) ** 2, axis=1)
        return np.sqrt(mse / (var + eps))
    mse = _mean((u - e) ** 2)
    var = _mean((u - _mean(u)) ** 2)
    return float(np.sqrt(mse / (var + eps)))


def rmse(
    truth: Float[ArrayLike, "*shape"], estimate: Float[ArrayLike, "*shape"], *, batched: bool = False
) -> float | Float[np.ndarray, " B"]:
    """Root mean squared error over all entries (per trajectory `(B,)` when `batched`)."""
    u, e = _pair(truth, estimate, batched)
    out = np.sqrt(_per_trajectory_mean((u - e) ** 2, batched))
    return out if batched else float(out)


def mae(
    truth: Float[ArrayLike, "*shape"], estimate: Float[ArrayLike, "*shape"], *, batched: bool = False
) -> float | Float[np.ndarray, " B"]:
    """Mean absolute error over all entries (per trajectory `(B,)` when `batched`)."""
    u, e = _pair(truth, estimate, batched)
    return _per_trajectory_mean(np.abs(u - e), batched)


def _ensemble(truth: Any, draws: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _truth(truth)
    x = as_float64(draws, "draws")
    if x.ndim != y.ndim + 1 or x.shape[1:] != y.shape:
        raise bad_input("draws", f"shape (S, *{y.shape}) — draws first, then the shape of truth",
                        f"shape {x.shape}")
    x = _finite_where_observed(x, "draws", ~np.isnan(y))
    if x.shape[0] < 1 or y.size == 0:
        raise bad_input("draws", "at least one draw and one entry", f"shape {x.shape}")
    return y, x


def crps_ensemble(
    truth: Float[ArrayLike, "*shape"],
    draws: Float[ArrayLike, "S *shape"],
    *,
    reduce: Literal["mean", "none"] = "mean",
    fair: bool = False,
) -> float | Float[np.ndarray, "*shape"]:
    """Continuous ranked probability score of an ensemble (lower is better),
    `scoringrules.crps_ensemble` (NumPy backend).

    Energy form `CRPS = E|X - y| - 0.5 E|X - X'|` with the empirical distribution of the S
    draws. `fair=False` (standard): the second expectation over all S² ordered pairs, including
    a draw with itself — the CRPS of the S-point forecast, which penalises small ensembles.
    `fair=True`: over the S(S−1) pairs of distinct draws — an unbiased estimate of the CRPS of
    the distribution the draws come from (Ferro 2014), comparable across ensemble sizes and with
    closed-form scores (`crps_gaussian`). With one draw both are `|x - y|`.

    Computed with scoringrules' sorted-ensemble estimators, `O(S log S)` per entry and no `S²`
    array: `"qd"` (quantile decomposition) for the standard score and `"pwm"` (probability
    weighted moments) for the fair one. They equal the energy-form estimators `"nrg"` and `"fair"`
    exactly in arithmetic (to floating-point rounding, ~1e-15 relative; `tests/test_metrics.py`).

    **Arguments:**

    - `truth`: `(*shape)`; `draws`: `(S, *shape)`, draws axis first.
    - `reduce`: `"mean"` -> the mean over entries that are not missing (float), `"none"` -> per
      entry `(*shape)`, NaN where the truth is missing.
    - `fair`: see above.
    """
    import scoringrules as sr

    y, x = _ensemble(truth, draws)
    if reduce not in ("mean", "none"):
        raise bad_input("reduce", "'mean' or 'none'", reduce)
    if not isinstance(fair, bool):
        raise bad_input("fair", "True or False", fair)
    # "pwm" divides by S - 1; with one draw both scores are |x - y|, which "qd" gives.
    estimator = "pwm" if fair and x.shape[0] > 1 else "qd"
    crps = np.asarray(sr.crps_ensemble(y, x, m_axis=0, estimator=estimator, backend="numpy"), dtype=np.float64)
    return float(_mean(crps)) if reduce == "mean" else crps


def _check_levels(levels: Any) -> tuple[float, ...]:
    if isinstance(levels, (int, float, np.number)) and not isinstance(levels, bool):
        levels = (levels,)
    if not isinstance(levels, Sequence) or len(levels) == 0:
        raise bad_input("levels", "a non-empty sequence of central interval levels in (0, 1)", levels)
    out = []
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, (int, float, np.number)) or not 0 < level < 1:
            raise bad_input("levels", "levels in the open interval (0, 1)", level)
        out.append(float(level))
    return tuple(out)


INTERVAL_METHODS = ("predictive", "quantile")


def interval_bounds(
    draws: Float[ArrayLike, "S *shape"], level: float, method: str = "predictive"
) -> tuple[Float[np.ndarray, "*shape"], Float[np.ndarray, "*shape"]]:
    """Central interval of level `level` from S draws, per entry.

    - `"predictive"` (default): `m ± t_{S−1}((1+l)/2) · s · sqrt(1 + 1/S)` with the ensemble
      mean m and standard deviation s (ddof 1): the prediction interval for one more draw from
      the same (approximately Gaussian) distribution. It covers a fraction `l` of a calibrated
      posterior's truths whatever S is, where the empirical quantiles of few draws are too
      narrow (with 8 draws the 5-95% quantile range of a perfectly calibrated Gaussian
      posterior covers 72% of its truths, not 90%). Needs S ≥ 2.
    - `"quantile"`: the `(1 - l)/2` and `(1 + l)/2` empirical quantiles (NumPy's linear
      interpolation): distribution-free, right only for large S.

    Both scale about the ensemble mean under `inference.calibrate.apply_temperature`.
    """
    from scipy.stats import t as student_t

    x = np.asarray(draws, dtype=np.float64)
    level = _check_levels((level,))[0]
    if method not in INTERVAL_METHODS:
        raise bad_input("method", f"one of {INTERVAL_METHODS}", method)
    if method == "quantile":
        lo, hi = np.quantile(x, [(1 - level) / 2, (1 + level) / 2], axis=0)
        return lo, hi
    s = x.shape[0]
    if s < 2:
        raise bad_input("draws", "at least 2 draws for predictive intervals (or method='quantile')", f"{s} draw")
    m = x.mean(axis=0)
    half = student_t.ppf(0.5 + level / 2, s - 1) * x.std(axis=0, ddof=1) * np.sqrt(1 + 1 / s)
    return m - half, m + half


def interval_coverage(
    truth: Float[ArrayLike, "*shape"],
    draws: Float[ArrayLike, "S *shape"],
    levels: Sequence[float] = (0.5, 0.9),
    *,
    method: str = "predictive",
) -> Mapping[float, float]:
    """Fraction of truth entries inside the central posterior intervals (ends included).

    A calibrated posterior covers a fraction close to each level. The intervals come from
    `interval_bounds(draws, level, method)`: by default the draw-count-aware predictive interval,
    so the figure does not depend on how many draws were taken (see `interval_bounds`).

    **Arguments:** `truth (*shape)`, `draws (S, *shape)`, `levels` in (0, 1), `method`.

    **Returns:** `{level: fraction}`.
    """
    y, x = _ensemble(truth, draws)
    result: dict[float, float] = {}
    for level in _check_levels(levels):
        lo, hi = interval_bounds(x, level, method)
        inside = ((y >= lo) & (y <= hi)).astype(np.float64)
        result[level] = float(inside[~np.isnan(y)].mean())
    return result


def pit_values(
    truth: Float[ArrayLike, "*shape"],
    draws: Float[ArrayLike, "S *shape"],
    *,
    key: jax.Array | None = None,
) -> Float[np.ndarray, "*shape"]:
    """Randomised probability integral transform of each truth entry in its ensemble.

    With `L = #{x_i < y}` and `E = #{x_i == y}` among S draws, the PIT is
    `(L + U * (E + 1)) / (S + 1)`, `U ~ Uniform(0, 1)`: the rank of y among the S + 1 values,
    spread uniformly over ties and within the rank bin. For a calibrated ensemble the values
    are Uniform(0, 1) (a histogram should be flat).

    **Arguments:** `truth (*shape)`, `draws (S, *shape)`; `key` typed PRNG key for U
    (default `jax.random.key(0)`, so results are reproducible).

    **Returns:** `(*shape)` values in [0, 1] (NaN where the truth is missing).
    """
    y, x = _ensemble(truth, draws)
    if key is None:
        key = jax.random.key(0)
    check_key(key)
    s = x.shape[0]
    below = (x < y).sum(axis=0)
    ties = (x == y).sum(axis=0)
    u = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel()).uniform(size=y.shape)
    out = (below + u * (ties + 1)) / (s + 1)
    return np.where(np.isnan(y), np.nan, out) if np.isnan(y).any() else out


def _gaussian(truth: Any, mean: Any, std: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = _array(truth, "truth")
    m = _array(mean, "mean")
    s = _array(std, "std")
    if m.shape != y.shape or s.shape != y.shape:
        raise bad_input("mean/std", f"the shape of truth {y.shape}", f"shapes {m.shape} and {s.shape}")
    if y.size == 0:
        raise bad_input("truth", "at least one entry", f"shape {y.shape}")
    if (s <= 0).any():
        raise bad_input("std", "positive standard deviations", f"{int((s <= 0).sum())} entries <= 0")
    return y, m, s


def crps_gaussian(
    truth: Float[ArrayLike, "*shape"], mean: Float[ArrayLike, "*shape"], std: Float[ArrayLike, "*shape"],
    *, reduce: Literal["mean", "none"] = "mean",
) -> float | Float[np.ndarray, "*shape"]:
    """CRPS of Gaussian predictive distributions N(mean, std²), in closed form:
    `std · [z (2Φ(z) − 1) + 2φ(z) − 1/√π]`, `z = (truth − mean)/std` (Gneiting & Raftery 2007)."""
    from scipy.stats import norm

    y, m, s = _gaussian(truth, mean, std)
    if reduce not in ("mean", "none"):
        raise bad_input("reduce", "'mean' or 'none'", reduce)
    z = (y - m) / s
    crps = s * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / np.sqrt(np.pi))
    return float(crps.mean()) if reduce == "mean" else crps


def gaussian_interval_coverage(
    truth: Float[ArrayLike, "*shape"], mean: Float[ArrayLike, "*shape"], std: Float[ArrayLike, "*shape"],
    levels: Sequence[float] = (0.5, 0.9),
) -> Mapping[float, float]:
    """Fraction of truth entries inside the central intervals `mean ± z_{(1+l)/2} std`."""
    from scipy.stats import norm

    y, m, s = _gaussian(truth, mean, std)
    return {level: float((np.abs(y - m) <= norm.ppf(0.5 + level / 2) * s).mean()) for level in _check_levels(levels)}


def summarise(values: Float[ArrayLike, " n"], *, ddof: int = 0) -> tuple[float, float]:
    """`(mean, std)` of per-trajectory figures (population std unless `ddof=1`)."""
    v = _array(values, "values").ravel()
    if isinstance(ddof, bool) or ddof not in (0, 1):
        raise bad_input("ddof", "0 or 1", ddof)
    if v.size <= ddof:
        raise bad_input("values", f"more than {ddof} value(s)", f"{v.size}")
    return float(v.mean()), float(v.std(ddof=ddof))


# -- multivariate scores over whole frames (scoringrules) -------------------------------------------
# Frames are the entries of the first axis (time stamps); each frame's non-missing points form one
# vector. `scoringrules` is called with its NumPy backend: its default is numba when installed,
# which would make the figures depend on what else is in the environment.
VARIOGRAM_MAX_POINTS = 400


def _check_subsample(max_points: Any, seed: Any) -> None:
    if max_points is not None and (isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer))
                                   or max_points < 2):
        raise bad_input("max_points", "None (whole frames) or an int >= 2", max_points)
    check_count(seed, "seed", minimum=0)


def _frame_inputs(truth: Any, draws: Any) -> tuple[np.ndarray, np.ndarray]:
    y, x = _ensemble(truth, draws)
    if y.ndim < 2:
        raise bad_input("truth", "shape (T, *space): frames along the first axis, at least one space axis",
                        f"shape {y.shape}")
    return y, x


def _frames(
    y: np.ndarray, x: np.ndarray, max_points: int | None, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`(y (D,), x (S, D))` per frame of checked `y (T, *space)`, `x (S, T, *space)`: the frame's
    non-missing points, at most `max_points` of them.

    The subset comes from one permutation of the spatial points (`seed`), shared by all frames:
    under a fixed land mask every frame, and every posterior on the same grid, is scored on the
    same points. A frame whose truth is all missing gives `D = 0`.
    """
    t = y.shape[0]
    y_flat = y.reshape(t, -1)
    x_flat = x.reshape(x.shape[0], t, -1)
    n_space = y_flat.shape[1]
    order = None
    if max_points is not None and max_points < n_space:
        order = np.random.default_rng(int(seed)).permutation(n_space)
    for i in range(t):
        if order is None:
            keep = np.flatnonzero(~np.isnan(y_flat[i]))
        else:
            keep = order[~np.isnan(y_flat[i, order])][:max_points]
        yield y_flat[i, keep], x_flat[:, i, keep]


def _reduce_frames(per_frame: np.ndarray, reduce: str) -> float | np.ndarray:
    return float(np.nanmean(per_frame)) if reduce == "mean" else per_frame


def _check_reduce(reduce: Any) -> None:
    if reduce not in ("mean", "none"):
        raise bad_input("reduce", "'mean' or 'none'", reduce)


def energy_score(
    truth: Float[ArrayLike, "T *space"],
    draws: Float[ArrayLike, "S T *space"],
    *,
    max_points: int | None = None,
    seed: int = 0,
    reduce: Literal["mean", "none"] = "mean",
) -> float | Float[np.ndarray, " T"]:
    """Energy score of the draws per frame (lower is better), `scoringrules.es_ensemble`.

    `ES = E‖X − y‖ − ½ E‖X − X′‖` with `‖·‖` the Euclidean norm over all (non-missing) points of
    one frame, estimated with the fair estimator (pairs of distinct draws, like `crps_ensemble(...,
    fair=True)`; with one point per frame it equals that CRPS). Proper for the joint distribution of
    a frame: draws with the right marginals but the wrong spatial correlation score worse.

    Units: those of the field; the value grows like the square root of the number of points, so
    compare only posteriors on the same grid (and the same `max_points`, `seed`).
    Memory: `S² × D` floats per frame (75 MB for 32 draws of a 9,216-point frame).

    **Arguments:**

    - `truth`: `(T, *space)`, frames along the first axis; NaN entries (missing) are left out of
      their frame. `draws`: `(S, T, *space)`, S >= 2 (the fair estimator needs pairs).
    - `max_points`: None (default) scores whole frames; an int scores a random subset of that
      many points per frame, drawn with `seed` (the same points in every frame).
    - `reduce`: `"mean"` -> the mean over frames (frames with no truth left out), `"none"` -> `(T,)`,
      NaN for frames with no truth.
    """
    import scoringrules as sr

    y, x = _frame_inputs(truth, draws)
    _check_subsample(max_points, seed)
    _check_reduce(reduce)
    if x.shape[0] < 2:
        raise bad_input("draws", "at least 2 draws (the fair energy score needs pairs of distinct draws)",
                        f"shape {x.shape}")
    frames = _frames(y, x, max_points, seed)
    per_frame = np.array([float(sr.es_ensemble(y, x, estimator="fair", backend="numpy")) if y.size else np.nan
                          for y, x in frames])
    return _reduce_frames(per_frame, reduce)


def variogram_score(
    truth: Float[ArrayLike, "T *space"],
    draws: Float[ArrayLike, "S T *space"],
    *,
    p: float = 0.5,
    max_points: int | None = VARIOGRAM_MAX_POINTS,
    seed: int = 0,
    reduce: Literal["mean", "none"] = "mean",
) -> float | Float[np.ndarray, " T"]:
    """Variogram score of order `p` per frame (lower is better), `scoringrules.vs_ensemble`.

    `VS_p = Σ_i Σ_j (|y_i − y_j|^p − mean_s |x_si − x_sj|^p)²` over all ordered pairs of points of
    one frame, unit weights, the standard (not fair) estimator of Scheuerer & Hamill (2015). It
    compares the variogram (the spread of differences between points) of the draws with the truth's,
    so it sees a wrong spatial correlation that marginal scores miss; it is blind to a common shift of
    all points.

    Cost: `S × D²` per frame, so large frames are subsampled: by default at most
    `VARIOGRAM_MAX_POINTS` (400) points per frame, drawn at random with `seed` (the same points in
    every frame). The value is a sum over `D²` pairs: compare only posteriors on the same grid with
    the same `max_points` and `seed`. Units: the field's units to the power `2p`.

    **Arguments:**

    - `truth`: `(T, *space)`, NaN entries left out of their frame; `draws`: `(S, T, *space)`.
    - `p`: order > 0 (0.5 is the usual choice, robust to outliers).
    - `max_points`: int >= 2, or None for whole frames; `seed`: int >= 0.
    - `reduce`: `"mean"` over frames with truth, or `"none"` -> `(T,)` (NaN for frames with none).
    """
    import scoringrules as sr

    y, x = _frame_inputs(truth, draws)
    _check_subsample(max_points, seed)
    _check_reduce(reduce)
    if isinstance(p, bool) or not isinstance(p, (int, float, np.number)) or not (0 < p < np.inf):
        raise bad_input("p", "a finite order > 0 (usually 0.5)", p)
    frames = _frames(y, x, max_points, seed)
    per_frame = np.array([float(sr.vs_ensemble(y, x, p=float(p), estimator="nrg", backend="numpy")) if y.size
                          else np.nan for y, x in frames])
    return _reduce_frames(per_frame, reduce)


__all__ = ["INTERVAL_METHODS", "VARIOGRAM_MAX_POINTS", "crps_ensemble", "crps_gaussian", "energy_score",
           "gaussian_interval_coverage", "interval_bounds", "interval_coverage", "mae", "pit_values", "rmse",
           "summarise", "variogram_score", "vrmse"]
