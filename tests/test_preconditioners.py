"""The MMPS preconditioner's anchors: exact where the Tweedie covariance is an anchor's, the old
isotropic rule without a prior spectrum, clear errors for bad spectra."""

import jax.numpy as jnp
import numpy as np
import pytest

import inference.guided.problem as guided_problem
from inference.guidance import MomentMatching, isotropic_tweedie_variance, moment_matching_update
from inference.guided import GuidedConfig, prepare
from inference.guided.estimates import _anchor
from inference.preconditioners import AnchoredPreconditioner, PriorSpectrum, anchor_profiles, select_anchor
from sdift_prob.data.observations import PaddedObservations
from sdift_prob.errors import InputError

M, P, D = 4, 5, 6


def _problem(layout_points: int, anchors: int = 4, spectrum: bool = True):
    rng = np.random.default_rng(0)
    t = np.linspace(0.0, 1.0, M)
    cov_t = np.exp(-0.5 * ((t[:, None] - t[None]) / 0.4) ** 2) + 1e-4 * np.eye(M)
    L = np.linalg.cholesky(cov_t)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    lam = np.geomspace(2.0, 0.002, D)
    design = rng.normal(size=(M, P, D))
    mask = np.ones((M, P), bool)
    pad = PaddedObservations(times=t, values=rng.normal(size=(M, P)), coords=np.zeros((M, P, 1)),
                             noise_scale=np.ones((M, P)), mask=mask)
    cfg = GuidedConfig(method="dps", guidance=MomentMatching(cg_steps=1, anchors=anchors), sigma_y=0.3)
    with pytest.MonkeyPatch.context() as mp:  # `prepare` reads the limit from its own module
        mp.setattr(guided_problem, "MAX_PRECONDITIONED_POINTS", layout_points)
        prob = prepare(design, pad, core_mean=0.0, core_std=1.0, times_norm=t, noise_chol=L, config=cfg,
                       prior_spectrum=PriorSpectrum.from_covariance(q @ np.diag(lam) @ q.T) if spectrum else None)
    return prob, cfg, q, lam, cov_t


@pytest.mark.parametrize("layout_points", [10_000, 1])  # all points at once / frame by frame
def test_one_cg_step_is_exact_at_each_anchor(layout_points):
    # A prior N(0, Σ ⊗ C) with C = Q diag(λ) Qᵀ: the Tweedie covariance at noise level s is
    # Σ ⊗ Q diag(s²λ/(λ+s²)) Qᵀ. At an intermediate anchor's level (and far above / below the
    # variances for the two end anchors) the anchored preconditioner is the system's exact
    # inverse (blockwise, for the per-frame layout with a white Σ), so one CG step solves it.
    prob, cfg, q, lam, cov_t = _problem(layout_points)
    assert prob.preconditioner == ("points" if layout_points > 1 else "frames")
    profiles = np.asarray(prob.anchor_profiles)
    assert profiles.shape == (4, D)
    hi, lo = lam.max(), lam.min()
    levels = [1e-4 * np.sqrt(lo)] + list(np.sqrt(np.geomspace(hi, lo, 4)[1:-1][::-1])) + [1e4 * np.sqrt(hi)]
    if layout_points == 1:
        cov_t = np.eye(M)  # the per-frame preconditioner is exact for frames that are uncoupled
    w = 1.0 / 0.3**2
    for expected_anchor, s in enumerate(levels):
        a, beta = _anchor(jnp.asarray(s, jnp.float32), prob)
        assert int(a) == expected_anchor
        c = s**2 * lam / (lam + s**2)
        cov_x = q @ np.diag(c) @ q.T

        def jvp(v, cov_x=cov_x, s=s):  # σ² J (Σ ⊗ I) = Σ ⊗ C(s) for J = (I ⊗ C(s)) / σ²
            return v @ jnp.asarray(cov_x, jnp.float32) / s**2

        residual = np.asarray(prob.padded.values)
        design = np.asarray(prob.design)
        precond = AnchoredPreconditioner(prob.obs_eig_vals, prob.obs_eig_vecs)
        got, _ = moment_matching_update(
            jvp, jnp.asarray(s, jnp.float32), jnp.asarray(cov_t, jnp.float32), jnp.asarray(design[None]),
            jnp.eye(M)[None], jnp.asarray(residual[None]), jnp.full((1, M, P), w), 1,
            lambda r, a=a, beta=beta: precond(r, a, beta / 0.3**2),
        )
        # exact: x̂0' − x̂0 = V Aᵀ (σ_y² I + A V Aᵀ)⁻¹ r with V = Σ ⊗ C(s)
        A = np.zeros((M * P, M * D))
        for f in range(M):
            A[f * P:(f + 1) * P, f * D:(f + 1) * D] = design[f]
        V = np.kron(cov_t, cov_x)
        exact = V @ A.T @ np.linalg.solve(0.3**2 * np.eye(M * P) + A @ V @ A.T, residual.ravel())
        np.testing.assert_allclose(np.asarray(got).ravel(), exact, rtol=2e-3, atol=2e-3 * np.abs(exact).max())


def test_without_a_spectrum_the_anchor_is_the_isotropic_rule():
    prob, cfg, *_ = _problem(10_000, spectrum=False)
    assert prob.obs_eig_vals.shape[0] == 1
    for s in (0.01, 0.3, 5.0, 80.0):
        a, beta = _anchor(jnp.asarray(s, jnp.float32), prob)
        assert int(a) == 0
        np.testing.assert_allclose(float(beta), float(isotropic_tweedie_variance(s, cfg.edm.sigma_data)), rtol=1e-5)


def test_one_anchor_is_isotropic_even_with_a_spectrum():
    prob, *_ = _problem(10_000, anchors=1)
    assert prob.obs_eig_vals.shape[0] == 1 and np.allclose(prob.anchor_profiles, 1.0)


def test_anchor_profiles_run_from_isotropic_to_the_spectrum():
    lam = np.geomspace(1.0, 1e-3, 7)
    h = anchor_profiles(lam, 4)
    assert h.shape == (4, 7) and np.allclose(h[0], 1.0) and np.allclose(h[-1], lam)
    assert np.all(np.diff(h[:, -1]) < 0)  # each anchor leans further toward the spectrum
    a, beta = select_anchor(jnp.asarray(1e3), jnp.asarray(lam), jnp.ones(7), jnp.asarray(h))
    assert int(a) == 3 and np.isclose(float(beta), 1.0, rtol=1e-3)


def test_bad_spectra_are_refused():
    with pytest.raises(InputError, match="covariance"):
        PriorSpectrum.from_covariance(np.ones((3, 4)))
    with pytest.raises(InputError, match="symmetric"):
        PriorSpectrum.from_covariance(np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(InputError, match="finite"):
        PriorSpectrum.from_covariance(np.array([[np.nan, 0.0], [0.0, 1.0]]))
    with pytest.raises(InputError, match="positive variance"):
        PriorSpectrum.from_covariance(np.zeros((2, 2)))
    spectrum = PriorSpectrum.from_samples(np.random.default_rng(0).normal(size=(50, 3)))
    assert spectrum.axes.shape == (3, 3)
    rng = np.random.default_rng(1)
    pad = PaddedObservations(times=np.linspace(0, 1, 2), values=rng.normal(size=(2, 3)), coords=np.zeros((2, 3, 1)),
                             noise_scale=np.ones((2, 3)), mask=np.ones((2, 3), bool))
    with pytest.raises(InputError, match="prior_spectrum"):
        prepare(rng.normal(size=(2, 3, 4)), pad, core_mean=0.0, core_std=1.0, times_norm=np.linspace(0, 1, 2),
                noise_chol=np.eye(2), config=GuidedConfig(sigma_y=0.1), prior_spectrum=spectrum)
