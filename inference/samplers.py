"""The samplers of `reconstruct`, as small objects chosen once (`select_sampler`) from the `sampler=`
name: `ConjugateGP` (the exact FTM + GP posterior, `models.gp_prior`), `Guided` (the guided diffusion
samplers, `inference.guided`, with σ of Gaussian noise inferred before sampling where asked) and
`PriorOnly` (no observations: the prior's draws, no guidance). Each reads the prepared `Problem`
and returns `SamplerDraws`. `sampler_config` says which `GuidedConfig` a name stands for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray
import numpy as np

from models.gp_prior import sample_conjugate
from models.likelihoods import Gaussian, as_likelihood
from models.noise_models import Inferred
from sdift_prob.errors import InputError, bad_input

from .constraints import Constraint, Dynamics, FieldDecoder
from .guidance import Fisher, MomentMatching
from .guided import GuidedConfig, reference_message_kernel, sample_posterior
from .problem import Problem, _output_grids
from .run import Run
from .sigma_marginal import sigma_posterior

SAMPLERS = ("mmps", "mpdps", "dps", "gp")
DEFAULT_SAMPLER = "mmps"


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
    if config.method not in ("dps", sampler):  # "dps" is the default: taken as "not chosen"
        raise bad_input("config.method", f"the default or {sampler!r}: it contradicts sampler={sampler!r} (pass "
                        "the sampler you mean, or leave config.method at its default)", config.method)
    return dataclasses.replace(config, method=sampler)


def _active_constraints(constraints: Any) -> list[Any]:
    """The constraints with a positive weight (checked to be `Constraint` objects)."""
    if constraints is None:
        return []
    if isinstance(constraints, Constraint) or not isinstance(constraints, (list, tuple)):
        raise bad_input("constraints", "a list of Constraint objects (inference.constraints: Residual, Bounds, "
                        "Monotone, Dynamics)", type(constraints).__name__)
    for i, c in enumerate(constraints):
        if not isinstance(c, Constraint):
            raise bad_input(f"constraints[{i}]", "a Constraint (Residual, Bounds, Monotone, Dynamics)", type(c).__name__)
    return [c for c in constraints if float(c.weight) > 0]


def _describe_constraint(c: Any, grid_times: np.ndarray) -> dict[str, Any]:
    if isinstance(c, Dynamics) and grid_times.size >= 2:
        c = c.bind_times(grid_times)
    return c.to_dict()



class SamplerDraws(NamedTuple):
    """What a sampler hands to the report: `cores (n, M, R..)` (FTM units); `sigma_norm (n,)`, the σ
    each draw ran at (normalised; None when fixed); `sigma_noise (n,)`, σ as reported (the noise
    alone when the representation error was added apart; else `sigma_norm`); `sigma_y`, the config's
    level as used; `info` (sampler diagnostics per draw); `settings` (for the attrs)."""

    cores: np.ndarray
    sigma_norm: np.ndarray | None
    sigma_noise: np.ndarray | None
    sigma_y: Any
    info: dict[str, Any]
    settings: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ConjugateGP:
    """The exact posterior of the FTM + GP temporal prior under Gaussian noise (`models.gp_prior`)."""

    name: str = "gp"

    def check(self, problem: Problem) -> None:
        if isinstance(problem.noise, Inferred):
            if problem.noise.reason == "sigma='infer'":
                raise bad_input("sigma", "a noise level or 'metadata' for the gp sampler", "infer")
            raise InputError("sigma: the gp sampler needs a noise level: pass sigma (physical units) or observations "
                             "whose noise_scale is known")

    def sample(self, key: PRNGKeyArray, run: Run, problem: Problem, n: int, **_: Any) -> SamplerDraws:
        if not problem.likelihood.conjugate:
            raise bad_input("likelihood", "'gaussian' for the gp sampler (its posterior is exact only there)",
                            problem.likelihood.name)
        sigma = problem.sigma_y if problem.conditioned else 1.0
        cores = np.asarray(sample_conjugate(key, run.gp_params, problem.design, problem.padded, sigma,
                                            problem.times_norm, n))
        settings = {"gp_params": {"lengthscale": float(run.gp_params.kernel.lengthscale),
                                  "kernel": run.gp_params.kernel.name}}
        return SamplerDraws(cores, None, None, problem.sigma_y, {}, settings)


def _sigma_before(key: PRNGKeyArray, run: Run, problem: Problem, n: int, prior_scale: float) -> tuple[Any, ...]:
    """Gaussian σ drawn before sampling from the marginal likelihood of the Gaussian FTM + GP
    model (`inference.sigma_marginal`): `(noise draws, effective σ draws, settings entry)`."""
    post = sigma_posterior(jax.random.fold_in(key, 2), problem.design, problem.padded.values, problem.mask,
                           problem.time_gram(run), *run.core_moments, representation_error=problem.rep_error,
                           prior_scale=prior_scale)
    noise_draws = post.draw(jax.random.fold_in(key, 3), n)
    entry = {"method": "marginal likelihood of the Gaussian FTM + GP model, before sampling",
             "points_used": post.n_used, "points": post.n_points,
             "interval90": (post.quantile([0.05, 0.95]) * run.ftm.normalizer.std).tolist()}
    return noise_draws, post.effective(noise_draws), entry


@dataclasses.dataclass(frozen=True)
class Guided:
    """The guided diffusion samplers (`inference.guided.sample_posterior`) with `config` (the
    sampler name's, `sampler_config`); `constraints` guide every frame; `constraint_grids` is the
    grid they see the frames on."""

    name: str
    config: GuidedConfig
    constraints: tuple[Any, ...] = ()
    constraint_grids: Mapping[str, Any] | None = None

    def check(self, problem: Problem) -> None:
        pass

    def problem_config(self, problem: Problem, sigma_y: Any) -> GuidedConfig:
        """The config with the problem's likelihood and noise level (these fields are the
        arguments'; a config that set them otherwise was refused up front)."""
        infer = problem.infer_sigma and not problem.sigma_before
        return dataclasses.replace(self.config, likelihood=problem.likelihood, sigma_y=sigma_y, infer_sigma=infer,
                                   likelihood_params=())

    def sample(self, key: PRNGKeyArray, run: Run, problem: Problem, n: int, *, chunk_size: int | None = None,
               progress: bool = False) -> SamplerDraws:
        settings: dict[str, Any] = {}
        sigma_y, noise_draws, sigma_eff = problem.sigma_y, None, None
        if problem.sigma_before:
            scale = self.config.sigma_prior_scale
            if isinstance(problem.noise, Inferred) and problem.noise.prior_scale is not None:
                scale = problem.noise.prior_scale
            noise_draws, sigma_eff, settings["sigma_inference"] = _sigma_before(key, run, problem, n, scale)
            sigma_y = float(np.median(sigma_eff))  # the config's level; each draw runs at its own
        cfg = self.problem_config(problem, sigma_y)
        cores, info = self._run(key, run, problem, cfg, n, chunk_size, progress, sigma_eff)
        sigma_norm = sigma_eff if sigma_eff is not None else np.asarray(info["sigma_y"]) if cfg.infer_sigma else None
        settings["guided"] = cfg.to_dict()
        if self.constraints:
            settings["constraints"] = {"terms": [_describe_constraint(c, problem.grid_times) for c in self.constraints],
                                       "grid": self._decoder(run).to_dict()}
        sigma_noise = sigma_norm if noise_draws is None else noise_draws
        return SamplerDraws(cores, sigma_norm, sigma_noise, sigma_y, info, settings)

    def _decoder(self, run: Run) -> FieldDecoder:
        grids = (_output_grids(run, self.constraint_grids, 1) if self.constraint_grids is not None
                 else tuple(run.ftm.grids))
        return FieldDecoder.from_ftm(run.ftm.model, grids, run.ftm.normalizer)

    def _run(self, key: PRNGKeyArray, run: Run, problem: Problem, cfg: GuidedConfig, n: int, chunk_size: Any,
             progress: bool, sigma_draws: Any) -> tuple[np.ndarray, dict[str, Any]]:
        prior = run.prior
        anchored = isinstance(cfg.guidance, MomentMatching) and cfg.guidance.anchors > 1
        return sample_posterior(
            key, prior.denoise, problem.design, problem.padded, core_mean=float(prior.core_mean),
            core_std=float(prior.core_std), times_norm=problem.times_norm,
            noise_chol=prior.noise_cholesky(jnp.asarray(problem.times_norm)), config=cfg, num_draws=n,
            core_shape=run.core_shape, chunk_size=chunk_size, progress=progress,
            prior_spectrum=run.prior_spectrum if anchored else None,
            constraints=list(self.constraints) or None, decoder=self._decoder(run) if self.constraints else None,
            sigma_draws=sigma_draws,
        )


@dataclasses.dataclass(frozen=True)
class PriorOnly(Guided):
    """No observations: the prior's draws. Without constraints no guidance at all (ζ = 0, the
    cheap rule); with constraints, the constraints alone guide (the padding has no weight)."""

    def problem_config(self, problem: Problem, sigma_y: Any) -> GuidedConfig:
        if self.constraints:
            return dataclasses.replace(self.config, method="dps", likelihood=Gaussian(), sigma_y=1.0,
                                       infer_sigma=False, likelihood_params=())
        return dataclasses.replace(self.config, method="dps", guidance=Fisher(), through_denoiser=False,
                                   corrector=None, zeta=0.0, sigma_y=1.0, infer_sigma=False)


Sampler = ConjugateGP | Guided | PriorOnly


def check_config_arguments(config: GuidedConfig | None, *, likelihood: Any, sigma: Any, message_kernel: str) -> None:
    """A config field that an argument of `reconstruct` also sets must be left at its default or
    agree: the argument never overrides it silently."""
    if config is None:
        return
    if config.sigma_y is not None:
        raise InputError(f"config.sigma_y: set from sigma= (physical units; got sigma={sigma!r}); leave "
                         f"config.sigma_y at None instead of {config.sigma_y!r}")
    if config.infer_sigma and not (sigma == "infer" or isinstance(sigma, Inferred)):
        raise InputError(f"config.infer_sigma: set from sigma= (sigma='infer' infers it); config.infer_sigma=True "
                         f"contradicts sigma={sigma!r}")
    if config.likelihood != Gaussian():
        given = likelihood if not isinstance(likelihood, str) or likelihood == "poisson" else as_likelihood(likelihood)
        if given != config.likelihood:
            raise InputError(f"config.likelihood: set from likelihood= ; config.likelihood={config.likelihood.name!r} "
                             f"contradicts likelihood={getattr(given, 'name', given)!r} (pass it as likelihood=)")
    if message_kernel == "fitted" and config.message_kernel != reference_message_kernel():
        raise InputError("message_kernel: 'fitted' replaces config.message_kernel, which was set to another kernel; "
                         "pass one or the other")


def select_sampler(name: str, base: GuidedConfig | None, run: Run, problem: Problem, *, message_kernel: str,
                   constraints: Sequence[Any], constraint_grids: Mapping[str, Any] | None) -> Sampler:
    """The sampler object for `name`, chosen once from the prepared problem."""
    if name == "gp":
        return ConjugateGP()
    if message_kernel == "fitted":
        base = dataclasses.replace(base, message_kernel=run.fitted_message_kernel)
    kind = Guided if problem.conditioned else PriorOnly
    return kind(name, base, tuple(constraints), constraint_grids)
