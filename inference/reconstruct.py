"""`reconstruct`: the one call users make — observations of one trajectory in, posterior out.

It wires the stages together and adds no method of its own: the FTM gives the design rows
(`sdift_prob.ftm`), the trained GPSD prior the denoiser (`sdift_prob.gpsd`), `inference.guided`
draws the cores (or `models.gp_prior` for the conjugate `gp` baseline), the FTM decodes them,
and `inference.report` turns everything into an `az.InferenceData`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from models.gp_prior import GPPriorParams, sample_conjugate
from sdift_prob import __version__
from sdift_prob.data.observations import ObservationSet, PaddedObservations
from sdift_prob.errors import InputError, UntestedSettingWarning, bad_input, warn_untested_steps
from sdift_prob.ftm import FTMFit, decode_grid, design_rows, load_run
from sdift_prob.gp import TemporalKernel, fit_lengthscale, gram_float64
from sdift_prob.gpsd import load_prior
from sdift_prob.run import read_manifest
from sdift_prob.validation import check_count, check_key

from . import report, self_checks
from .calibrate import _fold_likelihood, calibrate, fold_log_lik, predict_folds
from .constraints import Constraint, Dynamics, FieldDecoder
from models.likelihoods import SIGMA_LIKELIHOODS, Gaussian, Likelihood, PoissonExcess, as_likelihood
from .guidance import Fisher, MomentMatching
from .guided import GuidedConfig, sample_posterior, union_times
from .preconditioners import PriorSpectrum
from .sigma_marginal import sigma_posterior

SAMPLERS = ("mmps", "mpdps", "dps", "gp")
DEFAULT_SAMPLER = "mmps"
# Posterior draws per chain by default (`reconstruct`, `sdift reconstruct`). The equal-tailed
# quantile intervals an analyst takes from S draws (ArviZ's ETI) are too narrow even for a
# calibrated posterior: the nominal 90% interval covers about 0.72 of the truths at 8 draws, 0.81
# at 16, 0.85 at 32, 0.87 at 64 (Gaussian posterior, simulated). 32 is where that shortfall is down
# to about 5 points, at about 40 s on one CPU core for the shipped ocean example (about 1.3 s per
# draw); the Student-t predictive intervals of `evaluate` are nominal at any draw count.
DEFAULT_DRAWS = 32
# Observation values further than this many training stds from the training mean are refused as
# a units mistake unless the caller raises it (`max_abs_zscore`): km/s for m/s is 64 stds away on
# the ocean run (issue 16), while its training fields span -1.4 .. 1.6 stds.
DEFAULT_MAX_ABS_ZSCORE = 20.0
# Memory the two big arrays of a reconstruction may need (`memory_estimate`) before it is refused
# up front (`max_memory_gb`); below what a laptop has, far above what the shipped examples need.
DEFAULT_MAX_MEMORY_GB = 8.0


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """A loaded run directory: the fitted FTM and, when trained, the GPSD prior."""

    ftm: FTMFit
    prior: Any | None
    path: Path | None = None
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)  # how the FTM was fitted

    @property
    def space_dims(self) -> tuple[str, ...]:
        return tuple(self.ftm.model.space_dims)

    @property
    def core_shape(self) -> tuple[int, ...]:
        return tuple(int(r) for r in self.ftm.cores.shape[2:])

    def normalise_time(self, t: Any) -> np.ndarray:
        t0, t1 = self.ftm.time_domain
        span = (t1 - t0) if t1 != t0 else 1.0
        return (np.asarray(t, dtype=np.float64) - t0) / span

    @functools.cached_property
    def gp_params(self) -> Any:
        """GP temporal prior fitted to the training cores (the `gp` baseline), computed once."""
        return GPPriorParams.from_training_cores(np.asarray(self.ftm.cores), self.ftm.normalised_times())


    @functools.cached_property
    def core_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean `(D,)` and covariance `(D, D)` of the training cores over trajectories and time
        (FTM units): the Gaussian stand-in of the prior that σ is inferred under
        (`inference.sigma_marginal`), computed once."""
        cores = np.asarray(self.ftm.cores, dtype=np.float64)
        flat = cores.reshape(-1, int(np.prod(self.core_shape)))
        return flat.mean(axis=0), np.atleast_2d(np.cov(flat, rowvar=False))

    @functools.cached_property
    def representation_error(self) -> tuple[float, str]:
        """The FTM's own error at a point (std, normalised field units) and where it comes from.

        The basis cannot represent a field exactly; data assimilation calls this the
        representativeness error and adds it to the observation error, which keeps a posterior
        from over-fitting precise data through the basis. It is the RMSE on held-out entries at
        fit time, recorded with the run by `fit_ftm` since this version (its `FTMFit.metadata`);
        for older runs the held-out VRMSE of `sdift fit-ftm`'s summary stands in for it (exact
        when every training trajectory has the training set's variance; larger otherwise, i.e.
        on the safe side).
        """
        recorded = self.provenance.get("representation_error") if isinstance(self.provenance, dict) else None
        if isinstance(recorded, dict) and recorded.get("std") is not None:
            return float(recorded["std"]), str(recorded.get("source", "recorded with the run"))
        fit = self.provenance.get("fit", {}) if isinstance(self.provenance, dict) else {}
        for key in ("holdout_vrmse", "full_vrmse"):
            if fit.get(key) is not None:
                return float(fit[key]), f"{key} at fit time (per-trajectory variance taken as the training variance)"
        return 0.0, "unknown: the run records no fit error, none added"

    @functools.cached_property
    def prior_spectrum(self) -> Any:
        """Principal axes and variances of the training cores' per-frame covariance in the
        prior's normalised units (`inference.preconditioners.PriorSpectrum`, for the MMPS
        preconditioner), computed once; None without a prior."""
        if self.prior is None:
            return None
        cores = np.asarray(self.ftm.cores, dtype=np.float64)
        x = (cores - float(self.prior.core_mean)) / float(self.prior.core_std)
        return PriorSpectrum.from_samples(x.reshape(-1, int(np.prod(self.core_shape))))

    @functools.cached_property
    def training_range(self) -> tuple[float, float]:
        """`(min, max)` of the training fields as decoded by the FTM, normalised units (a subset
        of the trajectories; `inference.self_checks.training_range`), computed once."""
        return self_checks.training_range(self.ftm.model, self.ftm.cores, self.ftm.grids)

    @functools.cached_property
    def fitted_message_kernel(self) -> Any:
        """MPDPS message kernel fitted to the training cores: Matérn-1/2 over normalised time,
        lengthscale by marginal likelihood on the standardised cores (`sdift_prob.gp.fit_lengthscale`).

        The reference kernel `exp(−Δt²)` assumes every frame is strongly correlated with every
        other one; on fields that decorrelate between time stamps (fluid2d: lag-1 core
        correlation ≈ 0.5) its leave-one-out messages then carry wrong evidence. The Matérn-1/2
        (Markov) kernel fitted to the training cores gives each frame's LOO prediction from its
        neighbours only, with weights bounded by 1/2, at the correlation the data show."""
        cores = np.asarray(self.ftm.cores, dtype=np.float64)
        z = (cores - cores.mean(axis=(0, 1))) / cores.std(axis=(0, 1))
        return fit_lengthscale(z, self.ftm.normalised_times(), TemporalKernel("matern12", 0.1, 1.0),
                               fit_variance=False)


# Slots per frame are padded up to a multiple of this, so that reconstructions from similar
# observation sets (K-fold subsets, a moving window) share one compiled sampler.
SLOT_MULTIPLE = 8


def _pad_slots(padded: PaddedObservations) -> PaddedObservations:
    """`padded` with masked slots appended up to a multiple of `SLOT_MULTIPLE` points per frame
    (the observation order of `report.observation_order(obs, times, P)` matches it)."""
    M, P = np.asarray(padded.mask).shape
    extra = -P % SLOT_MULTIPLE
    if extra == 0:
        return padded

    def grow(a: Any, fill: Any) -> np.ndarray:
        a = np.asarray(a)
        return np.concatenate([a, np.full((M, extra, *a.shape[2:]), fill, dtype=a.dtype)], axis=1)

    return PaddedObservations(times=padded.times, values=grow(padded.values, 0.0), coords=grow(padded.coords, 0.0),
                              noise_scale=grow(padded.noise_scale, 1.0), mask=grow(padded.mask, False))


def _representation_error(run: Run, representation_error: Any) -> tuple[float, str]:
    """`(std in normalised field units, where it came from)` of the FTM's own error at a point."""
    if isinstance(representation_error, str):
        if representation_error != "auto":
            raise bad_input("representation_error", "'auto', a number >= 0 (physical units) or None",
                            representation_error)
        return run.representation_error
    if representation_error is None:
        return 0.0, "none (representation_error=None)"
    if isinstance(representation_error, bool) or not isinstance(representation_error, (int, float, np.number)):
        raise bad_input("representation_error", "'auto', a number >= 0 (physical units) or None", representation_error)
    v = float(representation_error)
    if not (math.isfinite(v) and v >= 0):
        raise bad_input("representation_error", "a finite number >= 0 (physical units)", representation_error)
    return v / run.ftm.normalizer.std, "given"


def sampler_config(sampler: str, config: GuidedConfig | None = None) -> GuidedConfig:
    """The `GuidedConfig` a sampler name stands for, with the user's `config` for everything else.

    `"mmps"`: moment-matching guidance (`inference.guidance.MomentMatching`), no messages — the
    default `GuidedConfig()`. `"mpdps"` / `"dps"`: the paper's samplers, with the config's
    `"fisher"` or `"reference"` rule (`"fisher"` when no config is given). A config whose rule
    contradicts the sampler is refused rather than overridden: MPDPS's messages on top of the
    moment-matched update count the data twice (`benchmarks/exactness.py`), so that
    combination is left to `inference.guided.sample_posterior` for ablations.
    """
    if sampler not in SAMPLERS or sampler == "gp":
        raise bad_input("sampler", f"one of {tuple(s for s in SAMPLERS if s != 'gp')} for a guided config", sampler)
    if config is None:
        return GuidedConfig() if sampler == "mmps" else GuidedConfig(method=sampler, guidance=Fisher())
    if not isinstance(config, GuidedConfig):
        raise bad_input("config", "a GuidedConfig", type(config).__name__)
    mmps = isinstance(config.guidance, MomentMatching)
    if sampler == "mmps":
        if not mmps:
            raise bad_input("config.guidance", "a MomentMatching rule for sampler='mmps' (the paper's 'fisher' and "
                            "'reference' rules are sampler='mpdps' or 'dps')", config.guidance.name)
        if config.method != "dps":
            raise bad_input("config.method", "'dps' for sampler='mmps' (MPDPS's messages on top of the moment-matched "
                            "update count the data twice)", config.method)
        return config
    if mmps:
        raise bad_input("config.guidance", f"'fisher' or 'reference' for sampler={sampler!r} (the paper's samplers; "
                        "moment matching is sampler='mmps')", config.guidance.name)
    return dataclasses.replace(config, method=sampler)


def open_run(run_dir: str | os.PathLike, *, require_prior: bool = False) -> Run:
    """Load a run directory written by `sdift fit-ftm` (and `sdift train-prior`).

    **Arguments:**

    - `run_dir`: the folder.
    - `require_prior`: raise when the run has no trained prior (needed by `mpdps`/`dps`).
    """
    path = Path(run_dir)
    ftm = load_run(path)
    sections = read_manifest(path, verify=False).get("sections", {})  # load_run verified it
    prior = None
    if "prior" in sections:
        prior = load_prior(path)
    elif require_prior:
        raise InputError(
            f"run_dir: {path} has no trained prior; run `sdift train-prior {path}` first "
            "(or use sampler='gp', which needs only the FTM)"
        )
    provenance = sections.get("ftm", {}).get("info", {}).get("extra", {})
    return Run(ftm=ftm, prior=prior, path=path, provenance=provenance)


def refine_grid(grid: Sequence[float], factor: int) -> np.ndarray:
    """`factor` times finer grid over the same extent (`(I - 1) * factor + 1` points)."""
    g = np.asarray(grid, dtype=np.float64)
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise bad_input("resolution", "an integer >= 1 (refinement factor per axis)", factor)
    if factor == 1 or g.size < 2:
        return g
    return np.interp(np.linspace(0, g.size - 1, (g.size - 1) * factor + 1), np.arange(g.size), g)


def _output_grids(run: Run, grids: Mapping[str, Any] | None, resolution: int) -> tuple[np.ndarray, ...]:
    dims = run.space_dims
    if grids is None:
        base = run.ftm.grids
    else:
        if not isinstance(grids, Mapping) or set(grids) != set(dims):
            raise bad_input("grids", f"a mapping with exactly the space dims {dims}",
                            sorted(grids) if isinstance(grids, Mapping) else grids)
        base = []
        for d in dims:
            g = np.asarray(grids[d], dtype=np.float64)
            if g.ndim != 1 or g.size < 1 or not np.isfinite(g).all():
                raise bad_input(f"grids[{d!r}]", "a non-empty 1-D array of finite coordinates", g)
            base.append(g)
    return tuple(refine_grid(g, resolution) for g in base)


def _noise_setting(obs: ObservationSet, sigma: Any, normaliser_std: float, sampler: str) -> tuple[Any, bool]:
    """`(sigma_y in normalised units | "metadata" | None, infer_sigma)` from the user's `sigma`."""
    if sigma is None:
        _check_noise_scale(obs)  # partly unknown or zero: an error, not a silent switch to inferred noise
        known = np.isfinite(obs.noise_scale).all() and (obs.noise_scale > 0).all()
        if known:
            return "metadata", False
        if sampler == "gp":
            raise InputError(
                "sigma: the gp sampler needs a noise level: pass sigma (physical units) or observations "
                "whose noise_scale is known"
            )
        return None, True
    if isinstance(sigma, str):
        if sigma == "infer":
            if sampler == "gp":
                raise bad_input("sigma", "a noise level or 'metadata' for the gp sampler", sigma)
            return None, True
        if sigma == "metadata":
            if not (np.isfinite(obs.noise_scale).all() and (obs.noise_scale > 0).all()):
                raise bad_input("sigma", "'metadata' only when every observation has a positive noise_scale",
                                "observations with unknown noise_scale")
            return "metadata", False
        raise bad_input("sigma", "a positive number (physical units), 'metadata', 'infer' or None", sigma)
    s = float(sigma)
    if not (math.isfinite(s) and s > 0):
        raise bad_input("sigma", "a positive finite noise level in physical units", sigma)
    return s / normaliser_std, False


def _check_noise_scale(obs: ObservationSet) -> None:
    """Per-point noise levels that `sigma=None` cannot use as they are (issue 16): some unknown
    (NaN) among known ones — reading them as "noise unknown" switched every point to an inferred
    noise level without a word (5 NaN among 1,840) — or zero, which the samplers cannot condition
    on exactly (like levels below 1e-6 training stds, refused by the sampler). All NaN is the
    documented "noise unknown" and stays inferred."""
    ns = np.asarray(obs.noise_scale)
    n_nan = int(np.isnan(ns).sum())
    if 0 < n_nan < ns.size:
        raise bad_input("obs.noise_scale", "a noise std for every point, or for none (unknown noise); pass "
                        "sigma='infer' to infer one noise level for all points, or sigma=<a number> (physical units)",
                        f"{n_nan} of {ns.size} entries missing (NaN)")
    n_zero = int((ns == 0).sum())
    if n_zero:
        raise bad_input("obs.noise_scale", "positive noise stds (0 means noise-free, which the samplers cannot "
                        "condition on exactly); pass sigma=<a small number> (physical units) or sigma='infer'",
                        f"{n_zero} of {ns.size} entries equal to 0")


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
      `obs.noise_scale`); `"infer"` (σ inferred inside the sampler); None: metadata when every
      point has it, else inferred.
    - `config`: `GuidedConfig` for the guided samplers (its `likelihood`, `sigma_y`,
      `infer_sigma` are set from the arguments above; its rule must agree with `sampler`, see
      `sampler_config`).
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
    if not isinstance(run, Run):
        run = open_run(run, require_prior=sampler != "gp")
    if not isinstance(obs, ObservationSet):
        raise bad_input("obs", "an ObservationSet", type(obs).__name__)
    if tuple(obs.space_dims) != run.space_dims:
        raise bad_input("obs.space_dims", f"the run's space dims {run.space_dims}", tuple(obs.space_dims))
    for name, v in (("draws", draws), ("chains", chains)):
        check_count(v, name)
    if message_kernel not in ("reference", "fitted"):
        raise bad_input("message_kernel", "'reference' or 'fitted'", message_kernel)
    if sampler != "gp" and run.prior is None:
        raise InputError(f"run: no trained prior in {run.path}; run `sdift train-prior` or use sampler='gp'")
    active = _active_constraints(constraints)
    if active and sampler == "gp":
        raise bad_input("constraints", "none with sampler='gp' (its posterior is the conjugate GP one); use a guided "
                        "sampler ('mmps', 'dps', 'mpdps')", [type(c).__name__ for c in active])

    ftm = run.ftm
    normalizer = ftm.normalizer
    lik = _likelihood(likelihood, obs, normalizer)
    out_times = np.asarray(ftm.times if times is None else times, dtype=np.float64)
    if out_times.ndim != 1 or out_times.size < 1 or not np.isfinite(out_times).all():
        raise bad_input("times", "a non-empty 1-D sequence of finite physical times", times)
    if out_times.size > 1 and (np.diff(out_times) <= 0).any():
        raise bad_input("times", "strictly increasing output times", out_times)
    out_grids = _output_grids(run, grids, resolution)

    conditioned = obs.n_points > 0
    if conditioned:
        grid_times, out_idx, _ = union_times(out_times, obs.time_stamps())
    else:
        grid_times, out_idx = out_times, np.arange(out_times.size)
    times_norm = run.normalise_time(grid_times)
    sigma_y, infer_sigma = _noise_setting(obs, sigma, normalizer.std, sampler) if conditioned else (1.0, False)
    rep_error, rep_source = _representation_error(run, representation_error)
    # Gaussian noise inferred: σ drawn before sampling from the Gaussian model's marginal
    # likelihood, the representation error kept apart (`inference.sigma_marginal`); other
    # likelihoods infer σ inside the sampler, where it absorbs the representation error.
    sigma_before = conditioned and infer_sigma and lik.conjugate and sampler != "gp"
    rep_applied = ("no observations" if not conditioned else "added to the inferred noise" if sigma_before
                   else "absorbed by the inferred sigma" if infer_sigma
                   else f"not used ({lik.name} likelihood)" if not lik.has_sigma else "added to the given noise")
    rep_added = rep_applied == "added to the given noise"  # to sigma_y here, or per point below
    if rep_added and sigma_y != "metadata":
        sigma_y = math.hypot(sigma_y, rep_error)

    # The padded observations in normalised field units; a frame without points is all-masked.
    if conditioned:
        padded_phys = _pad_slots(obs.to_padded(grid_times))  # one padding, grown to the slot multiple
    else:
        K = len(run.space_dims)
        padded_phys = PaddedObservations(
            times=grid_times, values=np.zeros((grid_times.size, 1)), coords=np.zeros((grid_times.size, 1, K)),
            noise_scale=np.ones((grid_times.size, 1)), mask=np.zeros((grid_times.size, 1), bool),
        )
    M, P = padded_phys.mask.shape
    _before_sampling(run, obs, out_times=out_times, out_grids=out_grids, grid_times=grid_times, n_slots=P,  # issue 16
                     draws=draws, chains=chains, max_abs_zscore=max_abs_zscore, max_memory_gb=max_memory_gb,
                     sampler=sampler)
    mask = np.asarray(padded_phys.mask)
    coords = np.asarray(padded_phys.coords, dtype=np.float64)
    # Padding slots may hold any coordinate; park them inside the domain.
    centre = 0.5 * (np.asarray(ftm.model.domain_lo) + np.asarray(ftm.model.domain_hi))
    coords = np.where(mask[..., None], coords, centre)
    padded = PaddedObservations(
        times=np.asarray(grid_times),
        values=np.where(mask, np.asarray(normalizer.forward(padded_phys.values)), 0.0),
        coords=coords,
        noise_scale=np.where(mask, np.hypot(np.asarray(padded_phys.noise_scale) / normalizer.std,
                                            rep_error if rep_added and sigma_y == "metadata" else 0.0), 1.0),
        mask=mask,
    )
    design = np.asarray(design_rows(ftm.model, coords.reshape(-1, coords.shape[-1]))).reshape(M, P, -1)

    if not lik.has_sigma:
        sigma_y, infer_sigma = None, False

    n_total = int(draws) * int(chains)
    started = time.perf_counter()
    info: dict[str, np.ndarray] = {}
    settings: dict[str, Any] = {"sampler": sampler}
    noise_draws = sigma_eff_draws = None
    if sigma_before:
        sig_post = sigma_posterior(
            jax.random.fold_in(key, 2), design, padded.values, mask,
            gram_float64(run.gp_params.kernel, times_norm) + run.gp_params.jitter * np.eye(M), *run.core_moments,
            representation_error=rep_error, prior_scale=base.sigma_prior_scale,
        )
        noise_draws = sig_post.draw(jax.random.fold_in(key, 3), n_total)
        sigma_eff_draws = sig_post.effective(noise_draws)
        settings["sigma_inference"] = {
            "method": "marginal likelihood of the Gaussian FTM + GP model, before sampling",
            "points_used": sig_post.n_used, "points": sig_post.n_points,
            "interval90": (sig_post.quantile([0.05, 0.95]) * normalizer.std).tolist(),
        }
        sigma_y = float(np.median(sigma_eff_draws))  # the config's level; each draw runs at its own
    if sampler == "gp":
        if not lik.conjugate:
            raise bad_input("likelihood", "'gaussian' for the gp sampler (its posterior is exact only there)",
                            lik.name)
        sigma_arg = sigma_y if conditioned else 1.0
        core_draws = np.asarray(
            sample_conjugate(key, run.gp_params, design, padded, sigma_arg, times_norm, n_total)
        )
        sigma_norm_draws = None
        settings["gp_params"] = {"lengthscale": float(run.gp_params.kernel.lengthscale),
                                 "kernel": run.gp_params.kernel.name}
    else:
        prior = run.prior
        if message_kernel == "fitted":
            base = dataclasses.replace(base, message_kernel=run.fitted_message_kernel)
        # Without data the draws are the prior's: no guidance at all (ζ = 0, the cheap rule);
        # with constraints but no data, the constraints alone guide (the padding has no weight).
        if conditioned:
            cfg = dataclasses.replace(base, likelihood=lik, sigma_y=sigma_y,
                                      infer_sigma=infer_sigma and not sigma_before, likelihood_params=())
        elif active:
            cfg = dataclasses.replace(base, method="dps", likelihood=Gaussian(), sigma_y=1.0, infer_sigma=False,
                                      likelihood_params=())
        else:
            cfg = dataclasses.replace(base, method="dps", guidance=Fisher(), through_denoiser=False, corrector=None,
                                      zeta=0.0, sigma_y=1.0, infer_sigma=False)
        decoder = None
        if active:
            c_grids = _output_grids(run, constraint_grids, 1) if constraint_grids is not None else tuple(ftm.grids)
            decoder = FieldDecoder.from_ftm(ftm.model, c_grids, normalizer)
        chol = prior.noise_cholesky(jnp.asarray(times_norm))
        core_draws, info = sample_posterior(
            key, prior.denoise, design, padded, core_mean=float(prior.core_mean), core_std=float(prior.core_std),
            times_norm=times_norm, noise_chol=chol, config=cfg, num_draws=n_total, core_shape=run.core_shape,
            chunk_size=chunk_size, progress=progress,
            prior_spectrum=run.prior_spectrum if isinstance(cfg.guidance, MomentMatching) and cfg.guidance.anchors > 1
            else None,
            constraints=active or None, decoder=decoder, sigma_draws=sigma_eff_draws,
        )
        sigma_norm_draws = (sigma_eff_draws if sigma_eff_draws is not None
                            else np.asarray(info["sigma_y"]) if infer_sigma else None)
        settings["guided"] = cfg.to_dict()
        if active:
            settings["constraints"] = {"terms": [_describe_constraint(c, grid_times) for c in active],
                                       "grid": decoder.to_dict()}
    elapsed = time.perf_counter() - started

    core_draws = np.asarray(core_draws, dtype=np.float32).reshape(chains, draws, M, *run.core_shape)
    if sigma_norm_draws is not None:
        sigma_norm_draws = np.asarray(sigma_norm_draws).reshape(chains, draws)
    # σ as reported: the noise alone when the representation error was added apart, else as sampled
    sigma_noise_draws = sigma_norm_draws if noise_draws is None else noise_draws.reshape(chains, draws)
    field_norm = decode_grid(ftm.model, jnp.asarray(core_draws[:, :, out_idx]), out_grids)
    field_draws = np.asarray(normalizer.inverse(np.asarray(field_norm)), dtype=np.float32)
    # issue 16: what the run did, and its output's own checks (raise or warn, before the predictive)
    facts = _run_facts(run, obs, sigma=sigma, likelihood=lik, conditioned=conditioned, infer_sigma=infer_sigma,
                       sigma_y=sigma_y, sigma_norm_draws=sigma_noise_draws,
                       padded=padded, out_times=out_times, grid_times=grid_times)
    if sigma_before:
        facts["noise"].update(settings["sigma_inference"], representation_error_added=rep_error * normalizer.std)
    check_results = _self_check(run, field_norm, core_draws, design, padded, sigma_y=sigma_y,
                                sigma_norm_draws=sigma_norm_draws, likelihood=lik, conditioned=conditioned,
                                noise=facts["noise"], checks=checks,
                                basis_error_known=not rep_source.startswith("unknown"))

    if conditioned:
        obs_order = report.observation_order(obs, grid_times, padded_phys.mask.shape[1])
        model_sigma = sigma_y if sigma_norm_draws is None else None
        k_pred = jax.random.fold_in(key, 1)
        common = dict(likelihood=lik, sigma_draws=sigma_norm_draws, sigma=model_sigma,
                      normalizer=normalizer, batch_size=chunk_size)
        pad_j = jax.tree.map(np.asarray, padded)
        y_rep = report.posterior_predictive(k_pred, core_draws, design, pad_j, obs_order, **common)
        log_lik = report.pointwise_log_likelihood(core_draws, design, pad_j, obs_order, **common)
    else:
        y_rep = np.zeros((chains, draws, 0))
        log_lik = np.zeros((chains, draws, 0))

    sample_stats = {"wall_time_per_draw": np.full((chains, draws), elapsed / n_total)}
    if "residual_rms" in info:
        sample_stats["final_residual_rms"] = np.asarray(info["residual_rms"])[:, -1].reshape(chains, draws)
        sample_stats["guidance_rms_mean"] = np.asarray(info["guidance_rms"]).mean(axis=1).reshape(chains, draws)
    field_units = str(run.provenance.get("units") or "field units")
    coord_units = {k: v for k, v in run.provenance.get("coord_units", {}).items() if v}
    units = {"field": field_units, "y": field_units, **coord_units}
    attrs = {
        "sampler": sampler,
        "conditioned": int(conditioned),
        "likelihood": lik.name,
        "settings": settings,
        "sigma_input": sigma if isinstance(sigma, (str, type(None))) else float(sigma),
        "representation_error": {"std": rep_error * float(normalizer.std), "source": rep_source,
                                 "applied": rep_applied},
        "seed_key": np.asarray(jax.random.key_data(key)).tolist(),
        "run_dir": str(run.path) if run.path is not None else "",
        "sdift_prob_version": __version__,
        "wall_time_s": elapsed,
        "wall_time_per_draw_s": elapsed / n_total,
        "constraints": ({**settings["constraints"], "wall_time_per_draw_s": elapsed / n_total}
                        if "constraints" in settings else {"terms": []}),
        "units": units,
        "self_checks": {"mode": checks, "results": check_results}, **facts,  # issue 16
    }
    field_coords = dict(zip(run.space_dims, out_grids))
    idata = report.to_inference_data(
        core_draws=core_draws, field_draws=field_draws, field_times=out_times, field_coords=field_coords,
        space_dims=run.space_dims, obs=obs, y_rep=y_rep, log_lik=log_lik,
        sigma_draws=None if sigma_noise_draws is None else sigma_noise_draws * normalizer.std,
        sample_stats=sample_stats, attrs=attrs, core_times=grid_times,
    )
    return idata


def calibrate_reconstruction(
    run: Run,
    obs: ObservationSet,
    *,
    key: PRNGKeyArray,
    sampler: str = DEFAULT_SAMPLER,
    draws: int = 8,
    zetas: Sequence[float] = (0.5, 1.0, 2.0),
    holdout_fraction: float = 0.2,
    sigma: float | str | None = None,
    config: GuidedConfig | None = None,
    levels: Sequence[float] = (0.5, 0.9),
) -> Any:
    """Calibrate `reconstruct` on held-out observations (`inference.calibrate.calibrate`).

    Holds out `holdout_fraction` of the observations, reconstructs from the rest for each
    guidance strength in `zetas`, predicts the held-out values (posterior draws + observation
    noise), and chooses ζ and a posterior temperature τ so that held-out central intervals reach
    their nominal coverage. Apply the result with
    `reconstruct(..., config=replace(config, zeta=result.zeta))` and
    `inference.calibrate.apply_temperature(draws, result.temperature)`.

    **Returns:** `inference.calibrate.CalibrationResult`.
    """
    base = sampler_config(sampler, config)

    def sample_predictive(k: PRNGKeyArray, obs_fit: ObservationSet, obs_held: ObservationSet, zeta: float):
        held_times = np.unique(obs_held.time)
        idata = reconstruct(run, obs_fit, key=k, sampler=sampler, draws=draws, times=held_times,
                            sigma=sigma, config=dataclasses.replace(base, zeta=float(zeta)))
        pred = field_at_observations(run, idata, obs_held).reshape(draws, -1)
        noise_sd = _noise_sd(idata, obs_held, sigma).reshape(draws, -1)
        eps = np.asarray(jax.random.normal(jax.random.fold_in(k, 7), pred.shape))
        return pred + noise_sd * eps

    return calibrate(key, sample_predictive, obs, holdout_fraction=holdout_fraction, zetas=tuple(zetas),
                     levels=tuple(levels))


def field_at_observations(run: Run, idata: Any, obs: ObservationSet) -> np.ndarray:
    """`(chain, draw, N)` field of each posterior draw at the points of `obs` (physical units),
    decoded from `posterior.cores` at the nearest time of the core grid (`time_grid`): the
    noise-free mean of the observation model at those points."""
    if not isinstance(obs, ObservationSet):
        raise bad_input("obs", "an ObservationSet", type(obs).__name__)
    cores = idata.posterior["cores"]
    c, s = cores.sizes["chain"], cores.sizes["draw"]
    grid = cores.time_grid.values
    index = np.array([int(np.argmin(np.abs(grid - t))) for t in obs.time], dtype=np.int64)
    if obs.n_points and np.abs(grid[index] - obs.time).max() > 1e-6 * max(1.0, float(np.ptp(grid))):
        raise bad_input("obs", "points at time stamps of the posterior's core grid (the observations it was "
                        "reconstructed from, or a subset)", "times off the grid")
    rows = np.asarray(design_rows(run.ftm.model, obs.coords))  # (N, D)
    flat = cores.values.reshape(c * s, cores.shape[2], -1)[:, index, :]  # (C*S, N, D)
    pred = run.ftm.normalizer.inverse(np.einsum("snd,nd->sn", flat, rows))
    return np.asarray(pred, dtype=np.float64).reshape(c, s, -1)


def _noise_sd(idata: Any, obs: ObservationSet, sigma: Any) -> np.ndarray:
    """`(chain, draw, N)` observation noise std (physical units) that `reconstruct` used: the
    inferred σ of each draw, or the given level (number, or the observations' own) combined with the
    FTM's representation error when it was applied."""
    post = idata.posterior
    c, s = post.sizes["chain"], post.sizes["draw"]
    rep = report.posterior_attrs(idata).get("representation_error", {})
    added = str(rep.get("applied", "")).startswith("added")
    if "sigma" in post:
        noise = post["sigma"].values.reshape(c, s, 1).astype(np.float64)
        noise = np.hypot(noise, float(rep.get("std", 0.0))) if added else noise
        return np.broadcast_to(noise, (c, s, obs.n_points)).astype(np.float64)
    if isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
        noise = np.full(obs.n_points, float(sigma))
    else:
        noise = np.nan_to_num(np.broadcast_to(np.asarray(obs.noise_scale, dtype=np.float64), (obs.n_points,)))
    if added:
        noise = np.hypot(noise, float(rep.get("std", 0.0)))
    return np.broadcast_to(noise, (c, s, obs.n_points)).astype(np.float64)


def predict_folds_reconstruction(
    run: Run,
    obs: ObservationSet,
    *,
    key: PRNGKeyArray,
    n_folds: int = 5,
    frame_fraction: float = 0.2,
    sampler: str = DEFAULT_SAMPLER,
    draws: int = 8,
    likelihood: Likelihood | str = "gaussian",
    sigma: float | str | None = None,
    config: GuidedConfig | None = None,
    progress: bool = False,
) -> Any:
    """K-fold held-out predictions of `reconstruct` (`inference.calibrate.predict_folds`): for each
    fold, reconstruct from the other folds (output at the held-out time stamps only) and decode every
    draw's field at the held-out points, with its noise std. The result feeds
    `inference.calibrate.calibrate_folds` (field temperature, out-of-fold coverage) and
    `inference.checks.kfold_elpd` (model comparison). Costs `n_folds` reconstructions.

    `frame_fraction` (default 0.2) of the time stamps are held out whole, so the frames without data
    get their own coverage figures. Other arguments as `reconstruct` (`likelihood` one of
    "gaussian", "laplace", "student_t", or such an object: `StudentT(df)` passes its `df` on).

    **Returns:** `inference.calibrate.FoldPredictions`.
    """
    likelihood = _fold_likelihood(likelihood)
    base = config if sampler == "gp" else sampler_config(sampler, config)

    def predict(k: PRNGKeyArray, obs_fit: ObservationSet, obs_held: ObservationSet):
        idata = reconstruct(run, obs_fit, key=k, sampler=sampler, draws=draws, times=np.unique(obs_held.time),
                            sigma=sigma, config=base, likelihood=likelihood)
        field = field_at_observations(run, idata, obs_held).reshape(draws, -1)
        return field, _noise_sd(idata, obs_held, sigma).reshape(draws, -1)

    return predict_folds(key, predict, obs, n_folds=n_folds, frame_fraction=frame_fraction, likelihood=likelihood,
                         progress=progress)


def temper_reconstruction(run: Run, idata: Any, obs: ObservationSet, tau: float, *,
                          sigma: float | str | None = None) -> Any:
    """`inference.report.temper_posterior` for a posterior from `reconstruct(run, obs, ...)`: field and
    cores tempered, the posterior predictive shifted with the tempered field at the observation points
    (each replicate keeps its noise), and the log-likelihood recomputed when the likelihood is one of
    "gaussian", "laplace", "student_t" and the recomputation reproduces the stored values at τ = 1
    (otherwise the group is removed, and the attrs say so). `sigma`: as given to `reconstruct`."""
    f_obs = field_at_observations(run, idata, obs) if "posterior_predictive" in idata.groups() else None
    log_lik_fn = None
    attrs = report.posterior_attrs(idata)
    like = attrs.get("likelihood", "gaussian")  # the stored name of a likelihood with a σ, or not
    if f_obs is not None and "log_likelihood" in idata.groups() and like in SIGMA_LIKELIHOODS:
        noise = _noise_sd(idata, obs, sigma)
        # StudentT at the default df; with another one the check below fails and the group is removed
        lik = as_likelihood(like)

        def log_lik_fn(f: np.ndarray) -> np.ndarray:
            return fold_log_lik(obs.value, f, noise, lik)

        stored = idata.log_likelihood["y"].values
        if not np.allclose(log_lik_fn(f_obs), stored, rtol=1e-3, atol=1e-3):
            log_lik_fn = None  # not the model's log-likelihood: remove the group rather than guess
    return report.temper_posterior(idata, tau, field_at_obs=f_obs, log_lik_fn=log_lik_fn)


# --- checks before any work (issue 16), kept apart from `reconstruct`'s body, which calls
# `_check_before_work` first ---------------------------------------------------------------------


def _check_before_work(key: Any, sampler: str, config: Any) -> None:
    """What can be checked without the run or the data: a typed PRNG key (an int seed gives
    the usual one-line `InputError`, not a TypeError from inside JAX), and a loud
    `UntestedSettingWarning` for fewer sampler steps than tested (`gp` takes no steps)."""
    check_key(key)
    if sampler != "gp" and isinstance(config, GuidedConfig):
        warn_untested_steps(config.num_steps, "num_steps", stacklevel=3)


def _check_settings(checks: Any, max_abs_zscore: Any, max_memory_gb: Any) -> None:
    """The self-check mode and the limits of the up-front checks, before any work."""
    self_checks.check_mode(checks)
    for name, v in (("max_abs_zscore", max_abs_zscore), ("max_memory_gb", max_memory_gb)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not (v > 0):
            raise bad_input(name, "a positive number (math.inf turns the check off)", v)


def units_hint(values: np.ndarray, mean: float, std: float) -> str:
    """What the units of `values` look like next to the training field (mean, std): a power of
    ten away (a unit prefix: km/s for m/s), 273.15 away (kelvin and degrees Celsius), or just
    their median against the training mean."""
    med = float(np.median(values))
    ratio = med / mean if mean != 0 else 0.0
    if math.isfinite(ratio) and ratio > 0:  # a subnormal median gives 0 (found by the hostile suite)
        decades = math.log10(ratio)
        k = round(decades)
        if k != 0 and abs(decades - k) < 0.1:  # within 25% of an exact power of ten
            return (f"their median {med:.4g} is about 1e{k:+d} times the training mean {mean:.4g}: "
                    "a unit prefix (e.g. km/s for m/s)?")
    for shift in (273.15, -273.15):
        if abs(med + shift - mean) < 3 * std:
            return (f"their median {med:.4g} is about {-shift:+g} away from the training mean {mean:.4g}: "
                    "degrees Celsius for kelvin (or back)?")
    return f"their median is {med:.4g}; the training mean is {mean:.4g}, its std {std:.4g}"


def _check_observation_values(obs: ObservationSet, normalizer: Any, max_abs_zscore: float, units: str) -> None:
    """Observation values further than `max_abs_zscore` training stds from the training mean
    are a units mistake (issue 16: km/s for m/s, 64 stds away, gave VRMSE 65 and exit 0), named
    with how many, the extreme and what the units look like."""
    if obs.n_points == 0:
        return
    z = np.abs(obs.value - normalizer.mean) / normalizer.std
    beyond = z > max_abs_zscore
    if not beyond.any():
        return
    extreme = float(obs.value[int(np.argmax(z))])
    raise bad_input(
        "obs.value", f"values within {max_abs_zscore:g} training stds ({normalizer.std:.4g} {units}) of the training "
        f"mean ({normalizer.mean:.4g} {units}); check the units, or pass max_abs_zscore (CLI: --max-zscore) "
        "if such values are real",
        f"{int(beyond.sum())} of {obs.n_points} values beyond, e.g. {extreme:.4g} ({float(z.max()):.3g} stds); "
        f"{units_hint(obs.value, normalizer.mean, normalizer.std)}")


# Copies of each big float32 array that `reconstruct` holds at once (peak RSS on the ocean run,
# docs/RELIABILITY.md): the decoded field in normalised and physical units and in the
# InferenceData (measured: 3.0-3.4 field sizes); the design rows as NumPy and JAX arrays, in the
# guided sampler and the predictive / log-likelihood batches (measured: 5.6 with mmps, 10^5
# points; issue 16's 12.8 GB for 10^6 points with mpdps is 6.2).
FIELD_COPIES = 4
DESIGN_COPIES = 6
# The exact `gp` sampler works in float64 on the rows of every point against every frame's
# cores, (N, M x D) matrices, several at once (models.gp_prior's parameter-space solve):
# measured 7.5 GB for 2e4 points on the ocean run, 37 bytes per entry.
GP_BYTES_PER_ENTRY = 40


def memory_estimate(n_draws: int, n_out_times: int, n_grid: int, n_frames: int, n_slots: int,
                    n_basis: int, *, n_points: int = 0, sampler: str = DEFAULT_SAMPLER) -> dict[str, float]:
    """Bytes `reconstruct` needs for its big arrays: the field draws (draws x output times x grid
    points, float32) and the observations' design rows (sampler frames x padded points per frame
    x basis functions, float32; for `gp`, points x frames x basis functions, float64, twice),
    times the copies held at once."""
    field = 4.0 * n_draws * n_out_times * n_grid * FIELD_COPIES
    design = 4.0 * n_frames * n_slots * n_basis * DESIGN_COPIES
    if sampler == "gp":
        design += float(GP_BYTES_PER_ENTRY) * n_points * n_frames * n_basis
    return {"field": field, "observations": design, "total": field + design}


def _check_memory(estimate: Mapping[str, float], max_memory_gb: float, *, draws: int, chains: int,
                  n_out_times: int, n_grid: int, n_points: int) -> None:
    """Refuse, before sampling, a run whose estimate exceeds `max_memory_gb`, saying which part
    is large and what to change."""
    if estimate["total"] <= max_memory_gb * 1e9:
        return
    gb = {k: v / 1e9 for k, v in estimate.items()}
    raise InputError(
        f"max_memory_gb: this reconstruction needs about {gb['total']:.3g} GB ({gb['field']:.3g} GB for "
        f"{chains} x {draws} field draws of {n_out_times} times x {n_grid} grid points, {gb['observations']:.3g} GB "
        f"for {n_points} observed points), more than the limit of {max_memory_gb:g} GB; use fewer draws, output "
        "times (times) or a coarser output grid (resolution, grids), fewer observations, or pass a larger "
        "max_memory_gb (CLI: --max-memory-gb) if the machine has the memory"
    )


# Times further than this many training spans outside the training time range: the prior and
# the basis were never shown anything like them (issue 16: t = 100 on a model trained on 0-38).
FAR_TIME_SPANS = 1.0


def spans_outside(times: np.ndarray, time_domain: tuple[float, float]) -> float:
    """How far `times` reach outside `time_domain`, in training spans (0 inside it)."""
    t = np.asarray(times, dtype=np.float64)
    if t.size == 0:
        return 0.0
    t0, t1 = time_domain
    span = (t1 - t0) if t1 != t0 else 1.0
    return float(max(0.0, (t0 - t.min()) / span, (t.max() - t1) / span))


def _warn_far_times(out_times: np.ndarray, obs: ObservationSet, time_domain: tuple[float, float]) -> None:
    """An `UntestedSettingWarning` naming `times` or `obs.time` when they reach more than
    `FAR_TIME_SPANS` training spans outside the training time range."""
    import warnings

    for name, t in (("times", out_times), ("obs.time", obs.time)):
        far = spans_outside(t, time_domain)
        if far > FAR_TIME_SPANS:
            warnings.warn(
                f"{name}: reaches {float(np.min(t)):.4g} .. {float(np.max(t)):.4g}, {far:.3g} training spans outside "
                f"the training time range [{time_domain[0]:.4g}, {time_domain[1]:.4g}]; the model has never seen "
                "such times and the result there is an extrapolation of unknown quality",
                UntestedSettingWarning, stacklevel=4,
            )


def _before_sampling(run: Run, obs: ObservationSet, *, out_times: np.ndarray, out_grids: Sequence[np.ndarray],
                     grid_times: np.ndarray, n_slots: int, draws: int, chains: int, max_abs_zscore: float,
                     max_memory_gb: float, sampler: str) -> None:
    """The up-front checks that need the run and the data (issue 16): units guard, memory
    estimate, times far outside the training range."""
    units = str(run.provenance.get("units") or "field units")
    _check_observation_values(obs, run.ftm.normalizer, max_abs_zscore, units)
    n_grid = int(np.prod([g.size for g in out_grids]))
    estimate = memory_estimate(draws * chains, out_times.size, n_grid, grid_times.size, n_slots,
                               int(np.prod(run.core_shape)), n_points=obs.n_points, sampler=sampler)
    _check_memory(estimate, max_memory_gb, draws=draws, chains=chains, n_out_times=out_times.size, n_grid=n_grid,
                  n_points=obs.n_points)
    _warn_far_times(out_times, obs, run.ftm.time_domain)


def _active_constraints(constraints: Any) -> list[Any]:
    """The constraints with a positive weight (checked to be `Constraint` objects)."""
    if constraints is None:
        return []
    if isinstance(constraints, Constraint) or not isinstance(constraints, (list, tuple)):
        raise bad_input("constraints", "a list of Constraint objects (inference.constraints: Residual, Bounds, "
                        "Dynamics)", type(constraints).__name__)
    for i, c in enumerate(constraints):
        if not isinstance(c, Constraint):
            raise bad_input(f"constraints[{i}]", "a Constraint (Residual, Bounds, Dynamics)", type(c).__name__)
    return [c for c in constraints if float(c.weight) > 0]


def _describe_constraint(c: Any, grid_times: np.ndarray) -> dict[str, Any]:
    if isinstance(c, Dynamics) and grid_times.size >= 2:
        c = c.bind_times(grid_times)
    return c.to_dict()


def _likelihood(likelihood: Any, obs: ObservationSet, normalizer: Any) -> Likelihood:
    """The likelihood object in normalised field units, converted once from `reconstruct`'s argument.

    The name `"poisson"` reads the offset and scale (physical) from `obs.attrs`, where the
    Poisson-like noise of `sample_observations` records them; a `PoissonExcess` object gives
    them in physical units. A count-0 point normalised in float32 may land a rounding step below
    the offset; the observation model's input check allows that (POISSON_COUNT_TOLERANCE).
    """
    if isinstance(likelihood, str) and likelihood == "poisson":  # argument parsing: o, s from the data
        attrs = obs.attrs or {}
        scale = attrs.get("poisson_scale", attrs.get("noise_scale") if attrs.get("noise") == "poisson" else None)
        if "poisson_offset" not in attrs or scale is None:
            raise bad_input("obs.attrs", "poisson_offset and the Poisson scale (physical) for likelihood='poisson'",
                            sorted(attrs))
        likelihood = PoissonExcess(float(attrs["poisson_offset"]), float(scale))
    return as_likelihood(likelihood).normalised(normalizer)


# --- what the run did, for the attrs and `inference.summary.run_summary` (issue 16) -----------


def _noise_source(obs: ObservationSet, sigma: Any, likelihood: Likelihood, conditioned: bool,
                  infer_sigma: bool) -> dict[str, str]:
    """Where the noise level came from (`given` / `per point` / `inferred` / ...) and why."""
    if not conditioned:
        return {"source": "none", "reason": "no observations: prior draws"}
    if not likelihood.has_sigma:
        return {"source": likelihood.name,
                "reason": f"likelihood={likelihood.name!r}: the counts' own variance (obs.attrs)"}
    if infer_sigma:
        why = ("sigma='infer'" if sigma == "infer"
               else "sigma not given and obs.noise_scale unknown (NaN) for every point")
        return {"source": "inferred", "reason": why}
    if sigma is None or sigma == "metadata":
        why = "sigma='metadata'" if sigma == "metadata" else "sigma not given and every point has a noise_scale"
        return {"source": "per point", "reason": f"{why} (obs.noise_scale)"}
    return {"source": "given", "reason": f"sigma={float(sigma):g} given (physical units)"}


def _run_facts(run: Run, obs: ObservationSet, *, sigma: Any, likelihood: Likelihood, conditioned: bool,
               infer_sigma: bool, sigma_y: Any, sigma_norm_draws: Any, padded: PaddedObservations,
               out_times: np.ndarray, grid_times: np.ndarray) -> dict[str, Any]:
    """The attrs entries `noise`, `data`, `time_range` and `observations` (the observation
    set's provenance, e.g. `sdift observe`'s source file and trajectory) of a reconstruction."""
    std = float(run.ftm.normalizer.std)
    noise: dict[str, Any] = _noise_source(obs, sigma, likelihood, conditioned, infer_sigma)
    if noise["source"] == "inferred" and sigma_norm_draws is not None:
        noise["std"] = float(np.mean(sigma_norm_draws)) * std  # posterior mean of sigma
    elif noise["source"] == "per point":
        per_point = np.asarray(padded.noise_scale)[np.asarray(padded.mask)] * std
        noise.update(std=float(np.median(per_point)), std_min=float(per_point.min()), std_max=float(per_point.max()))
    elif noise["source"] == "given":
        noise["std"] = float(sigma_y) * std
    if noise["source"] in ("given", "per point"):
        noise["includes_representation_error"] = True
    dropped = obs.attrs.get("dropped", {})
    n_dropped = (sum(int(v) for v in dropped.values()) if isinstance(dropped, Mapping) else 0) \
        + int(obs.attrs.get("dropped_missing", 0) or 0)
    with_data = int(np.asarray(padded.mask).any(axis=1).sum()) if conditioned else 0
    t0, t1 = run.ftm.time_domain
    all_times = np.concatenate([out_times, obs.time])
    beyond = spans_outside(all_times, (t0, t1))
    provenance = {k: obs.attrs[k] for k in ("source", "trajectory", "trajectory_split", "source_simulator",
                                            "source_seed", "seed") if k in obs.attrs}
    return {
        "noise": noise,
        "data": {"points_used": int(obs.n_points), "points_dropped_before": n_dropped,
                 "frames": int(grid_times.size), "frames_with_data": with_data,
                 "frames_without_data": int(grid_times.size) - with_data},
        "time_range": {"output": [float(out_times.min()), float(out_times.max())],
                       "observations": [float(obs.time.min()), float(obs.time.max())] if obs.n_points else None,
                       "training": [float(t0), float(t1)], "spans_outside_training": beyond,
                       "extrapolated": bool(beyond > 0)},
        "observations": provenance,
    }


# --- the output's own checks (issue 16; the checks themselves are in `inference.self_checks`) ---


def _self_check(run: Run, field_norm: Any, core_draws: np.ndarray, design: np.ndarray,
                padded: PaddedObservations, *, sigma_y: Any, sigma_norm_draws: Any, likelihood: Likelihood,
                conditioned: bool, noise: Mapping[str, Any], checks: str,
                basis_error_known: bool = True) -> list[dict[str, Any]]:
    """Run `inference.self_checks.run_checks` on a decoded reconstruction and `enforce` the
    result (`checks="raise"`: a `NumericalError`; `"warn"`: a `SelfCheckWarning`); returns the
    results for the attrs. The residual uses the noise std the sampler used (normalised, with
    the representation error where it was added; `basis_error_known`: whether the run recorded
    that error); it is left out without a noise std (Poisson)."""
    normalizer = run.ftm.normalizer
    mask = np.asarray(padded.mask)
    scale: Any = None
    if conditioned and likelihood.has_sigma:
        if sigma_y == "metadata":
            scale = np.asarray(padded.noise_scale)[mask]
        elif sigma_norm_draws is not None:
            scale = float(np.mean(sigma_norm_draws))
        elif sigma_y is not None:
            scale = float(sigma_y)
    predicted = observed = None
    if scale is not None:
        predicted = self_checks.predicted_at_observations(core_draws, np.asarray(design), mask)
        observed = np.asarray(padded.values)[mask]
    units = str(run.provenance.get("units") or "field units")
    source = noise.get("source", "")
    if "std" in noise:
        source = f"{source}, {'median ' if source == 'per point' else ''}{noise['std']:.4g} {units}"
    results = self_checks.run_checks(
        field_norm=np.asarray(field_norm), train_range=run.training_range, mean=normalizer.mean, std=normalizer.std,
        units=units, predicted=predicted, observed=observed, noise=scale, noise_source=source,
        robust=likelihood.robust, basis_error_known=basis_error_known or sigma_norm_draws is not None)
    self_checks.enforce(results, checks, stacklevel=3)
    return results
