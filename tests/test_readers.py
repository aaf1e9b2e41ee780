"""Bring your own data: `from_xarray` for fields, `observations_from_dataframe/_xarray` for
points, NaN masks through the data layer, and the shipped example files."""

import itertools
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from sdift_prob import examples
from sdift_prob.data import (
    Normalizer,
    ObservationSet,
    from_xarray,
    load_fields,
    make_field_dataset,
    observations_from_dataframe,
    observations_from_xarray,
    sample_observations,
    save_fields,
    select_trajectory,
    to_float_time,
    validate_field_dataset,
)
from sdift_prob.errors import InputError

REPO = Path(__file__).resolve().parents[1]
T = np.arange(5) * 2.0  # days
LAT = np.array([10.0, 10.5, 11.0, 12.0])
LON = np.array([-40.0, -39.0, -38.0])
DEPTH = np.array([0.0, 10.0, 30.0, 60.0, 100.0])
ORIGIN = np.datetime64("2020-01-01T00:00:00", "ns")


def truth_values():
    rng = np.random.default_rng(0)
    return 1500.0 + rng.normal(size=(T.size, LAT.size, LON.size, DEPTH.size))  # (time, lat, lon, depth)


def foreign(order=("time", "depth", "lat", "lon"), names=None, dates=True):
    """A reanalysis-like dataset: variable `thetao`, dims in `order`, datetime time axis."""
    names = names or {}
    v = xr.DataArray(truth_values(), dims=("time", "lat", "lon", "depth"),
                     coords={"time": ORIGIN + (T * 86400e9).astype("timedelta64[ns]") if dates else T,
                             "lat": LAT, "lon": LON, "depth": DEPTH}, attrs={"units": "m s-1"})
    v = v.transpose(*order).rename({k: names.get(k, k) for k in order})
    ds = xr.Dataset({"thetao": v, "other": ("time" if "time" not in names else names["time"], np.zeros(T.size))})
    for d, u in (("lat", "degrees_north"), ("lon", "degrees_east"), ("depth", "m")):
        ds[names.get(d, d)].attrs["units"] = u
    return ds


# -- fields -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", list(itertools.permutations(("time", "depth", "lat", "lon")))[::5])
def test_from_xarray_dims_in_any_order(order):
    ds = from_xarray(foreign(order), variable="thetao", space_dims=("lat", "lon", "depth"))
    assert ds["field"].dims == ("trajectory", "time", "lat", "lon", "depth")
    np.testing.assert_array_equal(ds["field"].values[0], truth_values())
    np.testing.assert_array_equal(ds["time"].values, T)
    assert ds["lat"].attrs["units"] == "degrees_north" and ds.attrs["units"] == "m s-1"
    assert list(ds["split"].values) == ["train"]
    validate_field_dataset(ds)


def test_from_xarray_maps_other_names_and_default_order():
    ds_in = foreign(("depth", "time", "lon", "lat"),
                    names={"lat": "latitude", "lon": "longitude", "time": "ocean_time"})
    ds = from_xarray(ds_in, variable="thetao", dims={"latitude": "lat", "longitude": "lon", "ocean_time": "time"})
    assert ds["field"].dims == ("trajectory", "time", "depth", "lon", "lat")  # order of the file
    np.testing.assert_array_equal(ds["field"].values[0], truth_values().transpose(0, 3, 2, 1))
    # A DataArray works too, and a trajectory dim is kept.
    da = foreign()["thetao"].expand_dims(trajectory=[7, 8])
    two = from_xarray(da, space_dims=("lat", "lon", "depth"), split="test")
    assert two.sizes["trajectory"] == 2 and list(two["split"].values) == ["test", "test"]


def test_from_xarray_decodes_cf_datetimes(tmp_path):
    path = tmp_path / "reanalysis.nc"
    foreign().to_netcdf(path, engine="h5netcdf", encoding={"time": {"units": "hours since 1990-01-01"}})
    with xr.open_dataset(path, engine="h5netcdf") as decoded, \
            xr.open_dataset(path, engine="h5netcdf", decode_times=False) as raw:
        assert decoded["time"].dtype.kind == "M" and raw["time"].dtype.kind in "iuf"
        for src in (decoded, raw):
            ds = from_xarray(src, variable="thetao", space_dims=("lat", "lon", "depth"))
            np.testing.assert_allclose(ds["time"].values, T)  # origin: the first time stamp
            assert ds["time"].attrs["units"] == "days"
            assert ds["time"].attrs["time_origin"] == "2020-01-01T00:00:00"
            assert ds.attrs["time_origin"] == "2020-01-01T00:00:00"
        hours = from_xarray(decoded, variable="thetao", time_units="hours", time_origin="2019-12-31")
        np.testing.assert_allclose(hours["time"].values, 24.0 + 24.0 * T)
        assert hours["time"].attrs["units"] == "hours"
    # The float time axis round-trips as floats (not re-decoded as dates).
    save_fields(ds, tmp_path / "own.nc")
    back = load_fields(tmp_path / "own.nc")
    assert back["time"].dtype == np.float64 and back["time"].attrs["time_origin"] == "2020-01-01T00:00:00"
    # Plain numeric times are used as they are; an origin for them is refused.
    num = from_xarray(foreign(dates=False), variable="thetao")
    np.testing.assert_array_equal(num["time"].values, T)
    with pytest.raises(InputError, match="time_origin: expected None for numeric times"):
        from_xarray(foreign(dates=False), variable="thetao", time_origin="2020-01-01")
    with pytest.raises(InputError, match="time_units"):
        from_xarray(foreign(), variable="thetao", time_units="fortnights")


def test_from_xarray_nan_mask_sorting_and_fill_values(tmp_path):
    src = foreign()
    v = src["thetao"].values.copy()
    v[:, :2, 0, 1] = np.nan  # "land": two depths x one point, every time
    src["thetao"].values = v
    src = src.isel(lat=slice(None, None, -1))  # north to south, as many products store it
    ds = from_xarray(src, variable="thetao", space_dims=("lat", "lon", "depth"))
    assert ds.attrs["n_missing"] == 2 * T.size and ds.attrs["missing_fraction"] == pytest.approx(2 / (4 * 5 * 3))
    np.testing.assert_array_equal(ds["lat"].values, LAT)
    assert '"sorted": ["lat"]' in ds.attrs["parameters"]
    expect = truth_values()
    expect[:, 0, 1, :2] = np.nan
    np.testing.assert_array_equal(ds["field"].values[0], expect)
    save_fields(ds, tmp_path / "masked.nc")
    back = load_fields(tmp_path / "masked.nc")
    assert int(np.isnan(back["field"]).sum()) == 2 * T.size and back.attrs["n_missing"] == 2 * T.size
    # Undecoded fill values become NaN too.
    raw = foreign()
    w = raw["thetao"].values.copy()
    w[0, 0, 0, 0] = -999.0
    raw["thetao"].values = w
    raw["thetao"].attrs["_FillValue"] = -999.0
    assert from_xarray(raw, variable="thetao").attrs["n_missing"] == 1
    # Steps that need complete fields say so.
    with pytest.raises(InputError, match="finite values only.*complete fields.*10 NaN"):
        validate_field_dataset(ds)
    # Infinities and all-missing data are errors.
    bad = foreign()
    bad["thetao"].values = np.where(bad["thetao"].values > 1501, np.inf, bad["thetao"].values)
    with pytest.raises(InputError, match="obj: expected finite values or NaN"):
        from_xarray(bad, variable="thetao")
    empty = foreign()
    empty["thetao"].values = np.full(empty["thetao"].shape, np.nan)
    with pytest.raises(InputError, match="not missing"):
        from_xarray(empty, variable="thetao")


def test_from_xarray_errors_name_the_argument():
    with pytest.raises(InputError, match=r"variable: expected the name of the data variable to read, one of "
                                          r"\['thetao', 'other'\]"):
        from_xarray(foreign())
    with pytest.raises(InputError, match="variable: expected a data variable of the dataset"):
        from_xarray(foreign(), variable="so")
    with pytest.raises(InputError, match=r"space_dims: .*not in the data \['x'\], not named \['lon'\]"):
        from_xarray(foreign(), variable="thetao", space_dims=("lat", "x", "depth"))
    with pytest.raises(InputError, match="dims: expected keys that are dims of the data"):
        from_xarray(foreign(), variable="thetao", dims={"latitude": "lat"})
    with pytest.raises(InputError, match="dims: expected a mapping that names the time dim"):
        from_xarray(foreign(names={"time": "step"}, dates=False), variable="thetao")
    with pytest.raises(InputError, match="dims: expected a mapping that leaves every dim a distinct name"):
        from_xarray(foreign(), variable="thetao", dims={"lat": "lon"})
    with pytest.raises(InputError, match="obj: expected an xr.Dataset or xr.DataArray"):
        from_xarray(np.zeros((2, 3)))
    with pytest.raises(InputError, match="split"):
        from_xarray(foreign(), variable="thetao", split="valid")
    dup = foreign().assign_coords(lon=[-40.0, -39.0, -39.0])
    with pytest.raises(InputError, match=r"obj\['lon'\]: expected a coordinate without repeated values"):
        from_xarray(dup, variable="thetao")


# -- NaN masks through the data layer -------------------------------------------------------------
def masked_collection():
    v = truth_values()
    v[:, 0, 0, :] = np.nan  # a land column
    v[:, 1, 1, 3:] = np.nan  # a shallow column: the two deepest levels missing
    return make_field_dataset(
        v[None], T, {"lat": LAT, "lon": LON, "depth": DEPTH}, units="m s-1", long_name="c",
        coord_units={"time": "days", "lat": "degrees_north", "lon": "degrees_east", "depth": "m"},
        provenance={"simulator": "toy", "parameters": {}, "seed": 0}, allow_missing=True,
    ).assign_coords(split=("trajectory", ["train"]))


def test_sampling_never_observes_missing_entries():
    traj = select_trajectory(masked_collection(), 0)
    n_missing_per_time = DEPTH.size + 2
    for kw in ({"rho": 0.5}, {"rho": 0.3, "jitter": 0.4}, {"rho": 1.0, "setting": 2}):
        obs = sample_observations(jax.random.key(1), traj, noise="gaussian", noise_scale=0.1, **kw)
        assert np.isfinite(obs.value).all() and obs.n_points > 0
        assert obs.attrs["missing_entries"] == n_missing_per_time * obs.time_stamps().size
        if "jitter" not in kw:
            assert obs.attrs["dropped_missing"] == 0
            n_valid = LAT.size * LON.size * DEPTH.size - n_missing_per_time
            assert (obs.counts() == max(1, int(np.floor(kw["rho"] * n_valid + 0.5)))).all()
    # Everything observed once: the land column never appears, the shallow column's NaN levels
    # are dropped and counted.
    prof = sample_observations(jax.random.key(2), traj, rho=1.0, pattern="profiles", noise="none")
    assert prof.attrs["dropped_missing"] == 2 * T.size
    assert prof.n_points == T.size * ((LAT.size * LON.size - 1) * DEPTH.size - 2)
    land = (prof.coords[:, 0] == LAT[0]) & (prof.coords[:, 1] == LON[0])
    assert not land.any()
    with pytest.raises(InputError, match="n_profiles: expected an int in \\[1, 11\\]"):
        sample_observations(jax.random.key(2), traj, rho=None, pattern="profiles", n_profiles=12)


def test_complete_fields_sample_as_before():
    """A field without missing entries takes the original code path (no missing attrs)."""
    ds = make_field_dataset(
        truth_values()[None], T, {"lat": LAT, "lon": LON, "depth": DEPTH}, units="m s-1", long_name="c",
        coord_units={"time": "days", "lat": "degrees_north", "lon": "degrees_east", "depth": "m"},
        provenance={"simulator": "toy", "parameters": {}, "seed": 0},
    )
    obs = sample_observations(jax.random.key(1), select_trajectory(ds, 0), rho=0.2)
    assert "missing_entries" not in obs.attrs and "n_missing" not in ds.attrs


def test_normalizer_skips_missing():
    ds = masked_collection()
    v = ds["field"].values
    norm = Normalizer.from_fields(ds)
    assert norm.mean == pytest.approx(np.nanmean(v)) and norm.std == pytest.approx(np.nanstd(v))


# -- point observations: tables -------------------------------------------------------------------
def table():
    rng = np.random.default_rng(1)
    n = 12
    return pd.DataFrame({
        "when": pd.Timestamp("2020-01-01") + pd.to_timedelta(np.repeat([0, 2, 4], 4), unit="D"),
        "latitude": rng.uniform(10, 12, n), "longitude": rng.uniform(-40, -38, n), "z": rng.uniform(0, 100, n),
        "c": 1500 + rng.normal(size=n), "err": np.full(n, 0.2),
    })


def test_from_dataframe_times_and_counts():
    df = table()
    df.loc[1, "c"] = np.nan
    df.loc[2, "when"] = pd.NaT
    df.loc[3, "z"] = np.nan
    df.loc[4, ["c", "z"]] = np.nan  # counted once, under its first reason (missing value)
    obs = observations_from_dataframe(df, value="c", time="when", coords={"lat": "latitude", "lon": "longitude",
                                      "depth": "z"}, noise_scale="err", noise_model="gaussian")
    assert obs.space_dims == ("lat", "lon", "depth") and obs.n_points == 8
    assert obs.attrs["dropped"] == {"missing_value": 2, "missing_time": 1, "missing_coords": 1}
    assert obs.attrs["n_rows"] == 12 and obs.attrs["n_kept"] == 8
    assert obs.attrs["time_origin"] == "2020-01-01T00:00:00" and obs.attrs["time_units"] == "days"
    np.testing.assert_array_equal(obs.time_stamps(), [0.0, 2.0, 4.0])
    np.testing.assert_array_equal(obs.noise_scale, 0.2)
    keep = np.ones(12, bool)
    keep[1:5] = False
    np.testing.assert_array_equal(obs.value, df["c"].values[keep])
    np.testing.assert_array_equal(obs.coords[:, 2], df["z"].values[keep])


def test_from_dataframe_time_formats(tmp_path):
    df = table()
    ref = observations_from_dataframe(df, value="c", time="when", coords=["latitude", "longitude"],
                                      time_origin="2019-12-31")
    np.testing.assert_allclose(ref.time_stamps(), [1.0, 3.0, 5.0])
    assert ref.space_dims == ("latitude", "longitude") and np.isnan(ref.noise_scale).all()
    # ISO strings (with Z), a CSV round trip, a time-zone-aware column and a time index agree.
    iso = df.assign(when=df["when"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    iso.to_csv(tmp_path / "points.csv", index=False)
    variants = [
        iso,
        pd.read_csv(tmp_path / "points.csv"),
        df.assign(when=df["when"].dt.tz_localize("Etc/GMT+3").dt.tz_convert("UTC")),
        df.set_index("when"),
    ]
    for v in variants:
        obs = observations_from_dataframe(v, value="c", time="when", coords=["latitude", "longitude"],
                                          time_origin="2019-12-31")
        np.testing.assert_allclose(obs.time, ref.time + (3 / 24 if v is variants[2] else 0.0))
    hours = observations_from_dataframe(df, value="c", time="when", coords=["latitude"], time_units="hours")
    np.testing.assert_allclose(hours.time_stamps(), [0.0, 48.0, 96.0])
    # Numeric times are used as they are.
    num = observations_from_dataframe(df.assign(t=np.repeat([0.5, 1.5, 2.5], 4)), value="c", time="t",
                                      coords=["latitude"], noise_scale=0.3)
    np.testing.assert_array_equal(num.time_stamps(), [0.5, 1.5, 2.5])
    np.testing.assert_array_equal(num.noise_scale, 0.3)


def test_from_dataframe_errors_name_the_argument():
    df = table()
    with pytest.raises(InputError, match=r"value: expected a column of the table, one of \['when'"):
        observations_from_dataframe(df, value="sound_speed", time="when", coords=["latitude"])
    with pytest.raises(InputError, match="time: expected a column of the table"):
        observations_from_dataframe(df, value="c", coords=["latitude"])
    with pytest.raises(InputError, match="coords: expected a column of the table"):
        observations_from_dataframe(df, value="c", time="when", coords={"lat": "LAT"})
    with pytest.raises(InputError, match="noise_scale: expected a column of the table"):
        observations_from_dataframe(df, value="c", time="when", coords=["latitude"], noise_scale="sigma")
    with pytest.raises(InputError, match="coords: expected a mapping"):
        observations_from_dataframe(df, value="c", time="when", coords="latitude")
    with pytest.raises(InputError, match="time: expected times as numbers, datetime64 values or date strings"):
        observations_from_dataframe(df.assign(when="yesterday-ish"), value="c", time="when", coords=["latitude"])
    with pytest.raises(InputError, match="df: expected a pandas.DataFrame"):
        observations_from_dataframe(df.to_dict(), value="c", coords=["latitude"])
    with pytest.raises(InputError, match="time_origin: expected a date"):
        observations_from_dataframe(df, value="c", time="when", coords=["latitude"], time_origin="soon")


# -- point observations: Argo-style profiles -----------------------------------------------------
def profiles():
    n_prof, n_lev = 4, 6
    depth = np.tile(np.linspace(0, 100, n_lev), (n_prof, 1))
    value = 1500 + np.arange(n_prof * n_lev, dtype=np.float64).reshape(n_prof, n_lev)
    value[0, 4:] = np.nan  # a shallow profile
    value[2, 1] = np.nan  # a bad level
    depth[3, 5] = np.nan  # a level without depth
    return xr.Dataset(
        {
            "JULD": ("N_PROF", ORIGIN + np.array([0, 1, 1, 3], "timedelta64[D]").astype("timedelta64[ns]")),
            "LATITUDE": ("N_PROF", np.array([10.0, 10.5, 11.0, 11.5])),
            "LONGITUDE": ("N_PROF", np.array([-40.0, -39.5, -39.0, -38.5])),
            "DEPTH": (("N_PROF", "N_LEVELS"), depth),
            "TEMP_ERR": ("N_PROF", np.array([0.1, 0.2, 0.3, 0.4])),
            "SOUND_SPEED": (("N_PROF", "N_LEVELS"), value, {"units": "m s-1"}),
        }
    )


def test_from_xarray_flattens_profiles():
    ds = profiles()
    obs = observations_from_xarray(ds, value="SOUND_SPEED", time="JULD",
                                   coords={"lat": "LATITUDE", "lon": "LONGITUDE", "depth": "DEPTH"},
                                   noise_scale="TEMP_ERR", noise_model="gaussian")
    assert obs.n_points == 24 - 3 - 1
    assert obs.attrs["dropped"] == {"missing_value": 3, "missing_time": 0, "missing_coords": 1}
    assert obs.attrs["source"]["dims"] == {"N_PROF": 4, "N_LEVELS": 6} and obs.attrs["units"] == "m s-1"
    v = ds["SOUND_SPEED"].values
    keep = np.isfinite(v) & np.isfinite(ds["DEPTH"].values)
    np.testing.assert_array_equal(obs.value, v[keep])
    np.testing.assert_array_equal(obs.time, np.broadcast_to(np.array([0.0, 1, 1, 3])[:, None], v.shape)[keep])
    np.testing.assert_array_equal(obs.coords[:, 0], np.broadcast_to(ds["LATITUDE"].values[:, None], v.shape)[keep])
    np.testing.assert_array_equal(obs.noise_scale, np.broadcast_to(ds["TEMP_ERR"].values[:, None], v.shape)[keep])
    # Dims in the other order give the same points (in that order).
    swapped = ds.transpose("N_LEVELS", "N_PROF")
    other = observations_from_xarray(swapped, value="SOUND_SPEED", time="JULD",
                                     coords={"lat": "LATITUDE", "lon": "LONGITUDE", "depth": "DEPTH"})
    assert sorted(other.value) == sorted(obs.value)


def test_from_xarray_profile_errors():
    ds = profiles()
    coords = {"lat": "LATITUDE", "lon": "LONGITUDE", "depth": "DEPTH"}
    with pytest.raises(InputError, match="value: expected a variable or coordinate of the dataset, one of"):
        observations_from_xarray(ds, value="TEMP", time="JULD", coords=coords)
    with pytest.raises(InputError, match="time: expected a variable or coordinate"):
        observations_from_xarray(ds, value="SOUND_SPEED", coords=coords)
    with pytest.raises(InputError, match="coords: expected a variable or coordinate"):
        observations_from_xarray(ds, value="SOUND_SPEED", time="JULD", coords={"lat": "LAT"})
    with pytest.raises(InputError, match="variable 'DEPTH' with dims among those of 'LATITUDE'"):
        observations_from_xarray(ds, value="LATITUDE", time="JULD", coords=coords)
    with pytest.raises(InputError, match="ds: expected an xr.Dataset"):
        observations_from_xarray(ds["SOUND_SPEED"], value="SOUND_SPEED", time="JULD", coords=coords)


def test_to_float_time_cf_numbers_and_durations():
    t, info = to_float_time(np.array([0.0, 12.0, np.nan]), {"units": "hours since 2000-01-01 00:00:00 UTC"})
    np.testing.assert_allclose(t, [0.0, 0.5, np.nan])
    assert info["time_origin"] == "2000-01-01T00:00:00"
    d, info = to_float_time(np.array([0, 36], "timedelta64[h]"), time_units="days")
    np.testing.assert_allclose(d, [0.0, 1.5])
    with pytest.raises(InputError, match="all 2 missing"):
        to_float_time(np.array(["NaT", "NaT"], "datetime64[ns]"))


# -- the shipped example files ----------------------------------------------------------------------
def test_example_files_ship_and_read_from_any_directory(tmp_path):
    code = (
        "import xarray as xr, pandas as pd\n"
        "from sdift_prob import examples\n"
        "from sdift_prob.data import observations_from_dataframe, observations_from_xarray\n"
        "ds = xr.open_dataset(examples.path('argo_profiles.nc'), engine='h5netcdf')\n"
        "a = observations_from_xarray(ds, value='SOUND_SPEED', time='JULD', coords={'lat': 'LATITUDE', "
        "'lon': 'LONGITUDE', 'depth': 'DEPTH'}, noise_scale='SOUND_SPEED_ERROR', time_origin=examples.TIME_ORIGIN)\n"
        "b = observations_from_dataframe(pd.read_csv(examples.path('ship_points.csv')), value='sound_speed', "
        "coords={'lat': 'latitude', 'lon': 'longitude', 'depth': 'depth'}, noise_scale='sound_speed_error', "
        "time_origin=examples.TIME_ORIGIN)\n"
        "print(a.n_points, a.attrs['n_rows'], a.attrs['dropped']['missing_value'], a.time.max(), "
        "b.n_points, b.attrs['dropped']['missing_value'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    n_a, rows_a, drop_a, t_max, n_b, drop_b = int(out[0]), int(out[1]), int(out[2]), float(out[3]), int(out[4]), \
        int(out[5])
    assert rows_a == 60 * 22 and n_a + drop_a == rows_a and 800 < n_a < 1100 and t_max == 38.0
    assert n_b + drop_b == 400 and 0 < drop_b < 20
    for name in examples.FILES:
        assert examples.path(name).stat().st_size < 60_000
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["sdift_prob"]
    assert "examples/*.nc" in data and "examples/*.csv" in data


def test_example_script_is_deterministic(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_example_data
    finally:
        sys.path.pop(0)
    make_example_data.make(tmp_path, seed=0)
    with xr.open_dataset(tmp_path / "argo_profiles.nc", engine="h5netcdf") as new, \
            xr.open_dataset(examples.path("argo_profiles.nc"), engine="h5netcdf") as shipped:
        xr.testing.assert_identical(new.load(), shipped.load())
    assert (tmp_path / "ship_points.csv").read_text() == examples.path("ship_points.csv").read_text()
    # The examples observe the shipped test trajectory: values are close to the truth.
    truth = select_trajectory(load_fields(Path(examples.ROOT).parent / "pretrained" / "ocean" /
                                          "test_trajectory.nc"), 0)
    obs = observations_from_dataframe(pd.read_csv(examples.path("ship_points.csv")), value="sound_speed",
                                      coords={"lat": "latitude", "lon": "longitude", "depth": "depth"},
                                      time_origin=examples.TIME_ORIGIN)
    assert obs.value.min() > float(truth.min()) - 5 and obs.value.max() < float(truth.max()) + 5


def test_concatenate_sets():
    a = observations_from_xarray(profiles(), value="SOUND_SPEED", time="JULD",
                                 coords={"lat": "LATITUDE", "lon": "LONGITUDE", "depth": "DEPTH"},
                                 noise_scale="TEMP_ERR", noise_model="gaussian")
    df = table()
    b = observations_from_dataframe(df, value="c", time="when", coords={"lat": "latitude", "lon": "longitude",
                                    "depth": "z"}, noise_scale=0.5, noise_model="gaussian")
    both = ObservationSet.concatenate([a, b])
    assert both.n_points == a.n_points + b.n_points and both.noise_model == "gaussian"
    np.testing.assert_array_equal(both.value, np.concatenate([a.value, b.value]))
    assert both.attrs["sources"][0]["dropped"] == a.attrs["dropped"]
    c = observations_from_dataframe(df, value="c", time="when", coords=["latitude", "longitude"])
    with pytest.raises(InputError, match=r"sets\[1\].space_dims"):
        ObservationSet.concatenate([a, c])
    with pytest.raises(InputError, match="sets: expected a non-empty sequence"):
        ObservationSet.concatenate(a)


def test_steps_needing_complete_fields_say_so():
    from sdift_prob.ftm import fit_ftm

    with pytest.raises(InputError, match="complete fields.*NaN masks"):
        fit_ftm(masked_collection(), (2, 2, 2), key=jax.random.key(0), progress=False)
