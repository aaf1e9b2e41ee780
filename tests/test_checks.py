"""Tests of the issue-18 checks: K-fold split and field calibration, K-fold elpd, the loo gate,
tempering a whole posterior, rank histograms and the prior predictive check. Tiny arrays only."""

from __future__ import annotations

import json
import math
import warnings

import jax
import numpy as np
import pytest
import xarray as xr
from scipy import stats

from inference.calibrate import (
    FoldPredictions,
    apply_temperature,
    calibrate_folds,
    calibrate_kfold,
    fold_log_lik,
    kfold_split,
    predict_folds,
)
from inference.checks import compare_elpd, elpd, kfold_elpd, prior_predictive_check, rank_histogram
from inference.report import UnreliableLOOWarning, loo, posterior_attrs, temper_posterior, to_inference_data
from sdift_prob.data.observations import ObservationSet
from sdift_prob.errors import InputError, NumericalError

SIGMA = 0.2


def make_obs(seed: int = 0, n_frames: int = 5, per_frame: int = 80) -> tuple[ObservationSet, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = n_frames * per_frame
    time = np.repeat(np.arange(n_frames, dtype=float), per_frame)
    coords = rng.uniform(size=(n, 1))
    truth = np.sin(4 * coords[:, 0]) + 0.1 * time
    value = truth + SIGMA * rng.normal(size=n)
    return ObservationSet(value=value, time=time, coords=coords, space_dims=("x",), noise_scale=SIGMA,
                          noise_model="gaussian"), truth


def toy_predict(truth: np.ndarray, obs: ObservationSet, *, s_true: float = 0.5, shrink: float = 0.5,
                num_draws: int = 64):
    """A posterior whose mean misses the truth by N(0, s_true²) but whose draws spread by
    shrink * s_true: the field needs the variance factor 1 / shrink² (4 by default)."""
    rng = np.random.default_rng(99)
    miss = s_true * rng.normal(size=truth.size)
    index = {float(t) * 1e6 + float(c): i for i, (t, c) in enumerate(zip(obs.time, obs.coords[:, 0]))}

    def predict(key, obs_fit, obs_held):
        assert obs_fit.n_points + obs_held.n_points == obs.n_points
        i = np.array([index[float(t) * 1e6 + float(c)] for t, c in zip(obs_held.time, obs_held.coords[:, 0])])
        z = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel()).normal(size=(num_draws, i.size))
        return truth[i] + miss[i] + shrink * s_true * z, np.full((num_draws, 1), SIGMA)

    return predict


# -- K-fold split ---------------------------------------------------------------------------------
def test_kfold_split_is_reproducible_stratified_and_holds_whole_frames():
    obs, _ = make_obs(n_frames=10, per_frame=12)
    a = kfold_split(jax.random.key(1), obs, 4)
    np.testing.assert_array_equal(a, kfold_split(jax.random.key(1), obs, 4))
    assert a.dtype == np.int64 and set(np.unique(a)) == {0, 1, 2, 3}
    for t in np.unique(obs.time):  # 12 points per frame, 4 folds: 3 each
        assert np.array_equal(np.bincount(a[obs.time == t], minlength=4), [3, 3, 3, 3])
    b = kfold_split(jax.random.key(1), obs, 4, frame_fraction=0.3)
    whole = [t for t in np.unique(obs.time) if np.unique(b[obs.time == t]).size == 1]
    assert len(whole) == 3
    for bad, match in ((1, "n_folds"), (2.5, "n_folds"), (True, "n_folds")):
        with pytest.raises(InputError, match=match):
            kfold_split(jax.random.key(1), obs, bad)
    with pytest.raises(InputError, match="frame_fraction"):
        kfold_split(jax.random.key(1), obs, 4, frame_fraction=1.0)
    with pytest.raises(InputError, match="key"):
        kfold_split(0, obs, 4)
    with pytest.raises(InputError, match="obs"):
        kfold_split(jax.random.key(1), obs.subset(np.arange(obs.n_points) < 2), 4)


# -- K-fold field calibration ---------------------------------------------------------------------
def test_calibrate_kfold_finds_the_field_temperature_and_reports_out_of_fold():
    obs, truth = make_obs()
    res = calibrate_kfold(jax.random.key(0), toy_predict(truth, obs), obs, n_folds=5, levels=(0.5, 0.9))
    # Variance factor 4 wanted (std 2x); the grid steps are 2^(1/8).
    assert 2.8 <= res.temperature <= 5.7, res.to_dict()
    assert res.temperature_folds.shape == (5,) and res.reached
    cov = res.coverage.sel(subset="all")
    assert float(cov.sel(stage="before", level=0.9)) < 0.8
    assert float(cov.sel(stage="in_fold", level=0.9)) >= 0.9
    assert 0.85 <= float(cov.sel(stage="out_of_fold", level=0.9)) <= 0.95
    # No whole frame held out: every point is in an observed frame.
    assert dict(zip(res.coverage.subset.values, res.coverage.n_points.values))["unobserved_frames"] == 0
    assert math.isnan(res.temperature_by_subset["unobserved_frames"])
    d = res.to_dict()
    json.dumps(d)
    assert d["coverage"]["out_of_fold"]["all"]["0.9"] == pytest.approx(float(cov.sel(stage="out_of_fold", level=0.9)))
    # An honest posterior (shrink 1) needs no temperature.
    ok = calibrate_kfold(jax.random.key(0), toy_predict(truth, obs, shrink=1.0), obs, n_folds=5)
    assert 0.7 <= ok.temperature <= 1.45


def test_predict_folds_checks_what_predict_returns():
    obs, truth = make_obs(n_frames=2, per_frame=10)
    key = jax.random.key(0)
    with pytest.raises(InputError, match="predict"):
        predict_folds(key, lambda k, f, h: np.zeros((4, h.n_points)), obs, n_folds=2)
    with pytest.raises(InputError, match="predict"):
        predict_folds(key, lambda k, f, h: (np.zeros((4, h.n_points + 1)), 0.1), obs, n_folds=2)
    with pytest.raises(InputError, match="predict"):
        predict_folds(key, lambda k, f, h: (np.zeros((4, h.n_points)), -1.0), obs, n_folds=2)
    with pytest.raises(NumericalError, match="non-finite"):
        predict_folds(key, lambda k, f, h: (np.full((4, h.n_points), np.nan), 0.1), obs, n_folds=2)
    with pytest.raises(InputError, match="likelihood"):
        predict_folds(key, toy_predict(truth, obs), obs, n_folds=2, likelihood="poisson")
    with pytest.raises(InputError, match="folds"):
        predict_folds(key, toy_predict(truth, obs), obs, folds=np.zeros(obs.n_points, dtype=int))
    preds = predict_folds(key, toy_predict(truth, obs), obs, folds=np.arange(obs.n_points) % 2)
    assert preds.field.shape == (64, obs.n_points) and preds.n_folds == 2 and preds.frame_observed.all()
    with pytest.raises(InputError, match="predictions"):
        calibrate_folds(key, "not predictions")
    with pytest.raises(InputError, match="method"):
        calibrate_folds(key, preds, method="hdi")


def test_fold_log_lik_uses_the_model_parametrisation():
    y, f, s = np.array([0.3]), np.array([[0.0], [0.1]]), np.array([[0.5], [0.5]])
    np.testing.assert_allclose(fold_log_lik(y, f, s, "gaussian"), stats.norm(f, s).logpdf(y))
    # Laplace with std sigma: scale b = sigma / sqrt(2).
    np.testing.assert_allclose(fold_log_lik(y, f, s, "laplace"), stats.laplace(f, s / math.sqrt(2)).logpdf(y))
    np.testing.assert_allclose(fold_log_lik(y, f, s, "student_t", df=3.0), stats.t(3.0, f, s).logpdf(y))


# -- K-fold elpd and the loo gate -----------------------------------------------------------------
def test_kfold_elpd_prefers_the_right_model():
    obs, truth = make_obs()
    key = jax.random.key(3)
    right = predict_folds(key, toy_predict(truth, obs, shrink=1.0), obs, n_folds=5)
    wide = predict_folds(key, toy_predict(truth, obs, shrink=4.0), obs, n_folds=5)
    res = {"right": kfold_elpd(right), "too wide": kfold_elpd(wide)}
    # elpd_i is log mean_s N(y_i; f_s, sigma).
    point = np.log(np.mean(stats.norm(right.field, SIGMA).pdf(obs.value), axis=0))
    np.testing.assert_allclose(res["right"].pointwise.values, point, rtol=1e-10)
    table = compare_elpd(res)
    assert list(table.index) == ["right", "too wide"]
    assert table.loc["right", "elpd_diff"] == 0 and table.loc["too wide", "elpd_diff"] < -2 * table.loc["too wide", "dse"]
    with pytest.raises(InputError, match="predictions"):
        kfold_elpd("x")
    with pytest.raises(InputError, match="results"):
        compare_elpd({"a": 1})


def tiny_idata(log_lik: np.ndarray, seed: int = 0):
    """A 1-D posterior with 2 frames of 5 points, observations at 3 points per frame."""
    rng = np.random.default_rng(seed)
    chains, draws, n = log_lik.shape
    time = np.repeat([0.0, 1.0], n // 2)
    coords = np.tile(np.linspace(0, 1, 5)[[0, 2, 4]], 2)[:, None][:n]
    obs = ObservationSet(value=rng.normal(size=n), time=time, coords=coords, space_dims=("x",))
    field = rng.normal(size=(chains, draws, 2, 5))
    y_rep = field[:, :, time.astype(int), [0, 2, 4] * 2] + 0.1 * rng.normal(size=(chains, draws, n))
    idata = to_inference_data(core_draws=rng.normal(size=(chains, draws, 2, 3)), field_draws=field,
                              field_times=np.array([0.0, 1.0]), field_coords={"x": np.linspace(0, 1, 5)},
                              space_dims=("x",), obs=obs, y_rep=y_rep, log_lik=log_lik)
    return idata, field, obs


def test_loo_gate_warns_raises_and_elpd_falls_back_to_kfold():
    rng = np.random.default_rng(0)
    bad, _, obs = tiny_idata(30.0 * rng.standard_cauchy(size=(1, 8, 6)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = loo(bad)
    # Our message, not ArviZ's generic one as well.
    assert [type(w.message) for w in caught] == [UnreliableLOOWarning] and "kfold_elpd" in str(caught[0].message)
    assert not result["loo_reliable"] and result["n_bad_k"] > 0
    with pytest.raises(NumericalError, match="Pareto k"):
        loo(bad, on_unreliable="raise")
    with pytest.raises(InputError, match="on_unreliable"):
        loo(bad, on_unreliable="sometimes")
    good, _, _ = tiny_idata(0.01 * rng.normal(size=(1, 400, 6)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreliableLOOWarning)
        assert loo(good)["loo_reliable"]
        assert elpd(good)[0] == "psis-loo"
    with pytest.raises(NumericalError, match="predict_folds"):
        elpd(bad)
    preds = FoldPredictions(fold=np.arange(6) % 2, field=np.zeros((4, 6)), noise_sd=np.ones((4, 6)),
                            observed=obs.value, frame_observed=np.ones(6, bool),
                            log_lik=fold_log_lik(obs.value, np.zeros((4, 6)), np.ones((4, 6))), likelihood="gaussian")
    with pytest.warns(UnreliableLOOWarning, match="2-fold"):
        method, value = elpd(bad, preds)
    assert method == "kfold" and value.n_folds == 2


# -- tempering a whole posterior ------------------------------------------------------------------
def test_temper_posterior_tempers_every_draw_dependent_group_or_says_so():
    rng = np.random.default_rng(1)
    idata, field, obs = tiny_idata(rng.normal(size=(2, 6, 6)))
    f_obs = field[:, :, obs.time.astype(int), [0, 2, 4] * 2]
    noise = idata.posterior_predictive["y"].values - f_obs
    out = temper_posterior(idata, 0.25, field_at_obs=f_obs, log_lik_fn=lambda f: stats.norm(f, 0.1).logpdf(obs.value))
    np.testing.assert_allclose(out.posterior["field"].values, apply_temperature(field, 0.25, axis=(0, 1)), atol=1e-12)
    np.testing.assert_allclose(out.posterior["cores"].values,
                               apply_temperature(idata.posterior["cores"].values, 0.25, axis=(0, 1)), atol=1e-12)
    # Each replicate keeps its noise realisation; the log-likelihood is recomputed.
    f_t = apply_temperature(f_obs, 0.25, axis=(0, 1))
    np.testing.assert_allclose(out.posterior_predictive["y"].values - f_t, noise, atol=1e-12)
    np.testing.assert_allclose(out.log_likelihood["y"].values, stats.norm(f_t, 0.1).logpdf(obs.value), atol=1e-12)
    info = posterior_attrs(out)["tempering"]
    assert info["tau"] == 0.25 and info["removed"] == []
    assert set(info["tempered"]) == {"posterior.field", "posterior.cores", "posterior_predictive.y", "log_likelihood.y"}
    np.testing.assert_array_equal(idata.posterior["field"].values, field)  # input unchanged
    # Without the field at the observation points the stale groups are removed, and said to be.
    bare = temper_posterior(idata, 2.0)
    assert "posterior_predictive" not in bare.groups() and "log_likelihood" not in bare.groups()
    assert posterior_attrs(bare)["tempering"]["removed"] == ["posterior_predictive", "log_likelihood"]
    with pytest.raises(InputError, match="idata"):
        temper_posterior(bare, 2.0)
    with pytest.raises(InputError, match="tau"):
        temper_posterior(idata, 0.0)
    with pytest.raises(InputError, match="field_at_obs"):
        temper_posterior(idata, 2.0, field_at_obs=f_obs[:, :, :3])


# -- rank histogram and prior predictive check ----------------------------------------------------
def test_rank_histogram_expected_counts_and_chi2():
    rng = np.random.default_rng(0)
    h = rank_histogram(rng.integers(0, 8, size=16000), 7, n_bins=3)  # 8 rank values in bins of 2, 3, 3
    np.testing.assert_allclose(h["expected"].values, 16000 * np.array([2, 3, 3]) / 8)
    assert h.attrs["p_value"] > 1e-3 and h.attrs["dof"] == 2
    u = rank_histogram(np.r_[np.zeros(500, int), np.full(500, 7), rng.integers(0, 8, 1000)], 7)
    assert u.attrs["p_value"] < 1e-10
    with pytest.raises(InputError, match="ranks"):
        rank_histogram(np.array([0, 9]), 7)
    with pytest.raises(InputError, match="n_bins"):
        rank_histogram(np.array([0, 1]), 7, n_bins=20)


def ar1_fields(seed: int, n: int, phi: float, smooth: bool) -> xr.DataArray:
    """(sample, time, x, y) AR(1) in time, spatially smooth or white."""
    rng = np.random.default_rng(seed)
    v = np.empty((n, 12, 8, 8))
    e = rng.normal(size=v.shape)
    if smooth:
        e = (e + np.roll(e, 1, axis=2) + np.roll(e, 1, axis=3) + np.roll(e, (1, 1), axis=(2, 3))) / 2
    v[:, 0] = e[:, 0]
    for t in range(1, 12):
        v[:, t] = phi * v[:, t - 1] + math.sqrt(1 - phi**2) * e[:, t]
    return xr.DataArray(v, dims=("sample", "time", "x", "y"),
                        coords={"time": np.arange(12.0), "x": np.arange(8.0), "y": np.arange(8.0)})


def test_prior_predictive_check_sees_temporal_memory_and_spatial_scale():
    prior = ar1_fields(0, 40, 0.8, smooth=True)
    same = prior_predictive_check(prior, ar1_fields(1, 5, 0.8, smooth=True).rename(sample="traj"),
                                  training_sample_dim="traj")
    assert same.attrs["acf_inside_band"] == 1.0 and same.attrs["power_inside_band"] >= 0.75
    assert 0.8 < same.attrs["std_ratio_median"] < 1.25
    assert same["acf"].dims == ("source", "lag") and same["mean"].dims == ("source", "x", "y")
    # 12 time stamps: the sample autocorrelation is biased low (~0.45 for phi = 0.8), the same for both.
    acf1 = same["acf"].sel(lag=1).values
    assert 0.3 < acf1[0] < 0.6 and abs(acf1[0] - acf1[1]) < 0.1
    short_memory = prior_predictive_check(prior, ar1_fields(2, 5, 0.1, smooth=True), training_sample_dim="sample")
    assert short_memory.attrs["acf_inside_band"] < 1.0
    lag1 = short_memory.sel(lag=1)
    assert float(lag1["acf"].sel(source="training")) < float(lag1["acf_prior_band"].min())
    white = prior_predictive_check(prior, ar1_fields(3, 5, 0.8, smooth=False), training_sample_dim="sample")
    assert white.attrs["power_inside_band"] < 0.5
    # One training trajectory without a sample dim works too.
    single = prior_predictive_check(prior, ar1_fields(1, 1, 0.8, smooth=True).isel(sample=0))
    assert single.attrs["n_training"] == 1
    with pytest.raises(InputError, match="lags"):
        prior_predictive_check(prior, prior, training_sample_dim="sample", lags=(12,))
    with pytest.raises(InputError, match="training"):
        prior_predictive_check(prior, prior.rename(x="lat"), training_sample_dim="sample")
    with pytest.raises(InputError, match="spectrum_dims"):
        prior_predictive_check(prior, prior, training_sample_dim="sample", spectrum_dims=("time",))
