"""Physical constraints on the decoded field, used by the guided sampler like observations (issue 19).

A constraint is a residual function of the decoded frames that should be ≈ 0, with a Gaussian
model error of std `scale` (and an optional `weight`, a precision multiplier):

    log φ(frames) = −½ · weight · Σ (residual(frames, times, coords) / scale)²

- `Residual(fn, scale)`: any user function `fn(frames, times, coords)` of the decoded frames
  `(M, I_1, .., I_K)` (physical units), their physical times `(M,)` and grid coordinates
  (K arrays) — the analyst's own physics.
- `Bounds(lo, hi, scale)`: soft range, zero inside `[lo, hi]`, linear distance outside.
- `Monotone(axis, increasing, scale)`: soft monotonicity along one space axis (e.g. density
  increasing with depth), the violating part of each neighbouring difference.
- `Dynamics(step_fn, dt, scale)`: weak-constraint consistency `frame(t_{j+1}) ≈ Φ_Δt(frame(t_j))`
  for a differentiable JAX solver step `step_fn(frame, dt) -> frame`; a gap `t_{j+1} − t_j` is
  `round(gap / dt)` solver steps (irregular gaps work; a gap below `dt / 2` is zero steps).

Each constraint is a plain function of the decoded field: `log_potential(frames, times, coords)`
is a JAX scalar, and `factor(frames, times, coords, name)` puts it in a NumPyro model as
`numpyro.factor`. The guided sampler (`inference.guided`) uses the same residuals: with
`MomentMatching` guidance each constraint is an extra linearised observation group of the
moment-matched update (residual linearised at the denoiser's estimate by a JVP, its adjoint by
transposition), which is the exact conjugate update for a linear residual; with `Fisher`
guidance a Gauss-Newton step along the potential's gradient with the isotropic Tweedie
variance. Decoding goes through `FieldDecoder`, the FTM on a grid (affine in the cores).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from sdift_prob.errors import InputError, bad_input
from sdift_prob.ftm.tucker import basis_matrices

__all__ = ["Constraint", "Residual", "Bounds", "Monotone", "Dynamics", "FieldDecoder", "log_potential", "constraint_factor",
           "bind_constraints"]


def _finite_number(name: str, value: Any, *, positive: bool) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or (float(value) <= 0 if positive else float(value) < 0):
        raise bad_input(name, f"a finite number {'> 0' if positive else '>= 0'}", value)
    return float(value)


# --------------------------------------------------------------------------------------------
# Decoding


class FieldDecoder(eqx.Module):
    """The FTM on a grid as an affine map of the cores: `frames = offset + scale · W ×_k F_k`.

    **Fields:** `bases`: K basis matrices `F_k (I_k, R_k)`; `coords`: K grid coordinate arrays
    `(I_k,)` (physical); `offset`, `scale`: normalised → physical field units
    (`normalizer.mean`, `normalizer.std`; 0 and 1 to stay normalised); `dims`: the names of the
    space dims. `__call__(cores (..., M, R_1.., R_K)) -> (..., M, I_1, .., I_K)`.
    """

    bases: tuple[Array, ...]
    coords: tuple[Array, ...]
    offset: float = eqx.field(static=True, default=0.0)
    scale: float = eqx.field(static=True, default=1.0)
    dims: tuple[str, ...] = eqx.field(static=True, default=())

    def __check_init__(self) -> None:
        if not isinstance(self.bases, tuple) or not self.bases:
            raise bad_input("bases", "a non-empty tuple of basis matrices (I_k, R_k)", type(self.bases).__name__)
        if not isinstance(self.coords, tuple) or len(self.coords) != len(self.bases):
            raise bad_input("coords", f"a tuple of {len(self.bases)} grid coordinate arrays", self.coords)
        for k, (b, c) in enumerate(zip(self.bases, self.coords)):
            if getattr(b, "ndim", None) != 2:
                raise bad_input(f"bases[{k}]", "a 2-D basis matrix (I_k, R_k)", getattr(b, "shape", b))
            if getattr(c, "shape", None) != (b.shape[0],):
                raise bad_input(f"coords[{k}]", f"shape ({b.shape[0]},) matching bases[{k}]", getattr(c, "shape", c))
        if isinstance(self.offset, bool) or not isinstance(self.offset, (int, float)) or not math.isfinite(self.offset):
            raise bad_input("offset", "a finite number", self.offset)
        _finite_number("scale", self.scale, positive=True)

    @classmethod
    def from_ftm(cls, model: Any, grids: Sequence[ArrayLike], normalizer: Any = None) -> FieldDecoder:
        """The decoder of a fitted `FunctionalTucker` on `grids` (K 1-D physical coordinate
        arrays), in physical units with `normalizer` (an `sdift_prob.data.fields.Normalizer`),
        else normalised units."""
        bases = basis_matrices(model, grids)
        coords = tuple(jnp.asarray(np.asarray(g, np.float64), bases[0].dtype) for g in grids)
        off, sc = (0.0, 1.0) if normalizer is None else (float(normalizer.mean), float(normalizer.std))
        return cls(bases=bases, coords=coords, offset=off, scale=sc, dims=tuple(model.space_dims))

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(int(b.shape[1]) for b in self.bases)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(int(b.shape[0]) for b in self.bases)

    def __call__(self, cores: Float[Array, "*batch M *R"]) -> Float[Array, "*batch M *I"]:
        K = len(self.bases)
        ranks = "abcdefgh"[:K]
        grid = "ijklmnop"[:K]
        sub = f"...{ranks}," + ",".join(g + r for g, r in zip(grid, ranks)) + f"->...{grid}"
        return self.offset + self.scale * jnp.einsum(sub, cores, *self.bases)

    def to_dict(self) -> dict[str, Any]:
        return {"grid_shape": list(self.grid_shape), "dims": list(self.dims), "offset": self.offset,
                "scale": self.scale}


# --------------------------------------------------------------------------------------------
# Constraints


class Constraint(eqx.Module):
    """Base class: a residual of the decoded frames with a Gaussian model error.

    Subclasses have the fields `scale` (model error std, physical field units of the residual,
    > 0) and `weight` (precision multiplier ≥ 0; 0 switches the constraint off: the sampler then
    runs exactly as without it) and implement `residual`.
    """

    def residual(self, frames: Array, times: Array, coords: tuple[Array, ...]) -> Array:
        """Residual array (any shape) that should be ≈ 0."""
        raise NotImplementedError

    def bind(self, frames: Array, times: np.ndarray, coords: tuple[Array, ...] = ()) -> Constraint:
        """This constraint checked against example frames `(M, I..)`, the concrete times `(M,)`
        and grid coordinates it will see, with whatever it precomputes from them (e.g. solver steps per gap)."""
        return self

    @property
    def one_sided(self) -> bool:
        """True for inequality constraints (residual zero on a whole region, e.g. `Bounds`,
        `Monotone`): the moment-matching rule applies them by a local Gauss-Newton step instead
        of through the Tweedie covariance (`inference.guided`)."""
        return False

    @property
    def precision(self) -> float:
        return float(self.weight) / float(self.scale) ** 2  # type: ignore[attr-defined]

    def log_potential(self, frames: Array, times: Array, coords: tuple[Array, ...] = ()) -> Array:
        """`−½ weight Σ (residual / scale)²`, a JAX scalar (differentiable in `frames`)."""
        r = self.residual(frames, times, coords)
        return -0.5 * self.precision * jnp.sum(r**2)

    def factor(self, frames: Array, times: Array, coords: tuple[Array, ...] = (), name: str = "constraint") -> Array:
        """Add `log_potential` to the enclosing NumPyro model as `numpyro.factor(name, ...)`;
        returns the potential."""
        import numpyro

        value = self.log_potential(frames, times, coords)
        numpyro.factor(name, value)
        return value

    def to_dict(self) -> dict[str, Any]:
        return {"name": type(self).__name__, "scale": float(self.scale),  # type: ignore[attr-defined]
                "weight": float(self.weight)}  # type: ignore[attr-defined]


def _check_common(c: Any) -> None:
    _finite_number("scale", c.scale, positive=True)
    _finite_number("weight", c.weight, positive=False)


def _check_output(argument: str, out: Any, shape: tuple[int, ...] | None, what: str) -> Array:
    if not isinstance(out, (jax.Array, np.ndarray)) or not jnp.issubdtype(jnp.asarray(out).dtype, jnp.floating):
        raise bad_input(argument, f"{what} returning a floating-point array", type(out).__name__)
    if shape is not None and tuple(out.shape) != shape:
        raise bad_input(argument, f"{what} returning an array of shape {shape} (the frame's)", tuple(out.shape))
    if not bool(jnp.all(jnp.isfinite(out))):
        raise bad_input(argument, f"{what} returning finite values", "non-finite values on the decoded prior mean")
    return out


def _check_differentiable(argument: str, fn: Callable[[Array], Array], x: Array, what: str) -> None:
    """A JVP of `fn` at `x` along a fixed direction must trace (JAX all the way) and be finite."""
    tangent = jnp.cos(jnp.arange(x.size, dtype=x.dtype)).reshape(x.shape)
    try:
        _, dout = jax.jvp(fn, (x,), (tangent,))
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - NumPy calls, Python control flow on values, ...
        raise bad_input(argument, f"{what} (a differentiable JAX function of the frames)",
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not all(bool(jnp.all(jnp.isfinite(d))) for d in jax.tree.leaves(dout)):
        raise bad_input(argument, f"{what} with a finite derivative", "a non-finite JVP on the decoded prior mean")


class Residual(Constraint):
    """`fn(frames (M, I..), times (M,), coords) ≈ 0` with model error std `scale`.

    `fn` must be a pure JAX function, differentiable in `frames` (the sampler linearises it)."""

    fn: Callable[..., Array]
    scale: float = eqx.field(static=True)
    weight: float = eqx.field(static=True, default=1.0)

    def __check_init__(self) -> None:
        if not callable(self.fn):
            raise bad_input("fn", "a callable fn(frames, times, coords) -> residual array", type(self.fn).__name__)
        _check_common(self)

    def residual(self, frames: Array, times: Array, coords: tuple[Array, ...]) -> Array:
        return self.fn(frames, times, coords)

    def bind(self, frames: Array, times: np.ndarray, coords: tuple[Array, ...] = ()) -> Residual:
        t = jnp.asarray(times, frames.dtype)
        try:
            out = self.fn(frames, t, coords)
        except Exception as exc:  # noqa: BLE001 - the user's function failed on frames of this shape
            raise bad_input("fn", f"a function of frames {tuple(frames.shape)}, times {tuple(t.shape)} and coords",
                            f"{type(exc).__name__}: {exc}") from exc
        _check_output("fn", out, None, "fn(frames, times, coords)")
        _check_differentiable("fn", lambda f: self.fn(f, t, coords), frames, "fn(frames, times, coords)")
        return self


class Bounds(Constraint):
    """Soft range `lo ≤ frame ≤ hi` (either may be None): residual `min(f − lo, 0) + max(f − hi, 0)`,
    zero inside, with std `scale` (field units). `lo`, `hi` are numbers or arrays broadcastable
    to a frame `(I_1, .., I_K)` (e.g. depth-dependent bounds)."""

    lo: Any
    hi: Any
    scale: float = eqx.field(static=True)
    weight: float = eqx.field(static=True, default=1.0)

    def __init__(self, lo: Any = None, hi: Any = None, scale: float = 1.0, weight: float = 1.0):
        def level(name: str, v: Any) -> Any:
            if v is None:
                return None
            try:
                a = np.asarray(v, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise bad_input(name, "None, a number or an array of numbers", v) from exc
            if not np.isfinite(a).all():
                raise bad_input(name, "finite values (None for no bound)", v)
            return jnp.asarray(a, jnp.result_type(float))

        self.lo, self.hi = level("lo", lo), level("hi", hi)
        self.scale, self.weight = scale, weight

    def __check_init__(self) -> None:
        _check_common(self)
        if self.lo is None and self.hi is None:
            raise bad_input("lo/hi", "at least one bound", (None, None))
        if self.lo is not None and self.hi is not None:
            try:
                bad = bool(jnp.any(jnp.broadcast_arrays(self.lo, self.hi)[0] > jnp.broadcast_arrays(self.lo, self.hi)[1]))
            except ValueError as exc:
                raise bad_input("lo/hi", "broadcastable bounds", (np.shape(self.lo), np.shape(self.hi))) from exc
            if bad:
                raise bad_input("lo/hi", "lo <= hi", "lo > hi somewhere")

    @property
    def one_sided(self) -> bool:
        return True

    def residual(self, frames: Array, times: Array, coords: tuple[Array, ...]) -> Array:
        r = jnp.zeros_like(frames)
        if self.lo is not None:
            r = r + jnp.minimum(frames - self.lo, 0.0)
        if self.hi is not None:
            r = r + jnp.maximum(frames - self.hi, 0.0)
        return r

    def bind(self, frames: Array, times: np.ndarray, coords: tuple[Array, ...] = ()) -> Bounds:
        for name, b in (("lo", self.lo), ("hi", self.hi)):
            if b is not None:
                try:
                    np.broadcast_shapes(b.shape, frames.shape[1:])
                except ValueError:
                    raise bad_input(name, f"a number or an array broadcastable to a frame {frames.shape[1:]}",
                                    b.shape) from None
        return self

    def to_dict(self) -> dict[str, Any]:
        def show(b: Any) -> Any:
            return None if b is None else (float(b) if np.ndim(b) == 0 else f"array {tuple(np.shape(b))}")

        return {**super().to_dict(), "lo": show(self.lo), "hi": show(self.hi)}


class Monotone(Constraint):
    """Soft monotonicity of each frame along space axis `axis` (0-based over the frame's space
    dims, in the decoder's order): with `increasing=True` the field should not decrease as the
    axis' *coordinate* grows (the grid may run either way). Residual: the violating part of each
    neighbouring difference, `min(±(f[i+1] − f[i]), 0)`, zero where the order holds, with std
    `scale` (field units per grid step)."""

    axis: int = eqx.field(static=True)
    increasing: bool = eqx.field(static=True, default=True)
    scale: float = eqx.field(static=True, default=1.0)
    weight: float = eqx.field(static=True, default=1.0)
    # +1 / −1: the grid's coordinate order along `axis` (set by `bind`; None before)
    direction: int | None = eqx.field(static=True, default=None)

    def __check_init__(self) -> None:
        if isinstance(self.axis, bool) or not isinstance(self.axis, (int, np.integer)) or self.axis < 0:
            raise bad_input("axis", "a space axis index >= 0 (the decoder's dims order)", self.axis)
        if not isinstance(self.increasing, bool):
            raise bad_input("increasing", "a bool", self.increasing)
        _check_common(self)

    @property
    def one_sided(self) -> bool:
        return True

    def residual(self, frames: Array, times: Array, coords: tuple[Array, ...]) -> Array:
        c = self if self.direction is not None else self._oriented(frames.ndim - 1, coords)
        sign = c.direction if self.increasing else -c.direction
        return jnp.minimum(sign * jnp.diff(frames, axis=1 + self.axis), 0.0)

    def _oriented(self, n_axes: int, coords: tuple[Array, ...]) -> Monotone:
        if self.axis >= n_axes:
            raise bad_input("axis", f"a space axis index < {n_axes} (the frames' space dims)", self.axis)
        if len(coords) != n_axes:  # no coordinates given: the grid's index order
            return dataclasses.replace(self, direction=1)
        c = np.asarray(coords[self.axis], dtype=np.float64)
        if c.size < 2:
            raise bad_input("axis", "a space axis with at least 2 grid points", f"{c.size} point(s)")
        steps = np.diff(c)
        if not ((steps > 0).all() or (steps < 0).all()):
            raise bad_input("axis", "an axis whose grid coordinate is strictly monotone", c)
        return dataclasses.replace(self, direction=1 if steps[0] > 0 else -1)

    def bind(self, frames: Array, times: np.ndarray, coords: tuple[Array, ...] = ()) -> Monotone:
        return self._oriented(frames.ndim - 1, coords)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "axis": int(self.axis), "increasing": self.increasing}


class Dynamics(Constraint):
    """Weak-constraint dynamics: `frame_{j+1} − Φ^{n_j}(frame_j) ≈ 0` with std `scale`, for the
    solver step `Φ = step_fn(frame, dt)` (pure, differentiable JAX; frames in physical units)
    and `n_j = round((t_{j+1} − t_j) / dt)` steps per gap (irregular gaps: each its own count;
    the mismatch `|n_j dt − gap| ≤ dt/2` is part of the model error).

    `bind` (done by the sampler) fixes the step counts from the concrete times; `steps` and
    `max_steps` stay None until then (`log_potential` binds on the fly when the times are
    concrete). Cost: `max_steps` solver steps per gap, vectorised over the gaps, per residual
    evaluation (and one JVP and one VJP of them per CG iteration in the sampler)."""

    step_fn: Callable[[Array, float], Array]
    dt: float = eqx.field(static=True)
    scale: float = eqx.field(static=True)
    weight: float = eqx.field(static=True, default=1.0)
    steps: Any = None
    max_steps: int | None = eqx.field(static=True, default=None)

    def __check_init__(self) -> None:
        if not callable(self.step_fn):
            raise bad_input("step_fn", "a callable step_fn(frame, dt) -> frame (a JAX solver step)",
                            type(self.step_fn).__name__)
        _finite_number("dt", self.dt, positive=True)
        _check_common(self)

    def step_counts(self, times: ArrayLike) -> np.ndarray:
        """Solver steps `n_j` for each of the `M − 1` gaps of the concrete, increasing `times`."""
        t = np.asarray(times, dtype=np.float64)
        if t.ndim != 1 or t.size < 2:
            raise bad_input("times", "at least 2 time stamps for a Dynamics constraint", t.shape)
        gaps = np.diff(t)
        if not np.isfinite(t).all() or (gaps <= 0).any():
            raise bad_input("times", "finite, strictly increasing times", t)
        return np.rint(gaps / self.dt).astype(np.int32)

    def bind(self, frames: Array, times: np.ndarray, coords: tuple[Array, ...] = ()) -> Dynamics:
        n = self.step_counts(times)
        frame = frames[0]
        try:
            out = self.step_fn(frame, self.dt)
        except Exception as exc:  # noqa: BLE001 - the user's solver failed on a frame of this shape
            raise bad_input("step_fn", f"a solver step of one frame {tuple(frame.shape)}",
                            f"{type(exc).__name__}: {exc}") from exc
        _check_output("step_fn", out, tuple(frame.shape), "step_fn(frame, dt)")
        _check_differentiable("step_fn", lambda f: self.step_fn(f, self.dt), frame, "step_fn(frame, dt)")
        return dataclasses.replace(self, steps=jnp.asarray(n), max_steps=int(n.max()))

    def advance(self, frames: Array, steps: Array, max_steps: int) -> Array:
        """`Φ^{steps[j]}(frames[j])` for every frame (a scan of `max_steps` masked steps)."""

        def one(f: Array, n: Array) -> Array:
            def body(g: Array, k: Array) -> tuple[Array, None]:
                return jnp.where(k < n, self.step_fn(g, self.dt), g), None

            return jax.lax.scan(body, f, jnp.arange(max_steps))[0] if max_steps > 0 else f

        return jax.vmap(one)(frames, steps)

    def residual(self, frames: Array, times: Array, coords: tuple[Array, ...]) -> Array:
        c = self if self.max_steps is not None else self.bind_times(times)
        return frames[1:] - c.advance(frames[:-1], c.steps, c.max_steps)

    def bind_times(self, times: ArrayLike) -> Dynamics:
        """The step counts from concrete `times`, without the solver checks of `bind`."""
        try:
            n = self.step_counts(np.asarray(times))
        except jax.errors.ConcretizationTypeError as exc:
            raise bad_input("times", "concrete times (or a Dynamics bound to them with .bind)",
                            "traced times") from exc
        return dataclasses.replace(self, steps=jnp.asarray(n), max_steps=int(n.max()))

    def to_dict(self) -> dict[str, Any]:
        out = {**super().to_dict(), "dt": float(self.dt), "step_fn": getattr(self.step_fn, "__name__",
                                                                            type(self.step_fn).__name__)}
        if self.steps is not None:
            out["solver_steps_per_gap"] = [int(v) for v in np.asarray(self.steps)]
        return out


# --------------------------------------------------------------------------------------------
# Helpers


def log_potential(constraints: Sequence[Constraint], frames: Array, times: Array,
                  coords: tuple[Array, ...] = ()) -> Array:
    """Sum of the constraints' log-potentials at the decoded `frames` (a JAX scalar)."""
    total = jnp.zeros((), frames.dtype)
    for c in constraints:
        total = total + c.log_potential(frames, times, coords)
    return total


def constraint_factor(constraints: Sequence[Constraint], frames: Array, times: Array,
                      coords: tuple[Array, ...] = (), name: str = "constraints") -> Array:
    """`numpyro.factor(name, log_potential(...))` inside a NumPyro model; returns the potential."""
    import numpyro

    value = log_potential(constraints, frames, times, coords)
    numpyro.factor(name, value)
    return value


def bind_constraints(constraints: Any, decoder: Any, times: ArrayLike, core_shape: tuple[int, ...],
                     core_mean: float, dtype: Any) -> tuple[Constraint, ...]:
    """Validate `constraints` (a sequence of `Constraint`) and `decoder` (a `FieldDecoder` whose
    ranks are `core_shape`), drop the zero-weight ones, and bind the rest to `times` with the
    decoded prior mean as the example frames. Returns the active constraints (possibly none)."""
    if constraints is None:
        return ()
    if isinstance(constraints, Constraint) or not isinstance(constraints, (list, tuple)):
        raise bad_input("constraints", "a list or tuple of Constraint objects (Residual, Bounds, Monotone, Dynamics)",
                        type(constraints).__name__)
    for i, c in enumerate(constraints):
        if not isinstance(c, Constraint):
            raise bad_input(f"constraints[{i}]", "a Constraint (Residual, Bounds, Monotone, Dynamics)", type(c).__name__)
    active = tuple(c for c in constraints if float(c.weight) > 0)
    if not active:
        return ()
    if not isinstance(decoder, FieldDecoder):
        raise bad_input("decoder", "a FieldDecoder (the FTM on the constraints' grid)", type(decoder).__name__)
    if decoder.ranks != tuple(core_shape):
        raise bad_input("decoder", f"bases with ranks {tuple(core_shape)} (the core shape)", decoder.ranks)
    t = np.asarray(times, dtype=np.float64)
    frames = decoder(jnp.full((t.size, *core_shape), core_mean, dtype))
    return tuple(c.bind(frames, t, decoder.coords) for c in active)
