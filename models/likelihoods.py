"""Observation likelihoods as objects: each owns its distribution, Fisher information and score.

`y ~ Likelihood(u, σ)` for a noise-free value `u` (the decoded field at a point) and a noise
level `σ` (normalised field units), parametrised so that `σ` is the standard deviation:

- `Gaussian()`: `N(u, σ²)`.
- `Laplace()`: `Laplace(u, b)` with `b = σ/√2`.
- `StudentT(df=4.0)`: `StudentT(df, u, σ)` (`σ` is the scale; the std is `σ √(df/(df-2))`).
- `PoissonExcess(offset, scale)`: shot noise on the excess over an offset `o`,
  `k = (y - o)/s ~ Poisson(λ)`, `λ = max((u - o)/s, 1e-6)`; no `σ` (`has_sigma` False): the
  noise level is set by `s` (`Var y = s (u - o)`). Distribution: `models.observation.PoissonExcess`.

Every consumer (observation model, guided sampler, σ updates, reports, calibration) calls the
methods here instead of comparing names. `name` is the old string (`"gaussian"`, `"laplace"`,
`"student_t"`, `"poisson"`), kept for serialisation (InferenceData attrs, JSON reports);
`as_likelihood` turns a name (the public API still accepts one) into an object, once, at the
boundary. The objects are Equinox modules with static fields only: hashable, usable as static
configuration under `jit`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from sdift_prob.errors import bad_input

__all__ = [
    "LIKELIHOODS",
    "SIGMA_LIKELIHOODS",
    "Likelihood",
    "Gaussian",
    "Laplace",
    "StudentT",
    "PoissonExcess",
    "as_likelihood",
    "likelihood_from_dict",
]

# Smallest Poisson rate: keeps log λ finite when the predicted mean falls to or below the offset.
POISSON_RATE_FLOOR = 1e-6
# A value this many counts below the offset is count 0 rounded, not bad data.
POISSON_COUNT_TOLERANCE = 1e-3


def _finite_number(value: Any, positive: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        return False
    return math.isfinite(value) and (value > 0 if positive else True)


class Likelihood(eqx.Module):
    """Base class of the observation likelihoods (see the module docstring).

    Class attributes: `name` (the serialised name), `has_sigma` (whether the noise level is a
    scale σ that can be fixed, given per point or inferred), `conjugate` (Gaussian noise: σ has a
    conjugate conditional and the linear-Gaussian marginal likelihood is closed form), `robust`
    (heavy tails: a draw of σ from residuals is an over-estimate to be checked).
    """

    name: ClassVar[str] = ""
    has_sigma: ClassVar[bool] = True
    conjugate: ClassVar[bool] = False
    robust: ClassVar[bool] = False

    def distribution(self, loc: Array, sigma: Array | None) -> Any:
        """The NumPyro distribution of `y` given the noise-free value `loc` and noise level `sigma`."""
        raise NotImplementedError

    def scipy_distribution(self, loc: Any, sd: Any) -> Any:
        """The same noise model as a frozen `scipy.stats` distribution (float64, NumPy)."""
        raise bad_input("likelihood", "a likelihood with a noise scale (gaussian, laplace, student_t)", self.name)

    def pad_value(self) -> float:
        """A stand-in value inside the support for padded (masked-out) points."""
        return 0.0

    def check_values(self, values: np.ndarray, mask: np.ndarray) -> None:
        """Raise `InputError` (argument `padded.values`) for concrete observations outside the support."""

    def fisher(self, sigma: ArrayLike | None = None, *, mean: ArrayLike | None = None) -> Array:
        """Fisher information of one observation about its mean `u`, per point (no validation)."""
        raise NotImplementedError

    def reference_fisher(self, values: Array, sigma: ArrayLike) -> Array:
        """The Fisher information the guided sampler preconditions with (`σ` = `sigma`): at the
        noise level for a scale likelihood, at the observed value for Poisson."""
        return self.fisher(sigma)

    def log_prob(self, y: Array, loc: Array, sigma: Array | None) -> Array:
        """Pointwise `log p(y | loc, σ)`."""
        return self.distribution(loc, sigma).log_prob(y)

    def score(self, loc: Array, y: Array, sigma: Array | None) -> Array:
        """Pointwise score `∂ log p(y | u) / ∂u` at `u = loc` (autodiff of `log_prob`)."""
        return jax.grad(lambda u: jnp.sum(self.log_prob(y, u, sigma)))(loc)

    def irls(self, score: Array, residual: Array, fisher: Array, *, message: bool = False) -> tuple[Array, Array]:
        """Score and IRLS curvature weight per point, from the score, the residual `y - u` and the
        Fisher information (`inference.guided`).

        The weight is `score / residual`, floored at 0 and capped at the Fisher information (the
        cap binds where the weight grows without bound near `r = 0`, Laplace); far from the data
        it is far below the Fisher information for robust likelihoods, so a step is a weighted
        least-squares move towards the data rather than a Fisher-scoring step of size ~σ.
        `message`: the point is seen from a GP prediction of MPDPS (same rule here).
        """
        return score, jnp.minimum(self._raw_weight(score, residual, fisher), fisher)

    @staticmethod
    def _raw_weight(score: Array, residual: Array, fisher: Array) -> Array:
        tiny = jnp.finfo(residual.dtype).tiny ** 0.5
        safe_r = jnp.where(jnp.abs(residual) > tiny, residual, 1.0)
        return jnp.maximum(jnp.where(jnp.abs(residual) > tiny, score / safe_r, fisher), 0.0)

    def normalised(self, normalizer: Any) -> Likelihood:
        """The same likelihood for normalised field values `(y - mean)/std` (`normalizer.forward`,
        `normalizer.std`); σ-likelihoods are unchanged (σ is passed in the units of `y`)."""
        return self

    @classmethod
    def _from_params(cls, **params: Any) -> Likelihood:
        """Build from the old keyword parameters (those it does not have are ignored)."""
        return cls()

    def params(self) -> dict[str, float]:
        """The parameters under the old keyword names (`df`, `poisson_offset`, `poisson_scale`)."""
        return {}

    def explicit_params(self) -> dict[str, float]:
        """`params()` without those at their default values."""
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.default is not dataclasses.MISSING}
        return {k: v for k, v in self.params().items() if not (k in defaults and defaults[k] == v)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: `{"name": ..., **params}`."""
        return {"name": self.name, **self.params()}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Likelihood:
        """Inverse of `to_dict`."""
        return likelihood_from_dict(d)


class Gaussian(Likelihood):
    """`y ~ N(u, σ²)`."""

    name: ClassVar[str] = "gaussian"
    conjugate: ClassVar[bool] = True

    def distribution(self, loc: Array, sigma: Array | None) -> Any:
        import numpyro.distributions as dist

        return dist.Normal(loc, sigma)

    def scipy_distribution(self, loc: Any, sd: Any) -> Any:
        from scipy import stats

        return stats.norm(loc, sd)

    def fisher(self, sigma: ArrayLike | None = None, *, mean: ArrayLike | None = None) -> Array:
        """`1/σ²`."""
        s = jnp.asarray(sigma)
        return 1.0 / (s * s)


class Laplace(Likelihood):
    """`y ~ Laplace(u, b)`, `b = σ/√2` (σ is the standard deviation)."""

    name: ClassVar[str] = "laplace"

    def distribution(self, loc: Array, sigma: Array | None) -> Any:
        import numpyro.distributions as dist

        return dist.Laplace(loc, sigma / math.sqrt(2.0))

    def scipy_distribution(self, loc: Any, sd: Any) -> Any:
        from scipy import stats

        return stats.laplace(loc, np.asarray(sd) / math.sqrt(2.0))

    def fisher(self, sigma: ArrayLike | None = None, *, mean: ArrayLike | None = None) -> Array:
        """`1/b² = 2/σ²`."""
        s = jnp.asarray(sigma)
        return 2.0 * (1.0 / (s * s))


class StudentT(Likelihood):
    """`y ~ StudentT(df, u, σ)` (σ the scale). **Fields:** `df` > 0 (default 4)."""

    df: float = eqx.field(static=True, default=4.0)
    name: ClassVar[str] = "student_t"
    robust: ClassVar[bool] = True

    def __check_init__(self) -> None:
        if not _finite_number(self.df, positive=True):
            raise bad_input("df", "a positive finite number of degrees of freedom", self.df)

    def distribution(self, loc: Array, sigma: Array | None) -> Any:
        import numpyro.distributions as dist

        return dist.StudentT(self.df, loc, sigma)

    def scipy_distribution(self, loc: Any, sd: Any) -> Any:
        from scipy import stats

        return stats.t(float(self.df), loc, sd)

    def fisher(self, sigma: ArrayLike | None = None, *, mean: ArrayLike | None = None) -> Array:
        """`(df + 1) / ((df + 3) σ²)`."""
        s = jnp.asarray(sigma)
        return (self.df + 1.0) / (self.df + 3.0) * (1.0 / (s * s))

    @classmethod
    def _from_params(cls, *, df: float | None = None, **_: Any) -> StudentT:
        return cls(4.0 if df is None else df)

    def params(self) -> dict[str, float]:
        return {"df": self.df}


class PoissonExcess(Likelihood):
    """Shot noise on the excess over `offset`: `(y - o)/s ~ Poisson(max((u - o)/s, 1e-6))`.

    **Fields:** `offset` `o` (finite) and `scale` `s` > 0, in the units of `y` (normalised
    field units inside the samplers). No σ (`has_sigma` False).
    """

    offset: float = eqx.field(static=True)
    scale: float = eqx.field(static=True)
    name: ClassVar[str] = "poisson"
    has_sigma: ClassVar[bool] = False

    def __check_init__(self) -> None:
        if not _finite_number(self.offset, positive=False):
            raise bad_input("poisson_offset", "a finite number (normalised units) for likelihood='poisson'",
                            self.offset)
        if not _finite_number(self.scale, positive=True):
            raise bad_input("poisson_scale", "a positive finite number (normalised units) for likelihood='poisson'",
                            self.scale)

    def distribution(self, loc: Array, sigma: Array | None = None) -> Any:
        from .observation import PoissonExcess as PoissonExcessDistribution

        return PoissonExcessDistribution(loc, self.offset, self.scale)

    def pad_value(self) -> float:
        return self.offset + self.scale

    def check_values(self, values: np.ndarray, mask: np.ndarray) -> None:
        # Counts below zero are bad data; a value a rounding step under the offset (float32
        # normalisation of a count-0 point) is count 0.
        below = mask & ((values - self.offset) / self.scale < -POISSON_COUNT_TOLERANCE)
        if below.any():
            i, j = (int(a[0]) for a in np.nonzero(below))
            raise bad_input(
                "padded.values",
                f"values >= poisson_offset = {self.offset} for likelihood='poisson'",
                f"values[{i}, {j}] = {values[i, j]}",
            )

    def fisher(self, sigma: ArrayLike | None = None, *, mean: ArrayLike | None = None) -> Array:
        """`1/(s² λ) = 1/(s (u - o))` at `mean = u` (λ floored as in the distribution); `1/Var[y]`."""
        if mean is None:
            raise bad_input("mean", "the predicted mean u (the Poisson Fisher information depends on it)", mean)
        lam = jnp.maximum((jnp.asarray(mean) - self.offset) / self.scale, POISSON_RATE_FLOOR)
        return 1.0 / (self.scale * self.scale * lam)

    def reference_fisher(self, values: Array, sigma: ArrayLike) -> Array:
        # At the observed count, floored at one count, so empty counts do not freeze the step.
        return self.fisher(mean=jnp.maximum(values, self.offset + self.scale))

    def irls(self, score: Array, residual: Array, fisher: Array, *, message: bool = False) -> tuple[Array, Array]:
        """Own points: the exact Poisson weight (its Fisher information at the current mean,
        `1/(s² λ)`), not capped. Messages (`message=True`): a GP prediction from the other frames
        can put a rate near zero under a large count, where score and weight grow like 1/λ (the
        step then leaves the span the frame's Gram preconditions: ocean, 1% points, VRMSE 0.06 ->
        1.0); they use the Gaussian approximation at the observed count instead (weight capped at
        `fisher`, score = weight x residual); far above the data the exact weight is smaller and kept."""
        w = self._raw_weight(score, residual, fisher)
        if not message:
            return score, w
        w = jnp.minimum(w, fisher)
        return w * residual, w

    @classmethod
    def _from_params(cls, *, poisson_offset: float | None = None, poisson_scale: float | None = None,
                     **_: Any) -> PoissonExcess:
        if poisson_offset is None or poisson_scale is None:
            raise bad_input("poisson_offset/poisson_scale", "both given for likelihood='poisson'",
                            (poisson_offset, poisson_scale))
        return cls(poisson_offset, poisson_scale)

    def normalised(self, normalizer: Any) -> PoissonExcess:
        return PoissonExcess(float(normalizer.forward(float(self.offset))), float(self.scale) / normalizer.std)

    def params(self) -> dict[str, float]:
        return {"poisson_offset": self.offset, "poisson_scale": self.scale}


_CLASSES: dict[str, type[Likelihood]] = {c.name: c for c in (Gaussian, Laplace, StudentT, PoissonExcess)}
LIKELIHOODS: tuple[str, ...] = tuple(_CLASSES)
SIGMA_LIKELIHOODS: tuple[str, ...] = tuple(n for n, c in _CLASSES.items() if c.has_sigma)


def as_likelihood(
    likelihood: Likelihood | str,
    *,
    df: float | None = None,
    poisson_offset: float | None = None,
    poisson_scale: float | None = None,
) -> Likelihood:
    """A `Likelihood` from an object (returned as is) or an old name with its parameters.

    Names: `"gaussian"`, `"laplace"`, `"student_t"` (`df`, default 4), `"poisson"`
    (`poisson_offset`, `poisson_scale`, both required). Parameters that the named likelihood does
    not have are ignored (as the observation model always did with `df`); with an object they
    must be None.

    **Raises:** `InputError` naming the bad argument.
    """
    if isinstance(likelihood, Likelihood):
        given = {k: v for k, v in (("df", df), ("poisson_offset", poisson_offset), ("poisson_scale", poisson_scale))
                 if v is not None}
        if given:
            raise bad_input("likelihood", "a name when its parameters are passed separately (an object carries "
                            f"its own: {likelihood!r})", given)
        return likelihood
    if not isinstance(likelihood, str) or likelihood not in _CLASSES:
        raise bad_input("likelihood", f"a models.likelihoods.Likelihood or one of {LIKELIHOODS}", likelihood)
    return _CLASSES[likelihood]._from_params(df=df, poisson_offset=poisson_offset, poisson_scale=poisson_scale)


def likelihood_from_dict(d: dict[str, Any]) -> Likelihood:
    """Inverse of `Likelihood.to_dict`."""
    if not isinstance(d, dict) or "name" not in d:
        raise bad_input("d", "a dict with 'name' (from Likelihood.to_dict)", d)
    params = {k: v for k, v in d.items() if k != "name"}
    unknown = set(params) - {"df", "poisson_offset", "poisson_scale"}
    if unknown:
        raise bad_input("d", "only the keys name, df, poisson_offset, poisson_scale", sorted(unknown))
    return as_likelihood(d["name"], **params)
