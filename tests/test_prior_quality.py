"""benchmarks.prior_quality: its statistics on known inputs (no prior, no training)."""

from __future__ import annotations

import numpy as np

from benchmarks.prior_quality import bootstrap_reference, compare, energy_distance, radial_spectrum, summary_text


def _fields(n=12, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6, 8, 10, 3)).cumsum(axis=1) + shift  # (n, T, lat, lon, depth), correlated in time


def test_identical_sets_give_zero_distances_and_matching_statistics():
    x = _fields()
    stats = compare(x, x.copy())
    assert stats["mean_rel_error"] == 0.0 and stats["std_rel_error"] == 0.0
    assert stats["spectrum_rel_error"] == 0.0 and stats["energy_distance"] == 0.0
    for d in stats["autocorr"].values():
        assert d["samples"] == d["test"] and d["abs_error"] == 0.0
    assert stats["autocorr"]["lag1"]["test"] > stats["autocorr"]["lag3"]["test"] > 0.3  # a random walk remembers
    cores = compare(x[..., 0], x[..., 0], frames=False)
    assert cores["mean_rel_error"] == 0.0 and "energy_distance" not in cores


def test_different_sets_are_told_apart_beyond_sampling_noise():
    a, b = _fields(seed=1), _fields(seed=2, shift=3.0)
    stats = compare(a, b)
    ref = bootstrap_reference(b, n_samples=12, n_boot=20, rng=np.random.default_rng(0))
    assert stats["mean_rel_error"] > ref["mean_rel_error"]["p95"]
    assert stats["energy_distance"] > ref["energy_distance"]["p95"] > 0.0
    assert set(ref) >= {"mean_rel_error", "std_rel_error", "spectrum_rel_error", "energy_distance",
                        "autocorr_lag1_abs_error"}
    q = {"draws": 12, "n_test": 12, "test_projection_vrmse": 0.0, "frames": stats, "frames_reference": ref,
         "cores": compare(a[..., 0], b[..., 0], frames=False),
         "cores_reference": bootstrap_reference(b[..., 0], 12, 5, np.random.default_rng(1), frames=False)}
    assert "energy_distance" in summary_text(q)


def test_energy_distance_and_spectrum_on_known_cases():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 3))
    assert energy_distance(a, a) == 0.0
    # two point masses at distance d: 2d - 0 - 0
    assert np.isclose(energy_distance(np.zeros((4, 2)), np.full((5, 2), [3.0, 4.0])), 10.0)
    # a plane wave of wavenumber 3 along lat, random amplitude per sample: all power at k = 3
    lat = np.arange(16)
    wave = np.cos(2 * np.pi * 3 * lat / 16)[:, None] * np.ones((16, 12))
    x = rng.normal(size=(8, 2, 1, 1)) * wave[None, None]
    p = radial_spectrum(x)
    assert np.argmax(p) == 3 and p[3] > 1e3 * np.delete(p, 3).max()
