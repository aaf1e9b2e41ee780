"""EDM pieces against closed forms: preconditioning identities, schedule, GP noise in the loss,
the loss weight, and the Heun sampler with exact Gaussian denoisers (white and GP in time)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from sdift_prob.errors import InputError
from sdift_prob.gp import TemporalKernel, time_cholesky
from sdift_prob.gpsd.edm import (
    EDMConfig,
    add_noise,
    edm_loss,
    heun_sample,
    karras_sigmas,
    loss_weight,
    precondition,
    preconditioning,
)

SIGMAS = jnp.asarray([1e-4, 2e-3, 0.1, 0.5, 1.0, 3.0, 80.0, 1e3], jnp.float32)


@pytest.mark.parametrize("sd", [0.5, 1.0, 2.3])
def test_preconditioning_identities(sd):
    c_skip, c_out, c_in, c_noise = preconditioning(SIGMAS, sd)
    s2 = SIGMAS**2
    np.testing.assert_allclose(c_in**2 * (s2 + sd**2), 1.0, rtol=1e-5)
    np.testing.assert_allclose(c_skip, sd**2 * c_in**2, rtol=1e-5)
    np.testing.assert_allclose(c_out**2, s2 * sd**2 * c_in**2, rtol=1e-5)
    # skip and output parts share the data variance: c_skip + c_out²/sd² = 1
    np.testing.assert_allclose(c_skip + c_out**2 / sd**2, 1.0, rtol=1e-5)
    np.testing.assert_allclose(c_noise, np.log(np.asarray(SIGMAS)) / 4, rtol=1e-5)
    # λ(σ) = 1 / c_out²: the weighted loss is the unit-weight loss on F's target
    np.testing.assert_allclose(loss_weight(SIGMAS, sd) * c_out**2, 1.0, rtol=1e-5)


def test_preconditioning_limits():
    c_skip, c_out, _, _ = preconditioning(jnp.asarray([1e-6, 1e6]), 0.5)
    assert abs(c_skip[0] - 1) < 1e-9 and c_out[0] < 1.01e-6  # σ → 0: D(x) → x
    assert c_skip[1] < 1e-9 and abs(c_out[1] - 0.5) < 1e-5  # σ → ∞: D(x) → sd · F


def test_precondition_reaches_any_target():
    # a network that outputs EDM's training target F* = (x0 - c_skip x) / c_out makes D = x0
    key = jax.random.key(1)
    x0 = jax.random.normal(key, (5, 3, 2))
    x = x0 + 0.7 * jax.random.normal(jax.random.fold_in(key, 1), x0.shape)
    sigma, sd = 0.7, 0.5
    c_skip, c_out, c_in, c_noise = preconditioning(jnp.asarray(sigma), sd)

    def net(y, cn, t):
        np.testing.assert_allclose(y, c_in * x, rtol=1e-6)
        assert float(cn) == pytest.approx(float(c_noise))
        return (x0 - c_skip * x) / c_out

    np.testing.assert_allclose(precondition(net, x, sigma, jnp.linspace(0, 1, 5), sigma_data=sd), x0, atol=1e-5)
    with pytest.raises(InputError, match="sigma"):
        precondition(net, x, jnp.ones(2), jnp.linspace(0, 1, 5))


def test_karras_schedule():
    cfg = EDMConfig()
    s = np.asarray(karras_sigmas(18, cfg))
    assert s.shape == (19,) and s[-1] == 0
    np.testing.assert_allclose([s[0], s[-2]], [80.0, 0.002], rtol=1e-5)
    assert (np.diff(s) < 0).all()
    np.testing.assert_allclose(np.diff(s[:-1] ** (1 / 7)), np.diff(s[:-1] ** (1 / 7))[0], rtol=1e-4)
    with pytest.raises(InputError, match="num_steps"):
        karras_sigmas(0, cfg)


def test_config_validation_and_round_trip():
    cfg = EDMConfig(S_churn=5.0)
    assert EDMConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match="sigma_min"):
        EDMConfig(sigma_min=100.0)
    with pytest.raises(InputError, match="sigma_data"):
        EDMConfig(sigma_data=-1.0)
    with pytest.raises(InputError, match="num_steps"):
        EDMConfig(num_steps=0)


def test_loss_noise_has_kernel_covariance_and_lognormal_sigma():
    # irregular times: the noise of each sequence follows its own kernel matrix
    kernel = TemporalKernel("rbf", 0.1)
    t = jnp.asarray([[0.0, 0.05, 0.2, 0.25, 0.6], [0.1, 0.12, 0.3, 0.7, 0.9]])
    chol = jnp.stack([time_cholesky(kernel, tt, 1e-5) for tt in t])
    B, reps = 2, 4000
    x0 = jnp.zeros((B * reps, 5, 2, 3))
    cfg = EDMConfig()
    noisy, sigma = add_noise(jax.random.key(3), x0, jnp.tile(chol, (reps, 1, 1)), cfg)
    z = np.asarray(noisy / sigma[:, None, None, None]).reshape(reps, B, 5, 6)
    for b in range(B):
        col = np.moveaxis(z[:, b], 1, 2).reshape(-1, 5)  # samples x time
        emp = col.T @ col / col.shape[0]
        np.testing.assert_allclose(emp, np.asarray(kernel.gram(t[b])), atol=0.04)
    ls = np.log(np.asarray(sigma))
    assert abs(ls.mean() - cfg.P_mean) < 0.05 and abs(ls.std() - cfg.P_std) < 0.05


def test_edm_loss_of_exact_denoiser_matches_closed_form():
    # data N(0, s² I), white noise (L = I): the Bayes denoiser D = x s²/(s²+σ²) has expected
    # loss E_σ[λ(σ) · s²σ²/(s²+σ²)] with ln σ ~ N(P_mean, P_std²)
    s, cfg = 0.8, EDMConfig()
    B, T = 6000, 3
    x0 = s * jax.random.normal(jax.random.key(4), (B, T, 2, 2))
    chol = jnp.broadcast_to(jnp.eye(T), (B, T, T))
    t = jnp.broadcast_to(jnp.linspace(0, 1, T), (B, T))

    def exact_net(y, c_noise, tt):
        sigma = jnp.exp(4 * c_noise)
        c_skip, c_out, c_in, _ = preconditioning(sigma, cfg.sigma_data)
        x = y / c_in
        return (x * s**2 / (s**2 + sigma**2) - c_skip * x) / c_out

    got = float(edm_loss(exact_net, jax.random.key(5), x0, t, chol, cfg))
    sd = cfg.sigma_data

    def integrand(u):
        sig = math.exp(u)
        return stats.norm.pdf(u, cfg.P_mean, cfg.P_std) * (sig**2 + sd**2) / (sig * sd) ** 2 * s**2 * sig**2 / (s**2 + sig**2)

    want = integrate.quad(integrand, cfg.P_mean - 10 * cfg.P_std, cfg.P_mean + 10 * cfg.P_std)[0]
    assert got == pytest.approx(want, rel=0.03)
    with pytest.raises(InputError, match="chol"):
        edm_loss(exact_net, jax.random.key(5), x0, t, chol[:, :2, :2], cfg)


def _gaussian_denoiser(C, Sigma):
    """Exact E[x0 | x] for x0 ~ N(0, C) over time (independent entries), noise σ² Sigma."""
    C64, S64 = np.asarray(C, np.float64), np.asarray(Sigma, np.float64)

    def denoise(x, sigma, t):
        A = jnp.asarray(C64, jnp.float32)
        M = jnp.asarray(C64, jnp.float32) + sigma**2 * jnp.asarray(S64, jnp.float32)
        flat = x.reshape(x.shape[0], -1)
        return (A @ jnp.linalg.solve(M, flat)).reshape(x.shape)

    return denoise


def _draws(denoise, t, chol, cfg, n, core=(2, 4)):
    keys = jax.random.split(jax.random.key(11), n)
    f = jax.jit(jax.vmap(lambda k: heun_sample(denoise, k, t, core, chol, cfg)))
    x = np.asarray(f(keys), np.float64)  # (n, M, *core)
    return np.moveaxis(x.reshape(n, len(t), -1), 1, 2).reshape(-1, len(t))  # samples x time


def _scalar_heun_gain(s, cfg, num_steps):
    """Heun applied to the scalar ODE dx/dσ = xσ/(s²+σ²) of white Gaussian data (float64):
    the sampler is linear here, so x_final = gain · x_start exactly."""
    sig = np.asarray(karras_sigmas(num_steps, cfg), np.float64)
    sig[:-1] = (cfg.sigma_max ** (1 / cfg.rho) + np.arange(num_steps) / max(num_steps - 1, 1)
                * (cfg.sigma_min ** (1 / cfg.rho) - cfg.sigma_max ** (1 / cfg.rho))) ** cfg.rho
    f = lambda x, sg: x * sg / (s**2 + sg**2)  # noqa: E731
    x = 1.0
    for k in range(num_steps):
        d = f(x, sig[k])
        x_next = x + (sig[k + 1] - sig[k]) * d
        if k < num_steps - 1:
            x_next = x + (sig[k + 1] - sig[k]) * 0.5 * (d + f(x_next, sig[k + 1]))
        x = x_next
    return x


def test_heun_white_gaussian_gives_data_variance():
    # data N(0, s² I), white noise: D(x; σ) = x s²/(s²+σ²); the exact flow maps N(0, σ_max²) to
    # N(0, s²·σ_max²/(s²+σ_max²)) and Heun converges to it (7.7% too wide at 18 steps, 1.3% at 40)
    s, num_steps = 1.7, 40
    cfg = EDMConfig(num_steps=num_steps)
    gain = _scalar_heun_gain(s, cfg, num_steps)
    assert gain**2 * cfg.sigma_max**2 == pytest.approx(s**2, rel=0.015)
    t = jnp.linspace(0, 1, 4)
    denoise = _gaussian_denoiser(s**2 * np.eye(4), np.eye(4))
    col = _draws(denoise, t, jnp.eye(4), cfg, 1000)
    np.testing.assert_allclose(col.var(axis=0), gain**2 * cfg.sigma_max**2, rtol=0.06)
    np.testing.assert_allclose(col.var(), s**2, rtol=0.04)
    assert abs(col.mean()) < 0.05 * s
    np.testing.assert_allclose(np.corrcoef(col.T), np.eye(4), atol=0.05)


@pytest.mark.parametrize("churn", [0.0, 10.0])
def test_heun_gp_gaussian_gives_data_covariance(churn):
    # irregular times; data kernel (Matérn 3/2) differs from the noise kernel (RBF 0.1)
    t = jnp.asarray([0.0, 0.07, 0.1, 0.35, 0.5, 0.9])
    noise_kernel = TemporalKernel("rbf", 0.1)
    C = np.asarray(TemporalKernel("matern32", 0.3, 0.6).gram(t), np.float64) + 1e-4 * np.eye(6)
    chol = time_cholesky(noise_kernel, t)
    Sigma = np.asarray(chol, np.float64) @ np.asarray(chol, np.float64).T
    cfg = EDMConfig(num_steps=40, S_churn=churn, S_min=0.05, S_max=50.0)
    col = _draws(_gaussian_denoiser(C, Sigma), t, chol, cfg, 1000)
    emp = col.T @ col / col.shape[0]
    np.testing.assert_allclose(emp, C, atol=0.05)


def test_heun_input_errors():
    t = jnp.linspace(0, 1, 3)
    with pytest.raises(InputError, match="chol"):
        heun_sample(lambda x, s, t: x, jax.random.key(0), t, (2, 2), jnp.eye(4), EDMConfig())
    with pytest.raises(InputError, match="t:"):
        heun_sample(lambda x, s, t: x, jax.random.key(0), jnp.zeros((2, 2)), (2, 2), jnp.eye(2), EDMConfig())
