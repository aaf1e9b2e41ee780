"""Tests of sdift_prob.plots: time_series shows the observations of the chosen location only."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import xarray as xr

from sdift_prob import plots
from sdift_prob.data.observations import ObservationSet
from sdift_prob.errors import InputError

matplotlib.use("Agg")

DEPTH = np.array([0.0, 10.0, 20.0, 50.0, 100.0, 200.0])  # uneven, like the ocean grid
LAT = np.array([0.0, 1.0, 2.0])


@pytest.fixture
def field():
    rng = np.random.default_rng(0)
    return xr.DataArray(rng.normal(size=(1, 3, 4, LAT.size, DEPTH.size)), dims=("chain", "draw", "time", "lat", "depth"),
                        coords={"time": [0.0, 1.0, 2.0, 3.0], "lat": LAT, "depth": ("depth", DEPTH, {"units": "m"})},
                        name="field")


def shown(fig) -> np.ndarray:
    """(time, value) of the observations scattered on the figure (empty when none)."""
    import matplotlib.pyplot as plt

    pts = [c.get_offsets() for c in fig.axes[0].collections if c.get_label() == "observations"]
    plt.close(fig)
    return np.asarray(pts[0]) if pts else np.zeros((0, 2))


def obs_at(lat, depth) -> ObservationSet:
    n = len(depth)
    return ObservationSet(value=np.arange(n, dtype=float), time=np.arange(n, dtype=float) % 4,
                          coords=np.stack([np.broadcast_to(lat, n), depth], axis=-1), space_dims=("lat", "depth"))


def test_time_series_shows_only_the_observations_of_that_depth_level(field):
    # At depth 10 the cell is [5, 15]: 10 and 14 belong to it; 16, 20 and 50 are other levels.
    # (One tolerance from the median spacing, 15, showed the 20 m observations too.)
    obs = obs_at(1.0, [10.0, 14.0, 16.0, 20.0, 50.0])
    values = shown(plots.time_series(field, {"lat": 1.0, "depth": 10.0}, obs=obs))[:, 1]
    np.testing.assert_array_equal(np.sort(values), [0.0, 1.0])
    # Deep levels have wide cells: at 200 m (end node) the cell is [150, 250].
    deep = obs_at(1.0, [120.0, 160.0, 240.0, 260.0])
    np.testing.assert_array_equal(np.sort(shown(plots.time_series(field, {"lat": 1.0, "depth": 200.0}, obs=deep))[:, 1]),
                                  [1.0, 2.0])
    # The location snaps to the nearest node (12 m -> 10 m), and so does the cell; other latitudes are left out.
    both = ObservationSet.concatenate([obs, obs_at(2.0, [10.0])])
    values = shown(plots.time_series(field, {"lat": 1.2, "depth": 12.0}, obs=both))[:, 1]
    np.testing.assert_array_equal(np.sort(values), [0.0, 1.0])


def test_time_series_tolerance_per_dim(field):
    obs = obs_at(1.0, [10.0, 14.0, 16.0, 20.0, 50.0])
    fig = plots.time_series(field, {"lat": 1.0, "depth": 10.0}, obs=obs, tolerance={"depth": 0.5})
    np.testing.assert_array_equal(shown(fig)[:, 1], [0.0])
    fig = plots.time_series(field, {"lat": 1.0, "depth": 10.0}, obs=obs, tolerance={"depth": 10.0, "lat": 0.0})
    np.testing.assert_array_equal(np.sort(shown(fig)[:, 1]), [0.0, 1.0, 2.0, 3.0])
    assert shown(plots.time_series(field, {"lat": 0.0, "depth": 10.0}, obs=obs)).size == 0  # no observation there
    for bad in (5.0, {"temperature": 1.0}, {"depth": -1.0}, {"depth": np.nan}, {"depth": "1"}):
        with pytest.raises(InputError, match="tolerance"):
            plots.time_series(field, {"lat": 1.0, "depth": 10.0}, obs=obs, tolerance=bad)
    with pytest.raises(InputError, match="location"):
        plots.time_series(field, {"lat": 1.0}, obs=obs)


def exceedance(values: np.ndarray, **attrs) -> xr.DataArray:
    """A p_exceed-like DataArray (time, lat, depth)."""
    return xr.DataArray(values, dims=("time", "lat", "depth"),
                        coords={"time": [0.0, 1.0, 2.0, 3.0], "lat": LAT, "depth": ("depth", DEPTH, {"units": "m"})},
                        name="p_exceed", attrs={"n_draws": 8, "var_name": "field", **attrs})


def test_exceedance_map_shows_the_probabilities_of_one_time_on_a_fixed_scale():
    import matplotlib.pyplot as plt

    values = np.zeros((4, LAT.size, DEPTH.size))
    values[2] = np.linspace(0, 1, LAT.size * DEPTH.size).reshape(LAT.size, DEPTH.size)
    p = exceedance(values, threshold=1500.0, threshold_units="m/s")
    fig = plots.exceedance_map(p, time=2.1)
    mesh = fig.axes[0].collections[0]
    np.testing.assert_allclose(np.asarray(mesh.get_array()).ravel(), values[2].ravel())  # time 2 (nearest)
    assert mesh.get_clim() == (0.0, 1.0)
    assert fig.axes[1].get_ylabel() == "P(field > 1500 m/s)"
    assert "8 draws" in fig.axes[0].get_title() and "time = 2" in fig.axes[0].get_title()
    plt.close(fig)
    # Depth on the vertical axis increases downwards.
    fig = plots.exceedance_map(p.transpose("time", "depth", "lat"), time=2.0)
    np.testing.assert_allclose(np.asarray(fig.axes[0].collections[0].get_array()).ravel(), values[2].T.ravel())
    assert fig.axes[0].yaxis_inverted() and fig.axes[0].get_ylabel() == "depth [m]"
    plt.close(fig)
    # One space dim: the (space, time) plane.
    line = exceedance(values)[:, :, 0].drop_vars("depth")
    fig = plots.exceedance_map(line)
    assert np.asarray(fig.axes[0].collections[0].get_array()).size == 4 * LAT.size
    assert fig.axes[1].get_ylabel() == "P(field > threshold)"
    plt.close(fig)


def test_exceedance_map_refuses_what_is_not_a_probability_map(field):
    values = np.zeros((4, LAT.size, DEPTH.size))
    for bad in (values, field, exceedance(values + 1.5), exceedance(values * np.nan), exceedance(values)[0]):
        with pytest.raises(InputError, match="p:"):
            plots.exceedance_map(bad)
    with pytest.raises(InputError, match="time"):
        plots.exceedance_map(exceedance(values)[:, :, 0].drop_vars("depth"), time=1.0)
