"""Observation noise as small objects: where the noise std of the likelihood comes from.

- `Fixed(sigma)`: one known std for every point (physical units).
- `PerPoint()`: each point's own std, `ObservationSet.noise_scale` (physical units).
- `Inferred(prior_scale=None)`: one unknown std, inferred (`prior_scale`: the scale of its prior
  in normalised field units; None takes the sampler config's `sigma_prior_scale`).

`reconstruct(sigma=...)` keeps taking a number, `"metadata"`, `"infer"` or None; `as_noise`
converts that argument once, at the boundary, and everything after it works with the object.
Each object carries `reason`: why this noise model was chosen (what the run's attrs report).
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import numpy as np

from sdift_prob.data.observations import ObservationSet
from sdift_prob.errors import bad_input

__all__ = ["Fixed", "Inferred", "NoiseModel", "PerPoint", "as_noise"]


class NoiseModel(eqx.Module):
    """Where the noise std of the observation likelihood comes from (see the module docstring)."""

    reason: str = eqx.field(static=True, default="")

    @property
    def source(self) -> str:  # the attrs' `noise.source`
        raise NotImplementedError


class Fixed(NoiseModel):
    """One known noise std for every point, in physical units."""

    sigma: float = eqx.field(static=True, kw_only=True)

    def __check_init__(self) -> None:
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float, np.number)) or not (
            math.isfinite(float(self.sigma)) and float(self.sigma) > 0
        ):
            raise bad_input("sigma", "a positive finite noise level in physical units", self.sigma)

    @property
    def source(self) -> str:
        return "given"


class PerPoint(NoiseModel):
    """Each point's own noise std, `ObservationSet.noise_scale` (physical units)."""

    @property
    def source(self) -> str:
        return "per point"


class Inferred(NoiseModel):
    """One unknown noise std, inferred; `prior_scale` (normalised field units) or the config's."""

    prior_scale: float | None = eqx.field(static=True, default=None, kw_only=True)

    @property
    def source(self) -> str:
        return "inferred"


def _known(obs: ObservationSet) -> bool:
    return bool(np.isfinite(obs.noise_scale).all() and (obs.noise_scale > 0).all())


def _check_noise_scale(obs: ObservationSet) -> None:
    """Per-point noise levels that `sigma=None` cannot use as they are (issue 16): some unknown
    (NaN) among known ones — reading them as "noise unknown" switched every point to an inferred
    noise level without a word (5 NaN among 1,840) — or zero, which the samplers cannot condition
    on exactly (like levels below 1e-6 training stds, refused by the sampler). All NaN is the
    documented "noise unknown" and stays inferred."""
    ns = np.asarray(obs.noise_scale)
    n_nan = int(np.isnan(ns).sum())
    if 0 < n_nan < ns.size:
        raise bad_input("obs.noise_scale", "a noise std for every point, or for none (unknown noise); pass "
                        "sigma='infer' to infer one noise level for all points, or sigma=<a number> (physical units)",
                        f"{n_nan} of {ns.size} entries missing (NaN)")
    n_zero = int((ns == 0).sum())
    if n_zero:
        raise bad_input("obs.noise_scale", "positive noise stds (0 means noise-free, which the samplers cannot "
                        "condition on exactly); pass sigma=<a small number> (physical units) or sigma='infer'",
                        f"{n_zero} of {ns.size} entries equal to 0")


def as_noise(sigma: Any, obs: ObservationSet) -> NoiseModel:
    """The noise object for `reconstruct`'s `sigma` argument (the only place its strings are read).

    A `NoiseModel` is taken as it is; a number is `Fixed`; `"metadata"` is `PerPoint` (every
    point must have a positive `noise_scale`); `"infer"` is `Inferred`; None is `PerPoint` when
    every point has a noise std and `Inferred` when none has (some missing or zero: an error).
    """
    if isinstance(sigma, NoiseModel):
        if isinstance(sigma, PerPoint) and not _known(obs):
            raise bad_input("sigma", "PerPoint() only when every observation has a positive noise_scale",
                            "observations with unknown noise_scale")
        return sigma
    if sigma is None:
        _check_noise_scale(obs)  # partly unknown or zero: an error, not a silent switch to inferred noise
        if _known(obs):
            return PerPoint(reason="sigma not given and every point has a noise_scale (obs.noise_scale)")
        return Inferred(reason="sigma not given and obs.noise_scale unknown (NaN) for every point")
    if isinstance(sigma, str):
        if sigma == "infer":
            return Inferred(reason="sigma='infer'")
        if sigma == "metadata":
            if not _known(obs):
                raise bad_input("sigma", "'metadata' only when every observation has a positive noise_scale",
                                "observations with unknown noise_scale")
            return PerPoint(reason="sigma='metadata' (obs.noise_scale)")
        raise bad_input("sigma", "a positive number (physical units), 'metadata', 'infer' or None", sigma)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.number)):
        raise bad_input("sigma", "a positive finite noise level in physical units", sigma)
    s = float(sigma)
    return Fixed(sigma=s, reason=f"sigma={s:g} given (physical units)")
