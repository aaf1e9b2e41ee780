"""2D turbulent Kolmogorov flow (vorticity), a stand-in for the paper's active-matter field.

The vorticity w of a periodic 2D flow on [0, L)^2 obeys

    w_t + u . grad w = nu lap w - mu w + f,   f = -k (2 pi / L) gamma cos(k (2 pi / L) y)

(Kolmogorov forcing at wavenumber k of strength gamma, linear drag mu, viscosity nu), solved
pseudo-spectrally with `exponax.stepper.KolmogorovFlowVorticity` (ETDRK2, 2/3 dealiasing).
Per trajectory the initial condition (random truncated Fourier series) and nu, mu, gamma are
drawn; after a spin-up into the turbulent regime `nt` frames are saved.

Everything is non-dimensional: length in units of L / (2 pi) for the default L = 2 pi, time in
the matching units (with gamma = 1 and L = 2 pi, the forcing sets velocity scale 1), vorticity
in inverse time units.
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import exponax as ex
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jaxtyping import Array, Float, PRNGKeyArray

from ...errors import bad_input
from ._common import (
    check_int,
    check_interval,
    check_range,
    check_seed,
    check_solver_finite,
    finish_collection,
    resolve_n_test,
    run_batches,
)

SIMULATOR = "fluid2d"


class Fluid2DConfig(eqx.Module):
    """Static settings of the 2D Kolmogorov-flow simulator (hashable: one compile per config).

    Ranges are `(min, max)` of uniform draws, except viscosity which is log-uniform.
    """

    grid: int = eqx.field(static=True)
    nt: int = eqx.field(static=True)
    domain_extent: float = eqx.field(static=True)
    dt: float = eqx.field(static=True)
    substeps: int = eqx.field(static=True)
    spin_up_steps: int = eqx.field(static=True)
    viscosity_range: tuple[float, float] = eqx.field(static=True)
    drag_range: tuple[float, float] = eqx.field(static=True)
    forcing_range: tuple[float, float] = eqx.field(static=True)
    forcing_mode: int = eqx.field(static=True)
    ic_cutoff: int = eqx.field(static=True)


def fluid2d_trajectory(
    config: Fluid2DConfig, key: PRNGKeyArray
) -> tuple[Float[Array, "T N N"], Float[Array, "3"]]:
    """One trajectory of vorticity.

    **Arguments:**

    - `config`: the `Fluid2DConfig`.
    - `key`: typed PRNG key of this trajectory.

    **Returns:**

    `(vorticity (nt, grid, grid), parameters (3,))` with parameters `(nu, mu, gamma)`. Axis 1
    of the field is x (`exponax` axis 0), axis 2 is y, the forcing direction's coordinate.
    """
    k_ic, k_nu, k_mu, k_gamma = jax.random.split(key, 4)
    log_lo, log_hi = (math.log(v) for v in config.viscosity_range)
    nu = jnp.exp(jax.random.uniform(k_nu, minval=log_lo, maxval=log_hi))
    mu = jax.random.uniform(k_mu, minval=config.drag_range[0], maxval=config.drag_range[1])
    gamma = jax.random.uniform(k_gamma, minval=config.forcing_range[0], maxval=config.forcing_range[1])
    # exponax's drag enters as +lambda*w, so damping is a negative lambda.
    stepper = ex.stepper.KolmogorovFlowVorticity(
        2, config.domain_extent, config.grid, config.dt, diffusivity=nu, drag=-mu,
        injection_mode=config.forcing_mode, injection_scale=gamma,
    )
    w0 = ex.ic.RandomTruncatedFourierSeries(2, cutoff=config.ic_cutoff, max_one=True)(config.grid, key=k_ic)
    w = ex.repeat(stepper, config.spin_up_steps)(w0)
    frames = ex.rollout(ex.RepeatedStepper(stepper, config.substeps), config.nt - 1, include_init=True)(w)
    return frames[:, 0], jnp.stack([nu, mu, gamma])


@eqx.filter_jit
def _batch(config: Fluid2DConfig, keys: PRNGKeyArray) -> tuple[Array, Array]:
    return jax.vmap(functools.partial(fluid2d_trajectory, config))(keys)


def simulate_fluid2d(
    n_trajectories: int,
    *,
    seed: int,
    n_test: int | None = None,
    grid: int = 64,
    nt: int = 20,
    domain_extent: float = 2 * math.pi,
    dt: float = 0.01,
    save_interval: float = 0.5,
    spin_up: float = 30.0,
    viscosity_range: tuple[float, float] = (0.008, 0.02),
    drag_range: tuple[float, float] = (0.05, 0.15),
    forcing_range: tuple[float, float] = (0.8, 1.2),
    forcing_mode: int = 4,
    ic_cutoff: int = 5,
    batch_size: int = 8,
    progress: bool = True,
) -> xr.Dataset:
    """Simulate 2D turbulent Kolmogorov-flow vorticity trajectories as a field collection.

    **Arguments:**

    - `n_trajectories`: number of trajectories `B >= 1`.
    - `seed`: int in `[0, 2**32)`; trajectory `i` uses key `fold_in(fold_in(key(seed), 0), i)`,
      so it does not depend on `n_trajectories`.
    - `n_test`: test trajectories (`0 <= n_test < B`); default `B // 6`.
    - `grid`: points per side (>= 8); `domain_extent`: side length L (> 0).
    - `nt`: saved frames (>= 2), `save_interval` apart; `dt`: solver step (`save_interval / dt`
      must be a whole number); `spin_up`: time simulated before the first saved frame (>= 0,
      rounded to whole steps).
    - `viscosity_range` (log-uniform), `drag_range`, `forcing_range`: `(min, max)` of the
      per-trajectory viscosity nu > 0, linear drag mu >= 0 and forcing strength gamma >= 0;
      `forcing_mode`: forcing wavenumber k (>= 1); `ic_cutoff`: highest Fourier mode of the
      random initial vorticity (>= 1).
    - `batch_size`: trajectories integrated together with `vmap` (the last batch is padded;
      results do not depend on `n_trajectories`).
    - `progress`: show a tqdm progress bar over trajectories.

    **Returns:**

    A field collection: `field (B, nt, grid, grid)` float32 vorticity (units `1`,
    non-dimensional), coords `x`, `y` on `[0, L)` (the grid excludes the right end) and `time`
    since the initial condition (non-dimensional), a train/test `split`, per-trajectory coords
    `viscosity`, `drag`, `forcing`, and provenance attrs. Raises `NumericalError` if the solver
    blows up (reduce `dt`).
    """
    n_trajectories = check_int("n_trajectories", n_trajectories, minimum=1)
    seed = check_seed(seed)
    n_test = resolve_n_test(n_test, n_trajectories)
    grid = check_int("grid", grid, minimum=8)
    nt = check_int("nt", nt, minimum=2)
    domain_extent = check_range("domain_extent", domain_extent, lo=0.0, lo_open=True)
    dt = check_range("dt", dt, lo=0.0, lo_open=True)
    save_interval = check_range("save_interval", save_interval, lo=0.0, lo_open=True)
    spin_up = check_range("spin_up", spin_up, lo=0.0)
    substeps = round(save_interval / dt)
    if substeps < 1 or not math.isclose(substeps * dt, save_interval, rel_tol=1e-6):
        raise bad_input("save_interval", f"a whole multiple of dt={dt}", save_interval)
    viscosity_range = check_interval("viscosity_range", viscosity_range, lo=0.0, hi=math.inf, lo_open=True)
    drag_range = check_interval("drag_range", drag_range, lo=0.0, hi=math.inf)
    forcing_range = check_interval("forcing_range", forcing_range, lo=0.0, hi=math.inf)
    forcing_mode = check_int("forcing_mode", forcing_mode, minimum=1, maximum=grid // 3)
    ic_cutoff = check_int("ic_cutoff", ic_cutoff, minimum=1, maximum=grid // 2)
    batch_size = check_int("batch_size", batch_size, minimum=1)

    config = Fluid2DConfig(
        grid=grid, nt=nt, domain_extent=domain_extent, dt=dt, substeps=substeps,
        spin_up_steps=round(spin_up / dt), viscosity_range=viscosity_range, drag_range=drag_range,
        forcing_range=forcing_range, forcing_mode=forcing_mode, ic_cutoff=ic_cutoff,
    )
    values, params = run_batches(functools.partial(_batch, config), seed, n_trajectories, batch_size,
                                 desc=SIMULATOR, progress=progress)
    check_solver_finite(SIMULATOR, values, params, ("nu", "drag", "forcing"), dt)

    t0 = config.spin_up_steps * dt
    time = t0 + save_interval * np.arange(nt, dtype=np.float64)
    axis = domain_extent * np.arange(grid, dtype=np.float64) / grid
    parameters = dict(
        n_trajectories=n_trajectories, n_test=n_test, grid=grid, nt=nt, domain_extent=domain_extent, dt=dt,
        save_interval=save_interval, spin_up=t0, viscosity_range=list(viscosity_range),
        drag_range=list(drag_range), forcing_range=list(forcing_range), forcing_mode=forcing_mode,
        ic_cutoff=ic_cutoff, batch_size=batch_size, solver="exponax.stepper.KolmogorovFlowVorticity (ETDRK2)",
    )
    ds = finish_collection(
        simulator=SIMULATOR, seed=seed, parameters=parameters, values=values, time=time,
        space_coords={"x": axis, "y": axis}, units="1", long_name="vorticity (non-dimensional)",
        coord_units={"time": "1", "x": "1", "y": "1"},
        coord_long_names={"time": "non-dimensional time since the initial condition",
                          "x": "non-dimensional x (periodic)", "y": "non-dimensional y (periodic, forcing direction)"},
        n_test=n_test,
    )
    return ds.assign_coords(
        viscosity=("trajectory", params[:, 0].astype(np.float64), {"long_name": "viscosity nu", "units": "1"}),
        drag=("trajectory", params[:, 1].astype(np.float64), {"long_name": "linear drag mu", "units": "1"}),
        forcing=("trajectory", params[:, 2].astype(np.float64), {"long_name": "forcing strength gamma", "units": "1"}),
    )



class KolmogorovStep(eqx.Module):
    """One solver step of the simulator's Kolmogorov-flow stepper on a vorticity frame
    `(grid, grid)`: `step(frame, dt)` (the step size is the stepper's own, fixed when it was built;
    `dt` is accepted for the `inference.constraints.Dynamics` interface and must equal it)."""

    stepper: ex.stepper.KolmogorovFlowVorticity
    dt: float = eqx.field(static=True)

    def __call__(self, frame: Float[Array, "N N"], dt: float) -> Float[Array, "N N"]:
        if isinstance(dt, (int, float)) and not math.isclose(float(dt), self.dt, rel_tol=1e-9):
            raise bad_input("dt", f"the stepper's step size {self.dt}", dt)
        return self.stepper(frame[None])[0]


def dynamics_parameters(ds: xr.Dataset, trajectory: int = 0) -> dict[str, float]:
    """The physics of trajectory `trajectory` (position) of a `fluid2d` field collection, as the
    simulator recorded it: `viscosity`, `drag`, `forcing` (per-trajectory coords) and the grid,
    `domain_extent`, `forcing_mode` and solver `dt` (the `parameters` attr). `InputError`, naming
    what is missing, for a collection that does not record them."""
    import json

    if not isinstance(ds, xr.Dataset):
        raise bad_input("collection", "a fluid2d field collection (xr.Dataset)", type(ds).__name__)
    if ds.attrs.get("simulator") != SIMULATOR:
        raise bad_input("collection", f"a field collection made by the {SIMULATOR!r} simulator (attrs['simulator'])",
                        ds.attrs.get("simulator"))
    try:
        params = json.loads(ds.attrs["parameters"]) if isinstance(ds.attrs.get("parameters"), str) \
            else dict(ds.attrs["parameters"])
    except (KeyError, TypeError, ValueError) as exc:
        raise bad_input("collection", "the simulator's recorded parameters (attrs['parameters'], JSON)",
                        sorted(ds.attrs)) from exc
    missing = [k for k in ("grid", "domain_extent", "forcing_mode", "dt") if k not in params]
    missing += [c for c in ("viscosity", "drag", "forcing") if c not in ds.coords]
    if missing:
        raise bad_input("collection", "the fluid2d simulator's recorded parameters", f"missing {missing}")
    b = ds.sizes.get("trajectory", 0)
    if isinstance(trajectory, bool) or not isinstance(trajectory, (int, np.integer)) or not 0 <= trajectory < b:
        raise bad_input("trajectory", f"a trajectory position in [0, {b - 1}]", trajectory)
    out = {name: float(ds.coords[name].values[int(trajectory)]) for name in ("viscosity", "drag", "forcing")}
    out.update(grid=int(params["grid"]), domain_extent=float(params["domain_extent"]),
               forcing_mode=int(params["forcing_mode"]), dt=float(params["dt"]))
    return out


def fluid2d_dynamics(ds: xr.Dataset, trajectory: int = 0, *, scale: float, dt: float | None = None,
                     weight: float = 1.0, **overrides: float) -> object:
    """An `inference.constraints.Dynamics` constraint with the simulator's own stepper and the
    trajectory's recorded physics (`dynamics_parameters`).

    **Arguments:**

    - `ds`: the fluid2d field collection (e.g. the bundle's `test_trajectory.nc`).
    - `trajectory`: position of the trajectory in `ds`.
    - `scale`: model error std of the residual `frame(t_{j+1}) − Φ(frame(t_j))` (vorticity units).
    - `dt`: solver step of the constraint (default: the simulator's; larger is cheaper, within
      the solver's stability).
    - `weight`: precision multiplier.
    - `overrides`: replace recorded parameters (`viscosity`, `drag`, `forcing`), e.g. to try
      another value of an unknown one.

    **Returns:** `Dynamics(KolmogorovStep(...), dt, scale, weight)`.
    """
    from inference.constraints import Dynamics

    p = dynamics_parameters(ds, trajectory)
    bad = sorted(set(overrides) - {"viscosity", "drag", "forcing"})
    if bad:
        raise bad_input("overrides", "only viscosity, drag, forcing", bad)
    for k, v in overrides.items():
        p[k] = check_range(k, v, lo=0.0, lo_open=k == "viscosity")
    step = p["dt"] if dt is None else check_range("dt", dt, lo=0.0, lo_open=True)
    stepper = ex.stepper.KolmogorovFlowVorticity(
        2, p["domain_extent"], p["grid"], step, diffusivity=p["viscosity"], drag=-p["drag"],
        injection_mode=p["forcing_mode"], injection_scale=p["forcing"],
    )
    return Dynamics(KolmogorovStep(stepper, float(step)), dt=float(step), scale=scale, weight=weight)
