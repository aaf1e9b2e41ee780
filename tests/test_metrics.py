import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdift_prob.errors import InputError
from sdift_prob.metrics import (
    VARIOGRAM_MAX_POINTS,
    crps_ensemble,
    energy_score,
    interval_bounds,
    interval_coverage,
    mae,
    pit_values,
    rmse,
    summarise,
    variogram_score,
    vrmse,
)


def test_vrmse_hand_values():
    u = np.array([[1.0, 2.0], [3.0, 6.0]])  # mean 3, variance (4 + 1 + 0 + 9) / 4 = 3.5
    e = np.array([[1.0, 2.0], [4.0, 4.0]])  # mse (0 + 0 + 1 + 4) / 4 = 1.25
    assert vrmse(u, e, eps=0.0) == pytest.approx(np.sqrt(1.25 / 3.5), rel=1e-15)
    assert vrmse(u, np.full_like(u, u.mean())) == pytest.approx(1.0, abs=1e-7)  # climatology scores 1
    assert vrmse(u, u) == 0.0
    assert vrmse(jnp.asarray(u), jnp.asarray(e), eps=0.0) == pytest.approx(np.sqrt(1.25 / 3.5), rel=1e-6)


def test_vrmse_batched_uses_each_trajectorys_own_mean():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(3, 4, 5)) + np.array([0.0, 100.0, -50.0])[:, None, None]
    e = u + rng.normal(size=u.shape) * 0.1
    got = vrmse(u, e, batched=True)
    assert got.shape == (3,)
    for b in range(3):
        assert got[b] == pytest.approx(vrmse(u[b], e[b]), rel=1e-14)
    means = u.mean(axis=(1, 2), keepdims=True) * np.ones_like(u)
    np.testing.assert_allclose(vrmse(u, means, batched=True), 1.0, atol=1e-6)
    # Constant field: eps keeps it finite.
    assert vrmse(np.ones((2, 2)), np.zeros((2, 2)), eps=1e-7) == pytest.approx(np.sqrt(1 / 1e-7))


def test_rmse_mae():
    u = np.array([[0.0, 0.0], [0.0, 0.0]])
    e = np.array([[3.0, -4.0], [1.0, 1.0]])
    assert rmse(u, e) == pytest.approx(np.sqrt((9 + 16 + 1 + 1) / 4))
    assert mae(u, e) == pytest.approx((3 + 4 + 1 + 1) / 4)
    np.testing.assert_allclose(rmse(u, e, batched=True), [np.sqrt(12.5), 1.0])
    np.testing.assert_allclose(mae(u, e, batched=True), [3.5, 1.0])


def test_crps_hand_values():
    # Two members {0, 2}, truth 0.5: E|X - y| = (0.5 + 1.5)/2 = 1, E|X - X'| = (0+2+2+0)/4 = 1.
    assert crps_ensemble(np.array(0.5), np.array([0.0, 2.0])) == pytest.approx(0.5)
    # One member: CRPS is the absolute error.
    assert crps_ensemble(np.array([1.0, -1.0]), np.array([[3.0, 0.0]])) == pytest.approx((2.0 + 1.0) / 2)
    per = crps_ensemble(np.array([0.5, 5.0]), np.array([[0.0, 4.0], [2.0, 6.0], [1.0, 5.0]]), reduce="none")
    # Entry 0: draws {0,2,1}, y=.5: E|X-y| = (.5+1.5+.5)/3; pairs sum = 2*(1+2+1) = 8 -> E|X-X'| = 8/9.
    # Entry 1: draws {4,6,5}, y=5 -> the same spread, E|X-y| = 2/3.
    np.testing.assert_allclose(per, [2.5 / 3 - 4 / 9, 2 / 3 - 4 / 9])


def test_crps_matches_pairwise_definition():
    rng = np.random.default_rng(1)
    draws = rng.normal(size=(7, 3, 2))
    y = rng.normal(size=(3, 2))
    brute = np.abs(draws - y).mean(0) - 0.5 * np.abs(draws[:, None] - draws[None]).mean((0, 1))
    np.testing.assert_allclose(crps_ensemble(y, draws, reduce="none"), brute, rtol=1e-12)


def test_crps_of_calibrated_gaussian_matches_closed_form():
    # CRPS of N(0, 1) at y = 0 is (sqrt(2) - 1)/sqrt(pi); large ensemble approaches it.
    draws = np.random.default_rng(2).normal(size=(20_000, 1))
    assert crps_ensemble(np.zeros(1), draws) == pytest.approx((np.sqrt(2) - 1) / np.sqrt(np.pi), abs=0.01)


def test_interval_coverage_hand_values():
    draws = np.arange(11.0)[:, None] * np.ones((1, 4))  # 0..10 at every entry
    truth = np.array([5.0, 2.4, 8.0, 10.5])
    # 50% interval: [2.5, 7.5]; 90%: [0.5, 9.5].
    cov = interval_coverage(truth, draws, levels=(0.5, 0.9), method="quantile")
    assert cov == {0.5: 0.25, 0.9: 0.75}
    assert interval_coverage(truth, draws, levels=0.5, method="quantile") == {0.5: 0.25}
    # Predictive interval: mean 5 ± t_10(0.95) * s * sqrt(1 + 1/11), s = sqrt(11) (ddof 1).
    from scipy.stats import t

    half = t.ppf(0.95, 10) * np.sqrt(11.0) * np.sqrt(1 + 1 / 11)
    lo, hi = interval_bounds(draws, 0.9)
    np.testing.assert_allclose(hi, 5 + half)
    np.testing.assert_allclose(lo, 5 - half)
    assert interval_coverage(truth, draws, levels=(0.9,)) == {0.9: float(np.mean(np.abs(truth - 5) <= half))}


@pytest.mark.parametrize("n_draws", [4, 8, 32])
def test_predictive_intervals_are_calibrated_for_any_number_of_draws(n_draws):
    rng = np.random.default_rng(n_draws)
    mu = rng.normal(size=20_000)
    truth = mu + rng.normal(size=20_000)
    draws = mu + rng.normal(size=(n_draws, 20_000))
    cov = interval_coverage(truth, draws, levels=(0.5, 0.9))
    assert cov[0.5] == pytest.approx(0.5, abs=0.015) and cov[0.9] == pytest.approx(0.9, abs=0.01)
    # the empirical quantiles of few draws are too narrow for the same calibrated ensemble
    q = interval_coverage(truth, draws, levels=(0.9,), method="quantile")[0.9]
    assert q < 0.9 - 0.02 if n_draws <= 8 else q < 0.9
    # the fair CRPS does not depend on the ensemble size (the standard one does)
    big = mu + rng.normal(size=(400, 20_000))
    assert crps_ensemble(truth, draws, fair=True) == pytest.approx(crps_ensemble(truth, big, fair=True), rel=0.02)
    assert crps_ensemble(truth, draws) > crps_ensemble(truth, draws, fair=True)


def test_coverage_and_pit_of_calibrated_ensemble():
    rng = np.random.default_rng(3)
    mu = rng.normal(size=4000)
    truth = mu + rng.normal(size=4000)
    draws = mu + rng.normal(size=(200, 4000))
    cov = interval_coverage(truth, draws, levels=(0.5, 0.9))
    assert cov[0.5] == pytest.approx(0.5, abs=0.03) and cov[0.9] == pytest.approx(0.9, abs=0.02)
    pit = pit_values(truth, draws, key=jax.random.key(0))
    hist = np.histogram(pit, bins=10, range=(0, 1))[0] / pit.size
    np.testing.assert_allclose(hist, 0.1, atol=0.025)


def test_pit_hand_values_and_ties():
    pit = pit_values(np.array([0.5, -1.0, 9.0]), np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), key=jax.random.key(1))
    # Ranks: 0.5 is above one of {0, 1}: (1 + U)/3; -1 below both: U/3; 9 above both: (2 + U)/3.
    assert 1 / 3 <= pit[0] <= 2 / 3 and 0 <= pit[1] <= 1 / 3 and 2 / 3 <= pit[2] <= 1
    # Ties are spread uniformly over the tied ranks: truth equal to every draw -> Uniform(0, 1).
    tied = pit_values(np.zeros(20_000), np.zeros((3, 20_000)), key=jax.random.key(2))
    assert tied.mean() == pytest.approx(0.5, abs=0.01) and tied.min() >= 0 and tied.max() <= 1
    np.testing.assert_allclose(np.histogram(tied, bins=4, range=(0, 1))[0] / tied.size, 0.25, atol=0.02)
    # Reproducible by key.
    a = pit_values(np.zeros(5), np.zeros((3, 5)), key=jax.random.key(4))
    np.testing.assert_array_equal(a, pit_values(np.zeros(5), np.zeros((3, 5)), key=jax.random.key(4)))


def test_summarise():
    assert summarise([1.0, 2.0, 3.0, 6.0]) == pytest.approx((3.0, np.std([1, 2, 3, 6])))
    assert summarise(np.array([1.0, 3.0]), ddof=1) == pytest.approx((2.0, np.sqrt(2.0)))
    with pytest.raises(InputError, match="values"):
        summarise([1.0], ddof=1)
    with pytest.raises(InputError, match="values.*1 NaN"):
        summarise([1.0, np.nan])


@pytest.mark.parametrize("fn", [vrmse, rmse, mae])
def test_point_metrics_reject(fn):
    with pytest.raises(InputError, match=r"estimate: expected the shape of truth \(2, 2\)"):
        fn(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(InputError, match="truth.*1 infinite"):
        fn(np.array([[np.inf, 1.0]]), np.zeros((1, 2)))
    with pytest.raises(InputError, match="truth.*all 2 entries NaN"):
        fn(np.array([[np.nan, np.nan]]), np.zeros((1, 2)))
    with pytest.raises(InputError, match="estimate.*where the truth is not missing.*1 NaN"):
        fn(np.array([[0.0, 1.0]]), np.array([[np.nan, 1.0]]))
    with pytest.raises(InputError, match="estimate.*1 NaN/inf"):
        fn(np.zeros((1, 2)), np.array([[np.inf, 1.0]]))
    with pytest.raises(InputError, match="truth.*batched"):
        fn(np.zeros(3), np.zeros(3), batched=True)


def test_ensemble_metrics_reject():
    for fn in (crps_ensemble, interval_coverage, pit_values):
        with pytest.raises(InputError, match=r"draws: expected shape \(S, \*\(3,\)\)"):
            fn(np.zeros(3), np.zeros((3, 4)))
        with pytest.raises(InputError, match="draws.*1 NaN"):
            fn(np.zeros(2), np.array([[0.0, np.nan]]))
    with pytest.raises(InputError, match="levels"):
        interval_coverage(np.zeros(2), np.zeros((3, 2)), levels=(0.5, 1.0))
    with pytest.raises(InputError, match="reduce"):
        crps_ensemble(np.zeros(2), np.zeros((3, 2)), reduce="sum")
    with pytest.raises(InputError, match="key"):
        pit_values(np.zeros(2), np.zeros((3, 2)), key=0)
    with pytest.raises(InputError, match="eps"):
        vrmse(np.zeros(2), np.zeros(2), eps=-1.0)


# -- missing truth (NaN) is masked -----------------------------------------------------------------
def test_point_metrics_mask_missing_truth():
    rng = np.random.default_rng(3)
    u = rng.normal(size=(2, 5, 6))
    e = u + 0.3 * rng.normal(size=u.shape)
    hole = rng.uniform(size=u.shape) < 0.3
    u_nan = np.where(hole, np.nan, u)
    e_nan = np.where(hole, np.nan, e)  # NaN estimates where the truth is missing are fine too
    keep = ~hole
    for est in (e, e_nan):
        assert vrmse(u_nan, est) == pytest.approx(vrmse(u[keep], e[keep]), rel=1e-12)
        assert rmse(u_nan, est) == pytest.approx(rmse(u[keep], e[keep]), rel=1e-12)
        assert mae(u_nan, est) == pytest.approx(mae(u[keep], e[keep]), rel=1e-12)
    per = vrmse(u_nan, e, batched=True)
    for b in range(2):
        assert per[b] == pytest.approx(vrmse(u[b][keep[b]], e[b][keep[b]]), rel=1e-12)
    with pytest.raises(InputError, match="trajectories \\[1\\] all NaN"):
        vrmse(np.stack([u[0], np.full(u[1].shape, np.nan)]), e, batched=True)


def test_ensemble_metrics_mask_missing_truth():
    rng = np.random.default_rng(4)
    y = rng.normal(size=(4, 7))
    x = y + rng.normal(size=(30, 4, 7))
    hole = np.zeros(y.shape, bool)
    hole[1, 2:5] = True
    y_nan = np.where(hole, np.nan, y)
    keep = ~hole
    assert crps_ensemble(y_nan, x) == pytest.approx(crps_ensemble(y[keep], x[:, keep]), rel=1e-12)
    per = crps_ensemble(y_nan, x, reduce="none")
    assert np.isnan(per[hole]).all() and np.isfinite(per[keep]).all()
    cov = interval_coverage(y_nan, x, (0.5, 0.9))
    ref = interval_coverage(y[keep], x[:, keep], (0.5, 0.9))
    assert cov == pytest.approx(ref)
    pit = pit_values(y_nan, x, key=jax.random.key(1))
    assert np.isnan(pit[hole]).all() and ((pit[keep] >= 0) & (pit[keep] <= 1)).all()
    with pytest.raises(InputError, match="draws.*where the truth is not missing"):
        crps_ensemble(y_nan, np.where(hole, 0.0, np.nan) + x)


def test_gaussian_crps_and_coverage_agree_with_large_ensembles():
    from sdift_prob.metrics import crps_gaussian, gaussian_interval_coverage

    rng = np.random.default_rng(0)
    truth = rng.standard_normal(400)
    mean = 0.3 * rng.standard_normal(400)
    std = np.full(400, 1.2)
    draws = mean + std * rng.standard_normal((4000, 400))
    assert abs(crps_gaussian(truth, mean, std) - crps_ensemble(truth, draws)) < 0.01
    cov = gaussian_interval_coverage(truth, mean, std, levels=(0.5, 0.9))
    ens = interval_coverage(truth, draws, levels=(0.5, 0.9))
    for level in (0.5, 0.9):
        assert abs(cov[level] - ens[level]) < 0.03
    # point mass limit: CRPS -> |y - m|
    np.testing.assert_allclose(crps_gaussian(np.array([1.0]), np.array([0.0]), np.array([1e-9])), 1.0, atol=1e-6)
    with pytest.raises(InputError, match="std"):
        crps_gaussian(truth, mean, np.zeros(400))


# -- multivariate scores (scoringrules) -------------------------------------------------------------
# One frame of two points; draws (0,0), (1,0), (2,0), (3,4), truth (1.5, 3).
TWO_POINTS_DRAWS = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 4.0]])[:, None, :]  # (S=4, T=1, D=2)
TWO_POINTS_TRUTH = np.array([[1.5, 3.0]])


def test_energy_and_variogram_scores_hand_values():
    # ES (fair): E||X - y|| = (sqrt(11.25) + 2 sqrt(9.25) + sqrt(3.25)) / 4; distinct pairs' distances
    # 1, 2, 5, 1, sqrt(20), sqrt(17), averaged over the 6 unordered pairs.
    e1 = (np.sqrt(11.25) + 2 * np.sqrt(9.25) + np.sqrt(3.25)) / 4
    e2 = (1 + 2 + 5 + 1 + np.sqrt(20) + np.sqrt(17)) / 6
    assert energy_score(TWO_POINTS_TRUTH, TWO_POINTS_DRAWS) == pytest.approx(e1 - 0.5 * e2, rel=1e-12)
    # VS (p = 0.5): two ordered pairs, each (mean_s |x_s0 - x_s1|^0.5 - |1.5 - 3|^0.5)^2 with
    # |x_s0 - x_s1| = 0, 1, 2, 1.
    vs = 2 * ((0 + 1 + np.sqrt(2) + 1) / 4 - np.sqrt(1.5)) ** 2
    assert variogram_score(TWO_POINTS_TRUTH, TWO_POINTS_DRAWS) == pytest.approx(vs, rel=1e-12)
    # p = 1: |x diffs| 0, 1, 2, 1 -> mean 1; |y diff| 1.5.
    assert variogram_score(TWO_POINTS_TRUTH, TWO_POINTS_DRAWS, p=1.0) == pytest.approx(2 * 0.5**2, rel=1e-12)


def test_energy_score_of_one_point_is_the_fair_crps_and_frames_are_averaged():
    rng = np.random.default_rng(0)
    truth, draws = rng.normal(size=(5, 1)), rng.normal(size=(7, 5, 1))
    per_frame = energy_score(truth, draws, reduce="none")
    assert per_frame.shape == (5,)
    np.testing.assert_allclose(per_frame, crps_ensemble(truth, draws, fair=True, reduce="none")[:, 0], rtol=1e-12)
    assert energy_score(truth, draws) == pytest.approx(per_frame.mean(), rel=1e-12)
    np.testing.assert_array_equal(variogram_score(truth, draws, reduce="none"), 0.0)  # no pair of points


def test_crps_ensemble_agrees_with_scoringrules():
    import scoringrules as sr

    rng = np.random.default_rng(1)
    truth, draws = rng.normal(size=(3, 4)), rng.gamma(2.0, size=(9, 3, 4))
    for fair, estimator in ((True, "fair"), (False, "nrg")):
        ours = crps_ensemble(truth, draws, fair=fair, reduce="none")
        theirs = sr.crps_ensemble(truth, draws, m_axis=0, estimator=estimator, backend="numpy")
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)
    # One draw: both scores are |x - y| (the fair estimator's S - 1 pairs are none).
    for fair in (False, True):
        np.testing.assert_allclose(crps_ensemble(truth, draws[:1], fair=fair, reduce="none"),
                                   np.abs(draws[0] - truth), rtol=1e-12)


def gaussian_frames(n_frames: int, n_draws: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth frames and a calibrated ensemble of a smooth 1-D Gaussian field (30 points,
    squared-exponential covariance, length 0.15), and the same draws with each point's draws
    shuffled independently: identical marginal ensembles, spatial correlation destroyed."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, 30)
    cov = np.exp(-0.5 * ((x[:, None] - x[None, :]) / 0.15) ** 2) + 1e-8 * np.eye(x.size)
    chol = np.linalg.cholesky(cov)
    truth = rng.normal(size=(n_frames, x.size)) @ chol.T
    draws = rng.normal(size=(n_draws, n_frames, x.size)) @ chol.T
    shuffled = np.take_along_axis(draws, rng.permuted(np.broadcast_to(np.arange(n_draws)[:, None, None], draws.shape),
                                                      axis=0), axis=0)
    return truth, draws, shuffled


def test_wrong_spatial_correlation_is_seen_by_multivariate_scores_not_by_crps():
    truth, right, wrong = gaussian_frames(n_frames=200, n_draws=16, seed=2)
    # Per entry the two ensembles hold the same 16 numbers: every marginal score is the same.
    assert crps_ensemble(truth, wrong, fair=True) == pytest.approx(crps_ensemble(truth, right, fair=True), rel=1e-12)
    assert interval_coverage(truth, wrong, method="quantile") == interval_coverage(truth, right, method="quantile")
    es_right, es_wrong = energy_score(truth, right, reduce="none"), energy_score(truth, wrong, reduce="none")
    vs_right, vs_wrong = variogram_score(truth, right, reduce="none"), variogram_score(truth, wrong, reduce="none")
    # Means over 200 frames, and more than 3 standard errors of the per-frame differences apart.
    for good, bad in ((es_right, es_wrong), (vs_right, vs_wrong)):
        diff = bad - good
        assert diff.mean() > 3 * diff.std(ddof=1) / np.sqrt(diff.size), (good.mean(), bad.mean())


def test_multivariate_scores_leave_out_missing_truth_and_subsample_the_same_points_in_every_frame():
    truth, draws, _ = gaussian_frames(n_frames=4, n_draws=6, seed=3)
    masked = truth.copy()
    masked[:, 5:9] = np.nan  # a land mask: same points missing in every frame
    masked[2] = np.nan  # a frame with no truth at all
    keep = np.r_[0:5, 9:30]
    for score in (energy_score, variogram_score):
        per_frame = score(masked, draws, reduce="none")
        np.testing.assert_allclose(per_frame[[0, 1, 3]], score(truth[:, keep], draws[:, :, keep],
                                                               reduce="none")[[0, 1, 3]], rtol=1e-12)
        assert np.isnan(per_frame[2])
        assert score(masked, draws) == pytest.approx(np.nanmean(per_frame), rel=1e-12)
        # Draws where the truth is missing do not count, however large.
        assert score(masked, np.where(np.isnan(masked), 1e9, draws)) == pytest.approx(score(masked, draws), rel=1e-12)
    # Subsampling: identical frames score identically, so every frame got the same points; the
    # seed picks them; max_points >= the frame size is the whole frame.
    same = np.repeat(truth[:1], 3, axis=0)
    same_draws = np.repeat(draws[:, :1], 3, axis=1)
    for score in (energy_score, variogram_score):
        per_frame = score(same, same_draws, max_points=7, seed=4, reduce="none")
        np.testing.assert_allclose(per_frame, per_frame[0], rtol=1e-12)
        assert score(same, same_draws, max_points=7, seed=4) == score(same, same_draws, max_points=7, seed=4)
        assert score(same, same_draws, max_points=7, seed=4) != score(same, same_draws, max_points=7, seed=5)
        assert score(truth, draws, max_points=30) == pytest.approx(score(truth, draws, max_points=None), rel=1e-12)
    # The default variogram subsample is VARIOGRAM_MAX_POINTS points.
    rng = np.random.default_rng(5)
    n = VARIOGRAM_MAX_POINTS + 50
    big_truth, big_draws = rng.normal(size=(1, n)), rng.normal(size=(3, 1, n))
    default = variogram_score(big_truth, big_draws)
    assert default == variogram_score(big_truth, big_draws, max_points=VARIOGRAM_MAX_POINTS, seed=0)
    assert default != pytest.approx(variogram_score(big_truth, big_draws, max_points=None), rel=1e-3)


@pytest.mark.parametrize("score", [energy_score, variogram_score])
def test_multivariate_score_arguments_are_checked_by_name(score):
    truth, draws = TWO_POINTS_TRUTH, TWO_POINTS_DRAWS
    for bad in (1, 0, True, 2.5, "all"):
        with pytest.raises(InputError, match="max_points"):
            score(truth, draws, max_points=bad)
    for bad in (-1, 1.5, True):
        with pytest.raises(InputError, match="seed"):
            score(truth, draws, seed=bad)
    with pytest.raises(InputError, match="reduce"):
        score(truth, draws, reduce="sum")
    with pytest.raises(InputError, match="truth.*frames"):
        score(truth[0], draws[:, 0])
    with pytest.raises(InputError, match="draws"):
        score(truth, draws[..., :1])
    with pytest.raises(InputError, match="draws"):
        score(truth, np.where(draws == 0.0, np.inf, draws))


def test_energy_score_needs_two_draws_and_variogram_score_a_positive_order():
    with pytest.raises(InputError, match="draws.*2 draws"):
        energy_score(TWO_POINTS_TRUTH, TWO_POINTS_DRAWS[:1])
    for bad in (0, -0.5, np.inf, np.nan, True, "0.5"):
        with pytest.raises(InputError, match="p:"):
            variogram_score(TWO_POINTS_TRUTH, TWO_POINTS_DRAWS, p=bad)
