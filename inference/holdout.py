"""Calibration on one held-out split: guidance strength ζ and posterior temperature τ chosen so that
held-out central intervals reach their nominal coverage (the choice rule: `inference.calibrate`).
"""

from __future__ import annotations

from collections.abc import Sequence, Callable
import dataclasses
import math
from typing import Any

import jax
from jaxtyping import Float, PRNGKeyArray, Bool
import numpy as np
from tqdm.auto import tqdm

from sdift_prob.data.observations import ObservationSet
from sdift_prob.errors import NumericalError, bad_input
from sdift_prob.metrics import crps_ensemble, interval_bounds, interval_coverage
from sdift_prob.validation import check_key

from .temperature import _check_number, _check_grid, apply_temperature


# Around the reference guidance step ζ ≈ 0.01 (paper-notes: 0.009-0.01), a factor 2 apart.
DEFAULT_ZETAS: tuple[float, ...] = (0.0025, 0.005, 0.01, 0.02, 0.04)
# Variance factors 1/4 .. 16, a factor sqrt(2) apart (std factors 1/2 .. 4).
DEFAULT_TEMPERATURES: tuple[float, ...] = tuple(float(2.0 ** (k / 2)) for k in range(-4, 9))

SamplePredictive = Callable[[PRNGKeyArray, ObservationSet, ObservationSet, float], Any]
"""`sample_predictive(key, obs_fit, obs_held, zeta) -> draws (S, N_held)`: predictive draws of
the held-out values (physical units, observation noise included) given `obs_fit`, with
guidance strength `zeta`."""


def holdout_split(
    key: PRNGKeyArray, obs: ObservationSet, holdout_fraction: float = 0.2
) -> Bool[np.ndarray, " N"]:
    """Random held-out mask, stratified per time stamp.

    `H = round(holdout_fraction * N)` points are held out (at least 1, at most N - 1). Each time
    stamp gives its proportional share, rounded so that the totals add up, with ties broken at
    random; a time stamp keeps at least one of its points unless `H` cannot be reached otherwise
    (e.g. one point per time stamp), and only then are whole time stamps held out. Inside a time
    stamp the held-out points are a uniform random choice.

    **Arguments:**

    - `key`: typed PRNG key; the split is a function of `key` and `obs` only.
    - `obs`: the observations, at least 2 points.
    - `holdout_fraction`: in (0, 1).

    **Returns:** boolean `(N,)`, True = held out.
    """
    check_key(key)
    if not isinstance(obs, ObservationSet):
        raise bad_input("obs", "an ObservationSet", type(obs).__name__)
    frac = _check_number(holdout_fraction, "holdout_fraction", unit_open=True)
    n = obs.n_points
    if n < 2:
        raise bad_input("obs", "at least 2 observations (some to condition on, some to hold out)",
                        f"{n} point(s)")
    target = min(max(1, int(math.floor(frac * n + 0.5))), n - 1)
    _, frame, counts = np.unique(obs.time, return_inverse=True, return_counts=True)
    k_points, k_ties = jax.random.split(key)
    point_u = np.asarray(jax.random.uniform(k_points, (n,)), dtype=np.float64)

    # Slot k (1-based) of a frame = holding out its k-th point. Ranking the slots by how far k
    # overshoots the frame's proportional share hands out H points in proportion, and slots that
    # would empty a frame come last of all.
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot_frame = np.repeat(np.arange(counts.size), counts)
    slot_k = np.arange(n) - starts[slot_frame] + 1
    empties = slot_k == counts[slot_frame]
    overshoot = slot_k - frac * counts[slot_frame]
    tie = np.asarray(jax.random.uniform(k_ties, (counts.size,)), dtype=np.float64)[slot_frame]
    order = np.lexsort((tie, overshoot, empties))
    held_per_frame = np.bincount(slot_frame[order[:target]], minlength=counts.size)

    # Inside each frame, hold out the points with the smallest uniform labels.
    by_frame = np.lexsort((point_u, frame))
    rank = np.empty(n, dtype=np.int64)
    rank[by_frame] = np.arange(n) - starts[frame[by_frame]]
    return rank < held_per_frame[frame]


@dataclasses.dataclass(frozen=True, eq=False)
class CalibrationResult:
    """Outcome of `calibrate`.

    **Fields:**

    - `zeta`, `temperature`: the chosen guidance strength and temperature.
    - `temperature_crps`: the grid temperature with the least CRPS at the chosen ζ.
    - `temperature_levels`: `(L,)` smallest τ at which each level reaches nominal coverage
      (`temperature` is their maximum).
    - `levels`: `(L,)` central interval levels.
    - `coverage_before`, `coverage_after`: `(L,)` held-out coverage at the chosen ζ with τ = 1
      and with the chosen τ.
    - `crps_before`, `crps_after`: held-out CRPS at the chosen ζ with τ = 1 and with the chosen τ.
    - `zetas`, `temperatures`: the grids.
    - `crps_grid`: `(Z, T)` held-out CRPS (inf where the sampler gave non-finite draws).
    - `coverage_grid`: `(Z, T, L)` held-out coverage (NaN where the sampler failed).
    - `nonfinite_fraction`: `(Z,)` fraction of non-finite draws per ζ.
    - `held_out`: `(N,)` boolean mask of the held-out observations.
    - `num_draws`: draws per ζ; `frames_emptied`: time stamps all of whose points were held out.
    """

    zeta: float
    temperature: float
    temperature_crps: float
    temperature_levels: tuple[float, ...]
    levels: tuple[float, ...]
    coverage_before: tuple[float, ...]
    coverage_after: tuple[float, ...]
    crps_before: float
    crps_after: float
    zetas: tuple[float, ...]
    temperatures: tuple[float, ...]
    crps_grid: Float[np.ndarray, "Z T"]
    coverage_grid: Float[np.ndarray, "Z T L"]
    nonfinite_fraction: Float[np.ndarray, " Z"]
    held_out: Bool[np.ndarray, " N"]
    num_draws: int
    frames_emptied: int

    @property
    def n_held(self) -> int:
        """Number of held-out observations."""
        return int(self.held_out.sum())

    @property
    def n_fit(self) -> int:
        """Number of observations the sampler conditioned on."""
        return int(self.held_out.size - self.held_out.sum())

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary: chosen values, before/after figures keyed by level, the grid as
        rows `{zeta, temperature, crps, coverage: {level: value}}` (non-finite numbers as None),
        and the held-out observation indices."""

        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        def by_level(values: Sequence[float]) -> dict[str, float | None]:
            return {f"{lv:g}": num(v) for lv, v in zip(self.levels, values)}

        grid = [
            {
                "zeta": z,
                "temperature": t,
                "crps": num(self.crps_grid[i, j]),
                "coverage": by_level(self.coverage_grid[i, j]),
            }
            for i, z in enumerate(self.zetas)
            for j, t in enumerate(self.temperatures)
        ]
        return {
            "zeta": self.zeta,
            "temperature": self.temperature,
            "temperature_crps": self.temperature_crps,
            "temperature_levels": by_level(self.temperature_levels),
            "levels": list(self.levels),
            "coverage_before": by_level(self.coverage_before),
            "coverage_after": by_level(self.coverage_after),
            "crps_before": num(self.crps_before),
            "crps_after": num(self.crps_after),
            "zetas": list(self.zetas),
            "temperatures": list(self.temperatures),
            "nonfinite_fraction": [float(v) for v in self.nonfinite_fraction],
            "grid": grid,
            "n_fit": self.n_fit,
            "n_held": self.n_held,
            "held_out_index": np.nonzero(self.held_out)[0].tolist(),
            "num_draws": self.num_draws,
            "frames_emptied": self.frames_emptied,
        }


def _coverage_temperature(truth: np.ndarray, draws: np.ndarray, level: float) -> float:
    """Smallest τ > 0 at which the held-out coverage of the central `level` interval of
    `apply_temperature(draws, τ)` is at least `level` (inf if no τ reaches it)."""
    n = truth.size
    need = int(math.ceil(level * n - 1e-9))
    m = draws.mean(axis=0)
    lo, hi = interval_bounds(draws, level)
    # Covered at std factor s iff m + s (lo - m) <= y <= m + s (hi - m): two conditions a s <= b.
    lower = np.zeros(n)
    upper = np.full(n, np.inf)
    possible = np.ones(n, dtype=bool)
    for a, b in ((lo - m, truth - m), (m - hi, m - truth)):
        pos, neg, zero = a > 0, a < 0, a == 0
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = b / a
        upper = np.where(pos, np.minimum(upper, ratio), upper)
        lower = np.where(neg, np.maximum(lower, ratio), lower)
        possible &= ~(zero & (b < 0))
    possible &= lower <= upper
    lower, upper = lower[possible], upper[possible]
    if lower.size < need:
        return math.inf
    candidates = np.unique(lower)
    lower_sorted, upper_sorted = np.sort(lower), np.sort(upper)
    covered = np.searchsorted(lower_sorted, candidates, side="right") - np.searchsorted(
        upper_sorted, candidates, side="left"
    )
    ok = np.nonzero(covered >= need)[0]
    if ok.size == 0:
        return math.inf
    s = float(candidates[ok[0]])
    # A hair above the breakpoint, so that rounding in the tempered quantiles cannot put the
    # deciding point back outside its interval.
    s = s * (1 + 1e-9) + 1e-300
    return max(s * s, np.finfo(np.float64).tiny)


def calibrate(
    key: PRNGKeyArray,
    sample_predictive: SamplePredictive,
    obs: ObservationSet,
    *,
    holdout_fraction: float = 0.2,
    zetas: Sequence[float] = DEFAULT_ZETAS,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    levels: Sequence[float] = (0.5, 0.9),
    progress: bool = False,
) -> CalibrationResult:
    """Choose the guidance strength ζ and the temperature τ on held-out observations.

    **Arguments:**

    - `key`: typed PRNG key. Split into one key for the held-out split and one for sampling;
      the same sampling key is used for every ζ (common random numbers make the comparison
      between ζ values less noisy).
    - `sample_predictive`: `(key, obs_fit, obs_held, zeta) -> draws (S, N_held)`, predictive
      draws of the held-out values in physical units with observation noise, S >= 2.
    - `obs`: all observations, at least 2 points.
    - `holdout_fraction`: fraction in (0, 1) held out (see `holdout_split`).
    - `zetas`: candidate guidance strengths (distinct, >= 0).
    - `temperatures`: candidate temperatures for the CRPS comparison (distinct, > 0).
    - `levels`: central interval levels in (0, 1) that must reach nominal coverage.
    - `progress`: show a progress bar over the ζ values.

    **Returns:** a `CalibrationResult`.

    **Raises:** `InputError` for bad arguments or draws of the wrong shape; `NumericalError` if
    every ζ gave non-finite draws, or no temperature reaches a nominal level (draws without
    spread at too many held-out points).
    """
    check_key(key)
    if not callable(sample_predictive):
        raise bad_input("sample_predictive", "a callable (key, obs_fit, obs_held, zeta) -> draws (S, N_held)",
                        sample_predictive)
    if not isinstance(obs, ObservationSet):
        raise bad_input("obs", "an ObservationSet", type(obs).__name__)
    if obs.n_points < 2:
        raise bad_input("obs", "at least 2 observations (some to condition on, some to hold out)",
                        f"{obs.n_points} point(s)")
    _check_number(holdout_fraction, "holdout_fraction", unit_open=True)
    zeta_grid = _check_grid(zetas, "zetas", positive=False)
    temp_grid = _check_grid(temperatures, "temperatures", positive=True)
    level_grid = _check_grid(levels, "levels", positive=False, unit_open=True)
    if not isinstance(progress, bool):
        raise bad_input("progress", "True or False", progress)

    k_split, k_sample = jax.random.split(key)
    held = holdout_split(k_split, obs, holdout_fraction)
    obs_fit, obs_held = obs.subset(~held), obs.subset(held)
    truth = obs_held.value
    frames_emptied = int(np.setdiff1d(np.unique(obs_held.time), np.unique(obs_fit.time)).size)

    n_z, n_t, n_l = len(zeta_grid), len(temp_grid), len(level_grid)
    crps_grid = np.full((n_z, n_t), np.inf)
    coverage_grid = np.full((n_z, n_t, n_l), np.nan)
    nonfinite = np.zeros(n_z)
    all_draws: list[np.ndarray | None] = []
    num_draws = None
    for i, zeta in enumerate(tqdm(zeta_grid, desc="calibrate ζ", disable=not progress)):
        raw = sample_predictive(k_sample, obs_fit, obs_held, zeta)
        try:
            draws = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise bad_input("sample_predictive", "draws as a numeric array (S, N_held)",
                            type(raw).__name__) from exc
        if draws.ndim != 2 or draws.shape[1] != truth.size or draws.shape[0] < 2:
            raise bad_input("sample_predictive", f"draws of shape (S >= 2, N_held={truth.size}) at zeta={zeta}",
                            f"shape {draws.shape}")
        if num_draws is not None and draws.shape[0] != num_draws:
            raise bad_input("sample_predictive", f"the same number of draws for every zeta ({num_draws})",
                            f"{draws.shape[0]} at zeta={zeta}")
        num_draws = draws.shape[0]
        finite = np.isfinite(draws)
        nonfinite[i] = 1.0 - finite.mean()
        if not finite.all():
            all_draws.append(None)
            continue
        all_draws.append(draws)
        for j, tau in enumerate(temp_grid):
            tempered = apply_temperature(draws, tau)
            crps_grid[i, j] = crps_ensemble(truth, tempered, fair=True)
            cov = interval_coverage(truth, tempered, level_grid)
            coverage_grid[i, j] = [cov[lv] for lv in level_grid]

    best_per_zeta = crps_grid.min(axis=1)
    if not np.isfinite(best_per_zeta).any():
        raise NumericalError(
            "sample_predictive: every candidate zeta gave non-finite draws "
            f"(zetas={list(zeta_grid)}; non-finite fractions {nonfinite.round(3).tolist()})"
        )
    i_best = int(np.argmin(best_per_zeta))
    draws = all_draws[i_best]
    assert draws is not None
    tau_crps = float(temp_grid[int(np.argmin(crps_grid[i_best]))])
    tau_levels = tuple(_coverage_temperature(truth, draws, lv) for lv in level_grid)
    if not all(math.isfinite(t) for t in tau_levels):
        bad = [lv for lv, t in zip(level_grid, tau_levels) if not math.isfinite(t)]
        raise NumericalError(
            f"sample_predictive: no temperature brings the held-out coverage to the nominal levels {bad} "
            f"at zeta={zeta_grid[i_best]}: the draws have no spread at too many held-out points"
        )
    tau = max(tau_levels)

    before_cov = interval_coverage(truth, draws, level_grid)
    after = apply_temperature(draws, tau)
    after_cov = interval_coverage(truth, after, level_grid)
    return CalibrationResult(
        zeta=float(zeta_grid[i_best]),
        temperature=float(tau),
        temperature_crps=tau_crps,
        temperature_levels=tuple(float(t) for t in tau_levels),
        levels=level_grid,
        coverage_before=tuple(before_cov[lv] for lv in level_grid),
        coverage_after=tuple(after_cov[lv] for lv in level_grid),
        crps_before=float(crps_ensemble(truth, draws, fair=True)),
        crps_after=float(crps_ensemble(truth, after, fair=True)),
        zetas=zeta_grid,
        temperatures=temp_grid,
        crps_grid=crps_grid,
        coverage_grid=coverage_grid,
        nonfinite_fraction=nonfinite,
        held_out=held,
        num_draws=int(num_draws),
        frames_emptied=frames_emptied,
    )
