"""Preparing a reconstruction problem, once, for every sampler: observations -> padded on the sampler's
time grid, normalised, design rows, time Gram; the likelihood and noise objects converted from the
arguments; the output grid. `prepare_problem` is the helper others call (e.g. the benchmarks that
need the same padded observations and design rows as `reconstruct`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import functools
import math
from typing import Any

import numpy as np

from models.likelihoods import Likelihood, PoissonExcess, as_likelihood
from models.noise_models import Fixed, NoiseModel, PerPoint, as_noise
from sdift_prob.ftm import design_rows
from sdift_prob.gp import gram_float64
from sdift_prob.data.observations import ObservationSet, PaddedObservations
from sdift_prob.errors import bad_input

from .guided import union_times
from .run import Run


# Slots per frame are padded up to a multiple of this, so that reconstructions from similar
# observation sets (K-fold subsets, a moving window) share one compiled sampler.
SLOT_MULTIPLE = 8


def _pad_slots(padded: PaddedObservations) -> PaddedObservations:
    """`padded` with masked slots appended up to a multiple of `SLOT_MULTIPLE` points per frame
    (the observation order of `report.observation_order(obs, times, P)` matches it)."""
    M, P = np.asarray(padded.mask).shape
    extra = -P % SLOT_MULTIPLE
    if extra == 0:
        return padded

    def grow(a: Any, fill: Any) -> np.ndarray:
        a = np.asarray(a)
        return np.concatenate([a, np.full((M, extra, *a.shape[2:]), fill, dtype=a.dtype)], axis=1)

    return PaddedObservations(times=padded.times, values=grow(padded.values, 0.0), coords=grow(padded.coords, 0.0),
                              noise_scale=grow(padded.noise_scale, 1.0), mask=grow(padded.mask, False))


def _representation_error(run: Run, representation_error: Any) -> tuple[float, str]:
    """`(std in normalised field units, where it came from)` of the FTM's own error at a point."""
    if isinstance(representation_error, str):
        if representation_error != "auto":
            raise bad_input("representation_error", "'auto', a number >= 0 (physical units) or None",
                            representation_error)
        return run.representation_error
    if representation_error is None:
        return 0.0, "none (representation_error=None)"
    if isinstance(representation_error, bool) or not isinstance(representation_error, (int, float, np.number)):
        raise bad_input("representation_error", "'auto', a number >= 0 (physical units) or None", representation_error)
    v = float(representation_error)
    if not (math.isfinite(v) and v >= 0):
        raise bad_input("representation_error", "a finite number >= 0 (physical units)", representation_error)
    return v / run.ftm.normalizer.std, "given"


def refine_grid(grid: Sequence[float], factor: int) -> np.ndarray:
    """`factor` times finer grid over the same extent (`(I - 1) * factor + 1` points)."""
    g = np.asarray(grid, dtype=np.float64)
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise bad_input("resolution", "an integer >= 1 (refinement factor per axis)", factor)
    if factor == 1 or g.size < 2:
        return g
    return np.interp(np.linspace(0, g.size - 1, (g.size - 1) * factor + 1), np.arange(g.size), g)


def _output_grids(run: Run, grids: Mapping[str, Any] | None, resolution: int) -> tuple[np.ndarray, ...]:
    dims = run.space_dims
    if grids is None:
        base = run.ftm.grids
    else:
        if not isinstance(grids, Mapping) or set(grids) != set(dims):
            raise bad_input("grids", f"a mapping with exactly the space dims {dims}",
                            sorted(grids) if isinstance(grids, Mapping) else grids)
        base = []
        for d in dims:
            g = np.asarray(grids[d], dtype=np.float64)
            if g.ndim != 1 or g.size < 1 or not np.isfinite(g).all():
                raise bad_input(f"grids[{d!r}]", "a non-empty 1-D array of finite coordinates", g)
            base.append(g)
    return tuple(refine_grid(g, resolution) for g in base)


def _likelihood(likelihood: Any, obs: ObservationSet, normalizer: Any) -> Likelihood:
    """The likelihood object in normalised field units, converted once from `reconstruct`'s argument.

    The name `"poisson"` reads the offset and scale (physical) from `obs.attrs`, where the
    Poisson-like noise of `sample_observations` records them; a `PoissonExcess` object gives
    them in physical units. A count-0 point normalised in float32 may land a rounding step below
    the offset; the observation model's input check allows that (POISSON_COUNT_TOLERANCE).
    """
    if isinstance(likelihood, str) and likelihood == "poisson":  # argument parsing: o, s from the data
        attrs = obs.attrs or {}
        scale = attrs.get("poisson_scale", attrs.get("noise_scale") if attrs.get("noise") == "poisson" else None)
        if "poisson_offset" not in attrs or scale is None:
            raise bad_input("obs.attrs", "poisson_offset and the Poisson scale (physical) for likelihood='poisson'",
                            sorted(attrs))
        likelihood = PoissonExcess(float(attrs["poisson_offset"]), float(scale))
    return as_likelihood(likelihood).normalised(normalizer)


def _empty_padded(grid_times: np.ndarray, n_dims: int) -> PaddedObservations:
    """One all-masked slot per frame: the layout of a reconstruction without observations."""
    M = grid_times.size
    return PaddedObservations(times=grid_times, values=np.zeros((M, 1)), coords=np.zeros((M, 1, n_dims)),
                              noise_scale=np.ones((M, 1)), mask=np.zeros((M, 1), bool))


def _output_times(run: Run, times: Any) -> np.ndarray:
    out = np.asarray(run.ftm.times if times is None else times, dtype=np.float64)
    if out.ndim != 1 or out.size < 1 or not np.isfinite(out).all():
        raise bad_input("times", "a non-empty 1-D sequence of finite physical times", times)
    if out.size > 1 and (np.diff(out) <= 0).any():
        raise bad_input("times", "strictly increasing output times", out)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """A reconstruction problem, prepared once (`prepare_problem`); every sampler reads it.

    Times: `out_times (T,)` (physical output times), `grid_times (M,)` (the sampler's frames: the
    union of the output and observation times), `out_idx (T,)` (where the output times sit in it),
    `times_norm (M,)` (normalised). Observations: `padded_phys` (physical, the slots grown to
    `SLOT_MULTIPLE`), `padded` (normalised field units, padding slots parked inside the domain,
    noise std per point with the representation error where it is added), `design (M, P, D)`
    (computed on first use).
    Noise: `noise` (a `models.noise_models` object; None without observations), `sigma_y` (the
    config's level: a normalised std, "metadata" for per-point, None when inferred or without a
    σ), `infer_sigma`, `sigma_before` (Gaussian σ inferred before sampling from the marginal
    likelihood), `rep_error` / `rep_source` / `rep_applied` (the FTM's representation error).
    """

    obs: ObservationSet
    likelihood: Likelihood
    noise: NoiseModel | None
    out_times: np.ndarray
    out_grids: tuple[np.ndarray, ...]
    grid_times: np.ndarray
    out_idx: np.ndarray
    times_norm: np.ndarray
    padded_phys: PaddedObservations
    padded: PaddedObservations
    model: Any  # the FTM (`FunctionalTucker`), for the design rows
    sigma_y: Any
    infer_sigma: bool
    sigma_before: bool
    rep_error: float
    rep_source: str
    rep_applied: str

    @functools.cached_property
    def design(self) -> np.ndarray:
        """`(M, P, D)` design rows of the padded points, computed on first use: after the up-front
        memory check (`inference.upfront`), since they are one of the two big arrays."""
        M, P = self.padded.mask.shape
        coords = np.asarray(self.padded.coords)
        return np.asarray(design_rows(self.model, coords.reshape(-1, coords.shape[-1]))).reshape(M, P, -1)

    @property
    def conditioned(self) -> bool:
        return self.obs.n_points > 0

    @property
    def mask(self) -> np.ndarray:
        return np.asarray(self.padded.mask)

    def time_gram(self, run: Run) -> np.ndarray:
        """`(M, M)` float64 Gram of the run's GP prior over the frames, jitter included (the prior
        the Gaussian σ is inferred under, `inference.sigma_marginal`)."""
        M = self.grid_times.size
        return gram_float64(run.gp_params.kernel, self.times_norm) + run.gp_params.jitter * np.eye(M)


def _noise_level(noise: NoiseModel | None, std: float) -> tuple[Any, bool]:
    """`(sigma_y, infer_sigma)` of the sampler config for a noise object (normalised units)."""
    if noise is None:
        return 1.0, False  # no observations: the level weighs nothing
    if isinstance(noise, Fixed):
        return noise.sigma / std, False
    if isinstance(noise, PerPoint):
        return "metadata", False
    return None, True


def _rep_applied(conditioned: bool, sigma_before: bool, infer: bool, lik: Likelihood) -> str:
    if not conditioned:
        return "no observations"
    if sigma_before:
        return "added to the inferred noise"
    if infer:
        return "absorbed by the inferred sigma"
    return f"not used ({lik.name} likelihood)" if not lik.has_sigma else "added to the given noise"


def _normalised_padded(run: Run, padded_phys: PaddedObservations, grid_times: np.ndarray,
                       point_extra: float) -> PaddedObservations:
    """`padded_phys` in normalised field units; padding slots parked inside the domain (they may
    hold any coordinate) and given unit noise; `point_extra` added in quadrature to each point's std."""
    ftm, normalizer = run.ftm, run.ftm.normalizer
    mask = np.asarray(padded_phys.mask)
    coords = np.asarray(padded_phys.coords, dtype=np.float64)
    centre = 0.5 * (np.asarray(ftm.model.domain_lo) + np.asarray(ftm.model.domain_hi))
    return PaddedObservations(
        times=np.asarray(grid_times),
        values=np.where(mask, np.asarray(normalizer.forward(padded_phys.values)), 0.0),
        coords=np.where(mask[..., None], coords, centre),
        noise_scale=np.where(mask, np.hypot(np.asarray(padded_phys.noise_scale) / normalizer.std, point_extra), 1.0),
        mask=mask,
    )


def prepare_problem(
    run: Run,
    obs: ObservationSet,
    *,
    times: Sequence[float] | None = None,
    grids: Mapping[str, Any] | None = None,
    resolution: int = 1,
    likelihood: Likelihood | str = "gaussian",
    sigma: Any = None,
    representation_error: float | str | None = "auto",
) -> Problem:
    """Observations -> the `Problem` every sampler reads: padded on the sampler's frames,
    normalised, design rows; the likelihood and the noise converted once from the arguments
    (`sigma`: a number in physical units, "metadata", "infer", None or a `models.noise_models`
    object; see `reconstruct`)."""
    normalizer = run.ftm.normalizer
    lik = _likelihood(likelihood, obs, normalizer)
    out_times = _output_times(run, times)
    out_grids = _output_grids(run, grids, resolution)
    conditioned = obs.n_points > 0
    if conditioned:
        grid_times, out_idx, _ = union_times(out_times, obs.time_stamps())
    else:
        grid_times, out_idx = out_times, np.arange(out_times.size)
    noise = as_noise(sigma, obs) if conditioned else None
    sigma_y, infer = _noise_level(noise, normalizer.std)
    rep_error, rep_source = _representation_error(run, representation_error)
    # Gaussian noise inferred: σ drawn before sampling from the Gaussian model's marginal
    # likelihood, the representation error kept apart (`inference.sigma_marginal`); other
    # likelihoods infer σ inside the sampler, where it absorbs the representation error.
    sigma_before = conditioned and infer and lik.conjugate
    rep_applied = _rep_applied(conditioned, sigma_before, infer, lik)
    rep_added = rep_applied == "added to the given noise"  # to sigma_y here, or per point below
    if rep_added and sigma_y != "metadata":
        sigma_y = math.hypot(sigma_y, rep_error)
    padded_phys = (_pad_slots(obs.to_padded(grid_times)) if conditioned  # one padding, grown to the slot multiple
                   else _empty_padded(np.asarray(grid_times), len(run.space_dims)))
    padded = _normalised_padded(run, padded_phys, grid_times, rep_error if rep_added and sigma_y == "metadata" else 0.0)
    if not lik.has_sigma:
        sigma_y, infer = None, False
    return Problem(obs=obs, likelihood=lik, noise=noise, out_times=out_times, out_grids=out_grids,
                   grid_times=np.asarray(grid_times), out_idx=np.asarray(out_idx), times_norm=run.normalise_time(grid_times),
                   padded_phys=padded_phys, padded=padded, model=run.ftm.model, sigma_y=sigma_y, infer_sigma=infer,
                   sigma_before=sigma_before, rep_error=rep_error, rep_source=rep_source, rep_applied=rep_applied)
