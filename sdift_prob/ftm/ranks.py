"""Choosing Tucker ranks for a target error before fitting (`fit-ftm --ranks auto`).

The FTM's networks evaluated on the training grid are basis matrices `U_k` `(I_k, R_k)` shared by
every trajectory and frame, so the FTM is a Tucker model with shared factors, and the error of
the best such factors bounds what any FTM of those ranks (and so any FTM-based reconstruction)
can reach. The best shared factors are close to the leading eigenvectors of each mode's Gram
matrix (HOSVD): seconds of linear algebra, no network training.

The sweep (`rank_sweep`):

1. Split a few training trajectories in two: the *basis* half gives each mode's Gram matrix
   `Σ Y_(k) Y_(k)ᵀ` (values normalised by their mean and std, as the fit does) and its
   eigenvectors; the *check* half is encoded through the candidate bases, as new trajectories
   are through a fitted run (`sdift encode`, reconstruction).
2. Candidates along one path: for a tail-energy threshold τ (from 10⁻¹ down by factors of ~2)
   each mode takes the fewest eigenvectors whose left-out energy is at most τ of the total,
   capped at `min(I_k, max_rank)`; repeated rank tuples are skipped.
3. Each candidate's error is the mean VRMSE of the check trajectories projected onto the
   candidate bases (least squares through orthonormal factors). The first candidate at or below
   the target is chosen; if none is, the largest one, with `reached=False`.

Cost: K eigendecompositions of `I_k × I_k` matrices and, per candidate, 2K mode products over
the check trajectories; on the ocean data (24×24×16, 16 trajectories) well under a second per
candidate. The fitted networks reach a little more than the sweep's error (they are smooth
functions, not free matrices): fit-ftm reports the fitted error and warns when it is above the
target.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from jaxtyping import ArrayLike, Float

from ..errors import bad_input
from ..validation import check_count
from .encode import mode_products


@dataclasses.dataclass(frozen=True)
class RankSweep:
    """Result of `rank_sweep`: the chosen `ranks`, their check `error`, whether the `target` was
    `reached`, every tried candidate (`candidates`: dicts with `ranks`, `error`), and the numbers
    of basis / check trajectories."""

    ranks: tuple[int, ...]
    error: float
    target: float
    reached: bool
    candidates: list[dict[str, Any]]
    n_basis: int
    n_check: int

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ranks"] = list(self.ranks)
        d["method"] = "HOSVD sweep on a basis half, projection error of a check half (sdift_prob.ftm.ranks)"
        return d


def _mode_bases(y: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per mode: eigenvectors (columns, by decreasing eigenvalue) and eigenvalues of the Gram
    matrix of the mode-k unfolding of `y (B, T, *sizes)`."""
    vecs, vals = [], []
    n_space = y.ndim - 2
    for k in range(n_space):
        moved = np.moveaxis(y, 2 + k, 0).reshape(y.shape[2 + k], -1)
        lam, q = np.linalg.eigh(moved @ moved.T)
        order = np.argsort(lam)[::-1]
        vecs.append(q[:, order])
        vals.append(np.maximum(lam[order], 0.0))
    return vecs, vals


def _projection_vrmse(y: np.ndarray, bases: list[np.ndarray]) -> float:
    """Mean over trajectories of the VRMSE of `y (B, T, *sizes)` projected onto orthonormal `bases`."""
    w = mode_products(y, tuple(b for b in bases), 2)
    back = mode_products(w, tuple(b.T for b in bases), 2)
    err = ((back - y) ** 2).reshape(y.shape[0], -1).mean(axis=1)
    var = y.reshape(y.shape[0], -1).var(axis=1)
    return float(np.mean(np.sqrt(err / (var + 1e-12))))


def _candidates(vals: list[np.ndarray], caps: list[int]) -> list[tuple[int, ...]]:
    """Rank tuples along decreasing tail-energy thresholds, each distinct, up to the caps."""
    tails = []
    for lam in vals:
        total = max(float(lam.sum()), 1e-300)
        # tail[r] = energy left out when keeping r vectors
        tails.append(np.concatenate([[total], total - np.cumsum(lam)]) / total)
    out: list[tuple[int, ...]] = []
    tau = 0.1
    while True:
        ranks = tuple(int(min(cap, max(1, np.argmax(t <= tau) if np.any(t <= tau) else cap)))
                      for t, cap in zip(tails, caps))
        if not out or ranks != out[-1]:
            out.append(ranks)
        if ranks == tuple(caps) or tau < 1e-14:
            return out
        tau /= 2.0


def rank_sweep(
    fields: Float[ArrayLike, "B T *sizes"],
    *,
    target: float = 0.05,
    max_rank: int = 32,
) -> RankSweep:
    """Smallest ranks (along the sweep of the module docstring) whose basis reaches `target`.

    **Arguments:**

    - `fields`: `(B, T, I_1, ..., I_K)` physical values of a few training trajectories on the full
      grid (B >= 2: half build the basis, half check it; 8-16 are plenty), all finite.
    - `target`: the VRMSE to reach, in (0, 1).
    - `max_rank`: the largest rank any mode may get (also capped at the grid size).

    **Returns:** a `RankSweep`.
    """
    try:
        y = np.asarray(fields, dtype=np.float64)
    except (TypeError, ValueError):
        raise bad_input("fields", "a numeric array (B, T, *grid sizes)", type(fields).__name__) from None
    if y.ndim < 3 or y.shape[0] < 2 or 0 in y.shape:
        raise bad_input("fields", "an array (B, T, *grid sizes) of at least 2 trajectories", f"shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise bad_input("fields", "finite values on the full grid", f"{int(np.sum(~np.isfinite(y)))} non-finite entries")
    ok = isinstance(target, (int, float)) and not isinstance(target, bool) and math.isfinite(target)
    if not ok or not 0 < target < 1:
        raise bad_input("target", "a number in (0, 1)", target)
    check_count(max_rank, "max_rank")
    std = float(y.std())
    if not std > 0:
        raise bad_input("fields", "values that are not all equal", f"std {std}")
    y = (y - y.mean()) / std
    n_basis = (y.shape[0] + 1) // 2
    basis, check = y[:n_basis], y[n_basis:]
    vecs, vals = _mode_bases(basis)
    caps = [min(int(max_rank), v.shape[0]) for v in vecs]
    tried: list[dict[str, Any]] = []
    for ranks in _candidates(vals, caps):
        err = _projection_vrmse(check, [v[:, :r] for v, r in zip(vecs, ranks)])
        tried.append({"ranks": list(ranks), "error": round(err, 6)})
        if err <= target:
            return RankSweep(ranks, err, float(target), True, tried, n_basis, check.shape[0])
    last = tried[-1]
    return RankSweep(tuple(last["ranks"]), float(last["error"]), float(target), False, tried, n_basis, check.shape[0])
