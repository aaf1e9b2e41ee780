"""Time grids: `union_times`, the sorted union of the output and observation time stamps that the
sampler runs on.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from jaxtyping import ArrayLike, Float, Int

from sdift_prob.data.observations import TIME_RTOL
from sdift_prob.errors import bad_input

from .config import _is_number


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
