"""K-fold calibration: folds stratified per time stamp, held-out field draws and noise per fold,
the field temperature τ fitted on the field's share of the predictive, in-fold and out-of-fold
coverage per observed / unobserved frame.
"""

from __future__ import annotations

from collections.abc import Sequence, Callable
import dataclasses
import math
from typing import Any

import jax
from jaxtyping import ArrayLike, Float, Int, PRNGKeyArray, Bool
import numpy as np
from tqdm.auto import tqdm

from models.likelihoods import Likelihood, SIGMA_LIKELIHOODS, as_likelihood
from sdift_prob.data.observations import ObservationSet
from sdift_prob.errors import NumericalError, bad_input
from sdift_prob.metrics import INTERVAL_METHODS, interval_bounds
from sdift_prob.validation import check_key, check_count

from .temperature import _check_number, _check_grid


# == K-fold calibration of the latent field (issue 18) ==============================================
# `calibrate` above fits τ on one held-out split and reports its coverage on the same points, so its
# "after" figure is nominal by construction, and it tempers predictions that include the observation
# noise. The functions below cross-validate instead: every observation is held out once (K folds),
# τ tempers only the field's share of the predictive (the noise is drawn as it is), and the coverage is
# also reported on folds that were not used to fit τ.

# Variance factors 1/32 .. 64, a factor 2^(1/8) apart (std factors 0.18 .. 8, ~4.4% steps).
KFOLD_TEMPERATURES: tuple[float, ...] = tuple(float(2.0 ** (k / 8)) for k in range(-40, 49))
FOLD_LIKELIHOODS = SIGMA_LIKELIHOODS  # the likelihoods with a noise std (models.likelihoods)
SUBSETS = ("all", "observed_frames", "unobserved_frames")
STAGES = ("before", "in_fold", "out_of_fold")

PredictFold = Callable[[PRNGKeyArray, ObservationSet, ObservationSet], Any]
"""`predict(key, obs_fit, obs_held) -> (field, noise_sd)` or `(field, noise_sd, log_lik)`:
`field (S, N_held)` posterior draws of the **noise-free** field at the held-out points given `obs_fit`
(physical units), `noise_sd` the observation noise std of each draw and point (broadcastable to
`(S, N_held)`: `(S, 1)` for an inferred σ, a number for a known one), and optionally `log_lik
(S, N_held)` = log p(y_i | draw) when the likelihood is not one of `FOLD_LIKELIHOODS`."""


def kfold_split(
    key: PRNGKeyArray, obs: ObservationSet, n_folds: int = 5, *, frame_fraction: float = 0.0
) -> Int[np.ndarray, " N"]:
    """Assign every observation to one of `n_folds` folds.

    A fraction `frame_fraction` of the time stamps (rounded, chosen at random) is held out **whole**:
    all points of such a time stamp go to the same fold, so the reconstruction that predicts them has
    no data at that time stamp (an *unobserved frame*: what the guided sampler must fill in from the
    other frames). The points of the other time stamps are spread over the folds inside each time stamp
    (stratified: a frame with n points gives each fold about n / K of them), so each fold's
    reconstruction still sees the rest of that frame (an *observed frame*).

    **Arguments:** `key` typed PRNG key (the split depends on `key` and `obs` only); `obs` at least
    `n_folds` points; `n_folds` int >= 2; `frame_fraction` in [0, 1).

    **Returns:** int64 `(N,)` fold ids in `0..n_folds-1`, every fold non-empty.
    """
    check_key(key)
    if not isinstance(obs, ObservationSet):
        raise bad_input("obs", "an ObservationSet", type(obs).__name__)
    k = check_count(n_folds, "n_folds", minimum=2)
    frac = _check_number(frame_fraction, "frame_fraction")
    if not 0.0 <= frac < 1.0:
        raise bad_input("frame_fraction", "a number in [0, 1)", frame_fraction)
    n = obs.n_points
    if n < k:
        raise bad_input("obs", f"at least n_folds={k} observations (one per fold)", f"{n} point(s)")
    stamps, frame = np.unique(obs.time, return_inverse=True)
    rng = _rng(key)
    n_whole = int(math.floor(frac * stamps.size + 0.5))
    whole = np.zeros(stamps.size, dtype=bool)
    order = rng.permutation(stamps.size)
    whole[order[:n_whole]] = True
    fold = np.empty(n, dtype=np.int64)
    # Whole frames: round-robin over the folds in random order.
    whole_fold = np.empty(stamps.size, dtype=np.int64)
    whole_fold[order[:n_whole]] = np.arange(n_whole) % k
    offset = rng.integers(0, k, size=stamps.size)
    for f in range(stamps.size):
        members = np.flatnonzero(frame == f)
        if whole[f]:
            fold[members] = whole_fold[f]
        else:
            fold[rng.permutation(members)] = (offset[f] + np.arange(members.size)) % k
    counts = np.bincount(fold, minlength=k)
    for empty in np.flatnonzero(counts == 0):  # only with very few points: move one from the largest fold
        donor = int(np.argmax(np.bincount(fold, minlength=k)))
        fold[np.flatnonzero(fold == donor)[0]] = empty
    return fold


@dataclasses.dataclass(frozen=True, eq=False)
class FoldPredictions:
    """Held-out predictions of a K-fold split: every observation predicted by the reconstruction that
    did not see its fold (`predict_folds`). Arrays are in the order of the `ObservationSet`.

    **Fields:**

    - `fold`: `(N,)` fold of each observation.
    - `field`: `(S, N)` draws of the noise-free field at each point, from the reconstruction without
      the point's fold (physical units).
    - `noise_sd`: `(S, N)` observation noise std of each draw (physical units).
    - `observed`: `(N,)` the observed values.
    - `frame_observed`: `(N,)` True where that reconstruction had other data at the point's time
      stamp (observed frame), False where it had none there (a frame without data).
    - `log_lik`: `(S, N)` log p(y_i | draw), density per physical unit, under `likelihood`.
    - `likelihood`, `df`: the observation model (`df` for "student_t").
    """

    fold: Int[np.ndarray, " N"]
    field: Float[np.ndarray, "S N"]
    noise_sd: Float[np.ndarray, "S N"]
    observed: Float[np.ndarray, " N"]
    frame_observed: Bool[np.ndarray, " N"]
    log_lik: Float[np.ndarray, "S N"]
    likelihood: str
    df: float = 4.0

    @property
    def n_folds(self) -> int:
        return int(self.fold.max()) + 1

    @property
    def num_draws(self) -> int:
        return int(self.field.shape[0])


def _fold_likelihood(likelihood: Likelihood | str, df: float = 4.0, hint: str = "") -> Likelihood:
    """The `Likelihood` object of a name (+ `df`) or an object; it must have a noise std σ."""
    if isinstance(likelihood, Likelihood):
        lik = likelihood
    elif isinstance(likelihood, str) and likelihood in FOLD_LIKELIHOODS:
        lik = as_likelihood(likelihood, df=df)
    else:
        lik = None
    if lik is None or not lik.has_sigma:
        raise bad_input("likelihood", f"one of {FOLD_LIKELIHOODS}{hint}", likelihood)
    return lik


def _noise_dist(likelihood: Likelihood | str, loc: Any, sd: Any, df: float) -> Any:
    """The observation noise as a frozen SciPy distribution, parametrised as `models.observation`
    (σ = std for "gaussian" and "laplace" (b = σ/√2), the scale for "student_t"):
    `Likelihood.scipy_distribution`."""
    return _fold_likelihood(likelihood, df).scipy_distribution(loc, sd)


def _rng(key: PRNGKeyArray) -> np.random.Generator:
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())


def fold_log_lik(observed: Any, field: Any, noise_sd: Any, likelihood: Likelihood | str = "gaussian",
                 df: float = 4.0) -> np.ndarray:
    """`(S, N)` log density (per physical unit, float64) of each observed value `(N,)` under each
    draw `field (S, N)` with noise std `noise_sd`, parametrised as `models.observation`
    (`likelihood`: a `Likelihood` with a σ, or its name with `df`)."""
    lik = _fold_likelihood(likelihood, float(df), " (or return log_lik from predict)")
    return lik.scipy_distribution(np.asarray(field, dtype=np.float64),
                                  np.asarray(noise_sd, dtype=np.float64)).logpdf(np.asarray(observed, dtype=np.float64))


def _fold_output(raw: Any, n_held: int, fold_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if not isinstance(raw, tuple) or len(raw) not in (2, 3):
        raise bad_input("predict", "a tuple (field (S, N_held), noise_sd) or (field, noise_sd, log_lik)",
                        type(raw).__name__)
    try:
        field = np.asarray(raw[0], dtype=np.float64)
        noise = np.asarray(raw[1], dtype=np.float64)
        ll = None if len(raw) == 2 else np.asarray(raw[2], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise bad_input("predict", "numeric arrays", str(exc)) from exc
    if field.ndim != 2 or field.shape[1] != n_held or field.shape[0] < 2:
        raise bad_input("predict", f"field draws of shape (S >= 2, N_held={n_held}) for fold {fold_id}",
                        f"shape {field.shape}")
    try:
        noise = np.broadcast_to(noise, field.shape).copy()
    except ValueError as exc:
        raise bad_input("predict", f"noise_sd broadcastable to {field.shape} for fold {fold_id}",
                        f"shape {noise.shape}") from exc
    if not np.isfinite(field).all():
        raise NumericalError(f"predict: non-finite field draws for fold {fold_id} "
                             f"({int((~np.isfinite(field)).sum())} of {field.size} entries)")
    if not (np.isfinite(noise) & (noise >= 0)).all():
        raise bad_input("predict", f"finite noise_sd >= 0 for fold {fold_id}", "negative, NaN or infinite entries")
    if ll is not None and ll.shape != field.shape:
        raise bad_input("predict", f"log_lik of shape {field.shape} for fold {fold_id}", f"shape {ll.shape}")
    return field, noise, ll


def predict_folds(
    key: PRNGKeyArray,
    predict: PredictFold,
    obs: ObservationSet,
    *,
    n_folds: int = 5,
    frame_fraction: float = 0.0,
    folds: Int[ArrayLike, " N"] | None = None,
    likelihood: Likelihood | str = "gaussian",
    df: float = 4.0,
    progress: bool = False,
) -> FoldPredictions:
    """Run `predict` once per fold (K reconstructions) and collect every held-out prediction.

    The same predictions serve `calibrate_folds` (field temperature) and `inference.checks.kfold_elpd`
    (model comparison), so the K reconstructions are paid for once.

    **Arguments:**

    - `key`: typed PRNG key; split into the fold key (unless `folds` is given) and one key per fold.
    - `predict`: see `PredictFold`.
    - `obs`: all observations.
    - `n_folds`, `frame_fraction`: as `kfold_split` (ignored when `folds` is given).
    - `folds`: `(N,)` int fold ids 0..K-1 (each fold non-empty and K >= 2) to use instead.
    - `likelihood`, `df`: the observation model used for `log_lik` when `predict` does not return it:
      a `models.likelihoods.Likelihood` with a σ, or its name (`df` for "student_t").
    - `progress`: a progress bar over the folds.

    **Returns:** `FoldPredictions`.
    """
    check_key(key)
    if not callable(predict):
        raise bad_input("predict", "a callable (key, obs_fit, obs_held) -> (field, noise_sd[, log_lik])", predict)
    if not isinstance(obs, ObservationSet):
        raise bad_input("obs", "an ObservationSet", type(obs).__name__)
    if not isinstance(progress, bool):
        raise bad_input("progress", "True or False", progress)
    df = _check_number(df, "df", positive=True)
    lik = _fold_likelihood(likelihood, df)
    df = lik.params().get("df", df)
    k_split, k_folds = jax.random.split(key)
    if folds is None:
        fold = kfold_split(k_split, obs, n_folds, frame_fraction=frame_fraction)
    else:
        fold = np.asarray(folds)
        if fold.dtype.kind not in "iu" or fold.shape != (obs.n_points,):
            raise bad_input("folds", f"an int array of shape ({obs.n_points},)", f"{fold.dtype} {fold.shape}")
        k = int(fold.max()) + 1 if fold.size else 0
        if fold.min(initial=0) < 0 or k < 2 or (np.bincount(fold, minlength=k) == 0).any():
            raise bad_input("folds", "ids 0..K-1 with K >= 2 and every fold non-empty", np.unique(fold).tolist())
        fold = fold.astype(np.int64)
    k = int(fold.max()) + 1
    n = obs.n_points
    field = noise = ll = None
    frame_observed = np.zeros(n, dtype=bool)
    for f in tqdm(range(k), desc="folds", disable=not progress):
        held = fold == f
        obs_fit, obs_held = obs.subset(~held), obs.subset(held)
        out_f, out_n, out_ll = _fold_output(predict(jax.random.fold_in(k_folds, f), obs_fit, obs_held),
                                            int(held.sum()), f)
        if field is None:
            s = out_f.shape[0]
            field, noise, ll = np.empty((s, n)), np.empty((s, n)), np.empty((s, n))
        elif out_f.shape[0] != field.shape[0]:
            raise bad_input("predict", f"the same number of draws for every fold ({field.shape[0]})",
                            f"{out_f.shape[0]} for fold {f}")
        field[:, held], noise[:, held] = out_f, out_n
        ll[:, held] = fold_log_lik(obs_held.value, out_f, out_n, lik) if out_ll is None else out_ll
        frame_observed[held] = np.isin(obs_held.time, obs_fit.time)
    assert field is not None and noise is not None and ll is not None
    return FoldPredictions(fold=fold, field=field, noise_sd=noise, observed=np.asarray(obs.value, dtype=np.float64),
                           frame_observed=frame_observed, log_lik=ll, likelihood=lik.name, df=df)


@dataclasses.dataclass(frozen=True, eq=False)
class KFoldCalibration:
    """Outcome of `calibrate_folds` / `calibrate_kfold`.

    **Fields:**

    - `temperature`: τ fitted on all folds (apply it to the posterior with
      `inference.report.temper_posterior`); variance factor of the field's spread about its mean.
    - `temperature_folds`: `(K,)` τ fitted without fold k: the τ whose coverage on fold k is the
      out-of-fold figure.
    - `temperature_by_subset`: τ fitted on the observed frames' points only and on the unobserved
      frames' points only (NaN where a subset has no point): a large difference says one τ cannot
      serve both.
    - `reached`: False if the largest grid temperature still fell short of a nominal level (τ is then
      that largest value).
    - `coverage`: DataArray `(stage, subset, level)`: held-out coverage of the predictive intervals
      (field draws tempered, noise added) of the observed values; stage "before" (τ = 1), "in_fold"
      (τ fitted on the same points: nominal by construction), "out_of_fold" (each fold at the τ fitted
      on the other folds: the honest figure); subset "all", "observed_frames", "unobserved_frames"
      (coord `n_points`). NaN where a subset is empty.
    - `levels`, `temperatures`, `method`, `num_draws`, `n_folds`.
    - `predictions`: the `FoldPredictions` used.
    """

    temperature: float
    temperature_folds: Float[np.ndarray, " K"]
    temperature_by_subset: dict[str, float]
    reached: bool
    coverage: Any  # xarray.DataArray (stage, subset, level)
    levels: tuple[float, ...]
    temperatures: tuple[float, ...]
    method: str
    num_draws: int
    n_folds: int
    predictions: FoldPredictions

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (NaN as None)."""

        def num(x: float) -> float | None:
            return float(x) if math.isfinite(float(x)) else None

        table = {
            stage: {subset: {f"{lv:g}": num(self.coverage.sel(stage=stage, subset=subset, level=lv))
                             for lv in self.levels} for subset in SUBSETS}
            for stage in STAGES
        }
        return {
            "temperature": self.temperature,
            "temperature_folds": [float(t) for t in self.temperature_folds],
            "temperature_by_subset": {k: num(v) for k, v in self.temperature_by_subset.items()},
            "reached": self.reached,
            "coverage": table,
            "n_points": {s: int(v) for s, v in zip(SUBSETS, self.coverage.coords["n_points"].values)},
            "levels": list(self.levels),
            "method": self.method,
            "num_draws": self.num_draws,
            "n_folds": self.n_folds,
        }


def _inside(observed: np.ndarray, field: np.ndarray, noise: np.ndarray, temps: Sequence[float],
            levels: Sequence[float], method: str) -> np.ndarray:
    """`(T, L, N)` bool: observed value inside the central interval of the predictive draws
    `apply_temperature(field, τ) + noise` for each τ and level."""
    mean = field.mean(axis=0)
    dev = field - mean
    out = np.empty((len(temps), len(levels), observed.size), dtype=bool)
    for i, tau in enumerate(temps):
        draws = mean + math.sqrt(tau) * dev + noise
        for j, lv in enumerate(levels):
            lo, hi = interval_bounds(draws, lv, method)
            out[i, j] = (observed >= lo) & (observed <= hi)
    return out


def _fit_tau(inside: np.ndarray, select: np.ndarray, temps: Sequence[float],
             levels: Sequence[float]) -> tuple[int, bool]:
    """Index of the smallest grid τ at which the coverage over `select` reaches every level."""
    if not select.any():
        return -1, False
    cov = inside[:, :, select].mean(axis=2)  # (T, L)
    ok = np.all(cov >= np.asarray(levels)[None, :] - 1e-12, axis=1)
    if not ok.any():
        return len(temps) - 1, False
    return int(np.argmax(ok)), True


def _coverage_table(stages: tuple[np.ndarray, ...], subsets: dict[str, np.ndarray], level_grid: tuple[float, ...],
                    method: str, n_draws: int, n_folds: int) -> Any:
    """`KFoldCalibration.coverage`: the share of held-out values inside the intervals, per stage
    (before, in-fold, out-of-fold; each `(L, N)` booleans), subset of points and level."""
    import xarray as xr

    table = np.full((len(STAGES), len(SUBSETS), len(level_grid)), np.nan)
    n_points = []
    for j, name in enumerate(SUBSETS):
        sel = subsets[name]
        n_points.append(int(sel.sum()))
        if sel.any():
            for i, stage in enumerate(stages):
                table[i, j] = stage[:, sel].mean(axis=1)
    return xr.DataArray(
        table, dims=("stage", "subset", "level"),
        coords={"stage": list(STAGES), "subset": list(SUBSETS), "level": list(level_grid),
                "n_points": ("subset", n_points)},
        name="coverage",
        attrs={"method": method, "n_draws": n_draws, "n_folds": n_folds,
               "description": "held-out coverage of the observed values by predictive intervals "
                              "(field tempered, noise not)"},
    )


def calibrate_folds(
    key: PRNGKeyArray,
    predictions: FoldPredictions,
    *,
    levels: Sequence[float] = (0.5, 0.9),
    temperatures: Sequence[float] = KFOLD_TEMPERATURES,
    method: str = "predictive",
) -> KFoldCalibration:
    """Cross-validated temperature of the **field**, from K-fold held-out predictions.

    At every held-out observation the predictive draws are `mean + sqrt(τ) (field draw − mean) +
    noise`: τ tempers the field's spread only (the variance factor of `apply_temperature`), the
    observation noise is drawn from the likelihood with each draw's σ and is never tempered. τ is the
    smallest grid value at which the central `levels` intervals of those draws (`method`, as
    `metrics.interval_bounds`) cover at least their nominal share of the held-out values.

    It is fitted three ways: on all folds (`temperature`, the one to apply), on all folds but k for each
    k (the out-of-fold coverage of fold k uses that τ), and on the observed / unobserved frames
    separately.

    **What it can detect:** a field spread that is too narrow or too wide on average over the
    held-out points, separately where the reconstruction had data at the time stamp and where it had
    none. **What it cannot:** a wrong spread where no observation is ever held out (regions never
    observed, forecast lead times beyond the data), a wrong spatial or temporal correlation of the
    draws (use the energy / variogram scores), and, at precise data, little: when σ is large next to
    the field's spread, the coverage barely moves with τ and τ is poorly determined. Held-out points
    are predicted by reconstructions from fewer data (a fraction (K−1)/K), whose spread is a little
    wider than the full reconstruction's, so τ is slightly conservative for it.

    **Arguments:** `key` typed PRNG key (noise draws; common to every τ); `predictions` from
    `predict_folds`; `levels` in (0, 1); `temperatures` candidate τ (distinct, > 0; default 1/32..64 in
    steps of 2^(1/8)); `method` "predictive" (Student-t, draw-count-aware) or "quantile".

    **Returns:** `KFoldCalibration`.
    """
    check_key(key)
    if not isinstance(predictions, FoldPredictions):
        raise bad_input("predictions", "a FoldPredictions from predict_folds", type(predictions).__name__)
    level_grid = _check_grid(levels, "levels", positive=False, unit_open=True)
    temp_grid = tuple(sorted(_check_grid(temperatures, "temperatures", positive=True)))
    if method not in INTERVAL_METHODS:
        raise bad_input("method", f"one of {INTERVAL_METHODS}", method)
    p = predictions
    eps = _noise_dist(p.likelihood, 0.0, 1.0, p.df).rvs(size=p.field.shape, random_state=_rng(key))
    noise = p.noise_sd * eps
    inside = _inside(p.observed, p.field, noise, temp_grid, level_grid, method)
    everything = np.ones(p.fold.size, dtype=bool)
    i_all, reached = _fit_tau(inside, everything, temp_grid, level_grid)
    k = p.n_folds
    i_folds = np.array([_fit_tau(inside, p.fold != f, temp_grid, level_grid)[0] for f in range(k)])
    subsets = {"all": everything, "observed_frames": p.frame_observed, "unobserved_frames": ~p.frame_observed}
    by_subset = {}
    for name in ("observed_frames", "unobserved_frames"):
        i, _ = _fit_tau(inside, subsets[name], temp_grid, level_grid)
        by_subset[name] = float(temp_grid[i]) if i >= 0 else math.nan
    i_one = int(np.argmin(np.abs(np.log(np.asarray(temp_grid)))))
    before = inside[i_one] if math.isclose(temp_grid[i_one], 1.0) else _inside(
        p.observed, p.field, noise, (1.0,), level_grid, method)[0]
    in_fold = inside[i_all]
    out_fold = inside[i_folds[p.fold], :, np.arange(p.fold.size)].T  # (L, N): each point at its fold's τ
    coverage = _coverage_table((before, in_fold, out_fold), subsets, level_grid, method, p.num_draws, k)
    return KFoldCalibration(
        temperature=float(temp_grid[i_all]),
        temperature_folds=np.asarray([temp_grid[i] for i in i_folds], dtype=np.float64),
        temperature_by_subset=by_subset, reached=bool(reached), coverage=coverage, levels=level_grid,
        temperatures=temp_grid, method=method, num_draws=p.num_draws, n_folds=k, predictions=p,
    )


def calibrate_kfold(
    key: PRNGKeyArray,
    predict: PredictFold,
    obs: ObservationSet,
    *,
    n_folds: int = 5,
    frame_fraction: float = 0.0,
    likelihood: Likelihood | str = "gaussian",
    df: float = 4.0,
    levels: Sequence[float] = (0.5, 0.9),
    temperatures: Sequence[float] = KFOLD_TEMPERATURES,
    method: str = "predictive",
    progress: bool = False,
) -> KFoldCalibration:
    """`predict_folds` then `calibrate_folds`: K reconstructions, each from all folds but one, and the
    cross-validated field temperature with in-fold and out-of-fold coverage side by side (see
    `calibrate_folds` for what it can and cannot detect). `frame_fraction > 0` holds whole time stamps
    out too, so the frames without data get their own figures."""
    check_key(key)
    k_pred, k_cal = jax.random.split(key)
    preds = predict_folds(k_pred, predict, obs, n_folds=n_folds, frame_fraction=frame_fraction,
                          likelihood=likelihood, df=df, progress=progress)
    return calibrate_folds(k_cal, preds, levels=levels, temperatures=temperatures, method=method)
