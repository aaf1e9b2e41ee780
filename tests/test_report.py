"""Tests of inference.report: InferenceData layout, netCDF round trip, NumPyro pieces, evaluation."""

from __future__ import annotations

import json

import arviz as az
import jax
import matplotlib
import numpy as np
import pytest
import xarray as xr
from scipy import stats

from inference.report import (
    coverage,
    coverage_by,
    crps,
    evaluate,
    load_posterior,
    loo,
    loo_pit,
    observation_order,
    p_exceed,
    pit,
    pointwise_log_likelihood,
    posterior_attrs,
    posterior_mean,
    posterior_predictive,
    psis_log_weights,
    save_posterior,
    to_inference_data,
    vrmse_of_mean,
)
from models.observation import normalise_padded
from sdift_prob.data.fields import Normalizer
from sdift_prob.data.observations import ObservationSet
from sdift_prob.errors import FormatError, InputError

matplotlib.use("Agg")

C, S = 2, 5
RANKS = (2, 2)
SPACE = ("lat", "lon")


def features(coords: np.ndarray) -> np.ndarray:
    """Design row of a point: a fixed feature map of its coordinates, D = 4."""
    lat, lon = coords[..., 0], coords[..., 1]
    return np.stack([np.ones_like(lat), lat, lon, lat * lon], axis=-1)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    n = 11
    # Deliberately unsorted in time, uneven counts per time stamp.
    time = np.array([2.0, 0.0, 0.0, 1.0, 1.0, 2.0, 0.0, 2.0, 2.0, 0.0, 1.0])
    obs = ObservationSet(
        value=rng.normal(3.0, 1.0, size=n), time=time, coords=rng.uniform(size=(n, 2)), space_dims=SPACE,
        noise_scale=0.2, noise_model="gaussian",
    )
    padded = obs.to_padded()
    order = observation_order(obs)
    design = features(padded.coords)
    m = padded.times.size
    cores = rng.normal(size=(C, S, m, *RANKS))
    sigma = rng.uniform(0.3, 0.8, size=(C, S))
    norm = Normalizer(mean=2.0, std=1.5)
    return dict(obs=obs, padded=padded, order=order, design=design, cores=cores, sigma=sigma, norm=norm, rng=rng)


def model_mean(setup) -> np.ndarray:
    """(C, S, N) noise-free model value of each observation in normalised units, in obs order,
    computed point by point from the ObservationSet (no padding involved)."""
    obs, padded, cores = setup["obs"], setup["padded"], setup["cores"]
    t_index = np.searchsorted(padded.times, obs.time)
    rows = features(obs.coords)  # (N, D)
    w = cores.reshape(C, S, cores.shape[2], -1)[:, :, t_index, :]  # (C, S, N, D)
    return np.einsum("nd,csnd->csn", rows, w)


@pytest.fixture(scope="module")
def idata(setup):
    rng = np.random.default_rng(1)
    obs = setup["obs"]
    field = rng.normal(size=(C, S, 4, 3, 5))
    return to_inference_data(
        core_draws=setup["cores"],
        field_draws=field,
        field_times=np.array([0.0, 0.5, 1.0, 1.5]),
        field_coords={"lon": np.linspace(10, 11, 5), "lat": np.linspace(-1, 1, 3)},
        space_dims=SPACE,
        obs=obs,
        y_rep=rng.normal(3.0, 1.0, size=(C, S, obs.n_points)),
        log_lik=rng.normal(-1.0, 0.1, size=(C, S, obs.n_points)),
        sigma_draws=setup["sigma"] * setup["norm"].std,
        sample_stats={"wall_time": rng.uniform(size=(C, S)), "nan_flag": np.zeros((C, S), bool),
                      "zeta": np.full((C, S), 0.01)},
        attrs={"sampler": "mpdps", "settings": {"zeta": 0.01, "steps": [1, 2]}, "seed": 7, "deterministic": True,
               "units": {"field": "m/s", "time": "days", "lat": "degrees_north"}, "note": None},
        core_times=np.array([0.0, 1.0, 2.0]),
    )


# -- InferenceData layout ---------------------------------------------------------------------------
def test_groups_dims_and_coords(idata, setup):
    obs = setup["obs"]
    assert set(idata.groups()) == {"posterior", "posterior_predictive", "observed_data", "log_likelihood",
                                   "sample_stats"}
    post = idata.posterior
    assert post["cores"].dims == ("chain", "draw", "time_grid", "rank_1", "rank_2")
    assert post["field"].dims == ("chain", "draw", "time", "lat", "lon")
    assert post["sigma"].dims == ("chain", "draw")
    np.testing.assert_array_equal(post["time"], [0.0, 0.5, 1.0, 1.5])
    np.testing.assert_array_equal(post["lat"], np.linspace(-1, 1, 3))
    np.testing.assert_array_equal(post["lon"], np.linspace(10, 11, 5))
    np.testing.assert_array_equal(post["time_grid"], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(post["cores"].values, setup["cores"])
    for group in ("posterior_predictive", "log_likelihood"):
        assert idata[group]["y"].dims == ("chain", "draw", "obs_id")
    od = idata.observed_data
    assert od["y"].dims == ("obs_id",)
    np.testing.assert_array_equal(od["y"].values, obs.value)
    for group in ("posterior_predictive", "log_likelihood", "observed_data"):
        ds = idata[group]
        np.testing.assert_array_equal(ds["obs_id"], np.arange(obs.n_points))
        np.testing.assert_array_equal(ds["obs_time"].values, obs.time)
        np.testing.assert_array_equal(ds["obs_lat"].values, obs.coords[:, 0])
        np.testing.assert_array_equal(ds["obs_lon"].values, obs.coords[:, 1])
        assert ds["obs_time"].dims == ("obs_id",) and "obs_time" not in ds.dims
    assert set(idata.sample_stats.data_vars) == {"wall_time", "nan_flag", "zeta"}
    assert idata.sample_stats["wall_time"].dims == ("chain", "draw")
    # Units from attrs["units"] land on variables and on the observation copies of coords.
    assert post["field"].attrs["units"] == "m/s"
    assert post["time"].attrs["units"] == "days"
    assert idata.observed_data["obs_time"].attrs["units"] == "days"
    assert idata.observed_data["obs_lat"].attrs["units"] == "degrees_north"


def test_attrs_are_netcdf_safe_and_decodable(idata):
    for group in idata.groups():
        a = idata[group].attrs
        assert a["inference_library"] == "sdift-prob"
        assert a["sampler"] == "mpdps"
        assert a["deterministic"] == 1 and not isinstance(a["deterministic"], bool)
        assert json.loads(a["settings"]) == {"steps": [1, 2], "zeta": 0.01}
    decoded = posterior_attrs(idata)
    assert decoded["settings"] == {"steps": [1, 2], "zeta": 0.01}
    assert decoded["note"] is None
    assert decoded["units"]["lat"] == "degrees_north"


def test_netcdf_round_trip(idata, tmp_path):
    path = save_posterior(idata, tmp_path / "post.nc")
    back = load_posterior(path)
    assert set(back.groups()) == set(idata.groups())
    for group in idata.groups():
        xr.testing.assert_identical(back[group].drop_attrs(), idata[group].drop_attrs())
        assert {k: v for k, v in back[group].attrs.items()} == pytest.approx(dict(idata[group].attrs))
    assert posterior_attrs(back) == posterior_attrs(idata)
    with pytest.raises(InputError, match="already exists"):
        save_posterior(idata, path)
    save_posterior(idata, path, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_load_rejects_foreign_files(tmp_path):
    text = tmp_path / "notes.nc"
    text.write_text("not a netCDF file")
    with pytest.raises(FormatError, match="not a readable"):
        load_posterior(text)
    foreign = az.from_dict(posterior={"a": np.zeros((1, 4))})
    foreign.to_netcdf(str(tmp_path / "foreign.nc"), engine="h5netcdf")
    with pytest.raises(FormatError, match="not an sdift-prob posterior"):
        load_posterior(tmp_path / "foreign.nc")
    with pytest.raises(InputError, match="not found"):
        load_posterior(tmp_path / "missing.nc")


# Random toy log-likelihoods give large Pareto k (a warning, as it should); arviz 0.23 still
# uses a matplotlib call deprecated in 3.11.
@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto:UserWarning")
@pytest.mark.filterwarnings("ignore::matplotlib.MatplotlibDeprecationWarning")
def test_arviz_summary_loo_and_plot_ppc(idata):
    import matplotlib.pyplot as plt

    summary = az.summary(idata, var_names=["sigma"], hdi_prob=0.9)
    assert summary.loc["sigma", "mean"] == pytest.approx(float(idata.posterior["sigma"].mean()), abs=1e-3)
    loo = az.loo(idata, pointwise=True)
    assert loo.loo_i.dims == ("obs_id",) and loo.loo_i.size == idata.observed_data["y"].size
    assert np.isfinite(loo.elpd_loo)
    ax = az.plot_ppc(idata, num_pp_samples=4, random_seed=0)
    assert len(np.atleast_1d(ax)) == 1
    plt.close("all")


# -- NumPyro pieces ---------------------------------------------------------------------------------
def test_observation_order_matches_padding(setup):
    obs, padded, order = setup["obs"], setup["padded"], setup["order"]
    np.testing.assert_array_equal(order >= 0, padded.mask)
    np.testing.assert_array_equal(padded.values[padded.mask][np.argsort(order[padded.mask])], obs.value)
    np.testing.assert_array_equal(np.sort(order[padded.mask]), np.arange(obs.n_points))


@pytest.mark.parametrize("inferred", [True, False])
def test_pointwise_log_likelihood_closed_form(setup, inferred):
    obs, norm = setup["obs"], setup["norm"]
    mean = model_mean(setup)
    if inferred:
        padded = normalise_padded(setup["padded"], norm.mean, norm.std)
        ll = pointwise_log_likelihood(setup["cores"], setup["design"], padded, setup["order"], "gaussian",
                                      setup["sigma"], normalizer=norm)
        expected = stats.norm.logpdf(obs.value, loc=norm.inverse(mean), scale=setup["sigma"][..., None] * norm.std)
    else:
        padded = setup["padded"]
        ll = pointwise_log_likelihood(setup["cores"], setup["design"], padded, setup["order"], sigma=0.4)
        expected = stats.norm.logpdf(obs.value, loc=mean, scale=0.4)
    assert ll.shape == (C, S, obs.n_points)
    np.testing.assert_allclose(ll, expected, rtol=2e-5, atol=2e-5)
    chunked = pointwise_log_likelihood(setup["cores"], setup["design"], padded, setup["order"], "gaussian",
                                       setup["sigma"] if inferred else None, sigma=None if inferred else 0.4,
                                       normalizer=norm if inferred else None, batch_size=3)
    np.testing.assert_array_equal(chunked, ll)


def test_posterior_predictive_units_order_and_chunking(setup):
    norm = setup["norm"]
    padded = normalise_padded(setup["padded"], norm.mean, norm.std)
    args = (setup["cores"], setup["design"], padded, setup["order"], "gaussian", setup["sigma"])
    key = jax.random.key(3)
    full = posterior_predictive(key, *args, normalizer=norm)
    chunked = posterior_predictive(key, *args, normalizer=norm, batch_size=3)
    assert full.shape == (C, S, setup["obs"].n_points)
    np.testing.assert_array_equal(full, chunked)
    assert not np.array_equal(full, posterior_predictive(jax.random.key(4), *args, normalizer=norm))
    # The replicate is the physical model value plus noise of std sigma * norm.std: the standardised
    # residuals over all draws and points are ~ N(0, 1) (here 110 values).
    z = (full - norm.inverse(model_mean(setup))) / (setup["sigma"][..., None] * norm.std)
    assert abs(z.mean()) < 4 / np.sqrt(z.size)
    assert 0.7 < z.std() < 1.3


def test_model_inputs_rejected(setup):
    args = (setup["cores"], setup["design"], setup["padded"], setup["order"])
    with pytest.raises(InputError, match="sigma"):
        pointwise_log_likelihood(*args)  # neither sigma nor sigma_draws
    with pytest.raises(InputError, match="obs_order"):
        pointwise_log_likelihood(setup["cores"], setup["design"], setup["padded"], setup["order"][:, ::-1], sigma=1.0)
    with pytest.raises(InputError, match="sigma_draws"):
        pointwise_log_likelihood(*args, "gaussian", -setup["sigma"])
    with pytest.raises(InputError, match="batch_size"):
        pointwise_log_likelihood(*args, sigma=1.0, batch_size=0)
    with pytest.raises(InputError, match="model_kwargs"):
        pointwise_log_likelihood(*args, sigma=1.0, validate=False)
    with pytest.raises(InputError, match="key"):
        posterior_predictive(0, *args, sigma=1.0)
    diverged = setup["cores"].copy()
    diverged[1, 2, 0] = np.nan
    with pytest.raises(InputError, match="core_draws.*1 of 10 draws"):
        pointwise_log_likelihood(diverged, *args[1:], sigma=1.0)


def test_to_inference_data_rejects_bad_input(setup, idata):
    obs = setup["obs"]
    base = dict(
        core_draws=setup["cores"], field_draws=np.zeros((C, S, 2, 3, 4)), field_times=[0.0, 1.0],
        field_coords={"lat": np.arange(3.0), "lon": np.arange(4.0)}, space_dims=SPACE, obs=obs,
        y_rep=np.zeros((C, S, obs.n_points)), log_lik=np.zeros((C, S, obs.n_points)),
    )
    to_inference_data(**base)  # the base case is valid
    bad = [
        ({"field_draws": np.zeros((C + 1, S, 2, 3, 4))}, "field_draws"),
        ({"field_coords": {"lat": np.arange(3.0)}}, "field_coords"),
        ({"field_coords": {"lat": np.arange(3.0), "lon": np.arange(5.0)}}, "field_coords"),
        ({"y_rep": np.zeros((C, S, obs.n_points - 1))}, "y_rep"),
        ({"space_dims": ("x", "y"), "field_coords": {"x": np.arange(3.0), "y": np.arange(4.0)}}, "obs"),
        ({"sample_stats": {"wall": np.zeros(C)}}, "sample_stats"),
        ({"attrs": {"model": object()}}, "attrs"),
        ({"attrs": {"inference_library": "other"}}, "attrs"),
    ]
    for change, name in bad:
        with pytest.raises(InputError, match=name):
            to_inference_data(**{**base, **change})


# -- evaluation ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(setup):
    """One time stamp, two points; draws [0, 1, 2, 3] and [0, 0, 0, 4], split over 2 chains."""
    obs = setup["obs"]
    draws = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 4.0]])  # (S=4, x=2)
    field = draws.reshape(2, 2, 1, 1, 2)
    idata = to_inference_data(
        core_draws=np.zeros((2, 2, 1, 1, 1)), field_draws=field, field_times=[5.0],
        field_coords={"lat": [0.0], "lon": [0.0, 1.0]}, space_dims=SPACE, obs=obs,
        y_rep=np.zeros((2, 2, obs.n_points)), log_lik=np.zeros((2, 2, obs.n_points)),
    )
    truth = np.array([1.5, 3.0]).reshape(1, 1, 2)
    return idata, truth


def test_evaluate_matches_hand_computation(tiny):
    idata, truth = tiny
    # mean = [1.5, 1.0]; errors [0, 2]; truth mean 2.25, variance 0.5625.
    # Fair CRPS (pairs of distinct draws): point 0: E|X-y| = 1, E|X-X'| = 20/12 -> 1/6;
    # point 1: 2.5 - 0.5 * 24/12 = 1.5.
    # Predictive intervals m ± t_3 s sqrt(5/4): point 0 (m 1.5, s 1.29) covered at both levels;
    # point 1 (m 1, s 2, |y - m| = 2): 50% half-width 1.71 -> out, 90% 5.26 -> in.
    # Quantile intervals (np.quantile, linear): point 0 [0.75, 2.25] / [0.15, 2.85] hold 1.5; point 1
    # [0, 1] misses 3, [0, 3.4] holds it. HDI (az.hdi, narrowest window of floor(l S) + 1 sorted
    # draws): point 0 [0, 2] / [0, 3] hold 1.5; point 1 [0, 0] misses 3, [0, 4] holds it.
    # Energy score (fair) of the one frame (two points) and variogram score (p = 0.5): see
    # tests/test_metrics.py, test_energy_and_variogram_scores_hand_values.
    e1 = (np.sqrt(11.25) + 2 * np.sqrt(9.25) + np.sqrt(3.25)) / 4
    e2 = (1 + 2 + 5 + 1 + np.sqrt(20) + np.sqrt(17)) / 6
    expected = {"vrmse": np.sqrt(2.0 / 0.5625), "rmse": np.sqrt(2.0), "coverage_50": 0.5, "coverage_90": 1.0,
                "coverage_50_quantile": 0.5, "coverage_90_quantile": 1.0, "coverage_50_hdi": 0.5,
                "coverage_90_hdi": 1.0, "n_draws": 4, "crps": (1 / 6 + 1.5) / 2, "energy_score": e1 - 0.5 * e2,
                "variogram_score": 2 * ((2 + np.sqrt(2)) / 4 - np.sqrt(1.5)) ** 2}
    got = evaluate(idata, truth)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-6), name
    assert isinstance(got["n_draws"], int)
    assert json.loads(json.dumps(got)) == got  # what `sdift evaluate` prints
    assert vrmse_of_mean(idata, truth) == pytest.approx(expected["vrmse"], rel=1e-6)
    assert crps(idata, truth) == pytest.approx(expected["crps"])
    assert coverage(idata, truth, levels=(0.5, 0.9)) == {0.5: 0.5, 0.9: 1.0}
    mean = posterior_mean(idata)
    assert mean.dims == ("time", "lat", "lon")
    np.testing.assert_allclose(mean.values.ravel(), [1.5, 1.0])
    p = pit(idata, truth, key=jax.random.key(0))
    assert p.dims == ("time", "lat", "lon")
    # Two draws below 1.5 and three below 3 among 4 draws: PIT in [2/5, 3/5] and [3/5, 4/5].
    assert 0.4 <= float(p[0, 0, 0]) <= 0.6 and 0.6 <= float(p[0, 0, 1]) <= 0.8


def test_truth_checked_against_field(tiny):
    idata, truth = tiny
    as_da = xr.DataArray(truth[0].T, dims=("lon", "lat"), coords={"lon": [0.0, 1.0], "lat": [0.0]}).expand_dims(
        time=[5.0])
    assert evaluate(idata, as_da) == evaluate(idata, truth)  # transposed DataArray is aligned by name
    with pytest.raises(InputError, match="truth"):
        evaluate(idata, truth[..., :1])
    with pytest.raises(InputError, match="coords"):
        evaluate(idata, as_da.assign_coords(lon=[0.0, 2.0]))
    with pytest.raises(InputError, match="truth.*shape"):  # another grid: named, not a broadcasting error
        evaluate(idata, xr.concat([as_da, as_da.assign_coords(lon=[2.0, 3.0])], dim="lon"))
    with pytest.raises(InputError, match="idata"):
        evaluate(az.from_dict(posterior={"a": np.zeros((1, 4))}), truth)


def test_space_dim_named_y_does_not_clash_with_the_observed_variable(tmp_path):
    """fluid2d's space dims are (x, y); the observations are the variable y of other groups."""
    obs = ObservationSet(value=np.array([1.0, 2.0, 3.0]), time=np.array([0.0, 0.0, 1.0]),
                         coords=np.array([[0.1, 0.2], [0.5, 0.5], [0.9, 0.1]]), space_dims=("x", "y"),
                         noise_scale=np.full(3, 0.1), noise_model="gaussian")
    idata = to_inference_data(
        core_draws=np.zeros((1, 2, 2, 3, 3)), field_draws=np.ones((1, 2, 2, 4, 5)), field_times=[0.0, 1.0],
        field_coords={"x": np.linspace(0, 1, 4), "y": np.linspace(0, 1, 5)}, space_dims=("x", "y"), obs=obs,
        y_rep=np.zeros((1, 2, 3)), log_lik=np.zeros((1, 2, 3)),
        attrs={"units": {"field": "1/s", "y": "1/s", "x": "m"}},
    )
    assert idata.posterior["field"].dims == ("chain", "draw", "time", "x", "y")
    assert idata.observed_data["y"].dims == ("obs_id",)
    np.testing.assert_allclose(idata.observed_data["obs_y"].values, [0.2, 0.5, 0.1])
    assert idata.observed_data["y"].attrs["units"] == "1/s"
    path = save_posterior(idata, tmp_path / "p.nc")
    back = load_posterior(path)
    np.testing.assert_allclose(back.posterior_predictive["y"].values, 0.0)


def test_nan_truth_entries_are_left_out_of_every_score(tiny):
    """Land masks / gaps: NaN truth entries pass through to sdift_prob.metrics, which masks them."""
    idata, truth = tiny
    field = idata.posterior["field"]
    # Add a third space point whose truth is missing; the scores must equal those of the
    # two-point posterior (the extra draws there are arbitrary, even huge).
    extra = np.full(field.shape[:-1] + (1,), 1e6)
    wide = to_inference_data(
        core_draws=np.zeros((2, 2, 1, 1, 1)), field_draws=np.concatenate([field.values, extra], axis=-1),
        field_times=[5.0], field_coords={"lat": [0.0], "lon": [0.0, 1.0, 2.0]}, space_dims=SPACE,
        obs=idata_obs(idata), y_rep=idata.posterior_predictive["y"].values, log_lik=idata.log_likelihood["y"].values,
    )
    masked = np.concatenate([truth, np.full((1, 1, 1), np.nan)], axis=-1)
    expected = evaluate(idata, truth)
    got = evaluate(wide, masked)
    assert set(got) == set(expected)
    for name in expected:
        assert got[name] == pytest.approx(expected[name], rel=1e-12), name
    assert vrmse_of_mean(wide, masked) == pytest.approx(expected["vrmse"], rel=1e-12)
    assert crps(wide, masked) == pytest.approx(expected["crps"], rel=1e-12)
    assert coverage(wide, masked) == coverage(idata, truth)
    p = pit(wide, masked, key=jax.random.key(0))
    assert np.isnan(float(p[0, 0, 2])) and np.isfinite(p.values[..., :2]).all()
    # A DataArray truth with NaN works the same way.
    as_da = xr.DataArray(masked, dims=("time", "lat", "lon"), coords={"time": [5.0], "lat": [0.0],
                                                                      "lon": [0.0, 1.0, 2.0]})
    assert evaluate(wide, as_da) == got
    # Infinities and an all-missing truth are still errors naming the argument.
    with pytest.raises(InputError, match="truth.*infinite"):
        evaluate(wide, np.where(np.isnan(masked), np.inf, masked))
    with pytest.raises(InputError, match="truth.*NaN"):
        evaluate(wide, np.full_like(masked, np.nan))


def idata_obs(idata) -> ObservationSet:
    """The ObservationSet an InferenceData was built from (observed_data y and obs_* coords)."""
    od = idata.observed_data
    return ObservationSet(value=od["y"].values, time=od["obs_time"].values,
                          coords=np.stack([od[f"obs_{d}"].values for d in SPACE], axis=-1), space_dims=SPACE)


# -- PSIS-LOO / LOO-PIT with independent draws ------------------------------------------------------
def _loo_idata(chains: int, draws: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    n = 12
    obs = ObservationSet(value=rng.normal(size=n), time=np.repeat([0.0, 1.0], n // 2), coords=rng.uniform(size=(n, 2)),
                         space_dims=SPACE)
    mu = rng.normal(scale=0.3, size=(chains, draws, 1))
    y_rep = mu + rng.normal(size=(chains, draws, n))
    log_lik = stats.norm.logpdf(obs.value, loc=mu, scale=1.0)
    return to_inference_data(
        core_draws=rng.normal(size=(chains, draws, 2, *RANKS)), field_draws=rng.normal(size=(chains, draws, 2, 3, 4)),
        field_times=[0.0, 1.0], field_coords={"lat": np.arange(3.0), "lon": np.arange(4.0)}, space_dims=SPACE,
        obs=obs, y_rep=y_rep, log_lik=log_lik,
    )


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto:UserWarning")
@pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning")  # inside az.compare
def test_loo_and_loo_pit_agree_with_arviz_given_reff_1(monkeypatch):
    import arviz.stats.stats as az_stats

    multi = _loo_idata(chains=4, draws=10)
    # The same draws as one chain: ArviZ then takes reff = 1 by itself.
    single = multi.map(lambda ds: ds.stack(s=("chain", "draw")).drop_vars(["s", "chain", "draw"])
                       .rename(s="draw").expand_dims(chain=[0]).transpose("chain", "draw", ...),
                       groups=["posterior", "posterior_predictive", "log_likelihood"])
    expected_loo = az.loo(multi, pointwise=True, reff=1.0)
    expected_pit = az.loo_pit(single, y="y")

    def no_ess(*args, **kwargs):
        raise AssertionError("the effective sample size must not be estimated (reff = 1)")

    monkeypatch.setattr(az_stats, "ess", no_ess)  # fast: ArviZ's reff estimate is never reached
    got = loo(multi)
    assert got.elpd_loo == pytest.approx(expected_loo.elpd_loo, rel=1e-12)
    assert got.p_loo == pytest.approx(expected_loo.p_loo, rel=1e-12)
    np.testing.assert_allclose(got.pareto_k.values, expected_loo.pareto_k.values)
    np.testing.assert_allclose(got.loo_i.values, expected_loo.loo_i.values)
    assert loo(single).elpd_loo == pytest.approx(az.loo(single).elpd_loo, rel=1e-12)

    pit_values_ = loo_pit(multi)
    assert pit_values_.dims == ("obs_id",)
    np.testing.assert_allclose(pit_values_.values, np.asarray(expected_pit), rtol=1e-12)
    assert ((pit_values_ >= 0) & (pit_values_ <= 1)).all()
    log_weights, pareto_k = psis_log_weights(multi)
    assert log_weights.dims == ("obs_id", "__sample__") and log_weights.shape == (12, 40)
    np.testing.assert_allclose(np.exp(log_weights).sum("__sample__"), 1.0, rtol=1e-10)
    np.testing.assert_allclose(pareto_k.values, expected_loo.pareto_k.values)
    compared = az.compare({"a": got, "b": loo(single)})  # ELPDData go straight into az.compare
    assert set(compared.index) == {"a", "b"}


def test_loo_rejects_posteriors_without_observations(idata):
    empty_obs = ObservationSet(value=np.zeros(0), time=np.zeros(0), coords=np.zeros((0, 2)), space_dims=SPACE)
    prior = to_inference_data(
        core_draws=np.zeros((1, 2, 1, 1, 1)), field_draws=np.zeros((1, 2, 1, 1, 2)), field_times=[0.0],
        field_coords={"lat": [0.0], "lon": [0.0, 1.0]}, space_dims=SPACE, obs=empty_obs,
        y_rep=np.zeros((1, 2, 0)), log_lik=np.zeros((1, 2, 0)),
    )
    for fn in (loo, loo_pit, psis_log_weights):
        with pytest.raises(InputError, match="idata.*observations"):
            fn(prior)
        with pytest.raises(InputError, match="idata"):
            fn(az.from_dict(posterior={"a": np.zeros((1, 4))}))
    with pytest.raises(InputError, match="var_name"):
        loo(idata, var_name=3)


# -- intervals of three kinds, coverage by dim, exceedance probabilities ---------------------------
def skewed_idata(draws: np.ndarray) -> az.InferenceData:
    """A posterior with field draws `(S, T, lat, lon)` in one chain."""
    s, t, nlat, nlon = draws.shape
    obs = ObservationSet(value=np.array([1.0]), time=np.array([0.0]), coords=np.array([[0.0, 0.0]]),
                         space_dims=SPACE, noise_scale=0.1, noise_model="gaussian")
    return to_inference_data(
        core_draws=np.zeros((1, s, 1, 1, 1)), field_draws=draws[None], field_times=np.arange(t, dtype=float),
        field_coords={"lat": np.arange(nlat, dtype=float), "lon": np.arange(nlon, dtype=float)}, space_dims=SPACE,
        obs=obs, y_rep=np.zeros((1, s, 1)), log_lik=np.zeros((1, s, 1)),
        attrs={"units": {"field": "m/s", "lat": "degrees_north"}},
    )


def test_the_three_interval_kinds_differ_where_they_should():
    """Draws 0, 0, 0, 0, 0, 0, 1, 2, 3, 10 (S = 10) at every point: the 50% quantile interval is
    [0, 0.5], the HDI [0, 0] (six equal draws), the Student-t interval m ± 0.703 s sqrt(1.1) =
    1.6 ± 2.27 = [-0.67, 3.87]. Truths 0.25, 0, 2: quantile holds 0.25 and 0, HDI only 0,
    predictive all three."""
    column = np.array([0, 0, 0, 0, 0, 0, 1, 2, 3, 10], dtype=float)
    idata = skewed_idata(np.broadcast_to(column[:, None, None, None], (10, 1, 1, 3)).copy())
    truth = np.array([0.25, 0.0, 2.0]).reshape(1, 1, 3)
    assert coverage(idata, truth, (0.5,), method="quantile") == {0.5: pytest.approx(2 / 3)}
    assert coverage(idata, truth, (0.5,), method="hdi") == {0.5: pytest.approx(1 / 3)}
    assert coverage(idata, truth, (0.5,), method="predictive") == {0.5: 1.0}
    got = evaluate(idata, truth)
    assert (got["coverage_50"], got["coverage_50_quantile"], got["coverage_50_hdi"]) == pytest.approx((1, 2 / 3, 1 / 3))
    assert got["n_draws"] == 10
    with pytest.raises(InputError, match="method"):
        coverage(idata, truth, method="eti")


def test_coverage_by_depth_level_and_time():
    """Draws -1, 0, 1 everywhere (S = 3); truth 0 (inside every 50% interval) on lat 0 and 5 (outside)
    on lat 1, lat 2 missing; at time 1 lon 0 is 5 as well."""
    draws = np.broadcast_to(np.array([-1.0, 0.0, 1.0])[:, None, None, None], (3, 2, 3, 4)).copy()
    idata = skewed_idata(draws)
    truth = np.zeros((2, 3, 4))
    truth[:, 1] = 5.0
    truth[:, 2] = np.nan
    truth[1, 0, 0] = 5.0
    by_lat = coverage_by(idata, truth, "lat", levels=(0.5, 0.9))
    assert by_lat.dims == ("level", "lat") and by_lat.name == "coverage"
    np.testing.assert_allclose(by_lat.sel(level=0.5).values, [7 / 8, 0.0, np.nan])
    np.testing.assert_array_equal(by_lat["n_entries"].values, [8, 8, 0])
    np.testing.assert_array_equal(by_lat["lat"].values, [0.0, 1.0, 2.0])
    assert by_lat["lat"].attrs["units"] == "degrees_north"
    assert by_lat.attrs == {"method": "quantile", "n_draws": 3}
    by_time = coverage_by(idata, truth, "time", levels=(0.5,))
    np.testing.assert_allclose(by_time.values, [[4 / 8, 3 / 8]])
    # Each row agrees with `coverage` over the same entries.
    assert coverage(idata, truth, (0.5,), method="quantile")[0.5] == pytest.approx(7 / 16)
    by_lon = coverage_by(idata, truth, "lon", (0.5,), method="predictive")
    assert float(by_lon.isel(level=0, lon=1)) == pytest.approx(0.5)
    for bad in ("depth", "chain", "draw", 0):
        with pytest.raises(InputError, match="dim"):
            coverage_by(idata, truth, bad)
    with pytest.raises(InputError, match="levels"):
        coverage_by(idata, truth, "lat", levels=(0.5, 1.0))
    with pytest.raises(InputError, match="method"):
        coverage_by(idata, truth, "lat", method="t")


def test_p_exceed_counts_draws_above_the_threshold(tiny):
    idata, _ = tiny  # draws [0, 1, 2, 3] and [0, 0, 0, 4] at two points
    p = p_exceed(idata, 1.5)
    assert p.dims == ("time", "lat", "lon") and p.name == "p_exceed"
    np.testing.assert_allclose(p.values.ravel(), [0.5, 0.25])
    assert p.attrs["n_draws"] == 4 and p.attrs["threshold"] == 1.5
    np.testing.assert_array_equal(p["lon"].values, [0.0, 1.0])
    np.testing.assert_allclose(p_exceed(idata, 0.0).values.ravel(), [0.75, 0.25])  # strictly above
    np.testing.assert_allclose(p_exceed(idata, -1).values.ravel(), [1.0, 1.0])
    # One threshold per longitude, on the field's coords.
    per_lon = xr.DataArray([2.5, -1.0], dims="lon", coords={"lon": [0.0, 1.0]})
    np.testing.assert_allclose(p_exceed(idata, per_lon).values.ravel(), [0.25, 1.0])
    assert "threshold" not in p_exceed(idata, per_lon).attrs
    for bad in (np.nan, np.inf, True, "1", [1.0, 2.0], per_lon.assign_coords(lon=[0.0, 2.0]),
                xr.DataArray([1.0], dims="depth"), per_lon.where(per_lon > 0)):
        with pytest.raises(InputError, match="threshold"):
            p_exceed(idata, bad)
    with pytest.raises(InputError, match="var_name"):
        p_exceed(idata, 1.0, var_name="temperature")


def test_p_exceed_of_sigma_and_units(idata):
    p = p_exceed(idata, 0.5, var_name="sigma")
    assert p.dims == ()
    sigma = idata.posterior["sigma"].values
    assert float(p) == pytest.approx((sigma > 0.5).mean())
    field = p_exceed(idata, 0.0)
    assert field.attrs["threshold_units"] == "m/s" and "units" not in field.attrs


def test_sdift_evaluate_help_explains_every_key_it_prints(tiny):
    """`sdift evaluate` prints this dict: its help names every key, says which interval each
    coverage comes from, and gives the variogram subsample size."""
    from sdift_prob.commands.evaluate import DESCRIPTION
    from sdift_prob.metrics import VARIOGRAM_MAX_POINTS

    for key in evaluate(*tiny):
        assert key in DESCRIPTION, key
    assert "Student-t" in DESCRIPTION and "quantile" in DESCRIPTION and "az.hdi" in DESCRIPTION
    assert f"at most {VARIOGRAM_MAX_POINTS} points" in DESCRIPTION
