"""ArviZ report of a posterior over FTM cores and fields — the only place that calls ArviZ (`inference.idata`, `.scores`, `.loo`).

`to_inference_data` assembles an `az.InferenceData` (arviz 0.23) with named dims:

- `posterior`: `cores (chain, draw, time_grid, rank_1..rank_K)` in FTM core units, `field
  (chain, draw, time, *space_dims)` in physical units with the physical coords, and `sigma
  (chain, draw)` (physical units) when the noise level was inferred;
- `posterior_predictive`: `y (chain, draw, obs_id)`, replicated observations (physical);
- `observed_data`: `y (obs_id)`;
- `log_likelihood`: `y (chain, draw, obs_id)`, pointwise log density per physical unit;
- `sample_stats`: sampler diagnostics per draw.

The observation groups carry the non-dim coords `obs_time` and `obs_<dim>` over `obs_id`, which
is the order of the points in the `ObservationSet`. "chain" means independent sampler runs,
"draw" the draws of one run.

`pointwise_log_likelihood` and `posterior_predictive` build the observation pieces from the
NumPyro observation model (`models.observation`), which works in normalised field units on the
padded (M, P) layout; they map the entries back to `obs_id` order and to physical units.

The pieces live in one module per concept; this module gathers them under the name users import:
`inference.idata` (assembly, attrs, save / load), `inference.predictive` (log-likelihood and
posterior predictive), `inference.scores` (evaluation against a truth), `inference.loo` (PSIS-LOO,
LOO-PIT), `inference.temperature` (`temper_posterior`).
"""

from __future__ import annotations

from .idata import (
    INFERENCE_LIBRARY as INFERENCE_LIBRARY,
    POSTERIOR_FORMAT_VERSION as POSTERIOR_FORMAT_VERSION,
    POSTERIOR_KIND as POSTERIOR_KIND,
    load_posterior as load_posterior,
    observation_order as observation_order,
    posterior_attrs as posterior_attrs,
    save_posterior as save_posterior,
    to_inference_data as to_inference_data,
)
from .predictive import (
    pointwise_log_likelihood as pointwise_log_likelihood,
    posterior_predictive as posterior_predictive,
)
from .scores import (
    COVERAGE_METHODS as COVERAGE_METHODS,
    coverage as coverage,
    coverage_by as coverage_by,
    crps as crps,
    evaluate as evaluate,
    p_exceed as p_exceed,
    pit as pit,
    posterior_mean as posterior_mean,
    vrmse_of_mean as vrmse_of_mean,
)
from .loo import (
    LOO_K_THRESHOLD as LOO_K_THRESHOLD,
    LOO_MAX_BAD_FRACTION as LOO_MAX_BAD_FRACTION,
    UnreliableLOOWarning as UnreliableLOOWarning,
    loo as loo,
    loo_pit as loo_pit,
    psis_log_weights as psis_log_weights,
)
from .temperature import (
    temper_posterior as temper_posterior,
)

__all__ = [
    "INFERENCE_LIBRARY",
    "POSTERIOR_FORMAT_VERSION",
    "POSTERIOR_KIND",
    "COVERAGE_METHODS",
    "coverage",
    "coverage_by",
    "crps",
    "evaluate",
    "load_posterior",
    "loo",
    "loo_pit",
    "observation_order",
    "p_exceed",
    "pit",
    "pointwise_log_likelihood",
    "posterior_attrs",
    "posterior_mean",
    "posterior_predictive",
    "psis_log_weights",
    "save_posterior",
    "temper_posterior",
    "to_inference_data",
    "UnreliableLOOWarning",
    "vrmse_of_mean",
]
