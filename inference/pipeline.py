"""`reconstruct`: the one call users make — observations of one trajectory in, posterior out.

It wires the stages together and adds no method of its own: the FTM gives the design rows
(`sdift_prob.ftm`), the trained GPSD prior the denoiser (`sdift_prob.gpsd`), `inference.guided`
draws the cores (or `models.gp_prior` for the conjugate `gp` baseline), the FTM decodes them,
and `inference.report` turns everything into an `az.InferenceData`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import os
import time
from typing import Any

from jaxtyping import PRNGKeyArray

from models.likelihoods import Likelihood
from sdift_prob.data.observations import ObservationSet
from sdift_prob.errors import InputError, bad_input
from sdift_prob.validation import check_count

from .assemble import to_reconstruction
from .guided import GuidedConfig
from .problem import prepare_problem
from .run import Run, open_run
from .samplers import SAMPLERS, _active_constraints, check_config_arguments, sampler_config, select_sampler
from .samplers import DEFAULT_SAMPLER as DEFAULT_SAMPLER
from .upfront import DEFAULT_MAX_ABS_ZSCORE, DEFAULT_MAX_MEMORY_GB, _before_sampling, _check_before_work, _check_settings


# Posterior draws per chain by default (`reconstruct`, `sdift reconstruct`). The equal-tailed
# quantile intervals an analyst takes from S draws (ArviZ's ETI) are too narrow even for a
# calibrated posterior: the nominal 90% interval covers about 0.72 of the truths at 8 draws, 0.81
# at 16, 0.85 at 32, 0.87 at 64 (Gaussian posterior, simulated). 32 is where that shortfall is down
# to about 5 points, at about 40 s on one CPU core for the shipped ocean example (about 1.3 s per
# draw); the Student-t predictive intervals of `evaluate` are nominal at any draw count.
DEFAULT_DRAWS = 32


def reconstruct(
    run: Run | str | os.PathLike,
    obs: ObservationSet,
    *,
    key: PRNGKeyArray,
    sampler: str = DEFAULT_SAMPLER,
    draws: int = DEFAULT_DRAWS,
    chains: int = 1,
    times: Sequence[float] | None = None,
    grids: Mapping[str, Any] | None = None,
    resolution: int = 1,
    likelihood: Likelihood | str = "gaussian",
    sigma: float | str | None = None,
    config: GuidedConfig | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
    message_kernel: str = "reference",
    representation_error: float | str | None = "auto",
    checks: str = "raise",
    max_abs_zscore: float = DEFAULT_MAX_ABS_ZSCORE,
    max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
    constraints: Sequence[Any] | None = None,
    constraint_grids: Mapping[str, Any] | None = None,
) -> Any:
    """Posterior of the full-field evolution of one trajectory given sparse observations.

    **Arguments:**

    - `run`: a `Run` (`open_run`) or a run directory.
    - `obs`: the `ObservationSet` (physical units; any, irregular, time stamps; off-grid points).
      An empty set gives clearly labelled prior draws (`attrs["conditioned"] = 0`).
    - `key`: typed PRNG key (`jax.random.key(seed)`); the draws depend only on it and
      `(chains, draws)`.
    - `sampler`: `"mmps"` (default: moment-matching posterior sampling, the Tweedie covariance of
      the whole sequence), `"mpdps"` / `"dps"` (the paper's samplers), or `"gp"` (FTM + GP
      temporal prior, exact); `sampler_config` says what each stands for.
    - `draws`, `chains`: draws per chain (default `DEFAULT_DRAWS` = 32, so that quantile
      intervals of the draws are near nominal: 0.85 for a 90% interval of a calibrated posterior,
      against 0.72 at 8 draws; cost grows linearly, about 1.3 s per draw for the shipped ocean
      example on one core) and independent chains.
    - `times`: physical output times (default: the training time stamps). Any times: the
      sampler's grid is the union of these and the observation times.
    - `grids`: mapping space dim -> physical coordinates of the output grid (default: training
      grid); `resolution`: integer refinement factor per axis.
    - `likelihood`: a `models.likelihoods.Likelihood` or its name `"gaussian" | "laplace" |
      "student_t" | "poisson"`. The name `"poisson"` reads the offset and scale from `obs.attrs`
      (`poisson_offset`, `poisson_scale`, physical units, as `sample_observations` records them);
      a `PoissonExcess` object gives them in physical units.
    - `sigma`: observation noise std in physical units; `"metadata"` (per point, from
      `obs.noise_scale`); `"infer"` (σ inferred); None: metadata when every point has it, else
      inferred; or a `models.noise_models` object (`Fixed(sigma=)`, `PerPoint()`, `Inferred()`),
      which the others are converted to once.
    - `config`: `GuidedConfig` for the guided samplers. Its `likelihood`, `sigma_y`,
      `infer_sigma` (and, with `message_kernel="fitted"`, `message_kernel`) come from the
      arguments above: left at their defaults they are set from them, set otherwise they must
      agree (an `InputError` names both); its rule and method must agree with `sampler`
      (`sampler_config`).
    - `chunk_size`: draws per compiled call; `progress`: progress bar.
    - `message_kernel`: MPDPS's GP over time for the leave-one-out messages: `"reference"`
      (the config's kernel, by default the public code's `exp(−Δt²)`) or `"fitted"`
      (`Run.fitted_message_kernel`, Matérn-1/2 fitted to the training cores; better on fields
      that decorrelate between time stamps).
    - `representation_error`: std of the FTM's own error at a point, added in quadrature to a
      known observation noise (fixed `sigma` or per-point metadata) in every sampler, the
      posterior predictive and the log-likelihood: `"auto"` (default, `Run.representation_error`),
      a number in physical units, or None (none added). An inferred σ absorbs it (σ is then the
      total error of the observation model); the Poisson likelihood does not use it. The value
      used and its source are in `attrs["representation_error"]`.
    - `checks`: what a failed output self-check does (`inference.self_checks`: field draws far
      outside the training range, a posterior mean that misses the observations by many noise
      stds, a spread far above the prior's): `"raise"` (default) a `NumericalError` naming the
      check and what to try; `"warn"` a `SelfCheckWarning`, and the result is returned. Every
      check's result is in `attrs["self_checks"]`.
    - `max_abs_zscore`: observation values further than this many training stds from the
      training mean are refused as a units mistake (default 20).
    - `max_memory_gb`: a run whose field draws and observation design rows need more than this
      (`memory_estimate`) is refused before sampling (default 8).
    - `constraints`: physical constraints on the decoded field (`inference.constraints`:
      `Residual`, `Bounds`, `Dynamics`; e.g. `sdift_prob.data.simulate.fluid2d.fluid2d_dynamics`),
      in physical units, entering the guided samplers like likelihood terms on every sampler
      frame, observed or not (the union of the output and observation times, at their physical
      times). Not with `sampler="gp"`. Zero-weight ones are ignored. What was used and the cost
      per draw are in `attrs["constraints"]`.
    - `constraint_grids`: mapping space dim -> physical coordinates of the grid the constraints
      see the frames on (default: the training grid; a `Dynamics` solver needs its own grid).

    What the run did (noise level used and why, points and frames with data, time range against
    the training range) is in the attrs `noise`, `data`, `time_range`, `observations`;
    `inference.summary.run_summary` puts it together.

    **Returns:** `az.InferenceData` (posterior `cores`, `field`, `sigma`; posterior_predictive,
    observed_data, log_likelihood `y`; sample_stats) — see `inference.report`.
    """
    _check_before_work(key, sampler, config)
    _check_settings(checks, max_abs_zscore, max_memory_gb)  # issue 16
    if sampler not in SAMPLERS:
        raise bad_input("sampler", f"one of {SAMPLERS}", sampler)
    base = None if sampler == "gp" else sampler_config(sampler, config)  # a contradiction fails before any work
    if message_kernel not in ("reference", "fitted"):
        raise bad_input("message_kernel", "'reference' or 'fitted'", message_kernel)
    if sampler != "gp":
        check_config_arguments(config, likelihood=likelihood, sigma=sigma, message_kernel=message_kernel)
    run = _as_run(run, obs, sampler)
    for name, v in (("draws", draws), ("chains", chains)):
        check_count(v, name)
    active = _active_constraints(constraints)
    if active and sampler == "gp":
        raise bad_input("constraints", "none with sampler='gp' (its posterior is the conjugate GP one); use a guided "
                        "sampler ('mmps', 'dps', 'mpdps')", [type(c).__name__ for c in active])

    problem = prepare_problem(run, obs, times=times, grids=grids, resolution=resolution, likelihood=likelihood,
                              sigma=sigma, representation_error=representation_error)
    chosen = select_sampler(sampler, base, run, problem, message_kernel=message_kernel, constraints=active,
                            constraint_grids=constraint_grids)
    chosen.check(problem)
    _before_sampling(run, obs, out_times=problem.out_times, out_grids=problem.out_grids,  # issue 16
                     grid_times=problem.grid_times, n_slots=problem.mask.shape[1], draws=draws, chains=chains,
                     max_abs_zscore=max_abs_zscore, max_memory_gb=max_memory_gb, sampler=sampler)
    started = time.perf_counter()
    out = chosen.sample(key, run, problem, int(draws) * int(chains), chunk_size=chunk_size, progress=progress)
    elapsed = time.perf_counter() - started
    return to_reconstruction(run, problem, out, key=key, sampler=sampler, sigma=sigma, chains=chains, draws=draws,
                             elapsed=elapsed, checks=checks, chunk_size=chunk_size)


def _as_run(run: Any, obs: Any, sampler: str) -> Run:
    """The `Run` (opened when a directory is given) after the checks of `obs` against it."""
    if not isinstance(run, Run):
        run = open_run(run, require_prior=sampler != "gp")
    if not isinstance(obs, ObservationSet):
        raise bad_input("obs", "an ObservationSet", type(obs).__name__)
    if tuple(obs.space_dims) != run.space_dims:
        raise bad_input("obs.space_dims", f"the run's space dims {run.space_dims}", tuple(obs.space_dims))
    if sampler != "gp" and run.prior is None:
        raise InputError(f"run: no trained prior in {run.path}; run `sdift train-prior` or use sampler='gp'")
    return run
