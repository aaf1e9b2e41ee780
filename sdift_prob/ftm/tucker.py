"""The Functional Tucker Model: shared coordinate networks and decoding of core sequences.

A snapshot is y(x) = vec(W)^T (f_1(x_1) kron ... kron f_K(x_K)) with W a core of shape
(R_1, ..., R_K) and f_k the coordinate network of mode k. Decoding on a grid is K mode
products; at scattered points it is one Kronecker row per point (`design_rows`). Decoded
values are in the model's normalised field units.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ..errors import bad_input
from .coordnet import CoordinateNet

# einsum letters: ranks use the first list, grid sizes the second; K is bounded by their length.
_RANK_LETTERS = "abcdefgh"
_GRID_LETTERS = "ijklmnop"
MAX_MODES = len(_RANK_LETTERS)


class ExtrapolationWarning(UserWarning):
    """Coordinates lie outside the training domain but within the allowed margin."""


# Coordinates are used in float32: a point on the domain's edge may be rounded just outside it
# (float32(2 pi) > 2 pi). Overshoots of up to this many float32 rounding steps at the bounds'
# magnitude count as inside (no ExtrapolationWarning).
EDGE_TOLERANCE_ULPS = 4


def _edge_tolerance(lo: float, hi: float) -> float:
    """Float rounding allowed at the bounds of `[lo, hi]`, as a fraction of its width."""
    scale = max(abs(lo), abs(hi), hi - lo)
    return EDGE_TOLERANCE_ULPS * float(np.finfo(np.float32).eps) * scale / (hi - lo)


def check_ranks(ranks: object, n_modes: int, *, argument: str = "ranks") -> tuple[int, ...]:
    """Validate Tucker ranks: one positive integer per space dimension.

    **Arguments:**

    - `ranks`: a sequence of integers.
    - `n_modes`: the number of space dimensions K of the field.

    **Returns:** the ranks as a tuple of ints.
    """
    if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence):
        raise bad_input(argument, f"a sequence of {n_modes} positive integers", ranks)
    out = []
    for r in ranks:
        if isinstance(r, (bool, np.bool_)) or not isinstance(r, (int, np.integer)) or r < 1:
            raise bad_input(argument, f"{n_modes} positive integers (one per space dimension)", ranks)
        out.append(int(r))
    if len(out) != n_modes:
        raise bad_input(
            argument, f"one rank per space dimension ({n_modes} values)", f"{len(out)} values {tuple(out)}"
        )
    return tuple(out)


class FunctionalTucker(eqx.Module):
    """Shared coordinate networks of a Functional Tucker Model.

    Each mode k has a `CoordinateNet` mapping the coordinate, normalised to `[0, 1]` over
    the training domain `[domain_lo[k], domain_hi[k]]` (physical units), to `ranks[k]`
    features. Coordinates beyond the domain by more than `margin` times its width are
    refused; milder extrapolation gives an `ExtrapolationWarning`.
    """

    nets: tuple[CoordinateNet, ...]
    ranks: tuple[int, ...] = eqx.field(static=True)
    domain_lo: tuple[float, ...] = eqx.field(static=True)
    domain_hi: tuple[float, ...] = eqx.field(static=True)
    space_dims: tuple[str, ...] = eqx.field(static=True)
    margin: float = eqx.field(static=True)

    def __init__(
        self,
        ranks: Sequence[int],
        *,
        domain_lo: Sequence[float],
        domain_hi: Sequence[float],
        space_dims: Sequence[str],
        width: int = 64,
        depth: int = 2,
        omega: float = 20.0,
        margin: float = 0.05,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `ranks`: `(R_1, ..., R_K)`, one positive integer per space dimension.
        - `domain_lo`, `domain_hi`: physical bounds of the training domain per mode, `lo < hi`.
        - `space_dims`: names of the K space dimensions (e.g. `("lat", "lon", "depth")`).
        - `width`, `depth`, `omega`: `CoordinateNet` settings shared by all modes.
        - `margin`: allowed extrapolation beyond the domain, as a fraction of its width.
        - `key`: a typed PRNG key.
        """
        if isinstance(space_dims, str) or not isinstance(space_dims, Sequence) or not all(
            isinstance(d, str) for d in space_dims
        ):
            raise bad_input("space_dims", "a sequence of dimension names", space_dims)
        n_modes = len(space_dims)
        if not 1 <= n_modes <= MAX_MODES:
            raise bad_input("space_dims", f"between 1 and {MAX_MODES} dimension names", space_dims)
        if len(set(space_dims)) != n_modes:
            raise bad_input("space_dims", "distinct dimension names", space_dims)
        self.ranks = check_ranks(ranks, n_modes)
        lo = _float_tuple("domain_lo", domain_lo, n_modes)
        hi = _float_tuple("domain_hi", domain_hi, n_modes)
        for k in range(n_modes):
            if not hi[k] > lo[k]:
                raise bad_input(
                    "domain_hi",
                    f"an upper bound above domain_lo for mode {space_dims[k]!r} ({lo[k]})",
                    hi[k],
                )
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not (
            math.isfinite(margin) and margin >= 0
        ):
            raise bad_input("margin", "a non-negative finite fraction of the domain width", margin)
        keys = jax.random.split(key, n_modes)
        self.nets = tuple(
            CoordinateNet(r, width=width, depth=depth, omega=omega, key=kk) for r, kk in zip(self.ranks, keys)
        )
        self.domain_lo = lo
        self.domain_hi = hi
        self.space_dims = tuple(space_dims)
        self.margin = float(margin)

    @property
    def n_modes(self) -> int:
        """Number of space modes K."""
        return len(self.ranks)

    @property
    def core_size(self) -> int:
        """D = R_1 * ... * R_K, the length of `vec(core)`."""
        return math.prod(self.ranks)

    def basis(self, k: int, x: Float[ArrayLike, " n"]) -> Float[Array, "n rank"]:
        """Features of mode `k` at physical coordinates `x`.

        **Arguments:**

        - `k`: mode index in `0..K-1`.
        - `x`: physical coordinates of that mode, shape `(n,)`.

        **Returns:** the basis matrix F_k(x), shape `(n, ranks[k])`.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < self.n_modes:
            raise bad_input("k", f"a mode index in 0..{self.n_modes - 1}", k)
        xs = _as_coords_1d("x", x)
        _check_domain(self, int(k), xs, "x")
        return _basis(self, int(k), xs)


def _float_tuple(name: str, values: object, n: int) -> tuple[float, ...]:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise bad_input(name, f"{n} finite numbers", values) from None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise bad_input(name, f"{n} finite numbers (one per space dimension)", values)
    return tuple(float(v) for v in arr)


def _is_traced(x: object) -> bool:
    return isinstance(x, jax.core.Tracer)


def _as_coords_1d(name: str, x: object) -> Array:
    if _is_traced(x):
        if x.ndim != 1:  # type: ignore[attr-defined]
            raise bad_input(name, "a 1-D array of coordinates", f"shape {x.shape}")  # type: ignore[attr-defined]
        return jnp.asarray(x, dtype=jnp.float32)
    arr = np.asarray(x)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.number):
        raise bad_input(name, "a non-empty 1-D array of coordinates", f"shape {arr.shape}, dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise bad_input(name, "finite coordinates", f"{int(np.sum(~np.isfinite(arr)))} non-finite values")
    return jnp.asarray(arr, dtype=jnp.float32)


def _as_coords_2d(name: str, coords: object, n_modes: int) -> Array:
    if _is_traced(coords):
        if coords.ndim != 2 or coords.shape[1] != n_modes:  # type: ignore[attr-defined]
            raise bad_input(name, f"an array of shape (N, {n_modes})", f"shape {coords.shape}")  # type: ignore[attr-defined]
        return jnp.asarray(coords, dtype=jnp.float32)
    arr = np.asarray(coords)
    if arr.ndim != 2 or arr.shape[1] != n_modes or not np.issubdtype(arr.dtype, np.number):
        raise bad_input(name, f"an array of shape (N, {n_modes})", f"shape {arr.shape}, dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise bad_input(name, "finite coordinates", f"{int(np.sum(~np.isfinite(arr)))} non-finite values")
    return jnp.asarray(arr, dtype=jnp.float32)


def _check_domain(model: FunctionalTucker, k: int, x: Array, argument: str) -> None:
    """Refuse coordinates beyond the margin; warn (once per call) for mild extrapolation
    (beyond float rounding at the edge, `EDGE_TOLERANCE_ULPS`).

    Skipped for traced values: the check needs concrete numbers, so callers inside `jit`
    should validate their coordinates once, outside.
    """
    if _is_traced(x):
        return
    lo, hi = model.domain_lo[k], model.domain_hi[k]
    xs = np.asarray(x, dtype=np.float64)
    u = (xs - lo) / (hi - lo)
    u_min, u_max = float(u.min()), float(u.max())
    if u_min < -model.margin or u_max > 1.0 + model.margin:
        span = model.margin * (hi - lo)
        raise bad_input(
            argument,
            f"coordinates of {model.space_dims[k]!r} within the training domain [{lo:g}, {hi:g}] "
            f"extended by the margin {model.margin:g} of its width (i.e. [{lo - span:g}, {hi + span:g}])",
            f"values in [{float(xs.min()):g}, {float(xs.max()):g}]",
        )
    tol = _edge_tolerance(lo, hi)
    if u_min < -tol or u_max > 1.0 + tol:
        warnings.warn(
            f"{argument}: coordinates of {model.space_dims[k]!r} extend to "
            f"[{float(xs.min()):g}, {float(xs.max()):g}], outside the training domain "
            f"[{lo:g}, {hi:g}]; the coordinate networks extrapolate there",
            ExtrapolationWarning,
            stacklevel=3,
        )


def _check_domain_points(model: FunctionalTucker, coords: Array, argument: str) -> None:
    if _is_traced(coords):
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in range(model.n_modes):
            _check_domain(model, k, coords[:, k], argument)
    if caught:
        # one warning per call, naming every mode that extrapolates
        warnings.warn(
            "; ".join(str(w.message) for w in caught), ExtrapolationWarning, stacklevel=3
        )


def _normalise(model: FunctionalTucker, k: int, x: Float[Array, " n"]) -> Float[Array, " n"]:
    lo, hi = model.domain_lo[k], model.domain_hi[k]
    return (x - lo) / (hi - lo)


@eqx.filter_jit
def _basis(model: FunctionalTucker, k: int, x: Float[Array, " n"]) -> Float[Array, "n r"]:
    return model.nets[k](_normalise(model, k, x))


def _grid_subscripts(n_modes: int) -> str:
    ranks = _RANK_LETTERS[:n_modes]
    grids = _GRID_LETTERS[:n_modes]
    factors = ",".join(g + r for g, r in zip(grids, ranks))
    return f"...{ranks},{factors}->...{grids}"


@eqx.filter_jit
def _decode_grid(model: FunctionalTucker, cores: Array, grids: tuple[Array, ...]) -> Array:
    factors = [model.nets[k](_normalise(model, k, g)) for k, g in enumerate(grids)]
    return jnp.einsum(_grid_subscripts(model.n_modes), cores, *factors)


@eqx.filter_jit
def _design_rows(model: FunctionalTucker, coords: Float[Array, "n k"]) -> Float[Array, "n d"]:
    n = coords.shape[0]
    row = model.nets[0](_normalise(model, 0, coords[:, 0]))
    for k in range(1, model.n_modes):
        f = model.nets[k](_normalise(model, k, coords[:, k]))
        # row-major Kronecker: the last mode varies fastest, matching core.reshape(-1)
        row = (row[:, :, None] * f[:, None, :]).reshape(n, -1)
    return row


@eqx.filter_jit
def _decode_points(model: FunctionalTucker, cores: Array, time_index: Array, coords: Array) -> Array:
    rows = _design_rows(model, coords)
    flat = cores.reshape(cores.shape[0], -1)[time_index]
    return jnp.sum(rows * flat, axis=-1)


def _check_cores(model: FunctionalTucker, cores: object, *, min_lead: int, name: str = "cores") -> Array:
    shape = tuple(getattr(cores, "shape", np.shape(cores)))
    n_lead = len(shape) - model.n_modes
    if n_lead < min_lead or shape[n_lead:] != model.ranks:
        lead = "(..., T, " if min_lead else "(..., "
        raise bad_input(name, f"an array of shape {lead}{', '.join(map(str, model.ranks))})", f"shape {shape}")
    if not _is_traced(cores):
        arr = np.asarray(cores)
        if not np.issubdtype(arr.dtype, np.floating):
            raise bad_input(name, "a floating-point array", f"dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise bad_input(name, "finite values", f"{int(np.sum(~np.isfinite(arr)))} non-finite entries")
    return jnp.asarray(cores, dtype=jnp.float32)


def _check_model(model: object) -> FunctionalTucker:
    if not isinstance(model, FunctionalTucker):
        raise bad_input("model", "a FunctionalTucker", type(model).__name__)
    return model


def decode_grid(
    model: FunctionalTucker,
    cores: Float[ArrayLike, "*batch_time_ranks"],
    grids: Sequence[Float[ArrayLike, " _"]],
) -> Float[Array, "*batch_time_sizes"]:
    """Decode core sequences on a grid by K mode products.

    **Arguments:**

    - `model`: the fitted `FunctionalTucker`.
    - `cores`: shape `(..., T, R_1, ..., R_K)`; any leading batch axes (e.g. trajectories, draws).
    - `grids`: K one-dimensional arrays of physical coordinates (any resolution, on or off
      the training grid), grid k of length I_k.

    **Returns:** fields of shape `(..., T, I_1, ..., I_K)` in normalised field units.
    """
    model = _check_model(model)
    core_arr = _check_cores(model, cores, min_lead=1)
    if isinstance(grids, (str, bytes)) or not isinstance(grids, Sequence) or len(grids) != model.n_modes:
        raise bad_input("grids", f"a sequence of {model.n_modes} one-dimensional coordinate arrays", grids)
    gs = []
    for k, g in enumerate(grids):
        arg = f"grids[{k}] ({model.space_dims[k]})"
        garr = _as_coords_1d(arg, g)
        gs.append(garr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k, garr in enumerate(gs):
            _check_domain(model, k, garr, f"grids[{k}]")
    if caught:
        warnings.warn("; ".join(str(w.message) for w in caught), ExtrapolationWarning, stacklevel=2)
    return _decode_grid(model, core_arr, tuple(gs))


def basis_matrices(model: FunctionalTucker, grids: Sequence[Float[ArrayLike, " _"]]) -> tuple[Array, ...]:
    """The basis matrices `F_k = f_k(grid_k)` `(I_k, R_k)` of a grid: `decode_grid` is the K mode
    products of the core with them (used to decode inside the sampler, e.g. for constraints).

    **Arguments:** `model`; `grids`: K one-dimensional arrays of physical coordinates.

    **Returns:** a tuple of K arrays `(I_k, R_k)`.
    """
    model = _check_model(model)
    if isinstance(grids, (str, bytes)) or not isinstance(grids, Sequence) or len(grids) != model.n_modes:
        raise bad_input("grids", f"a sequence of {model.n_modes} one-dimensional coordinate arrays", grids)
    out = []
    for k, g in enumerate(grids):
        garr = _as_coords_1d(f"grids[{k}] ({model.space_dims[k]})", g)
        _check_domain(model, k, garr, f"grids[{k}]")
        out.append(_basis(model, k, garr))
    return tuple(out)


def design_rows(model: FunctionalTucker, coords: Float[ArrayLike, "N K"]) -> Float[Array, "N D"]:
    """The observation operator A: one Kronecker row of basis features per point.

    `A[n] = f_1(x_n1) kron ... kron f_K(x_nK)`, so that `value[n] ~= A[n] @ core.reshape(-1)`
    (row-major `vec`, the last mode varying fastest).

    **Arguments:**

    - `model`: the fitted `FunctionalTucker`.
    - `coords`: physical coordinates, shape `(N, K)`, columns in the order of `model.space_dims`.

    **Returns:** `A` of shape `(N, D)`, `D = R_1 * ... * R_K`.
    """
    model = _check_model(model)
    c = _as_coords_2d("coords", coords, model.n_modes)
    _check_domain_points(model, c, "coords")
    return _design_rows(model, c)


def decode_points(
    model: FunctionalTucker,
    cores: Float[ArrayLike, "T *ranks"],
    time_index: Int[ArrayLike, " N"],
    coords: Float[ArrayLike, "N K"],
) -> Float[Array, " N"]:
    """Decode a core sequence at scattered (time, x) points.

    **Arguments:**

    - `model`: the fitted `FunctionalTucker`.
    - `cores`: one core sequence, shape `(T, R_1, ..., R_K)`.
    - `time_index`: integer index into the T time stamps for every point, shape `(N,)`.
    - `coords`: physical coordinates, shape `(N, K)`.

    **Returns:** values of shape `(N,)` in normalised field units.
    """
    model = _check_model(model)
    core_arr = _check_cores(model, cores, min_lead=1)
    if core_arr.ndim != model.n_modes + 1:
        raise bad_input(
            "cores", f"one core sequence of shape (T, {', '.join(map(str, model.ranks))})", f"shape {core_arr.shape}"
        )
    c = _as_coords_2d("coords", coords, model.n_modes)
    n_time = core_arr.shape[0]
    if _is_traced(time_index):
        ti = jnp.asarray(time_index)
    else:
        ti_np = np.asarray(time_index)
        if ti_np.ndim != 1 or not np.issubdtype(ti_np.dtype, np.integer):
            raise bad_input("time_index", "a 1-D integer array", f"shape {ti_np.shape}, dtype {ti_np.dtype}")
        if ti_np.size and (ti_np.min() < 0 or ti_np.max() >= n_time):
            raise bad_input(
                "time_index", f"indices in 0..{n_time - 1}", f"values in [{ti_np.min()}, {ti_np.max()}]"
            )
        ti = jnp.asarray(ti_np, dtype=jnp.int32)
    if ti.shape != (c.shape[0],):
        raise bad_input("time_index", f"one index per point (shape ({c.shape[0]},))", f"shape {ti.shape}")
    _check_domain_points(model, c, "coords")
    return _decode_points(model, core_arr, ti, c)
