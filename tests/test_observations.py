import math

import jax
import numpy as np
import pytest
import xarray as xr
from scipy.interpolate import RegularGridInterpolator

from sdift_prob.data import (
    ObservationSet,
    add_noise,
    make_field_dataset,
    sample_observations,
    select_trajectory,
)
from sdift_prob.errors import FormatError, InputError

TIME = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
LAT = np.array([10.0, 10.5, 11.5, 12.0, 13.0])  # non-uniform on purpose
LON = np.array([-40.0, -39.0, -38.0, -37.0])
DEPTH = np.array([0.0, 10.0, 30.0])


def collection(values=None):
    if values is None:
        rng = np.random.default_rng(0)
        values = 1500.0 + rng.normal(size=(2, TIME.size, LAT.size, LON.size, DEPTH.size))
    return make_field_dataset(
        values, TIME, {"lat": LAT, "lon": LON, "depth": DEPTH}, units="m/s", long_name="sound speed",
        coord_units={"time": "day", "lat": "degree_north", "lon": "degree_east", "depth": "m"},
        provenance={"simulator": "toy", "parameters": {}, "seed": 0},
    )


@pytest.fixture(scope="module")
def traj():
    return select_trajectory(collection(), 1)


def affine_field(a=(2.0, -3.0, 0.05), b=7.0, c=0.5):
    """u = b + c*t + a . (lat, lon, depth): multilinear interpolation reproduces it exactly."""
    t, la, lo, de = np.meshgrid(TIME, LAT, LON, DEPTH, indexing="ij")
    u = b + c * t + a[0] * la + a[1] * lo + a[2] * de
    return np.stack([u, u + 1.0])


def grid_value(traj, obs):
    """Field value at each (on-grid) observation, looked up by coordinates."""
    out = []
    for t, (la, lo, de) in zip(obs.time, obs.coords):
        out.append(float(traj.sel(time=t, lat=la, lon=lo, depth=de).values))
    return np.array(out)


def make_obs(n=5, **kw):
    base = dict(value=np.arange(float(n)), time=np.array([0.0, 0.0, 2.0, 1.0, 2.0])[:n],
                coords=np.arange(2.0 * n).reshape(n, 2), space_dims=("x", "y"))
    base.update(kw)
    return ObservationSet(**base)


# -- ObservationSet ---------------------------------------------------------------------------
def test_round_trip_is_exact(tmp_path, traj):
    obs = sample_observations(jax.random.key(0), traj, rho=0.2, jitter=0.4, noise="laplace", noise_scale=0.3)
    obs = ObservationSet(value=obs.value, time=obs.time, coords=obs.coords, space_dims=obs.space_dims,
                         noise_scale=np.where(np.arange(obs.n_points) % 3 == 0, np.nan, obs.noise_scale),
                         noise_model=obs.noise_model, attrs={**obs.attrs, "tags": ("a", 1)})
    path = obs.save(tmp_path / "o.nc")
    back = ObservationSet.load(path)
    for name in ("value", "time", "coords", "noise_scale"):
        np.testing.assert_array_equal(getattr(back, name), getattr(obs, name))
        assert getattr(back, name).dtype == np.float64
    assert back.space_dims == ("lat", "lon", "depth")
    assert back.noise_model == "laplace" and back.attrs == obs.attrs
    assert obs.attrs["tags"] == ["a", 1]  # attrs are stored JSON-canonical
    ds = xr.open_dataset(path, engine="h5netcdf")
    assert set(ds.data_vars) == {"value", "time", "lat", "lon", "depth", "noise_scale"}
    assert ds.sizes == {"obs": obs.n_points} and ds.attrs["sdift_kind"] == "observation_set"
    ds.close()
    with pytest.raises(InputError, match="already exists"):
        obs.save(path)
    obs.save(path, overwrite=True)


def test_load_rejects_foreign_and_corrupt(tmp_path, traj):
    foreign = tmp_path / "foreign.nc"
    xr.Dataset({"value": ("obs", np.arange(3.0))}).to_netcdf(foreign, engine="h5netcdf")
    with pytest.raises(FormatError, match="foreign.nc.*not an sdift observation set"):
        ObservationSet.load(foreign)
    fields = tmp_path / "fields.nc"
    from sdift_prob.data import assign_split, save_fields

    save_fields(assign_split(collection(), n_test=1, key=jax.random.key(0)), fields)
    with pytest.raises(FormatError, match="field_collection"):
        ObservationSet.load(fields)
    good = sample_observations(jax.random.key(0), traj, rho=0.1).save(tmp_path / "good.nc")
    broken = tmp_path / "broken.nc"
    broken.write_bytes(good.read_bytes()[:300])
    with pytest.raises(FormatError, match="broken.nc"):
        ObservationSet.load(broken)


def test_a_file_without_noise_scale_reads_as_unknown_noise(tmp_path, traj):
    # issue 16 item 6: noise_scale is optional in the API (None = unknown) but a file without the
    # variable failed with "KeyError: 'noise_scale'"
    obs = sample_observations(jax.random.key(0), traj, rho=0.1, noise="gaussian", noise_scale=0.2)
    ds = obs.to_dataset().drop_vars("noise_scale")
    ds.to_netcdf(tmp_path / "no_noise.nc", engine="h5netcdf")
    back = ObservationSet.load(tmp_path / "no_noise.nc")
    assert np.isnan(back.noise_scale).all() and back.noise_scale.shape == (obs.n_points,)
    np.testing.assert_array_equal(back.value, obs.value)
    # a required variable missing is named as such, not as a Python KeyError
    obs.to_dataset().drop_vars("time").to_netcdf(tmp_path / "no_time.nc", engine="h5netcdf")
    with pytest.raises(FormatError, match="no_time.nc.*no variable 'time'") as err:
        ObservationSet.load(tmp_path / "no_time.nc")
    assert "KeyError" not in str(err.value) and str(err.value).count("malformed") == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"time": np.zeros(4)}, r"time: expected shape \(5,\)"),
        ({"coords": np.zeros((5, 3))}, r"coords: expected shape \(5, 2\)"),
        ({"coords": np.zeros(5)}, "coords"),
        ({"value": np.array([0.0, np.nan, np.inf, 1.0, 2.0])}, "value.*2 NaN/inf"),
        ({"time": np.array([0.0, np.nan, 1.0, 1.0, 2.0])}, "time.*1 NaN/inf"),
        ({"coords": np.full((5, 2), np.inf)}, "coords.*10 NaN/inf"),
        ({"noise_scale": np.array([0.1, -0.1, 0.0, np.nan, 1.0])}, "noise_scale.*1 negative"),
        ({"noise_scale": np.array([0.1, np.inf, 0.0, np.nan, 1.0])}, "noise_scale"),
        ({"noise_scale": np.ones(3)}, "noise_scale"),
        ({"noise_model": "cauchy"}, "noise_model"),
        ({"space_dims": ("x", "x")}, "space_dims"),
        ({"space_dims": ("x", "value")}, "space_dims"),
        ({"attrs": {"f": object()}}, "attrs"),
    ],
)
def test_observation_set_rejects(kwargs, match):
    with pytest.raises(InputError, match=match):
        make_obs(**kwargs)


def test_nan_noise_scale_means_unknown():
    obs = make_obs()
    assert np.isnan(obs.noise_scale).all() and obs.noise_model == "unknown"
    obs = make_obs(noise_scale=0.2)
    np.testing.assert_array_equal(obs.noise_scale, np.full(5, 0.2))


def test_to_padded_shapes_order_and_mask():
    obs = make_obs(noise_scale=np.array([0.1, 0.2, 0.3, 0.4, 0.5]))
    np.testing.assert_array_equal(obs.time_stamps(), [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(obs.counts(), [2, 1, 2])
    pad = obs.to_padded()
    assert pad.values.shape == (3, 2) and pad.coords.shape == (3, 2, 2) and pad.mask.shape == (3, 2)
    np.testing.assert_array_equal(pad.mask, [[True, True], [True, False], [True, True]])
    np.testing.assert_array_equal(pad.values[pad.mask], [0.0, 1.0, 3.0, 2.0, 4.0])
    np.testing.assert_array_equal(pad.coords[2], [[4.0, 5.0], [8.0, 9.0]])
    np.testing.assert_array_equal(pad.noise_scale[pad.mask], [0.1, 0.2, 0.4, 0.3, 0.5])
    # Padding is harmless: unit noise scale, zero value, a real in-domain coordinate.
    assert pad.noise_scale[1, 1] == 1.0 and pad.values[1, 1] == 0.0
    np.testing.assert_array_equal(pad.coords[1, 1], obs.coords[0])
    # On a finer grid with empty time stamps and more slots.
    grid = np.array([0.0, 0.5, 1.0, 1.5, 2.0 + 1e-12])
    pad = obs.to_padded(times=grid, max_points=4)
    assert pad.values.shape == (5, 4)
    np.testing.assert_array_equal(pad.mask.sum(axis=1), [2, 0, 1, 0, 2])
    np.testing.assert_array_equal(obs.counts(grid), [2, 0, 1, 0, 2])
    assert pad.mask.sum() == obs.n_points  # nothing dropped


def test_to_padded_errors():
    obs = make_obs()
    with pytest.raises(InputError, match=r"times: .*1 points at times not in it.*\[1.0\]"):
        obs.to_padded(times=np.array([0.0, 2.0]))
    with pytest.raises(InputError, match="times.*not in it"):
        obs.to_padded(times=np.array([0.0, 1.0 + 1e-6, 2.0]))
    with pytest.raises(InputError, match="times: expected strictly increasing"):
        obs.to_padded(times=np.array([0.0, 2.0, 1.0]))
    with pytest.raises(InputError, match="times.*NaN"):
        obs.to_padded(times=np.array([0.0, np.nan, 2.0]))
    with pytest.raises(InputError, match=r"max_points: expected an int >= 2"):
        obs.to_padded(max_points=1)


def test_subset_and_check_domain():
    obs = make_obs()
    sub = obs.subset(obs.time == 2.0)
    np.testing.assert_array_equal(sub.value, [2.0, 4.0])
    with pytest.raises(InputError, match="mask"):
        obs.subset(np.ones(4, dtype=bool))
    obs.check_domain([0.0, 1.0], [8.0, 9.0])
    with pytest.raises(InputError, match=r"coords: .*x: 1 points"):
        obs.check_domain([0.0, 1.0], [7.0, 9.0])
    obs.check_domain([0.0, 1.0], [7.0, 9.0], margin=1.0 / 7.0 + 1e-9)
    with pytest.raises(InputError, match=r"lo: expected shape \(2,\)"):
        obs.check_domain([0.0], [1.0, 2.0])
    with pytest.raises(InputError, match="margin"):
        obs.check_domain([0.0, 0.0], [9.0, 9.0], margin=-0.1)


# -- samplers ---------------------------------------------------------------------------------
def test_random_setting1_counts_and_values(traj):
    n_grid = LAT.size * LON.size * DEPTH.size  # 60
    obs = sample_observations(jax.random.key(1), traj, rho=0.1, noise="none")
    np.testing.assert_array_equal(obs.counts(TIME), [6] * TIME.size)
    np.testing.assert_array_equal(grid_value(traj, obs), obs.value)  # exact field values
    assert obs.noise_model == "none" and (obs.noise_scale == 0).all()
    for t in TIME:  # without replacement: no repeated grid point at a time stamp
        c = obs.coords[obs.time == t]
        assert np.unique(c, axis=0).shape[0] == c.shape[0]
    tiny = sample_observations(jax.random.key(1), traj, rho=1e-6)
    np.testing.assert_array_equal(tiny.counts(TIME), [1] * TIME.size)  # at least one point
    full = sample_observations(jax.random.key(1), traj, rho=1.0)
    np.testing.assert_array_equal(full.counts(TIME), [n_grid] * TIME.size)
    again = sample_observations(jax.random.key(1), traj, rho=0.1, noise="none")
    np.testing.assert_array_equal(again.coords, obs.coords)  # same key, same draw


def test_setting2_leaves_every_other_time_stamp_empty(traj):
    obs = sample_observations(jax.random.key(2), traj, rho=0.25, setting=2)
    np.testing.assert_array_equal(obs.counts(TIME), [15, 0, 15, 0, 15, 0])
    pad = obs.to_padded(times=TIME)
    assert not pad.mask[1::2].any() and pad.mask[0::2].all()
    # Same key: the time stamps both settings observe carry the same points.
    one = sample_observations(jax.random.key(2), traj, rho=0.25, setting=1)
    np.testing.assert_array_equal(one.subset(np.isin(one.time, TIME[0::2])).coords, obs.coords)


def test_profiles_are_full_columns(traj):
    obs = sample_observations(jax.random.key(3), traj, rho=None, pattern="profiles", n_profiles=4, noise="none")
    np.testing.assert_array_equal(obs.counts(TIME), [4 * DEPTH.size] * TIME.size)
    for t in TIME:
        at = obs.coords[obs.time == t]
        heads, per = np.unique(at[:, :2], axis=0, return_counts=True)
        assert heads.shape[0] == 4 and (per == DEPTH.size).all()
        for h in heads:
            np.testing.assert_array_equal(np.sort(at[(at[:, :2] == h).all(axis=1), 2]), DEPTH)
    np.testing.assert_array_equal(grid_value(traj, obs), obs.value)
    by_rho = sample_observations(jax.random.key(3), traj, rho=0.3, pattern="profiles")
    assert by_rho.counts(TIME)[0] == round(0.3 * LAT.size * LON.size) * DEPTH.size


def test_forecast_has_nothing_after_cutoff(traj):
    obs = sample_observations(jax.random.key(4), traj, rho=0.1, pattern="forecast", forecast_after=2.5)
    assert obs.time.max() <= 2.5
    np.testing.assert_array_equal(obs.counts(TIME), [6, 6, 6, 0, 0, 0])


def test_jitter_values_are_the_interpolated_field():
    traj = select_trajectory(collection(affine_field()), 0)
    obs = sample_observations(jax.random.key(5), traj, rho=0.5, jitter=0.45, noise="none")
    on_grid = np.isin(obs.coords[:, 0], LAT) & np.isin(obs.coords[:, 1], LON) & np.isin(obs.coords[:, 2], DEPTH)
    assert (~on_grid).mean() > 0.9  # points really are off the grid
    for j, axis in enumerate((LAT, LON, DEPTH)):
        assert obs.coords[:, j].min() >= axis[0] and obs.coords[:, j].max() <= axis[-1]
    # Affine field: multilinear interpolation is exact, so values are the closed form.
    expected = 7.0 + 0.5 * obs.time + 2.0 * obs.coords[:, 0] - 3.0 * obs.coords[:, 1] + 0.05 * obs.coords[:, 2]
    np.testing.assert_allclose(obs.value, expected, rtol=0, atol=1e-10)
    # Random field: equal to scipy's multilinear interpolation at the reported points.
    rnd = select_trajectory(collection(), 0)
    obs = sample_observations(jax.random.key(6), rnd, rho=0.3, jitter=0.8, noise="none")
    for ti, t in enumerate(TIME):
        sel = obs.time == t
        ref = RegularGridInterpolator((LAT, LON, DEPTH), rnd.values[ti])(obs.coords[sel])
        np.testing.assert_allclose(obs.value[sel], ref, rtol=1e-13)
    prof = sample_observations(jax.random.key(7), traj, rho=None, pattern="profiles", n_profiles=2, jitter=0.5,
                               noise="none")
    np.testing.assert_array_equal(np.unique(prof.coords[:, 2]), DEPTH)  # depth stays on the cast levels
    expected = 7.0 + 0.5 * prof.time + 2.0 * prof.coords[:, 0] - 3.0 * prof.coords[:, 1] + 0.05 * prof.coords[:, 2]
    np.testing.assert_allclose(prof.value, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("noise", ["gaussian", "laplace"])
def test_additive_noise_statistics(noise):
    u = np.linspace(-3.0, 3.0, 40_000)
    y, std = add_noise(jax.random.key(8), u, noise, 0.7)
    r = y - u
    assert abs(r.mean()) < 4 * 0.7 / math.sqrt(u.size)
    assert r.std() == pytest.approx(0.7, rel=0.02)
    np.testing.assert_array_equal(std, np.full(u.size, 0.7))
    # Laplace has heavier tails: excess kurtosis 3 vs 0.
    kurt = ((r - r.mean()) ** 4).mean() / r.var() ** 2 - 3.0
    assert kurt == pytest.approx(3.0 if noise == "laplace" else 0.0, abs=0.3)


def test_poisson_noise_statistics_and_offset():
    u = np.repeat([2.0, 5.0], 40_000)
    y, std = add_noise(jax.random.key(9), u, "poisson", 0.05, offset=1.0)
    for level in (2.0, 5.0):
        r = y[u == level]
        sd = math.sqrt(0.05 * (level - 1.0))
        assert abs(r.mean() - level) < 4 * sd / math.sqrt(r.size)
        assert r.std() == pytest.approx(sd, rel=0.03)
        np.testing.assert_allclose(std[u == level], sd)
    # Values lie on the lattice offset + scale * k.
    k = (y - 1.0) / 0.05
    np.testing.assert_allclose(k, np.round(k), atol=1e-6)
    # Default offset: the minimum value, which is then reproduced without noise.
    y, std = add_noise(jax.random.key(9), np.array([3.0, 4.0, 3.0]), "poisson", 0.1)
    assert y[0] == 3.0 and y[2] == 3.0 and std[0] == 0.0
    with pytest.raises(InputError, match="offset"):
        add_noise(jax.random.key(9), np.array([3.0, 4.0]), "poisson", 0.1, offset=3.5)


def test_sampler_records_noise(traj):
    obs = sample_observations(jax.random.key(10), traj, rho=0.5, noise="poisson", noise_scale=0.01)
    offset = float(traj.values.min())
    assert obs.attrs["poisson_offset"] == offset and obs.noise_model == "poisson"
    np.testing.assert_allclose(obs.noise_scale, np.sqrt(0.01 * (grid_value(traj, obs) - offset)))
    g = sample_observations(jax.random.key(10), traj, rho=0.5, noise="gaussian", noise_scale=0.3)
    clean = sample_observations(jax.random.key(10), traj, rho=0.5, noise="none")
    np.testing.assert_array_equal(g.coords, clean.coords)  # noise does not change the pattern
    assert (g.noise_scale == 0.3).all() and not np.array_equal(g.value, clean.value)
    assert g.attrs["units"] == "m/s" and g.attrs["rho"] == 0.5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rho": 0.0}, "rho"),
        ({"rho": 1.5}, "rho"),
        ({"rho": None}, "rho"),
        ({"rho": 0.1, "pattern": "grid"}, "pattern"),
        ({"rho": 0.1, "setting": 3}, "setting"),
        ({"rho": 0.1, "noise": "cauchy"}, "noise"),
        ({"rho": 0.1, "noise_scale": -1.0}, "noise_scale"),
        ({"rho": 0.1, "noise": "none", "noise_scale": 1.0}, "noise_scale"),
        ({"rho": 0.1, "jitter": -0.1}, "jitter"),
        ({"rho": None, "pattern": "profiles", "n_profiles": 21}, r"n_profiles: expected an int in \[1, 20\]"),
        ({"rho": 0.1, "pattern": "profiles", "n_profiles": 2}, "rho"),
        ({"rho": 0.1, "n_profiles": 2}, "n_profiles"),
        ({"rho": 0.1, "pattern": "forecast"}, "forecast_after"),
        ({"rho": 0.1, "pattern": "forecast", "forecast_after": -1.0}, "forecast_after"),
        ({"rho": 0.1, "forecast_after": 1.0}, "forecast_after"),
        ({"rho": 0.1, "poisson_offset": 1.0}, "poisson_offset"),
    ],
)
def test_sampler_rejects(traj, kwargs, match):
    with pytest.raises(InputError, match=match):
        sample_observations(jax.random.key(0), traj, **kwargs)


def test_sampler_rejects_bad_trajectory_and_key(traj):
    with pytest.raises(InputError, match="trajectory"):
        sample_observations(jax.random.key(0), traj.transpose("lat", "time", "lon", "depth"), rho=0.1)
    with pytest.raises(InputError, match="trajectory"):
        sample_observations(jax.random.key(0), traj.values, rho=0.1)
    with pytest.raises(InputError, match="key"):
        sample_observations(0, traj, rho=0.1)
    one_d = select_trajectory(
        make_field_dataset(np.zeros((1, 3, 4)), np.arange(3.0), {"x": np.arange(4.0)}, units="1", long_name="u",
                           coord_units={"time": "s", "x": "m"}, provenance={"simulator": "t", "parameters": {},
                                                                             "seed": 0}), 0)
    with pytest.raises(InputError, match="pattern"):
        sample_observations(jax.random.key(0), one_d, rho=0.5, pattern="profiles")
    with pytest.raises(InputError, match="index"):
        select_trajectory(collection(), 2)


def test_add_noise_rejects():
    with pytest.raises(InputError, match="noise"):
        add_noise(jax.random.key(0), np.zeros(3), "student", 1.0)
    with pytest.raises(InputError, match="scale"):
        add_noise(jax.random.key(0), np.zeros(3), "gaussian", float("nan"))
    with pytest.raises(InputError, match="values.*1 NaN"):
        add_noise(jax.random.key(0), np.array([0.0, np.nan]), "gaussian", 1.0)
    with pytest.raises(InputError, match="offset"):
        add_noise(jax.random.key(0), np.zeros(3), "gaussian", 1.0, offset=0.0)
