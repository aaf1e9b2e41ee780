"""Issue 18, second aim: an over-confident posterior is caught by the field-level checks while the
observation-level check (which includes the observation noise and reuses the data) passes.

The case is a known Gaussian one, no trained model: a smooth 1-D field on 40 points per frame with
a squared-exponential prior covariance, 4 noisy point observations per frame (10%), frames
independent. The posterior is then Gaussian in closed form; "good" draws come from it, and the
over-confident ones are the same draws tempered with the library's `apply_temperature(draws, 0.5)`
(variance halved about the ensemble mean, the τ of `inference.calibrate`).
"""

from __future__ import annotations

import numpy as np
import pytest

from inference.calibrate import apply_temperature
from inference.report import coverage_by, evaluate, to_inference_data
from sdift_prob.data.observations import ObservationSet
from sdift_prob.metrics import interval_coverage

N_FRAMES, N_POINTS, N_OBS, N_DRAWS = 30, 40, 4, 100
SIGMA, LENGTH = 0.3, 0.1


def gaussian_case(seed: int = 0) -> dict:
    """Truth, observations and exact posterior draws of the 1-D Gaussian case."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, N_POINTS)
    prior = np.exp(-0.5 * ((x[:, None] - x[None, :]) / LENGTH) ** 2) + 1e-8 * np.eye(N_POINTS)
    prior_chol = np.linalg.cholesky(prior)
    truth = np.empty((N_FRAMES, N_POINTS))
    draws = np.empty((N_DRAWS, N_FRAMES, N_POINTS))
    where = np.empty((N_FRAMES, N_OBS), dtype=int)
    values = np.empty((N_FRAMES, N_OBS))
    for t in range(N_FRAMES):
        truth[t] = prior_chol @ rng.normal(size=N_POINTS)
        where[t] = np.sort(rng.choice(N_POINTS, N_OBS, replace=False))
        values[t] = truth[t, where[t]] + SIGMA * rng.normal(size=N_OBS)
        # Conditioning a Gaussian on noisy point values: K H^T (H K H^T + σ² I)^{-1}.
        gain = np.linalg.solve(prior[np.ix_(where[t], where[t])] + SIGMA**2 * np.eye(N_OBS), prior[where[t]]).T
        mean = gain @ values[t]
        cov = prior - gain @ prior[where[t]]
        chol = np.linalg.cholesky(0.5 * (cov + cov.T) + 1e-9 * np.eye(N_POINTS))
        draws[:, t] = mean + rng.normal(size=(N_DRAWS, N_POINTS)) @ chol.T
    return dict(x=x, truth=truth, draws=draws, where=where, values=values, rng=rng)


def posterior(case: dict, draws: np.ndarray) -> tuple:
    """InferenceData of field draws `(S, T, x)` with replicated observations (draw + noise)."""
    t_index = np.repeat(np.arange(N_FRAMES), N_OBS)
    x_index = case["where"].ravel()
    obs = ObservationSet(value=case["values"].ravel(), time=t_index.astype(float),
                         coords=case["x"][x_index][:, None], space_dims=("x",), noise_scale=SIGMA,
                         noise_model="gaussian")
    y_rep = draws[:, t_index, x_index] + SIGMA * case["rng"].normal(size=(N_DRAWS, obs.n_points))
    idata = to_inference_data(
        core_draws=np.zeros((1, N_DRAWS, 1, 1)), field_draws=draws[None], field_times=np.arange(N_FRAMES, dtype=float),
        field_coords={"x": case["x"]}, space_dims=("x",), obs=obs, y_rep=y_rep[None],
        log_lik=np.zeros((1, N_DRAWS, obs.n_points)),
    )
    return idata, obs


def observation_level_coverage(idata) -> float:
    """The PPC an analyst runs: observed values inside the 90% quantile interval of the replicated
    observations (field draw + observation noise) at the same points."""
    y_rep = idata.posterior_predictive["y"].stack(sample=("chain", "draw")).transpose("sample", "obs_id").values
    return interval_coverage(idata.observed_data["y"].values, y_rep, (0.9,), method="quantile")[0.9]


@pytest.fixture(scope="module")
def case():
    return gaussian_case()


def test_over_confident_field_is_flagged_while_the_observation_check_passes(case):
    good, _ = posterior(case, case["draws"])
    tempered = apply_temperature(case["draws"], 0.5)
    over, _ = posterior(case, tempered)
    scores_good, scores_over = evaluate(good, case["truth"]), evaluate(over, case["truth"])

    # Exact posterior draws: the field's 90% quantile intervals cover about 90% (100 draws: the
    # empirical 5-95% range is a little narrow, ~0.89 expected).
    assert 0.84 <= scores_good["coverage_90_quantile"] <= 0.95, scores_good
    # Tempered by 0.5: sd × 0.71, expected coverage P(|Z| < 0.71 · 1.645) ≈ 0.75 — well below nominal.
    assert scores_over["coverage_90_quantile"] < 0.82, scores_over
    assert scores_good["coverage_90_quantile"] - scores_over["coverage_90_quantile"] > 0.08
    # The multivariate proper score prefers the exact posterior too.
    assert scores_over["energy_score"] > scores_good["energy_score"]

    # Per frame (coverage_by), most frames of the tempered posterior fall short of nominal
    # coverage, clearly more of them than of the exact posterior's (0.83 vs 0.43 here).
    short = {}
    for name, idata in (("good", good), ("over", over)):
        by_time = coverage_by(idata, case["truth"], "time", levels=(0.9,)).sel(level=0.9)
        assert by_time.sizes["time"] == N_FRAMES
        short[name] = float((by_time.values < 0.9).mean())
    assert short["over"] > 0.6 and short["over"] > short["good"] + 0.2, short

    # The observation-level check passes for both: at the observed points the noise (σ = 0.3)
    # dominates the posterior spread, and the data are reused, so the replicated observations
    # cover the observed values at (or above) the nominal 90% however the field's spread is scaled.
    assert observation_level_coverage(good) >= 0.85
    assert observation_level_coverage(over) >= 0.85


# -- the new field-level checks (issue 18): K-fold calibration and SBC -------------------------------
def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * ((a[:, None] - b[None, :]) / LENGTH) ** 2)


def exact_predict(case: dict, tau: float):
    """`predict` for `inference.calibrate.predict_folds`: exact Gaussian posterior draws of the field at
    the held-out points given the other points of the same frame (frames are independent a priori;
    a frame without fit points gets prior draws), tempered by `tau` (1 = exact)."""
    from inference.calibrate import apply_temperature as temper

    def predict(key, obs_fit, obs_held):
        import jax

        rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
        out = np.empty((N_DRAWS, obs_held.n_points))
        for t in np.unique(obs_held.time):
            h = obs_held.time == t
            f = obs_fit.time == t
            xh, xf = obs_held.coords[h, 0], obs_fit.coords[f, 0]
            k_hh = _kernel(xh, xh)
            if f.any():
                gain = np.linalg.solve(_kernel(xf, xf) + SIGMA**2 * np.eye(xf.size), _kernel(xf, xh)).T
                mean, cov = gain @ obs_fit.value[f], k_hh - gain @ _kernel(xf, xh)
            else:
                mean, cov = np.zeros(xh.size), k_hh
            chol = np.linalg.cholesky(0.5 * (cov + cov.T) + 1e-9 * np.eye(xh.size))
            out[:, h] = mean + rng.normal(size=(N_DRAWS, xh.size)) @ chol.T
        return (temper(out, tau) if tau != 1.0 else out), SIGMA

    return predict


def observations(case: dict) -> ObservationSet:
    t_index = np.repeat(np.arange(N_FRAMES), N_OBS)
    return ObservationSet(value=case["values"].ravel(), time=t_index.astype(float),
                          coords=case["x"][case["where"].ravel()][:, None], space_dims=("x",), noise_scale=SIGMA,
                          noise_model="gaussian")


def test_kfold_field_calibration_flags_the_over_confident_posterior():
    import jax

    from inference.calibrate import calibrate_kfold

    case = gaussian_case(seed=3)
    obs = observations(case)
    # 30 frames x 4 points: each fold holds out 1 point of a frame; 20% of the frames are held out
    # whole (frames without data).
    results = {}
    for name, tau in (("good", 1.0), ("over", 0.5)):
        results[name] = calibrate_kfold(jax.random.key(5), exact_predict(case, tau), obs, n_folds=4,
                                        frame_fraction=0.2, levels=(0.5, 0.9))
    good, over = results["good"], results["over"]
    cov = {k: r.coverage.sel(level=0.9) for k, r in results.items()}
    # The exact posterior needs no temperature; the tempered one asks for ~1/0.5 = 2.
    assert 0.6 <= good.temperature <= 1.6, good.to_dict()
    assert over.temperature >= 1.5 * good.temperature, (good.temperature, over.temperature)
    # Before calibration the over-confident posterior falls short at held-out points, the exact one not.
    assert float(cov["over"].sel(stage="before", subset="all")) < 0.86
    assert float(cov["good"].sel(stage="before", subset="all")) >= 0.85
    # Out-of-fold coverage after calibration is near nominal for both, and reported beside in-fold.
    for r in results.values():
        assert 0.84 <= float(r.coverage.sel(level=0.9, stage="out_of_fold", subset="all")) <= 0.96, r.to_dict()
        assert float(r.coverage.sel(level=0.9, stage="in_fold", subset="all")) >= 0.9
    # Both kinds of frames are there and reported separately.
    n = dict(zip(good.coverage.subset.values, good.coverage.n_points.values))
    assert n["observed_frames"] > 0 and n["unobserved_frames"] > 0 and n["all"] == obs.n_points
    assert np.isfinite(good.temperature_by_subset["unobserved_frames"])


def test_sbc_and_replicate_coverage_flag_the_over_confident_posterior(case):
    import jax

    from inference.checks import replicate_checks, sbc

    # The truths are prior draws (SBC's requirement): three data sets of 30 independent frames.
    cases = [case] + [gaussian_case(seed) for seed in (1, 2)]
    pairs = {"good": [], "over": []}
    for c in cases:
        pairs["good"].append((c["truth"], posterior(c, c["draws"])[0]))
        pairs["over"].append((c["truth"], posterior(c, apply_temperature(c["draws"], 0.5))[0]))
    ranks = {k: sbc(v, key=jax.random.key(0), n_bins=10) for k, v in pairs.items()}
    # U-shaped rank histogram: the outer bins hold far more than their share.
    over, good = ranks["over"], ranks["good"]
    outer = lambda r: float((r["count"][0] + r["count"][-1]) / r["count"].sum())  # noqa: E731
    assert outer(over) > 0.3 and outer(good) < 0.26, (outer(good), outer(over))
    # Neighbouring ranks are dependent (length scale 0.1 on 40 points), which inflates the exact
    # posterior's chi² too (~5 per dof here): the contrast, not the p-value, is the figure to read.
    assert over.attrs["chi2_per_dof"] > 5 * good.attrs["chi2_per_dof"], (good.attrs, over.attrs)
    assert over.attrs["p_value"] < 1e-6
    rep = {k: replicate_checks(v, levels=(0.9,)) for k, v in pairs.items()}
    assert float(rep["over"]["coverage_mean"].sel(level=0.9)) < 0.82
    assert float(rep["good"]["coverage_mean"].sel(level=0.9)) > 0.85
    assert rep["over"].attrs["pit_chi2"] > 5 * rep["good"].attrs["pit_chi2"]
    # ... while the observation-level PPC passes for every replicate of both.
    for v in pairs.values():
        for _, idata in v:
            assert observation_level_coverage(idata) >= 0.85
