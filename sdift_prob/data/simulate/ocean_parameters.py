"""Random physical parameters of one ocean trajectory (mixed layer, thermocline, eddies, internal
waves, smooth heave noise), drawn from a NumPy generator.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math

import numpy as np
from scipy.ndimage import gaussian_filter

from ._common import check_int, check_range
from ...errors import bad_input
from .ocean_grid import OceanGrid, _KM_PER_DEG_LAT, _KM_PER_DEG_LON_EQ


@dataclasses.dataclass(frozen=True)
class OceanParameters:
    """Random physical parameters of one ocean trajectory (all in the units named).

    Background profile: mixed layer temperature `t_ml` (deg C) with meridional gradient
    `t_ml_dlat` (deg C per degree) and trend `t_ml_trend` (deg C/day), mixed layer depth `mld`
    (m) with trend `mld_trend` (m/day), deep temperature `t_deep`, main thermocline depth below
    the mixed layer `z_thermo` (m) with slopes `z_thermo_dlat`, `z_thermo_dlon` (m/degree),
    thermocline half-width `w_thermo` (m), share `a_thermo` of the tanh part and e-folding
    depth `h_deep` (m) of the rest. Salinity: base `s_base`, subsurface maximum `s_max_amp`
    at `s_max_depth`, intermediate minimum `s_min_amp` at `s_min_depth`.

    Eddies `(E,)` each: start position `eddy_lat0`, `eddy_lon0` (degrees), velocity
    `eddy_u`, `eddy_v` (m/s, east/north; background current plus beta drift), radius
    `eddy_radius` (km, e-folding of exp(-r^2 / 2R^2)), polarity `eddy_sign` (+1 warm core),
    thermocline displacement `eddy_heave` (m), e-folding depth `eddy_depth` (m), surface
    temperature anomaly `eddy_sst` (deg C), life cycle peak `eddy_t_peak` and width
    `eddy_t_width` (days).

    Internal waves `(W,)`: vertical mode `iw_mode`, amplitude `iw_amp` (m), wavenumbers
    `iw_kx`, `iw_ky` (rad/km), frequency `iw_omega` (rad/day), phase `iw_phase`.

    Noise: `noise_heave` `(T, I1, I2, I3)` metres of smooth random heave.
    """

    t_ml: float
    t_ml_dlat: float
    t_ml_trend: float
    mld: float
    mld_trend: float
    t_deep: float
    z_thermo: float
    z_thermo_dlat: float
    z_thermo_dlon: float
    w_thermo: float
    a_thermo: float
    h_deep: float
    s_base: float
    s_max_amp: float
    s_max_depth: float
    s_min_amp: float
    s_min_depth: float
    eddy_lat0: np.ndarray
    eddy_lon0: np.ndarray
    eddy_u: np.ndarray
    eddy_v: np.ndarray
    eddy_radius: np.ndarray
    eddy_sign: np.ndarray
    eddy_heave: np.ndarray
    eddy_depth: np.ndarray
    eddy_sst: np.ndarray
    eddy_t_peak: np.ndarray
    eddy_t_width: np.ndarray
    iw_mode: np.ndarray
    iw_amp: np.ndarray
    iw_kx: np.ndarray
    iw_ky: np.ndarray
    iw_omega: np.ndarray
    iw_phase: np.ndarray
    noise_heave: np.ndarray


def check_draw_settings(n_eddies: Sequence[int], n_internal_waves: int, noise_heave_m: float,
                        noise_length_km: float) -> tuple[int, int]:
    """The settings of `draw_ocean_parameters` checked (also by `simulate_ocean`, before any
    work); returns `n_eddies` as `(min, max)` ints."""
    try:
        e_lo, e_hi = n_eddies
    except (TypeError, ValueError) as exc:
        raise bad_input("n_eddies", "a pair (min, max) of ints", n_eddies) from exc
    e_lo = check_int("n_eddies[0]", e_lo, minimum=0)
    e_hi = check_int("n_eddies[1]", e_hi, minimum=e_lo)
    check_int("n_internal_waves", n_internal_waves, minimum=0)
    check_range("noise_heave_m", noise_heave_m, lo=0.0)
    check_range("noise_length_km", noise_length_km, lo=0.0, lo_open=True)
    return e_lo, e_hi


def draw_ocean_parameters(
    rng: np.random.Generator,
    grid: OceanGrid,
    *,
    n_eddies: Sequence[int] = (2, 5),
    n_internal_waves: int = 3,
    noise_heave_m: float = 4.0,
    noise_length_km: float = 40.0,
) -> OceanParameters:
    """Draw the random parameters of one trajectory.

    **Arguments:**

    - `rng`: NumPy generator (one per trajectory).
    - `grid`: the `OceanGrid` (sets where eddies start and the noise shape).
    - `n_eddies`: `(min, max)` number of eddies, drawn uniformly (inclusive).
    - `n_internal_waves`: number of internal-wave components (vertical modes 1.. cycling 1-3).
    - `noise_heave_m`: standard deviation of the smooth random heave, metres.
    - `noise_length_km`: horizontal correlation length of that noise, km.

    **Returns:**

    `OceanParameters` (see there for names and units).
    """
    if not isinstance(rng, np.random.Generator):
        raise bad_input("rng", "a numpy.random.Generator", type(rng).__name__)
    if not isinstance(grid, OceanGrid):
        raise bad_input("grid", "an OceanGrid (from ocean_grid)", type(grid).__name__)
    e_lo, e_hi = check_draw_settings(n_eddies, n_internal_waves, noise_heave_m, noise_length_km)
    lat_span = float(grid.lat[-1] - grid.lat[0])
    lon_span = float(grid.lon[-1] - grid.lon[0])
    u = rng.uniform
    profile = dict(
        t_ml=u(26.5, 29.5), t_ml_dlat=u(-0.45, -0.1), t_ml_trend=u(-0.03, 0.03),
        mld=u(30.0, 80.0), mld_trend=u(-0.5, 0.5), t_deep=u(3.0, 4.0),
        z_thermo=u(90.0, 150.0), z_thermo_dlat=u(-12.0, 12.0), z_thermo_dlon=u(-12.0, 12.0),
        w_thermo=u(45.0, 75.0), a_thermo=u(0.15, 0.3), h_deep=u(270.0, 380.0),
        s_base=u(34.4, 34.6), s_max_amp=u(0.3, 0.55), s_max_depth=u(120.0, 180.0),
        s_min_amp=u(0.15, 0.3), s_min_depth=u(480.0, 620.0),
    )
    n_e = int(rng.integers(e_lo, e_hi + 1))
    # A shared background current plus a westward beta drift (~ beta * Rd^2), whose meridional
    # part sends anticyclones (warm) equatorward and cyclones poleward.
    current_speed, current_dir = u(0.0, 0.1), u(0.0, 2 * np.pi)
    sign = rng.choice(np.array([-1.0, 1.0]), size=n_e)
    beta_west = u(0.04, 0.09, size=n_e)
    eddy_u = current_speed * np.cos(current_dir) - beta_west + u(-0.02, 0.02, size=n_e)
    eddy_v = current_speed * np.sin(current_dir) - sign * u(0.15, 0.35, size=n_e) * beta_west + u(-0.02, 0.02, size=n_e)
    eddies = dict(
        eddy_lat0=grid.lat[0] + lat_span * u(-0.15, 1.15, size=n_e),
        eddy_lon0=grid.lon[0] + lon_span * u(0.0, 1.3, size=n_e),  # biased east: they drift west
        eddy_u=eddy_u, eddy_v=eddy_v, eddy_radius=u(30.0, 100.0, size=n_e), eddy_sign=sign,
        eddy_heave=u(30.0, 90.0, size=n_e), eddy_depth=u(300.0, 700.0, size=n_e),
        eddy_sst=u(0.2, 0.8, size=n_e), eddy_t_peak=u(-20.0, 60.0, size=n_e),
        eddy_t_width=u(25.0, 80.0, size=n_e),
    )
    n_w = int(n_internal_waves)
    modes = 1.0 + np.arange(n_w) % 3
    wavelength = u(100.0, 300.0, size=n_w)
    direction = u(0.0, 2 * np.pi, size=n_w)
    waves = dict(
        iw_mode=modes, iw_amp=u(5.0, 15.0, size=n_w) / modes,
        iw_kx=2 * np.pi / wavelength * np.cos(direction), iw_ky=2 * np.pi / wavelength * np.sin(direction),
        iw_omega=2 * np.pi / u(4.5, 10.0, size=n_w), iw_phase=u(0.0, 2 * np.pi, size=n_w),
    )
    noise = _smooth_noise(rng, grid, noise_length_km) * float(noise_heave_m)
    return OceanParameters(**profile, **eddies, **waves, noise_heave=noise)


def _smooth_noise(rng: np.random.Generator, grid: OceanGrid, length_km: float) -> np.ndarray:
    """Unit-variance noise `(T, I1, I2, I3)`: Gaussian-filtered in space, AR(1) in time."""
    shape = (grid.time.size, grid.lat.size, grid.lon.size, grid.depth.size)
    white = rng.standard_normal(shape)
    dy = _KM_PER_DEG_LAT * float(np.mean(np.diff(grid.lat)))
    dx = _KM_PER_DEG_LON_EQ * math.cos(math.radians(float(np.mean(grid.lat)))) * float(np.mean(np.diff(grid.lon)))
    sigma = (0.0, length_km / dy, length_km / dx, 1.0)
    smooth = gaussian_filter(white, sigma=sigma, mode="reflect")
    smooth /= max(float(smooth.std()), 1e-12)
    # Correlation 0.8 between neighbouring time stamps keeps the noise evolving, not flickering.
    rho = 0.8
    out = np.empty_like(smooth)
    out[0] = smooth[0]
    for t in range(1, shape[0]):
        out[t] = rho * out[t - 1] + math.sqrt(1 - rho**2) * smooth[t]
    return out
