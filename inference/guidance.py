"""Guidance rules of the guided sampler, as small objects passed in `GuidedConfig.guidance`.

A rule says how the data enter each denoiser estimate. Three are offered:

- `MomentMatching(cg_steps)` (MMPS, Rozet et al. 2024): the Gaussian update of the denoiser's
  estimate with the *Tweedie covariance* of the whole sequence. With GP-correlated diffusion
  noise `x = x0 + σ (L ⊗ I) ε` and `Σ = L Lᵀ`, Tweedie's second-order formula gives

      V = Cov[x0 | x] = σ² J_D (Σ ⊗ I),          J_D = ∂D/∂x,

  and for observations `y = A x0 + e`, `e ~ N(0, Σ_y)`, the moment-matched posterior estimate is

      x̂0' = x̂0 + V Aᵀ (Σ_y + A V Aᵀ)⁻¹ (y − A x̂0).

  This is the exact conjugate update under the Gaussian approximation of `p(x0 | x)`; frames
  without data move through V's coupling of frames, so no message passing is needed (messages
  on top of it count the data twice). The bracket is solved by conjugate gradients in the
  observation space, each iteration one Jacobian-vector product of the denoiser. Non-Gaussian
  likelihoods enter in their Gauss-Newton (IRLS) form: `Σ_y = diag(1/w)` and the residual
  `score / w`, with `w` the IRLS weight of each point.
- `Fisher()`: the isotropic Tweedie approximation `V = r² I`, `r² = σ² σ_d²/(σ² + σ_d²)`, with
  a per-frame Gauss-Newton step (exact only for a prior that is white in time and space);
  `GuidedConfig.through_denoiser` pulls its correction back through the denoiser.
- `Reference()`: the public SDIFT code's rule (an unnormalised gradient step after each Heun step).

Strings `"mmps"`, `"fisher"`, `"reference"` are accepted wherever a rule is and mean the rule
with its defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from sdift_prob.errors import bad_input

__all__ = ["GuidanceRule", "MomentMatching", "Fisher", "Reference", "as_guidance_rule", "moment_matching_update", "moment_matching_solve", "ExtraGroup", "isotropic_tweedie_variance", "safe_ratio"]


class GuidanceRule(eqx.Module):
    """Base class of the guidance rules (see the module docstring)."""

    @property
    def name(self) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name}


class MomentMatching(GuidanceRule):
    """MMPS: Gaussian update with the Tweedie covariance, solved by `cg_steps` CG iterations
    (each one JVP of the denoiser), preconditioned unless `precondition=False`
    (`inference.preconditioners`): over all points up to
    `inference.guided.MAX_PRECONDITIONED_POINTS` padded points, else per frame up to
    `MAX_PRECONDITIONED_FRAME` per frame, with up to `anchors` profiles of the Tweedie covariance
    along the prior's principal axes (when the prior's spectrum is given). The default, 1, is the
    isotropic preconditioner: `anchors=4` halves the posterior-mean error on the closed-form
    exactness bench, but with the learned ocean prior and data 1000x more precise than its noise
    the posterior mean then missed the observations by 6.5 noise stds (the self-check refused
    it); `benchmarks/RESULTS.md` has both figures.
    `cg_steps` trades cost for exactness; `benchmarks/exactness.py` measures the curve.
    `warm_start` (default) starts each solve from the previous one's solution (the sampler
    carries it from one estimate to the next, across noise levels): the system changes little
    between neighbouring levels, so the iterations continue rather than restart. It costs one
    JVP per solve; 2 warm iterations cost what 3 cold ones do and halve the posterior-mean error
    on the exactness bench (0.09-0.14 vs 0.19-0.23 of the posterior's shift)."""

    cg_steps: int = eqx.field(static=True, default=2)
    precondition: bool = eqx.field(static=True, default=True)
    anchors: int = eqx.field(static=True, default=1)
    warm_start: bool = eqx.field(static=True, default=True)

    def __check_init__(self) -> None:
        v = self.cg_steps
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise bad_input("cg_steps", "an integer >= 1", v)
        if not isinstance(self.precondition, bool):
            raise bad_input("precondition", "a bool", self.precondition)
        if isinstance(self.anchors, bool) or not isinstance(self.anchors, int) or self.anchors < 1:
            raise bad_input("anchors", "an integer >= 1", self.anchors)
        if not isinstance(self.warm_start, bool):
            raise bad_input("warm_start", "a bool", self.warm_start)

    @property
    def name(self) -> str:
        return "mmps"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "cg_steps": self.cg_steps, "precondition": self.precondition,
                "anchors": self.anchors, "warm_start": self.warm_start}


class Fisher(GuidanceRule):
    """Isotropic Tweedie covariance `r² I` with a per-frame Gauss-Newton step (the paper-era default)."""

    @property
    def name(self) -> str:
        return "fisher"


class Reference(GuidanceRule):
    """The public SDIFT code's unnormalised gradient step after each Heun step."""

    @property
    def name(self) -> str:
        return "reference"


_BY_NAME = {"mmps": MomentMatching, "fisher": Fisher, "reference": Reference}


def as_guidance_rule(rule: Any) -> GuidanceRule:
    """A `GuidanceRule` from a rule or its name (`"mmps"`, `"fisher"`, `"reference"`)."""
    if isinstance(rule, GuidanceRule):
        return rule
    if isinstance(rule, str) and rule in _BY_NAME:
        return _BY_NAME[rule]()
    raise bad_input("guidance", f"a GuidanceRule (MomentMatching(), Fisher(), Reference()) or one of {tuple(_BY_NAME)}",
                    rule)


def safe_ratio(num: Array, den: Array) -> Array:
    """`num / den` where `den > 0`, else 0 (no NaN gradient through the masked branch)."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def isotropic_tweedie_variance(sigma: Array, sigma_data: float) -> Array:
    """`r² = σ² σ_d² / (σ² + σ_d²)`: `Cov[x0 | x]` at noise level σ for a prior `N(0, σ_d² I)`
    under white noise — the Fisher rule's covariance, and the scale of the MMPS preconditioner
    and of the σ update's covariance approximation."""
    return sigma**2 * sigma_data**2 / (sigma**2 + sigma_data**2)


def _dot(a: Any, b: Any) -> Array:
    """`Σ a·b` over the leaves of two pytrees of the same structure (one array: `jnp.sum(a * b)`)."""
    terms = [jnp.sum(x * y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def _pcg(
    op: Callable[[Any], tuple[Any, Array]], precond: Callable[[Any], Any], b: Any, steps: int, guess: Any = None,
) -> tuple[Array, Any]:
    """`steps` preconditioned conjugate-gradient iterations for `op(v)[0] = b` (op and
    `precond` ≈ op⁻¹ symmetric positive definite; `v`, `b` arrays or pytrees of them), from
    `v = guess` (one more application of `op`) or from 0. `op` also returns a linear image `T p`
    of its argument; `Σ α_k T p_k = T v` is accumulated alongside the iterate, which saves the
    denoiser JVP that computing `T v` afterwards would cost. Returns `(T v, v)`."""
    tmap = jax.tree.map

    def body(carry: tuple[Any, ...], _: None) -> tuple[tuple[Any, ...], None]:
        v, tv, r, p, rz, going = carry
        ap, tp = op(p)
        pap = _dot(p, ap)
        # op = I + S with S ⪰ 0 in theory; a learned denoiser's Jacobian is neither symmetric nor
        # positive, and a direction with pᵀ op p < pᵀ p (negative curvature of S) would send CG
        # far along it. Stop there, keeping the iterate so far (truncated CG, as Steihaug's).
        going = going & (pap >= _dot(p, p))
        alpha = jnp.where(going, safe_ratio(rz, pap), 0.0)
        v = tmap(lambda v_, p_: v_ + alpha * p_, v, p)
        r = tmap(lambda r_, ap_: r_ - alpha * ap_, r, ap)
        z = precond(r)
        rz_new = _dot(r, z)
        beta = safe_ratio(rz_new, rz)
        return (v, tv + alpha * tp, r, tmap(lambda z_, p_: z_ + beta * p_, z, p), rz_new, going), None

    if guess is None:
        _, t_shape = jax.eval_shape(op, b)
        v, tv, r = tmap(jnp.zeros_like, b), jnp.zeros(t_shape.shape, t_shape.dtype), b
    else:
        a0, tv = op(guess)
        v, r = guess, tmap(jnp.subtract, b, a0)
    z = precond(r)
    init = (v, tv, r, z, _dot(r, z), jnp.array(True))
    (v, tv, *_), _ = jax.lax.scan(body, init, None, length=steps)
    return tv, v


class ExtraGroup(NamedTuple):
    """Observations beyond the frames' points, given as a linear operator (e.g. a constraint's
    residual linearised at the estimate, `inference.constraints`): `forward: (M, D) -> pytree`,
    `adjoint: pytree -> (M, D)` its transpose, `residual` (pytree, the pseudo-observation minus
    the prediction at x̂0) and `weight` (pytree of precisions broadcastable to the residual)."""

    forward: Callable[[Array], Any]
    adjoint: Callable[[Any], Array]
    residual: Any
    weight: Any


def moment_matching_update(
    jvp: Callable[[Array], Array],
    sigma: Float[Array, ""],
    noise_cov: Float[Array, "M M"],
    design: Float[Array, "K M P D"],
    mixing: Float[Array, "K M M"],
    residual: Float[Array, "K M P"],
    weight: Float[Array, "K M P"],
    cg_steps: int,
    precond: Callable[[Array], Array] | None = None,
    extra: ExtraGroup | None = None,
) -> Float[Array, "M D"]:
    """The moment-matched correction `x̂0' − x̂0 = V Bᵀ (W⁻¹ + B V Bᵀ)⁻¹ r̃` (CG from zero);
    `moment_matching_solve` has the arguments and also returns the solution."""
    return moment_matching_solve(jvp, sigma, noise_cov, design, mixing, residual, weight, cg_steps, precond, extra)[0]


def moment_matching_solve(
    jvp: Callable[[Array], Array],
    sigma: Float[Array, ""],
    noise_cov: Float[Array, "M M"],
    design: Float[Array, "K M P D"],
    mixing: Float[Array, "K M M"],
    residual: Float[Array, "K M P"],
    weight: Float[Array, "K M P"],
    cg_steps: int,
    precond: Callable[[Array], Array] | None = None,
    extra: ExtraGroup | None = None,
    guess: Float[Array, "K M P"] | None = None,
) -> tuple[Float[Array, "M D"], Float[Array, "K M P"]]:
    """The moment-matched correction `x̂0' − x̂0 = V Bᵀ (W⁻¹ + B V Bᵀ)⁻¹ r̃` and the whitened
    solution `v` of the points' system.

    The observations come in `K` groups (the frames' own points, and for message passing the
    same points predicted from the other frames); group k predicts point p of frame l as
    `Σ_j mixing[k, l, j] design[k, l, p] · x_j` (mixing = I for the own points).

    **Arguments:**

    - `jvp`: `v ↦ J_D v`, the denoiser's Jacobian at the state (`jax.linearize`), `(M, D) -> (M, D)`.
    - `sigma`: the state's noise level; `noise_cov`: `Σ` over the frames.
    - `design`: design rows in state units (`core_std · A`).
    - `residual`: pseudo-residuals `score / w` at x̂0 (`y − A x̂0` for Gaussian noise).
    - `weight`: the points' precisions `w` (IRLS weights; 0 at padding).
    - `cg_steps`: CG iterations.
    - `precond`: an SPD approximation of the whitened system's inverse, `(K, M, P) -> (K, M, P)`
      (e.g. a bound `inference.preconditioners.AnchoredPreconditioner`); None: plain CG.
    - `extra`: an `ExtraGroup` of linear pseudo-observations (constraints) solved jointly with
      the points (the preconditioner acts on the points only); None: the points alone.
    - `guess`: a starting `v` for the points' system (e.g. the solution at the previous noise
      level, which the sampler carries: the system changes little from one level to the next,
      so CG starts close instead of from zero, for one more JVP); None: start from zero.

    **Returns:** `(correction (M, D), v (K, M, P))`.

    The system is solved in whitened form, `(I + W^½ B V Bᵀ W^½) v = W^½ r̃`, whose spectrum is
    bounded below by 1 whatever the noise level, then `x̂0' − x̂0 = V Bᵀ W^½ v`.
    """
    sw = jnp.sqrt(weight)

    def cov(v: Array) -> Array:  # V v = σ² J_D (Σ v): Σ acts along the frames
        return sigma**2 * jvp(noise_cov @ v)

    def adjoint(u: Array) -> Array:  # Bᵀ u: (K, M, P) -> (M, D)
        per_frame = jnp.einsum("kmpd,kmp->kmd", design, u)
        return jnp.einsum("klj,kld->jd", mixing, per_frame)

    def forward(v: Array) -> Array:  # B v: (M, D) -> (K, M, P)
        mixed = jnp.einsum("klj,jd->kld", mixing, v)
        return jnp.einsum("kmpd,kmd->kmp", design, mixed)

    def op(v: Array) -> tuple[Array, Array]:
        cv = cov(adjoint(sw * v))
        return v + sw * forward(cv), cv

    if extra is None:
        return _pcg(op, (lambda r: r) if precond is None else precond, sw * residual, cg_steps, guess)

    tmap = jax.tree.map
    esw = tmap(lambda w, r: jnp.broadcast_to(jnp.sqrt(w), r.shape), extra.weight, extra.residual)

    def op_joint(v: tuple[Array, Any]) -> tuple[tuple[Array, Any], Array]:
        vo, ve = v
        cv = cov(adjoint(sw * vo) + extra.adjoint(tmap(jnp.multiply, esw, ve)))
        return (vo + sw * forward(cv), tmap(lambda a, s, f: a + s * f, ve, esw, extra.forward(cv))), cv

    def precond_joint(r: tuple[Array, Any]) -> tuple[Array, Any]:
        return (r[0] if precond is None else precond(r[0])), r[1]

    rhs = (sw * residual, tmap(jnp.multiply, esw, extra.residual))
    # The constraints' part restarts from zero: their linearisation point moves with x̂0.
    start = None if guess is None else (guess, tmap(jnp.zeros_like, rhs[1]))
    delta, (v, _) = _pcg(op_joint, precond_joint, rhs, cg_steps, start)
    return delta, v
