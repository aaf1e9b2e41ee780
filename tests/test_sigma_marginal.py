"""σ inferred before sampling from the Gaussian model's marginal likelihood (`inference.sigma_marginal`)."""

import jax
import numpy as np
import pytest
import scipy.stats

from inference.guided import GuidedConfig, sample_posterior
from inference.sigma_marginal import sigma_posterior
from sdift_prob.data.observations import PaddedObservations
from sdift_prob.errors import InputError
from sdift_prob.gp import TemporalKernel

M, P, D = 5, 12, 6


def _model(rng):
    t = np.linspace(0.0, 1.0, M)
    K = np.asarray(TemporalKernel("rbf", 0.3, 1.0).gram(t), np.float64) + 1e-6 * np.eye(M)
    G = rng.normal(size=(D, D)) / np.sqrt(D)
    C = 0.5 * G @ G.T + 0.05 * np.eye(D)
    mu = rng.normal(size=D) * 0.3
    return t, K, mu, C


def _data(rng, K, mu, C, sigma, rep=0.0):
    design = rng.normal(size=(M, P, D))
    w = mu + np.linalg.cholesky(K) @ rng.normal(size=(M, D)) @ np.linalg.cholesky(C).T
    y = np.einsum("mpd,md->mp", design, w) + np.hypot(sigma, rep) * rng.normal(size=(M, P))
    mask = np.ones((M, P), bool)
    mask[1, 5:] = False  # ragged frames: padding slots carry junk that must be ignored
    y[~mask] = 1e6
    return design, y, mask


def test_matches_the_direct_gaussian_posterior_of_sigma():
    rng = np.random.default_rng(0)
    _, K, mu, C = _model(rng)
    design, y, mask = _data(rng, K, mu, C, sigma=0.4, rep=0.2)
    post = sigma_posterior(jax.random.key(0), design, y, mask, K, mu, C, representation_error=0.2, prior_scale=1.0)
    # Direct: the dense covariance of the observed points, a multivariate normal per σ.
    tm, pm = np.nonzero(mask)
    a = design[tm, pm]
    S0 = K[np.ix_(tm, tm)] * (a @ C @ a.T)
    grid = np.exp(np.linspace(np.log(0.1), np.log(1.5), 800))
    logp = np.array([scipy.stats.multivariate_normal(a @ mu, S0 + (s * s + 0.04) * np.eye(tm.size)).logpdf(y[tm, pm])
                     for s in grid]) + scipy.stats.halfnorm(scale=1.0).logpdf(grid)
    w = np.exp(logp - logp.max()) * np.gradient(grid)
    cdf = np.cumsum(w) / w.sum()
    for q in (0.05, 0.5, 0.95):
        assert post.quantile(q) == pytest.approx(np.interp(q, cdf, grid), rel=0.01)


def test_interval_covers_the_true_sigma_at_its_nominal_rate():
    rng = np.random.default_rng(1)
    _, K, mu, C = _model(rng)
    hits, ratio = [], []
    for r in range(200):
        sigma = float(rng.uniform(0.2, 1.0))
        design, y, mask = _data(rng, K, mu, C, sigma=sigma, rep=0.1)
        post = sigma_posterior(jax.random.key(r), design, y, mask, K, mu, C, representation_error=0.1,
                               prior_scale=2.0)
        lo, med, hi = post.quantile([0.05, 0.5, 0.95])
        hits.append(lo <= sigma <= hi)
        ratio.append(med / sigma)
    # 200 replicates: the binomial sd of a 90% rate is 2.1%.
    assert 0.84 <= np.mean(hits) <= 0.96, np.mean(hits)
    assert 0.93 <= np.median(ratio) <= 1.07


def test_draws_follow_the_posterior_and_the_effective_noise_adds_the_basis_error():
    rng = np.random.default_rng(2)
    _, K, mu, C = _model(rng)
    design, y, mask = _data(rng, K, mu, C, sigma=0.5)
    post = sigma_posterior(jax.random.key(0), design, y, mask, K, mu, C, representation_error=0.3)
    d = post.draw(jax.random.key(5), 4000)
    assert np.quantile(d, 0.5) == pytest.approx(post.quantile(0.5), rel=0.03)
    np.testing.assert_array_equal(d, post.draw(jax.random.key(5), 4000))  # reproducible from the key
    np.testing.assert_allclose(post.effective(d), np.sqrt(d**2 + 0.09))


def test_a_subset_above_max_points_and_bad_input_named():
    rng = np.random.default_rng(3)
    _, K, mu, C = _model(rng)
    design, y, mask = _data(rng, K, mu, C, sigma=0.5)
    post = sigma_posterior(jax.random.key(0), design, y, mask, K, mu, C, max_points=20)
    assert (post.n_points, post.n_used) == (int(mask.sum()), 20)
    with pytest.raises(InputError, match="representation_error"):
        sigma_posterior(jax.random.key(0), design, y, mask, K, mu, C, representation_error=-1.0)
    with pytest.raises(InputError, match="time_gram"):
        sigma_posterior(jax.random.key(0), design, y, mask, K[:-1, :-1], mu, C)
    with pytest.raises(InputError, match="core_mean/core_cov"):
        sigma_posterior(jax.random.key(0), design, y, mask, K, mu[:-1], C)
    with pytest.raises(InputError, match="at least 2 observed points"):
        sigma_posterior(jax.random.key(0), design, y, np.zeros_like(mask), K, mu, C)
    with pytest.raises(InputError, match="max_points"):
        sigma_posterior(jax.random.key(0), design, y, mask, K, mu, C, max_points=True)


def _denoise(x, sigma, t):
    return x / (1.0 + sigma**2)


def test_each_draw_runs_at_its_own_sigma_and_contradictions_are_refused():
    rng = np.random.default_rng(4)
    design = rng.normal(size=(3, 4, 2)).astype(np.float32)
    padded = PaddedObservations(times=np.linspace(0, 1, 3), values=rng.normal(size=(3, 4)).astype(np.float32),
                                coords=np.zeros((3, 4, 1)), noise_scale=np.ones((3, 4)), mask=np.ones((3, 4), bool))
    kw = dict(core_mean=0.0, core_std=1.0, times_norm=np.linspace(0, 1, 3), noise_chol=np.eye(3), num_draws=3)
    cfg = GuidedConfig(num_steps=4, sigma_y=0.5)
    levels = np.array([0.1, 0.5, 2.0])
    _, info = sample_posterior(jax.random.key(0), _denoise, design, padded, config=cfg, sigma_draws=levels, **kw)
    np.testing.assert_allclose(info["sigma_y"], levels, rtol=1e-6)
    with pytest.raises(InputError, match="sigma_draws"):
        sample_posterior(jax.random.key(0), _denoise, design, padded, config=cfg, sigma_draws=levels[:2], **kw)
    with pytest.raises(InputError, match="sigma_draws"):
        sample_posterior(jax.random.key(0), _denoise, design, padded, config=GuidedConfig(
            num_steps=4, sigma_y=None, infer_sigma=True), sigma_draws=levels, **kw)
