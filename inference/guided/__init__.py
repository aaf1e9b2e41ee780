"""Guided posterior sampling of FTM core sequences: moment matching (MMPS), DPS and message-passing DPS.

The prior is any denoiser `denoise(x (M, R..), sigma, t (M,)) -> x0` in normalised core units
(the trained GPSD prior, or an exact analytic one in tests); the likelihood comes from the NumPyro
observation model (`models.observation`), so every likelihood there works. The sampler is the
EDM Heun sampler over a Karras noise schedule, started from `σ_max · L z` (GP noise in time),
with the denoiser's estimate of the clean sequence corrected by the data at every step.

Units: the sampler state `x` is in normalised core units, `W = core_mean + core_std · x` in FTM
core units; observation values and σ_y are in normalised field units.

Modules (each imports only those above it):

- `config`: `GuidedConfig`, the sampler's settings;
- `problem`: `GuidedProblem` and `prepare` (validated inputs, precomputed eigenbases);
- `estimates`: the guidance rules (MMPS, `"fisher"`, `"reference"`, MPDPS messages) and the
  σ_y updates;
- `kernel`: `GuidedState`, `GuidedInfo`, `init`, `step`;
- `sampling`: `sample_posterior`, `sample_posterior_many`;
- `times`: `union_times`.

The size limits (`MAX_PRECONDITIONED_POINTS`, ...) are re-exported here to be read; `prepare`
reads them from `inference.guided.problem`, so patch them there.
"""

from .config import LIKELIHOODS, METHODS, ZETA_SCHEDULES, GuidedConfig, reference_message_kernel
from .config import Denoiser as Denoiser
from .estimates import mpdps_gradient
from .kernel import GuidedInfo, GuidedState, init, step
from .problem import ANCHOR_BUDGET as ANCHOR_BUDGET
from .problem import MAX_ABS_VALUE as MAX_ABS_VALUE
from .problem import MAX_PRECONDITIONED_FRAME as MAX_PRECONDITIONED_FRAME
from .problem import MAX_PRECONDITIONED_POINTS as MAX_PRECONDITIONED_POINTS
from .problem import MIN_SIGMA as MIN_SIGMA
from .problem import GuidedProblem, prepare
from .sampling import sample_posterior, sample_posterior_many
from .times import union_times

__all__ = [
    "METHODS",
    "ZETA_SCHEDULES",
    "LIKELIHOODS",
    "GuidedConfig",
    "GuidedProblem",
    "GuidedState",
    "GuidedInfo",
    "prepare",
    "init",
    "step",
    "sample_posterior",
    "sample_posterior_many",
    "mpdps_gradient",
    "union_times",
    "reference_message_kernel",
]

