"""Checks `reconstruct` makes before sampling (issue 16): the units guard at 20 training stds,
a memory estimate, per-point noise levels that are partly unknown or zero, and times far outside
the training range."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest

import reliability_helpers as rh
from inference.reconstruct import (
    DEFAULT_MAX_ABS_ZSCORE,
    Run,
    memory_estimate,
    open_run,
    reconstruct,
    units_hint,
)
from inference.report import posterior_attrs
from models.noise_models import Fixed, Inferred, as_noise
from sdift_prob import cli
from sdift_prob.data.observations import ObservationSet
from sdift_prob.errors import InputError, UntestedSettingWarning


@pytest.fixture(scope="module")
def tiny():
    ds = rh.collection()
    fit, _ = rh.tiny_fit(ds)
    return {"ds": ds, "run": Run(ftm=fit, prior=None), "obs": rh.simple_obs(ds, trajectory=1)}


@pytest.fixture(scope="module")
def ocean():
    from sdift_prob import pretrained

    root = pretrained.path("ocean")
    return {"run": open_run(root / "run"), "obs": ObservationSet.load(root / "obs_rho1pct.nc"), "root": root}


def _with(obs: ObservationSet, **changes) -> ObservationSet:
    fields = {"value": obs.value, "time": obs.time, "coords": obs.coords, "space_dims": obs.space_dims,
              "noise_scale": obs.noise_scale, "noise_model": obs.noise_model, "attrs": obs.attrs}
    return ObservationSet(**{**fields, **changes})


# -- units -------------------------------------------------------------------------------------
def test_km_per_s_for_m_per_s_is_refused_before_sampling(ocean):
    """Issue 16: the shipped observations / 1000 are ~64 training stds away; the old guard (1e4
    stds) let them through (VRMSE 65, exit 0)."""
    obs = _with(ocean["obs"], value=ocean["obs"].value / 1000)
    with pytest.raises(InputError) as err:
        reconstruct(ocean["run"], obs, key=jax.random.key(0), draws=1)
    msg = str(err.value)
    assert msg.startswith("obs.value: expected values within 20 training stds")
    assert "1840 of 1840 values beyond" in msg and "m s-1" in msg
    assert "about 1e-3 times the training mean" in msg and "unit prefix" in msg
    assert DEFAULT_MAX_ABS_ZSCORE == 20.0


def test_units_hint_names_power_of_ten_and_kelvin_offsets():
    assert "1e+3 times" in units_hint(np.array([1500.0e3, 1510.0e3]), 1505.0, 20.0)
    assert "kelvin" in units_hint(np.array([12.0, 15.0]), 287.0, 5.0)
    assert "median is 55" in units_hint(np.array([55.0]), 10.0, 1.0)
    assert "median is 4.941e-324" in units_hint(np.array([5e-324]), 8.5, 3.0)  # no log of 0


def test_the_guard_can_be_raised_for_real_extremes(tiny):
    run, obs = tiny["run"], tiny["obs"]
    norm = run.ftm.normalizer
    extreme = _with(obs, value=np.where(np.arange(obs.n_points) == 0, norm.mean + 25 * norm.std, obs.value))
    with pytest.raises(InputError, match=r"obs.value: .*within 20 training stds.*1 of 59 values beyond"):
        reconstruct(run, extreme, key=jax.random.key(0), sampler="gp", draws=1)
    idata = reconstruct(run, extreme, key=jax.random.key(0), sampler="gp", draws=1, max_abs_zscore=30.0,
                        checks="warn")
    assert np.isfinite(idata.posterior["field"].values).all()
    with pytest.raises(InputError, match="max_abs_zscore: expected a positive number"):
        reconstruct(run, obs, key=jax.random.key(0), sampler="gp", max_abs_zscore=0)


# -- memory ------------------------------------------------------------------------------------
def test_memory_estimate_counts_field_draws_and_observation_rows():
    est = memory_estimate(10, 20, 1000, 20, 50, 512)
    assert est["field"] == 4 * 10 * 20 * 1000 * 4  # float32, FIELD_COPIES = 4
    assert est["observations"] == 4 * 20 * 50 * 512 * 6
    gp = memory_estimate(10, 20, 1000, 20, 50, 512, n_points=1000, sampler="gp")
    assert gp["observations"] == est["observations"] + 40 * 1000 * 20 * 512
    assert est["total"] == est["field"] + est["observations"]


def test_a_billion_draws_are_refused_before_sampling(ocean):
    with pytest.raises(InputError) as err:
        reconstruct(ocean["run"], ocean["obs"], key=jax.random.key(0), draws=10**9)
    msg = str(err.value)
    assert msg.startswith("max_memory_gb: this reconstruction needs about")
    assert "1 x 1000000000 field draws of 20 times x 9216 grid points" in msg and "limit of 8 GB" in msg


def test_a_million_observed_points_are_refused_before_sampling(ocean):
    """Issue 16: 10^6 points with 2 draws peaked at 12.8 GB; the estimate refuses them before any
    design row is built (measured on the CLI: the whole refused run peaks at 0.59 GB RSS, 0.44 GB
    with the shipped 1,840 points; docs/RELIABILITY.md)."""
    run, n = ocean["run"], 10**6
    rng = np.random.default_rng(0)
    lo, hi = np.asarray(run.ftm.model.domain_lo), np.asarray(run.ftm.model.domain_hi)
    obs = _with(ocean["obs"], value=rng.choice(ocean["obs"].value, n), time=rng.choice(np.asarray(run.ftm.times), n),
                coords=lo + (hi - lo) * rng.uniform(size=(n, lo.size)), noise_scale=np.full(n, 0.1))
    with pytest.raises(InputError, match=r"^max_memory_gb: this reconstruction needs about 12\.\d GB .* GB for "
                                         r"1000000 observed points\), more than the limit of 8 GB"):
        reconstruct(run, obs, key=jax.random.key(0), draws=2)


def test_memory_limit_is_an_argument(tiny):
    with pytest.raises(InputError, match=r"max_memory_gb: .*more than the limit of 1e-06 GB"):
        reconstruct(tiny["run"], tiny["obs"], key=jax.random.key(0), sampler="gp", max_memory_gb=1e-6)


def test_cli_memory_and_zscore_flags_are_named_as_typed(tiny, tmp_path, capsys):
    from sdift_prob.ftm import save_run

    run_dir = tmp_path / "run"
    save_run(run_dir, tiny["run"].ftm)
    obs_file = tmp_path / "obs.nc"
    tiny["obs"].save(obs_file)
    base = ["reconstruct", str(run_dir), str(obs_file), "--sampler", "gp", "--out", str(tmp_path / "p.nc")]
    assert cli.main([*base, "--max-memory-gb", "1e-6"]) == 1
    assert "--max-memory-gb: this reconstruction needs about" in capsys.readouterr().err
    assert cli.main([*base, "--max-zscore", "0"]) == 1
    assert "--max-zscore: expected a positive number" in capsys.readouterr().err
    assert not (tmp_path / "p.nc").exists()


# -- noise levels ------------------------------------------------------------------------------
def test_five_nan_noise_levels_among_many_are_an_error_not_inferred_noise(tiny):
    """Issue 16: 5 NaN noise_scale entries among 1,840 silently switched the whole run to an
    inferred noise level."""
    obs = tiny["obs"]
    noise = obs.noise_scale.copy()
    noise[[3, 10, 20, 30, 40]] = np.nan
    partial = _with(obs, noise_scale=noise)
    with pytest.raises(InputError, match=r"^obs.noise_scale: .*sigma='infer'.*5 of 59 entries missing \(NaN\)"):
        as_noise(None, partial)
    with pytest.raises(InputError, match=r"obs.noise_scale: .*5 of 59 entries missing"):
        reconstruct(tiny["run"], partial, key=jax.random.key(0), sampler="gp")
    # An explicit choice is taken as it is.
    assert isinstance(as_noise("infer", partial), Inferred)
    assert as_noise(0.5, partial) == Fixed(sigma=0.5, reason="sigma=0.5 given (physical units)")
    # All unknown stays the documented "noise unknown": inferred.
    assert isinstance(as_noise(None, _with(obs, noise_scale=None)), Inferred)


def test_zero_noise_scale_is_refused_like_a_tiny_one(tiny):
    """Issue 16: noise_scale = 0 was read as unknown (inferred noise) while 1e-9 was refused."""
    obs = _with(tiny["obs"], noise_scale=np.zeros(tiny["obs"].n_points))
    with pytest.raises(InputError, match=r"^obs.noise_scale: expected positive noise stds .*"
                                         r"59 of 59 entries equal to 0"):
        as_noise(None, obs)
    assert as_noise(0.1, obs).sigma == 0.1
    with pytest.raises(InputError, match="obs.noise_scale"):
        reconstruct(tiny["run"], obs, key=jax.random.key(0), sampler="gp")


# -- times -------------------------------------------------------------------------------------
def test_times_far_outside_the_training_range_are_warned_about(tiny):
    run, obs = tiny["run"], tiny["obs"]  # trained on t in [0, 1]
    with pytest.warns(UntestedSettingWarning, match=r"^times: reaches 0 \.\. 3, 2 training spans outside"):
        reconstruct(run, obs, key=jax.random.key(0), sampler="gp", draws=1, times=[0.0, 0.5, 3.0], checks="warn")
    late = _with(obs, time=np.where(obs.time == 1.0, 4.0, obs.time))
    with pytest.warns(UntestedSettingWarning, match=r"^obs.time: reaches 0 \.\. 4, 3 training spans outside"):
        reconstruct(run, late, key=jax.random.key(0), sampler="gp", draws=1, checks="warn")
    with warnings.catch_warnings():  # one span beyond is still quiet (forecasts a little ahead)
        warnings.simplefilter("error", UntestedSettingWarning)
        idata = reconstruct(run, obs, key=jax.random.key(0), sampler="gp", draws=1, times=[0.0, 1.0, 1.9])
    time_range = posterior_attrs(idata)["time_range"]  # but flagged in the run summary
    assert time_range["extrapolated"] and time_range["spans_outside_training"] == pytest.approx(0.9)
