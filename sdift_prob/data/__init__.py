"""Data layer: field collections (`fields`), sparse observations (`observations`), synthetic
observations of a trajectory (`sampling`), readers of the analyst's own files (`readers`:
`from_xarray`, `observations_from_dataframe`, `observations_from_xarray`).

Imports run one way: `fields` <- `observations` <- `sampling`, `readers`.

The simulators live in `sdift_prob.data.simulate` and are imported from there on demand.
"""

from .fields import Normalizer as Normalizer
from .fields import assign_split as assign_split
from .fields import field_metadata as field_metadata
from .fields import load_fields as load_fields
from .fields import make_field_dataset as make_field_dataset
from .fields import save_fields as save_fields
from .fields import space_dims as space_dims
from .fields import test_part as test_part
from .fields import train_part as train_part
from .fields import validate_field_dataset as validate_field_dataset
from .observations import NOISE_MODELS as NOISE_MODELS
from .observations import ObservationSet as ObservationSet
from .observations import PaddedObservations as PaddedObservations
from .readers import from_xarray as from_xarray
from .readers import observations_from_dataframe as observations_from_dataframe
from .readers import observations_from_xarray as observations_from_xarray
from .readers import to_float_time as to_float_time
from .sampling import PATTERNS as PATTERNS
from .sampling import add_noise as add_noise
from .sampling import sample_observations as sample_observations
from .sampling import select_trajectory as select_trajectory
