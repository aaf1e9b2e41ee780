"""Synthetic ocean sound speed: thermocline + drifting mesoscale eddies + internal-wave heave, via TEOS-10.

Each trajectory is a (lat, lon, depth) box in the Philippine Sea (default 20-24 N, 124-128 E,
0-1000 m, where the Subtropical Countercurrent sheds westward-drifting eddies) sampled every
`dt_days` days. Temperature and Practical Salinity come from analytic profiles whose depth
axis is displaced ("heaved") by eddies, internal waves and smooth noise; sound speed follows
from `gsw` (TEOS-10). Everything except the noise is analytic in physical coordinates, so the
same trajectory can be drawn at any resolution up to that noise.

`gsw` is NumPy-only, so this simulator is NumPy (not JAX); randomness comes from a NumPy
`SeedSequence` with `spawn_key=(i,)` per trajectory, so trajectory `i` does not depend on how
many are generated.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import gsw
import numpy as np
import xarray as xr
from jaxtyping import Float
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from ...errors import NumericalError, bad_input
from ._common import (
    check_choice,
    check_int,
    check_interval,
    check_range,
    check_seed,
    finish_collection,
    resolve_n_test,
)

SIMULATOR = "ocean"
VARIABLES = {
    "sound_speed": ("m s-1", "speed of sound in sea water"),
    "temperature": ("degC", "sea water in-situ temperature"),
    "salinity": ("1", "sea water practical salinity"),
}
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


def sound_speed_teos10(
    temperature: Float[np.ndarray, "*shape"],
    salinity: Float[np.ndarray, "*shape"],
    depth: Float[np.ndarray, "*shape"],
    lat: Float[np.ndarray, "*shape"],
    lon: Float[np.ndarray, "*shape"],
) -> Float[np.ndarray, "*shape"]:
    """Sound speed of sea water from in-situ temperature and Practical Salinity (TEOS-10, `gsw`).

    Chain: `p = p_from_z(-depth, lat)`, `SA = SA_from_SP(SP, p, lon, lat)`,
    `CT = CT_from_t(SA, t, p)`, `c = sound_speed(SA, CT, p)`.

    **Arguments:** (all broadcast together)

    - `temperature`: in-situ temperature, deg C.
    - `salinity`: Practical Salinity (PSS-78, unitless).
    - `depth`: metres, positive down.
    - `lat`, `lon`: degrees north / east.

    **Returns:**

    Sound speed in m/s, of the broadcast shape. Raises `NumericalError` where TEOS-10 gives a
    non-finite value (e.g. a position outside the ocean atlas or salinity out of range).
    """
    arrays = {}
    for name, value in (("temperature", temperature), ("salinity", salinity), ("depth", depth),
                        ("lat", lat), ("lon", lon)):
        arr = np.asarray(value, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise bad_input(name, "finite values", f"{int((~np.isfinite(arr)).sum())} NaN/inf entries")
        arrays[name] = arr
    try:
        np.broadcast_shapes(*(a.shape for a in arrays.values()))
    except ValueError as exc:
        raise bad_input("temperature, salinity, depth, lat, lon", "arrays that broadcast together",
                        [a.shape for a in arrays.values()]) from exc
    if (arrays["depth"] < 0).any():
        raise bad_input("depth", "depths >= 0 m (positive down)", float(arrays["depth"].min()))
    if (np.abs(arrays["lat"]) > 90).any():
        raise bad_input("lat", "latitudes within [-90, 90]", float(np.abs(arrays["lat"]).max()))
    p = gsw.p_from_z(-arrays["depth"], arrays["lat"])
    sa = gsw.SA_from_SP(arrays["salinity"], p, arrays["lon"], arrays["lat"])
    ct = gsw.CT_from_t(sa, arrays["temperature"], p)
    c = np.asarray(gsw.sound_speed(sa, ct, p))
    if not np.isfinite(c).all():
        raise NumericalError(
            f"TEOS-10 sound speed is non-finite at {int((~np.isfinite(c)).sum())} of {c.size} points "
            "(position outside the ocean atlas, or temperature/salinity outside TEOS-10's range)"
        )
    return c


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
    try:
        e_lo, e_hi = n_eddies
    except (TypeError, ValueError) as exc:
        raise bad_input("n_eddies", "a pair (min, max) of ints", n_eddies) from exc
    e_lo = check_int("n_eddies[0]", e_lo, minimum=0)
    e_hi = check_int("n_eddies[1]", e_hi, minimum=e_lo)
    check_int("n_internal_waves", n_internal_waves, minimum=0)
    check_range("noise_heave_m", noise_heave_m, lo=0.0)
    check_range("noise_length_km", noise_length_km, lo=0.0, lo_open=True)
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


def _temperature_profile(z: np.ndarray, t_ml, mld, t_deep, z_thermo, w_thermo, a_thermo, h_deep) -> np.ndarray:
    # Depth below the mixed layer, smoothed (softplus over 10 m) so T is uniform above it.
    zeta = 10.0 * np.logaddexp(0.0, (z - mld) / 10.0)
    tanh_part = (1 - np.tanh((zeta - z_thermo) / w_thermo)) / (1 - np.tanh(-z_thermo / w_thermo))
    shape = a_thermo * tanh_part + (1 - a_thermo) * np.exp(-zeta / h_deep)
    return t_deep + (t_ml - t_deep) * shape


def _salinity_profile(z: np.ndarray, p: OceanParameters) -> np.ndarray:
    return (p.s_base + p.s_max_amp * np.exp(-(((z - p.s_max_depth) / 90.0) ** 2))
            - p.s_min_amp * np.exp(-(((z - p.s_min_depth) / 200.0) ** 2)))


def ocean_temperature_salinity(
    params: OceanParameters, grid: OceanGrid
) -> tuple[Float[np.ndarray, "T I1 I2 I3"], Float[np.ndarray, "T I1 I2 I3"]]:
    """In-situ temperature and Practical Salinity of one trajectory on the grid.

    The background profiles are evaluated at the heaved depth `z - eta`, where `eta` (m,
    positive down) sums the eddies' thermocline displacement, internal-wave modes and smooth
    noise; eddies also carry a surface temperature anomaly confined to the mixed layer.

    **Arguments:**

    - `params`: from `draw_ocean_parameters`.
    - `grid`: the `OceanGrid` (noise in `params` must match its shape).

    **Returns:**

    `(temperature, salinity)`, each `(T, I1, I2, I3)`: deg C and PSS-78.
    """
    if not isinstance(params, OceanParameters):
        raise bad_input("params", "OceanParameters (from draw_ocean_parameters)", type(params).__name__)
    if not isinstance(grid, OceanGrid):
        raise bad_input("grid", "an OceanGrid (from ocean_grid)", type(grid).__name__)
    shape = (grid.time.size, grid.lat.size, grid.lon.size, grid.depth.size)
    if params.noise_heave.shape != shape:
        raise bad_input("params.noise_heave", f"shape {shape} (the grid)", params.noise_heave.shape)
    t = grid.time[:, None, None, None]
    lat = grid.lat[None, :, None, None]
    lon = grid.lon[None, None, :, None]
    z = grid.depth[None, None, None, :]
    lat_c, lon_c = float(np.mean(grid.lat)), float(np.mean(grid.lon))
    coslat = math.cos(math.radians(lat_c))

    eta = params.noise_heave.copy()
    sst = np.zeros(shape)
    for e in range(params.eddy_sign.size):
        # Eddy centre moves with its velocity (km/day); local tangent plane around the box centre.
        lat_e = params.eddy_lat0[e] + params.eddy_v[e] * _KM_PER_DAY_PER_M_S * t / _KM_PER_DEG_LAT
        lon_e = params.eddy_lon0[e] + params.eddy_u[e] * _KM_PER_DAY_PER_M_S * t / (_KM_PER_DEG_LON_EQ * coslat)
        dy = (lat - lat_e) * _KM_PER_DEG_LAT
        dx = (lon - lon_e) * _KM_PER_DEG_LON_EQ * coslat
        horizontal = np.exp(-(dx**2 + dy**2) / (2 * params.eddy_radius[e] ** 2))
        life = np.exp(-((t - params.eddy_t_peak[e]) ** 2) / (2 * params.eddy_t_width[e] ** 2))
        # Zero at the surface (rigid lid), largest in the thermocline, decaying at depth.
        vertical = (1 - np.exp(-z / 80.0)) * np.exp(-z / params.eddy_depth[e])
        vertical = vertical / _peak_of_vertical(params.eddy_depth[e])
        eta = eta + params.eddy_sign[e] * params.eddy_heave[e] * life * horizontal * vertical
        sst = sst + params.eddy_sign[e] * params.eddy_sst[e] * life * horizontal
    x_km = (lon - lon_c) * _KM_PER_DEG_LON_EQ * coslat
    y_km = (lat - lat_c) * _KM_PER_DEG_LAT
    h_iw = 1.2 * float(grid.depth[-1])
    for w in range(params.iw_mode.size):
        phase = params.iw_kx[w] * x_km + params.iw_ky[w] * y_km - params.iw_omega[w] * t + params.iw_phase[w]
        eta = eta + params.iw_amp[w] * np.sin(params.iw_mode[w] * np.pi * z / h_iw) * np.cos(phase)

    mld = np.maximum(params.mld + params.mld_trend * t, 10.0)
    t_ml = params.t_ml + params.t_ml_dlat * (lat - lat_c) + params.t_ml_trend * t
    z_thermo = params.z_thermo + params.z_thermo_dlat * (lat - lat_c) + params.z_thermo_dlon * (lon - lon_c)
    z_eff = z - eta
    temperature = _temperature_profile(z_eff, t_ml, mld, params.t_deep, z_thermo, params.w_thermo,
                                       params.a_thermo, params.h_deep)
    temperature = temperature + sst * np.exp(-((z / mld) ** 2))
    salinity = _salinity_profile(z_eff, params)
    return np.broadcast_to(temperature, shape).copy(), np.broadcast_to(salinity, shape).copy()


def _peak_of_vertical(h: float) -> float:
    # max over z of (1 - exp(-z/80)) exp(-z/h), at z* = 80 ln(1 + h/80).
    z_star = 80.0 * math.log(1 + h / 80.0)
    return (1 - math.exp(-z_star / 80.0)) * math.exp(-z_star / h)


def simulate_ocean(
    n_trajectories: int,
    *,
    seed: int,
    n_test: int | None = None,
    nlat: int = 24,
    nlon: int = 24,
    ndepth: int = 16,
    nt: int = 20,
    dt_days: float = 2.0,
    lat_range: Sequence[float] = (20.0, 24.0),
    lon_range: Sequence[float] = (124.0, 128.0),
    max_depth: float = 1000.0,
    depth_stretch: float = 2.0,
    n_eddies: Sequence[int] = (2, 5),
    n_internal_waves: int = 3,
    noise_heave_m: float = 4.0,
    noise_length_km: float = 40.0,
    variables: Sequence[str] = ("sound_speed",),
    progress: bool = True,
) -> xr.Dataset:
    """Simulate ocean sound speed trajectories (lat x lon x depth over time) as a field collection.

    **Arguments:**

    - `n_trajectories`: number of trajectories `B >= 1`.
    - `seed`: int in `[0, 2**32)`; trajectory `i` depends only on `(seed, i)` and the
      physical/size options (NumPy `SeedSequence(seed, spawn_key=(i,))`).
    - `n_test`: test trajectories (`0 <= n_test < B`); default `B // 6`.
    - `nlat`, `nlon`, `ndepth`, `nt`, `dt_days`, `lat_range`, `lon_range`, `max_depth`,
      `depth_stretch`: the grid (see `ocean_grid`).
    - `n_eddies`: `(min, max)` eddies per trajectory; `n_internal_waves`: wave components;
      `noise_heave_m`, `noise_length_km`: smooth random heave (see `draw_ocean_parameters`).
    - `variables`: data to return; the first becomes `field`, the rest extra data variables of
      the same dims. Names from `"sound_speed"` (m/s), `"temperature"` (deg C, in situ),
      `"salinity"` (PSS-78).
    - `progress`: show a tqdm progress bar over trajectories.

    **Returns:**

    A field collection `xr.Dataset`: `field (B, T, lat, lon, depth)` float32 with a train/test
    `split`, time in days, lat/lon in degrees, depth in metres (positive down), and provenance
    attrs (`simulator="ocean"`, `parameters` JSON, `seed`, `package_versions`).
    """
    n_trajectories = check_int("n_trajectories", n_trajectories, minimum=1)
    seed = check_seed(seed)
    n_test = resolve_n_test(n_test, n_trajectories)
    grid = ocean_grid(nlat, nlon, ndepth, nt, dt_days=dt_days, lat_range=lat_range, lon_range=lon_range,
                      max_depth=max_depth, depth_stretch=depth_stretch)
    try:
        e_lo, e_hi = n_eddies
    except (TypeError, ValueError) as exc:
        raise bad_input("n_eddies", "a pair (min, max) of ints", n_eddies) from exc
    e_lo = check_int("n_eddies[0]", e_lo, minimum=0)
    e_hi = check_int("n_eddies[1]", e_hi, minimum=e_lo)
    check_int("n_internal_waves", n_internal_waves, minimum=0)
    check_range("noise_heave_m", noise_heave_m, lo=0.0)
    check_range("noise_length_km", noise_length_km, lo=0.0, lo_open=True)
    variables = check_choice("variables", variables, tuple(VARIABLES))

    out = {name: np.empty((n_trajectories, *(grid.time.size, grid.lat.size, grid.lon.size, grid.depth.size)),
                          dtype=np.float32) for name in variables}
    eddy_counts = np.empty(n_trajectories, dtype=np.int64)
    lat4 = grid.lat[None, :, None, None]
    lon4 = grid.lon[None, None, :, None]
    z4 = grid.depth[None, None, None, :]
    for i in tqdm(range(n_trajectories), desc="ocean", unit="traj", disable=not progress):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
        params = draw_ocean_parameters(rng, grid, n_eddies=(e_lo, e_hi), n_internal_waves=n_internal_waves,
                                       noise_heave_m=noise_heave_m, noise_length_km=noise_length_km)
        eddy_counts[i] = params.eddy_sign.size
        temperature, salinity = ocean_temperature_salinity(params, grid)
        values = {"temperature": temperature, "salinity": salinity}
        if "sound_speed" in variables:
            values["sound_speed"] = sound_speed_teos10(temperature, salinity, z4, lat4, lon4)
        for name in variables:
            out[name][i] = values[name]

    parameters = dict(
        n_trajectories=int(n_trajectories), n_test=n_test, nlat=grid.lat.size, nlon=grid.lon.size,
        ndepth=grid.depth.size, nt=grid.time.size,
        dt_days=float(dt_days), lat_range=[float(v) for v in lat_range], lon_range=[float(v) for v in lon_range],
        max_depth=float(max_depth), depth_stretch=float(depth_stretch), n_eddies=[e_lo, e_hi],
        n_internal_waves=int(n_internal_waves), noise_heave_m=float(noise_heave_m),
        noise_length_km=float(noise_length_km), variables=list(variables),
    )
    primary = variables[0]
    ds = finish_collection(
        simulator=SIMULATOR,
        seed=seed,
        parameters=parameters,
        values=out[primary],
        time=grid.time,
        space_coords={"lat": grid.lat, "lon": grid.lon, "depth": grid.depth},
        units=VARIABLES[primary][0],
        long_name=VARIABLES[primary][1],
        coord_units={"time": "days", "lat": "degrees_north", "lon": "degrees_east", "depth": "m"},
        coord_long_names={"time": "time since start", "lat": "latitude", "lon": "longitude",
                          "depth": "depth below sea surface (positive down)"},
        n_test=n_test,
        extra={name: (out[name], *VARIABLES[name]) for name in variables[1:]},
    )
    return ds.assign_coords(n_eddies=("trajectory", eddy_counts, {"long_name": "number of eddies", "units": "1"}))
