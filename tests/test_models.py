"""Tests of the NumPyro models: observation likelihoods, GP temporal prior + conjugate posterior, score prior."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
from numpyro.infer import MCMC, NUTS
from numpyro.infer.util import log_density

from models import (
    GPPriorParams,
    KroneckerTimeNormal,
    PoissonExcess,
    ScorePrior,
    check_observation_inputs,
    conjugate_posterior,
    fisher_diag_scale,
    gp_temporal_prior,
    likelihood_grad,
    log_likelihood_fn,
    normalise_padded,
    observation_model,
    sample_conjugate,
)
from sdift_prob.data.observations import PaddedObservations
from sdift_prob.errors import InputError
from sdift_prob.gp import TemporalKernel, cholesky_with_jitter, gp_noise, gram_float64

CORE_SHAPE = (2, 2)


def make_problem(seed=0, M=3, P=4, core_shape=CORE_SHAPE, nan_padding=True):
    rng = np.random.default_rng(seed)
    D = math.prod(core_shape)
    design = rng.normal(size=(M, P, D))
    mask = rng.random((M, P)) < 0.7
    mask[0, 0], mask[-1, -1] = True, False  # at least one valid point and one padding entry
    values = rng.normal(size=(M, P))
    noise = rng.uniform(0.2, 0.5, size=(M, P))
    if nan_padding:
        # The padding is garbage on purpose: it must not reach the log density or its gradient.
        values[~mask] = np.nan
        noise[~mask] = np.nan
    padded = PaddedObservations(
        times=np.linspace(0.0, 1.0, M), values=values, coords=np.zeros((M, P, 1)), noise_scale=noise, mask=mask
    )
    cores = rng.normal(size=(M,) + core_shape)
    return cores, design, padded


def valid(padded):
    return np.asarray(padded.mask)


# ---------------------------------------------------------------- observation model


def test_gaussian_likelihood_gradient_is_the_closed_form():
    cores, design, padded = make_problem()
    sigma = 0.3
    m = valid(padded)
    M = cores.shape[0]
    expected = np.zeros((M, 4))
    for t in range(M):
        A = design[t][m[t]]
        r = padded.values[t][m[t]] - A @ cores[t].reshape(-1)
        expected[t] = A.T @ r / sigma**2
    grad = likelihood_grad(jnp.asarray(cores), design, padded, likelihood="gaussian", sigma=sigma)
    assert grad.shape == cores.shape
    np.testing.assert_allclose(np.asarray(grad).reshape(M, -1), expected, rtol=1e-4, atol=1e-4)

    # jit + vmap over draws (what the guided sampler does); padding stays out of it.
    f = jax.jit(jax.vmap(lambda w: likelihood_grad(w, design, padded, likelihood="gaussian", sigma=sigma)))
    both = f(jnp.stack([jnp.asarray(cores), jnp.asarray(cores)]))
    assert np.isfinite(np.asarray(both)).all()
    np.testing.assert_allclose(np.asarray(both[1]).reshape(M, -1), expected, rtol=1e-4, atol=1e-4)


def scipy_loglik(likelihood, y, u, sigma, df=4.0, o=None, s=None):
    if likelihood == "gaussian":
        return scipy.stats.norm.logpdf(y, u, sigma)
    if likelihood == "laplace":
        return scipy.stats.laplace.logpdf(y, u, sigma / np.sqrt(2))
    if likelihood == "student_t":
        return scipy.stats.t.logpdf(y, df, u, sigma)
    return scipy.stats.poisson.logpmf(np.round((y - o) / s), (u - o) / s) - np.log(s)


@pytest.mark.parametrize("likelihood", ["gaussian", "laplace", "student_t", "poisson"])
def test_log_density_matches_scipy(likelihood):
    cores, design, padded = make_problem(seed=1)
    m = valid(padded)
    u = np.einsum("mpd,md->mp", design, cores.reshape(cores.shape[0], -1))
    kw = dict(likelihood=likelihood, sigma=0.4, df=3.0)
    if likelihood == "poisson":
        o, s = float(u[m].min()) - 2.0, 0.25
        k = np.random.default_rng(5).poisson((u - o) / s)
        padded = padded._replace(values=np.where(m, o + s * k, np.nan))
        kw.update(sigma=None, poisson_offset=o, poisson_scale=s)
    else:
        o = s = None
    check_observation_inputs(cores, design, padded, **kw)
    total = float(log_likelihood_fn(jnp.asarray(cores), design, padded, **kw))
    expected = scipy_loglik(likelihood, padded.values[m], u[m], 0.4, df=3.0, o=o, s=s).sum()
    np.testing.assert_allclose(total, expected, rtol=2e-5)


def test_poisson_excess_relaxation_and_moments():
    d = PoissonExcess(jnp.array([1.5, 3.0]), -1.0, 0.5)
    # Off the lattice the density is the lgamma relaxation of the pmf.
    y = np.array([0.3, 2.1])
    k = (y + 1.0) / 0.5
    lam = (np.array([1.5, 3.0]) + 1.0) / 0.5
    expected = k * np.log(lam) - lam - scipy.special.gammaln(k + 1) - np.log(0.5)
    np.testing.assert_allclose(np.asarray(d.log_prob(jnp.asarray(y))), expected, rtol=1e-5)
    draws = np.asarray(d.sample(jax.random.key(0), (20000,)), dtype=np.float64)
    # E[y] = u, Var[y] = s (u - o); draws lie on the lattice o + s k.
    np.testing.assert_allclose(draws.mean(0), [1.5, 3.0], atol=0.03)
    np.testing.assert_allclose(draws.var(0), 0.5 * np.array([2.5, 4.0]), rtol=0.05)
    np.testing.assert_allclose((draws + 1.0) / 0.5, np.round((draws + 1.0) / 0.5), atol=1e-4)
    # The rate is floored, so a mean at or below the offset still has a finite log density.
    assert np.isfinite(float(PoissonExcess(-2.0, -1.0, 0.5).log_prob(-1.0)))


def test_sigma_site_and_metadata_sigma():
    cores, design, padded = make_problem(seed=2)
    m = valid(padded)
    u = np.einsum("mpd,md->mp", design, cores.reshape(cores.shape[0], -1))
    tr = numpyro.handlers.trace(numpyro.handlers.seed(observation_model, 0)).get_trace(
        cores, design, padded, sigma=None, sigma_prior_scale=0.7
    )
    assert isinstance(tr["sigma"]["fn"], dist.HalfNormal) and tr["y"]["is_observed"]
    assert tr["y"]["value"].shape == padded.values.shape
    logp, _ = log_density(observation_model, (cores, design, padded), dict(sigma_prior_scale=0.7), {"sigma": 0.3})
    expected = scipy.stats.norm.logpdf(padded.values[m], u[m], 0.3).sum() + scipy.stats.halfnorm.logpdf(0.3, scale=0.7)
    np.testing.assert_allclose(float(logp), expected, rtol=2e-5)
    meta = float(log_likelihood_fn(jnp.asarray(cores), design, padded, sigma="metadata"))
    expected = scipy.stats.norm.logpdf(padded.values[m], u[m], padded.noise_scale[m]).sum()
    np.testing.assert_allclose(meta, expected, rtol=2e-5)


def score_squared_expectation(likelihood, u=0.7, sigma=0.4, df=5.0, o=-1.0, s=0.5):
    """E[(d/du log p(y | u))²] by numerical integration (or summation for Poisson)."""
    if likelihood == "poisson":
        lam = (u - o) / s
        k = np.arange(0, 200)
        return float(np.sum(scipy.stats.poisson.pmf(k, lam) * ((k / lam - 1) / s) ** 2))
    if likelihood == "gaussian":
        pdf, score = (lambda y: scipy.stats.norm.pdf(y, u, sigma)), (lambda y: (y - u) / sigma**2)
    elif likelihood == "laplace":
        b = sigma / np.sqrt(2)
        pdf, score = (lambda y: scipy.stats.laplace.pdf(y, u, b)), (lambda y: np.sign(y - u) / b)
    else:
        pdf = lambda y: scipy.stats.t.pdf(y, df, u, sigma)  # noqa: E731
        score = lambda y: (df + 1) * (y - u) / (df * sigma**2 + (y - u) ** 2)  # noqa: E731
    return scipy.integrate.quad(lambda y: pdf(y) * score(y) ** 2, -np.inf, np.inf)[0]


@pytest.mark.parametrize("likelihood", ["gaussian", "laplace", "student_t", "poisson"])
def test_fisher_diag_scale_is_the_fisher_information(likelihood):
    if likelihood == "poisson":
        got = fisher_diag_scale("poisson", mean=0.7, poisson_offset=-1.0, poisson_scale=0.5)
    else:
        got = fisher_diag_scale(likelihood, 0.4, df=5.0)
    np.testing.assert_allclose(float(got), score_squared_expectation(likelihood), rtol=1e-4)


def test_observation_inputs_are_validated():
    cores, design, padded = make_problem(seed=3)
    m = valid(padded)
    i, j = np.argwhere(m)[0]
    bad_values = padded.values.copy()
    bad_values[i, j] = np.nan
    with pytest.raises(InputError, match=r"padded.values: expected finite"):
        observation_model(cores, design, padded._replace(values=bad_values), sigma=0.3)
    with pytest.raises(InputError, match="sigma: expected positive"):
        observation_model(cores, design, padded, sigma=-0.3)
    with pytest.raises(InputError, match="sigma: expected positive"):
        observation_model(cores, design, padded, sigma=np.where(m, -1.0, 1.0))
    with pytest.raises(InputError, match="poisson_offset"):
        observation_model(cores, design, padded, likelihood="poisson", poisson_offset=10.0, poisson_scale=1.0)
    with pytest.raises(InputError, match="poisson_offset"):
        observation_model(cores, design, padded, likelihood="poisson", poisson_scale=1.0)
    with pytest.raises(InputError, match="sigma: expected None"):
        observation_model(
            cores, design, padded, likelihood="poisson", sigma=0.3, poisson_offset=-9.0, poisson_scale=1.0
        )
    # Count 0 normalised in float32 lands a rounding step either side of a float64 offset: it
    # is count 0, not bad data; a whole count below the offset is.
    o = float(np.nanmin(np.where(m, padded.values, np.inf)))
    at_zero = padded.values.copy()
    at_zero[i, j] = o - 1e-7
    observation_model(cores, design, padded._replace(values=at_zero), likelihood="poisson",
                      poisson_offset=o, poisson_scale=0.5)
    at_zero[i, j] = o - 0.5
    with pytest.raises(InputError, match=r"padded.values: expected values >= poisson_offset"):
        observation_model(cores, design, padded._replace(values=at_zero), likelihood="poisson",
                          poisson_offset=o, poisson_scale=0.5)
    with pytest.raises(InputError, match="likelihood"):
        observation_model(cores, design, padded, likelihood="cauchy")
    with pytest.raises(InputError, match=r"design: expected an array of shape \(M=3, P, D=4\)"):
        observation_model(cores, design[..., :3], padded)
    with pytest.raises(InputError, match="padded.mask"):
        observation_model(cores, design, padded._replace(mask=m.astype(float)))
    bad_noise = padded.noise_scale.copy()
    bad_noise[i, j] = np.nan
    with pytest.raises(InputError, match="metadata"):
        observation_model(cores, design, padded._replace(noise_scale=bad_noise), sigma="metadata")
    with pytest.raises(InputError, match=r"sigma: expected a scalar or an array broadcastable"):
        observation_model(cores, design, padded, sigma=np.ones(5))
    with pytest.raises(InputError, match="sigma"):
        log_likelihood_fn(cores, design, padded, sigma=None)


def test_normalise_padded_maps_values_and_noise():
    _, _, padded = make_problem(seed=4, nan_padding=False)
    out = normalise_padded(padded, 10.0, 2.0)
    m = valid(padded)
    np.testing.assert_allclose(out.values[m], (padded.values[m] - 10.0) / 2.0)
    np.testing.assert_allclose(out.noise_scale[m], padded.noise_scale[m] / 2.0)
    with pytest.raises(InputError, match="std"):
        normalise_padded(padded, 0.0, 0.0)


# ---------------------------------------------------------------- GP prior and conjugate posterior

KERNEL = TemporalKernel("matern32", 0.4, 1.0)
MEAN = np.array([[0.5, -0.2], [0.1, 0.0]])
SCALE = np.array([[1.0, 0.6], [1.5, 0.8]])


def kron_cov(times, jitter=1e-5):
    K = gram_float64(KERNEL, times)
    K = K + jitter * np.mean(np.diag(K)) * np.eye(len(times))
    return np.kron(K, np.diag(SCALE.reshape(-1) ** 2))


def test_gp_temporal_prior_density_is_the_kronecker_gaussian():
    times = np.array([0.0, 0.3, 1.0])
    with jax.enable_x64(True):
        tr = numpyro.handlers.trace(numpyro.handlers.seed(gp_temporal_prior, 0)).get_trace(
            times, CORE_SHAPE, KERNEL, MEAN, SCALE
        )
        fn = tr["cores"]["fn"]
        assert isinstance(fn, KroneckerTimeNormal) and tr["cores"]["value"].shape == (3, 2, 2)
        W = np.random.default_rng(0).normal(size=(2, 3, 2, 2))
        got = np.asarray(fn.log_prob(jnp.asarray(W)))
        variance = np.asarray(fn.variance)
    ref = scipy.stats.multivariate_normal(np.tile(MEAN.reshape(-1), 3), kron_cov(times))
    np.testing.assert_allclose(got, ref.logpdf(W.reshape(2, -1)), rtol=1e-8)
    np.testing.assert_allclose(variance.reshape(-1), np.diag(kron_cov(times)), rtol=1e-8)


def brute_force_posterior(design, padded, sigma, times):
    """Precision-form posterior with explicit inverses (test oracle only)."""
    M, P, D = design.shape
    m = valid(padded)
    C = kron_cov(times)
    rows, y = [], []
    for t in range(M):
        for p in range(P):
            if m[t, p]:
                row = np.zeros(M * D)
                row[t * D:(t + 1) * D] = design[t, p]
                rows.append(row)
                y.append(padded.values[t, p])
    A, y = np.array(rows), np.array(y)
    prec = np.linalg.inv(C) + A.T @ A / sigma**2
    cov = np.linalg.inv(prec)
    m0 = np.tile(MEAN.reshape(-1), M)
    mean = cov @ (np.linalg.solve(C, m0) + A.T @ y / sigma**2)
    return mean, cov


@pytest.mark.parametrize("method", ["observation", "parameter"])
def test_conjugate_posterior_equals_brute_force(method):
    _, design, padded = make_problem(seed=6)
    times = np.array([0.0, 0.3, 1.0])
    params = GPPriorParams(KERNEL, MEAN, SCALE)
    mean, cov = brute_force_posterior(design, padded, 0.3, times)
    with jax.enable_x64(True):
        post = conjugate_posterior(params, design, padded, 0.3, times, method=method)
        assert post.mean.dtype == jnp.float64 and post.mean.shape == (3, 2, 2)
        np.testing.assert_allclose(np.asarray(post.mean).reshape(-1), mean, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(np.asarray(post.variance).reshape(-1), np.diag(cov), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", ["observation", "parameter"])
def test_conjugate_draws_have_the_posterior_moments(method):
    _, design, padded = make_problem(seed=6)
    times = np.array([0.0, 0.3, 1.0])
    params = GPPriorParams(KERNEL, MEAN, SCALE)
    mean, cov = brute_force_posterior(design, padded, 0.3, times)
    n = 4000
    draws = np.asarray(sample_conjugate(jax.random.key(1), params, design, padded, 0.3, times, n, method=method))
    assert draws.shape == (n, 3, 2, 2)
    flat = draws.reshape(n, -1).astype(np.float64)
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(flat.mean(0) - mean) < 5 * sd / np.sqrt(n))
    # Entrywise standard error of a sample covariance is at most sqrt(2/n) * max variance.
    np.testing.assert_allclose(np.cov(flat.T), cov, atol=5 * np.sqrt(2 / n) * np.diag(cov).max())
    again = np.asarray(sample_conjugate(jax.random.key(1), params, design, padded, 0.3, times, n, method=method))
    np.testing.assert_array_equal(again, draws)


def test_nuts_on_gp_prior_and_gaussian_likelihood_agrees_with_conjugate_posterior():
    _, design, padded = make_problem(seed=6)
    times = np.array([0.0, 0.3, 1.0])
    sigma = 0.3

    def joint(design, padded):
        cores = gp_temporal_prior(times, CORE_SHAPE, KERNEL, MEAN, SCALE)
        observation_model(cores, design, padded, likelihood="gaussian", sigma=sigma)

    mcmc = MCMC(NUTS(joint), num_warmup=300, num_samples=1500, progress_bar=False)
    mcmc.run(jax.random.key(2), design, padded)
    samples = np.asarray(mcmc.get_samples()["cores"], dtype=np.float64).reshape(1500, -1)
    ess = np.asarray(numpyro.diagnostics.effective_sample_size(samples[None]))
    exact = conjugate_posterior(GPPriorParams(KERNEL, MEAN, SCALE), design, padded, sigma, times)
    mean = np.asarray(exact.mean).reshape(-1)
    var = np.asarray(exact.variance).reshape(-1)
    assert np.all(np.abs(samples.mean(0) - mean) < 5 * np.sqrt(var / ess))
    np.testing.assert_allclose(samples.var(0), var, rtol=0.3)


def _condition_model(params, times, design, padded, sigma):
    """Mean and covariance of `gp_temporal_prior` (the NumPyro model, its own loc and Cholesky
    factor) conditioned on `y = A vec(W) + eps`, `eps ~ N(0, sigma² I)`: dense Gaussian
    conditioning, no code shared with `models.gp_prior`'s conjugate solver."""
    with jax.enable_x64(True):
        tr = numpyro.handlers.trace(numpyro.handlers.seed(gp_temporal_prior, 0)).get_trace(
            times, params.core_shape, params.kernel, params.core_mean, params.core_scale, jitter=params.jitter
        )
        fn = tr["cores"]["fn"]
        loc = np.asarray(fn.loc, dtype=np.float64).reshape(-1)
        L = np.asarray(fn.time_chol, dtype=np.float64)
        scale = np.asarray(fn.entry_scale, dtype=np.float64).reshape(-1)
    C = np.kron(L @ L.T, np.diag(scale**2))
    M, P, D = design.shape
    m = valid(padded)
    rows, y = [], []
    for t in range(M):
        for p in range(P):
            if m[t, p]:
                row = np.zeros(M * D)
                row[t * D:(t + 1) * D] = design[t, p]
                rows.append(row)
                y.append(padded.values[t, p])
    A, y = np.array(rows), np.array(y)
    S = A @ C @ A.T + sigma**2 * np.eye(len(y))
    gain = np.linalg.solve(S, A @ C).T
    return loc + gain @ (y - A @ loc), C - gain @ A @ C


def test_gp_sampler_posterior_is_the_conditioned_gp_temporal_prior():
    """`gp_temporal_prior` is the reference NumPyro model of `sampler="gp"`: the conjugate
    posterior the sampler draws from (`ConjugateGP` -> `sample_conjugate` with the run's
    `GPPriorParams`) is that model conditioned on Gaussian observations."""
    from types import SimpleNamespace

    from inference.samplers import ConjugateGP
    from models.likelihoods import Gaussian

    _, design, padded = make_problem(seed=6)
    times = np.array([0.0, 0.3, 1.0])
    params = GPPriorParams(KERNEL, MEAN, SCALE, jitter=1e-4)
    sigma = 0.3
    mean, cov = _condition_model(params, times, design, padded, sigma)
    with jax.enable_x64(True):
        for method in ("observation", "parameter"):
            post = conjugate_posterior(params, design, padded, sigma, times, method=method)
            np.testing.assert_allclose(np.asarray(post.mean).reshape(-1), mean, rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(np.asarray(post.variance).reshape(-1), np.diag(cov), rtol=1e-7, atol=1e-10)
        n = 4000
        run = SimpleNamespace(gp_params=params)
        problem = SimpleNamespace(likelihood=Gaussian(), sigma_y=sigma, conditioned=True, design=design,
                                  padded=padded, times_norm=times)
        out = ConjugateGP().sample(jax.random.key(3), run, problem, n)
    flat = np.asarray(out.cores, dtype=np.float64).reshape(n, -1)
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(flat.mean(0) - mean) < 5 * sd / np.sqrt(n))
    np.testing.assert_allclose(np.cov(flat.T), cov, atol=5 * np.sqrt(2 / n) * np.diag(cov).max())


def test_gp_prior_params_from_training_cores_recover_the_generator():
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 20)
    true = TemporalKernel("rbf", 0.15, 1.0)
    L = cholesky_with_jitter(np.asarray(true.gram(t), dtype=np.float64), 1e-5)
    z = np.asarray(gp_noise(jax.random.key(4), L, (20, 60, 2, 2)), dtype=np.float64)
    mean = rng.normal(size=CORE_SHAPE)
    scale = rng.uniform(0.5, 2.0, size=CORE_SHAPE)
    cores = np.moveaxis(z, 0, 1) * scale + mean
    params = GPPriorParams.from_training_cores(cores, t, kernel=TemporalKernel("rbf", 0.3))
    assert params.core_shape == CORE_SHAPE and params.kernel.variance == 1.0
    np.testing.assert_allclose(params.core_scale, scale, rtol=0.1)
    assert np.all(np.abs(params.core_mean - mean) < 0.4 * scale)
    assert abs(params.kernel.lengthscale / 0.15 - 1) < 0.15
    again = GPPriorParams.from_dict(params.to_dict())
    np.testing.assert_array_equal(again.core_mean, params.core_mean)
    assert again.kernel == params.kernel


def test_gp_prior_inputs_are_validated():
    _, design, padded = make_problem(seed=6)
    params = GPPriorParams(KERNEL, MEAN, SCALE)
    with pytest.raises(InputError, match="core_scale"):
        GPPriorParams(KERNEL, MEAN, -SCALE)
    with pytest.raises(InputError, match="core_shape"):
        gp_temporal_prior(np.array([0.0, 1.0]), (2, 0), KERNEL)
    with pytest.raises(InputError, match="duplicate"):
        conjugate_posterior(params, design, padded, 0.3, np.array([0.0, 0.3, 0.3]))
    with pytest.raises(InputError, match="sigma"):
        conjugate_posterior(params, design, padded, None, np.array([0.0, 0.3, 1.0]))
    with pytest.raises(InputError, match="design"):
        conjugate_posterior(params, design[:, :, :3], padded, 0.3, np.array([0.0, 0.3, 1.0]))
    with pytest.raises(InputError, match="num_draws"):
        sample_conjugate(jax.random.key(0), params, design, padded, 0.3, np.array([0.0, 0.3, 1.0]), 0)
    with pytest.raises(InputError, match="cores"):
        GPPriorParams.from_training_cores(np.ones((2, 5, 2, 2)), np.linspace(0, 1, 5))


# ---------------------------------------------------------------- score prior


class GaussianDiffusionPrior:
    """A GPSDPrior stand-in whose clean cores are Gaussian, so its denoiser is exact.

    Normalised cores x₀ ~ N(mu, K0 ⊗ diag(v)); noise σ L z with L Lᵀ = K_noise (the GP kernel
    plus relative jitter); core units W = core_mean + core_std x.
    """

    core_shape = CORE_SHAPE
    kernel = TemporalKernel("rbf", 0.1)
    jitter = 1e-3
    core_mean, core_std = 3.0, 2.0

    def __init__(self, times):
        self.K0 = np.asarray(TemporalKernel("matern52", 0.5).gram(times), dtype=np.float64)
        Kn = np.asarray(self.kernel.gram(times), dtype=np.float64)
        self.Kn = Kn + self.jitter * np.mean(np.diag(Kn)) * np.eye(len(times))
        self.mu = np.array([[0.2, -0.1], [0.4, 0.0]])
        self.v = np.array([[1.0, 0.5], [0.3, 2.0]])

    def normalise(self, W):
        return (W - self.core_mean) / self.core_std

    def marginal_cov(self, e, sigma):
        return self.v.reshape(-1)[e] * self.K0 + sigma**2 * self.Kn

    def denoise(self, x, sigma, t_norm):
        M = x.shape[0]
        flat = x.reshape(M, -1)
        out = []
        for e in range(flat.shape[1]):
            gain = self.v.reshape(-1)[e] * self.K0 @ np.linalg.inv(self.marginal_cov(e, sigma))
            mu_e = self.mu.reshape(-1)[e]
            out.append(mu_e + jnp.asarray(gain, dtype=x.dtype) @ (flat[:, e] - mu_e))
        return jnp.stack(out, axis=1).reshape(x.shape)

    def sample(self, key, times_norm, num_draws):
        return self.core_mean + jax.random.normal(key, (num_draws, len(times_norm)) + self.core_shape)


def test_score_prior_score_is_the_exact_gaussian_score():
    times = np.array([0.0, 0.25, 0.6, 1.0])
    fake = GaussianDiffusionPrior(times)
    prior = ScorePrior(fake, times)
    sigma = 0.7
    W = np.random.default_rng(1).normal(3.0, 2.0, size=(4,) + CORE_SHAPE)
    x = (W - fake.core_mean) / fake.core_std
    expected = np.zeros((4, 4))
    pre = np.zeros((4, 4))
    for e in range(4):
        s_x = -np.linalg.solve(fake.marginal_cov(e, sigma), x.reshape(4, -1)[:, e] - fake.mu.reshape(-1)[e])
        expected[:, e] = s_x / fake.core_std  # chain rule: dx/dW = 1/core_std
        pre[:, e] = fake.Kn @ s_x / fake.core_std
    got = np.asarray(prior.score(jnp.asarray(W), sigma)).reshape(4, -1)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-4 * np.abs(expected).max())
    got_pre = np.asarray(prior.preconditioned_score(jnp.asarray(W), sigma)).reshape(4, -1)
    np.testing.assert_allclose(got_pre, pre, rtol=2e-3, atol=2e-4 * np.abs(pre).max())
    got_t = np.asarray(prior.score(jnp.asarray(W), sigma, t_norm=jnp.asarray(times))).reshape(4, -1)
    np.testing.assert_allclose(got_t, got, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_score_prior_sampling_log_prob_and_input_checks():
    times = np.array([0.0, 0.5, 1.0])
    fake = GaussianDiffusionPrior(times)
    prior = ScorePrior(fake, times)
    assert prior.event_shape == (3,) + CORE_SHAPE
    draws = prior.sample(jax.random.key(0), (2, 3))
    assert draws.shape == (2, 3, 3) + CORE_SHAPE
    np.testing.assert_array_equal(
        np.asarray(draws).reshape(6, 3, *CORE_SHAPE), np.asarray(fake.sample(jax.random.key(0), times, 6))
    )
    assert prior.sample(jax.random.key(0)).shape == (3,) + CORE_SHAPE
    with pytest.raises(NotImplementedError, match="score"):
        prior.log_prob(draws[0, 0])
    with pytest.raises(InputError, match="W"):
        prior.score(jnp.zeros((2,) + CORE_SHAPE), 1.0)
    with pytest.raises(InputError, match="prior"):
        ScorePrior(object(), times)
    with pytest.raises(InputError, match="duplicate"):
        ScorePrior(fake, np.array([0.0, 0.5, 0.5]))
