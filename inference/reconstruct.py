"""`reconstruct`: the one call users make — observations of one trajectory in, posterior out.

It wires the stages together and adds no method of its own: the FTM gives the design rows
(`sdift_prob.ftm`), the trained GPSD prior the denoiser (`sdift_prob.gpsd`), `inference.guided`
draws the cores (or `models.gp_prior` for the conjugate `gp` baseline), the FTM decodes them,
and `inference.report` turns everything into an `az.InferenceData`.

The pieces, one concept per module (this module gathers them under the names users import):
`inference.run` (`Run`, `open_run`), `inference.samplers` (sampler names and their configs),
`inference.problem` (preparing the problem: grids, noise, padded observations), `inference.pipeline`
(`reconstruct` itself), `inference.upfront` (checks before any work), `inference.run_facts` (what the
run did, the output's self-checks), `inference.run_calibration` (held-out calibration, K-fold
predictions, tempering of a reconstruction).
"""

from __future__ import annotations

from .samplers import (
    DEFAULT_SAMPLER as DEFAULT_SAMPLER,
    SAMPLERS as SAMPLERS,
    sampler_config as sampler_config,
)
from .pipeline import (
    DEFAULT_DRAWS as DEFAULT_DRAWS,
    reconstruct as reconstruct,
)
from .upfront import (
    DEFAULT_MAX_ABS_ZSCORE as DEFAULT_MAX_ABS_ZSCORE,
    DEFAULT_MAX_MEMORY_GB as DEFAULT_MAX_MEMORY_GB,
    DESIGN_COPIES as DESIGN_COPIES,
    FAR_TIME_SPANS as FAR_TIME_SPANS,
    FIELD_COPIES as FIELD_COPIES,
    GP_BYTES_PER_ENTRY as GP_BYTES_PER_ENTRY,
    memory_estimate as memory_estimate,
    spans_outside as spans_outside,
    units_hint as units_hint,
)
from .run import (
    Run as Run,
    open_run as open_run,
)
from .problem import (
    SLOT_MULTIPLE as SLOT_MULTIPLE,
    Problem as Problem,
    prepare_problem as prepare_problem,
    _pad_slots as _pad_slots,
    refine_grid as refine_grid,
)
from .run_calibration import (
    _noise_sd as _noise_sd,
    calibrate_reconstruction as calibrate_reconstruction,
    field_at_observations as field_at_observations,
    predict_folds_reconstruction as predict_folds_reconstruction,
    temper_reconstruction as temper_reconstruction,
)
from .run_facts import (
    _noise_source as _noise_source,
)

from .samplers import ConjugateGP as ConjugateGP, Guided as Guided, PriorOnly as PriorOnly  # noqa: E402
from .samplers import SamplerDraws as SamplerDraws, select_sampler as select_sampler  # noqa: E402
