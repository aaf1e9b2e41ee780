"""Calibration and cross-validation of `reconstruct` on a run: held-out ζ and τ
(`calibrate_reconstruction`), K-fold predictions (`predict_folds_reconstruction`), tempering a
reconstruction (`temper_reconstruction`), and the field and noise at observation points.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from typing import Any

import jax
from jaxtyping import PRNGKeyArray
import numpy as np

from models.likelihoods import SIGMA_LIKELIHOODS, Likelihood, as_likelihood
from sdift_prob.data.observations import ObservationSet
from sdift_prob.errors import bad_input
from sdift_prob.ftm import design_rows

from . import report
from .holdout import calibrate
from .kfold import _fold_likelihood, fold_log_lik, predict_folds
from .guided import GuidedConfig
from .pipeline import reconstruct
from .run import Run
from .samplers import DEFAULT_SAMPLER, sampler_config


def calibrate_reconstruction(
    run: Run,
    obs: ObservationSet,
    *,
    key: PRNGKeyArray,
    sampler: str = DEFAULT_SAMPLER,
    draws: int = 8,
    zetas: Sequence[float] = (0.5, 1.0, 2.0),
    holdout_fraction: float = 0.2,
    sigma: float | str | None = None,
    config: GuidedConfig | None = None,
    levels: Sequence[float] = (0.5, 0.9),
) -> Any:
    """Calibrate `reconstruct` on held-out observations (`inference.calibrate.calibrate`).

    Holds out `holdout_fraction` of the observations, reconstructs from the rest for each
    guidance strength in `zetas`, predicts the held-out values (posterior draws + observation
    noise), and chooses ζ and a posterior temperature τ so that held-out central intervals reach
    their nominal coverage. Apply the result with
    `reconstruct(..., config=replace(config, zeta=result.zeta))` and
    `inference.calibrate.apply_temperature(draws, result.temperature)`.

    **Returns:** `inference.calibrate.CalibrationResult`.
    """
    base = sampler_config(sampler, config)

    def sample_predictive(k: PRNGKeyArray, obs_fit: ObservationSet, obs_held: ObservationSet, zeta: float):
        held_times = np.unique(obs_held.time)
        idata = reconstruct(run, obs_fit, key=k, sampler=sampler, draws=draws, times=held_times,
                            sigma=sigma, config=dataclasses.replace(base, zeta=float(zeta)))
        pred = field_at_observations(run, idata, obs_held).reshape(draws, -1)
        noise_sd = _noise_sd(idata, obs_held, sigma).reshape(draws, -1)
        eps = np.asarray(jax.random.normal(jax.random.fold_in(k, 7), pred.shape))
        return pred + noise_sd * eps

    return calibrate(key, sample_predictive, obs, holdout_fraction=holdout_fraction, zetas=tuple(zetas),
                     levels=tuple(levels))


def field_at_observations(run: Run, idata: Any, obs: ObservationSet) -> np.ndarray:
    """`(chain, draw, N)` field of each posterior draw at the points of `obs` (physical units),
    decoded from `posterior.cores` at the nearest time of the core grid (`time_grid`): the
    noise-free mean of the observation model at those points."""
    if not isinstance(obs, ObservationSet):
        raise bad_input("obs", "an ObservationSet", type(obs).__name__)
    cores = idata.posterior["cores"]
    c, s = cores.sizes["chain"], cores.sizes["draw"]
    grid = cores.time_grid.values
    index = np.array([int(np.argmin(np.abs(grid - t))) for t in obs.time], dtype=np.int64)
    if obs.n_points and np.abs(grid[index] - obs.time).max() > 1e-6 * max(1.0, float(np.ptp(grid))):
        raise bad_input("obs", "points at time stamps of the posterior's core grid (the observations it was "
                        "reconstructed from, or a subset)", "times off the grid")
    rows = np.asarray(design_rows(run.ftm.model, obs.coords))  # (N, D)
    flat = cores.values.reshape(c * s, cores.shape[2], -1)[:, index, :]  # (C*S, N, D)
    pred = run.ftm.normalizer.inverse(np.einsum("snd,nd->sn", flat, rows))
    return np.asarray(pred, dtype=np.float64).reshape(c, s, -1)


def _noise_sd(idata: Any, obs: ObservationSet, sigma: Any) -> np.ndarray:
    """`(chain, draw, N)` observation noise std (physical units) that `reconstruct` used: the
    inferred σ of each draw, or the given level (number, or the observations' own) combined with the
    FTM's representation error when it was applied."""
    post = idata.posterior
    c, s = post.sizes["chain"], post.sizes["draw"]
    rep = report.posterior_attrs(idata).get("representation_error", {})
    added = str(rep.get("applied", "")).startswith("added")
    if "sigma" in post:
        noise = post["sigma"].values.reshape(c, s, 1).astype(np.float64)
        noise = np.hypot(noise, float(rep.get("std", 0.0))) if added else noise
        return np.broadcast_to(noise, (c, s, obs.n_points)).astype(np.float64)
    if isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
        noise = np.full(obs.n_points, float(sigma))
    else:
        noise = np.nan_to_num(np.broadcast_to(np.asarray(obs.noise_scale, dtype=np.float64), (obs.n_points,)))
    if added:
        noise = np.hypot(noise, float(rep.get("std", 0.0)))
    return np.broadcast_to(noise, (c, s, obs.n_points)).astype(np.float64)


def predict_folds_reconstruction(
    run: Run,
    obs: ObservationSet,
    *,
    key: PRNGKeyArray,
    n_folds: int = 5,
    frame_fraction: float = 0.2,
    sampler: str = DEFAULT_SAMPLER,
    draws: int = 8,
    likelihood: Likelihood | str = "gaussian",
    sigma: float | str | None = None,
    config: GuidedConfig | None = None,
    progress: bool = False,
) -> Any:
    """K-fold held-out predictions of `reconstruct` (`inference.calibrate.predict_folds`): for each
    fold, reconstruct from the other folds (output at the held-out time stamps only) and decode every
    draw's field at the held-out points, with its noise std. The result feeds
    `inference.calibrate.calibrate_folds` (field temperature, out-of-fold coverage) and
    `inference.checks.kfold_elpd` (model comparison). Costs `n_folds` reconstructions.

    `frame_fraction` (default 0.2) of the time stamps are held out whole, so the frames without data
    get their own coverage figures. Other arguments as `reconstruct` (`likelihood` one of
    "gaussian", "laplace", "student_t", or such an object: `StudentT(df)` passes its `df` on).

    **Returns:** `inference.calibrate.FoldPredictions`.
    """
    likelihood = _fold_likelihood(likelihood)
    base = config if sampler == "gp" else sampler_config(sampler, config)

    def predict(k: PRNGKeyArray, obs_fit: ObservationSet, obs_held: ObservationSet):
        idata = reconstruct(run, obs_fit, key=k, sampler=sampler, draws=draws, times=np.unique(obs_held.time),
                            sigma=sigma, config=base, likelihood=likelihood)
        field = field_at_observations(run, idata, obs_held).reshape(draws, -1)
        return field, _noise_sd(idata, obs_held, sigma).reshape(draws, -1)

    return predict_folds(key, predict, obs, n_folds=n_folds, frame_fraction=frame_fraction, likelihood=likelihood,
                         progress=progress)


def temper_reconstruction(run: Run, idata: Any, obs: ObservationSet, tau: float, *,
                          sigma: float | str | None = None) -> Any:
    """`inference.report.temper_posterior` for a posterior from `reconstruct(run, obs, ...)`: field and
    cores tempered, the posterior predictive shifted with the tempered field at the observation points
    (each replicate keeps its noise), and the log-likelihood recomputed when the likelihood is one of
    "gaussian", "laplace", "student_t" and the recomputation reproduces the stored values at τ = 1
    (otherwise the group is removed, and the attrs say so). `sigma`: as given to `reconstruct`."""
    f_obs = field_at_observations(run, idata, obs) if "posterior_predictive" in idata.groups() else None
    log_lik_fn = None
    attrs = report.posterior_attrs(idata)
    like = attrs.get("likelihood", "gaussian")  # the stored name of a likelihood with a σ, or not
    if f_obs is not None and "log_likelihood" in idata.groups() and like in SIGMA_LIKELIHOODS:
        noise = _noise_sd(idata, obs, sigma)
        # StudentT at the default df; with another one the check below fails and the group is removed
        lik = as_likelihood(like)

        def log_lik_fn(f: np.ndarray) -> np.ndarray:
            return fold_log_lik(obs.value, f, noise, lik)

        stored = idata.log_likelihood["y"].values
        if not np.allclose(log_lik_fn(f_obs), stored, rtol=1e-3, atol=1e-3):
            log_lik_fn = None  # not the model's log-likelihood: remove the group rather than guess
    return report.temper_posterior(idata, tau, field_at_obs=f_obs, log_lik_fn=log_lik_fn)
