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

import math
from collections.abc import Sequence

import gsw
import numpy as np
import xarray as xr
from jaxtyping import Float
from tqdm.auto import tqdm

from ...errors import NumericalError, bad_input
from ._common import check_choice, check_int, check_range, check_seed, finish_collection, resolve_n_test
from .ocean_grid import _KM_PER_DAY_PER_M_S, _KM_PER_DEG_LAT, _KM_PER_DEG_LON_EQ
from .ocean_grid import OceanGrid as OceanGrid  # the grid and the parameters have their own modules
from .ocean_grid import ocean_grid as ocean_grid
from .ocean_parameters import OceanParameters as OceanParameters
from .ocean_parameters import check_draw_settings
from .ocean_parameters import draw_ocean_parameters as draw_ocean_parameters

SIMULATOR = "ocean"
VARIABLES = {
    "sound_speed": ("m s-1", "speed of sound in sea water"),
    "temperature": ("degC", "sea water in-situ temperature"),
    "salinity": ("1", "sea water practical salinity"),
}


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
    e_lo, e_hi = check_draw_settings(n_eddies, n_internal_waves, noise_heave_m, noise_length_km)
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
