"""Synthetic observations: sparse, noisy samples of one trajectory of a field collection.

`sample_observations` draws the points (random entries, vertical profiles, or a forecast
cut-off; optionally off the grid) of a trajectory chosen with `select_trajectory`, and
`add_noise` adds the observation noise. Draws are host-side NumPy, fixed by the typed key alone.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
import xarray as xr
from jaxtyping import ArrayLike, Float

from ..errors import as_float64 as _as_float64
from ..errors import bad_input
from ..validation import check_key
from .fields import validate_field_dataset
from .observations import ObservationSet, _count_nonfinite

PATTERNS = ("random", "profiles", "forecast")


# -- noise ------------------------------------------------------------------------------------
def _numpy_rng(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded from a typed JAX key: host-side sampling of index sets and
    noise needs no compilation per shape, and the draws are still fixed by the key alone."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())


def _check_scale(scale: Any, argument: str = "scale") -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.number)) or not np.isfinite(scale) \
            or scale < 0:
        raise bad_input(argument, "a finite number >= 0 (physical units)", scale)
    return float(scale)


def add_noise(
    key: jax.Array,
    values: Float[ArrayLike, " N"],
    noise: str,
    scale: float,
    offset: float | None = None,
) -> tuple[Float[np.ndarray, " N"], Float[np.ndarray, " N"]]:
    """Add observation noise to exact values (all in physical units).

    - `"gaussian"`: `y = u + e`, `e ~ N(0, scale^2)`.
    - `"laplace"`: `y = u + e`, `e ~ Laplace(0, b)` with `b = scale / sqrt(2)`, so std = scale.
    - `"poisson"` (Poisson-like, shot noise on the excess over an offset `o`):
      `k ~ Poisson((u - o) / scale)`, `y = o + scale * k`; hence `E[y] = u` and
      `Var[y] = scale * (u - o)`, so the per-point std is `sqrt(scale * (u - o))`.
      `o` defaults to `min(values)` and must not exceed any value.
    - `"none"`: `y = u` (scale must be 0).

    With `scale == 0` every model returns the values unchanged.

    **Arguments:**

    - `key`: typed PRNG key.
    - `values`: `(N,)` exact values.
    - `noise`: model name; `scale`: >= 0; `offset`: poisson offset (only for `"poisson"`).

    **Returns:** `(noisy (N,), std (N,))`, both float64; `std` is the std of the added noise per
    point.
    """
    check_key(key)
    u = _as_float64(values, "values")
    if u.ndim != 1:
        raise bad_input("values", "a 1-D array (N,)", f"shape {u.shape}")
    _count_nonfinite(u, "values")
    if noise not in ("gaussian", "laplace", "poisson", "none"):
        raise bad_input("noise", "one of 'gaussian', 'laplace', 'poisson', 'none'", noise)
    s = _check_scale(scale)
    if offset is not None and noise != "poisson":
        raise bad_input("offset", "None unless noise='poisson'", offset)
    if noise == "none" and s != 0:
        raise bad_input("scale", "0 when noise='none'", scale)
    n = u.shape[0]
    if noise == "poisson":
        if offset is not None and (isinstance(offset, bool) or not isinstance(offset, (int, float, np.number))
                                   or not np.isfinite(offset)):
            raise bad_input("offset", "a finite number", offset)
        if s == 0 or n == 0:
            return u.copy(), np.zeros(n)
        o = float(u.min()) if offset is None else float(offset)
        if u.min() < o:
            raise bad_input("offset", f"a number <= min(values) = {u.min()!r}", offset)
        excess = u - o
        rate = excess / s
        if rate.max() > 1e15:
            raise bad_input("scale", f"a larger scale: rate (u - offset)/scale reaches {rate.max():.3g} "
                            "(> 1e15 counts, beyond exact float64 counts)", scale)
        k = _numpy_rng(key).poisson(rate).astype(np.float64)
        return o + s * k, np.sqrt(s * excess)
    if s == 0 or n == 0 or noise == "none":
        return u.copy(), np.zeros(n)
    if noise == "gaussian":
        z = _numpy_rng(key).standard_normal(n)
        return u + s * z, np.full(n, s)
    z = _numpy_rng(key).laplace(0.0, 1.0, n)
    return u + (s / math.sqrt(2.0)) * z, np.full(n, s)


# -- samplers ---------------------------------------------------------------------------------
def select_trajectory(ds: xr.Dataset, index: int) -> xr.DataArray:
    """Trajectory `index` (position, `0 <= index < B`) of a field collection as a DataArray
    with dims `("time", *space_dims)`, physical coords and the field's attrs (NaN entries, a
    missing-value mask, are kept)."""
    validate_field_dataset(ds, require_split=False, allow_missing=True)
    b = ds.sizes["trajectory"]
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < b:
        raise bad_input("index", f"a trajectory position in [0, {b - 1}]", index)
    return ds["field"].isel(trajectory=int(index))


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _check_trajectory(trajectory: Any) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], list[np.ndarray]]:
    if not isinstance(trajectory, xr.DataArray):
        raise bad_input("trajectory", "an xr.DataArray with dims ('time', *space_dims) (see select_trajectory)",
                        type(trajectory).__name__)
    dims = tuple(map(str, trajectory.dims))
    if len(dims) < 2 or dims[0] != "time":
        raise bad_input("trajectory", "dims ('time', *space_dims) with at least one space dim", dims)
    values = np.asarray(trajectory.values)
    if values.dtype.kind != "f":
        raise bad_input("trajectory", "float values", f"dtype {values.dtype}")
    # NaN marks missing entries (land, gaps): never observed. Infinities are an error.
    inf = np.isinf(values)
    if inf.any():
        raise bad_input("trajectory", "finite values or NaN (missing)", f"{int(inf.sum())} infinite entries "
                        f"of {values.size}")
    if values.size and np.isnan(values).all():
        raise bad_input("trajectory", "at least one value that is not missing", f"all {values.size} entries NaN")
    axes = []
    for d in dims:
        if d not in trajectory.coords:
            raise bad_input("trajectory", f"a physical coordinate for dim {d!r}", "none")
        a = _as_float64(trajectory.coords[d].values, f"trajectory.coords[{d!r}]")
        _count_nonfinite(a, f"trajectory.coords[{d!r}]")
        if a.size > 1 and (np.diff(a) <= 0).any():
            raise bad_input(f"trajectory.coords[{d!r}]", "strictly increasing values", a)
        axes.append(a)
    return values, axes[0], dims[1:], axes[1:]


def _jitter_coords(
    key: jax.Array, index: np.ndarray, axes: list[np.ndarray], jitter: float
) -> np.ndarray:
    """Off-grid coordinates: grid point `index (n, k)` moved by up to `jitter` local spacings
    along each of the given axes (towards the neighbour on the side it moves to), clipped to
    the grid's extent."""
    u = _numpy_rng(key).uniform(-1.0, 1.0, index.shape)
    out = np.empty(index.shape)
    for j, a in enumerate(axes):
        i = index[:, j]
        x = a[i]
        if a.size < 2:
            out[:, j] = x
            continue
        gaps = np.diff(a)
        up = gaps[np.minimum(i, a.size - 2)]
        down = gaps[np.maximum(i - 1, 0)]
        step = np.where(u[:, j] >= 0, up, down)
        out[:, j] = np.clip(x + jitter * u[:, j] * step, a[0], a[-1])
    return out


def _interpolate(frame: np.ndarray, axes: list[np.ndarray], points: np.ndarray) -> np.ndarray:
    """Multilinear interpolation of one snapshot `frame (I_1..I_K)` at `points (n, K)`;
    dims of size 1 are constant and are left out of the interpolation."""
    from scipy.interpolate import RegularGridInterpolator  # deferred: slow import, jitter only

    keep = [j for j, a in enumerate(axes) if a.size > 1]
    sub = frame.reshape([a.size for a in axes if a.size > 1]) if keep else frame.reshape(())
    if not keep:
        return np.full(points.shape[0], float(sub))
    interp = RegularGridInterpolator([axes[j] for j in keep], np.asarray(sub, dtype=np.float64), method="linear")
    return interp(points[:, keep])


def sample_observations(
    key: jax.Array,
    trajectory: xr.DataArray,
    *,
    rho: float | None,
    setting: int = 1,
    pattern: str = "random",
    n_profiles: int | None = None,
    forecast_after: float | None = None,
    jitter: float = 0.0,
    noise: str = "gaussian",
    noise_scale: float = 0.0,
    poisson_offset: float | None = None,
) -> ObservationSet:
    """Sample sparse noisy observations of one trajectory.

    **Arguments:**

    - `key`: typed PRNG key.
    - `trajectory`: `xr.DataArray` with dims `("time", *space_dims)` and physical coords (one
      trajectory of a field collection, e.g. from `select_trajectory`).
    - `rho`: fraction in (0, 1] of the grid observed per observed time stamp: for `"random"`
      and `"forecast"`, `max(1, round(rho * n_grid))` grid entries drawn without replacement
      (round half up); for `"profiles"`, `max(1, round(rho * n_horizontal))` columns unless
      `n_profiles` is given (then `rho` must be None).
    - `setting`: 1 = every time stamp observed; 2 = time indices 0, 2, 4, .. observed, the
      others have no observations.
    - `pattern`: `"random"`; `"profiles"` — `n_profiles` positions over all space dims but the
      last per observed time stamp, each a full column over the last dim (like CTD/Argo
      casts); `"forecast"` — like `"random"`, but nothing at times `> forecast_after`.
    - `n_profiles`: number of columns (only for `"profiles"`).
    - `forecast_after`: physical time cut-off (only for `"forecast"`, required there).
    - `jitter`: >= 0; moves points off the grid by up to `jitter` grid spacings per dim
      (uniformly, clipped to the domain; for profiles the horizontal position of the whole
      column moves). Values are then the multilinear interpolation of the field at the
      reported coordinates, so they are the field's true values there.
    - `noise`, `noise_scale`: noise model and scale in physical units (see `add_noise`).
    - `poisson_offset`: offset of the poisson model; default the trajectory's minimum.

    Missing entries (NaN in `trajectory`, e.g. land) are never observed: only entries (for
    profiles, columns with at least one level) that are not missing are drawn, `rho` is then a
    fraction of those, and profile levels or off-grid points that fall on missing entries are
    dropped. `attrs["missing_entries"]` (missing grid entries at the observed time stamps) and
    `attrs["dropped_missing"]` (points dropped) count them.

    **Returns:** an `ObservationSet` (points sorted by time) whose `attrs` record the sampling
    parameters (and `poisson_offset` for poisson noise).
    """
    check_key(key)
    values, t_axis, dims, axes = _check_trajectory(trajectory)
    if pattern not in PATTERNS:
        raise bad_input("pattern", f"one of {PATTERNS}", pattern)
    if isinstance(setting, bool) or setting not in (1, 2):
        raise bad_input("setting", "1 (every time stamp) or 2 (every other time stamp)", setting)
    if n_profiles is not None and pattern != "profiles":
        raise bad_input("n_profiles", "None unless pattern='profiles'", n_profiles)
    if forecast_after is not None and pattern != "forecast":
        raise bad_input("forecast_after", "None unless pattern='forecast'", forecast_after)
    if pattern == "profiles" and n_profiles is not None:
        if rho is not None:
            raise bad_input("rho", "None when n_profiles is given (one way to set the number of profiles)", rho)
    elif rho is None or isinstance(rho, bool) or not isinstance(rho, (int, float, np.number)) \
            or not (0 < rho <= 1):
        raise bad_input("rho", "a fraction in (0, 1]", rho)
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float, np.number)) or not np.isfinite(jitter) \
            or jitter < 0:
        raise bad_input("jitter", "a finite number >= 0 (in grid spacings)", jitter)
    if noise not in ("gaussian", "laplace", "poisson", "none"):
        raise bad_input("noise", "one of 'gaussian', 'laplace', 'poisson', 'none'", noise)
    scale = _check_scale(noise_scale, "noise_scale")
    if noise == "none" and scale != 0:
        raise bad_input("noise_scale", "0 when noise='none'", noise_scale)
    if poisson_offset is not None and noise != "poisson":
        raise bad_input("poisson_offset", "None unless noise='poisson'", poisson_offset)

    n_time = t_axis.size
    observed = np.arange(n_time) if setting == 1 else np.arange(0, n_time, 2)
    if pattern == "forecast":
        if forecast_after is None or isinstance(forecast_after, bool) \
                or not isinstance(forecast_after, (int, float, np.number)) or not np.isfinite(forecast_after):
            raise bad_input("forecast_after", "a finite physical time (required for pattern='forecast')",
                            forecast_after)
        observed = observed[t_axis[observed] <= forecast_after]
        if observed.size == 0:
            raise bad_input("forecast_after", f"a time >= the first observed time stamp {t_axis[0]!r}",
                            forecast_after)

    shape = values.shape[1:]
    missing = np.isnan(values)
    has_missing = bool(missing.any())
    k_sel, k_jit, k_noise = jax.random.split(key, 3)
    # One key per time stamp of the grid, so the draw at a time does not depend on the others
    # (settings 1 and 2 pick the same points at the time stamps they share).
    seeds = np.asarray(jax.random.key_data(jax.random.split(k_sel, n_time))).reshape(n_time, -1)
    if pattern == "profiles":
        if len(shape) < 2:
            raise bad_input("pattern", "'random' or 'forecast' for a field with one space dim "
                            "(profiles need a last dim to run along)", pattern)
        n_h = int(np.prod(shape[:-1]))
        if n_profiles is None:
            count = max(1, _round_half_up(rho * n_h))
        elif isinstance(n_profiles, bool) or not isinstance(n_profiles, (int, np.integer)) \
                or not 1 <= n_profiles <= n_h:
            raise bad_input("n_profiles", f"an int in [1, {n_h}] (the number of horizontal positions)", n_profiles)
        else:
            count = int(n_profiles)
        n_pool = n_h
    else:
        n_pool = int(np.prod(shape))
        count = max(1, _round_half_up(rho * n_pool))
    if not has_missing:
        picks = np.stack(
            [np.random.default_rng(seeds[i]).choice(n_pool, size=count, replace=False) for i in observed]
        ).astype(np.int64).reshape(observed.size, count).ravel()
        counts = np.full(observed.size, count, dtype=np.int64)
    else:
        # Missing entries (NaN) are never drawn: the pool at each time stamp is the entries (or,
        # for profiles, the columns with at least one level) that are not missing, and `rho` is a
        # fraction of that pool.
        chosen, sizes = [], []
        for i in observed:
            valid = ~missing[i]
            valid = valid.reshape(n_h, -1).any(axis=1) if pattern == "profiles" else valid.ravel()
            pool = np.flatnonzero(valid)
            if pattern == "profiles" and n_profiles is not None:
                c = count
                if c > pool.size:
                    raise bad_input("n_profiles", f"an int in [1, {pool.size}] (horizontal positions with data "
                                    f"at time {t_axis[i]!r}; the others are missing)", n_profiles)
            else:
                c = max(1, _round_half_up(rho * pool.size)) if pool.size else 0
            chosen.append(pool[np.random.default_rng(seeds[i]).choice(pool.size, size=c, replace=False)])
            sizes.append(c)
        picks = np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)
        counts = np.asarray(sizes, dtype=np.int64)

    if pattern == "profiles":
        depth = shape[-1]
        h_index = np.stack(np.unravel_index(picks, shape[:-1]), axis=-1).reshape(-1, len(shape) - 1)  # (n_cols, K-1)
        if jitter > 0:
            h_coords = _jitter_coords(k_jit, h_index, axes[:-1], float(jitter))
        else:
            h_coords = np.stack([axes[j][h_index[:, j]] for j in range(len(axes) - 1)], axis=-1)
        n_cols = h_index.shape[0]
        index = np.concatenate(
            [np.repeat(h_index, depth, axis=0), np.tile(np.arange(depth), n_cols)[:, None]], axis=1
        )
        coords = np.concatenate(
            [np.repeat(h_coords, depth, axis=0), np.tile(axes[-1], n_cols)[:, None]], axis=1
        )
        t_index = np.repeat(observed, counts * depth)
    else:
        index = np.stack(np.unravel_index(picks, shape), axis=-1).reshape(-1, len(shape))
        if jitter > 0:
            coords = _jitter_coords(k_jit, index, axes, float(jitter))
        else:
            coords = np.stack([axes[j][index[:, j]] for j in range(len(axes))], axis=-1)
        t_index = np.repeat(observed, counts)

    if jitter > 0:
        exact = np.empty(t_index.size)
        for ti in observed:
            rows = t_index == ti
            exact[rows] = _interpolate(values[ti], axes, coords[rows])
    else:
        exact = values[(t_index, *index.T)].astype(np.float64)
    dropped_missing = 0
    if has_missing:
        # Profile levels that are missing, and off-grid points next to a missing entry (their
        # interpolated value is NaN), are dropped and counted in attrs["dropped_missing"].
        keep = np.isfinite(exact)
        dropped_missing = int((~keep).sum())
        exact, coords, t_index = exact[keep], coords[keep], t_index[keep]

    offset = None
    if noise == "poisson":
        offset = float(np.nanmin(values)) if poisson_offset is None else poisson_offset
    noisy, std = add_noise(k_noise, exact, noise, scale, offset=offset)

    attrs: dict[str, Any] = {
        "pattern": pattern,
        "setting": int(setting),
        "rho": None if rho is None else float(rho),
        "n_profiles": None if n_profiles is None else int(n_profiles),
        "forecast_after": None if forecast_after is None else float(forecast_after),
        "jitter": float(jitter),
        "noise": noise,
        "noise_scale": scale,
        "points_per_time_stamp": int(t_index.size // max(1, observed.size)),
    }
    if has_missing:
        attrs["missing_entries"] = int(missing[observed].sum())
        attrs["dropped_missing"] = dropped_missing
    if offset is not None:
        attrs["poisson_offset"] = float(offset)
    if isinstance(trajectory.attrs.get("units"), str):
        attrs["units"] = trajectory.attrs["units"]
    return ObservationSet(
        value=noisy,
        time=t_axis[t_index],
        coords=coords,
        space_dims=dims,
        noise_scale=std,
        noise_model=noise,
        attrs=attrs,
    )


__all__ = [
    "PATTERNS",
    "add_noise",
    "sample_observations",
    "select_trajectory",
]
