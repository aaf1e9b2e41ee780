"""Posterior exactness: guided samplers against the closed-form posterior of linear-Gaussian problems.

The problems are small copies of `benchmarks/exactness.py` (GP prior over time with a decaying
spatial spectrum, GP-correlated diffusion noise as in the shipped priors, the exact Gaussian
denoiser); the bounds are the aims of the posterior-correctness issue, so these tests fail for
a sampler that is not the posterior.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.exactness import GaussianPrior, configs, gaussian_rows, make_replicate, run_sampler, scores
from inference.guidance import Fisher, MomentMatching, as_guidance_rule, moment_matching_update
from inference.guided import GuidedConfig, init, prepare, step
from sdift_prob.errors import InputError

M, D, POINTS, M_OFFSET = 10, 16, 6, 0.05
DEFAULT = "mmps_cg2_warm"


@pytest.fixture(scope="module")
def prior():
    return GaussianPrior.build(M, D)


def _scale(prior):
    probe = gaussian_rows(D)(np.random.default_rng(123), 4000)
    return float(1.0 / np.sqrt(np.mean((probe**2) @ prior.lam)))


def test_moment_matching_step_is_the_exact_conjugate_update(prior):
    # With the exact Gaussian denoiser, Tweedie's covariance σ² J_D Σ is the exact Cov[x0 | x]
    # and the moment-matched estimate is E[x0 | x, y]; at the last step (σ_next = 0) the Euler
    # step returns it. With as many CG iterations as observations the solve is exact.
    s, sy = _scale(prior), 0.05
    rep = make_replicate(prior, gaussian_rows(D), points=2, observed=np.arange(M) % 3 == 0, sigma_y=sy, m=M_OFFSET,
                         s=s, seed=3, n_exact=2)
    n_obs = int(np.asarray(rep.padded.mask).sum())
    cfg = GuidedConfig(method="dps", guidance=MomentMatching(cg_steps=n_obs), num_steps=3, sigma_y=sy)
    prob = prepare(rep.design, rep.padded, core_mean=M_OFFSET, core_std=s, times_norm=prior.times,
                   noise_chol=prior.noise_chol, config=cfg)
    state = init(jax.random.key(0), prob)._replace(step=jnp.asarray(2, jnp.int32))
    state = state._replace(x=jax.random.normal(jax.random.key(5), state.x.shape))
    new, _ = eqx.filter_jit(step)(jax.random.key(1), state, prior.denoiser, prob, cfg)

    sigma = float(prob.sigmas[2])
    K = np.kron(prior.k_time, np.diag(prior.lam))
    noise = sigma**2 * np.kron(prior.noise_chol @ prior.noise_chol.T, np.eye(D))
    x = np.asarray(state.x, np.float64).ravel()
    gain = K @ np.linalg.inv(K + noise)
    x0, V = gain @ x, K - gain @ K  # exact E[x0 | x] and Cov[x0 | x]
    mask = np.asarray(rep.padded.mask)
    frame, point = np.nonzero(mask)
    A = np.zeros((len(frame), M * D))
    for n, (f, p) in enumerate(zip(frame, point)):
        A[n, f * D:(f + 1) * D] = s * rep.design[f, p]
    y = np.asarray(rep.padded.values)[frame, point] - M_OFFSET * rep.design[frame, point].sum(1)
    expected = x0 + V @ A.T @ np.linalg.solve(sy**2 * np.eye(len(y)) + A @ V @ A.T, y - A @ x0)
    np.testing.assert_allclose(np.asarray(new.x).ravel(), expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())


@pytest.mark.parametrize("setting", ["every_frame", "every_other_frame"])
@pytest.mark.parametrize("noise", [0.1, 0.01])
def test_mmps_draws_match_the_exact_posterior(prior, setting, noise):
    s = _scale(prior)
    observed = np.ones(M, bool) if setting == "every_frame" else np.arange(M) % 2 == 0
    rep = make_replicate(prior, gaussian_rows(D), points=POINTS, observed=observed, sigma_y=noise, m=M_OFFSET, s=s,
                         seed=11, n_exact=400)
    exact = scores(rep.exact_draws, rep)
    got = {}
    # The default rule: 2 CG iterations per solve, each solve started from the previous one.
    assert configs(noise, [DEFAULT])[DEFAULT].guidance == MomentMatching()
    for name in (DEFAULT, "dps"):
        draws, _ = run_sampler(configs(noise, [name])[name], prior, rep, m=M_OFFSET, s=s, draws=400, seed=2)
        got[name] = scores(draws, rep)
    mm = got[DEFAULT]
    # The Monte Carlo error of 400 exact draws is exact["mean_error"] (printed on failure).
    assert mm["mean_error"] < 0.15, (mm, exact)
    assert 0.9 < mm["sd_ratio"] < 1.12, (mm, exact)
    # Coverage of one replicate's truth varies with that truth (its entries are correlated):
    # the exact posterior's own figure on the same replicate is the reference.
    assert abs(mm["cover90"] - exact["cover90"]) < 0.05 and abs(mm["cover50"] - exact["cover50"]) < 0.08, (mm, exact)
    # The isotropic rule is far off on this prior: the bench can tell a wrong posterior.
    assert got["dps"]["mean_error"] > 3 * mm["mean_error"]


def test_messages_on_top_of_moment_matching_count_the_data_twice(prior):
    # Documented ablation: MPDPS's GP pseudo-likelihood added to the exact update makes the
    # draws over-confident (on a 64-entry copy with every frame observed: E[z²] 2.1 at σ_y 0.1,
    # 13 at 0.01, against ~1).
    s = _scale(prior)
    rep = make_replicate(prior, gaussian_rows(D), points=POINTS, observed=np.ones(M, bool), sigma_y=0.01, m=M_OFFSET,
                         s=s, seed=5, n_exact=50)
    draws, _ = run_sampler(configs(0.01, ["mmps_cg5_msg"])["mmps_cg5_msg"], prior, rep, m=M_OFFSET, s=s, draws=200, seed=0)
    assert scores(draws, rep)["z2"] > 1.5


def test_guidance_rules_and_their_errors():
    assert isinstance(as_guidance_rule("mmps"), MomentMatching)
    assert isinstance(GuidedConfig(sigma_y=0.1, guidance="fisher").guidance, Fisher)
    assert GuidedConfig(sigma_y=0.1, guidance=MomentMatching(4)).to_dict()["guidance_rule"] == {
        "name": "mmps", "precondition": True, "cg_steps": 4, "anchors": 1, "warm_start": True}
    with pytest.raises(InputError, match="anchors"):
        MomentMatching(anchors=0)
    with pytest.raises(InputError, match="guidance"):
        GuidedConfig(sigma_y=0.1, guidance="tweedie")
    with pytest.raises(InputError, match="cg_steps"):
        MomentMatching(cg_steps=0)
    with pytest.raises(InputError, match="through_denoiser"):
        GuidedConfig(sigma_y=0.1, guidance="mmps", through_denoiser=True)


def test_warm_started_cg_continues_from_its_guess():
    # A guess that solves the system is kept (its residual is zero), and a guess part of the way
    # there ends closer after one iteration than a cold start does.
    from inference.guidance import _pcg

    rng = np.random.default_rng(0)
    G = rng.normal(size=(12, 12))
    S = jnp.asarray(G @ G.T / 12, jnp.float32)
    b = jnp.asarray(rng.normal(size=12), jnp.float32)
    op = lambda v: (v + S @ v, 2.0 * v)  # noqa: E731 (T v = 2 v: the accumulated image)
    exact = np.linalg.solve(np.eye(12) + np.asarray(S, np.float64), np.asarray(b, np.float64))
    tv, v = _pcg(op, lambda r: r, b, 1, jnp.asarray(exact, jnp.float32))
    np.testing.assert_allclose(np.asarray(v), exact, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(tv), 2 * exact, rtol=1e-4, atol=1e-5)
    near = jnp.asarray(0.8 * exact, jnp.float32)
    _, warm = _pcg(op, lambda r: r, b, 1, near)
    _, cold = _pcg(op, lambda r: r, b, 1)
    assert np.linalg.norm(np.asarray(warm) - exact) < 0.5 * np.linalg.norm(np.asarray(cold) - exact)
    with pytest.raises(InputError, match="warm_start"):
        MomentMatching(warm_start=1)


def test_moment_matching_update_ignores_padding():
    # Padding (weight 0) must not move the estimate whatever its residual holds.
    rng = np.random.default_rng(0)
    design = jnp.asarray(rng.normal(size=(1, 3, 4, 2)), jnp.float32)
    weight = jnp.asarray([[[1.0, 1.0, 0.0, 0.0]] * 3], jnp.float32)
    residual = jnp.asarray(rng.normal(size=(1, 3, 4)), jnp.float32)
    args = (lambda v: 0.5 * v, jnp.asarray(0.3), jnp.eye(3), design, jnp.eye(3)[None])
    a = moment_matching_update(*args, residual, weight, 4)
    b = moment_matching_update(*args, residual.at[..., 2:].set(1e6), weight, 4)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_langevin_corrector_keeps_the_posterior_and_checks_its_settings(prior):
    from inference.corrector import LangevinCorrector

    s = _scale(prior)
    rep = make_replicate(prior, gaussian_rows(D), points=POINTS, observed=np.arange(M) % 2 == 0, sigma_y=0.05,
                         m=M_OFFSET, s=s, seed=13, n_exact=300)
    cfg = configs(0.05, ["mmps_cg5_lan1_tau0.2"])["mmps_cg5_lan1_tau0.2"]
    assert cfg.corrector == LangevinCorrector(steps=1, tau=0.2)
    draws, _ = run_sampler(cfg, prior, rep, m=M_OFFSET, s=s, draws=300, seed=4)
    got, exact = scores(draws, rep), scores(rep.exact_draws, rep)
    assert got["mean_error"] < 0.15 and 0.9 < got["sd_ratio"] < 1.12, (got, exact)
    with pytest.raises(InputError, match="tau"):
        LangevinCorrector(tau=0.0)
    with pytest.raises(InputError, match="steps"):
        LangevinCorrector(steps=0)
    with pytest.raises(InputError, match="corrector"):
        GuidedConfig(sigma_y=0.1, guidance="reference", corrector=LangevinCorrector())
