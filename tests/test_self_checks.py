"""Output self-checks of `reconstruct` (issue 16): a diverged field is an error (or, asked for, a
recorded warning), a normal reconstruction passes every check."""

from __future__ import annotations

import dataclasses
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reliability_helpers as rh
from inference import self_checks as sc
from inference.guided import GuidedConfig
from inference.reconstruct import Run, open_run, reconstruct, sampler_config
from inference.report import posterior_attrs
from inference.summary import run_summary, summary_text
from sdift_prob.data.observations import ObservationSet
from sdift_prob.errors import NumericalError, SelfCheckWarning


# -- the checks as pure functions --------------------------------------------------------------
def _draws(values, shape=(1, 2, 3, 4)):
    return np.broadcast_to(np.asarray(values, dtype=np.float64), shape)


def test_range_check_passes_inside_the_margin_and_fails_beyond_it():
    ok = sc.check_range(_draws(1.0 + sc.RANGE_MARGIN_STDS - 0.5), -1.0, 1.0, mean=10.0, std=2.0)
    assert ok["passed"] and ok["value"] == pytest.approx(sc.RANGE_MARGIN_STDS - 0.5)
    field = np.zeros((1, 2, 3, 4))
    field[0, 1, 2, 3] = -1.0 - sc.RANGE_MARGIN_STDS - 2.0  # one entry of one draw
    bad = sc.check_range(field, -1.0, 1.0, mean=10.0, std=2.0, units="K")
    assert not bad["passed"] and bad["value"] == pytest.approx(sc.RANGE_MARGIN_STDS + 2.0)
    assert "1 of 24 field entries" in bad["message"] and "-16 K" in bad["message"]  # physical units
    field[0, 0, 0, 0] = np.nan
    assert not sc.check_range(field, -1.0, 1.0, mean=0.0, std=1.0)["passed"]


def test_residual_check_compares_the_misfit_with_the_noise_used():
    y = np.linspace(-1.0, 1.0, 50)
    noise = np.full(50, 0.1)
    assert sc.check_residual(y + 0.1, y, noise)["passed"]  # one noise std off
    bad = sc.check_residual(y + 0.6, y, noise, noise_source="given")  # six noise stds off
    assert not bad["passed"] and bad["value"] == pytest.approx(6.0)
    assert "6 noise stds" in bad["message"] and "given" in bad["message"]
    # Without a recorded representation error, a partial fit (closer than the training mean) passes;
    # missing the data by more than a constant field would still fails.
    assert sc.check_residual(0.5 * y, y, 0.01, basis_error_known=False)["passed"]
    assert not sc.check_residual(-y, y, 0.01, basis_error_known=False)["passed"]
    # Heavy-tailed likelihoods: a few gross outliers do not fail the robust statistic.
    outliers = y.copy()
    outliers[:3] += 100.0
    assert not sc.check_residual(y, outliers, noise)["passed"]
    assert sc.check_residual(y, outliers, noise, robust=True)["passed"]


def test_spread_check_needs_two_draws_and_fails_far_above_the_prior():
    assert sc.check_spread(np.zeros((1, 1, 3, 4)))["value"] is None
    rng = np.random.default_rng(0)
    assert sc.check_spread(rng.normal(size=(2, 8, 5, 6)))["passed"]
    wide = sc.check_spread(10.0 * rng.normal(size=(2, 8, 5, 6)))
    assert not wide["passed"] and wide["value"] > sc.MAX_SPREAD_STDS


def test_enforce_raises_naming_the_check_and_what_to_try_or_warns():
    results = [sc.check_range(_draws(50.0), -1.0, 1.0, mean=0.0, std=1.0), sc.check_spread(np.zeros((1, 2, 3)))]
    with pytest.raises(NumericalError, match=r"self-check 'range' failed: .*try more sampler steps.*checks='warn'"):
        sc.enforce(results, "raise")
    with pytest.warns(SelfCheckWarning, match="self-check 'range' failed"):
        sc.enforce(results, "warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sc.enforce(results[1:], "raise")  # nothing failed: silent


# -- through reconstruct -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    ds = rh.collection()
    fit, _ = rh.tiny_fit(ds)
    return {"ds": ds, "fit": fit, "prior": rh.untrained_prior(fit)}


class BrokenPrior:
    """A trained-looking prior whose denoiser answers 40 core stds away from any field: the
    guided sampler ends far outside what the run has seen (finite, so nothing else notices)."""

    def __init__(self, prior):
        self._prior = prior
        self.core_mean, self.core_std = prior.core_mean, prior.core_std

    def noise_cholesky(self, times):
        return self._prior.noise_cholesky(times)

    def denoise(self, x, sigma, t_norm):
        return jnp.zeros_like(x) + 40.0


def _mmps(steps=8):
    return GuidedConfig(num_steps=steps)


def test_broken_denoiser_raises_a_numerical_error_naming_the_check(tiny):
    run = Run(ftm=tiny["fit"], prior=BrokenPrior(tiny["prior"]))
    obs = rh.simple_obs(tiny["ds"], trajectory=1)
    with pytest.raises(NumericalError, match=r"self-check 'range' failed.*training range"):
        reconstruct(run, obs, key=jax.random.key(0), sampler="mmps", draws=2, config=_mmps())


def test_untrained_prior_with_few_steps_is_caught_and_kept_when_asked(tiny):
    """The hostile-input suite's MPDPS case: an untrained prior, 4 steps, fields 35 stds out."""
    run = Run(ftm=tiny["fit"], prior=tiny["prior"])
    obs = ObservationSet(value=np.array([10.0, 12, 12, 9]), time=np.array([0.75, 0.0, 0.0, 0.5]),
                         coords=np.array([[1, 0], [0.5, 0.5], [0.5, 0.5], [1.5, -0.5]]), space_dims=rh.DIMS,
                         noise_scale=np.full(4, 0.1))
    cfg = dataclasses.replace(sampler_config("mpdps"), num_steps=4)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="num_steps")
        with pytest.raises(NumericalError, match="self-check 'range' failed"):
            reconstruct(run, obs, key=jax.random.key(1), sampler="mpdps", draws=2, config=cfg)
        with pytest.warns(SelfCheckWarning, match="self-check 'range' failed"):
            idata = reconstruct(run, obs, key=jax.random.key(1), sampler="mpdps", draws=2, config=cfg, checks="warn")
    recorded = posterior_attrs(idata)["self_checks"]
    assert recorded["mode"] == "warn"
    failed = [r["check"] for r in recorded["results"] if not r["passed"]]
    assert "range" in failed
    assert "SELF-CHECK FAILED (range)" in summary_text(run_summary(idata))


def test_contradicting_precise_observations_fail_the_residual_check(tiny):
    """The exact gp posterior of one point observed at 12 and at 2 (same time and place) with a
    noise of 0.01 sits between them, 5 units = 500 noise stds from each: the noise level used is
    not what these data have. With the run's representation error known (recorded at fit time)
    this is an error."""
    run = Run(ftm=tiny["fit"], prior=None,
              provenance={"representation_error": {"std": 1e-3, "source": "RMSE on held-out entries at fit time"}})
    obs = ObservationSet(value=np.array([12.0, 2.0]), time=np.zeros(2), coords=np.array([[1.0, 0.0]] * 2),
                         space_dims=rh.DIMS, noise_scale=np.full(2, 0.01))
    with pytest.raises(NumericalError, match=r"self-check 'residual' failed: .* noise stds"):
        reconstruct(run, obs, key=jax.random.key(0), sampler="gp", draws=2)


def test_checks_argument_is_validated(tiny):
    run = Run(ftm=tiny["fit"], prior=None)
    obs = rh.simple_obs(tiny["ds"], trajectory=1)
    with pytest.raises(Exception, match="checks: expected one of"):
        reconstruct(run, obs, key=jax.random.key(0), sampler="gp", checks="off")


@pytest.fixture(scope="module")
def ocean():
    from sdift_prob import pretrained

    root = pretrained.path("ocean")
    run = open_run(root / "run")
    obs = ObservationSet.load(root / "obs_rho1pct.nc")
    idata = reconstruct(run, obs, key=jax.random.key(0), sampler="mmps", draws=2, config=_mmps())
    return {"run": run, "obs": obs, "idata": idata}


def test_normal_ocean_reconstruction_passes_every_check(ocean):
    recorded = posterior_attrs(ocean["idata"])["self_checks"]
    assert recorded["mode"] == "raise"
    by_name = {r["check"]: r for r in recorded["results"]}
    assert set(by_name) == {"range", "residual", "spread"}
    assert all(r["passed"] for r in by_name.values()), by_name
    # With margins: the field stays within a training std of the training range, the misfit
    # near the noise level, the spread far below the prior's.
    assert by_name["range"]["value"] < 1.0
    assert by_name["residual"]["value"] < 2.0
    assert by_name["spread"]["value"] < 0.5


def test_normal_ocean_reconstruction_summary(ocean):
    s = run_summary(ocean["idata"])
    assert (s["sampler"], s["draws"], s["steps"], s["conditioned"]) == ("mmps", 2, 8, True)
    assert s["noise"]["source"] == "per point"
    # The shipped observations' noise (2.36 m/s) with the FTM's representation error (0.65 m/s) added.
    assert s["noise"]["std"] == pytest.approx(math.hypot(2.3556, s["representation_error"]["std"]), rel=1e-3)
    assert s["data"] == {"points_used": 1840, "points_dropped_before": 0, "frames": 20, "frames_with_data": 20,
                         "frames_without_data": 0}
    assert s["time_range"]["training"] == [0.0, 38.0] and not s["time_range"]["extrapolated"]
    assert s["self_checks"]["failed"] == []
    text = summary_text(s)
    assert "noise: per point, median 2.443 m s-1" in text and "self-checks passed" in text
