"""Make the shipped example files (`sdift_prob/examples/`) from the shipped ocean test trajectory.

    .venv/bin/python scripts/make_example_data.py [--out sdift_prob/examples] [--seed 0]

Deterministic for a given seed. Both files observe the true field of
`sdift_prob/pretrained/ocean/test_trajectory.nc` (multilinear interpolation at off-grid
positions) plus Gaussian noise of known std, at the trajectory's time stamps (every 2 days from
`sdift_prob.examples.TIME_ORIGIN`), in two common layouts:

- `argo_profiles.nc`: Argo-like profiles, dims `N_PROF x N_LEVELS`; each profile stops at its
  own bottom level (NaN below) and a few levels are flagged bad (NaN).
- `ship_points.csv`: a point table, one row per sample; a few rows have no value.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gsw
import jax
import numpy as np
import pandas as pd
import xarray as xr
from scipy.interpolate import RegularGridInterpolator

from sdift_prob import examples, pretrained
from sdift_prob.data import load_fields, select_trajectory
from sdift_prob.io import NETCDF_ENGINE, atomic_file

PROFILES_PER_TIME = 3
LEVELS = np.array([0, 5, 10, 20, 30, 40, 50, 75, 100, 125, 150, 200, 250, 300, 350, 400, 500,
                   600, 700, 800, 900, 1000], dtype=np.float64)  # standard depths (m)
POINTS_PER_TIME = 20
NOISE_STD = 1.0  # m s-1
BAD_LEVEL_FRACTION = 0.03
MISSING_ROW_FRACTION = 0.02


def _rng(key: jax.Array) -> np.random.Generator:
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())


def _interpolator(frame: xr.DataArray) -> RegularGridInterpolator:
    axes = [np.asarray(frame[d].values, dtype=np.float64) for d in ("lat", "lon", "depth")]
    return RegularGridInterpolator(axes, np.asarray(frame.transpose("lat", "lon", "depth").values, np.float64))


def make(out: Path, seed: int) -> None:
    truth = select_trajectory(load_fields(pretrained.path("ocean") / "test_trajectory.nc"), 0)
    times = np.asarray(truth.time.values, dtype=np.float64)  # days since TIME_ORIGIN
    origin = np.datetime64(examples.TIME_ORIGIN, "ns")
    dates = origin + (times * 86_400 * 10**9).astype("timedelta64[ns]")
    lat, lon = truth.lat.values, truth.lon.values
    margin = 0.05 * (lat[-1] - lat[0])
    k_argo, k_csv = jax.random.split(jax.random.key(seed))

    # -- Argo-like profiles -------------------------------------------------------------------
    rng = _rng(k_argo)
    n_prof = PROFILES_PER_TIME * times.size
    t_index = np.repeat(np.arange(times.size), PROFILES_PER_TIME)
    p_lat = rng.uniform(lat[0] + margin, lat[-1] - margin, n_prof)
    p_lon = rng.uniform(lon[0] + margin, lon[-1] - margin, n_prof)
    n_valid = rng.integers(12, LEVELS.size + 1, n_prof)  # each profile's deepest level
    depth = np.full((n_prof, LEVELS.size), np.nan)
    value = np.full((n_prof, LEVELS.size), np.nan)
    for p in range(n_prof):
        levels = LEVELS[: n_valid[p]].copy()
        levels[1:] *= 1.0 + rng.uniform(-0.02, 0.02, levels.size - 1)  # not exactly on standard depths
        levels = np.clip(levels, 0.0, float(truth.depth[-1]))
        depth[p, : levels.size] = levels
        pts = np.stack([np.full(levels.size, p_lat[p]), np.full(levels.size, p_lon[p]), levels], axis=-1)
        exact = _interpolator(truth.isel(time=t_index[p]))(pts)
        value[p, : levels.size] = exact + NOISE_STD * rng.standard_normal(levels.size)
    bad = (rng.uniform(size=value.shape) < BAD_LEVEL_FRACTION) & np.isfinite(value)
    value[bad] = np.nan  # flagged bad levels: the depth is known, the value is not
    pres = np.where(np.isfinite(depth), gsw.p_from_z(-np.nan_to_num(depth), p_lat[:, None]), np.nan)
    argo = xr.Dataset(
        {
            "JULD": ("N_PROF", dates[t_index], {"standard_name": "time", "long_name":
                     "Julian day (UTC) of the station relative to REFERENCE_DATE_TIME", "axis": "T"}),
            "LATITUDE": ("N_PROF", p_lat, {"units": "degree_north", "standard_name": "latitude"}),
            "LONGITUDE": ("N_PROF", p_lon, {"units": "degree_east", "standard_name": "longitude"}),
            "PLATFORM_NUMBER": ("N_PROF", np.array([f"{6900000 + p % 12:d}" for p in range(n_prof)])),
            "CYCLE_NUMBER": ("N_PROF", (np.arange(n_prof) // 12 + 1).astype(np.int32)),
            "PRES": (("N_PROF", "N_LEVELS"), pres.astype(np.float32), {"units": "decibar",
                     "long_name": "sea water pressure, equals 0 at sea level"}),
            "DEPTH": (("N_PROF", "N_LEVELS"), depth.astype(np.float32), {"units": "m", "positive": "down",
                      "long_name": "depth below sea surface"}),
            "SOUND_SPEED": (("N_PROF", "N_LEVELS"), value.astype(np.float32), {"units": "m s-1",
                            "long_name": "speed of sound in sea water"}),
            "SOUND_SPEED_ERROR": ("N_PROF", np.full(n_prof, NOISE_STD, np.float32), {"units": "m s-1",
                                  "long_name": "noise std of SOUND_SPEED"}),
        },
        attrs={
            "title": "Argo-like sound-speed profiles (synthetic example for sdift-prob)",
            "source": "scripts/make_example_data.py from sdift_prob/pretrained/ocean/test_trajectory.nc",
            "seed": seed,
            "Conventions": "CF-1.8",
            "REFERENCE_DATE_TIME": "19500101000000",
        },
    )
    enc = {v: {"zlib": True, "complevel": 4} for v in ("PRES", "DEPTH", "SOUND_SPEED")}
    enc["JULD"] = {"units": "days since 1950-01-01 00:00:00", "calendar": "standard", "dtype": "float64"}
    for v in ("LATITUDE", "LONGITUDE", "SOUND_SPEED_ERROR"):
        enc[v] = {"_FillValue": None}
    with atomic_file(out / "argo_profiles.nc", overwrite=True) as tmp:
        argo.to_netcdf(tmp, engine=NETCDF_ENGINE, encoding=enc)

    # -- point table (CSV) --------------------------------------------------------------------
    rng = _rng(k_csv)
    n = POINTS_PER_TIME * times.size
    ti = np.repeat(np.arange(times.size), POINTS_PER_TIME)
    pts = np.stack([rng.uniform(lat[0], lat[-1], n), rng.uniform(lon[0], lon[-1], n),
                    rng.uniform(0.0, float(truth.depth[-1]), n)], axis=-1)
    exact = np.empty(n)
    for i in range(times.size):
        rows = ti == i
        exact[rows] = _interpolator(truth.isel(time=i))(pts[rows])
    noisy = exact + NOISE_STD * rng.standard_normal(n)
    noisy[rng.uniform(size=n) < MISSING_ROW_FRACTION] = np.nan
    table = pd.DataFrame({
        "time": pd.DatetimeIndex(dates[ti]).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "latitude": np.round(pts[:, 0], 5),
        "longitude": np.round(pts[:, 1], 5),
        "depth": np.round(pts[:, 2], 2),
        "sound_speed": np.round(noisy, 3),
        "sound_speed_error": NOISE_STD,
    })
    with atomic_file(out / "ship_points.csv", overwrite=True) as tmp:
        table.to_csv(tmp, index=False, na_rep="")
    valid = int(np.isfinite(value).sum())
    print(f"argo_profiles.nc: {n_prof} profiles x {LEVELS.size} levels, {valid} values "
          f"({int(bad.sum())} bad levels, {int(np.isnan(depth).sum())} below the bottom)")
    print(f"ship_points.csv: {n} rows, {int(np.isnan(noisy).sum())} without a value")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=examples.ROOT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make(args.out, args.seed)


if __name__ == "__main__":
    main()
