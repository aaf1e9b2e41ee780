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

from sdift_prob import __version__
from sdift_prob.data.observations import ObservationSet, PaddedObservations
from sdift_prob.errors import InputError, bad_input
from sdift_prob.ftm import FTMFit, decode_grid, design_rows, load_run
from sdift_prob.run import read_manifest

from . import report
from .guidance import Fisher, MomentMatching
from .guided import GuidedConfig, sample_posterior, union_times

SAMPLERS = ("mmps", "mpdps", "dps", "gp")
DEFAULT_SAMPLER = "mmps"
MAX_NORMALISED_VALUE = 1e4  # |y - mean| / std beyond which observations cannot be of this field


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
        from models.gp_prior import GPPriorParams

        return GPPriorParams.from_training_cores(np.asarray(self.ftm.cores), self.ftm.normalised_times())


    @functools.cached_property
    def representation_error(self) -> tuple[float, str]:
        """The FTM's own error at a point (std, normalised field units) and where it comes from.

        The basis cannot represent a field exactly; data assimilation calls this the
        representativeness error and adds it to the observation error, which keeps a posterior
        from over-fitting precise data through the basis. It is the RMSE on held-out entries at
        fit time, recorded with the run by `fit_ftm` since this version (its `FTMFit.metadata`); for older runs
        the held-out VRMSE stands in for it (exact when every training trajectory has the
        training set's variance; larger otherwise, i.e. on the safe side).
        """
        recorded = self.provenance.get("representation_error") if isinstance(self.provenance, dict) else None
        if isinstance(recorded, dict) and recorded.get("std") is not None:
            return float(recorded["std"]), str(recorded.get("source", "recorded with the run"))
        fit = self.provenance.get("fit", {}) if isinstance(self.provenance, dict) else {}
        for key, what in (("holdout_rmse", "RMSE on held-out entries at fit time"),
                          ("train_rmse", "RMSE on the training entries at fit time (no held-out entries)")):
            if fit.get(key) is not None:
                return float(fit[key]), what
        for key in ("holdout_vrmse", "full_vrmse"):
            if fit.get(key) is not None:
                return float(fit[key]), f"{key} at fit time (per-trajectory variance taken as the training variance)"
        return 0.0, "unknown: the run records no fit error, none added"

    @functools.cached_property
    def fitted_message_kernel(self) -> Any:
        """MPDPS message kernel fitted to the training cores: Matérn-1/2 over normalised time,
        lengthscale by marginal likelihood on the standardised cores (`sdift_prob.gp.fit_lengthscale`).

        The reference kernel `exp(−Δt²)` assumes every frame is strongly correlated with every
        other one; on fields that decorrelate between time stamps (fluid2d: lag-1 core
        correlation ≈ 0.5) its leave-one-out messages then carry wrong evidence. The Matérn-1/2
        (Markov) kernel fitted to the training cores gives each frame's LOO prediction from its
        neighbours only, with weights bounded by 1/2, at the correlation the data show."""
        from sdift_prob.gp import TemporalKernel, fit_lengthscale

        cores = np.asarray(self.ftm.cores, dtype=np.float64)
        z = (cores - cores.mean(axis=(0, 1))) / cores.std(axis=(0, 1))
        return fit_lengthscale(z, self.ftm.normalised_times(), TemporalKernel("matern12", 0.1, 1.0),
                               fit_variance=False)


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
        from sdift_prob.gpsd import load_prior

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


def reconstruct(
    run: Run | str | os.PathLike,
    obs: ObservationSet,
    *,
    key: PRNGKeyArray,
    sampler: str = DEFAULT_SAMPLER,
    draws: int = 8,
    chains: int = 1,
    times: Sequence[float] | None = None,
    grids: Mapping[str, Any] | None = None,
    resolution: int = 1,
    likelihood: str = "gaussian",
    sigma: float | str | None = None,
    config: GuidedConfig | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
    message_kernel: str = "reference",
    representation_error: float | str | None = "auto",
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
    - `draws`, `chains`: draws per chain and independent chains.
    - `times`: physical output times (default: the training time stamps). Any times: the
      sampler's grid is the union of these and the observation times.
    - `grids`: mapping space dim -> physical coordinates of the output grid (default: training
      grid); `resolution`: integer refinement factor per axis.
    - `likelihood`: `"gaussian" | "laplace" | "student_t" | "poisson"`.
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

    **Returns:** `az.InferenceData` (posterior `cores`, `field`, `sigma`; posterior_predictive,
    observed_data, log_likelihood `y`; sample_stats) — see `inference.report`.
    """
    _check_before_work(key, sampler, config)
    if not isinstance(run, Run):
        run = open_run(run, require_prior=sampler != "gp")
    if sampler not in SAMPLERS:
        raise bad_input("sampler", f"one of {SAMPLERS}", sampler)
    base = None if sampler == "gp" else sampler_config(sampler, config)  # a contradiction fails before any work
    if not isinstance(obs, ObservationSet):
        raise bad_input("obs", "an ObservationSet", type(obs).__name__)
    if tuple(obs.space_dims) != run.space_dims:
        raise bad_input("obs.space_dims", f"the run's space dims {run.space_dims}", tuple(obs.space_dims))
    for name, v in (("draws", draws), ("chains", chains)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise bad_input(name, "an integer >= 1", v)
    if message_kernel not in ("reference", "fitted"):
        raise bad_input("message_kernel", "'reference' or 'fitted'", message_kernel)
    if sampler != "gp" and run.prior is None:
        raise InputError(f"run: no trained prior in {run.path}; run `sdift train-prior` or use sampler='gp'")

    ftm = run.ftm
    normalizer = ftm.normalizer
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
    if conditioned and not infer_sigma and likelihood != "poisson" and sigma_y != "metadata":
        sigma_y = math.hypot(sigma_y, rep_error)

    # The padded observations in normalised field units; a frame without points is all-masked.
    if conditioned:
        padded_phys = obs.to_padded(grid_times)
    else:
        K = len(run.space_dims)
        padded_phys = PaddedObservations(
            times=grid_times, values=np.zeros((grid_times.size, 1)), coords=np.zeros((grid_times.size, 1, K)),
            noise_scale=np.ones((grid_times.size, 1)), mask=np.zeros((grid_times.size, 1), bool),
        )
    M, P = padded_phys.mask.shape
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
                                            rep_error if sigma_y == "metadata" else 0.0), 1.0),
        mask=mask,
    )
    # One range check for every sampler, before any work: values that far from the training data
    # are a units mistake, and would overflow float32 inside the samplers.
    far = np.abs(np.asarray(padded.values))[mask]
    if far.size and far.max() > MAX_NORMALISED_VALUE:
        raise bad_input("obs.value", f"values within {MAX_NORMALISED_VALUE:g} training standard deviations "
                        f"({normalizer.std:.4g}) of the training mean ({normalizer.mean:.4g}); check the units",
                        f"{int((far > MAX_NORMALISED_VALUE).sum())} values beyond, e.g. "
                        f"{float(np.asarray(obs.value)[np.argmax(np.abs(obs.value - normalizer.mean))]):.4g}")
    design = np.asarray(design_rows(ftm.model, coords.reshape(-1, coords.shape[-1]))).reshape(M, P, -1)

    like_params: dict[str, float] = {}
    if likelihood == "poisson":
        attrs = obs.attrs or {}
        # The Poisson-like noise of `sample_observations` records its offset and scale (physical).
        scale = attrs.get("poisson_scale", attrs.get("noise_scale") if attrs.get("noise") == "poisson" else None)
        if "poisson_offset" not in attrs or scale is None:
            raise bad_input("obs.attrs", "poisson_offset and the Poisson scale (physical) for likelihood='poisson'",
                            sorted(attrs))
        # A count-0 point normalised in float32 may land a rounding step below the offset; the
        # observation model's input check allows that (POISSON_COUNT_TOLERANCE).
        like_params = {
            "poisson_offset": float(normalizer.forward(float(attrs["poisson_offset"]))),
            "poisson_scale": float(scale) / normalizer.std,
        }
        sigma_y, infer_sigma = None, False

    n_total = int(draws) * int(chains)
    started = time.perf_counter()
    info: dict[str, np.ndarray] = {}
    settings: dict[str, Any] = {"sampler": sampler}
    if sampler == "gp":
        if likelihood != "gaussian":
            raise bad_input("likelihood", "'gaussian' for the gp sampler (its posterior is exact only there)",
                            likelihood)
        from models.gp_prior import sample_conjugate

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
        # Without data the draws are the prior's: no guidance at all (ζ = 0, the cheap rule).
        cfg = dataclasses.replace(
            base, likelihood=likelihood, sigma_y=sigma_y, infer_sigma=infer_sigma,
            likelihood_params=tuple(like_params.items()),
        ) if conditioned else dataclasses.replace(base, method="dps", guidance=Fisher(), through_denoiser=False,
                                                  corrector=None, zeta=0.0, sigma_y=1.0, infer_sigma=False)
        chol = prior.noise_cholesky(jnp.asarray(times_norm))
        core_draws, info = sample_posterior(
            key, prior.denoise, design, padded, core_mean=float(prior.core_mean), core_std=float(prior.core_std),
            times_norm=times_norm, noise_chol=chol, config=cfg, num_draws=n_total, core_shape=run.core_shape,
            chunk_size=chunk_size, progress=progress,
        )
        sigma_norm_draws = np.asarray(info["sigma_y"]) if infer_sigma else None
        settings["guided"] = cfg.to_dict()
    elapsed = time.perf_counter() - started

    core_draws = np.asarray(core_draws, dtype=np.float32).reshape(chains, draws, M, *run.core_shape)
    if sigma_norm_draws is not None:
        sigma_norm_draws = np.asarray(sigma_norm_draws).reshape(chains, draws)
    field_norm = decode_grid(ftm.model, jnp.asarray(core_draws[:, :, out_idx]), out_grids)
    field_draws = np.asarray(normalizer.inverse(np.asarray(field_norm)), dtype=np.float32)

    if conditioned:
        obs_order = report.observation_order(obs, grid_times)
        model_sigma = sigma_y if sigma_norm_draws is None else None
        k_pred = jax.random.fold_in(key, 1)
        common = dict(likelihood=likelihood, sigma_draws=sigma_norm_draws, sigma=model_sigma,
                      normalizer=normalizer, batch_size=chunk_size, **like_params)
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
        "likelihood": likelihood,
        "settings": settings,
        "sigma_input": sigma if isinstance(sigma, (str, type(None))) else float(sigma),
        "representation_error": {
            "std": rep_error * float(normalizer.std),
            "source": rep_source,
            "applied": ("added to the given noise" if conditioned and not infer_sigma and likelihood != "poisson"
                        else "absorbed by the inferred sigma" if infer_sigma
                        else "not used (poisson likelihood)" if likelihood == "poisson" else "no observations"),
        },
        "seed_key": np.asarray(jax.random.key_data(key)).tolist(),
        "run_dir": str(run.path) if run.path is not None else "",
        "sdift_prob_version": __version__,
        "wall_time_s": elapsed,
        "units": units,
    }
    field_coords = dict(zip(run.space_dims, out_grids))
    idata = report.to_inference_data(
        core_draws=core_draws, field_draws=field_draws, field_times=out_times, field_coords=field_coords,
        space_dims=run.space_dims, obs=obs, y_rep=y_rep, log_lik=log_lik,
        sigma_draws=None if sigma_norm_draws is None else sigma_norm_draws * normalizer.std,
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
    from .calibrate import calibrate

    base = sampler_config(sampler, config)

    def sample_predictive(k: PRNGKeyArray, obs_fit: ObservationSet, obs_held: ObservationSet, zeta: float):
        held_times = np.unique(obs_held.time)
        idata = reconstruct(run, obs_fit, key=k, sampler=sampler, draws=draws, times=held_times,
                            sigma=sigma, config=dataclasses.replace(base, zeta=float(zeta)))
        cores = idata.posterior["cores"].values.reshape(draws, -1, *run.core_shape)  # (S, M, R..)
        grid = idata.posterior["cores"].time_grid.values
        index = np.array([int(np.argmin(np.abs(grid - t))) for t in obs_held.time])
        rows = np.asarray(design_rows(run.ftm.model, obs_held.coords))  # (N, D)
        flat = cores.reshape(draws, cores.shape[1], -1)[:, index, :]  # (S, N, D)
        pred = run.ftm.normalizer.inverse(np.einsum("snd,nd->sn", flat, rows))
        if "sigma" in idata.posterior:
            noise_sd = idata.posterior["sigma"].values.reshape(draws, 1)
        elif isinstance(sigma, (int, float)):
            noise_sd = np.full((draws, 1), float(sigma))
        else:
            noise_sd = np.broadcast_to(np.nan_to_num(obs_held.noise_scale), (draws, obs_held.n_points))
        if "sigma" not in idata.posterior:  # a given noise level: the model's error adds the FTM's own
            noise_sd = np.hypot(noise_sd, float(report.posterior_attrs(idata)["representation_error"]["std"]))
        eps = np.asarray(jax.random.normal(jax.random.fold_in(k, 7), pred.shape))
        return pred + noise_sd * eps

    return calibrate(key, sample_predictive, obs, holdout_fraction=holdout_fraction, zetas=tuple(zetas),
                     levels=tuple(levels))


# --- checks before any work (issue 16), kept apart from `reconstruct`'s body, which calls
# `_check_before_work` first ---------------------------------------------------------------------


def _check_before_work(key: Any, sampler: str, config: Any) -> None:
    """What can be checked without the run or the data: a typed PRNG key (an int seed gives
    the usual one-line `InputError`, not a TypeError from inside JAX), and a loud
    `UntestedSettingWarning` for fewer sampler steps than tested (`gp` takes no steps)."""
    from sdift_prob.errors import warn_untested_steps

    report._check_key(key)
    if sampler != "gp" and isinstance(config, GuidedConfig):
        warn_untested_steps(config.num_steps, "num_steps", stacklevel=3)
