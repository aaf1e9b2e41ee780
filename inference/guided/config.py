"""Settings of the guided sampler: `GuidedConfig` and its field helpers.

`GuidedConfig` holds every static choice (sampler, guidance rule, likelihood, noise level, EDM
schedule); changing one recompiles. `reference_message_kernel` is the default MPDPS message
kernel. The `Denoiser` type is the prior's denoiser `denoise(x (M, R..), sigma, t (M,)) -> x0`
in normalised core units.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import numpy as np
from jaxtyping import Array

from models.likelihoods import LIKELIHOODS, Likelihood, as_likelihood
from sdift_prob.errors import bad_input
from sdift_prob.gp import TemporalKernel
from sdift_prob.gpsd.edm import EDMConfig
from sdift_prob.validation import check_count

from ..corrector import LangevinCorrector
from ..guidance import Fisher, GuidanceRule, MomentMatching, Reference, as_guidance_rule
from ..noise import DEFAULT_PRIOR_SCALE


METHODS = ("mpdps", "dps")
ZETA_SCHEDULES = ("constant", "harmonic")
_LIKELIHOOD_PARAMS = {"df", "poisson_offset", "poisson_scale"}

Denoiser = Callable[[Array, Array, Array], Array]


def reference_message_kernel() -> TemporalKernel:
    """The public code's message kernel `exp(−Δt²)` on normalised time (RBF, ℓ = 1/√2, variance 1)."""
    return TemporalKernel("rbf", lengthscale=1.0 / math.sqrt(2.0), variance=1.0)


def _freeze_params(params: Any) -> tuple[tuple[str, float], ...]:
    if params is None:
        return ()
    items = params.items() if isinstance(params, Mapping) else params
    try:
        frozen = tuple(sorted((str(k), float(v)) for k, v in items))
    except (TypeError, ValueError) as exc:
        raise bad_input("likelihood_params", "a mapping of parameter name -> number", params) from exc
    return frozen


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


class GuidedConfig(eqx.Module):
    """Settings of the guided sampler (all static: changing one recompiles).

    **Fields:**

    - `method`: `"dps"` (default: each frame's own data; with `"mmps"` guidance the prior's
      coupling carries them to the other frames) or `"mpdps"` (adds the paper's GP messages
      between frames, for the `"fisher"`/`"reference"` rules; on top of `"mmps"` they count the
      data twice — kept for ablations).
    - `num_steps`: Heun steps over the Karras schedule of `edm` (last step Euler).
    - `zeta`: guidance strength ζ (1 = the conjugate update with the `"mmps"` and `"fisher"` rules).
    - `zeta_schedule`: `"constant"` (ζ) or `"harmonic"` (ζ/(i+1) at step i, the public code's).
    - `lam`: message weight λ of MPDPS (reference 0.4).
    - `message_kernel`: GP kernel over normalised time for the leave-one-out messages
      (default: the public code's `exp(−Δt²)`); `message_jitter`: its relative jitter (1e-3).
    - `guidance`: a rule from `inference.guidance` — `MomentMatching(cg_steps)` (default, alias
      `"mmps"`), `Fisher()` (`"fisher"`) or `Reference()` (`"reference"`); see `inference.guided.estimates`.
    - `through_denoiser`: full DPS: differentiate the likelihood through the denoiser
      (`jax.vjp`, about 3x the cost per step); `"fisher"` mode only.
    - `churn`: EDM's S_churn (0: the deterministic probability-flow sampler).
    - `corrector`: None, or a `LangevinCorrector` run after every predictor step but the last
      (`inference.corrector`; guided rules `"mmps"`/`"fisher"` only).
    - `likelihood`: a `models.likelihoods.Likelihood` (`Gaussian()`, `Laplace()`, `StudentT(df)`,
      `PoissonExcess(offset, scale)`), or its name `"gaussian" | "laplace" | "student_t" |
      "poisson"`, converted once (`as_likelihood`) with `likelihood_params`: the parameters of a
      name (`df`, `poisson_offset`, `poisson_scale`), a mapping or pairs. The field holds the
      object; `likelihood_params` is kept as given (or the object's non-default parameters) for
      `to_dict`.
    - `sigma_y`: noise level in normalised field units: a positive number (fixed, or the start
      value when `infer_sigma`), `"metadata"` (per point, from `padded.noise_scale`), or `None`
      (sampling then needs `infer_sigma`, which starts at the standard deviation of the observed
      values, or `"poisson"`, which has no σ).
    - `infer_sigma`: update σ_y inside the sampler from step `ceil(sigma_burn_in · num_steps)`
      on: with `"mmps"` guidance and Gaussian noise from its marginal likelihood given the
      diffusion state (`inference.noise.update_sigma_tweedie`, no feedback through the guided
      estimate), otherwise from the residuals of the step's clean estimate
      (`inference.noise.update_sigma`); `sigma_prior_scale`, `mh_steps`, `mh_step_size` are
      their settings.
    - `edm`: `EDMConfig` giving `sigma_min`, `sigma_max`, `rho`, `sigma_data`, `S_min`,
      `S_max`, `S_noise` (its own `num_steps`/`S_churn` are replaced by the fields here).
    """

    method: str = eqx.field(static=True, default="dps")
    num_steps: int = eqx.field(static=True, default=20)
    zeta: float = eqx.field(static=True, default=1.0)
    zeta_schedule: str = eqx.field(static=True, default="constant")
    lam: float = eqx.field(static=True, default=0.4)
    message_kernel: TemporalKernel = eqx.field(static=True, default_factory=reference_message_kernel)
    message_jitter: float = eqx.field(static=True, default=1e-3)
    guidance: GuidanceRule = eqx.field(static=True, default_factory=MomentMatching, converter=as_guidance_rule)
    through_denoiser: bool = eqx.field(static=True, default=False)
    churn: float = eqx.field(static=True, default=0.0)
    corrector: LangevinCorrector | None = eqx.field(static=True, default=None)
    likelihood: Likelihood = eqx.field(static=True, default="gaussian")
    likelihood_params: tuple[tuple[str, float], ...] = eqx.field(static=True, default=(), converter=_freeze_params)
    sigma_y: float | str | None = eqx.field(static=True, default=None)
    infer_sigma: bool = eqx.field(static=True, default=False)
    sigma_burn_in: float = eqx.field(static=True, default=0.5)
    sigma_prior_scale: float = eqx.field(static=True, default=DEFAULT_PRIOR_SCALE)
    mh_steps: int = eqx.field(static=True, default=20)
    mh_step_size: float = eqx.field(static=True, default=0.3)
    edm: EDMConfig = eqx.field(static=True, default_factory=EDMConfig)

    def __post_init__(self) -> None:
        # The likelihood is built once here from a name and its parameters (converters run after).
        params = dict(_freeze_params(self.likelihood_params))
        unknown = set(params) - _LIKELIHOOD_PARAMS
        if unknown:
            raise bad_input("likelihood_params", f"only keys from {sorted(_LIKELIHOOD_PARAMS)}", sorted(unknown))
        if isinstance(self.likelihood, Likelihood):
            lik = self.likelihood
            own = lik.params()
            clash = {k: v for k, v in params.items() if k in own and own[k] != v}
            if clash:
                raise bad_input("likelihood_params", f"empty or the likelihood's own parameters {own}", clash)
            if not params:
                self.likelihood_params = tuple(sorted(lik.explicit_params().items()))
        else:
            self.likelihood = as_likelihood(self.likelihood, **params)

    def __check_init__(self) -> None:
        def choice(name: str, options: tuple[str, ...]) -> None:
            if getattr(self, name) not in options:
                raise bad_input(name, f"one of {options}", getattr(self, name))

        def number(name: str, lo: float, strict: bool, hi: float = math.inf) -> None:
            v = getattr(self, name)
            ok = _is_number(v) and math.isfinite(v) and (v > lo if strict else v >= lo) and v <= hi
            if not ok:
                rel = ">" if strict else ">="
                raise bad_input(name, f"a finite number {rel} {lo}" + (f" and <= {hi}" if hi < math.inf else ""), v)

        choice("method", METHODS)
        choice("zeta_schedule", ZETA_SCHEDULES)
        if not isinstance(self.likelihood, Likelihood):
            raise bad_input("likelihood", f"a models.likelihoods.Likelihood or one of {LIKELIHOODS}", self.likelihood)
        for name in ("num_steps", "mh_steps"):
            check_count(getattr(self, name), name)
        number("zeta", 0.0, strict=False)
        number("lam", 0.0, strict=False)
        number("message_jitter", 0.0, strict=False)
        number("churn", 0.0, strict=False)
        number("sigma_burn_in", 0.0, strict=False, hi=1.0)
        number("sigma_prior_scale", 0.0, strict=True)
        number("mh_step_size", 0.0, strict=True)
        if not isinstance(self.message_kernel, TemporalKernel):
            raise bad_input("message_kernel", "a sdift_prob.gp.TemporalKernel", type(self.message_kernel).__name__)
        if self.corrector is not None and not isinstance(self.corrector, LangevinCorrector):
            raise bad_input("corrector", "None or an inference.corrector.LangevinCorrector",
                            type(self.corrector).__name__)
        if self.corrector is not None and isinstance(self.guidance, Reference):
            raise bad_input("corrector", "None with guidance='reference' (its guidance is not a posterior "
                            "denoiser, so there is no guided score to correct with)", self.corrector)
        if not isinstance(self.edm, EDMConfig):
            raise bad_input("edm", "a sdift_prob.gpsd.edm.EDMConfig", type(self.edm).__name__)
        if not isinstance(self.through_denoiser, bool) or not isinstance(self.infer_sigma, bool):
            raise bad_input("through_denoiser/infer_sigma", "booleans", (self.through_denoiser, self.infer_sigma))
        if self.through_denoiser and not isinstance(self.guidance, Fisher):
            raise bad_input("through_denoiser", f"False with guidance={self.guidance.name!r} (only the isotropic "
                            "'fisher' rule is pulled back through the denoiser; 'mmps' uses the Jacobian itself)", True)
        s = self.sigma_y
        if not self.likelihood.has_sigma:
            if s is not None or self.infer_sigma:
                raise bad_input("sigma_y", f"None and infer_sigma=False for likelihood={self.likelihood.name!r} (it "
                                "has no noise scale sigma)", s if s is not None else "infer_sigma=True")
        elif s is None:
            pass  # allowed here so a default config can be refined; `prepare` insists on a noise level
        elif s == "metadata":
            if self.infer_sigma:
                raise bad_input("infer_sigma", "False with sigma_y='metadata' (per-point noise levels are given)", True)
        elif not (_is_number(s) and math.isfinite(s) and s > 0):
            raise bad_input("sigma_y", "a positive finite number, 'metadata' or None", s)

    @property
    def message_weight(self) -> float:
        """λ actually used: `lam` for MPDPS, 0 for DPS."""
        return float(self.lam) if self.method == "mpdps" else 0.0

    @property
    def scalar_sigma(self) -> bool:
        """Whether σ_y is one scalar carried in the sampler state (fixed or inferred)."""
        return self.likelihood.has_sigma and self.sigma_y != "metadata"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (for reports and InferenceData attrs)."""
        return {
            "method": self.method, "num_steps": self.num_steps, "zeta": self.zeta,
            "zeta_schedule": self.zeta_schedule, "lam": self.lam, "message_kernel": self.message_kernel.to_dict(),
            "message_jitter": self.message_jitter, "guidance": self.guidance.name,
            "guidance_rule": self.guidance.to_dict(),
            "through_denoiser": self.through_denoiser, "churn": self.churn,
            "corrector": None if self.corrector is None else self.corrector.to_dict(), "likelihood": self.likelihood.name,
            "likelihood_params": dict(self.likelihood_params), "sigma_y": self.sigma_y,
            "infer_sigma": self.infer_sigma, "sigma_burn_in": self.sigma_burn_in,
            "sigma_prior_scale": self.sigma_prior_scale, "mh_steps": self.mh_steps,
            "mh_step_size": self.mh_step_size, "edm": self.edm.to_dict(),
        }
