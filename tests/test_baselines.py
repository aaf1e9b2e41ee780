"""Classical baselines: linear interpolation, kriging (GPJax), training-mean field."""

import jax
import numpy as np
import pytest

from sdift_prob.baselines import fit_kriging, linear_interpolation, training_mean_field
from sdift_prob.data.observations import ObservationSet
from sdift_prob.errors import InputError


def _obs(coords, time, values, noise=0.0):
    return ObservationSet(value=values, time=time, coords=coords, space_dims=("x", "y"),
                          noise_scale=np.full(len(values), noise), noise_model="gaussian")


def test_linear_interpolation_is_exact_for_a_linear_field():
    rng = np.random.default_rng(0)
    times = np.array([0.0, 1.0, 2.0])
    gx, gy = np.linspace(0, 10, 11), np.linspace(-1, 1, 5)
    # corners + interior points so the hull covers the grid; time stamp 1 has no data
    pts = np.concatenate([np.array([[0, -1], [0, 1], [10, -1], [10, 1]]), rng.uniform([0, -1], [10, 1], (20, 2))])
    f = lambda p, t: 2.0 * p[:, 0] - 3.0 * p[:, 1] + t  # noqa: E731
    coords = np.concatenate([pts, pts])
    time = np.repeat([0.0, 2.0], len(pts))
    obs = _obs(coords, time, np.concatenate([f(pts, 0.0), f(pts, 2.0)]))
    est = linear_interpolation(obs, times, [gx, gy])
    grid = np.stack(np.meshgrid(gx, gy, indexing="ij"), -1).reshape(-1, 2)
    assert est.shape == (3, 11, 5)
    np.testing.assert_allclose(est[0].ravel(), f(grid, 0.0), atol=1e-9)
    np.testing.assert_allclose(est[2].ravel(), f(grid, 2.0), atol=1e-9)
    np.testing.assert_allclose(est[1], est[0])  # nearest observed time stamp (tie -> earlier)


def test_linear_interpolation_errors():
    obs = _obs(np.zeros((3, 2)), np.zeros(3), np.ones(3))
    with pytest.raises(InputError, match="obs"):
        linear_interpolation(obs, np.array([5.0]), [np.arange(3.0), np.arange(2.0)])
    with pytest.raises(InputError, match="grids"):
        linear_interpolation(obs, np.array([0.0]), [np.arange(3.0)])
    with pytest.raises(InputError, match="times"):
        linear_interpolation(obs, np.array([np.nan]), [np.arange(3.0), np.arange(2.0)])


def test_training_mean_field():
    a = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_allclose(training_mean_field(a), a.mean(axis=0))
    with pytest.raises(InputError, match="fields"):
        training_mean_field(np.zeros((3, 4)))


@pytest.fixture(scope="module")
def smooth_problem():
    """A smooth space-time field observed at 300 random noisy points."""
    rng = np.random.default_rng(1)
    n = 300
    coords = rng.uniform(0, 1, (n, 2))
    time = rng.choice(np.linspace(0, 1, 6), n)
    field = lambda c, t: np.sin(3 * c[:, 0]) * np.cos(2 * c[:, 1]) + 0.5 * t  # noqa: E731
    noise = 0.05
    values = field(coords, time) + noise * rng.standard_normal(n)
    return _obs(coords, time, values, noise), field, noise


@pytest.fixture(scope="module")
def rbf_model(smooth_problem):
    return fit_kriging(smooth_problem[0], key=jax.random.key(0), kernel="rbf")


def test_kriging_recovers_a_smooth_field_with_calibrated_intervals(smooth_problem, rbf_model):
    obs, field, noise = smooth_problem
    model = rbf_model
    assert model.n_inducing == 0 and model.n_points == 300
    assert 0.5 * noise < model.noise_std < 2 * noise  # noise level recovered by marginal likelihood
    rng = np.random.default_rng(2)
    c = rng.uniform(0.1, 0.9, (400, 2))
    t = rng.choice(np.linspace(0, 1, 6), 400)
    mean, std = model.predict(c, t)
    truth = field(c, t)
    err = mean - truth
    assert np.sqrt(np.mean(err**2)) < 0.05
    # the latent field's 90% intervals cover about 90% of the truth
    cover = np.mean(np.abs(err) <= 1.645 * std)
    assert 0.75 < cover <= 1.0
    # the mean-only path gives the same mean
    mean_only, none = model.predict(c, t, return_std=False)
    assert none is None
    np.testing.assert_allclose(mean_only, mean, rtol=1e-8, atol=1e-8)


def test_kriging_mean_matches_closed_form_gp_regression(smooth_problem, rbf_model):
    obs, _, _ = smooth_problem
    model = rbf_model
    # Closed form with the fitted hyperparameters: m + k*ᵀ (K + σ² I)⁻¹ (y - m), RBF product.
    x = np.column_stack([obs.coords, obs.time])
    ls = np.asarray(model.lengthscales)

    def k(a, b):
        d2 = (((a[:, None, :] - b[None, :, :]) / ls) ** 2).sum(-1)
        return model.variance * np.exp(-0.5 * d2)

    rng = np.random.default_rng(3)
    xs = np.column_stack([rng.uniform(0, 1, (50, 2)), rng.choice(np.linspace(0, 1, 6), 50)])
    K = k(x, x) + model.noise_std**2 * np.eye(len(x))
    alpha = np.linalg.solve(K, obs.value - model.mean)
    expected = model.mean + k(xs, x) @ alpha
    var = model.variance - np.einsum("ij,ji->i", k(xs, x), np.linalg.solve(K, k(x, xs)))
    mean, std = model.predict(xs[:, :2], xs[:, 2])
    np.testing.assert_allclose(mean, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(std, np.sqrt(var), rtol=1e-3, atol=1e-4)


def test_kriging_inducing_points_close_to_exact(smooth_problem):
    obs, field, _ = smooth_problem
    exact = fit_kriging(obs, key=jax.random.key(0), kernel="matern52", max_iters=50)
    sparse = fit_kriging(obs, key=jax.random.key(0), kernel="matern52", max_iters=50, max_exact=100,
                         num_inducing=150)
    assert sparse.n_inducing == 150
    grid = [np.linspace(0.1, 0.9, 7), np.linspace(0.1, 0.9, 5)]
    m_exact, _ = exact.predict_grid(np.array([0.0, 0.4]), grid, return_std=False)
    m_sparse, s_sparse = sparse.predict_grid(np.array([0.0, 0.4]), grid)
    assert m_sparse.shape == (2, 7, 5) and np.isfinite(s_sparse).all()
    assert np.sqrt(np.mean((m_exact - m_sparse) ** 2)) < 0.05


def test_kriging_bad_input(smooth_problem):
    obs, _, _ = smooth_problem
    with pytest.raises(InputError, match="kernel"):
        fit_kriging(obs, key=jax.random.key(0), kernel="cubic")
    with pytest.raises(InputError, match="n_fit"):
        fit_kriging(obs, key=jax.random.key(0), n_fit=2)
    with pytest.raises(InputError, match="obs"):
        fit_kriging(obs.subset(np.arange(obs.n_points) < 2), key=jax.random.key(0))
    with pytest.raises(InputError, match="obs"):
        fit_kriging("points", key=jax.random.key(0))


def test_kriging_grid_mean_uses_separability_exactly(smooth_problem, rbf_model):
    grid = [np.linspace(0.0, 1.0, 6), np.linspace(0.2, 0.8, 4)]
    times = np.array([0.0, 0.2, 1.0])
    mean, std = rbf_model.predict_grid(times, grid)
    pts = np.stack(np.meshgrid(*grid, indexing="ij"), -1).reshape(-1, 2)
    m_pts, s_pts = rbf_model.predict(np.tile(pts, (3, 1)), np.repeat(times, len(pts)))
    np.testing.assert_allclose(mean.ravel(), m_pts, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(std.ravel(), s_pts, rtol=1e-8, atol=1e-8)


def test_kriging_restarts_when_the_optimiser_ends_in_a_non_finite_region(smooth_problem, monkeypatch):
    """L-BFGS can end where the Cholesky factorisation fails (seen on ocean data with Laplace
    noise 0.3): the fit restarts from the next start instead of giving up."""
    import gpjax as gpx

    import sdift_prob.baselines as baselines

    obs, field, _ = smooth_problem
    real_fit, starts = gpx.fit_scipy, []

    def first_start_fails(*, model, **kw):
        starts.append(float(np.asarray(model.likelihood.obs_stddev.unwrap()
                                       if hasattr(model.likelihood.obs_stddev, "unwrap")
                                       else model.likelihood.obs_stddev)))
        fitted, history = real_fit(model=model, **kw)
        return (fitted, np.full_like(np.asarray(history), np.nan)) if len(starts) == 1 else (fitted, history)

    monkeypatch.setattr(gpx, "fit_scipy", first_start_fails)
    model = fit_kriging(obs, key=jax.random.key(0))
    np.testing.assert_allclose(starts, [s[1] for s in baselines._KRIGING_STARTS[:2]])
    assert np.isfinite(model.log_marginal_likelihood)
    mean, std = model.predict(obs.coords, obs.time)
    assert np.sqrt(np.mean((mean - field(obs.coords, obs.time)) ** 2)) < 0.1

    monkeypatch.setattr(gpx, "fit_scipy", lambda *, model, **kw: (model, np.array([np.nan])))
    with pytest.raises(InputError, match="not finite from any starting point"):
        fit_kriging(obs, key=jax.random.key(0))


def test_kriging_joint_draws_follow_the_dense_gaussian_predictive(rbf_model):
    rng = np.random.default_rng(4)
    c = rng.uniform(0.1, 0.9, (12, 2))
    t = np.repeat([0.2, 0.6], 6)
    mean, std = rbf_model.predict(c, t)
    draws = rbf_model.sample(c, t, key=jax.random.key(5), n_samples=4000)
    assert draws.shape == (4000, 12)
    np.testing.assert_allclose(draws.mean(axis=0), mean, atol=4 * std.max() / np.sqrt(4000))
    np.testing.assert_allclose(draws.std(axis=0), std, rtol=0.06)
    # Joint: nearby points at the same time are strongly correlated, as the kernel says.
    corr = np.corrcoef(draws.T)
    near = np.argmin(np.where(np.eye(6, dtype=bool), np.inf, np.linalg.norm(c[:6, None] - c[None, :6], axis=-1)),
                     axis=1)
    assert np.mean([corr[i, near[i]] for i in range(6)]) > 0.3
    same = rbf_model.sample(c, t, key=jax.random.key(5), n_samples=4000)
    np.testing.assert_array_equal(draws, same)
    with pytest.raises(InputError, match="n_samples"):
        rbf_model.sample(c, t, key=jax.random.key(0), n_samples=0)
    with pytest.raises(InputError, match="key"):
        rbf_model.sample(c, t, key=0, n_samples=2)
    with pytest.raises(InputError, match="coords"):
        rbf_model.sample(c[:, :1], t, key=jax.random.key(0), n_samples=2)
