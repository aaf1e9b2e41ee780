"""Accuracy suite: the paper's protocol at CPU scale, against classical baselines.

    python -m benchmarks.accuracy --suite quick --jobs 2 --out benchmarks/results/accuracy_quick.json
    python -m benchmarks.accuracy --suite full  --jobs 2 --out benchmarks/results/accuracy_full.json

`--jobs N` runs the work as N worker processes, each pinned to its own core (whether that
beats one process using both cores has not been measured). The units are the main table's
cells and each dataset's noise table;
every figure depends only on the seed and the trajectory index, so the merged file holds
the figures a one-process run writes (`tests/test_benchmark_accuracy.py`).

Suites:

- `quick`: the shipped pretrained bundles (`ocean`, `fluid2d`), their training data simulated
  again from the recorded seed into `--workdir` (cached), few test trajectories and draws.
  Budget: about 20 minutes on 2 CPU cores.
- `full`: everything retrained in `--workdir` with the project's recipes
  (`sdift_prob.pretrained.recipes`: `sdift simulate`, `fit-ftm`, `train-prior`; stages whose
  output exists are reused, training resumes from checkpoints), `ocean`, `fluid2d` and
  `field3d`, 10 test trajectories, more draws. Hours on 2 cores; run it in the background.

For each dataset, observation setting (1: every time stamp; 2: every other one) and ratio ρ,
each test trajectory gets one observation set (Gaussian noise, std `0.1 x` the training std),
and every method is scored on all space-time entries in physical units:

- `mmps`: this project's default sampler (moment-matching guidance, `inference.guidance`);
- `mpdps`, `dps`: the paper's samplers (point estimate = posterior mean over the draws); MMPS and
  MPDPS also after `calibrate_reconstruction` (posterior temperature from 20% held-out observations);
- `mpdps_fitted`: MPDPS with the message kernel fitted to the training cores
  (`message_kernel="fitted"`, Matérn-1/2) instead of the public code's `exp(−Δt²)`;
- `gp`: FTM + GP temporal prior, exact conjugate posterior;
- `kriging`: spatio-temporal GP regression on the observations (GPJax, separable Matérn-3/2,
  hyperparameters by marginal likelihood; `sdift_prob.baselines.fit_kriging`);
- `linear`: linear interpolation in space per time stamp, nearest time stamp for empty ones;
- `train_mean`: the training-mean field.

VRMSE (mean ± std over test trajectories), 50/90% interval coverage and CRPS (probabilistic
methods; kriging's from its Gaussian predictive on a fixed random subset of 5,000 entries,
the others' from their draws on all entries), seconds per reconstruction. Coverage of the
samplers is given twice: Student-t predictive intervals (`coverage_50`, `coverage_90`) and
equal-tailed quantile intervals of the draws (`coverage_*_quantile`, what ArviZ users compute),
with the number of draws (`n_draws`); kriging's `coverage_50/90` are its exact Gaussian intervals.

Multivariate scores (`energy_score`, `variogram_score` p = 0.5; `sdift_prob.metrics`) over whole
frames are computed for every method with draws on the same entries: `MV_POINTS` spatial points
(drawn with seed 0 among the points with truth in every frame; the same points for every method)
in every frame. Kriging gets as many joint draws as the samplers (`--draws`) from its Gaussian
predictive at those points, one frame at a time (`KrigingModel.sample`), and its quantile
coverage on those entries from the same draws; `n_draws` records the count. Then the
noise-robustness table on `ocean` (ρ = 1%, setting 1; Gaussian, Laplace and Poisson noise at two
levels, each method with the matching likelihood where it has one), as in the paper. Everything is reproducible from
`--seed`; the JSON holds every per-trajectory figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np

from benchmarks.merge import merge
from benchmarks.variants import parse_variant, sampler_name
from inference.calibrate import apply_temperature
from inference.reconstruct import calibrate_reconstruction, open_run, reconstruct
from inference.report import evaluate
from sdift_prob import pretrained
from sdift_prob.baselines import fit_kriging, linear_interpolation, training_mean_field
from sdift_prob.data.fields import load_fields, train_part
from sdift_prob.data.sampling import sample_observations, select_trajectory
from sdift_prob.errors import NumericalError
from sdift_prob.io import write_json
from sdift_prob.metrics import (
    VARIOGRAM_MAX_POINTS,
    crps_gaussian,
    energy_score,
    gaussian_interval_coverage,
    interval_coverage,
    summarise,
    variogram_score,
    vrmse,
)
from sdift_prob.pretrained.recipes import commands

GUIDED = ("mmps", "mpdps", "mpdps_fitted", "dps")
METHODS = ("mmps", "mpdps", "mpdps_fitted", "dps", "gp", "kriging", "linear", "train_mean")
CALIBRATED = ("mmps", "mpdps")
# Figures `evaluate` gives besides the Student-t coverage and CRPS: the coverage of quantile
# intervals of the draws (what analysts compute) and the number of draws behind them.
_NEW_FIGURES = ("coverage_50_quantile", "coverage_90_quantile", "n_draws")
# Points per frame of the multivariate scores, the same for every method (kriging's joint draws
# cost a dense predictive per frame): the variogram score's default subsample.
MV_POINTS = VARIOGRAM_MAX_POINTS
NOISE_LIKELIHOOD = {"gaussian": "gaussian", "laplace": "laplace", "poisson": "poisson"}


@dataclasses.dataclass(frozen=True)
class Suite:
    datasets: tuple[str, ...]
    n_test: int
    draws: int
    first_test: int = 0  # main table: skip this many test trajectories (to extend a run; benchmarks.merge)
    rho: tuple[float, ...] = (0.01, 0.03)
    settings: tuple[int, ...] = (1, 2)
    noise_scale: float = 0.1
    noise_models: tuple[str, ...] = ("gaussian", "laplace", "poisson")
    noise_levels: tuple[float, ...] = (0.1, 0.3)
    n_test_noise: int = 10
    noise_datasets: tuple[str, ...] = ("ocean",)
    calibrate: bool = True
    source: str = "bundle"  # "bundle": shipped runs; "train": retrain in the workdir


SUITES = {
    "quick": Suite(datasets=("ocean", "fluid2d"), n_test=2, draws=8, noise_levels=(0.3,), n_test_noise=1),
    "full": Suite(datasets=("ocean", "fluid2d", "field3d"), n_test=10, draws=8, source="train"),
}


# ----------------------------------------------------------------------------------------------
# Data and runs


def _sdift() -> str:
    exe = Path(sys.executable).with_name("sdift")
    return str(exe) if exe.exists() else "sdift"


def _pinned(argv: list[str], cpu: int | None) -> list[str]:
    """`argv` run on one CPU core (`taskset`; unpinned where there is no `taskset` or `cpu` is None).
    Pinning happens in the child's own command line: a `preexec_fn` would run Python code in a
    forked copy of this multithreaded (JAX) process."""
    if cpu is None or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", str(cpu), *argv]


def prepare(name: str, suite: Suite, workdir: Path, cpu: int | None = None) -> tuple[Path, Path, dict[str, Any]]:
    """`(data.nc, run_dir, provenance)` for dataset `name`: simulate/train what is missing
    (the stages' processes pinned to `cpu` when given)."""
    work = workdir / name
    work.mkdir(parents=True, exist_ok=True)
    steps = commands(name, work, sdift=_sdift())
    timings: dict[str, float] = {}
    data = work / "data.nc"

    def run(argv: list[str]) -> None:
        subprocess.run(_pinned(argv + ["--no-progress"], cpu), check=True)

    if not data.exists():
        t0 = time.perf_counter()
        run(steps[0])
        timings["simulate_s"] = time.perf_counter() - t0
    if suite.source == "bundle":
        if name not in pretrained.NAMES or not pretrained.available(name):
            raise SystemExit(f"no shipped bundle for {name!r}; use --suite full")
        return data, pretrained.path(name) / "run", {"source": "shipped bundle", **timings}
    run_dir = work / "run"
    if not (run_dir / "manifest.json").exists():
        t0 = time.perf_counter()
        run(steps[1])
        timings["fit_ftm_s"] = time.perf_counter() - t0
    if "prior" not in json.loads((run_dir / "manifest.json").read_text()).get("sections", {}):
        t0 = time.perf_counter()
        run(steps[2])  # resumes from its checkpoint
        timings["train_prior_s"] = time.perf_counter() - t0
    return data, run_dir, {"source": "trained in the workdir", "commands": [" ".join(s) for s in steps], **timings}


# ----------------------------------------------------------------------------------------------
# Scoring


class Scores:
    """Per-method lists of per-trajectory figures."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, list[float]]] = {}

    def add(self, method: str, **figures: float) -> None:
        """One trajectory's figures; a figure this record lacks (a diverged run) or that earlier
        records lack is NaN there, so every list stays aligned with the trajectories."""
        d = self.values.setdefault(method, {})
        n = max((len(v) for v in d.values()), default=0)
        for k in set(d) | set(figures):
            d.setdefault(k, [float("nan")] * n).append(float(figures.get(k, float("nan"))))

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for m, d in self.values.items():
            out[m] = {}
            for k, v in d.items():
                finite = np.asarray(v)[np.isfinite(v)]  # a diverged run leaves NaN (counted in "diverged")
                mean, std = summarise(finite) if finite.size else (float("nan"), float("nan"))
                out[m][k] = {"mean": mean, "std": std, "values": v}
        return out


def _uncertainty_subset(key: jax.Array, shape: tuple[int, ...], n: int) -> np.ndarray:
    size = int(np.prod(shape))
    return np.sort(np.asarray(jax.random.permutation(key, size))[: min(n, size)])


def multivariate_points(truth: Any, n: int = MV_POINTS, seed: int = 0) -> np.ndarray:
    """Flat indices of at most `n` spatial points (of `truth (time, *space)`), drawn with `seed`
    among the points whose truth is not missing in any frame: where every method's multivariate
    scores are computed."""
    values = np.asarray(truth.values if hasattr(truth, "values") else truth)
    space = values.reshape(values.shape[0], -1)
    ok = np.isfinite(space).all(axis=0)
    order = np.random.default_rng(seed).permutation(space.shape[1])
    keep = np.sort(order[ok[order]][:n])
    if keep.size < 2:
        raise ValueError(f"truth: fewer than 2 points with truth in every frame ({keep.size})")
    return keep


def on_points(truth_values: np.ndarray, draws: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(y (T, P), x (S, T, P))`: the truth `(T, *space)` and draws `(S, T, *space)` at the
    spatial `points` (flat indices) of every frame."""
    t = truth_values.shape[0]
    return truth_values.reshape(t, -1)[:, points], np.asarray(draws).reshape(draws.shape[0], t, -1)[:, :, points]


def multivariate_scores(y: np.ndarray, x: np.ndarray) -> dict[str, float]:
    """Energy and variogram (p = 0.5) scores of frames `x (S, T, P)` against `y (T, P)`, whole
    frames of P points (`on_points`), mean over frames."""
    return {"energy_score": energy_score(y, x, max_points=None),
            "variogram_score": variogram_score(y, x, p=0.5, max_points=None)}


def _field_draws(idata: Any) -> np.ndarray:
    field = idata.posterior["field"]
    return field.values.reshape((-1, *field.shape[2:]))


def score_kriging(key: jax.Array, obs: Any, truth: Any, n_unc: int = 5000, draws: int = 8) -> dict[str, float]:
    """Kriging's figures: VRMSE of its mean on the grid; coverage and CRPS of its Gaussian
    predictive on `n_unc` random entries; `draws` joint draws per frame at the
    `multivariate_points` for the energy / variogram scores and the quantile coverage."""
    t0 = time.perf_counter()
    model = fit_kriging(obs, key=key)
    times = truth.time.values
    grids = [truth[d].values for d in truth.dims[1:]]
    mean, _ = model.predict_grid(times, grids, return_std=False)
    # The latent variance costs O(N²) per entry: estimate coverage and CRPS on a fixed subset.
    idx = _uncertainty_subset(jax.random.fold_in(key, 1), truth.shape, n_unc)
    sub = np.unravel_index(idx, truth.shape)
    grid_axes = np.meshgrid(*grids, indexing="ij")
    pts = np.column_stack([g[tuple(s for s in sub[1:])] for g in grid_axes])
    m_sub, s_sub = model.predict(pts, times[sub[0]])
    secs = time.perf_counter() - t0
    y = truth.values[sub]
    cov = gaussian_interval_coverage(y, m_sub, np.maximum(s_sub, 1e-12), levels=(0.5, 0.9))
    out = {"vrmse": vrmse(truth.values, mean), "coverage_50": cov[0.5], "coverage_90": cov[0.9],
           "crps": crps_gaussian(y, m_sub, np.maximum(s_sub, 1e-12)), "seconds": secs,
           "noise_std_fitted": model.noise_std}
    # Joint draws frame by frame (scores are per frame, so frames need not be jointly drawn).
    t1 = time.perf_counter()
    points = multivariate_points(truth)
    space_pts = _grid_points_flat(grids)[points]
    k_draws = jax.random.fold_in(key, 2)
    samples = np.stack([model.sample(space_pts, np.full(points.size, times[i]), key=jax.random.fold_in(k_draws, i),
                                     n_samples=draws) for i in range(times.size)], axis=1)  # (S, T, P)
    y_mv = np.asarray(truth.values).reshape(times.size, -1)[:, points]
    out.update(multivariate_scores(y_mv, samples))
    quantile = interval_coverage(y_mv, samples, (0.5, 0.9), method="quantile")
    out.update({"coverage_50_quantile": quantile[0.5], "coverage_90_quantile": quantile[0.9], "n_draws": draws,
                "multivariate_seconds": time.perf_counter() - t1})
    return out


def _grid_points_flat(grids: list[np.ndarray]) -> np.ndarray:
    """`(prod I_d, K)` coordinates of the grid's points in C order (the flat spatial index)."""
    return np.column_stack([g.ravel() for g in np.meshgrid(*grids, indexing="ij")])


def _tempered_scores(idata: Any, truth: Any, tau: float) -> dict[str, float]:
    field = idata.posterior["field"]
    raw = field.values.copy()
    field.values = np.asarray(apply_temperature(raw, tau, axis=(0, 1)), dtype=raw.dtype)
    ev = evaluate(idata, truth)
    field.values = raw
    return {"coverage_50_cal": ev["coverage_50"], "coverage_90_cal": ev["coverage_90"], "crps_cal": ev["crps"],
            "temperature": tau}


def sampler_call(method: str) -> tuple[str, Any, str, Any]:
    """`(sampler, config, message_kernel, representation_error)` of a method name: the named
    samplers, `mpdps_fitted`, or a variant of `benchmarks.variants` (ablations), optionally
    ending in `_norep` (no representation error added to the noise)."""
    rep: Any = "auto"
    if method.endswith("_norep"):
        method, rep = method[: -len("_norep")], None
    if method == "mpdps_fitted":
        return "mpdps", None, "fitted", rep
    if method in ("mmps", "mpdps", "dps", "gp"):
        return method, None, "reference", rep
    config = parse_variant(method)
    return sampler_name(config), config, "reference", rep


def _is_sampler(method: str) -> bool:
    return method not in ("kriging", "linear", "train_mean")


def score_sampler(run: Any, obs: Any, truth: Any, *, key: jax.Array, sampler: str, draws: int, sigma: Any,
                  likelihood: str, calibrate: bool) -> dict[str, float]:
    t0 = time.perf_counter()
    method = sampler
    sampler, config, kernel, rep = sampler_call(method)
    if config is not None and config.infer_sigma:  # an `infer` variant: σ from the data, not the known level
        sigma = "infer"
    idata = reconstruct(run, obs, key=key, sampler=sampler, draws=draws, sigma=sigma, likelihood=likelihood,
                        message_kernel=kernel, config=config, representation_error=rep)
    secs = time.perf_counter() - t0
    ev = evaluate(idata, truth)
    out = {k: ev[k] for k in ("vrmse", "coverage_50", "coverage_90", "crps") + _NEW_FIGURES if k in ev}
    out.update(multivariate_scores(*on_points(np.asarray(truth.values), _field_draws(idata),
                                              multivariate_points(truth))))
    out["seconds"] = secs
    if calibrate and method in CALIBRATED:
        t1 = time.perf_counter()
        cal = calibrate_reconstruction(run, obs, key=jax.random.fold_in(key, 1), sampler=sampler, draws=draws,
                                       zetas=(1.0,), sigma=sigma)
        out.update(_tempered_scores(idata, truth, cal.temperature))
        out["heldout_coverage_90_before"] = cal.coverage_before[-1]
        out["heldout_coverage_90_after"] = cal.coverage_after[-1]
        out["calibration_seconds"] = time.perf_counter() - t1
    return out


def _poisson_scale(truth_values: np.ndarray, level_std: float) -> float:
    excess = float(np.mean(truth_values - truth_values.min()))
    return level_std**2 / max(excess, 1e-12)


def evaluate_dataset(name: str, suite: Suite, workdir: Path, seed: int, methods: tuple[str, ...],
                     log: Any, tables: tuple[str, ...] = ("main", "noise"), on_cell: Any = None) -> dict[str, Any]:
    data_path, run_dir, provenance = prepare(name, suite, workdir)
    ds = load_fields(data_path)
    run = open_run(run_dir)
    std = float(run.ftm.normalizer.std)
    climatology = training_mean_field(train_part(ds))
    test_ids = np.where(ds.split.values == "test")[0]
    if "main" in tables and suite.first_test >= test_ids.size:
        raise SystemExit(f"--first-test {suite.first_test}: {name} has only {test_ids.size} test trajectories")
    base = jax.random.key(seed)
    result: dict[str, Any] = {"data": str(data_path), "run": str(run_dir), "provenance": provenance,
                              "training_std": std, "ftm_fit": run.provenance.get("fit", {}), "cells": [], "noise": []}

    def one(i: int, obs: Any, truth: Any, scores: Scores, k: jax.Array, sigma: float, likelihood: str,
            calibrate: bool) -> None:
        if "train_mean" in methods:
            scores.add("train_mean", vrmse=vrmse(truth.values, climatology))
        if "linear" in methods:
            t0 = time.perf_counter()
            est = linear_interpolation(obs, truth.time.values, [truth[d].values for d in truth.dims[1:]])
            scores.add("linear", vrmse=vrmse(truth.values, est), seconds=time.perf_counter() - t0)
        if "kriging" in methods:
            scores.add("kriging", **score_kriging(jax.random.fold_in(k, 2), obs, truth, draws=suite.draws))
        for m in (m for m in methods if _is_sampler(m)):
            if m.startswith("gp") and likelihood == "poisson":
                continue
            lik = "gaussian" if m.startswith("gp") else likelihood
            sig = None if lik == "poisson" else sigma
            try:
                figures = score_sampler(run, obs, truth, key=jax.random.fold_in(k, 3), sampler=m, draws=suite.draws,
                                        sigma=sig, likelihood=lik, calibrate=calibrate)
            except NumericalError as exc:  # a diverged sampler is a result: NaN figures, counted
                log(f"{name} trajectory {i}: {m} diverged: {exc}")
                figures = {"vrmse": float("nan"), "diverged": 1.0}
            scores.add(m, **{"diverged": 0.0, **figures})

    for setting in suite.settings if "main" in tables else ():
        for rho in suite.rho:
            scores = Scores()
            ids = test_ids[suite.first_test: suite.first_test + suite.n_test]
            for i in ids:
                truth = select_trajectory(ds, int(i))
                k = jax.random.fold_in(jax.random.fold_in(base, int(i)), 100 * setting + round(1000 * rho))
                obs = sample_observations(jax.random.fold_in(k, 0), truth, rho=rho, setting=setting,
                                          noise="gaussian", noise_scale=suite.noise_scale * std)
                one(int(i), obs, truth, scores, k, suite.noise_scale * std, "gaussian", suite.calibrate)
            cell = {"setting": setting, "rho": rho, "n_test": int(ids.size), "first_test": suite.first_test,
                    "test_trajectories": [int(i) for i in ids], "noise": "gaussian",
                    "noise_level": suite.noise_scale, "multivariate_points": MV_POINTS, "methods": scores.summary()}
            result["cells"].append(cell)
            if on_cell is not None:
                on_cell(result)
            log(f"{name} setting {setting} rho {rho}: " + ", ".join(
                f"{m} {c['vrmse']['mean']:.3f}±{c['vrmse']['std']:.3f}" for m, c in cell["methods"].items()))

    for noise in suite.noise_models if name in suite.noise_datasets and "noise" in tables else ():
        for level in suite.noise_levels:
            if noise == "gaussian" and level == suite.noise_scale:
                continue  # the first table's setting-1, rho-1% cell
            scores = Scores()
            ids = test_ids[: suite.n_test_noise]
            for i in ids:
                truth = select_trajectory(ds, int(i))
                k = jax.random.fold_in(jax.random.fold_in(base, int(i)), 7000 + round(100 * level))
                scale = _poisson_scale(truth.values, level * std) if noise == "poisson" else level * std
                obs = sample_observations(jax.random.fold_in(k, 0), truth, rho=0.01, setting=1, noise=noise,
                                          noise_scale=scale)
                one(int(i), obs, truth, scores, k, level * std, NOISE_LIKELIHOOD[noise], False)
            entry = {"noise": noise, "level": level, "rho": 0.01, "setting": 1, "n_test": int(ids.size),
                     "test_trajectories": [int(i) for i in ids], "multivariate_points": MV_POINTS,
                     "methods": scores.summary()}
            result["noise"].append(entry)
            if on_cell is not None:
                on_cell(result)
            log(f"{name} noise {noise} {level}: " + ", ".join(
                f"{m} {c['vrmse']['mean']:.3f}" for m, c in entry["methods"].items()))
    return result


# ----------------------------------------------------------------------------------------------
# Parallel runs: one worker process per CPU core


# Relative cost of one test trajectory in one cell, only to order the work queue: ocean ≈ 1 min
# and fluid2d ≈ 7 min per trajectory and cell on one core, measured before the channels-last
# U-Net; field3d's weight is a guess (never evaluated).
_COST = {"ocean": 1.0, "fluid2d": 8.0, "field3d": 8.0}


@dataclasses.dataclass(frozen=True)
class Unit:
    """One worker's share: a main-table cell of one dataset, or a dataset's noise table."""

    dataset: str
    table: str  # "main" or "noise"
    setting: int | None = None
    rho: float | None = None

    @property
    def label(self) -> str:
        if self.table == "noise":
            return f"{self.dataset}-noise"
        return f"{self.dataset}-s{self.setting}-rho{self.rho:g}"

    def cost(self, suite: Suite) -> float:
        if self.table == "noise":
            entries = len(suite.noise_models) * len(suite.noise_levels) - (
                "gaussian" in suite.noise_models and suite.noise_scale in suite.noise_levels)
            return _COST.get(self.dataset, 8.0) * suite.n_test_noise * entries
        return _COST.get(self.dataset, 8.0) * suite.n_test


def plan_units(suite: Suite, tables: tuple[str, ...]) -> list[Unit]:
    """The suite's work as independent units, costliest first (longest-first list scheduling:
    with a free worker taking the next unit, the run ends close to the ideal split)."""
    units = []
    for name in suite.datasets:
        if "main" in tables:
            units += [Unit(name, "main", s, r) for s in suite.settings for r in suite.rho]
        if "noise" in tables and name in suite.noise_datasets and suite.noise_models:
            units.append(Unit(name, "noise"))
    return sorted(units, key=lambda u: -u.cost(suite))


def unit_argv(unit: Unit, suite_name: str, suite: Suite, *, workdir: str, seed: int, methods: tuple[str, ...],
              out: str) -> list[str]:
    """The `benchmarks.accuracy` command line that computes `unit` alone (every figure is a
    function of the seed and the trajectory index, so a unit's cells equal the serial run's)."""
    argv = [sys.executable, "-m", "benchmarks.accuracy", "--suite", suite_name, "--datasets", unit.dataset,
            "--tables", unit.table, "--workdir", workdir, "--seed", str(seed), "--methods", *methods,
            "--n-test", str(suite.n_test), "--first-test", str(suite.first_test),
            "--n-test-noise", str(suite.n_test_noise), "--draws", str(suite.draws),
            "--noise-levels", *(repr(v) for v in suite.noise_levels), "--noise-scale", repr(suite.noise_scale),
            "--out", out] + ([] if suite.calibrate else ["--no-calibrate"])
    if unit.table == "main":
        argv += ["--settings", str(unit.setting), "--rho", repr(unit.rho)]
    return argv


def run_parallel(suite_name: str, suite: Suite, *, jobs: int, workdir: Path, seed: int, methods: tuple[str, ...],
                 tables: tuple[str, ...], log: Any) -> dict[str, Any]:
    """Run the suite as `jobs` worker processes, each pinned to its own CPU core when there are
    enough, and merge their files (`benchmarks.merge`). Data and runs are prepared first, one
    dataset per worker, so that no two workers simulate or train the same thing."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    slot_cpu = [cpus[k] if jobs <= len(cpus) else None for k in range(jobs)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        prepared = dict(zip(suite.datasets, pool.map(
            lambda kn: prepare(kn[1], suite, workdir, slot_cpu[kn[0] % jobs])[2], enumerate(suite.datasets))))
    log(f"data and runs ready ({time.perf_counter() - t0:.0f} s)")
    workdir.mkdir(parents=True, exist_ok=True)
    parts = Path(tempfile.mkdtemp(prefix="accuracy-parts-", dir=workdir))
    plan = plan_units(suite, tables)
    queue = list(plan)
    running: dict[int, tuple[Unit, subprocess.Popen[bytes], Any, float]] = {}
    done: list[tuple[Unit, Path]] = []
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    try:
        while queue or running:
            for slot in range(jobs):
                if slot not in running and queue:
                    unit = queue.pop(0)
                    out = parts / f"{unit.label}.json"
                    logf = open(parts / f"{unit.label}.log", "wb")
                    argv = unit_argv(unit, suite_name, suite, workdir=str(workdir), seed=seed, methods=methods,
                                     out=str(out))
                    proc = subprocess.Popen(_pinned(argv, slot_cpu[slot]), stdout=logf, stderr=subprocess.STDOUT,
                                            env=env)
                    running[slot] = (unit, proc, logf, time.perf_counter())
                    where = f"cpu {slot_cpu[slot]}" if slot_cpu[slot] is not None else f"worker {slot}"
                    log(f"{unit.label}: started on {where}")
            time.sleep(0.5)
            for slot, (unit, proc, logf, started) in list(running.items()):
                if proc.poll() is None:
                    continue
                logf.close()
                del running[slot]
                if proc.returncode != 0:
                    raise SystemExit(f"{unit.label} failed (exit {proc.returncode}); its log: "
                                     f"{parts / (unit.label + '.log')}")
                for line in (parts / f"{unit.label}.log").read_text().splitlines():
                    if " rho " in line or " noise " in line:
                        log(f"{unit.label}: {line.split('] ', 1)[-1]}")
                log(f"{unit.label}: done in {time.perf_counter() - started:.0f} s")
                done.append((unit, parts / f"{unit.label}.json"))
    except BaseException:
        for _, proc, logf, _ in running.values():
            proc.terminate()
            proc.wait()
            logf.close()
        raise
    done.sort(key=lambda d: plan.index(d[0]))
    pieces = [json.loads(f.read_text()) for _, f in done]
    merged = merge(pieces, [u.label for u, _ in done])
    for name, prov in prepared.items():
        if name in merged["datasets"]:
            merged["datasets"][name]["provenance"] = prov
    shutil.rmtree(parts)
    return merged


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "jax": jax.__version__, "jax_backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()]}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), default="quick")
    p.add_argument("--out", required=True, help="JSON file to write (atomically; replaced if it exists)")
    p.add_argument("--workdir", default="scratch/bench", help="data and (full suite) trained runs")
    p.add_argument("--datasets", nargs="+", help="subset of the suite's datasets")
    p.add_argument("--methods", nargs="+", default=list(METHODS),
                   help=f"any of {', '.join(METHODS)}, or sampler variants of benchmarks.variants (e.g. "
                        "mmps_cg2, mpdps_through), optionally ending in _norep (no representation error)")
    p.add_argument("--n-test", type=int, help="override the suite's number of test trajectories")
    p.add_argument("--first-test", type=int, default=0,
                   help="main table: start at this test trajectory (0-based), to extend an earlier run; "
                        "combine the files with python -m benchmarks.merge")
    p.add_argument("--n-test-noise", type=int, help="override the noise table's number of test trajectories")
    p.add_argument("--draws", type=int, help="override the suite's number of posterior draws")
    p.add_argument("--rho", type=float, nargs="+", help="override the suite's observation ratios")
    p.add_argument("--settings", type=int, nargs="+", choices=(1, 2), help="override the suite's settings")
    p.add_argument("--noise-levels", type=float, nargs="+", help="override the noise table's levels")
    p.add_argument("--noise-scale", type=float,
                   help="override the main table's Gaussian noise std (x the training std; default 0.1)")
    p.add_argument("--no-noise-table", action="store_true")
    p.add_argument("--no-calibrate", action="store_true", help="skip the held-out calibration of MMPS/MPDPS")
    p.add_argument("--tables", nargs="+", choices=("main", "noise"), default=["main", "noise"],
                   help="which tables to compute (to split a long run into several)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1,
                   help="worker processes, one per CPU core (each cell and each noise table is a unit of "
                        "work; the results equal a one-process run's)")
    return p


def suite_from_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> Suite:
    """The named suite with the command line's overrides."""
    suite = SUITES[args.suite]
    overrides: dict[str, Any] = {}
    if args.datasets:
        overrides["datasets"] = tuple(args.datasets)
    if args.first_test < 0:
        p.error(f"--first-test: expected a non-negative index, got {args.first_test}")
    overrides["first_test"] = args.first_test
    for field in ("n_test", "n_test_noise", "draws", "noise_scale"):
        if getattr(args, field) is not None:
            overrides[field] = getattr(args, field)
    for field in ("rho", "settings", "noise_levels"):
        if getattr(args, field) is not None:
            overrides[field] = tuple(getattr(args, field))
    if args.no_noise_table:
        overrides["noise_models"] = ()
    if getattr(args, "no_calibrate", False):
        overrides["calibrate"] = False
    return dataclasses.replace(suite, **overrides)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    for m in args.methods:
        if m not in METHODS:
            try:
                sampler_call(m)
            except Exception as exc:  # noqa: BLE001 - reported as a usage error
                p.error(f"--methods: {m!r} is neither one of {METHODS} nor a sampler variant ({exc})")
    if args.jobs < 1:
        p.error(f"--jobs: expected a positive number of worker processes, got {args.jobs}")
    suite = suite_from_args(p, args)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.0f} s] {msg}", flush=True)

    results: dict[str, Any] = {"suite": args.suite, "config": dataclasses.asdict(suite), "seed": args.seed,
                               "methods": list(args.methods), "machine": machine(), "datasets": {},
                               "command": " ".join(["python -m benchmarks.accuracy", *(argv or sys.argv[1:])])}
    if args.jobs > 1:
        merged = run_parallel(args.suite, suite, jobs=args.jobs, workdir=Path(args.workdir), seed=args.seed,
                              methods=tuple(args.methods), tables=tuple(args.tables), log=log)
        results["jobs"] = args.jobs
        results["datasets"] = {n: merged["datasets"][n] for n in suite.datasets if n in merged["datasets"]}
        results["units"] = [{"unit": m["file"], "wall_time_s": m["wall_time_s"], "command": m["command"]}
                            for m in merged["merged_from"]]
        results["process_time_s"] = merged["wall_time_s"]
        _write(args.out, results, started)
        log(f"wrote {args.out}")
        return 0
    for name in suite.datasets:
        t0 = time.perf_counter()
        def partial(res: dict[str, Any], name: str = name) -> None:
            results["datasets"][name] = res
            _write(args.out, results, started)  # every finished cell survives an interruption

        results["datasets"][name] = evaluate_dataset(name, suite, Path(args.workdir), args.seed,
                                                     tuple(args.methods), log, tuple(args.tables), partial)
        results["datasets"][name]["wall_time_s"] = time.perf_counter() - t0
        _write(args.out, results, started)  # partial results survive an interruption
    _write(args.out, results, started)
    log(f"wrote {args.out}")
    return 0


def _write(path: str, results: dict[str, Any], started: float) -> None:
    results["wall_time_s"] = time.perf_counter() - started
    write_json(path, results)


if __name__ == "__main__":
    raise SystemExit(main())
