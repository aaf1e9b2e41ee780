"""Calibration of a posterior sampler on held-out observations: guidance strength ζ and
posterior temperature τ.

A random fraction of the observations is held out (stratified per time stamp). For every
candidate ζ the caller's sampler conditions on the rest and predicts the held-out points. The
predictive draws are scored against the held-out values with the (fair) CRPS and the coverage
of central intervals (`sdift_prob.metrics`; draw-count-aware predictive intervals, so the
chosen τ does not compensate for the narrowness of few-draw quantiles), with the spread
tempered by each candidate τ.

Choice rule:

1. **ζ** minimises the held-out CRPS, each ζ taken at its best temperature of the grid (CRPS is
   proper, so a ζ is not penalised for a spread that a temperature can repair).
2. **τ** is then the smallest temperature at which the held-out coverage of every central
   interval in `levels` reaches its nominal level. It is solved exactly (not restricted to
   the grid): tempering scales every interval about the ensemble mean, so coverage only changes
   where an interval edge crosses a held-out value.

Temperature: `apply_temperature(draws, τ) = mean + sqrt(τ) (draws - mean)` over the draw axis,
so τ multiplies the predictive variance (as the temperature of a tempered Gaussian posterior
`p^(1/τ)` does); τ > 1 widens, τ < 1 narrows, τ = 1 leaves the draws as they are.

The sampler is any callable, so this works for every sampler of the project (DPS, MPDPS, the GP
baseline) and for anything else that can predict held-out points.

`calibrate` validates itself: its "after" coverage is measured on the points τ was fitted on, so it
is nominal by construction, and its τ tempers predictions that include the observation noise. The
**K-fold** functions (`kfold_split`, `predict_folds`, `calibrate_folds`, `calibrate_kfold`) fit τ on
the field's share of the predictive only, hold out every observation once, and report the coverage on
folds not used to fit τ (out-of-fold) beside the in-fold figure, for observed frames and frames without
data separately. Apply a τ to a whole posterior (field, cores, posterior predictive, log-likelihood)
with `inference.report.temper_posterior`.

The pieces: `inference.holdout` (one held-out split, `calibrate`), `inference.kfold` (the K-fold
route), `inference.temperature` (`apply_temperature`); this module gathers them.
"""

from __future__ import annotations

from .holdout import (
    CalibrationResult as CalibrationResult,
    DEFAULT_TEMPERATURES as DEFAULT_TEMPERATURES,
    DEFAULT_ZETAS as DEFAULT_ZETAS,
    SamplePredictive as SamplePredictive,
    calibrate as calibrate,
    holdout_split as holdout_split,
)
from .temperature import (
    apply_temperature as apply_temperature,
)
from .kfold import (
    FOLD_LIKELIHOODS as FOLD_LIKELIHOODS,
    FoldPredictions as FoldPredictions,
    KFOLD_TEMPERATURES as KFOLD_TEMPERATURES,
    KFoldCalibration as KFoldCalibration,
    PredictFold as PredictFold,
    STAGES as STAGES,
    SUBSETS as SUBSETS,
    calibrate_folds as calibrate_folds,
    calibrate_kfold as calibrate_kfold,
    fold_log_lik as fold_log_lik,
    kfold_split as kfold_split,
    predict_folds as predict_folds,
)

__all__ = [
    "DEFAULT_TEMPERATURES",
    "DEFAULT_ZETAS",
    "FOLD_LIKELIHOODS",
    "KFOLD_TEMPERATURES",
    "CalibrationResult",
    "FoldPredictions",
    "KFoldCalibration",
    "PredictFold",
    "SamplePredictive",
    "apply_temperature",
    "calibrate",
    "calibrate_folds",
    "calibrate_kfold",
    "fold_log_lik",
    "holdout_split",
    "kfold_split",
    "predict_folds",
]
