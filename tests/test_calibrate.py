"""Tests of inference.calibrate: held-out split, temperature, choice of ζ and τ."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inference.calibrate import CalibrationResult, apply_temperature, calibrate, holdout_split
from sdift_prob.data.observations import ObservationSet
from sdift_prob.errors import InputError, NumericalError
from sdift_prob.metrics import interval_coverage

NOISE = 0.3
TRUE_ZETA = 0.01
NARROW = 2.0  # the toy sampler's spread is too narrow by this factor (std), so tau should be 4


def signal(obs: ObservationSet) -> np.ndarray:
    return np.sin(3.0 * obs.coords[:, 0]) + 0.5 * obs.time


def make_obs(seed: int, n_frames: int = 30, per_frame: int = 50) -> ObservationSet:
    rng = np.random.default_rng(seed)
    n = n_frames * per_frame
    time = np.repeat(np.linspace(0.0, 1.0, n_frames), per_frame)
    coords = rng.uniform(size=(n, 1))
    base = ObservationSet(value=np.zeros(n), time=time, coords=coords, space_dims=("x",))
    value = signal(base) + NOISE * rng.normal(size=n)
    return ObservationSet(value=value, time=time, coords=coords, space_dims=("x",), noise_scale=NOISE,
                          noise_model="gaussian")


def toy_sampler(num_draws: int = 200):
    """Predictive draws centred on the truth only at TRUE_ZETA (bias grows with |log2(ζ/ζ*)|),
    with a spread NARROW times too small."""

    def sample(key, obs_fit, obs_held, zeta):
        assert obs_fit.n_points + obs_held.n_points > obs_held.n_points  # conditions on something
        bias = 0.5 * NOISE * abs(math.log2(zeta / TRUE_ZETA))
        z = np.asarray(jax.random.normal(key, (num_draws, obs_held.n_points)), dtype=np.float64)
        return signal(obs_held) + bias + (NOISE / NARROW) * z

    return sample


@pytest.fixture(scope="module")
def result() -> CalibrationResult:
    return calibrate(jax.random.key(0), toy_sampler(), make_obs(0), holdout_fraction=0.2,
                     zetas=(0.0025, 0.005, 0.01, 0.02, 0.04), levels=(0.5, 0.9))


# -- temperature ------------------------------------------------------------------------------------
def test_apply_temperature_scales_variance_about_the_mean():
    rng = np.random.default_rng(1)
    draws = rng.normal(2.0, 1.0, size=(64, 7))
    out = apply_temperature(draws, 2.5)
    np.testing.assert_allclose(out.mean(axis=0), draws.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(out.var(axis=0), 2.5 * draws.var(axis=0), rtol=1e-12)
    np.testing.assert_allclose(apply_temperature(draws, 1.0), draws, atol=1e-12)
    # Several draw axes, and JAX in -> JAX out.
    chains = draws.reshape(4, 16, 7)
    np.testing.assert_allclose(apply_temperature(chains, 2.5, axis=(0, 1)).reshape(64, 7), out, atol=1e-12)
    jout = apply_temperature(jnp.asarray(draws, dtype=jnp.float32), 2.5)
    assert isinstance(jout, jax.Array)
    np.testing.assert_allclose(np.asarray(jout), out, rtol=1e-5, atol=1e-5)
    for bad in (0.0, -1.0, math.inf, True):
        with pytest.raises(InputError, match="tau"):
            apply_temperature(draws, bad)
    with pytest.raises(InputError, match="at least 2 draws"):
        apply_temperature(draws[:1], 2.0)


# -- held-out split -------------------------------------------------------------------------------
def test_holdout_split_reproducible_disjoint_and_stratified():
    rng = np.random.default_rng(2)
    counts = np.array([1, 2, 3, 7, 10, 25])
    time = np.repeat(np.arange(counts.size, dtype=float), counts)
    rng.shuffle(time)
    n = time.size
    obs = ObservationSet(value=rng.normal(size=n), time=time, coords=rng.uniform(size=(n, 2)), space_dims=("a", "b"))
    held = holdout_split(jax.random.key(5), obs, 0.3)
    np.testing.assert_array_equal(held, holdout_split(jax.random.key(5), obs, 0.3))
    assert not np.array_equal(held, holdout_split(jax.random.key(6), obs, 0.3))
    assert held.dtype == bool and held.shape == (n,)
    assert held.sum() == round(0.3 * n)
    fit_idx, held_idx = set(np.nonzero(~held)[0]), set(np.nonzero(held)[0])
    assert fit_idx.isdisjoint(held_idx) and len(fit_idx | held_idx) == n
    for m, c in enumerate(counts):
        h = int(held[time == m].sum())
        assert h < c, f"frame {m} emptied"
        assert abs(h - 0.3 * c) < 1.0 + 1e-9, (m, h, c)


def test_holdout_split_empties_frames_only_when_unavoidable():
    # One point per time stamp: holding out 25% must take whole time stamps.
    n = 20
    obs = ObservationSet(value=np.zeros(n), time=np.arange(n, dtype=float), coords=np.zeros((n, 1)),
                         space_dims=("x",))
    held = holdout_split(jax.random.key(0), obs, 0.25)
    assert held.sum() == 5
    # Two points each: 25% of 40 = 10 fits without emptying any time stamp.
    obs2 = ObservationSet(value=np.zeros(2 * n), time=np.repeat(np.arange(n, dtype=float), 2),
                          coords=np.zeros((2 * n, 1)), space_dims=("x",))
    held2 = holdout_split(jax.random.key(0), obs2, 0.25)
    assert held2.sum() == 10
    assert np.bincount(np.repeat(np.arange(n), 2)[held2], minlength=n).max() == 1


# -- calibration ------------------------------------------------------------------------------------
def test_calibrate_picks_the_right_zeta(result):
    assert result.zeta == TRUE_ZETA
    i = result.zetas.index(TRUE_ZETA)
    assert np.argmin(result.crps_grid.min(axis=1)) == i
    assert result.crps_grid.shape == (5, len(result.temperatures))
    assert result.coverage_grid.shape == (5, len(result.temperatures), 2)
    assert result.n_held == 300 and result.n_fit == 1200 and result.frames_emptied == 0


def test_calibrate_temperature_restores_coverage(result):
    # Too narrow by 2 in std: a 90% interval of the raw draws covers P(|z| < 1.645/2) = 0.59.
    assert result.coverage_before[1] < 0.7
    assert result.coverage_after[0] >= 0.5 and result.coverage_after[1] >= 0.9
    assert NARROW**2 / 1.6 < result.temperature < NARROW**2 * 1.6
    assert result.crps_after < result.crps_before
    # tau is the smallest temperature reaching nominal coverage on the held-out points.
    obs = make_obs(0)
    held = obs.subset(result.held_out)
    draws = toy_sampler()(jax.random.split(jax.random.key(0))[1], obs.subset(~result.held_out), held, result.zeta)
    below = interval_coverage(held.value, apply_temperature(draws, result.temperature * 0.999), result.levels)
    assert min(below[lv] - lv for lv in result.levels) < 0
    # On fresh observations the calibrated 90% interval covers ~90% (binomial tolerance of the
    # 300 held-out points that set tau, plus that of the 3000 fresh points).
    fresh = make_obs(1, n_frames=60)
    fresh_draws = toy_sampler(400)(jax.random.key(9), fresh, fresh, result.zeta)
    cov = interval_coverage(fresh.value, apply_temperature(fresh_draws, result.temperature), (0.9,))[0.9]
    tol = 3 * math.sqrt(0.09 / result.n_held) + 3 * math.sqrt(0.09 / fresh.n_points)
    assert abs(cov - 0.9) < tol


def test_calibration_result_to_dict_is_json(result):
    d = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert d["zeta"] == TRUE_ZETA and d["temperature"] == result.temperature
    assert set(d["coverage_after"]) == {"0.5", "0.9"}
    assert len(d["grid"]) == 5 * len(result.temperatures)
    assert d["held_out_index"] == np.nonzero(result.held_out)[0].tolist()


def test_calibrate_skips_zetas_with_nonfinite_draws():
    good = toy_sampler(50)

    def sample(key, obs_fit, obs_held, zeta):
        draws = good(key, obs_fit, obs_held, zeta)
        if zeta == TRUE_ZETA:
            draws[0, 0] = np.nan  # the best zeta diverged
        return draws

    res = calibrate(jax.random.key(1), sample, make_obs(3, n_frames=5, per_frame=40), zetas=(0.005, 0.01, 0.02))
    assert res.zeta != TRUE_ZETA
    assert np.isinf(res.crps_grid[1]).all() and res.nonfinite_fraction[1] > 0
    assert json.dumps(res.to_dict(), allow_nan=False)

    def diverging(key, obs_fit, obs_held, zeta):
        return np.full((4, obs_held.n_points), np.nan)

    with pytest.raises(NumericalError, match="non-finite"):
        calibrate(jax.random.key(1), diverging, make_obs(3, n_frames=5, per_frame=40), zetas=(0.01,))


def test_calibrate_rejects_bad_input():
    obs = make_obs(4, n_frames=4, per_frame=10)
    sampler = toy_sampler(20)
    key = jax.random.key(0)
    for fraction in (0.0, 1.0, 1.5, -0.1, math.nan):
        with pytest.raises(InputError, match="holdout_fraction"):
            calibrate(key, sampler, obs, holdout_fraction=fraction)
    for levels in ((0.0, 0.9), (0.5, 1.0), (1.2,), ()):
        with pytest.raises(InputError, match="levels"):
            calibrate(key, sampler, obs, levels=levels)
    empty = ObservationSet(value=np.zeros(0), time=np.zeros(0), coords=np.zeros((0, 1)), space_dims=("x",))
    with pytest.raises(InputError, match="obs"):
        calibrate(key, sampler, empty)
    with pytest.raises(InputError, match="obs"):
        calibrate(key, sampler, obs.subset(np.arange(obs.n_points) == 0))
    with pytest.raises(InputError, match="zetas"):
        calibrate(key, sampler, obs, zetas=())
    with pytest.raises(InputError, match="temperatures"):
        calibrate(key, sampler, obs, temperatures=(1.0, 0.0))
    with pytest.raises(InputError, match="key"):
        calibrate(0, sampler, obs)
    with pytest.raises(InputError, match="sample_predictive"):
        calibrate(key, lambda k, f, h, z: np.zeros((5, h.n_points + 1)), obs)
