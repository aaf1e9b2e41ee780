"""Simulators: shapes and coordinates, physical plausibility, determinism, splits, bad input, CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest

from sdift_prob.commands import simulate as simulate_command
from sdift_prob.data.fields import load_fields, validate_field_dataset
from sdift_prob.data.simulate import simulate_field3d, simulate_fluid2d, simulate_ocean, sound_speed_teos10
from sdift_prob.data.simulate.ocean import draw_ocean_parameters, ocean_grid, ocean_temperature_salinity
from sdift_prob.errors import InputError

OCEAN_SMALL = dict(nlat=8, nlon=8, ndepth=6, nt=4, progress=False)
# Short spin-up on a coarse grid: cheap, yet already turbulent enough to evolve.
FLUID_SMALL = dict(grid=16, nt=4, spin_up=2.0, batch_size=2, progress=False)
# dx = 1/32 as in the default, so the seeds neither die out nor blow up.
FIELD3D_SMALL = dict(grid=16, domain_extent=0.5, nt=4, spin_up=200.0, save_interval=100.0,
                     seed_width=(0.12, 0.18), batch_size=2, progress=False)


def mackenzie_sound_speed(t, s, d):
    """Mackenzie (1981) nine-term sound speed (m/s): an oracle independent of TEOS-10."""
    return (1448.96 + 4.591 * t - 5.304e-2 * t**2 + 2.374e-4 * t**3 + 1.340 * (s - 35) + 1.630e-2 * d
            + 1.675e-7 * d**2 - 1.025e-2 * t * (s - 35) - 7.139e-13 * t * d**3)


@pytest.fixture(scope="module")
def ocean():
    return simulate_ocean(3, seed=7, variables=("sound_speed", "temperature", "salinity"), **OCEAN_SMALL)


@pytest.fixture(scope="module")
def fluid():
    return simulate_fluid2d(3, seed=5, **FLUID_SMALL)


@pytest.fixture(scope="module")
def field3d():
    return simulate_field3d(3, seed=2, **FIELD3D_SMALL)


# --- ocean -----------------------------------------------------------------------------------


def test_teos10_chain_matches_reference_value():
    # 10 degC, Practical Salinity 35 at 10 dbar: 1489.98 m/s (TEOS-10 check value).
    import gsw

    depth = -gsw.z_from_p(10.0, 22.0)
    c = sound_speed_teos10(10.0, 35.0, depth, 22.0, 126.0)
    assert c == pytest.approx(1489.98, abs=0.01)
    assert mackenzie_sound_speed(10.0, 35.0, depth) == pytest.approx(c, abs=0.1)


def test_ocean_layout_and_units(ocean):
    validate_field_dataset(ocean)
    assert ocean["field"].dims == ("trajectory", "time", "lat", "lon", "depth")
    assert ocean["field"].shape == (3, 4, 8, 8, 6)
    assert ocean.attrs["units"] == "m s-1" and ocean.attrs["simulator"] == "ocean"
    assert ocean["time"].attrs["units"] == "days"
    np.testing.assert_allclose(ocean["time"], [0.0, 2.0, 4.0, 6.0])
    assert ocean["lat"].attrs["units"] == "degrees_north" and ocean["depth"].attrs["units"] == "m"
    depth = ocean["depth"].values
    assert depth[0] == 0.0 and depth[-1] == pytest.approx(1000.0)
    steps = np.diff(depth)
    assert (np.diff(steps) > 0).all()  # stretched: finer near the surface
    params = json.loads(ocean.attrs["parameters"])
    assert params["nlat"] == 8 and params["nt"] == 4
    assert "gsw" in json.loads(ocean.attrs["package_versions"])
    assert ocean.attrs["seed"] == 7


def test_ocean_values_are_physical(ocean):
    c = ocean["field"].values
    assert np.isfinite(c).all()
    assert 1450 < c.min() and c.max() < 1560
    temperature, salinity = ocean["temperature"].values, ocean["salinity"].values
    assert 2 < temperature.min() and temperature.max() < 31
    assert 33.5 < salinity.min() and salinity.max() < 35.5
    # Warm surface over a cold deep ocean: the thermocline makes c fall with depth in the upper ocean.
    profile = c.mean(axis=(0, 1, 2, 3))
    assert profile[0] - profile[-1] > 30
    # Sound speed agrees with the independent Mackenzie formula at every point.
    depth = ocean["depth"].values
    np.testing.assert_allclose(c, mackenzie_sound_speed(temperature, salinity, depth), atol=0.6)
    # Eddies, internal waves and noise make the field change over time.
    assert c.std(axis=1).mean() > 0.1


def test_ocean_eddy_moves_with_its_velocity():
    # One warm eddy of known velocity, no waves or noise: the warm core must sit where
    # lon0 + u t (u in m/s -> degrees) puts it, at every time stamp.
    grid = ocean_grid(41, 41, 6, 6, dt_days=5.0)
    base = draw_ocean_parameters(np.random.default_rng(0), grid, noise_heave_m=0.0)
    one = lambda v: np.array([float(v)])  # noqa: E731
    params = dataclasses.replace(
        base, eddy_lat0=one(22.0), eddy_lon0=one(127.0), eddy_u=one(-0.1), eddy_v=one(0.05),
        eddy_radius=one(50.0), eddy_sign=one(1.0), eddy_heave=one(80.0), eddy_depth=one(500.0),
        eddy_sst=one(0.5), eddy_t_peak=one(10.0), eddy_t_width=one(1e6),
        iw_mode=np.zeros(0), iw_amp=np.zeros(0), iw_kx=np.zeros(0), iw_ky=np.zeros(0),
        iw_omega=np.zeros(0), iw_phase=np.zeros(0),
    )
    temperature, _ = ocean_temperature_salinity(params, grid)
    without, _ = ocean_temperature_salinity(dataclasses.replace(params, eddy_heave=one(0.0), eddy_sst=one(0.0)),
                                            grid)
    anomaly = (temperature - without)[:, :, :, 2]  # (T, lat, lon) at 160 m, in the thermocline
    assert anomaly.min() > -1e-9 and anomaly.max() > 2.0  # a warm core of several degrees
    days = grid.time
    lon_expected = 127.0 - 0.1 * 86.4 * days / (111.32 * np.cos(np.radians(22.0)))
    lat_expected = 22.0 + 0.05 * 86.4 * days / 110.57
    for t in range(days.size):
        i, j = np.unravel_index(np.argmax(anomaly[t]), anomaly[t].shape)
        assert abs(grid.lat[i] - lat_expected[t]) <= 0.1 and abs(grid.lon[j] - lon_expected[t]) <= 0.1


def test_ocean_eddies_drift_westward_on_average():
    grid = ocean_grid(8, 8, 6, 4)
    draws = [draw_ocean_parameters(np.random.default_rng(k), grid) for k in range(200)]
    u = np.concatenate([d.eddy_u for d in draws])
    v = np.concatenate([d.eddy_v for d in draws])
    sign = np.concatenate([d.eddy_sign for d in draws])
    assert u.mean() < -0.03  # beta drift dominates the random background current
    # Beta drift sends anticyclones (warm, +1) equatorward and cyclones poleward.
    assert v[sign > 0].mean() < v[sign < 0].mean()


def test_ocean_deterministic_and_prefix_stable(ocean):
    again = simulate_ocean(3, seed=7, variables=("sound_speed", "temperature", "salinity"), **OCEAN_SMALL)
    np.testing.assert_array_equal(ocean["field"].values, again["field"].values)
    np.testing.assert_array_equal(ocean["split"].values, again["split"].values)
    two = simulate_ocean(2, seed=7, **OCEAN_SMALL)
    np.testing.assert_array_equal(two["field"].values, ocean["field"].values[:2])
    other = simulate_ocean(2, seed=8, **OCEAN_SMALL)
    assert np.abs(other["field"].values - two["field"].values).max() > 0.1


# --- fluid2d ---------------------------------------------------------------------------------


def test_fluid2d_layout(fluid):
    validate_field_dataset(fluid)
    assert fluid["field"].dims == ("trajectory", "time", "x", "y")
    assert fluid["field"].shape == (3, 4, 16, 16)
    x = fluid["x"].values
    np.testing.assert_allclose(x, 2 * np.pi * np.arange(16) / 16)  # periodic: right end excluded
    np.testing.assert_allclose(fluid["time"], [2.0, 2.5, 3.0, 3.5])
    lo, hi = 0.008, 0.02
    assert ((fluid["viscosity"] >= lo) & (fluid["viscosity"] <= hi)).all()


def test_fluid2d_is_turbulent_and_conserves_mean_vorticity(fluid):
    w = fluid["field"].values
    assert np.isfinite(w).all()
    spatial_std = w.std(axis=(2, 3))
    assert (spatial_std > 0.5).all()
    # Frames differ substantially from one another: the flow evolves.
    change = np.sqrt(((w[:, 1:] - w[:, :-1]) ** 2).mean(axis=(2, 3))) / spatial_std[:, 1:]
    assert (change > 0.05).all()
    # The domain-mean vorticity is zero and stays zero (periodic box, zero-mean forcing).
    assert np.abs(w.mean(axis=(2, 3))).max() < 1e-3 * spatial_std.max()


def test_fluid2d_deterministic_and_prefix_stable(fluid):
    again = simulate_fluid2d(3, seed=5, **FLUID_SMALL)
    np.testing.assert_array_equal(fluid["field"].values, again["field"].values)
    two = simulate_fluid2d(2, seed=5, **FLUID_SMALL)
    np.testing.assert_array_equal(two["field"].values, fluid["field"].values[:2])
    other = simulate_fluid2d(2, seed=6, **FLUID_SMALL)
    assert np.abs(other["field"].values - two["field"].values).max() > 0.1
    # How many trajectories are integrated at once does not change them either.
    regrouped = simulate_fluid2d(3, seed=5, **{**FLUID_SMALL, "batch_size": 3})
    np.testing.assert_array_equal(regrouped["field"].values, fluid["field"].values)
    # Trajectories of one seed differ from each other too (own keys).
    assert np.abs(fluid["field"].values[0] - fluid["field"].values[1]).max() > 0.1


# --- field3d ---------------------------------------------------------------------------------


def test_field3d_layout_and_dynamics(field3d):
    validate_field_dataset(field3d)
    assert field3d["field"].dims == ("trajectory", "time", "x", "y", "z")
    assert field3d["field"].shape == (3, 4, 16, 16, 16)
    np.testing.assert_allclose(field3d["time"], [200.0, 300.0, 400.0, 500.0])
    v = field3d["field"].values
    assert np.isfinite(v).all()
    # A concentration in [0, 1], up to the small Gibbs undershoot of a spectral solver.
    assert v.min() >= -0.05 and v.max() <= 1.0
    spatial_std = v.std(axis=(2, 3, 4))
    assert (spatial_std > 0.02).all()  # the spots neither die out nor fill the box uniformly
    change = np.sqrt(((v[:, 1:] - v[:, :-1]) ** 2).mean(axis=(2, 3, 4))) / spatial_std[:, 1:]
    assert (change > 0.01).all()


def test_field3d_deterministic_and_prefix_stable(field3d):
    two = simulate_field3d(2, seed=2, **FIELD3D_SMALL)
    np.testing.assert_array_equal(two["field"].values, field3d["field"].values[:2])
    other = simulate_field3d(2, seed=3, **FIELD3D_SMALL)
    assert np.abs(other["field"].values - two["field"].values).max() > 0.01


# --- splits and bad input --------------------------------------------------------------------


@pytest.mark.parametrize("n_test", [0, 1, 2])
def test_split_is_disjoint_and_complete(n_test):
    ds = simulate_ocean(3, seed=1, n_test=n_test, **OCEAN_SMALL)
    split = ds["split"].values.astype(str)
    assert set(split) <= {"train", "test"}
    assert (split == "test").sum() == n_test and (split == "train").sum() == 3 - n_test


@pytest.mark.parametrize(
    ("simulate", "kwargs", "argument"),
    [
        (simulate_ocean, dict(n_trajectories=0), "n_trajectories"),
        (simulate_ocean, dict(nlat=0), "nlat"),
        (simulate_ocean, dict(ndepth=-3), "ndepth"),
        (simulate_ocean, dict(nt=0), "nt"),
        (simulate_ocean, dict(n_test=3), "n_test"),
        (simulate_ocean, dict(seed=-1), "seed"),
        (simulate_ocean, dict(seed=2**32), "seed"),
        (simulate_ocean, dict(lat_range=(24.0, 20.0)), "lat_range"),
        (simulate_ocean, dict(variables=("pressure",)), "variables"),
        (simulate_fluid2d, dict(grid=0), "grid"),
        (simulate_fluid2d, dict(n_test=5), "n_test"),
        (simulate_fluid2d, dict(dt=0.01, save_interval=0.015), "save_interval"),
        (simulate_fluid2d, dict(viscosity_range=(0.0, 0.01)), "viscosity_range"),
        (simulate_field3d, dict(grid=-1), "grid"),
        (simulate_field3d, dict(nt=1), "nt"),
        (simulate_field3d, dict(species="w"), "species"),
        (simulate_field3d, dict(batch_size=0), "batch_size"),
    ],
)
def test_bad_input_names_the_argument(simulate, kwargs, argument):
    call = dict(n_trajectories=3, seed=0, progress=False)
    call.update(kwargs)
    n = call.pop("n_trajectories")
    with pytest.raises(InputError, match=argument):
        simulate(n, **call)


# --- CLI -------------------------------------------------------------------------------------


def _parse(argv):
    parser = argparse.ArgumentParser()
    simulate_command.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["simulate", *argv])


def test_cli_writes_a_loadable_collection(tmp_path, capsys):
    out = tmp_path / "ocean.nc"
    argv = ["ocean", "--n", "3", "--seed", "4", "--n-test", "1", "--out", str(out), "--nlat", "8",
            "--nlon", "8", "--ndepth", "6", "--nt", "4", "--no-progress"]
    args = _parse(argv)
    assert args.func(args) == 0
    assert "wrote 3 ocean trajectories (2 train, 1 test" in capsys.readouterr().err  # the summary goes to stderr
    loaded = load_fields(out)
    direct = simulate_ocean(3, seed=4, n_test=1, **OCEAN_SMALL)
    np.testing.assert_array_equal(loaded["field"].values, direct["field"].values)
    np.testing.assert_array_equal(loaded["split"].values, direct["split"].values)
    # An existing file is refused without --overwrite, before simulating anything.
    with pytest.raises(InputError, match="--out"):
        args.func(_parse(argv))
    args = _parse([*argv, "--overwrite"])
    assert args.func(args) == 0


def test_cli_rejects_options_of_other_simulators(tmp_path):
    args = _parse(["fluid2d", "--n", "2", "--out", str(tmp_path / "f.nc"), "--nlat", "8"])
    with pytest.raises(InputError, match="--nlat"):
        args.func(args)
    assert not (tmp_path / "f.nc").exists()
