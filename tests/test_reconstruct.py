"""End to end: simulate -> fit FTM -> train prior -> observe -> reconstruct -> evaluate (tiny sizes)."""

import json

import arviz as az
import jax
import numpy as np
import pytest

from inference.guidance import Fisher, MomentMatching
from inference.guided import GuidedConfig
from inference.reconstruct import Run, open_run, reconstruct, refine_grid, sampler_config
from inference.report import posterior_attrs
from inference.report import evaluate, load_posterior
from sdift_prob import cli
from sdift_prob.data.fields import save_fields
from sdift_prob.data.observations import ObservationSet
from sdift_prob.data.sampling import sample_observations, select_trajectory
from sdift_prob.data.simulate import simulate_ocean
from sdift_prob.errors import InputError
from sdift_prob.ftm import FTMConfig, fit_ftm, save_run
from sdift_prob.gpsd import PriorConfig, save_prior, train_prior


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    ds = simulate_ocean(8, seed=0, n_test=2, nlat=6, nlon=6, ndepth=5, nt=6, progress=False)
    data = root / "ocean.nc"
    save_fields(ds, data)
    train = ds.sel(trajectory=ds.split.values == "train")
    fit, _ = fit_ftm(train, (3, 3, 2), key=jax.random.key(0), config=FTMConfig(epochs=60, width=16),
                     progress=False)
    run_dir = root / "run"
    save_run(run_dir, fit)
    cfg = PriorConfig(channels=4, channel_mult=(1,), num_blocks=1, attention=False, time_features=4,
                      steps=12, batch_size=2, seq_len=None, warmup_steps=2, lr=1e-3, checkpoint_every=100)
    prior, report = train_prior(np.asarray(fit.cores), fit.normalised_times(), cfg, key=jax.random.key(1),
                                progress=False)
    save_prior(run_dir, prior, report)
    test_index = int(np.where(ds.split.values == "test")[0][0])
    truth = select_trajectory(ds, test_index)
    obs = sample_observations(jax.random.key(2), truth, rho=0.1, setting=2, noise="gaussian",
                              noise_scale=0.5)
    return {"root": root, "data": data, "run_dir": run_dir, "truth": truth, "obs": obs, "index": test_index}


@pytest.mark.parametrize("sampler", ["mmps", "mpdps", "dps", "gp"])
def test_reconstruct_gives_named_inference_data(pipeline, sampler):
    run = open_run(pipeline["run_dir"])
    idata = reconstruct(run, pipeline["obs"], key=jax.random.key(3), sampler=sampler, draws=2, sigma=0.5)
    assert isinstance(idata, az.InferenceData)
    for group in ("posterior", "posterior_predictive", "observed_data", "log_likelihood", "sample_stats"):
        assert group in idata.groups()
    field = idata.posterior["field"]
    assert field.dims == ("chain", "draw", "time", "lat", "lon", "depth")
    assert field.shape == (1, 2, 6, 6, 6, 5)
    np.testing.assert_allclose(field.time.values, pipeline["truth"].time.values)
    assert np.isfinite(field.values).all()
    assert idata.posterior_predictive["y"].shape == (1, 2, pipeline["obs"].n_points)
    assert idata.posterior.attrs["sampler"] == sampler
    scores = evaluate(idata, pipeline["truth"])
    assert set(scores) == {"vrmse", "rmse", "coverage_50", "coverage_90", "coverage_50_quantile",
                           "coverage_90_quantile", "coverage_50_hdi", "coverage_90_hdi", "n_draws", "crps",
                           "energy_score", "variogram_score"}
    assert scores["n_draws"] == 2
    # Even a barely trained prior must do better than a field of zeros (VRMSE of a constant >= 1).
    assert np.isfinite(scores["vrmse"])


def test_same_seed_same_draws_and_different_seed_differs(pipeline):
    run = open_run(pipeline["run_dir"])
    a = reconstruct(run, pipeline["obs"], key=jax.random.key(5), draws=2, sigma=0.5)
    b = reconstruct(run, pipeline["obs"], key=jax.random.key(5), draws=2, sigma=0.5)
    c = reconstruct(run, pipeline["obs"], key=jax.random.key(6), draws=2, sigma=0.5)
    np.testing.assert_array_equal(a.posterior["field"].values, b.posterior["field"].values)
    assert not np.array_equal(a.posterior["field"].values, c.posterior["field"].values)


def test_off_grid_times_and_finer_grid(pipeline):
    run = open_run(pipeline["run_dir"])
    t = pipeline["truth"].time.values
    times = np.linspace(t[0], t[-1] + 0.5 * (t[1] - t[0]), 9)  # off-grid, and past the last time
    idata = reconstruct(run, pipeline["obs"], key=jax.random.key(7), draws=1, sigma=0.5, times=times,
                        resolution=2)
    field = idata.posterior["field"]
    np.testing.assert_allclose(field.time.values, times)
    assert field.sizes["lat"] == 11 and field.sizes["depth"] == 9
    # The sampler's core grid is the union of output and observation times.
    assert idata.posterior["cores"].sizes["time_grid"] >= len(times)


def test_empty_observations_give_labelled_prior_draws(pipeline):
    run = open_run(pipeline["run_dir"])
    obs = pipeline["obs"].subset(np.zeros(pipeline["obs"].n_points, bool))
    idata = reconstruct(run, obs, key=jax.random.key(8), draws=2)
    assert idata.posterior.attrs["conditioned"] == 0
    assert np.isfinite(idata.posterior["field"].values).all()


def test_bad_input_is_named(pipeline):
    run = open_run(pipeline["run_dir"])
    with pytest.raises(InputError, match="sampler"):
        reconstruct(run, pipeline["obs"], key=jax.random.key(0), sampler="nuts")
    with pytest.raises(InputError, match="draws"):
        reconstruct(run, pipeline["obs"], key=jax.random.key(0), draws=0)
    with pytest.raises(InputError, match="sigma"):
        reconstruct(run, pipeline["obs"], key=jax.random.key(0), sigma=-1.0)
    with pytest.raises(InputError, match="times"):
        reconstruct(run, pipeline["obs"], key=jax.random.key(0), times=[3.0, 1.0])
    with pytest.raises(InputError, match="resolution"):
        refine_grid([0.0, 1.0], 0)
    unknown = ObservationSet(value=np.ones(1), time=np.zeros(1), coords=np.zeros((1, 2)), space_dims=("x", "y"))
    with pytest.raises(InputError, match="space_dims"):
        reconstruct(run, unknown, key=jax.random.key(0))
    no_prior = Run(ftm=run.ftm, prior=None, path=None)
    with pytest.raises(InputError, match="prior"):
        reconstruct(no_prior, pipeline["obs"], key=jax.random.key(0), sampler="mpdps", sigma=0.5)


def test_cli_observe_reconstruct_evaluate(pipeline, capsys):
    root = pipeline["root"]
    obs_file, post = root / "obs.nc", root / "posterior.nc"
    assert cli.main(["observe", str(pipeline["data"]), "--trajectory", str(pipeline["index"]), "--rho", "0.1",
                     "--noise-scale", "0.5", "--seed", "1", "--out", str(obs_file)]) == 0
    assert cli.main(["reconstruct", str(pipeline["run_dir"]), str(obs_file), "--draws", "2", "--steps", "8",
                     "--sigma", "0.5", "--out", str(post)]) == 0
    idata = load_posterior(post)
    assert idata.posterior["field"].shape[:2] == (1, 2)
    capsys.readouterr()
    assert cli.main(["evaluate", str(post), "--truth", str(pipeline["data"]), "--trajectory",
                     str(pipeline["index"]), "--json-summary"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert 0.0 <= scores["coverage_90"] <= 1.0 and scores["vrmse"] > 0
    # An existing output is refused with one clear line, not a traceback.
    assert cli.main(["reconstruct", str(pipeline["run_dir"]), str(obs_file), "--out", str(post)]) == 1
    assert "--out" in capsys.readouterr().err


def test_calibrate_reconstruction_reaches_nominal_held_out_coverage(pipeline):
    from inference.calibrate import CalibrationResult
    from inference.reconstruct import calibrate_reconstruction

    run = open_run(pipeline["run_dir"])
    res = calibrate_reconstruction(run, pipeline["obs"], key=jax.random.key(9), draws=4, zetas=(1.0,), sigma=0.5)
    assert isinstance(res, CalibrationResult)
    assert res.zeta == 1.0 and res.temperature > 0
    # The chosen temperature is the smallest that brings every level to nominal on the held-out points.
    for level, after in zip(res.levels, res.coverage_after):
        assert after >= level - 1e-9
    assert res.held_out.sum() == round(0.2 * pipeline["obs"].n_points)


@pytest.mark.slow  # three reconstructions (~16 s warm on one core); the K-fold logic is tested fast in test_checks
def test_kfold_predictions_of_a_reconstruction(pipeline):
    """issue 18: K-fold held-out predictions of reconstruct feed the field calibration and the K-fold elpd."""
    from inference.calibrate import calibrate_folds
    from inference.checks import kfold_elpd
    from inference.reconstruct import predict_folds_reconstruction

    run, obs = open_run(pipeline["run_dir"]), pipeline["obs"]
    preds = predict_folds_reconstruction(run, obs, key=jax.random.key(4), n_folds=2, frame_fraction=0.34,
                                         sampler="gp", draws=4, sigma=0.5)
    assert preds.field.shape == (4, obs.n_points) and (preds.noise_sd >= 0.5).all()
    assert (~preds.frame_observed).any() and preds.frame_observed.any()
    cal = calibrate_folds(jax.random.key(5), preds)
    assert cal.temperature > 0 and set(cal.coverage.subset.values) == {"all", "observed_frames", "unobserved_frames"}
    assert np.isfinite(kfold_elpd(preds).elpd)


def test_tempering_a_reconstruction_keeps_its_groups_consistent(pipeline):
    """issue 18: tempering a reconstruction tempers field, cores and predictive, and recomputes the
    log-likelihood (checked at tau = 1: the stored groups come back)."""
    from inference.reconstruct import field_at_observations, temper_reconstruction
    from inference.report import posterior_attrs

    run, obs = open_run(pipeline["run_dir"]), pipeline["obs"]
    idata = reconstruct(run, obs, key=jax.random.key(3), sampler="gp", draws=4, sigma=0.5)
    f_obs = field_at_observations(run, idata, obs)
    assert f_obs.shape == idata.posterior_predictive["y"].shape
    same = temper_reconstruction(run, idata, obs, 1.0, sigma=0.5)
    info = posterior_attrs(same)["tempering"]
    assert info["removed"] == [] and "log_likelihood.y" in info["tempered"]
    np.testing.assert_allclose(same.log_likelihood["y"].values, idata.log_likelihood["y"].values, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(same.posterior_predictive["y"].values, idata.posterior_predictive["y"].values, atol=1e-3)
    wider = temper_reconstruction(run, idata, obs, 2.0, sigma=0.5)
    ratio = wider.posterior["field"].std(("chain", "draw")) / idata.posterior["field"].std(("chain", "draw"))
    np.testing.assert_allclose(ratio.values, np.sqrt(2.0), rtol=1e-3)


def test_fitted_message_kernel(pipeline):
    run = open_run(pipeline["run_dir"])
    kernel = run.fitted_message_kernel
    assert kernel.name == "matern12" and np.isfinite(float(kernel.lengthscale)) and float(kernel.lengthscale) > 0
    idata = reconstruct(run, pipeline["obs"], key=jax.random.key(3), draws=2, sigma=0.5, message_kernel="fitted")
    settings = json.loads(idata.posterior.attrs["settings"])  # JSON-encoded for netCDF
    assert settings["guided"]["message_kernel"]["name"] == "matern12"
    assert np.isfinite(idata.posterior["field"].values).all()
    with pytest.raises(InputError, match="message_kernel"):
        reconstruct(run, pipeline["obs"], key=jax.random.key(3), draws=2, sigma=0.5, message_kernel="learned")


@pytest.mark.parametrize("sampler", ["gp", "mpdps"])
def test_values_far_outside_the_training_range_are_refused_before_sampling(pipeline, sampler):
    obs = pipeline["obs"]
    wild = ObservationSet(value=np.where(np.arange(obs.n_points) == 0, -1e300, obs.value), time=obs.time,
                          coords=obs.coords, space_dims=obs.space_dims, noise_scale=obs.noise_scale,
                          noise_model=obs.noise_model)
    with pytest.raises(InputError, match="obs.value.*units"):
        reconstruct(open_run(pipeline["run_dir"]), wild, key=jax.random.key(0), sampler=sampler, draws=2, sigma=0.5)


def test_poisson_counts_at_the_offset_reconstruct_end_to_end(pipeline):
    # Count 0 (a value exactly at the recorded offset) is valid Poisson data; normalised in
    # float32 for the sampler and in float64 for the report it lands a rounding step either side
    # of the offset, which the input checks refused before (in the report, after sampling).
    truth, run = pipeline["truth"], open_run(pipeline["run_dir"])
    level = 0.1 * run.ftm.normalizer.std
    scale = level**2 / float(np.mean(truth.values - truth.values.min()))
    obs = sample_observations(jax.random.key(4), truth, rho=0.1, setting=1, noise="poisson", noise_scale=scale)
    value = obs.value.copy()
    value[np.argmin(value)] = obs.attrs["poisson_offset"]
    counts = ObservationSet(value=value, time=obs.time, coords=obs.coords, space_dims=obs.space_dims,
                            noise_scale=obs.noise_scale, noise_model=obs.noise_model, attrs=obs.attrs)
    idata = reconstruct(run, counts, key=jax.random.key(3), sampler="mpdps", draws=2, likelihood="poisson")
    assert np.isfinite(idata.posterior["field"].values).all()
    assert np.isfinite(idata.log_likelihood["y"].values).all()
    value[np.argmin(value)] -= scale  # a whole count below the offset is still bad data
    bad = ObservationSet(value=value, time=obs.time, coords=obs.coords, space_dims=obs.space_dims,
                         noise_scale=obs.noise_scale, noise_model=obs.noise_model, attrs=obs.attrs)
    with pytest.raises(InputError, match="poisson_offset"):
        reconstruct(run, bad, key=jax.random.key(3), sampler="mpdps", draws=2, likelihood="poisson")


def test_shipped_prior_mpdps_beats_dps_on_interlaced_observations():
    """Setting 2 (every other time stamp observed) with the shipped, trained ocean prior: DPS leaves
    the empty time stamps to the prior; MPDPS's messages reconstruct them (measured 0.076 vs 0.115)."""
    from sdift_prob import pretrained
    from sdift_prob.data.fields import load_fields

    bundle = pretrained.path("ocean")
    run = open_run(bundle / "run")
    truth = select_trajectory(load_fields(bundle / "test_trajectory.nc"), 0)
    obs = sample_observations(jax.random.key(11), truth, rho=0.01, setting=2, noise="gaussian",
                              noise_scale=0.1 * run.ftm.normalizer.std)
    scores = {m: evaluate(reconstruct(run, obs, key=jax.random.key(0), sampler=m, draws=4,
                                      sigma=0.1 * run.ftm.normalizer.std), truth)["vrmse"] for m in ("mpdps", "dps")}
    assert scores["mpdps"] < 0.85 * scores["dps"], scores
    assert scores["mpdps"] < 0.15  # the training-mean field scores about 0.17 on this trajectory


# --- checks before any work (issue 16) -------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_obs():
    from sdift_prob import pretrained

    bundle = pretrained.path("ocean")
    return bundle / "run", ObservationSet.load(bundle / "obs_rho1pct.nc")


@pytest.mark.parametrize("key", [0, np.int64(0), np.asarray(jax.random.key_data(jax.random.key(0)))],
                         ids=["int", "np.int64", "raw key data"])
def test_an_untyped_key_is_the_usual_one_line_error(shipped_obs, key):
    run_dir, obs = shipped_obs
    with pytest.raises(InputError, match=r"^key: expected a single typed PRNG key from jax\.random\.key\(seed\)"):
        reconstruct(run_dir, obs, key=key, draws=1)


def test_fewer_sampler_steps_than_tested_warn_before_any_work(shipped_obs, tmp_path):
    import warnings

    from inference.guided import GuidedConfig
    from sdift_prob.errors import UntestedSettingWarning

    _, obs = shipped_obs
    nowhere = tmp_path / "nowhere"  # the warning comes before the run is even opened
    with pytest.warns(UntestedSettingWarning, match=r"^num_steps: 2 sampler steps .*below 8 steps are untested"):
        with pytest.raises(InputError, match="run_dir"):
            reconstruct(nowhere, obs, key=jax.random.key(0), config=GuidedConfig(num_steps=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntestedSettingWarning)
        for sampler, config in (("mpdps", GuidedConfig(method="mpdps", guidance="fisher", num_steps=8)), ("dps", None),
                                ("gp", GuidedConfig(num_steps=2))):  # gp takes no steps
            with pytest.raises(InputError, match="run_dir"):
                reconstruct(nowhere, obs, key=jax.random.key(0), sampler=sampler, config=config)


# --- sampler names and the representation error (posterior-correctness issue) ----------------------


def test_sampler_names_stand_for_configs_and_contradictions_are_refused():
    assert isinstance(sampler_config("mmps").guidance, MomentMatching) and sampler_config("mmps").method == "dps"
    assert isinstance(sampler_config("mpdps").guidance, Fisher) and sampler_config("mpdps").method == "mpdps"
    assert sampler_config("dps", GuidedConfig(guidance="reference")).method == "dps"
    assert sampler_config("mmps", GuidedConfig(guidance=MomentMatching(5))).guidance.cg_steps == 5
    with pytest.raises(InputError, match="config.guidance"):
        sampler_config("mmps", GuidedConfig(guidance="fisher"))
    with pytest.raises(InputError, match="config.guidance"):
        sampler_config("mpdps", GuidedConfig())  # moment matching + messages counts the data twice
    with pytest.raises(InputError, match="config.method"):
        sampler_config("mmps", GuidedConfig(method="mpdps"))


def test_a_contradicting_config_fails_before_any_work(shipped_obs):
    run_dir, obs = shipped_obs
    with pytest.raises(InputError, match="config.guidance"):
        reconstruct(run_dir.parent / "nowhere", obs, key=jax.random.key(0), sampler="mpdps", config=GuidedConfig())


def test_representation_error_is_added_to_a_given_noise_and_recorded(pipeline):
    run = open_run(pipeline["run_dir"])
    std = run.ftm.normalizer.std
    rep, source = run.representation_error
    assert rep > 0 and "RMSE on held-out entries" in source  # recorded by this version's fit
    kw = dict(key=jax.random.key(3), sampler="gp", draws=2, sigma=0.5)
    given = reconstruct(run, pipeline["obs"], representation_error=1.0, **kw)
    none = reconstruct(run, pipeline["obs"], representation_error=None, **kw)
    auto = reconstruct(run, pipeline["obs"], **kw)
    assert posterior_attrs(given)["representation_error"] == {
        "std": pytest.approx(1.0), "source": "given", "applied": "added to the given noise"}
    assert posterior_attrs(none)["representation_error"]["std"] == 0.0
    assert posterior_attrs(auto)["representation_error"]["std"] == pytest.approx(rep * std)
    # the predictive noise is the total: sqrt(0.5² + 1²) against 0.5
    spread = {name: float(np.std(i.posterior_predictive["y"].values - i.posterior_predictive["y"].values.mean(
        axis=(0, 1)))) for name, i in (("given", given), ("none", none))}
    assert spread["given"] > 1.5 * spread["none"], spread
    with pytest.raises(InputError, match="representation_error"):
        reconstruct(run, pipeline["obs"], representation_error=-1.0, **kw)
    with pytest.raises(InputError, match="representation_error"):
        reconstruct(run, pipeline["obs"], representation_error="fitted", **kw)


def test_older_runs_take_the_representation_error_from_the_held_out_vrmse():
    from sdift_prob import pretrained

    rep, source = open_run(pretrained.path("ocean") / "run").representation_error
    assert rep == pytest.approx(0.02744) and source.startswith("holdout_vrmse")


def test_inferred_noise_is_drawn_before_sampling_apart_from_the_basis_error(pipeline):
    run = open_run(pipeline["run_dir"])
    idata = reconstruct(run, pipeline["obs"], key=jax.random.key(3), sampler="mmps", draws=4, sigma="infer")
    attrs = posterior_attrs(idata)
    noise = attrs["noise"]
    assert noise["source"] == "inferred" and noise["method"].startswith("marginal likelihood")
    assert noise["points_used"] == noise["points"] == pipeline["obs"].n_points
    lo, hi = noise["interval90"]
    sigma = idata.posterior["sigma"].values.ravel()
    assert 0 < lo < hi and len(np.unique(sigma)) == 4  # one noise level per draw
    assert noise["std"] == pytest.approx(sigma.mean())
    rep = attrs["representation_error"]
    assert rep["applied"] == "added to the inferred noise" and noise["representation_error_added"] == rep["std"]
    # the sampler and the predictive ran at the effective noise sqrt(σ² + r²) of each draw
    from inference.reconstruct import _noise_sd

    np.testing.assert_allclose(_noise_sd(idata, pipeline["obs"], "infer")[0, :, 0], np.hypot(sigma, rep["std"]))
    from inference.summary import run_summary, summary_text

    text = summary_text(run_summary(idata))
    assert "noise: inferred" in text and "90% interval" in text, text
    again = reconstruct(run, pipeline["obs"], key=jax.random.key(3), sampler="mmps", draws=4, sigma="infer")
    np.testing.assert_array_equal(again.posterior["sigma"].values, idata.posterior["sigma"].values)
