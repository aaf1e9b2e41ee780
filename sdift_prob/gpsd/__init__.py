"""GP-based sequential diffusion (GPSD): the generative prior over Tucker-core sequences.

`unet` (the temporally augmented U-Net), `edm` (preconditioning, GP-noise loss, Heun sampler),
`prior` (`GPSDPrior`: trained network + normalisation + kernel; `save_prior`/`load_prior` for the
`"prior"` section of a run directory), `train` (`PriorConfig`, `train_prior`; the training loop and
the one-file checkpoints are `sdift_prob.training`'s, `checkpoint` re-exports the latter).
"""

from .edm import EDMConfig as EDMConfig
from .edm import edm_loss as edm_loss
from .edm import heun_sample as heun_sample
from .edm import karras_sigmas as karras_sigmas
from .edm import precondition as precondition
from .edm import preconditioning as preconditioning
from .prior import GPSDPrior as GPSDPrior
from .prior import load_prior as load_prior
from .prior import load_prior_file as load_prior_file
from .prior import save_prior as save_prior
from .prior import save_prior_file as save_prior_file
from .train import PriorConfig as PriorConfig
from .train import TrainingInterrupted as TrainingInterrupted
from .train import train_prior as train_prior
from .unet import TemporalUNet as TemporalUNet
from .unet import count_parameters as count_parameters
