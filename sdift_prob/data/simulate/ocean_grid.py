"""The ocean simulator's grid: a (lat, lon, depth) box sampled every `dt_days` days, and the
lengths of a degree and of a drift, in km.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import numpy as np

from ._common import check_int, check_interval, check_range
from ...errors import bad_input



_KM_PER_DEG_LAT = 110.57
_KM_PER_DEG_LON_EQ = 111.32
_KM_PER_DAY_PER_M_S = 86.4


@dataclasses.dataclass(frozen=True)
class OceanGrid:
    """Coordinates of one ocean trajectory.

    `lat (I1,)` degrees north, `lon (I2,)` degrees east, `depth (I3,)` metres (positive down,
    stretched: finer near the surface), `time (T,)` days.
    """

    lat: np.ndarray
    lon: np.ndarray
    depth: np.ndarray
    time: np.ndarray


def ocean_grid(
    nlat: int = 24,
    nlon: int = 24,
    ndepth: int = 16,
    nt: int = 20,
    *,
    dt_days: float = 2.0,
    lat_range: Sequence[float] = (20.0, 24.0),
    lon_range: Sequence[float] = (124.0, 128.0),
    max_depth: float = 1000.0,
    depth_stretch: float = 2.0,
) -> OceanGrid:
    """The grid of the ocean simulator.

    **Arguments:**

    - `nlat`, `nlon`, `ndepth`, `nt`: number of latitudes, longitudes, depths and time stamps
      (each at least 2).
    - `dt_days`: spacing of the time stamps in days (> 0); time starts at 0.
    - `lat_range`, `lon_range`: `(lo, hi)` in degrees, `lo < hi`, latitudes within [-80, 80].
    - `max_depth`: deepest level in metres (> 0); the surface level is 0 m.
    - `depth_stretch`: exponent `p >= 1` of `depth_k = max_depth * (k / (ndepth - 1)) ** p`
      (1 = uniform; larger = finer near the surface).

    **Returns:**

    An `OceanGrid` with `lat (nlat,)`, `lon (nlon,)`, `depth (ndepth,)`, `time (nt,)`.
    """
    for name, value in (("nlat", nlat), ("nlon", nlon), ("ndepth", ndepth), ("nt", nt)):
        check_int(name, value, minimum=2)
    check_range("dt_days", dt_days, lo=0.0, lo_open=True)
    check_range("max_depth", max_depth, lo=0.0, lo_open=True)
    check_range("depth_stretch", depth_stretch, lo=1.0)
    lat_lo, lat_hi = _check_box_side("lat_range", lat_range, -80.0, 80.0)
    lon_lo, lon_hi = _check_box_side("lon_range", lon_range, -360.0, 360.0)
    s = np.linspace(0.0, 1.0, ndepth)
    return OceanGrid(
        lat=np.linspace(lat_lo, lat_hi, nlat),
        lon=np.linspace(lon_lo, lon_hi, nlon),
        depth=float(max_depth) * s ** float(depth_stretch),
        time=float(dt_days) * np.arange(nt, dtype=np.float64),
    )


def _check_box_side(name: str, value: Sequence[float], lo: float, hi: float) -> tuple[float, float]:
    a, b = check_interval(name, value, lo=lo, hi=hi)
    if a == b:
        raise bad_input(name, "lo < hi", value)
    return a, b
