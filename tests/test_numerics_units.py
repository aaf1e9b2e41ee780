"""Numerical robustness: physical units from 1e-6 to 1e5 fit and reconstruct identically up to
scale (normalisation is internal); near-duplicate time stamps get adaptive jitter with a warning."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

import reliability_helpers as rh
from inference.reconstruct import Run, reconstruct
from sdift_prob.gp import TemporalKernel, time_cholesky

# (scale, offset): a field in kelvin, in pascal around 1e5 Pa, and in micro-units
UNITS = [(1.0, 0.0), (1e4, 1e5), (1e-6, 0.0)]


@pytest.fixture(scope="module")
def fits():
    out = {}
    for scale, offset in UNITS:
        ds = rh.collection(scale=scale, offset=offset)
        fit, rep = rh.tiny_fit(ds)
        out[(scale, offset)] = (ds, fit, rep)
    return out


def test_fit_is_the_same_up_to_scale(fits):
    _, ref, ref_rep = fits[UNITS[0]]
    for scale, offset in UNITS[1:]:
        ds, fit, rep = fits[(scale, offset)]
        assert fit.normalizer.std == pytest.approx(ref.normalizer.std * scale, rel=1e-9)
        assert fit.normalizer.mean == pytest.approx(ref.normalizer.mean * scale + offset, rel=1e-9)
        # the normalised problem is the same up to float64 rounding of the normalisation
        np.testing.assert_allclose(np.asarray(fit.cores), np.asarray(ref.cores), atol=1e-4)
        assert rep["full_vrmse"] == pytest.approx(ref_rep["full_vrmse"], abs=1e-4)
        decoded = (fit.decode() - offset) / scale
        np.testing.assert_allclose(decoded, ref.decode(), rtol=1e-4, atol=1e-3)


def test_reconstruction_is_the_same_up_to_scale(fits):
    ref_ds, ref_fit, _ = fits[UNITS[0]]
    ref_obs = rh.simple_obs(ref_ds, trajectory=1, noise=0.2)
    ref = reconstruct(Run(ftm=ref_fit, prior=None), ref_obs, key=jax.random.key(3), sampler="gp", draws=3)
    ref_field = ref.posterior["field"].values
    for scale, offset in UNITS[1:]:
        _, fit, _ = fits[(scale, offset)]
        obs = dataclasses.replace(ref_obs, value=ref_obs.value * scale + offset,
                                  noise_scale=ref_obs.noise_scale * scale)
        idata = reconstruct(Run(ftm=fit, prior=None), obs, key=jax.random.key(3), sampler="gp", draws=3)
        field = idata.posterior["field"].values
        assert np.isfinite(field).all()
        np.testing.assert_allclose((field - offset) / scale, ref_field, rtol=1e-3, atol=1e-3)
        y = idata.posterior_predictive["y"].values
        np.testing.assert_allclose((y - offset) / scale, ref.posterior_predictive["y"].values, rtol=1e-3, atol=1e-2)


def test_near_duplicate_time_stamps_get_jitter_with_a_warning():
    kernel = TemporalKernel("rbf", 0.1, 1.0)
    t = [0.0, 1e-9, 0.5, 1.0]  # 1e-9 apart on a 0.1 lengthscale: singular without jitter
    with pytest.warns(RuntimeWarning, match="needed relative jitter"):
        chol = time_cholesky(kernel, t, jitter=0.0)
    assert np.isfinite(np.asarray(chol)).all()
