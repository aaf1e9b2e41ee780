"""What every training run of the package shares (`fit_ftm`, `train_prior`), written once.

- `loop`: `run_loop` (progress bar, non-finite loss check, callback, SIGINT/SIGTERM save-and-stop,
  periodic and final checkpoints, timings) driving a model's `LoopTask`; `LoopState`,
  `LoopSettings`, `LoopTimes`, `EarlyStopping`, `StopSignals`.
- `checkpoint`: one-file checkpoints (JSON header line + Equinox-serialised leaves, atomic
  writes), `CheckpointFile` for a run's resumable checkpoint, `check_settings` /
  `check_matches` for resuming.
- `sources`: the training values in memory (`InMemory`) or streamed from disk (`Streamed`).
- `sharding`: data-parallel training over a `"batch"` mesh axis (`data_parallel`, `constrain`).
"""

from .checkpoint import CheckpointFile as CheckpointFile
from .checkpoint import check_matches as check_matches
from .checkpoint import check_settings as check_settings
from .checkpoint import load_checkpoint as load_checkpoint
from .checkpoint import read_header as read_header
from .checkpoint import save_checkpoint as save_checkpoint
from .loop import EarlyStopping as EarlyStopping
from .loop import LoopSettings as LoopSettings
from .loop import LoopState as LoopState
from .loop import LoopTask as LoopTask
from .loop import LoopTimes as LoopTimes
from .loop import StopSignals as StopSignals
from .loop import run_loop as run_loop
from .sharding import constrain as constrain
from .sharding import data_parallel as data_parallel
from .sources import EntryStats as EntryStats
from .sources import InMemory as InMemory
from .sources import Streamed as Streamed
from .sources import data_source as data_source
