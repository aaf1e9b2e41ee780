"""Temporal kernels (GPJax) over normalised time and the check of a time vector.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import gpjax as gpx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float
import numpy as np

from ..errors import InputError, bad_input



KERNEL_NAMES = ("rbf", "matern12", "matern32", "matern52")
_GPJAX_KERNELS = {
    "rbf": gpx.kernels.RBF,
    "matern12": gpx.kernels.Matern12,
    "matern32": gpx.kernels.Matern32,
    "matern52": gpx.kernels.Matern52,
}


def _is_traced(*xs: Any) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for x in xs for leaf in jax.tree_util.tree_leaves(x))


def _check_positive_scalar(value: Any, argument: str) -> None:
    if _is_traced(value):
        return
    arr = np.asarray(value)
    if arr.shape != () or not np.issubdtype(arr.dtype, np.number):
        raise bad_input(argument, "a positive finite scalar", value)
    if not np.isfinite(arr) or arr <= 0:
        raise bad_input(argument, "a positive finite scalar", float(arr))


class TemporalKernel(eqx.Module):
    """A stationary kernel over one (normalised) time axis, built with GPJax.

    `rbf`: `v exp(-Δt² / (2 ℓ²))`; `matern12`: `v exp(-|Δt|/ℓ)`;
    `matern32`: `v (1 + √3|Δt|/ℓ) exp(-√3|Δt|/ℓ)`;
    `matern52`: `v (1 + √5|Δt|/ℓ + 5Δt²/(3ℓ²)) exp(-√5|Δt|/ℓ)`.
    The reference diffusion-noise kernel `exp(-50 Δt²)` on `t ∈ [0, 1]` is `rbf` with
    `lengthscale=0.1`, `variance=1`.

    **Arguments:**

    - `name`: one of `"rbf"`, `"matern12"`, `"matern32"`, `"matern52"`.
    - `lengthscale`: ℓ > 0, in the units of the time axis it is applied to.
    - `variance`: v > 0.
    """

    name: str = eqx.field(static=True, default="rbf")
    lengthscale: Any = 0.1
    variance: Any = 1.0

    def __check_init__(self) -> None:
        if self.name not in KERNEL_NAMES:
            raise bad_input("name", f"one of {KERNEL_NAMES}", self.name)
        _check_positive_scalar(self.lengthscale, "lengthscale")
        _check_positive_scalar(self.variance, "variance")

    def gpjax_kernel(self) -> gpx.kernels.AbstractKernel:
        """The equivalent GPJax kernel object (one input dimension)."""
        return _GPJAX_KERNELS[self.name](lengthscale=self.lengthscale, variance=self.variance, n_dims=1)

    def gram(self, t: Float[ArrayLike, " M"]) -> Float[Array, "M M"]:
        """Kernel matrix over time stamps.

        **Arguments:**

        - `t`: time stamps, shape `(M,)`.

        **Returns:** `K` with shape `(M, M)`, `K[i, j] = k(t_i, t_j)` (no jitter added).
        """
        t = _as_time_vector(t, "t")
        return _gram(self, t)

    def cross(self, t1: Float[ArrayLike, " M1"], t2: Float[ArrayLike, " M2"]) -> Float[Array, "M1 M2"]:
        """Cross-covariance between two sets of time stamps.

        **Arguments:**

        - `t1`: shape `(M1,)`; `t2`: shape `(M2,)`.

        **Returns:** shape `(M1, M2)`, entry `[i, j] = k(t1_i, t2_j)`.
        """
        t1 = _as_time_vector(t1, "t1")
        t2 = _as_time_vector(t2, "t2")
        return _cross(self, t1, t2)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (for run manifests)."""
        return {"name": self.name, "lengthscale": float(self.lengthscale), "variance": float(self.variance)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TemporalKernel:
        """Inverse of `to_dict`."""
        if not isinstance(d, dict) or set(d) != {"name", "lengthscale", "variance"}:
            raise bad_input("d", "a dict with keys name, lengthscale, variance", d)
        return cls(name=d["name"], lengthscale=float(d["lengthscale"]), variance=float(d["variance"]))


# One compiled program per (kernel name, shape, dtype) instead of many eagerly dispatched ops.
@jax.jit
def _gram(kernel: TemporalKernel, t: Array) -> Array:
    return kernel.gpjax_kernel().gram(t[:, None]).as_matrix()


@jax.jit
def _cross(kernel: TemporalKernel, t1: Array, t2: Array) -> Array:
    return kernel.gpjax_kernel().cross_covariance(t1[:, None], t2[:, None])


def _as_time_vector(t: Any, argument: str) -> Array:
    arr = t if _is_traced(t) else jnp.asarray(t)
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise bad_input(argument, "a non-empty 1-D array of time stamps", getattr(arr, "shape", t))
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    if not _is_traced(arr) and not bool(jnp.all(jnp.isfinite(arr))):
        bad = int(np.flatnonzero(~np.isfinite(np.asarray(arr)))[0])
        raise bad_input(argument, "finite time stamps", f"{argument}[{bad}] = {float(arr[bad])}")
    return arr


def validate_times(t: ArrayLike, argument: str = "t") -> np.ndarray:
    """Check a vector of time stamps: 1-D, non-empty, finite, strictly increasing.

    **Arguments:**

    - `t`: time stamps, shape `(M,)` (concrete: NumPy or an eager JAX array).
    - `argument`: the argument name to put in error messages.

    **Returns:** the time stamps as a float64 NumPy array of shape `(M,)`.

    **Raises:** `InputError` naming `argument` and the first offending index; repeated time stamps
    are reported as duplicates.
    """
    if _is_traced(t):
        raise bad_input(argument, "concrete time stamps (validate_times cannot run under jit)", "a tracer")
    try:
        arr = np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise bad_input(argument, "a 1-D array of real time stamps", t) from exc
    if arr.ndim != 1 or arr.size == 0:
        raise bad_input(argument, "a non-empty 1-D array of time stamps", f"shape {arr.shape}")
    finite = np.isfinite(arr)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise bad_input(argument, "finite time stamps", f"{argument}[{i}] = {arr[i]}")
    diffs = np.diff(arr)
    if (diffs <= 0).any():
        i = int(np.flatnonzero(diffs <= 0)[0]) + 1
        if diffs[i - 1] == 0:
            raise InputError(
                f"{argument}: expected strictly increasing time stamps, got a duplicate: "
                f"{argument}[{i}] = {float(arr[i])!r} repeats {argument}[{i - 1}]"
            )
        raise InputError(
            f"{argument}: expected strictly increasing time stamps, got "
            f"{argument}[{i}] = {float(arr[i])!r} after {argument}[{i - 1}] = {float(arr[i - 1])!r}"
        )
    return arr
