"""Checks of a finished reconstruction's own output (issue 16): a diverged sampler must not
return a field as if nothing had happened.

Three symptoms that no sane posterior shows, whatever the data:

- `range`: field draws (or their mean) far outside the values the run was trained on;
- `residual`: a posterior mean that misses the observations by many times the noise level the
  run assumed (its own likelihood then says the result is wrong);
- `spread`: a posterior far wider than the prior (data can only narrow a posterior).

Everything here is a pure function of arrays in normalised field units (training mean 0,
training std 1); `reconstruct` calls `run_checks` after decoding and `enforce` to raise or warn.
A result is a JSON-ready dict, so it can go into the InferenceData attrs (`self_checks`).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from sdift_prob.errors import NumericalError, SelfCheckWarning, bad_input
from sdift_prob.ftm import decode_grid

# A field entry further than this many training stds outside the training range is a sampler that
# diverged: the shipped ocean run's own posteriors stay within 0.3 stds of its training range
# [-1.4, 1.6] (measured: 0.24), while `--steps 2` (issue 16: +-2e4 m/s) is hundreds of stds out and an
# untrained prior with 4 steps 35 (tests/test_hostile_inputs.py's MPDPS cases).
RANGE_MARGIN_STDS = 10.0
# RMS of (posterior mean - observation) / noise std at the observed points. A posterior that fits
# its data has about 1 (less where the prior and the data agree); 5 leaves room for a prior that
# disagrees with a few points but not for one that ignores them or diverged (issue 16: noise 0.01
# std, residuals of hundreds of noise stds). The noise std includes the FTM's representation
# error; where the run does not record it, a basis too coarse for precise data cannot be told
# from a failed sampler by this ratio alone (a tiny FTM gave 11.6 noise stds with the exact `gp`
# sampler), so there the check also needs the posterior mean to miss the data by more than the
# training mean would (a constant field): a coarse basis fits them partly, a diverged sampler or
# one that ignores them does not.
MAX_RESIDUAL_RATIO = 5.0
# RMS over entries of the draws' std, in training stds. The prior's is about 1 (the training
# fields have unit variance once normalised, between-trajectory differences included), and
# conditioning narrows it; 5 times that is a posterior blown up by the sampler.
MAX_SPREAD_STDS = 5.0
# Trajectories decoded to find the training range (cost: about 0.25 s for the ocean run); the
# range only sets where the 10-std margin starts, so a subset is enough.
RANGE_TRAJECTORIES = 16

CHECK_MODES = ("raise", "warn")

# What to try, per check (the messages say what was seen, these say what to do about it).
_ADVICE = {
    "range": "more sampler steps (num_steps / --steps, 20 by default), a larger noise level (sigma), or "
             "sampler='gp' to compare; output grids or times far outside the training domain also do this",
    "residual": "check that the noise level fits the data (sigma / obs.noise_scale; sigma='infer' estimates it), "
                "more sampler steps, or sampler='gp' to compare",
    "spread": "more sampler steps (num_steps / --steps), a larger noise level (sigma), or sampler='gp' to compare",
}


def check_mode(checks: Any) -> str:
    """`checks` as given, or an `InputError` unless it is one of `CHECK_MODES`."""
    if not isinstance(checks, str) or checks not in CHECK_MODES:
        raise bad_input("checks", f"one of {CHECK_MODES}", checks)
    return checks


def training_range(model: Any, cores: Any, grids: Any) -> tuple[float, float]:
    """`(min, max)` in normalised units of the training fields as the FTM decodes them, over the
    first `RANGE_TRAJECTORIES` trajectories of `cores` `(B, T, R..)` on the training `grids`."""
    sub = np.asarray(cores)[:RANGE_TRAJECTORIES]
    field = np.asarray(decode_grid(model, sub, grids))
    return float(np.nanmin(field)), float(np.nanmax(field))


def _result(name: str, passed: bool, value: float | None, limit: float, message: str) -> dict[str, Any]:
    return {"check": name, "passed": bool(passed), "value": None if value is None else float(value),
            "limit": float(limit), "message": message}


def check_range(field_norm: np.ndarray, lo: float, hi: float, *, mean: float, std: float,
                units: str = "field units") -> dict[str, Any]:
    """Every draw within `RANGE_MARGIN_STDS` training stds of the training range `[lo, hi]`
    (normalised). `value`: the furthest excess in training stds (0 inside the range). A
    non-finite entry fails the check."""
    f = np.asarray(field_norm, dtype=np.float64)
    if f.size == 0:
        return _result("range", True, 0.0, RANGE_MARGIN_STDS, "no field entries")
    if not np.isfinite(f).all():
        n_bad = int((~np.isfinite(f)).sum())
        return _result("range", False, float("inf"), RANGE_MARGIN_STDS,
                       f"{n_bad} field entries are not finite")
    excess = np.maximum(f - hi, lo - f)
    worst = float(excess.max())
    n_out = int((excess > RANGE_MARGIN_STDS).sum())
    extreme = float(f.ravel()[int(np.argmax(excess))]) * std + mean
    train = f"[{lo * std + mean:.4g}, {hi * std + mean:.4g}] {units}"
    if n_out:
        return _result("range", False, worst, RANGE_MARGIN_STDS,
                       f"{n_out} of {f.size} field entries lie more than {RANGE_MARGIN_STDS:g} training stds "
                       f"({std:.4g} {units}) outside the training range {train}, e.g. {extreme:.4g} {units} "
                       f"({worst:.3g} stds beyond)")
    return _result("range", True, max(worst, 0.0), RANGE_MARGIN_STDS,
                   f"within {max(worst, 0.0):.3g} training stds of the training range {train}")


def predicted_at_observations(core_draws: np.ndarray, design: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The posterior mean at the observed points, `(N,)` normalised, in padded row-major order:
    the mean cores `(M, R..)` over every chain and draw times the design rows `(M, P, D)`."""
    design = np.asarray(design)  # no copy: with 10^6 points the rows take gigabytes
    m = design.shape[0]
    mean_cores = np.asarray(core_draws, dtype=np.float64).reshape(-1, m, design.shape[-1]).mean(axis=0)
    return np.einsum("mpd,md->mp", design, mean_cores.astype(design.dtype))[np.asarray(mask)].astype(np.float64)


def _rms(x: np.ndarray, robust: bool) -> float:
    """RMS of `x`, or (`robust`) its estimate from the median of `x**2` (the median of a
    chi-square(1) is 0.455), which a few outliers do not move."""
    return float(np.sqrt(np.median(x**2) / 0.455)) if robust else float(np.sqrt(np.mean(x**2)))


def check_residual(predicted: np.ndarray, observed: np.ndarray, noise: Any, *, robust: bool = False,
                   noise_source: str = "", basis_error_known: bool = True) -> dict[str, Any]:
    """RMS of `(predicted - observed) / noise` at the observed points (all normalised) at most
    `MAX_RESIDUAL_RATIO`. `noise`: a scalar or one std per point. `robust` (heavy-tailed
    likelihoods, where outliers are expected): RMS estimated from medians (`_rms`). Without
    `basis_error_known` (the noise lacks the FTM's representation error) the check also passes
    when the posterior mean is closer to the data than the training mean (0, normalised) is."""
    p = np.asarray(predicted, dtype=np.float64)
    y = np.asarray(observed, dtype=np.float64)
    if p.size == 0:
        return _result("residual", True, None, MAX_RESIDUAL_RATIO, "no observations")
    s = np.broadcast_to(np.asarray(noise, dtype=np.float64), y.shape)
    ratio = _rms((p - y) / s, robust)
    if not np.isfinite(ratio):
        return _result("residual", False, float("inf"), MAX_RESIDUAL_RATIO,
                       "the posterior mean at the observed points is not finite")
    misfit, constant = _rms(p - y, robust), _rms(y, robust)
    passed = ratio <= MAX_RESIDUAL_RATIO or (not basis_error_known and misfit < constant)
    stat = "robust RMS" if robust else "RMS"
    text = (f"the posterior mean misses the {y.size} observations by an {stat} of {ratio:.3g} noise stds "
            f"(noise used: {noise_source or 'as given'}), {misfit:.3g} training stds against {constant:.3g} for a "
            "field equal to the training mean")
    return _result("residual", passed, ratio, MAX_RESIDUAL_RATIO, text)


def check_spread(field_norm: np.ndarray) -> dict[str, Any]:
    """RMS over entries of the std across draws `(chain, draw, ...)`, in training stds, at most
    `MAX_SPREAD_STDS`; passes without a value when there is a single draw."""
    f = np.asarray(field_norm, dtype=np.float64)
    n = f.shape[0] * f.shape[1]
    if n < 2:
        return _result("spread", True, None, MAX_SPREAD_STDS, "a single draw: no spread to check")
    spread = float(np.sqrt(np.mean(f.reshape(n, -1).var(axis=0, ddof=1))))
    text = (f"the draws' std is {spread:.3g} training stds (RMS over entries, {n} draws); the prior's is "
            "about 1")
    return _result("spread", bool(np.isfinite(spread)) and spread <= MAX_SPREAD_STDS, spread, MAX_SPREAD_STDS,
                   text)


def run_checks(*, field_norm: np.ndarray, train_range: tuple[float, float], mean: float, std: float,
               units: str = "field units", predicted: np.ndarray | None = None,
               observed: np.ndarray | None = None, noise: Any = None, noise_source: str = "",
               robust: bool = False, basis_error_known: bool = True) -> list[dict[str, Any]]:
    """Every check on one reconstruction: range and spread of the field draws
    `(chain, draw, T, *space)` (normalised), and the residual at the observations when
    `predicted`, `observed` and `noise` are given (it is left out for likelihoods without a noise
    std, e.g. Poisson, and for unconditioned draws)."""
    out = [check_range(field_norm, *train_range, mean=mean, std=std, units=units)]
    if predicted is not None and observed is not None and noise is not None:
        out.append(check_residual(predicted, observed, noise, robust=robust, noise_source=noise_source,
                                  basis_error_known=basis_error_known))
    out.append(check_spread(field_norm))
    return out


def failed(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results of the checks that did not pass."""
    return [r for r in results if not r["passed"]]


def failure_text(result: dict[str, Any]) -> str:
    """One line per failed check: its name, what was seen, the limit and what to try."""
    name = result["check"]
    return (f"self-check '{name}' failed: {result['message']} (limit {result['limit']:g}); "
            f"try {_ADVICE[name]}")


def enforce(results: list[dict[str, Any]], mode: str, *, stacklevel: int = 2) -> None:
    """`mode="raise"`: a `NumericalError` naming every failed check and what to try, ending with
    how to keep the result anyway; `"warn"`: one `SelfCheckWarning` saying the same."""
    bad = failed(results)
    if not bad:
        return
    text = "; ".join(failure_text(r) for r in bad)
    if mode == "raise":
        raise NumericalError(f"{text}. To keep this result anyway, pass checks='warn' (CLI: --checks warn); "
                             "the failed checks are then recorded in the posterior's attrs (self_checks)")
    warnings.warn(text, SelfCheckWarning, stacklevel=stacklevel + 1)
