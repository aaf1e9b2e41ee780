"""Noise-level (σ) inference: conjugate draws, Metropolis on log σ, NUTS over σ."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from inference.noise import (
    sigma_conditional_gaussian,
    sigma_log_density,
    sigma_metropolis,
    sigma_posterior_nuts,
    update_sigma,
)
from sdift_prob.data.observations import PaddedObservations
from sdift_prob.errors import InputError


def problem(seed, *, M=4, P=100, D=3, sigma=0.1, noise="gaussian"):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(M, D))
    A = rng.normal(size=(M, P, D))
    u = np.einsum("mpd,md->mp", A, W)
    if noise == "gaussian":
        e = sigma * rng.normal(size=u.shape)
    else:  # laplace with standard deviation sigma
        e = rng.laplace(scale=sigma / np.sqrt(2), size=u.shape)
    padded = PaddedObservations(
        times=np.arange(M, dtype=float), values=u + e, coords=np.zeros((M, P, 1)), noise_scale=np.ones((M, P)),
        mask=np.ones((M, P), bool),
    )
    return W, A, padded


def test_gaussian_conditional_is_the_conjugate_inverse_gamma():
    rng = np.random.default_rng(0)
    r = 0.3 * rng.normal(size=(3, 5))
    mask = np.ones((3, 5), bool)
    mask[2, 3:] = False
    n, ss = mask.sum(), float((r[mask] ** 2).sum())
    shape, rate = 1.0 + n / 2, 0.1**2 + ss / 2
    draws = jax.jit(jax.vmap(lambda k: sigma_conditional_gaussian(k, r, mask, prior_scale=0.1)))(
        jax.random.split(jax.random.key(0), 20000)
    )
    prec = 1.0 / np.asarray(draws, np.float64) ** 2  # 1/σ² ~ Gamma(shape, rate)
    assert prec.mean() == pytest.approx(shape / rate, rel=0.02)
    assert stats.kstest(prec, stats.gamma(shape, scale=1 / rate).cdf).pvalue > 1e-3


def test_metropolis_on_log_sigma_keeps_the_target_invariant():
    # Chains started at exact draws of σ (σ² ~ InvGamma(a, b)) stay distributed as the target
    # only if the log-σ walk includes its Jacobian.
    a, b = 6.0, 0.5

    def log_density(s):
        return (-2 * a - 1) * jnp.log(s) - b / s**2

    keys = jax.random.split(jax.random.key(1), 4000)
    start = jnp.sqrt(b / jax.random.gamma(jax.random.key(2), a, (4000,)))
    out, acc = jax.jit(jax.vmap(lambda k, s: sigma_metropolis(k, log_density, s, num_steps=30, step_size=0.3)))(keys, start)
    out = np.asarray(out, np.float64)
    assert 0.3 < float(acc.mean()) < 0.95
    exact = stats.invgamma(a, scale=b)
    assert np.mean(out**2) == pytest.approx(exact.mean(), rel=0.03)
    assert stats.kstest(out**2, exact.cdf).pvalue > 1e-3


@pytest.mark.parametrize("noise", ["gaussian", "laplace"])
def test_gibbs_updates_recover_a_known_sigma(noise):
    W, A, padded = problem(3, sigma=0.1, noise=noise)
    likelihood = noise
    padded_j = PaddedObservations(*(jnp.asarray(a) for a in padded))

    @jax.jit
    def chain(key):
        def body(s, k):
            s = update_sigma(k, jnp.asarray(W), jnp.asarray(A), padded_j, s, likelihood=likelihood)
            return s, s

        return jax.lax.scan(body, jnp.asarray(1.0), jax.random.split(key, 300))[1]

    trace = np.asarray(chain(jax.random.key(0)))[50:]
    # 400 residuals: the posterior sd of σ is about σ/√(2·400) ≈ 0.0035 (Gaussian), a bit more for Laplace
    assert trace.mean() == pytest.approx(0.1, abs=0.012)
    assert 0.001 < trace.std() < 0.015


def test_sigma_log_density_is_the_models_prior_plus_likelihood():
    W, A, padded = problem(4, M=2, P=6, sigma=0.2)
    s = 0.3
    got = float(sigma_log_density(s, W, A, padded, likelihood="gaussian", prior_scale=0.5))
    resid = np.asarray(padded.values) - np.einsum("mpd,md->mp", A, W)
    expected = stats.norm(0, s).logpdf(resid).sum() + stats.halfnorm(scale=0.5).logpdf(s)
    assert got == pytest.approx(expected, rel=1e-4)


def test_nuts_sigma_posterior_per_draw():
    W, A, padded = problem(5, M=2, P=100, sigma=0.2)
    rng = np.random.default_rng(1)
    draws = np.stack([W, W + 0.1 * rng.normal(size=W.shape)])  # the second draw fits worse
    out = sigma_posterior_nuts(jax.random.key(0), draws, A, padded, "gaussian", num_warmup=100, num_samples=200,
                               prior_scale=1.0)
    assert out.shape == (2, 200)
    # 200 residuals: posterior sd of σ ≈ 0.2/√400 = 0.01
    assert out[0].mean() == pytest.approx(0.2, abs=0.03)
    # each draw gets its own σ: close to the RMS residual of that draw
    for k in range(2):
        rms = np.sqrt(np.mean((np.asarray(padded.values) - np.einsum("mpd,md->mp", A, draws[k])) ** 2))
        assert out[k].mean() == pytest.approx(rms, abs=0.01)
    assert out[1].mean() > out[0].mean() + 0.02


def test_bad_inputs_name_the_argument():
    W, A, padded = problem(6, M=2, P=4)
    with pytest.raises(InputError, match="likelihood"):
        update_sigma(jax.random.key(0), W, A, padded, 0.1, likelihood="poisson")
    with pytest.raises(InputError, match="design"):
        update_sigma(jax.random.key(0), W, A[:1], padded, 0.1, likelihood="gaussian")
    with pytest.raises(InputError, match="mask"):
        sigma_conditional_gaussian(jax.random.key(0), np.zeros((2, 4)), np.ones((2, 3), bool))
    with pytest.raises(InputError, match="prior_scale"):
        sigma_conditional_gaussian(jax.random.key(0), np.zeros((2, 4)), np.ones((2, 4), bool), prior_scale=-1.0)
    with pytest.raises(InputError, match="num_steps"):
        sigma_metropolis(jax.random.key(0), lambda s: -s, 1.0, num_steps=0)
    with pytest.raises(InputError, match="cores_draws"):
        sigma_posterior_nuts(jax.random.key(0), W, A, padded, "gaussian")
    with pytest.raises(InputError, match="cores_draws"):
        sigma_posterior_nuts(jax.random.key(0), np.full((1, *W.shape), np.nan), A, padded, "gaussian")


def test_tweedie_marginal_sigma_is_consistent_where_the_clean_estimate_conditional_is_not():
    # Residuals from N(0, σ² I + c G): the marginal update recovers σ; the conditional that takes
    # them as plain residuals (the estimate's own uncertainty ignored) overshoots.
    from inference.noise import sigma_conditional_gaussian, update_sigma_tweedie

    rng = np.random.default_rng(0)
    M, P, sigma, c = 4, 60, 0.2, 0.05
    B = rng.normal(size=(M * P, 30))
    G = B @ B.T / 30
    r = rng.multivariate_normal(np.zeros(M * P), sigma**2 * np.eye(M * P) + c * G).reshape(M, P)
    mask = np.ones((M, P), bool)
    mask[3, 40:] = False  # padding: zero rows of G and no residual
    G_pad = G * np.outer(mask.ravel(), mask.ravel())
    vals, vecs = np.linalg.eigh(G_pad)
    r = np.where(mask, r, 0.0)
    args = (jnp.asarray(r, jnp.float32), jnp.asarray(mask), jnp.asarray(vals, jnp.float32),
            jnp.asarray(vecs, jnp.float32), c)
    keys = jax.random.split(jax.random.key(0), 200)
    tweedie = jax.vmap(lambda k: update_sigma_tweedie(k, *args, jnp.asarray(0.5), mh_steps=60))(keys)
    plain = jax.vmap(lambda k: sigma_conditional_gaussian(k, args[0], args[1]))(keys)
    assert abs(float(np.median(tweedie)) - sigma) < 0.1 * sigma, float(np.median(tweedie))
    assert float(np.median(plain)) > 1.3 * sigma
    # with c = 0 the marginal is the plain conditional (same target, here sampled by Metropolis)
    zero = jax.vmap(lambda k: update_sigma_tweedie(k, *args[:4], 0.0, jnp.asarray(0.5), mh_steps=60))(keys)
    assert abs(float(np.median(zero)) - float(np.median(plain))) < 0.05 * float(np.median(plain))
