"""Posterior draws: `sample_posterior` (many chains of one problem, in compiled chunks, optionally
split over devices) and `sample_posterior_many` (several problems in one program, split over
devices), with the non-finite check that names the first step at fault.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray
from tqdm.auto import tqdm

from sdift_prob.data.observations import PaddedObservations
from sdift_prob.errors import NumericalError, bad_input
from sdift_prob.parallel import DRAWS_AXIS, TRAJECTORY_AXIS, device_count
from sdift_prob.parallel import mesh as device_mesh
from sdift_prob.validation import check_count

from ..constraints import Constraint, FieldDecoder
from ..guidance import MomentMatching, Reference
from ..preconditioners import PriorSpectrum
from .config import Denoiser, GuidedConfig, _is_number
from .kernel import GuidedInfo, GuidedState, _run_chain
from .problem import GuidedProblem, prepare


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)  # counts compilations (see `eqx.debug.get_num_traces`)
def _sample_chunk(
    keys: PRNGKeyArray, sigma_y: Array, denoise: Denoiser, problem: GuidedProblem, config: GuidedConfig
) -> tuple[GuidedState, GuidedInfo]:
    return jax.vmap(lambda k, s: _run_chain(k, denoise, problem, config, s))(keys, sigma_y)


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _sample_chunk_sharded(
    keys: PRNGKeyArray, sigma_y: Array, denoise: Denoiser, problem: GuidedProblem, config: GuidedConfig, mesh: Any
) -> tuple[GuidedState, GuidedInfo]:
    """`_sample_chunk` with the draws split over the devices of `mesh` (axis `"draws"`).

    The denoiser's and the problem's arrays are replicated; every device runs the vmapped chains
    of its slice of `keys`, so each draw's arithmetic is the one of `_sample_chunk`.
    """
    dyn, static = eqx.partition((denoise, problem), eqx.is_array)

    def local(k: PRNGKeyArray, s: Array, d: Any) -> tuple[GuidedState, GuidedInfo]:
        den, prob = eqx.combine(d, static)
        return jax.vmap(lambda kk, ss: _run_chain(kk, den, prob, config, ss))(k, s)

    spec = jax.sharding.PartitionSpec(DRAWS_AXIS)
    return jax.shard_map(
        local, mesh=mesh, in_specs=(spec, spec, jax.sharding.PartitionSpec()), out_specs=spec, check_vma=False
    )(keys, sigma_y, dyn)


def _draw_devices(devices: Any) -> int:
    available = device_count()
    if devices is None:
        return available
    if isinstance(devices, bool) or not isinstance(devices, (int, np.integer)) or not 1 <= devices <= available:
        raise bad_input("devices", f"None (all {available} devices) or an integer in [1, {available}]", devices)
    return int(devices)


def sample_posterior(
    key: PRNGKeyArray,
    denoise: Denoiser,
    design: Float[ArrayLike, "M P D"],
    padded: PaddedObservations,
    *,
    core_mean: float,
    core_std: float,
    times_norm: Float[ArrayLike, " M"],
    noise_chol: Float[ArrayLike, "M M"],
    config: GuidedConfig,
    num_draws: int,
    core_shape: tuple[int, ...] | None = None,
    prior_spectrum: PriorSpectrum | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
    devices: int | None = None,
    constraints: Sequence[Constraint] | None = None,
    decoder: FieldDecoder | None = None,
    sigma_draws: Float[ArrayLike, " num_draws"] | None = None,
) -> tuple[Float[np.ndarray, "num_draws M *R"], dict[str, np.ndarray]]:
    """Draw core sequences from the guided posterior (DPS or MPDPS).

    Per-draw keys are split from `key` up front, so the draws depend only on `(key, num_draws)`,
    not on `chunk_size` (bitwise for the same chunk size; across chunk sizes to float32 rounding,
    as XLA may vectorise a batch of another size differently, as on AMD EPYC CPUs). The sampler
    is compiled once per shape and setting (`lax.scan` over steps, `vmap` over the draws of a
    chunk; the last chunk is padded to the chunk size). Pass the same `denoise` object every
    call (an Equinox module or its bound method, or one function object): a new closure each
    call recompiles.

    **Arguments:**

    - `key`: PRNG key.
    - `denoise`: `D(x (M, R..), sigma, t (M,)) -> (M, R..)` in normalised core units, pure JAX
      (e.g. `GPSDPrior.denoise`).
    - `design`: `(M, P, D)` design rows of the padded points (on the union time grid).
    - `padded`: `PaddedObservations` on the same `M` time stamps, normalised field units.
    - `core_mean`, `core_std`: core normalisation of the prior (`W = core_mean + core_std · x`).
    - `times_norm`: normalised time stamps `(M,)` of the grid.
    - `noise_chol`: lower Cholesky factor `(M, M)` of the prior's noise kernel over `times_norm`.
    - `config`: `GuidedConfig`.
    - `num_draws`: number of posterior draws (≥ 1).
    - `core_shape`: `(R1, .., RK)` (default `(D,)`).
    - `prior_spectrum`: the prior's `PriorSpectrum` for the MMPS preconditioner (`prepare`).
    - `chunk_size`: draws per compiled call (default: all at once).
    - `progress`: show a progress bar over chunks (`tqdm.auto`).
    - `devices`: devices to split each chunk's draws over (`jax.shard_map` on a mesh axis
      `"draws"`): None = all of `jax.devices()` (automatic; one device is the plain vmap), or an
      int. A chunk is padded up to a multiple of the device count (the extra chains are
      discarded); the draws equal the 1-device draws to float32 rounding (XLA may order the
      per-device batch's dots and convolutions differently; often bitwise).
    - `constraints`, `decoder`: physical constraints on the decoded frames and the decoder they
      see them through (`prepare`, `inference.constraints`).
    - `sigma_draws`: one fixed noise level per draw `(num_draws,)`, normalised units — σ drawn
      from its posterior before sampling (`inference.sigma_marginal`); needs a number as
      `config.sigma_y` and `infer_sigma=False`. Default: every draw at `config.sigma_y`.

    **Returns:** `(draws, info)`: `draws` NumPy `(num_draws, M, R1, .., RK)` in FTM core units;
    `info` a dict of NumPy arrays: `sigma_y (num_draws,)` final noise level (the fixed value when
    not inferred; 1 when unused: `"metadata"`, Poisson),
    `sigma_y_trace`, `residual_rms`, `guidance_rms` `(num_draws, num_steps)`, `noise_level`
    `(num_steps,)`.

    **Raises:** `NumericalError` when a draw became non-finite, naming the first step at fault.
    """
    if not callable(denoise):
        raise bad_input("denoise", "a callable denoise(x, sigma, t) -> x0", type(denoise).__name__)
    check_count(num_draws, "num_draws")
    if chunk_size is None:
        chunk_size = int(num_draws)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise bad_input("chunk_size", "an integer >= 1 or None", chunk_size)
    problem = prepare(design, padded, core_mean=core_mean, core_std=core_std, times_norm=times_norm,
                      noise_chol=noise_chol, config=config, core_shape=core_shape, prior_spectrum=prior_spectrum,
                      constraints=constraints, decoder=decoder)
    n_dev = _draw_devices(devices)
    keys = jax.random.split(key, int(num_draws))
    sigmas_y = _per_draw_sigma(sigma_draws, problem, config, int(num_draws))
    chunk = min(int(chunk_size), int(num_draws))
    mesh = None
    if n_dev > 1:
        chunk = -(-chunk // n_dev) * n_dev  # every device gets the same number of chains
        mesh = device_mesh(n_dev, DRAWS_AXIS)
    states, infos = [], []
    starts = range(0, int(num_draws), chunk)
    for start in tqdm(starts, desc=f"{config.method} sampling", disable=not progress or len(starts) == 1):
        part, part_sigma = keys[start:start + chunk], sigmas_y[start:start + chunk]
        n = part.shape[0]
        if n < chunk:  # pad so the compiled shape is reused; the extra chains are discarded below
            fill = np.arange(chunk - n) % keys.shape[0]
            part, part_sigma = jnp.concatenate([part, keys[fill]]), jnp.concatenate([part_sigma, sigmas_y[fill]])
        if mesh is None:
            state, info = _sample_chunk(part, part_sigma, denoise, problem, config)
        else:
            state, info = _sample_chunk_sharded(part, part_sigma, denoise, problem, config, mesh)
            if jax.process_count() > 1:  # multi-host: every process gets all draws
                from jax.experimental import multihost_utils

                state, info = multihost_utils.process_allgather((state, info), tiled=True)
        states.append(jax.tree_util.tree_map(lambda a, n=n: np.asarray(a[:n]), state))
        infos.append(jax.tree_util.tree_map(lambda a, n=n: np.asarray(a[:n]), info))
    state = jax.tree_util.tree_map(lambda *a: np.concatenate(a), *states)
    info = jax.tree_util.tree_map(lambda *a: np.concatenate(a), *infos)
    _raise_if_nonfinite(state, problem, config)
    draws = np.asarray(problem.core_mean) + np.asarray(problem.core_std) * state.x
    return draws, {
        "sigma_y": state.sigma_y,
        "sigma_y_trace": info.sigma_y,
        "residual_rms": info.residual_rms,
        "guidance_rms": info.guidance_rms,
        "noise_level": info.noise_level[0],
    }


def _per_draw_sigma(sigma_draws: Any, problem: GuidedProblem, config: GuidedConfig, num_draws: int) -> Array:
    """Each draw's starting σ_y: the given draws of σ, or `problem.sigma_y0` for all."""
    if sigma_draws is None:
        return jnp.full((num_draws,), problem.sigma_y0)
    if config.infer_sigma or not _is_number(config.sigma_y):
        raise bad_input("sigma_draws", "None unless config.sigma_y is a number and infer_sigma=False "
                        "(one source of the noise level)", "an array")
    s = np.asarray(sigma_draws, dtype=np.float64)
    if s.shape != (num_draws,) or not (np.isfinite(s).all() and (s > 0).all()):
        raise bad_input("sigma_draws", f"{num_draws} positive finite noise levels, shape ({num_draws},)",
                        f"shape {s.shape}" if s.shape != (num_draws,) else "zero, negative or non-finite entries")
    return jnp.asarray(s, problem.sigma_y0.dtype)


@eqx.filter_jit
def _sample_many(keys: PRNGKeyArray, denoise: Denoiser, problems: GuidedProblem, config: GuidedConfig,
                 mesh: Any) -> tuple[GuidedState, GuidedInfo]:
    """Chains `keys (B, S)` of B stacked problems; with a mesh, the B axis is split over its devices."""

    def chains(k: PRNGKeyArray, probs: GuidedProblem, den: Denoiser) -> tuple[GuidedState, GuidedInfo]:
        return jax.vmap(lambda kk, p: jax.vmap(lambda k1: _run_chain(k1, den, p, config, p.sigma_y0))(kk))(k, probs)

    if mesh is None:
        return chains(keys, problems, denoise)
    prob_dyn, prob_static = eqx.partition(problems, eqx.is_array)
    den_dyn, den_static = eqx.partition(denoise, eqx.is_array)

    def local(k: PRNGKeyArray, pd: Any, dd: Any) -> tuple[GuidedState, GuidedInfo]:
        return chains(k, eqx.combine(pd, prob_static), eqx.combine(dd, den_static))

    spec = jax.sharding.PartitionSpec(TRAJECTORY_AXIS)
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, jax.sharding.PartitionSpec()), out_specs=spec,
                         check_vma=False)(keys, prob_dyn, den_dyn)


def sample_posterior_many(
    key: PRNGKeyArray,
    denoise: Denoiser,
    designs: list[Float[ArrayLike, "M P D"]],
    paddeds: list[PaddedObservations],
    *,
    core_mean: float,
    core_std: float,
    times_norm: list[Float[ArrayLike, " M"]],
    noise_chols: list[Float[ArrayLike, "M M"]],
    config: GuidedConfig,
    num_draws: int,
    core_shape: tuple[int, ...] | None = None,
    prior_spectrum: PriorSpectrum | None = None,
    devices: int | None = None,
) -> Float[np.ndarray, "B num_draws M *R"]:
    """Posterior draws for several trajectories (e.g. a test set) in one program, the
    trajectories split over devices (`jax.shard_map` on a mesh axis `"trajectories"`).

    Trajectory `b` uses the key `jax.random.fold_in(key, b)`, so its draws are those of
    `sample_posterior(fold_in(key, b), ...)` with the same problem (to float32 rounding: the
    batched program may order its sums differently).

    **Arguments:** as `sample_posterior`, with one `design (M, P, D)`, `padded`, `times_norm (M,)`
    and `noise_chol (M, M)` per trajectory in lists of equal length B. All trajectories must
    share `(M, P, D)`: put them on one time grid and pad every frame to the same number of
    points (masked). `devices`: None = all of `jax.devices()`, or an int; B is padded up to a
    multiple of it (the extra trajectories are discarded).

    **Returns:** NumPy `(B, num_draws, M, R1, .., RK)` in FTM core units.

    **Raises:** `NumericalError` naming the trajectory and step when a draw became non-finite.
    """
    if not callable(denoise):
        raise bad_input("denoise", "a callable denoise(x, sigma, t) -> x0", type(denoise).__name__)
    check_count(num_draws, "num_draws")
    lists = {"designs": designs, "paddeds": paddeds, "times_norm": times_norm, "noise_chols": noise_chols}
    sizes = {name: len(v) if isinstance(v, (list, tuple)) else None for name, v in lists.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1 or sizes["designs"] == 0:
        raise bad_input("designs/paddeds/times_norm/noise_chols", "non-empty lists of one entry per trajectory, of "
                        "equal length", sizes)
    problems = [
        prepare(d, p, core_mean=core_mean, core_std=core_std, times_norm=t, noise_chol=c, config=config,
                core_shape=core_shape, prior_spectrum=prior_spectrum)
        for d, p, t, c in zip(designs, paddeds, times_norm, noise_chols)
    ]
    shapes = {(pr.design.shape, pr.core_shape) for pr in problems}
    if len(shapes) != 1:
        raise bad_input("designs", "the same (M, P, D) for every trajectory (one time grid; pad frames to the same "
                        "number of masked points)", sorted(s[0] for s in shapes))
    B = len(problems)
    n_dev = _draw_devices(devices)
    padded_b = -(-B // n_dev) * n_dev
    problems_all = problems + [problems[0]] * (padded_b - B)
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *problems_all)
    keys = jnp.stack([jax.random.split(jax.random.fold_in(key, b), int(num_draws)) for b in range(padded_b)])
    mesh = device_mesh(n_dev, TRAJECTORY_AXIS) if n_dev > 1 else None
    state, _ = _sample_many(keys, denoise, stacked, config, mesh)
    if mesh is not None and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        state = multihost_utils.process_allgather(state, tiled=True)
    state = jax.tree_util.tree_map(lambda a: np.asarray(a)[:B], state)
    for b in range(B):
        one = jax.tree_util.tree_map(lambda a, b=b: a[b], state)
        try:
            _raise_if_nonfinite(one, problems[b], config)
        except NumericalError as exc:
            raise NumericalError(f"trajectory {b}: {exc}") from None
    return np.asarray(problems[0].core_mean) + np.asarray(problems[0].core_std) * state.x


def _raise_if_nonfinite(state: GuidedState, problem: GuidedProblem, config: GuidedConfig) -> None:
    bad = ~np.asarray(state.finite)
    if not bad.any():
        return
    first = np.asarray(state.first_bad)[bad]
    step_at = int(first.min())
    sigma_at = float(np.asarray(problem.sigmas)[step_at])
    hints = ["a smaller zeta", "more steps (num_steps)"]
    if config.infer_sigma:
        hints.insert(1, "a fixed sigma_y (infer_sigma=False)")
    if isinstance(config.guidance, Reference):
        hints.insert(0, "guidance='mmps' (noise-level normalised)")
    if isinstance(config.guidance, MomentMatching):
        hints.insert(0, "more CG iterations (MomentMatching(cg_steps=...))")
    raise NumericalError(
        f"guided sampling produced non-finite values at step {step_at} of {config.num_steps} "
        f"(noise level σ = {sigma_at:.4g}) in {int(bad.sum())} of {bad.size} draws; try " + ", ".join(hints)
    )
