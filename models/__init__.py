"""NumPyro models of SDIFT: observation likelihoods, the GP temporal prior, the diffusion score prior.

- `models.likelihoods`: `Gaussian`, `Laplace`, `StudentT`, `PoissonExcess` (likelihood objects),
  `as_likelihood` (an object from an old name). `models.PoissonExcess` stays the NumPyro
  distribution of `models.observation`; the likelihood object is `models.likelihoods.PoissonExcess`.
- `models.observation`: `observation_model`, `likelihood_grad`, `fisher_diag_scale`, ...
- `models.gp_prior`: `gp_temporal_prior`, `GPPriorParams`, `conjugate_posterior`, `sample_conjugate`.
- `models.score_prior`: `ScorePrior` (sampling and score of a trained GPSD prior).
"""

from .gp_prior import (
    CorePosterior as CorePosterior,
    GPPriorParams as GPPriorParams,
    KroneckerTimeNormal as KroneckerTimeNormal,
    conjugate_posterior as conjugate_posterior,
    gp_temporal_prior as gp_temporal_prior,
    sample_conjugate as sample_conjugate,
)
from .likelihoods import (
    Gaussian as Gaussian,
    Laplace as Laplace,
    Likelihood as Likelihood,
    StudentT as StudentT,
    as_likelihood as as_likelihood,
)
from .observation import (
    LIKELIHOODS as LIKELIHOODS,
    PoissonExcess as PoissonExcess,
    check_observation_inputs as check_observation_inputs,
    fisher_diag_scale as fisher_diag_scale,
    likelihood_grad as likelihood_grad,
    log_likelihood_fn as log_likelihood_fn,
    normalise_padded as normalise_padded,
    observation_model as observation_model,
)
from .score_prior import ScorePrior as ScorePrior
