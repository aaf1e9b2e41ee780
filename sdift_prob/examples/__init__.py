"""Small example files in common layouts, shipped inside the package (see `path`).

Made deterministically by `scripts/make_example_data.py` from the shipped ocean test trajectory
(`sdift_prob.pretrained.path("ocean") / "test_trajectory.nc"`), so the true field is known:

- `argo_profiles.nc`: Argo-like CTD profiles — dims `N_PROF x N_LEVELS`, `JULD` (CF datetimes,
  "days since 1950-01-01"), `LATITUDE`, `LONGITUDE`, `PRES`, `DEPTH`, `SOUND_SPEED` with NaN
  below the bottom of each profile and at a few bad levels, `SOUND_SPEED_ERROR` per profile.
- `ship_points.csv`: point samples, one row per observation — `time` (ISO 8601, UTC),
  `latitude`, `longitude`, `depth`, `sound_speed` (empty where missing), `sound_speed_error`.

Times are dates: the ocean model's time 0 is `TIME_ORIGIN`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError

ROOT = Path(__file__).resolve().parent
FILES = ("argo_profiles.nc", "ship_points.csv")
# The date of time 0 (days) of the shipped ocean test trajectory in the example files.
TIME_ORIGIN = "2021-03-01T00:00:00"


def path(name: str) -> Path:
    """Path of the shipped example file `name` (one of `FILES`)."""
    if name not in FILES:
        raise InputError(f"name: expected one of {FILES}, got {name!r}")
    return ROOT / name
