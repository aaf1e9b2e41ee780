"""Functional Tucker Model: shared coordinate networks + per-trajectory core sequences.

`coordnet` (SIREN coordinate networks), `tucker` (the model and decoding), `fit` (fitting
on a field collection; settings in `config`, compiled steps in `steps`), `encode` (MAP cores
of a new trajectory; `encode_grid`: many full-grid trajectories through the fixed basis),
`ranks` (choosing ranks for a target error), `bundle` (run directories).
"""

from .bundle import append_cores as append_cores
from .bundle import core_provenance as core_provenance
from .bundle import load_run as load_run
from .bundle import save_run as save_run
from .coordnet import CoordinateNet as CoordinateNet
from .encode import encode as encode
from .encode import encode_grid as encode_grid
from .fit import FTMConfig as FTMConfig
from .fit import FTMFit as FTMFit
from .fit import fit_ftm as fit_ftm
from .tucker import ExtrapolationWarning as ExtrapolationWarning
from .tucker import FunctionalTucker as FunctionalTucker
from .tucker import basis_matrices as basis_matrices
from .tucker import check_ranks as check_ranks
from .tucker import decode_grid as decode_grid
from .tucker import decode_points as decode_points
from .tucker import design_rows as design_rows
