"""3D Gray-Scott reaction-diffusion from a few seeds: a stand-in for the paper's 3D supernova field.

Two species on the periodic cube [0, L)^3,

    u_t = D_u lap u + F (1 - u) - u v^2
    v_t = D_v lap v - (F + k) v + u v^2,     D_v = D_u / 2,

solved pseudo-spectrally with `exponax.stepper.reaction.GrayScott` (ETDRK2). Each trajectory
starts from the rest state u = 1, v = 0 with 2-6 Gaussian seeds of v at random places; with
feed F ~ 0.030-0.042 and kill k ~ 0.0615-0.0635 the seeds grow and split into spots that spread
outward and fill the cube over the saved window (localised structures expanding into a quiet
background, like the blast waves of the supernova data), neither dying out nor freezing.
The saved field is v. Everything is non-dimensional.
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

SIMULATOR = "field3d"
SPECIES = ("v", "u")


class Field3DConfig(eqx.Module):
    """Static settings of the 3D Gray-Scott simulator (hashable: one compile per config).

    Ranges are `(min, max)` of uniform draws; `n_seeds` is inclusive.
    """

    grid: int = eqx.field(static=True)
    nt: int = eqx.field(static=True)
    domain_extent: float = eqx.field(static=True)
    dt: float = eqx.field(static=True)
    substeps: int = eqx.field(static=True)
    spin_up_steps: int = eqx.field(static=True)
    feed_range: tuple[float, float] = eqx.field(static=True)
    kill_range: tuple[float, float] = eqx.field(static=True)
    diffusivity_range: tuple[float, float] = eqx.field(static=True)
    n_seeds: tuple[int, int] = eqx.field(static=True)
    seed_width: tuple[float, float] = eqx.field(static=True)
    species: int = eqx.field(static=True)


def seeded_initial_state(config: Field3DConfig, key: PRNGKeyArray) -> Float[Array, "2 N N N"]:
    """Rest state `(u, v) = (1, 0)` with a random number of periodic Gaussian seeds.

    **Arguments:**

    - `config`: the `Field3DConfig` (grid, cube size, seed count and width ranges).
    - `key`: typed PRNG key.

    **Returns:**

    `(2, grid, grid, grid)`: channel 0 is u, channel 1 is v, both in [0, 1].
    """
    k_count, k_centre, k_width, k_noise = jax.random.split(key, 4)
    lo, hi = config.n_seeds
    count = jax.random.randint(k_count, (), lo, hi + 1)
    length = config.domain_extent
    centres = jax.random.uniform(k_centre, (hi, 3), maxval=length)
    widths = length * jax.random.uniform(k_width, (hi,), minval=config.seed_width[0], maxval=config.seed_width[1])
    grid = ex.make_grid(3, length, config.grid)
    offset = grid[None] - centres[:, :, None, None, None]
    offset = offset - length * jnp.round(offset / length)  # nearest periodic image
    bumps = jnp.exp(-(offset**2).sum(axis=1) / (2 * widths[:, None, None, None] ** 2))
    active = (jnp.arange(hi) < count)[:, None, None, None]
    blob = jnp.clip((bumps * active).sum(axis=0), 0.0, 1.0)
    # A little noise inside the seeds breaks their symmetry, so spots split irregularly.
    v = blob * (0.25 + 0.05 * jax.random.uniform(k_noise, blob.shape))
    u = 1.0 - 0.5 * blob
    return jnp.stack([u, v])


def field3d_trajectory(
    config: Field3DConfig, key: PRNGKeyArray
) -> tuple[Float[Array, "T N N N"], Float[Array, "3"]]:
    """One Gray-Scott trajectory.

    **Arguments:**

    - `config`: the `Field3DConfig`.
    - `key`: typed PRNG key of this trajectory.

    **Returns:**

    `(field (nt, grid, grid, grid), parameters (3,))`: the chosen species' concentration and
    `(feed F, kill k, diffusivity D_u)`.
    """
    k_state, k_feed, k_kill, k_diff = jax.random.split(key, 4)
    feed = jax.random.uniform(k_feed, minval=config.feed_range[0], maxval=config.feed_range[1])
    kill = jax.random.uniform(k_kill, minval=config.kill_range[0], maxval=config.kill_range[1])
    diff = jax.random.uniform(k_diff, minval=config.diffusivity_range[0], maxval=config.diffusivity_range[1])
    stepper = ex.stepper.reaction.GrayScott(
        3, config.domain_extent, config.grid, config.dt, diffusivity_1=diff, diffusivity_2=diff / 2,
        feed_rate=feed, kill_rate=kill,
    )
    state = ex.repeat(stepper, config.spin_up_steps)(seeded_initial_state(config, k_state))
    frames = ex.rollout(ex.RepeatedStepper(stepper, config.substeps), config.nt - 1, include_init=True)(state)
    return frames[:, config.species], jnp.stack([feed, kill, diff])


@eqx.filter_jit
def _batch(config: Field3DConfig, keys: PRNGKeyArray) -> tuple[Array, Array]:
    return jax.vmap(functools.partial(field3d_trajectory, config))(keys)


def simulate_field3d(
    n_trajectories: int,
    *,
    seed: int,
    n_test: int | None = None,
    grid: int = 32,
    nt: int = 16,
    domain_extent: float = 1.0,
    dt: float = 1.0,
    save_interval: float = 100.0,
    spin_up: float = 200.0,
    feed_range: tuple[float, float] = (0.030, 0.042),
    kill_range: tuple[float, float] = (0.0615, 0.0635),
    diffusivity_range: tuple[float, float] = (5e-5, 7e-5),
    n_seeds: tuple[int, int] = (2, 6),
    seed_width: tuple[float, float] = (0.06, 0.10),
    species: str = "v",
    batch_size: int = 4,
    progress: bool = True,
) -> xr.Dataset:
    """Simulate 3D Gray-Scott trajectories (spots spreading from seeds) as a field collection.

    **Arguments:**

    - `n_trajectories`: number of trajectories `B >= 1`.
    - `seed`: int in `[0, 2**32)`; trajectory `i` uses key `fold_in(fold_in(key(seed), 0), i)`,
      so it does not depend on `n_trajectories`.
    - `n_test`: test trajectories (`0 <= n_test < B`); default `B // 6`.
    - `grid`: points per side (>= 8); `domain_extent`: cube side L (> 0).
    - `nt`: saved frames (>= 2), `save_interval` apart; `dt`: solver step (`save_interval / dt`
      a whole number); `spin_up`: time from the seeds to the first saved frame (>= 0, rounded
      to whole steps).
    - `feed_range`, `kill_range`, `diffusivity_range`: `(min, max)` of the per-trajectory F,
      k and D_u (D_v = D_u / 2), all > 0.
    - `n_seeds`: `(min, max)` seeds (>= 1); `seed_width`: `(min, max)` seed radius as a
      fraction of L (in (0, 0.5]).
    - `species`: `"v"` (the autocatalyst, 0 in the background) or `"u"`.
    - `batch_size`: trajectories integrated together with `vmap` (the last batch is padded;
      results do not depend on `n_trajectories`).
    - `progress`: show a tqdm progress bar over trajectories.

    **Returns:**

    A field collection: `field (B, nt, grid, grid, grid)` float32 concentration (units `1`),
    coords `x`, `y`, `z` on `[0, L)` and `time` since the seeds (non-dimensional), a train/test
    `split`, per-trajectory coords `feed`, `kill`, `diffusivity`, and provenance attrs. Raises
    `NumericalError` if the solver blows up (reduce `dt`).
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
    feed_range = check_interval("feed_range", feed_range, lo=0.0, hi=1.0, lo_open=True)
    kill_range = check_interval("kill_range", kill_range, lo=0.0, hi=1.0, lo_open=True)
    diffusivity_range = check_interval("diffusivity_range", diffusivity_range, lo=0.0, hi=math.inf, lo_open=True)
    try:
        seeds_lo, seeds_hi = n_seeds
    except (TypeError, ValueError) as exc:
        raise bad_input("n_seeds", "a pair (min, max) of ints", n_seeds) from exc
    seeds_lo = check_int("n_seeds[0]", seeds_lo, minimum=1)
    seeds_hi = check_int("n_seeds[1]", seeds_hi, minimum=seeds_lo)
    seed_width = check_interval("seed_width", seed_width, lo=0.0, hi=0.5, lo_open=True)
    if species not in SPECIES:
        raise bad_input("species", f"one of {SPECIES}", species)
    batch_size = check_int("batch_size", batch_size, minimum=1)

    config = Field3DConfig(
        grid=grid, nt=nt, domain_extent=domain_extent, dt=dt, substeps=substeps,
        spin_up_steps=round(spin_up / dt), feed_range=feed_range, kill_range=kill_range,
        diffusivity_range=diffusivity_range, n_seeds=(seeds_lo, seeds_hi), seed_width=seed_width,
        species=1 if species == "v" else 0,
    )
    values, params = run_batches(functools.partial(_batch, config), seed, n_trajectories, batch_size,
                                 desc=SIMULATOR, progress=progress)
    check_solver_finite(SIMULATOR, values, params, ("F", "k", "D_u"), dt)

    t0 = config.spin_up_steps * dt
    time = t0 + save_interval * np.arange(nt, dtype=np.float64)
    axis = domain_extent * np.arange(grid, dtype=np.float64) / grid
    parameters = dict(
        n_trajectories=n_trajectories, n_test=n_test, grid=grid, nt=nt, domain_extent=domain_extent, dt=dt,
        save_interval=save_interval, spin_up=t0, feed_range=list(feed_range), kill_range=list(kill_range),
        diffusivity_range=list(diffusivity_range), diffusivity_ratio=0.5, n_seeds=[seeds_lo, seeds_hi],
        seed_width=list(seed_width), species=species, batch_size=batch_size,
        solver="exponax.stepper.reaction.GrayScott (ETDRK2)",
    )
    ds = finish_collection(
        simulator=SIMULATOR, seed=seed, parameters=parameters, values=values, time=time,
        space_coords={"x": axis, "y": axis, "z": axis}, units="1",
        long_name=f"Gray-Scott concentration {species} (non-dimensional)",
        coord_units={"time": "1", "x": "1", "y": "1", "z": "1"},
        coord_long_names={"time": "non-dimensional time since seeding", "x": "non-dimensional x (periodic)",
                          "y": "non-dimensional y (periodic)", "z": "non-dimensional z (periodic)"},
        n_test=n_test,
    )
    return ds.assign_coords(
        feed=("trajectory", params[:, 0].astype(np.float64), {"long_name": "feed rate F", "units": "1"}),
        kill=("trajectory", params[:, 1].astype(np.float64), {"long_name": "kill rate k", "units": "1"}),
        diffusivity=("trajectory", params[:, 2].astype(np.float64),
                     {"long_name": "diffusivity D_u of u (D_v = D_u / 2)", "units": "1"}),
    )
