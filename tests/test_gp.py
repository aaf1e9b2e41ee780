"""Tests of sdift_prob.gp: kernels against closed forms, GP noise covariance, LOO weights, jitter, fitting."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdift_prob.errors import InputError, NumericalError
from sdift_prob.gp import (
    TemporalKernel,
    cholesky_jittered,
    cholesky_with_jitter,
    fit_lengthscale,
    gp_noise,
    loo_weights,
    time_cholesky,
    validate_times,
)

T = np.array([0.0, 0.07, 0.2, 0.21, 0.5, 0.9, 1.0])


def closed_form(name, d, ell, var):
    r = np.abs(d) / ell
    if name == "rbf":
        return var * np.exp(-0.5 * r**2)
    if name == "matern12":
        return var * np.exp(-r)
    if name == "matern32":
        return var * (1 + np.sqrt(3) * r) * np.exp(-np.sqrt(3) * r)
    return var * (1 + np.sqrt(5) * r + 5 * r**2 / 3) * np.exp(-np.sqrt(5) * r)


@pytest.mark.parametrize("name", ["rbf", "matern12", "matern32", "matern52"])
def test_gram_and_cross_match_closed_forms(name):
    k = TemporalKernel(name, 0.3, 1.7)
    expected = closed_form(name, T[:, None] - T[None, :], 0.3, 1.7)
    np.testing.assert_allclose(np.asarray(k.gram(T)), expected, rtol=1e-5, atol=1e-6)
    t2 = np.array([0.05, 0.6])
    np.testing.assert_allclose(
        np.asarray(k.cross(T, t2)), closed_form(name, T[:, None] - t2[None, :], 0.3, 1.7), rtol=1e-5, atol=1e-6
    )


def test_reference_noise_kernel_is_rbf_lengthscale_point_one():
    np.testing.assert_allclose(
        np.asarray(TemporalKernel("rbf", 0.1, 1.0).gram(T)),
        np.exp(-50.0 * (T[:, None] - T[None, :]) ** 2),
        rtol=1e-5,
        atol=1e-7,
    )


def test_kernel_round_trips_through_dict():
    k = TemporalKernel("matern52", 0.25, 2.0)
    assert TemporalKernel.from_dict(k.to_dict()) == k


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="cosine"), "name"),
        (dict(lengthscale=-0.1), "lengthscale"),
        (dict(lengthscale=float("nan")), "lengthscale"),
        (dict(variance=0.0), "variance"),
    ],
)
def test_kernel_rejects_bad_parameters(kwargs, match):
    with pytest.raises(InputError, match=match):
        TemporalKernel(**kwargs)


def test_gram_rejects_matrix_input():
    with pytest.raises(InputError, match="t:"):
        TemporalKernel().gram(np.zeros((3, 1)))


def test_validate_times_names_the_argument_and_index():
    np.testing.assert_array_equal(validate_times([0, 0.5, 1.0], "times"), [0, 0.5, 1.0])
    with pytest.raises(InputError, match=r"times: .*duplicate.*times\[2\]"):
        validate_times([0.0, 0.5, 0.5, 1.0], "times")
    with pytest.raises(InputError, match=r"times: .*strictly increasing.*times\[2\] = 0.2 after times\[1\] = 0.5"):
        validate_times([0.0, 0.5, 0.2], "times")
    with pytest.raises(InputError, match=r"times_norm: expected finite.*times_norm\[1\]"):
        validate_times([0.0, np.nan, 1.0], "times_norm")
    with pytest.raises(InputError, match="1-D"):
        validate_times(np.zeros((2, 2)), "times")
    with pytest.raises(InputError, match="1-D"):
        validate_times([], "times")


def test_gp_noise_has_the_kernel_covariance():
    k = TemporalKernel("matern32", 0.2, 1.0)
    t = np.linspace(0, 1, 6)
    K = np.asarray(k.gram(t), dtype=np.float64)
    L = cholesky_with_jitter(K, 1e-6)
    n = 20000
    z = np.asarray(gp_noise(jax.random.key(3), L, (6, 50, n // 50)), dtype=np.float64).reshape(6, n)
    emp = z @ z.T / n
    # Monte-Carlo standard error of each entry: sqrt((K_ii K_jj + K_ij²)/n) ≤ sqrt(2/n) ≈ 0.01.
    np.testing.assert_allclose(emp, K, atol=0.05)
    assert np.abs(z.mean(axis=1)).max() < 0.04


def test_gp_noise_checks_shape():
    L = np.eye(4)
    with pytest.raises(InputError, match="shape"):
        gp_noise(jax.random.key(0), L, (3, 2))
    with pytest.raises(InputError, match="chol"):
        gp_noise(jax.random.key(0), np.zeros((4, 3)), (4, 2))


@pytest.mark.parametrize("name", ["rbf", "matern32"])
def test_loo_weights_equal_explicit_gp_regression(name):
    K = np.asarray(TemporalKernel(name, 0.15, 1.3).gram(T), dtype=np.float64)
    jitter = 1e-4
    Kj = K + jitter * np.mean(np.diag(K)) * np.eye(T.size)
    C = np.asarray(loo_weights(K, jitter), dtype=np.float64)
    assert np.all(np.diag(C) == 0)
    for l in range(T.size):
        rest = [j for j in range(T.size) if j != l]
        expected = np.linalg.solve(Kj[np.ix_(rest, rest)], Kj[rest, l])  # k_{l,-l} K_{-l,-l}^{-1}
        np.testing.assert_allclose(C[l, rest], expected, rtol=2e-4, atol=2e-5)
    # The traced path (fixed jitter, float32) gives the same weights.
    C_jit = np.asarray(jax.jit(lambda k: loo_weights(k, jitter))(jnp.asarray(K)))
    np.testing.assert_allclose(C_jit, C, atol=5e-3)


def test_cholesky_with_jitter_warns_on_duplicates_and_raises_when_hopeless():
    K = np.asarray(TemporalKernel("rbf", 0.1).gram(np.array([0.0, 0.3, 0.3, 0.9])), dtype=np.float64)
    with pytest.warns(RuntimeWarning, match="needed relative jitter"):
        L = cholesky_with_jitter(K, jitter=0.0)
    assert np.isfinite(L).all()
    with pytest.raises(NumericalError, match="identical or nearly identical"):
        cholesky_with_jitter(K, jitter=0.0, max_tries=1)
    with pytest.raises(NumericalError, match="not positive definite"):
        cholesky_with_jitter(-np.eye(3), jitter=1e-5, max_tries=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a well-posed matrix needs no extra jitter, hence no warning
        L = cholesky_with_jitter(np.asarray(TemporalKernel("rbf", 0.1).gram(T)), 1e-5)
    assert np.allclose(np.tril(L), L)


def test_cholesky_rejects_bad_input():
    with pytest.raises(InputError, match="K:"):
        cholesky_with_jitter(np.zeros((3, 2)))
    with pytest.raises(InputError, match="symmetric"):
        cholesky_with_jitter(np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(InputError, match="jitter"):
        cholesky_with_jitter(np.eye(2), jitter=-1.0)
    with pytest.raises(NumericalError, match="non-finite"):
        cholesky_with_jitter(np.array([[1.0, np.nan], [np.nan, 1.0]]))


def test_cholesky_jittered_in_jit_matches_concrete_factor():
    K = np.asarray(TemporalKernel("rbf", 0.1).gram(T), dtype=np.float64)
    L_np = cholesky_with_jitter(K, 1e-4)
    L_jit = np.asarray(jax.jit(lambda k: cholesky_jittered(k, 1e-4))(jnp.asarray(K)))
    np.testing.assert_allclose(L_jit, L_np, atol=1e-4)
    kernel = TemporalKernel("matern52", 0.3)
    L_traced = jax.jit(lambda t: time_cholesky(kernel, t, 1e-5))(jnp.asarray(T))
    np.testing.assert_allclose(np.asarray(L_traced), np.asarray(time_cholesky(kernel, T, 1e-5)), atol=1e-4)


def test_fit_lengthscale_recovers_known_lengthscale():
    name, ell = "rbf", 0.12
    true = TemporalKernel(name, ell, 2.5)
    t = np.sort(np.random.default_rng(0).uniform(0, 1, 25))
    # Same jitter (nugget) as the fit, so that the model is exactly right.
    L = cholesky_with_jitter(np.asarray(true.gram(t), dtype=np.float64), 1e-5)
    # 40 trajectories x 3 x 4 entries = 480 independent series, plus a per-entry offset.
    z = np.asarray(gp_noise(jax.random.key(7), L, (25, 40, 3, 4)), dtype=np.float64)
    seqs = np.moveaxis(z, 0, 1) + np.arange(12.0).reshape(3, 4)
    fitted = fit_lengthscale(seqs, t, TemporalKernel(name, 0.5, 1.0))
    assert fitted.name == name
    assert abs(fitted.lengthscale / ell - 1) < 0.15
    assert abs(fitted.variance / 2.5 - 1) < 0.15


def test_fit_lengthscale_rejects_bad_input():
    t = np.linspace(0, 1, 5)
    with pytest.raises(InputError, match="sequences"):
        fit_lengthscale(np.zeros((2, 4, 3)), t)
    with pytest.raises(InputError, match="sequences"):
        fit_lengthscale(np.full((2, 5, 3), np.nan), t)
    with pytest.raises(InputError, match="constant"):
        fit_lengthscale(np.ones((2, 5, 3)), t)
    with pytest.raises(InputError, match="duplicate"):
        fit_lengthscale(np.zeros((2, 5, 3)), np.array([0, 0.2, 0.2, 0.5, 1.0]))
