"""Guided posterior sampling of FTM core sequences: moment matching (MMPS), DPS and message-passing DPS.

The prior is any denoiser `denoise(x (M, R..), sigma, t (M,)) -> x0` in normalised core units
(the trained GPSD prior, or an exact analytic one in tests); the likelihood comes from the NumPyro
observation model (`models.observation`), so every likelihood there works. The sampler is the
EDM Heun sampler over a Karras noise schedule, started from `σ_max · L z` (GP noise in time),
with the denoiser's estimate of the clean sequence corrected by the data at every step.

Units: the sampler state `x` is in normalised core units, `W = core_mean + core_std · x` in FTM
core units; observation values and σ_y are in normalised field units.

Guidance rules (`GuidedConfig.guidance`, objects of `inference.guidance`):

- `MomentMatching` / `"mmps"` (default): the Gaussian update of x̂0 with the Tweedie covariance
  `σ² J_D (Σ_t ⊗ I)` of the whole sequence, by preconditioned conjugate gradients over the
  observed points (`inference.guidance`). Exact in the linear-Gaussian limit as the CG budget
  grows (`benchmarks/exactness.py`); frames without data move through the prior's coupling.
  Each frame's own points enter with the IRLS precision of `_point_terms`, the same that the
  rules below use, so every likelihood works.
- `Fisher` / `"fisher"`. At noise level σ the clean sequence given the state is approximated as
  `x0 | x ~ N(x̂0, r² I)`, `r² = σ² σ_d² / (σ² + σ_d²)` (Tweedie, isotropic), and the denoiser
  output is replaced by one Gauss-Newton step on the log-likelihood,
  `x̂0' = x̂0 + ζ r² (I + r² s² H)⁻¹ s g`, with `s = core_std` (chain rule of `W = m + s x`),
  `g = ∇_W log p(y | Ŵ)` and `H` the curvature of the frame's log-likelihood (`AᵀA/σ_y²` for
  Gaussian noise). For Gaussian noise and ζ = 1 this is the exact conjugate update of x̂0 under
  the Tweedie prior, so the step is normalised by the noise levels of both the diffusion and the
  data. `x̂0'` is used in both Heun stages (the posterior score is `(x̂0' − x)/σ²`).
  `H_j ≈ c_j G_j`: `G_j = Σ_p F_p a_p a_pᵀ` is fixed (Fisher information `F` at σ_y = 1), its
  eigendecomposition is computed once, and the scalar `c_j` follows the current state: the
  Rayleigh quotient along the step of the IRLS curvature `Σ_p w_p a_p a_pᵀ`, `w_p = score_p / r_p`
  capped at `F_p / σ_y²` (exactly `1/σ_y²` for Gaussian noise). For robust likelihoods far from
  the data `w_p ≪ F_p`, so the step is a weighted least-squares move to the data rather than a
  Fisher-scoring step of size ~σ_y. With `through_denoiser` the correction is pulled back
  through the denoiser, `σ² (Σ_t ⊗ I) J_Dᵀ (I + r² s² H)⁻¹ s g` (Tweedie with GP noise:
  `Cov[x0 | x] = σ² J_D Σ_t`), which keeps the prior's coupling of frames that the isotropic
  `r² I` ignores.
- `"reference"`: the public code's rule. After each Heun step but the last,
  `x += ζ_i (g_own + λ g_msg)` with the gradients taken at the average of the two (unguided)
  denoiser outputs; steps are not normalised (the public code's `Aᵀ(y − Aŵ)` is our `g` times
  σ_y², so its ζ is ours times σ_y²).

MPDPS messages: with `C = loo_weights(K_msg)` over all frames, frame l's leave-one-out GP
prediction (about the prior mean m) is `Ŵ_l^GP = m + Σ_j C_lj (Ŵ_j − m)`, its residual gradient `g_l = ∇ log p(y_l | Ŵ_l^GP)` is sent
to every other frame j weighted by `C_lj`, and frame j's guidance is `own_j + λ Σ_l C_lj g_l`:
the gradient of the own likelihood plus λ times the gradient of the GP pseudo-likelihood
`Σ_l log p(y_l | Ŵ_l^GP)`. In `"fisher"` mode frame j is preconditioned with the matching
Gauss-Newton curvature `H_j + λ Σ_l C_lj² H_l`, so frames without observations get a bounded,
noise-level-normalised step. DPS is λ = 0: frames without observations get no guidance.
For Poisson data the messages use the Gaussian approximation at the observed count (variance
`s² max(k, 1)`) where the exact Poisson weight is larger: a GP prediction is not the frame's own
estimate, and one with a rate near zero under many counts would otherwise send a ~1/λ step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray
from tqdm.auto import tqdm

from models.likelihoods import LIKELIHOODS, Likelihood, as_likelihood
from models.observation import check_observation_inputs, likelihood_grad, resolve_likelihood
from sdift_prob.data.observations import TIME_RTOL, PaddedObservations
from sdift_prob.errors import NumericalError, bad_input
from sdift_prob.gp import TemporalKernel, loo_weights
from sdift_prob.gpsd.edm import EDMConfig, karras_sigmas
from sdift_prob.parallel import DRAWS_AXIS, TRAJECTORY_AXIS, device_count
from sdift_prob.parallel import mesh as device_mesh
from sdift_prob.validation import check_count

from .constraints import Constraint, FieldDecoder, bind_constraints
from .guidance import (
    ExtraGroup,
    Fisher,
    GuidanceRule,
    MomentMatching,
    Reference,
    as_guidance_rule,
    isotropic_tweedie_variance,
    moment_matching_solve,
    safe_ratio,
)
from .corrector import LangevinCorrector, langevin_correct
from .preconditioners import AnchoredPreconditioner, PriorSpectrum, anchor_profiles, select_anchor
from .noise import DEFAULT_PRIOR_SCALE, update_sigma, update_sigma_tweedie

__all__ = [
    "METHODS",
    "ZETA_SCHEDULES",
    "LIKELIHOODS",
    "GuidedConfig",
    "GuidedProblem",
    "GuidedState",
    "GuidedInfo",
    "prepare",
    "init",
    "step",
    "sample_posterior",
    "sample_posterior_many",
    "mpdps_gradient",
    "union_times",
    "reference_message_kernel",
]

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
      `"mmps"`), `Fisher()` (`"fisher"`) or `Reference()` (`"reference"`); see the module docstring.
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


class GuidedProblem(eqx.Module):
    """Everything about one posterior that stays fixed during sampling (built by `prepare`).

    **Fields:** `design (M, P, D)`; `padded` (`PaddedObservations` of JAX arrays, values in
    normalised field units); `core_mean`, `core_std` (scalars); `times_norm (M,)`;
    `noise_chol (M, M)`; `sigmas (num_steps + 1,)` (Karras schedule ending in 0);
    `loo (M, M)` (leave-one-out weights of the message kernel, zeros for DPS);
    `eig_vals (M, D)`, `eig_vecs (M, D, D)`: eigendecomposition of each frame's reference Gram
    `G_j = Σ_l mix_lj Σ_p F_lp a_lp a_lpᵀ` (`mix = I + λ C∘C`, `F` the per-point Fisher
    information at σ_y = 1, at the given noise levels for `"metadata"`, at the observed counts for
    Poisson; identity basis in `"reference"` mode); `unit_fisher (M, P)`: `F`; `row_norms (M, P)`: `‖a_p‖²`;
    `obs_eig_vals (A, B, Q)`, `obs_eig_vecs (A, B, Q, Q)`: eigendecompositions of the MMPS
    preconditioner's anchors (`inference.preconditioners`), laid out as `preconditioner` says:
    `"points"` (B = 1, Q = M P: the whitened Gram of all points
    `diag(√F) A (Σ_t ⊗ U diag(h_a) Uᵀ) Aᵀ diag(√F)`), `"frames"` (B = M, Q = P: each frame's
    `diag(√F) A_j U diag(h_a) Uᵀ A_jᵀ diag(√F)`) or `"none"` (Q = 0); `anchor_variances (R,)`,
    `anchor_energy (R,)`, `anchor_profiles (A, R)`: the prior variances λ along the principal
    axes U (one isotropic axis of variance σ_data² without a `PriorSpectrum`), each axis's share
    of the whitened Gram's trace, and the anchors' profiles `h_a`; `sigma_y0`: the starting σ_y;
    `core_shape`: `(R1, .., RK)`; `constraints`: the active constraints bound to the grid's
    times (`inference.constraints`; empty: none), `decoder` the `FieldDecoder` they see the
    frames through and `constraint_times (M,)` the frames' times they are given.
    """

    design: Float[Array, "M P D"]
    padded: PaddedObservations
    core_mean: Float[Array, ""]
    core_std: Float[Array, ""]
    times_norm: Float[Array, " M"]
    noise_chol: Float[Array, "M M"]
    sigmas: Float[Array, " S"]
    loo: Float[Array, "M M"]
    eig_vals: Float[Array, "M D"]
    eig_vecs: Float[Array, "M D D"]
    unit_fisher: Float[Array, "M P"]
    row_norms: Float[Array, "M P"]
    obs_eig_vals: Float[Array, "A B Q"]
    obs_eig_vecs: Float[Array, "A B Q Q"]
    anchor_variances: Float[Array, " R"]
    anchor_energy: Float[Array, " R"]
    anchor_profiles: Float[Array, "A R"]
    sigma_y0: Float[Array, ""]
    core_shape: tuple[int, ...] = eqx.field(static=True)
    preconditioner: str = eqx.field(static=True, default="none")
    constraints: tuple[Constraint, ...] = ()
    decoder: FieldDecoder | None = None
    constraint_times: Float[Array, " M"] | None = None

    @property
    def num_frames(self) -> int:
        return self.design.shape[0]

    @property
    def core_size(self) -> int:
        return self.design.shape[2]


class GuidedState(NamedTuple):
    """State of one chain: `x (M, R..)` normalised cores at noise level `sigmas[step]`;
    `step` (int); `sigma_y` (current noise level estimate; 1 when unused); `finite` (False once a
    non-finite value appeared); `first_bad` (the first step that produced one, −1 if none);
    `cg_guess` (MMPS with `warm_start`: the whitened solution of the last moment-matching solve,
    where the next one starts; zeros otherwise)."""

    x: Float[Array, "M *R"]
    step: Int[Array, ""]
    sigma_y: Float[Array, ""]
    finite: Bool[Array, ""]
    first_bad: Int[Array, ""]
    cg_guess: Float[Array, "M P"]


class GuidedInfo(NamedTuple):
    """Diagnostics of one step: `noise_level` (σ of the step), `sigma_y` (after the step's
    update), `residual_rms` (RMS of `y − A Ŵ` over the observed points at the step's clean
    estimate, normalised field units), `guidance_rms` (RMS of the guidance correction, normalised
    core units). Stacked over steps (and draws) by `sample_posterior`."""

    noise_level: Float[Array, ""]
    sigma_y: Float[Array, ""]
    residual_rms: Float[Array, ""]
    guidance_rms: Float[Array, ""]


# --------------------------------------------------------------------------------------------
# Inputs


def _as_padded(padded: Any, M: int, P: int) -> PaddedObservations:
    for name in PaddedObservations._fields:
        if not hasattr(padded, name):
            raise bad_input("padded", "a PaddedObservations (times, values, coords, noise_scale, mask)",
                            type(padded).__name__)
    mask = np.asarray(padded.mask)
    if mask.shape != (M, P) or mask.dtype != np.bool_:
        raise bad_input("padded.mask", f"a bool array of shape (M={M}, P={P}) matching design",
                        f"{mask.dtype} {mask.shape}")
    values = np.asarray(padded.values, dtype=np.float64)
    if values.shape != (M, P):
        raise bad_input("padded.values", f"shape (M={M}, P={P}) matching design", values.shape)
    noise = np.asarray(padded.noise_scale, dtype=np.float64)
    if noise.shape != (M, P):
        raise bad_input("padded.noise_scale", f"shape (M={M}, P={P}) matching design", noise.shape)
    dtype = jnp.result_type(float)
    # Padding never enters the likelihood (masked), but NaN there would poison gradients.
    return PaddedObservations(
        times=jnp.asarray(np.asarray(padded.times, dtype=np.float64), dtype),
        values=jnp.asarray(np.where(mask, values, 0.0), dtype),
        coords=jnp.asarray(np.asarray(padded.coords, dtype=np.float64), dtype),
        noise_scale=jnp.asarray(np.where(mask, noise, 1.0), dtype),
        mask=jnp.asarray(mask),
    )


# The sampler runs in float32: observation values and noise levels (normalised field units)
# beyond these bounds overflow its squared residuals and Fisher weights. Values that far from the
# training distribution (~1e8 training standard deviations) are almost always a units mistake.
MAX_ABS_VALUE = 1e8
# The MMPS preconditioner stores an eigenbasis of all padded points (M P)² per anchor, computed
# once per problem (float32 `eigh` on 2 cores: 1,840 points 0.6 s, 5,520 points 12 s; 6,000
# points take 144 MB); beyond that, one per frame (P², blind to the coupling of frames: 2.3x the
# error on the exactness bench); beyond that, plain CG. Anchors beyond the isotropic one (with a
# `PriorSpectrum`) are kept while their eigendecompositions cost at most `ANCHOR_BUDGET` (B Q³);
# above it two (isotropic and the prior's spectrum).
MAX_PRECONDITIONED_POINTS = 6000
MAX_PRECONDITIONED_FRAME = 2048
ANCHOR_BUDGET = 2500**3
MIN_SIGMA = 1e-6


def _check_float32_range(pad: PaddedObservations, config: GuidedConfig) -> None:
    mask = np.asarray(pad.mask)
    if not mask.any():
        return
    values = np.asarray(pad.values, dtype=np.float64)[mask]
    peak = float(np.max(np.abs(values)))
    if not np.isfinite(values).all() or peak > MAX_ABS_VALUE:
        raise bad_input(
            "padded.values",
            f"observation values within {MAX_ABS_VALUE:g} normalised units (training standard deviations "
            "about the training mean); the sampler runs in float32; check the units of the observations",
            f"|value| up to {peak:.3g}",
        )
    levels = []
    if config.sigma_y == "metadata":
        levels = np.asarray(pad.noise_scale, dtype=np.float64)[mask]
        name = "padded.noise_scale"
    elif _is_number(config.sigma_y):
        levels = np.asarray([float(config.sigma_y)])
        name = "config.sigma_y"
    if len(levels) and float(np.min(levels)) < MIN_SIGMA:
        raise bad_input(
            name,
            f"noise levels >= {MIN_SIGMA:g} normalised units (training standard deviations); smaller ones "
            "overflow the float32 sampler; pass a larger sigma for (nearly) noise-free data",
            f"a noise level of {float(np.min(levels)):.3g}",
        )


def _unit_fisher(config: GuidedConfig, padded: PaddedObservations) -> Array:
    """Per-point Fisher information `(M, P)` about the predicted mean (`Likelihood.reference_fisher`),
    at σ_y = 1 for a scalar σ_y, at the given levels for `"metadata"`, at the data for Poisson."""
    mask = padded.mask
    unit = jnp.where(mask, padded.noise_scale, 1.0) if config.sigma_y == "metadata" else 1.0
    w = jnp.broadcast_to(config.likelihood.reference_fisher(padded.values, unit), mask.shape)
    return jnp.where(mask, w, 0.0)


def _sigma_arg(config: GuidedConfig, sigma_y: Array) -> Any:
    if not config.likelihood.has_sigma:
        return None
    if config.sigma_y == "metadata":
        return "metadata"
    return sigma_y


def _no_anchors(config: GuidedConfig, dtype: Any) -> tuple[Array, ...]:
    """Anchor arrays of a problem without an MMPS preconditioner (Q = 0)."""
    one = jnp.ones((1,), dtype)
    return (jnp.zeros((1, 1, 0), dtype), jnp.zeros((1, 1, 0, 0), dtype), one * config.edm.sigma_data**2, one,
            one[None])


def _preconditioner_anchors(
    design: Array, w: Array, cov_t: Array, spectrum: PriorSpectrum | None, max_anchors: int, layout: str,
    config: GuidedConfig,
) -> tuple[Array, ...]:
    """Eigendecompositions of the anchors' whitened Grams (`inference.preconditioners`) and the
    arrays `select_anchor` needs: `(vals, vecs, variances, energy, profiles)`."""
    dtype = design.dtype
    M, P, _ = design.shape
    if spectrum is None:  # one isotropic axis: the design rows as they are
        rows = design
        variances = jnp.full((1,), config.edm.sigma_data**2, dtype)
        energy = jnp.sum(w[..., None] * rows**2)[None]
        profiles = np.ones((1, 1))
    else:  # the design rows along the prior's principal axes
        rows = jnp.einsum("mpd,dr->mpr", design, spectrum.axes.astype(dtype))
        variances = spectrum.variances.astype(dtype)
        energy = jnp.einsum("mp,mpr->r", w, rows**2)
        B, Q = (1, M * P) if layout == "points" else (M, P)
        count = max_anchors if B * Q**3 <= ANCHOR_BUDGET else min(2, max_anchors)
        profiles = anchor_profiles(np.asarray(variances), count)
    sw = jnp.sqrt(w)[..., None]
    vals, vecs = [], []
    for h in profiles:
        scaled = sw * rows * (jnp.sqrt(jnp.asarray(h, dtype)) if spectrum is not None else 1.0)
        if layout == "points":
            gram = jnp.einsum("mpr,mn,nqr->mpnq", scaled, cov_t, scaled).reshape(1, M * P, M * P)
        else:
            gram = jnp.einsum("mpr,mqr->mpq", scaled, scaled)
        v, u = jnp.linalg.eigh(gram)
        vals.append(jnp.maximum(v, 0.0))
        vecs.append(u)
    return jnp.stack(vals), jnp.stack(vecs), variances, energy, jnp.asarray(profiles, dtype)


def prepare(
    design: Float[ArrayLike, "M P D"],
    padded: PaddedObservations,
    *,
    core_mean: float,
    core_std: float,
    times_norm: Float[ArrayLike, " M"],
    noise_chol: Float[ArrayLike, "M M"],
    config: GuidedConfig,
    core_shape: tuple[int, ...] | None = None,
    prior_spectrum: PriorSpectrum | None = None,
    constraints: Sequence[Constraint] | None = None,
    decoder: FieldDecoder | None = None,
) -> GuidedProblem:
    """Validate the inputs and precompute what every step needs.

    Computes the Karras schedule, the leave-one-out message weights (MPDPS: one Cholesky of the
    message kernel over `times_norm`) and, in `"fisher"` mode, the eigendecomposition of each
    frame's Fisher Gram `Σ_p w_p a_p a_pᵀ + λ Σ_l C_lj² (…)_l` (once, so each step's solve is two
    matrix-vector products for any noise level and σ_y).

    **Arguments:**

    - `design`: design rows of each padded point, shape `(M, P, D)` (`ftm.design_rows`).
    - `padded`: `PaddedObservations` on the same `M` time stamps, values (and noise_scale) in
      normalised field units.
    - `core_mean`, `core_std`: the prior's core normalisation, `W = core_mean + core_std · x`.
    - `times_norm`: normalised time stamps `(M,)`, strictly increasing.
    - `noise_chol`: lower Cholesky factor `(M, M)` of the prior's noise kernel over `times_norm`.
    - `config`: `GuidedConfig`.
    - `core_shape`: `(R1, .., RK)` with product `D` (default `(D,)`).
    - `prior_spectrum`: principal axes and variances of the prior's per-frame core covariance
      (`PriorSpectrum`, normalised core units), for the MMPS preconditioner's anchors; None: the
      isotropic anchor only (a prior white in space with variance `σ_data²`).
    - `constraints`: `inference.constraints` objects (`Residual`, `Bounds`, `Dynamics`) acting on
      every frame as likelihood terms (None or empty: none; zero-weight ones are dropped, so the
      sampler is then exactly the unconstrained one); `decoder`: the `FieldDecoder` that maps
      FTM cores to the frames they see (needed with an active constraint). They see the frames
      at the physical times `padded.times`. Not with `guidance="reference"`.

    **Returns:** a `GuidedProblem`.
    """
    if not isinstance(config, GuidedConfig):
        raise bad_input("config", "a GuidedConfig", type(config).__name__)
    if config.sigma_y is None and config.likelihood.has_sigma and not config.infer_sigma:
        raise bad_input("config.sigma_y", "a positive noise level (normalised field units), 'metadata', or "
                        "infer_sigma=True", None)
    d = np.asarray(design, dtype=np.float64)
    if d.ndim != 3 or min(d.shape) < 1:
        raise bad_input("design", "an array of shape (M, P, D) with M, P, D >= 1", d.shape)
    M, P, D = d.shape
    pad = _as_padded(padded, M, P)
    if core_shape is None:
        core_shape = (D,)
    core_shape = tuple(core_shape) if isinstance(core_shape, (tuple, list)) else core_shape
    if (not isinstance(core_shape, tuple) or not core_shape
            or not all(isinstance(r, (int, np.integer)) and r >= 1 for r in core_shape)
            or int(np.prod(core_shape)) != D):
        raise bad_input("core_shape", f"a tuple of positive ints with product D = {D}", core_shape)
    core_shape = tuple(int(r) for r in core_shape)
    for name, v, positive in (("core_mean", core_mean, False), ("core_std", core_std, True)):
        ok = _is_number(v) or (hasattr(v, "shape") and np.shape(v) == ())
        if not ok or not math.isfinite(float(v)) or (positive and float(v) <= 0):
            raise bad_input(name, "a positive finite scalar" if positive else "a finite scalar", v)
    t = np.asarray(times_norm, dtype=np.float64)
    if t.shape != (M,):
        raise bad_input("times_norm", f"shape (M={M},) matching design", t.shape)
    if not np.isfinite(t).all() or (M > 1 and (np.diff(t) <= 0).any()):
        raise bad_input("times_norm", "finite, strictly increasing normalised time stamps", t)
    L = np.asarray(noise_chol, dtype=np.float64)
    if L.shape != (M, M):
        raise bad_input("noise_chol", f"a lower Cholesky factor of shape ({M}, {M})", L.shape)
    upper = np.abs(np.triu(L, 1)).max(initial=0.0)
    if not np.isfinite(L).all() or upper > 1e-6 * np.abs(L).max(initial=1.0) or (np.diag(L) <= 0).any():
        raise bad_input("noise_chol", "a finite lower-triangular factor with a positive diagonal",
                        "a non-triangular, singular or non-finite matrix")
    sigma_check = config.sigma_y if config.sigma_y == "metadata" or _is_number(config.sigma_y) else None
    check_observation_inputs(
        np.zeros((M, *core_shape)), d, pad, likelihood=config.likelihood, sigma=sigma_check,
        sigma_prior_scale=config.sigma_prior_scale,
    )
    _check_float32_range(pad, config)
    bound = bind_constraints(constraints, decoder, np.asarray(padded.times, np.float64), core_shape,
                             float(core_mean), jnp.result_type(float))
    if bound and isinstance(config.guidance, Reference):
        raise bad_input("constraints", "none with guidance='reference' (constraints enter as likelihood terms of the "
                        "'mmps' or 'fisher' rules)", [type(c).__name__ for c in bound])
    n_obs = int(np.asarray(pad.mask).sum())
    if config.infer_sigma and n_obs < 2:
        raise bad_input("padded", "at least 2 observed points to infer sigma_y", f"{n_obs} observed points")

    dtype = jnp.result_type(float)
    design_j = jnp.asarray(d, dtype)
    lam = config.message_weight
    if config.method == "mpdps" and M >= 2:
        K = config.message_kernel.gram(jnp.asarray(t, dtype))
        loo = jnp.asarray(loo_weights(K, jitter=config.message_jitter), dtype)
    else:
        loo = jnp.zeros((M, M), dtype)
    w = _unit_fisher(config, pad)
    row_norms = jnp.sum(design_j**2, axis=-1)
    if isinstance(config.guidance, Fisher):
        gram = jnp.einsum("mpd,mp,mpe->mde", design_j, w, design_j)
        # mix[l, j]: weight of frame l's curvature in frame j's preconditioner (the diagonal
        # blocks λ C_lj² H_l of the messages' Gauss-Newton curvature).
        mix = jnp.eye(M, dtype=dtype) + lam * loo**2
        gram = jnp.einsum("lj,lde->jde", mix, gram)
        vals, vecs = jnp.linalg.eigh(gram)
        vals = jnp.maximum(vals, 0.0)
    else:
        vals = jnp.zeros((M, D), dtype)
        vecs = jnp.broadcast_to(jnp.eye(D, dtype=dtype), (M, D, D))
    rule = config.guidance
    if prior_spectrum is not None:
        if not isinstance(prior_spectrum, PriorSpectrum):
            raise bad_input("prior_spectrum", "a PriorSpectrum or None", type(prior_spectrum).__name__)
        if prior_spectrum.axes.shape[0] != D:
            raise bad_input("prior_spectrum", f"principal axes over D = {D} core entries",
                            prior_spectrum.axes.shape)
    preconditioner, anchors = "none", _no_anchors(config, dtype)
    if isinstance(rule, MomentMatching) and rule.precondition:
        if M * P <= MAX_PRECONDITIONED_POINTS:
            preconditioner = "points"
        elif P <= MAX_PRECONDITIONED_FRAME:
            preconditioner = "frames"
        if preconditioner != "none":
            # One anchor is the isotropic preconditioner, with or without a spectrum.
            spectrum = prior_spectrum if rule.anchors > 1 else None
            anchors = _preconditioner_anchors(design_j, w, jnp.asarray(L @ L.T, dtype), spectrum, rule.anchors,
                                              preconditioner, config)
    obs_vals, obs_vecs = anchors[0], anchors[1]
    if not (bool(jnp.all(jnp.isfinite(vals))) and bool(jnp.all(jnp.isfinite(vecs)))
            and bool(jnp.all(jnp.isfinite(obs_vals))) and bool(jnp.all(jnp.isfinite(obs_vecs)))):
        raise NumericalError("prepare: the Fisher eigendecomposition is not finite; check the design rows")

    if config.sigma_y is None and config.infer_sigma:
        obs = np.asarray(pad.values)[np.asarray(pad.mask)]
        sigma0 = float(np.std(obs)) if obs.size > 1 and np.std(obs) > 0 else 1.0
    elif _is_number(config.sigma_y):
        sigma0 = float(config.sigma_y)
    else:
        sigma0 = 1.0

    return GuidedProblem(
        design=design_j, padded=pad, core_mean=jnp.asarray(float(core_mean), dtype),
        core_std=jnp.asarray(float(core_std), dtype), times_norm=jnp.asarray(t, dtype),
        noise_chol=jnp.asarray(L, dtype), sigmas=jnp.asarray(karras_sigmas(config.num_steps, config.edm), dtype),
        loo=loo, eig_vals=vals, eig_vecs=vecs, unit_fisher=w, row_norms=row_norms, obs_eig_vals=obs_vals,
        obs_eig_vecs=obs_vecs, anchor_variances=anchors[2], anchor_energy=anchors[3], anchor_profiles=anchors[4],
        preconditioner=preconditioner,
        sigma_y0=jnp.asarray(sigma0, dtype), core_shape=core_shape,
        constraints=bound, decoder=decoder if bound else None,
        constraint_times=jnp.asarray(np.asarray(padded.times, np.float64), dtype) if bound else None,
    )


# --------------------------------------------------------------------------------------------
# Guidance


def _point_scores(u: Array, sigma_y: Array, problem: GuidedProblem, config: GuidedConfig) -> Array:
    """`∂ log p(y_p | u_p) / ∂u_p` for every padded point `(M, P)` (0 at padding): the
    likelihood's pointwise score (`Likelihood.score`, autodiff of its distribution's log density,
    the density of the observation model) with padding given the model's stand-in values."""
    pad = problem.padded
    lik = config.likelihood
    sigma = _sigma_arg(config, sigma_y)
    y = jnp.where(pad.mask, pad.values.astype(u.dtype), lik.pad_value())
    if sigma is None:
        noise = None
    elif isinstance(sigma, str):  # "metadata"
        noise = jnp.where(pad.mask, pad.noise_scale.astype(u.dtype), 1.0)
    else:
        noise = jnp.where(pad.mask, jnp.broadcast_to(jnp.asarray(sigma, u.dtype), u.shape), 1.0)
    return jnp.where(pad.mask, lik.score(u, y, noise), 0.0)


def _frame_terms(
    W: Array, sigma_y: Array, problem: GuidedProblem, config: GuidedConfig, *, message: bool = False
) -> tuple[Array, Array]:
    """Likelihood gradient `A_jᵀ score_j (M, D)` at cores `W (M, D)` and the IRLS curvature
    weight of every point `w_p = score_p / r_p (M, P)` (capped at the Fisher information;
    exactly `1/σ²` for Gaussian noise; 0 at padding). `message=True` for the GP predictions
    of MPDPS messages (see the Poisson note in `_point_terms`)."""
    score, w = _point_terms(W, sigma_y, problem, config, message=message)
    return jnp.einsum("mpd,mp->md", problem.design, score), w


def _point_terms(
    W: Array, sigma_y: Array, problem: GuidedProblem, config: GuidedConfig, *, message: bool = False
) -> tuple[Array, Array]:
    """Per-point score `∂ log p(y_p | u_p)/∂u_p` and IRLS weight `(M, P)` at cores `W (M, D)`
    (0 at padding); see `_frame_terms`."""
    pad = problem.padded
    u = jnp.einsum("mpd,md->mp", problem.design, W)
    score = jnp.where(pad.mask, _point_scores(u, sigma_y, problem, config), 0.0)
    fisher = problem.unit_fisher / sigma_y**2 if config.scalar_sigma else problem.unit_fisher
    # IRLS weight `score / r` (`Likelihood.irls`): for robust likelihoods far from the data it is
    # far below the Fisher information, so the step is a weighted least-squares move towards the
    # data instead of a bounded Fisher-scoring step of size ~σ_y. Poisson's own weight is its
    # Fisher information at the current mean, uncapped; its messages use the Gaussian
    # approximation at the observed count (see `models.likelihoods.PoissonExcess.irls`).
    score, w = config.likelihood.irls(score, pad.values - u, fisher, message=message)
    return jnp.where(pad.mask, score, 0.0), jnp.where(pad.mask, w, 0.0)


def _guidance_terms(
    W: Array, sigma_y: Array, problem: GuidedProblem, config: GuidedConfig
) -> tuple[Array, Array, Array]:
    """At cores `W (M, D)`: the guidance gradient (own + λ messages) `(M, D)`, the own points'
    IRLS weights `(M, P)`, and each frame's message curvature relative to its reference
    (Fisher at σ_y = 1) curvature, `Σ_l C_lj² Σ_p w_lp ‖a_lp‖² / Σ_l C_lj² Σ_p F_lp ‖a_lp‖²` `(M,)`."""
    g, w = _frame_terms(W, sigma_y, problem, config)
    lam = config.message_weight
    msg_ratio = jnp.zeros(W.shape[:1], W.dtype)
    if lam > 0:
        # GP regression about the prior mean: row l of loo @ (W - m) predicts frame l from the
        # others; loo.T sends each g_l back to the frames that made the prediction.
        m = problem.core_mean
        g_gp, w_gp = _frame_terms(m + problem.loo @ (W - m), sigma_y, problem, config, message=True)
        g = g + lam * (problem.loo.T @ g_gp)
        c2 = problem.loo.T**2
        msg_ratio = safe_ratio(c2 @ jnp.sum(w_gp * problem.row_norms, axis=1),
                           c2 @ jnp.sum(problem.unit_fisher * problem.row_norms, axis=1))
    return g, w, msg_ratio


def mpdps_gradient(
    cores: Float[ArrayLike, "M *R"],
    design: Float[ArrayLike, "M P D"],
    padded: PaddedObservations,
    loo: Float[ArrayLike, "M M"],
    *,
    lam: float,
    likelihood: Likelihood | str = "gaussian",
    sigma: float | str | None = None,
    likelihood_params: Mapping[str, float] | None = None,
    core_mean: float = 0.0,
) -> Float[Array, "M *R"]:
    """MPDPS guidance gradient: own-frame likelihood gradient plus λ × the leave-one-out messages.

    `own_j + λ Σ_l C_lj ∇ log p(y_l | Ŵ_l^GP)` for every frame j, vectorised over frames, with
    the GP prediction about the prior mean `Ŵ_l^GP = m + Σ_k C_lk (W_k − m)`.

    **Arguments:**

    - `cores`: clean core estimate in FTM core units, shape `(M, R1, .., RK)`.
    - `design`: shape `(M, P, D)`; `padded`: observations (normalised field units).
    - `loo`: leave-one-out weights `C (M, M)` (`sdift_prob.gp.loo_weights`), zero diagonal.
    - `lam`: message weight λ ≥ 0 (0 gives the DPS gradient).
    - `likelihood`, `sigma`: as in `models.observation.likelihood_grad`; `likelihood_params`: the
      parameters of a likelihood given by name (`df`, `poisson_offset`, `poisson_scale`).
    - `core_mean`: the prior mean `m` of every core entry (the prior's `core_mean`).

    **Returns:** the gradient, shape of `cores`.
    """
    cores = jnp.asarray(cores)
    if cores.ndim < 2:
        raise bad_input("cores", "an array of shape (M, R1, .., RK)", cores.shape)
    M = cores.shape[0]
    C = jnp.asarray(loo)
    if C.shape != (M, M):
        raise bad_input("loo", f"leave-one-out weights of shape ({M}, {M})", C.shape)
    if not (_is_number(lam) and math.isfinite(lam) and lam >= 0):
        raise bad_input("lam", "a finite number >= 0", lam)
    lik = resolve_likelihood(likelihood, **dict(likelihood_params or {}))
    check_observation_inputs(cores, design, padded, likelihood=lik, sigma=sigma)
    design = jnp.asarray(design)
    flat = cores.reshape(M, -1)

    def grad(W: Array) -> Array:
        return likelihood_grad(W.reshape(cores.shape), design, padded, likelihood=lik, sigma=sigma).reshape(M, -1)

    g = grad(flat)
    if lam > 0:
        g = g + lam * (C.T @ grad(core_mean + C @ (flat - core_mean)))
    return g.reshape(cores.shape)


def _zeta(config: GuidedConfig, i: Array) -> Array:
    if config.zeta_schedule == "harmonic":
        return config.zeta / (i + 1.0)
    return jnp.asarray(config.zeta)


def _solve(v: Array, scale: Array, problem: GuidedProblem) -> Array:
    """`(I + scale_j G_j)⁻¹ v_j` for every frame j, in the eigenbasis of the reference Gram `G_j`."""
    coeff = jnp.einsum("mdk,md->mk", problem.eig_vecs, v)
    return jnp.einsum("mdk,mk->md", problem.eig_vecs, coeff / (1.0 + scale[:, None] * problem.eig_vals))


def _curvature_scale(
    v: Array, w_own: Array, msg_ratio: Array, r2: Array, problem: GuidedProblem, config: GuidedConfig
) -> Array:
    """Per-frame factor `c_j` with `H_j ≈ c_j G_j`, the current curvature relative to the reference.

    Own observations: the Rayleigh quotient of the IRLS curvature along the step direction
    (direction of the unit-curvature step); messages: the ratio of traces. Weighted by each
    part's share of `tr G_j`. Exactly `1/σ_y²` for Gaussian noise."""
    s2 = problem.core_std**2
    direction = _solve(v, r2 * s2 * jnp.ones(v.shape[:1], v.dtype), problem)
    Av = jnp.einsum("mpd,md->mp", problem.design, direction) ** 2
    own_ratio = safe_ratio(jnp.sum(w_own * Av, axis=1), jnp.sum(problem.unit_fisher * Av, axis=1))
    own_trace = jnp.sum(problem.unit_fisher * problem.row_norms, axis=1)
    lam = config.message_weight
    msg_trace = lam * (problem.loo.T**2 @ own_trace)
    return safe_ratio(own_ratio * own_trace + msg_ratio * msg_trace, own_trace + msg_trace)


def _to_cores(x: Array, problem: GuidedProblem) -> Array:
    return problem.core_mean + problem.core_std * x


def _residual_rms(W: Array, problem: GuidedProblem) -> Array:
    pred = jnp.einsum("mpd,md->mp", problem.design, W)
    mask = problem.padded.mask
    r = jnp.where(mask, problem.padded.values - pred, 0.0)
    return jnp.sqrt(jnp.sum(r**2) / jnp.maximum(jnp.sum(mask), 1))


def _rms(v: Array) -> Array:
    return jnp.sqrt(jnp.mean(v**2))


def _fisher_estimate(
    denoise: Denoiser, x: Array, sigma: Array, sigma_y: Array, zeta: Array, problem: GuidedProblem,
    config: GuidedConfig,
) -> tuple[Array, Array]:
    """Guided clean estimate `x̂0'` (flat `(M, D)`) at noise level σ, and the correction added."""
    M, D = x.shape
    shape = (M, *problem.core_shape)

    def den(z: Array) -> Array:
        return denoise(z.reshape(shape), sigma, problem.times_norm).reshape(M, D)

    if config.through_denoiser:
        x0, pullback = jax.vjp(den, x)
    else:
        x0 = den(x)
    g, w_own, msg_ratio = _guidance_terms(_to_cores(x0, problem), sigma_y, problem, config)
    r2 = isotropic_tweedie_variance(sigma, config.edm.sigma_data)
    v = problem.core_std * g
    c = _curvature_scale(v, w_own, msg_ratio, r2, problem, config)
    pv = _solve(v, r2 * problem.core_std**2 * c, problem)
    if config.through_denoiser:
        # Tweedie with noise covariance σ² (Σ_t ⊗ I): Cov[x0 | x] = σ² J_D (Σ_t ⊗ I); with
        # J_D = r²/σ² I and Σ_t = I this reduces to the r² step below.
        (jt,) = pullback(pv)
        cov_t = problem.noise_chol @ problem.noise_chol.T
        delta = sigma**2 * (cov_t @ jt)
    else:
        delta = r2 * pv
    delta = zeta * delta
    if problem.constraints:
        delta = delta + zeta * _constraint_gauss_newton(x0 + delta, r2, problem)
    return x0 + delta, delta


def _constraint_residuals(x: Array, problem: GuidedProblem, constraints: tuple[Constraint, ...]) -> tuple[Array, ...]:
    """The residuals of `constraints` at the state `x (M, D)` (normalised core units), through
    the decoder: `W = core_mean + core_std · x`, frames = decoder(W)."""
    W = _to_cores(x, problem).reshape((x.shape[0], *problem.core_shape))
    frames = problem.decoder(W)
    return tuple(c.residual(frames, problem.constraint_times, problem.decoder.coords) for c in constraints)


def _constraint_group(x0: Array, problem: GuidedProblem, constraints: tuple[Constraint, ...]) -> ExtraGroup:
    """`constraints` linearised at `x0`: `r(x0 + δ) ≈ r(x0) + J δ` (one `jax.linearize`, its
    transpose for `Jᵀ`), as pseudo-observations `0 = r` with precision `weight / scale²`."""
    r0, forward = jax.linearize(lambda z: _constraint_residuals(z, problem, constraints), x0)
    transpose = jax.linear_transpose(forward, x0)
    weights = tuple(jnp.asarray(c.precision, x0.dtype) for c in constraints)
    return ExtraGroup(forward=forward, adjoint=lambda u: transpose(u)[0], residual=tuple(-r for r in r0),
                      weight=weights)


def _constraint_gauss_newton(x1: Array, r2: Array, problem: GuidedProblem,
                             constraints: tuple[Constraint, ...] | None = None) -> Array:
    """Gauss-Newton step of the constraints' potential (all of the problem's, or `constraints`)
    from `x1` under the isotropic prior `N(x1, r² I)`, along the gradient `g = −Jᵀ P r`:
    `δ = r² g / (1 + r² c)` with the curvature `c = ‖J g‖²_P / ‖g‖²` along it (the exact
    minimiser along g for a linear residual)."""
    group = _constraint_group(x1, problem, problem.constraints if constraints is None else constraints)
    g = group.adjoint(tuple(w * r for w, r in zip(group.weight, group.residual)))
    jg = group.forward(g)
    curv = sum(jnp.sum(w * j**2) for w, j in zip(group.weight, jg))
    gg = jnp.sum(g**2)
    return safe_ratio(r2 * gg, gg + r2 * curv) * g


def _mmps_estimate(
    denoise: Denoiser, x: Array, sigma: Array, sigma_y: Array, zeta: Array, problem: GuidedProblem,
    config: GuidedConfig, guess: Array | None = None,
) -> tuple[Array, Array, Array]:
    """Moment-matched clean estimate (flat `(M, D)`) at noise level σ, the correction added and
    the whitened solution of the frames' own points `(M, P)` (`inference.guidance.
    moment_matching_solve`, started from `guess` when given). The data enter as the frames' own
    points and, for MPDPS (λ > 0), as the same points predicted by leave-one-out GP regression
    from the other frames with precision λ w (the messages' pseudo-likelihood, linear in the cores)."""
    M, D = x.shape
    shape = (M, *problem.core_shape)

    def den(z: Array) -> Array:
        return denoise(z.reshape(shape), sigma, problem.times_norm).reshape(M, D)

    x0, jvp = jax.linearize(den, x)
    W0 = _to_cores(x0, problem)
    groups = [(jnp.eye(M, dtype=x.dtype), W0, 1.0, False)]
    lam = config.message_weight
    if lam > 0:
        m = problem.core_mean
        groups.append((problem.loo, m + problem.loo @ (W0 - m), lam, True))
    residuals, weights = [], []
    for _, W, scale, message in groups:
        score, w = _point_terms(W, sigma_y, problem, config, message=message)
        residuals.append(jnp.where(w > 0, score / jnp.where(w > 0, w, 1.0), 0.0))
        weights.append(scale * w)
    K = len(groups)
    design = jnp.broadcast_to(problem.core_std * problem.design, (K, *problem.design.shape))
    cov_t = problem.noise_chol @ problem.noise_chol.T
    precond = None
    if problem.preconditioner != "none":
        anchor, beta = _anchor(sigma, problem)
        # The anchor's scale in state units, per unit Fisher information.
        c = beta * problem.core_std**2
        if config.scalar_sigma:
            c = c / sigma_y**2
        inverse = AnchoredPreconditioner(problem.obs_eig_vals, problem.obs_eig_vecs)
        precond = lambda r: inverse(r, anchor, c)  # noqa: E731
    if guess is not None:  # the messages' group (if any) starts from zero
        guess = jnp.concatenate([guess[None], jnp.zeros((K - 1, *guess.shape), guess.dtype)])
    # Equality-type constraints (residuals smooth in the field) join the moment-matched update
    # as observations; one-sided ones (bounds, order) are inequalities: linearised at x̂0 they see
    # only the points violating now, and spreading that correction through the Tweedie
    # covariance moves whole regions (on the shipped ocean a range constraint made VRMSE 2-5x
    # worse, the more so the more CG iterations). They take a local Gauss-Newton step afterwards,
    # under the isotropic covariance, as the Fisher rule does.
    joint = tuple(c for c in problem.constraints if not c.one_sided)
    local = tuple(c for c in problem.constraints if c.one_sided)
    delta, v = moment_matching_solve(
        jvp, sigma, cov_t, design, jnp.stack([g[0] for g in groups]), jnp.stack(residuals), jnp.stack(weights),
        config.guidance.cg_steps, precond, _constraint_group(x0, problem, joint) if joint else None, guess,
    )
    delta = zeta * delta
    if local:
        r2 = isotropic_tweedie_variance(sigma, config.edm.sigma_data)
        delta = delta + zeta * _constraint_gauss_newton(x0 + delta, r2, problem, local)
    return x0 + delta, delta, v[0]


def _anchor(sigma: Array, problem: GuidedProblem) -> tuple[Array, Array]:
    """The preconditioner anchor for noise level σ and its scale (normalised core units)."""
    return select_anchor(sigma, problem.anchor_variances, problem.anchor_energy, problem.anchor_profiles)


def _tweedie_sigma(problem: GuidedProblem, config: GuidedConfig) -> bool:
    """σ from its marginal likelihood under the Tweedie approximation (`noise.update_sigma_tweedie`):
    MMPS with Gaussian noise, where the preconditioner's eigenbasis is at hand."""
    return (config.infer_sigma and isinstance(config.guidance, MomentMatching) and config.likelihood.conjugate
            and problem.preconditioner == "points")


def _update_sigma_tweedie(
    key: PRNGKeyArray, x0: Array, sigma: Array, sigma_y: Array, i: Array, problem: GuidedProblem,
    config: GuidedConfig,
) -> Array:
    start = math.ceil(config.sigma_burn_in * config.num_steps)
    pred = jnp.einsum("mpd,md->mp", problem.design, _to_cores(x0, problem))
    # The isotropic anchor (index 0), not the one the preconditioner picks: on the exactness
    # bench (sigma_y 0.1, settings 1 / 2) sigma came out 1.15 / 1.14x the truth with it, 1.18 /
    # 1.29x with the selected anchor (benchmarks/RESULTS.md, "sigma inferred").
    new = update_sigma_tweedie(
        key, problem.padded.values - pred, problem.padded.mask, problem.obs_eig_vals[0, 0],
        problem.obs_eig_vecs[0, 0], isotropic_tweedie_variance(sigma, config.edm.sigma_data) * problem.core_std**2,
        sigma_y, prior_scale=config.sigma_prior_scale, mh_steps=config.mh_steps, mh_step_size=config.mh_step_size,
    )
    return jnp.where(i >= start, new, sigma_y)


def _update_sigma_y(
    key: PRNGKeyArray, W: Array, sigma_y: Array, i: Array, problem: GuidedProblem, config: GuidedConfig
) -> Array:
    if not config.infer_sigma:
        return sigma_y
    start = math.ceil(config.sigma_burn_in * config.num_steps)
    new = update_sigma(
        key, W.reshape((W.shape[0], *problem.core_shape)), problem.design, problem.padded, sigma_y,
        likelihood=config.likelihood,
        prior_scale=config.sigma_prior_scale, mh_steps=config.mh_steps, mh_step_size=config.mh_step_size,
    )
    return jnp.where(i >= start, new, sigma_y)


# --------------------------------------------------------------------------------------------
# Sampler


def init(key: PRNGKeyArray, problem: GuidedProblem, sigma_y: Array | None = None) -> GuidedState:
    """Start one chain at `σ_max · L z` (GP noise over the frames' normalised times).

    **Arguments:**

    - `key`: PRNG key of this chain.
    - `problem`: from `prepare`.
    - `sigma_y`: this chain's noise level (a draw of σ inferred before sampling,
      `inference.sigma_marginal`); default `problem.sigma_y0`.

    **Returns:** `GuidedState` at step 0 with `x (M, R1, .., RK)`.
    """
    M = problem.num_frames
    shape = (M, *problem.core_shape)
    z = jax.random.normal(key, shape, dtype=problem.noise_chol.dtype)
    x = problem.sigmas[0] * jnp.tensordot(problem.noise_chol, z, axes=1)
    return GuidedState(
        x=x, step=jnp.zeros((), jnp.int32), sigma_y=problem.sigma_y0 if sigma_y is None else sigma_y,
        finite=jnp.array(True),
        first_bad=jnp.full((), -1, jnp.int32),
        cg_guess=jnp.zeros(problem.design.shape[:2], x.dtype),
    )


def _step(
    key: PRNGKeyArray, state: GuidedState, denoise: Denoiser, problem: GuidedProblem, config: GuidedConfig,
    i: Array | None = None,
) -> tuple[GuidedState, GuidedInfo]:
    M, D = problem.num_frames, problem.core_size
    # The step index from the scan rather than the state: shared by all chains of a vmap, it
    # keeps the noise level and the preconditioner anchor chosen from it unbatched, so the
    # anchor's eigenbasis is sliced once, not gathered per chain (4x the sampler's time).
    i = state.step if i is None else i
    sig, sig_next = problem.sigmas[i], problem.sigmas[i + 1]
    k_churn, k_sigma = jax.random.split(key)
    k_corr = jax.random.fold_in(key, 2)  # a third stream that leaves the first two as they were
    x = state.x.reshape(M, D)
    sigma_y = state.sigma_y
    zeta = _zeta(config, i.astype(x.dtype))

    if config.churn > 0:
        edm = config.edm
        gamma_max = min(config.churn / config.num_steps, math.sqrt(2.0) - 1.0)
        gamma = jnp.where((sig >= edm.S_min) & (sig <= edm.S_max), gamma_max, 0.0)
        sig_hat = sig * (1.0 + gamma)
        fresh = jnp.tensordot(problem.noise_chol, jax.random.normal(k_churn, (M, D), x.dtype), axes=1)
        x = x + edm.S_noise * jnp.sqrt(sig_hat**2 - sig**2) * fresh
    else:
        sig_hat = sig

    # The last step (to σ = 0) is Euler. One graph serves every step: the Heun correction is
    # always computed (at a harmless noise level on the last step) and then selected away, which
    # costs one extra denoiser call per chain but halves the compiled program.
    heun = sig_next > 0
    sig_2 = jnp.where(heun, sig_next, sig_hat)

    def den(z: Array, s: Array) -> Array:
        return denoise(z.reshape((M, *problem.core_shape)), s, problem.times_norm).reshape(M, D)

    if not isinstance(config.guidance, Reference):
        if isinstance(config.guidance, MomentMatching):
            warm = config.guidance.warm_start

            def estimate(z: Array, s: Array, guess: Array) -> tuple[Array, Array, Array]:
                return _mmps_estimate(denoise, z, s, sigma_y, zeta, problem, config, guess if warm else None)
        else:

            def estimate(z: Array, s: Array, guess: Array) -> tuple[Array, Array, Array]:
                return (*_fisher_estimate(denoise, z, s, sigma_y, zeta, problem, config), guess)

        d1, delta, v1 = estimate(x, sig_hat, state.cg_guess)
        slope = (x - d1) / sig_hat
        x_euler = x + (sig_next - sig_hat) * slope
        d2, _, v2 = estimate(x_euler, sig_2, v1)
        x_next = jnp.where(heun, x + (sig_next - sig_hat) * 0.5 * (slope + (x_euler - d2) / sig_2), x_euler)
        if config.corrector is not None:
            corrected = langevin_correct(
                k_corr, x_next, sig_2, lambda z: estimate(z, sig_2, v2)[0], problem.noise_chol, config.corrector,
            )
            x_next = jnp.where(heun, corrected, x_next)
        cg_guess = v2
        W_est = _to_cores(d1, problem)
    else:
        d1 = den(x, sig_hat)
        slope = (x - d1) / sig_hat
        x_euler = x + (sig_next - sig_hat) * slope
        d2 = den(x_euler, sig_2)
        x_heun = x + (sig_next - sig_hat) * 0.5 * (slope + (x_euler - d2) / sig_2)
        W_est = _to_cores(jnp.where(heun, 0.5 * (d1 + d2), d1), problem)
        # The public rule: no guidance after the final (Euler) step.
        delta = jnp.where(heun, zeta, 0.0) * _guidance_terms(W_est, sigma_y, problem, config)[0]
        x_next = jnp.where(heun, x_heun, x_euler) + delta
        cg_guess = state.cg_guess

    if _tweedie_sigma(problem, config):
        # the unguided estimate at the state: d1 = x̂0 + δ
        new_sigma_y = _update_sigma_tweedie(k_sigma, d1 - delta, sig_hat, sigma_y, i, problem, config)
    else:
        new_sigma_y = _update_sigma_y(k_sigma, W_est, sigma_y, i, problem, config)
    ok = jnp.all(jnp.isfinite(x_next)) & jnp.isfinite(new_sigma_y)
    first_bad = jnp.where(state.finite & ~ok, i, state.first_bad)
    new_state = GuidedState(
        x=x_next.reshape(state.x.shape), step=i + 1, sigma_y=new_sigma_y, finite=state.finite & ok,
        first_bad=first_bad, cg_guess=cg_guess,
    )
    info = GuidedInfo(
        noise_level=sig_hat, sigma_y=new_sigma_y, residual_rms=_residual_rms(W_est, problem), guidance_rms=_rms(delta)
    )
    return new_state, info


def step(
    key: PRNGKeyArray, state: GuidedState, denoise: Denoiser, problem: GuidedProblem, config: GuidedConfig
) -> tuple[GuidedState, GuidedInfo]:
    """One guided Heun step `sigmas[i] → sigmas[i+1]` (Euler on the last step, to σ = 0).

    With `config.infer_sigma`, σ_y is then updated from the step's clean estimate
    (`inference.noise.update_sigma`) once `i ≥ ceil(sigma_burn_in · num_steps)`.

    **Arguments:**

    - `key`: PRNG key of this step (churn noise and the σ_y update).
    - `state`: current `GuidedState` (`state.step < num_steps`).
    - `denoise`: `D(x (M, R..), sigma, t (M,)) -> (M, R..)`, normalised core units.
    - `problem`: from `prepare`; `config`: the `GuidedConfig` it was prepared with.

    **Returns:** `(new_state, info)`.
    """
    if not isinstance(config, GuidedConfig):
        raise bad_input("config", "a GuidedConfig", type(config).__name__)
    if not isinstance(problem, GuidedProblem):
        raise bad_input("problem", "a GuidedProblem from inference.guided.prepare", type(problem).__name__)
    if problem.sigmas.shape != (config.num_steps + 1,):
        raise bad_input("problem", f"a problem prepared with num_steps = {config.num_steps}",
                        f"{problem.sigmas.shape[0] - 1} steps")
    return _step(key, state, denoise, problem, config)


def _run_chain(
    key: PRNGKeyArray, denoise: Denoiser, problem: GuidedProblem, config: GuidedConfig, sigma_y: Array
) -> tuple[GuidedState, GuidedInfo]:
    k_init, k_steps = jax.random.split(key)
    state = init(k_init, problem, sigma_y)

    def body(state: GuidedState, i: Array) -> tuple[GuidedState, GuidedInfo]:
        return _step(jax.random.fold_in(k_steps, i), state, denoise, problem, config, i)

    return jax.lax.scan(body, state, jnp.arange(config.num_steps))


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


# --------------------------------------------------------------------------------------------
# Time grids


def union_times(
    output_times: Float[ArrayLike, " n_out"], obs_times: Float[ArrayLike, " n_obs"], *, rtol: float = TIME_RTOL
) -> tuple[Float[np.ndarray, " U"], Int[np.ndarray, " n_out"], Int[np.ndarray, " n_obs"]]:
    """Sorted union of the output time stamps and the observation time stamps.

    Times closer than `rtol × (span of output_times)` are merged (the same tolerance as
    `ObservationSet.to_padded`); a merged stamp takes the output time's value, so the output
    grid is reproduced exactly.

    **Arguments:**

    - `output_times`: `(n_out,)` distinct physical times at which the field is wanted.
    - `obs_times`: `(n_obs,)` physical times of the observations (repeats allowed).
    - `rtol`: relative merge tolerance (≥ 0).

    **Returns:** `(grid, output_index, obs_index)`: `grid (U,)` strictly increasing;
    `grid[output_index] == output_times` (up to order) and `grid[obs_index]` is within the
    tolerance of each `obs_times` entry.
    """

    def vector(x: Any, name: str) -> np.ndarray:
        try:
            a = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise bad_input(name, "a 1-D array of real times", x) from exc
        if a.ndim != 1:
            raise bad_input(name, "a 1-D array of times", a.shape)
        if not np.isfinite(a).all():
            raise bad_input(name, "finite times", a)
        return a

    out = vector(output_times, "output_times")
    obs = vector(obs_times, "obs_times")
    if out.size == 0:
        raise bad_input("output_times", "at least one time", out)
    if not (_is_number(rtol) and math.isfinite(rtol) and rtol >= 0):
        raise bad_input("rtol", "a finite number >= 0", rtol)
    # The tolerance scales with the output grid only: a far-away observation time must not
    # widen it until distinct output (or observation) times merge.
    span = float(out.max() - out.min())
    tol = rtol * (span if span > 0 else max(1.0, float(np.abs(out).max())))
    sorted_out = np.sort(out)
    gaps = np.diff(sorted_out)
    if (gaps <= tol).any():
        i = int(np.flatnonzero(gaps <= tol)[0])
        raise bad_input("output_times", "distinct times", f"{sorted_out[i]!r} and {sorted_out[i + 1]!r} coincide")
    # Observation stamps that match no output time, merged among themselves.
    extra = []
    for t in np.unique(obs):
        near_out = np.abs(sorted_out - t).min() <= tol
        if not near_out and (not extra or t - extra[-1] > tol):
            extra.append(t)
    grid = np.sort(np.concatenate([sorted_out, np.asarray(extra, dtype=np.float64)]))

    def locate(x: np.ndarray) -> np.ndarray:
        right = np.clip(np.searchsorted(grid, x), 0, grid.size - 1)
        left = np.clip(right - 1, 0, grid.size - 1)
        return np.where(np.abs(grid[left] - x) <= np.abs(grid[right] - x), left, right).astype(np.int64)

    out_idx = locate(out)
    obs_idx = locate(obs)
    return grid, out_idx, obs_idx

