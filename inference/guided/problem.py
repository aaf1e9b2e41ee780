"""One posterior's fixed inputs: `GuidedProblem` and `prepare`, which validates them and precomputes
what every step needs (Karras schedule, MPDPS leave-one-out weights, the `"fisher"` rule's
eigendecompositions, the MMPS preconditioner's anchors).

Units: the sampler state `x` is in normalised core units, `W = core_mean + core_std · x` in FTM
core units; observation values and σ_y are in normalised field units. The size limits below
(`MAX_PRECONDITIONED_POINTS`, ...) are read from this module when `prepare` runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from models.observation import check_observation_inputs
from sdift_prob.data.observations import PaddedObservations
from sdift_prob.errors import NumericalError, bad_input
from sdift_prob.gp import loo_weights
from sdift_prob.gpsd.edm import karras_sigmas

from ..constraints import Constraint, FieldDecoder, bind_constraints
from ..guidance import Fisher, MomentMatching, Reference
from ..preconditioners import PriorSpectrum, anchor_profiles
from .config import GuidedConfig, _is_number


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
