"""The training loop of `fit_ftm` (one unit = one epoch) and `train_prior` (one unit = one step).

`run_loop` drives a `LoopTask` (the model-specific part: one unit of optimisation, the
bookkeeping after it, the checkpoint contents) from `LoopState.unit` to `LoopSettings.total`
and does everything else once: the progress bar, the check for a non-finite loss, the callback,
SIGINT/SIGTERM (save, then `TrainingInterrupted`), periodic and final checkpoints, and the time
of the first unit (compilation) and of the whole loop. `EarlyStopping` keeps the best score of
periodic evaluations and says when to stop.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from tqdm.auto import tqdm

from ..errors import NumericalError, TrainingInterrupted
from .checkpoint import CheckpointFile


class StopSignals:
    """While in its `with` block (when `enabled`, and only in the main thread), SIGINT and SIGTERM
    are recorded in `received` instead of stopping the program; the old handlers come back after."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _on_signal(self, signum, frame) -> None:
        self.received = signum

    def __enter__(self) -> StopSignals:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


@dataclasses.dataclass
class EarlyStopping:
    """Best score of the periodic evaluations, and when to stop.

    `update(unit, score)` records one evaluation and says whether it is the new best. With
    `enabled`, `patience` evaluations in a row without improvement set `stopped`; without, every
    evaluation counts as the best (the last parameters are kept) and it never stops.
    """

    patience: int
    enabled: bool = True
    scores: list[float] = dataclasses.field(default_factory=list)
    units: list[int] = dataclasses.field(default_factory=list)
    best_unit: int = 0
    best_score: float = math.inf
    bad_evals: int = 0
    stopped: bool = False

    def update(self, unit: int, score: float) -> bool:
        self.scores.append(score)
        self.units.append(unit)
        if score < self.best_score or not self.enabled:
            self.best_score, self.best_unit, self.bad_evals = score, unit, 0
            return True
        self.bad_evals += 1
        if self.bad_evals >= self.patience:
            self.stopped = True
        return False


@dataclasses.dataclass
class LoopState:
    """Units done and the loss of each (restored from a checkpoint when resuming)."""

    unit: int = 0
    losses: list[float] = dataclasses.field(default_factory=list)


class LoopTask(Protocol):
    """What `run_loop` asks of a model's training."""

    def run_unit(self, unit: int) -> float:
        """Run unit `unit` (1-based) of optimisation; return its loss."""

    def nonfinite_message(self, unit: int, loss: float) -> str:
        """The `NumericalError` message when unit `unit` gave the loss `loss`."""

    def record(self, unit: int, loss: float) -> tuple[dict[str, str] | None, bool]:
        """Bookkeeping after a finite unit: `(progress-bar postfix or None, stop now)`."""

    def checkpoint_contents(self) -> tuple[dict[str, Any], Any]:
        """`(header, tree)` of a checkpoint of the current state."""


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """`name` and `unit` word the messages (`"fit_ftm"`, `"epoch"`); `total` units in all;
    `desc` labels the progress bar (shown when `progress`); a checkpoint every `checkpoint_every`
    units; `callback(unit, loss)` after every unit; `catch_signals`: save and stop on
    SIGINT/SIGTERM."""

    name: str
    unit: str
    total: int
    desc: str
    progress: bool = True
    checkpoint_every: int = 1
    callback: Callable[[int, float], None] | None = None
    catch_signals: bool = True


@dataclasses.dataclass(frozen=True)
class LoopTimes:
    """Seconds until the end of the first unit run (compilation included; None when none ran) and
    of the whole loop."""

    first_unit_s: float | None
    wall_s: float


def run_loop(task: LoopTask, state: LoopState, settings: LoopSettings, checkpoint: CheckpointFile, *,
             done: bool = False) -> LoopTimes:
    """Run `task` from `state.unit` to `settings.total` units (or until `task.record` says stop).

    `state` is updated after every unit. A checkpoint is saved every `checkpoint_every` units
    (not after the last one), at the end when a unit ran or no file exists yet, and on
    SIGINT/SIGTERM after the unit under way, then `TrainingInterrupted` is raised. `done`: the run
    had already stopped (e.g. early, before a resume); only the final checkpoint is written.

    **Raises:** `NumericalError` (with `task.nonfinite_message`) when a loss is not finite.
    """
    start = state.unit
    t_start = time.perf_counter()
    first_unit = None
    bar = tqdm(total=settings.total, initial=start, desc=settings.desc, unit=settings.unit,
               disable=not settings.progress)
    try:
        with StopSignals(settings.catch_signals) as stop:
            while not done and state.unit < settings.total:
                unit = state.unit + 1
                loss = task.run_unit(unit)
                if first_unit is None:
                    first_unit = time.perf_counter() - t_start
                if not math.isfinite(loss):
                    raise NumericalError(task.nonfinite_message(unit, loss))
                state.unit = unit
                state.losses.append(loss)
                postfix, done = task.record(unit, loss)
                if postfix:
                    bar.set_postfix(postfix)
                bar.update(1)
                if settings.callback is not None:
                    settings.callback(unit, loss)
                if stop.received is not None:
                    checkpoint.save(*task.checkpoint_contents())
                    raise _interrupted(settings, stop.received, unit, checkpoint)
                if unit % settings.checkpoint_every == 0 and not done and unit < settings.total:
                    checkpoint.save(*task.checkpoint_contents())
            if checkpoint.path is not None and (state.unit > start or not checkpoint.exists()):
                checkpoint.save(*task.checkpoint_contents())
    finally:
        bar.close()
    return LoopTimes(first_unit, time.perf_counter() - t_start)


def _interrupted(settings: LoopSettings, signum: int, unit: int, checkpoint: CheckpointFile) -> TrainingInterrupted:
    path = checkpoint.path
    where = f"checkpoint saved to {path}; rerun to resume" if path else "no checkpoint_dir, nothing saved"
    return TrainingInterrupted(
        f"{settings.name} interrupted by signal {signal.Signals(signum).name} after {settings.unit} {unit}; {where}",
        unit, path,
    )
