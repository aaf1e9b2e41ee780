"""Fitting the Functional Tucker Model: shared coordinate networks + free per-trajectory cores.

The objective, optimisers and compiled steps are in `steps`, the settings in `config`; the
training loop (checkpoints, SIGINT/SIGTERM, early stopping, progress, data-parallel sharding)
is `sdift_prob.training`'s, shared with the GPSD prior, and the values come from a
`sdift_prob.training` data source (in memory, or streamed from disk). An auto-decoder: the cores
are free parameters, the networks are shared. Early stopping watches a held-out fraction of
entries of the same trajectories, which catches the cores memorising the training mask.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time as _time
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jaxtyping import Array, Float, PRNGKeyArray

from ..data.fields import Normalizer, field_metadata, space_dims, validate_field_dataset
from ..errors import FormatError, NumericalError, bad_input
from ..streaming import is_lazy
from ..training import (CheckpointFile, EarlyStopping, EntryStats, InMemory, LoopSettings, LoopState, LoopTimes,
                        Streamed, check_matches, check_settings, data_parallel, data_source, run_loop)
from ..validation import check_count, check_key
from .config import FTMConfig
from .steps import _masks as _masks  # noqa: F401  (re-exported: the whole-array masks, for tests)
from .steps import (_epoch_order, _numpy_rng, _optimizers, _run_epoch, _sse_per_trajectory, _stream_step,
                    _trajectory_masks)
from .tucker import FunctionalTucker, check_ranks, decode_grid

FIT_CHECKPOINT_KIND = "ftm_fit_checkpoint"
FIT_CHECKPOINT_NAME = "ftm-checkpoint.eqx"
_STATE_KEYS = ("epoch", "loss_curve", "holdout_curve", "eval_epochs", "best_epoch", "best_score", "bad_evals",
               "stopped_early")


@dataclasses.dataclass(frozen=True, eq=False)
class FTMFit:
    """A fitted Functional Tucker Model of a set of training trajectories.

    - `model`: the `FunctionalTucker` (shared networks).
    - `cores`: `(B, T, R_1, ..., R_K)` core sequences (float32), in normalised field units.
    - `times`: `(T,)` physical time stamps of the training grid.
    - `normalizer`: field normalisation (physical -> normalised).
    - `time_domain`: `(t0, t1)`, physical; normalised time is `(t - t0) / (t1 - t0)`.
    - `trajectory_ids`: `(B,)` the `trajectory` coordinate of the fitted trajectories.
    - `config`: the `FTMConfig` used (with `ranks` set).
    - `grids`: K arrays, the physical coordinates of the training grid per space dim.
    - `metadata`: units and names of the data (`sdift_prob.data.fields.field_metadata`),
      recorded by `save_run` in the run's provenance.
    """

    model: FunctionalTucker
    cores: Float[Array, "B T *ranks"]
    times: np.ndarray
    normalizer: Normalizer
    time_domain: tuple[float, float]
    trajectory_ids: np.ndarray
    config: FTMConfig
    grids: tuple[np.ndarray, ...]
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def normalised_times(self) -> np.ndarray:
        """`(T,)` training time stamps mapped to `[0, 1]`."""
        t0, t1 = self.time_domain
        if t1 == t0:
            return np.zeros_like(self.times)
        return (self.times - t0) / (t1 - t0)

    def decode(self, grids: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Decoded fields of all fitted trajectories in physical units.

        **Arguments:**

        - `grids`: K coordinate arrays (default: the training grid).

        **Returns:** `(B, T, I_1, ..., I_K)` float32 NumPy array.
        """
        g = self.grids if grids is None else grids
        out = decode_grid(self.model, self.cores, g)
        return np.asarray(self.normalizer.inverse(np.asarray(out)), dtype=np.float32)


def _check_callback(callback: object) -> None:
    if callback is not None and not callable(callback):
        raise bad_input("callback", "None or a callable callback(epoch, loss)", callback)


def _vrmse_from_sse(sse: np.ndarray, counts: np.ndarray, variance: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(np.where(counts > 0, sse / np.maximum(counts, 1), np.nan) / (variance + 1e-7))


def fit_ftm(
    fields: xr.Dataset,
    ranks: Sequence[int],
    *,
    key: PRNGKeyArray,
    config: FTMConfig | None = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    checkpoint_every: int = 10,
    callback: Callable[[int, float], None] | None = None,
    devices: int | None = None,
    stream: bool | None = None,
    chunk_trajectories: int = 64,
) -> tuple[FTMFit, dict[str, Any]]:
    """Fit shared coordinate networks and per-trajectory cores to a field collection.

    Every trajectory of `fields` is fitted (select the training ones first, e.g. with
    `sdift_prob.data.fields.train_part`). The training/held-out masks, the initialisation and
    the minibatch order are all drawn from `key`.

    **Arguments:**

    - `fields`: a field collection, `field` of dims `(trajectory, time, *space_dims)`; may be
      opened lazily (`sdift_prob.streaming.open_fields_lazy`), then it is streamed (below).
    - `ranks`: `(R_1, ..., R_K)`, one positive integer per space dim.
    - `key`: typed PRNG key.
    - `config`: `FTMConfig` (default settings when None).
    - `progress`: show a tqdm progress bar with the running loss.
    - `checkpoint_dir`: folder for `ftm-checkpoint.eqx`, written every `checkpoint_every`
      epochs, at the end, and on SIGINT/SIGTERM (after the epoch under way; then
      `TrainingInterrupted` is raised). Created if missing.
    - `resume`: continue from the checkpoint in `checkpoint_dir` when there is one (same data,
      ranks, config and key required); the result is bitwise that of an uninterrupted fit.
    - `checkpoint_every`: epochs between checkpoints (>= 1).
    - `callback`: called as `callback(epoch, loss)` after every epoch (host side).
    - `devices`: data-parallel training over devices (the minibatch of trajectories split over
      a mesh axis `"batch"`, networks replicated, gradients all-reduced): None = automatic (all
      devices when there are several; `batch_trajectories` must divide, else the largest
      divisor is used), or an int (1 = off). Results match 1 device to float32 rounding.
    - `stream`: read the values one minibatch at a time instead of holding them in memory
      (None: automatically when `fields["field"]` is lazy). A streamed fit of a lazy file is
      bitwise the streamed fit of the same data in memory; it is not bitwise the in-memory
      (whole-epoch `lax.scan`) fit, but equal to float32 rounding.
    - `chunk_trajectories`: trajectories per block in the streamed statistics/evaluation passes.

    **Returns:** `(fit, report)`. `fit` is an `FTMFit`; `report` a dict with `loss_curve` (per
    epoch), `holdout_curve` and `eval_epochs`, `best_epoch`, `epochs`, `steps`,
    `stopped_early`, `train_vrmse` / `holdout_vrmse` / `full_vrmse` (means over trajectories,
    physical units, on training / held-out / all entries; `*_per_trajectory` lists too),
    entry counts, `wall_time_s`, `compile_time_s`, `trajectory_epochs_per_s`, `resumed_from`,
    `devices`, `streamed`.

    **Raises:** `NumericalError` naming the epoch when the loss becomes non-finite;
    `TrainingInterrupted` after saving a checkpoint when SIGINT/SIGTERM arrives.
    """
    start = _time.perf_counter()
    stream, dims, config = _check_arguments(fields, ranks, key, config, stream, progress=progress, resume=resume,
                                            checkpoint_every=checkpoint_every, chunk=chunk_trajectories,
                                            callback=callback)
    k_mask, k_model, k_cores, k_order = jax.random.split(key, 4)
    data = _fit_data(fields, dims, config, k_mask, stream, int(chunk_trajectories))
    header = {
        "sdift_kind": FIT_CHECKPOINT_KIND, "config": config.to_dict(), "data_fingerprint": data.stats.fingerprint,
        "key_data": np.asarray(jax.random.key_data(key)).tolist(), "shape": list(data.source.shape),
    }
    trainer = _FTMTrainer(data, config, header, (k_model, k_cores, k_order), devices)
    checkpoint = CheckpointFile(checkpoint_dir, FIT_CHECKPOINT_NAME, FIT_CHECKPOINT_KIND)
    resumed_from = trainer.restore(checkpoint) if resume and checkpoint.exists() else None
    settings = LoopSettings("fit_ftm", "epoch", trainer.epochs, "fit-ftm", progress, checkpoint_every, callback,
                            catch_signals=checkpoint.path is not None)
    times = run_loop(trainer, trainer.loop, settings, checkpoint, done=trainer.early.stopped)
    return _finish(fields, data, trainer, times, resumed_from, start)


def _check_arguments(fields, ranks, key, config, stream, *, progress, resume, checkpoint_every, chunk, callback):
    """Check the arguments of `fit_ftm`; return `(stream, space dims, config with ranks set)`."""
    if not isinstance(fields, xr.Dataset):
        raise bad_input("fields", "an xr.Dataset field collection", type(fields).__name__)
    lazy = "field" in fields.data_vars and is_lazy(fields["field"])
    if stream is None:
        stream = lazy
    if not isinstance(stream, bool):
        raise bad_input("stream", "None, True or False", stream)
    if stream and lazy:
        # the values are checked (finite) block by block as they are read
        if "trajectory" not in fields.dims or fields.sizes["trajectory"] < 1:
            raise bad_input("fields", "a field collection with at least one trajectory", dict(fields.sizes))
        validate_field_dataset(fields.isel(trajectory=slice(0, 1)).load(), require_split=False)
    else:
        validate_field_dataset(fields, require_split=False)
    dims = space_dims(fields)
    ranks_t = check_ranks(ranks, len(dims))
    config = FTMConfig() if config is None else config
    if not isinstance(config, FTMConfig):
        raise bad_input("config", "an FTMConfig or None", type(config).__name__)
    if config.ranks is not None and tuple(config.ranks) != ranks_t:
        raise bad_input("config.ranks", f"None or the ranks argument {ranks_t}", config.ranks)
    check_key(key)
    if not isinstance(progress, bool):
        raise bad_input("progress", "True or False", progress)
    if not isinstance(resume, bool):
        raise bad_input("resume", "True or False", resume)
    check_count(checkpoint_every, "checkpoint_every")
    check_count(chunk, "chunk_trajectories")
    _check_callback(callback)
    return stream, dims, dataclasses.replace(config, ranks=ranks_t)


@dataclasses.dataclass(frozen=True)
class _FitData:
    """The training values (a `sdift_prob.training` data source, normalised), their grid and the
    statistics of their training / held-out entries."""

    source: InMemory | Streamed
    dims: tuple[str, ...]
    grids: tuple[np.ndarray, ...]
    times: np.ndarray
    ids: np.ndarray
    stats: EntryStats
    normalizer: Normalizer

    @property
    def n_holdout(self) -> int:
        return int(self.stats.n_holdout.sum())

    def sse(self, model: FunctionalTucker, cores) -> np.ndarray:
        """`(B, 3)` sums of squared errors per trajectory (training, held-out, all entries)."""
        grids_j = tuple(jnp.asarray(g, dtype=jnp.float32) for g in self.grids)  # cheap next to the pass
        return np.concatenate([np.asarray(_sse_per_trajectory(model, cores[lo:hi], y, tr, ho, grids_j))
                               for lo, hi, y, tr, ho in self.source.device_blocks()])

    def variance(self) -> np.ndarray:
        """`(B,)` variance of each trajectory's normalised values."""
        return np.concatenate([self.normalizer.forward(block).reshape(hi - lo, -1).var(axis=1)
                               for lo, hi, block in self.source.host_blocks()])


def _fit_data(fields: xr.Dataset, dims, config: FTMConfig, k_mask, stream: bool, chunk: int) -> _FitData:
    """Open the values (in memory or streamed), draw the masks from `k_mask`, normalise."""
    fractions = (config.train_fraction, config.holdout_fraction)
    traj_shape = tuple(fields["field"].shape[1:])

    def masks(lo: int, hi: int):
        return _trajectory_masks(k_mask, lo, hi, traj_shape, *fractions)

    source = data_source(fields["field"], masks, stream=stream, chunk=chunk)
    grids = tuple(np.asarray(fields[d].values, dtype=np.float64) for d in dims)
    for d, g in zip(dims, grids):
        if g.size < 2:
            raise bad_input("fields", "at least two coordinates along every space dim to define a domain", f"{d!r} has {g.size}")
    times = np.asarray(fields["time"].values, dtype=np.float64)
    n_traj = source.shape[0]
    ids = np.asarray(fields["trajectory"].values) if "trajectory" in fields.coords else np.arange(n_traj)
    stats = source.statistics()
    if (stats.n_train == 0).any():
        raise bad_input(
            "config.train_fraction",
            "a fraction large enough that every trajectory keeps training entries",
            config.train_fraction,
        )
    if not stats.std > 0:
        raise bad_input("fields", "training entries that are not all equal", f"std {stats.std}")
    normalizer = Normalizer(mean=float(stats.mean), std=float(stats.std))
    source.prepare(normalizer.forward)
    return _FitData(source, tuple(dims), grids, times, ids, stats, normalizer)


class _FTMTrainer:
    """The state of one fit, and what `sdift_prob.training.run_loop` asks of it (a unit is an
    epoch: every trajectory once, in minibatches of `batch` trajectories)."""

    def __init__(self, data: _FitData, config: FTMConfig, header: dict[str, Any], keys, devices):
        k_model, k_cores, self.k_order = keys
        self.data, self.config, self.header = data, config, header
        n_traj, n_time = data.source.shape[:2]
        self.model = FunctionalTucker(
            config.ranks, domain_lo=[float(g[0]) for g in data.grids], domain_hi=[float(g[-1]) for g in data.grids],
            space_dims=data.dims, width=config.width, depth=config.depth,
            omega=config.omega, margin=config.margin, key=k_model,
        )
        self.cores = jnp.asarray(config.core_init_scale * _numpy_rng(k_cores).standard_normal(
            (n_traj, n_time, *config.ranks)), dtype=jnp.float32)
        self.batch = min(config.batch_trajectories, n_traj)
        self.steps_per_epoch = -(-n_traj // self.batch)
        self.epochs = config.epochs if config.steps is None else -(-config.steps // self.steps_per_epoch)
        total_steps = self.epochs * self.steps_per_epoch
        self.warmup = min(config.warmup, total_steps // 2)
        self.opt_nets, self.opt_cores = _optimizers(config.lr, config.lr_cores, config.weight_decay, self.warmup,
                                                    total_steps, self.steps_per_epoch, self.epochs)
        self.nets_state = self.opt_nets.init(eqx.filter(self.model, eqx.is_inexact_array))
        self.cores_state = jax.vmap(self.opt_cores.init)(self.cores)
        self.n_dev, self.mesh = data_parallel(devices, self.batch, what="batch_trajectories")
        self.grids_j = tuple(jnp.asarray(g, dtype=jnp.float32) for g in data.grids)
        self.beta_tv = jnp.asarray(config.beta_tv, dtype=jnp.float32)  # traced: changing it does not recompile
        self.use_holdout = data.n_holdout > 0
        self.loop = LoopState()
        self.early = EarlyStopping(config.patience, enabled=self.use_holdout)
        self.best = (self.model, self.cores)

    def _tree(self):
        return (self.model, self.nets_state, self.cores, self.cores_state, *self.best)

    def run_unit(self, epoch: int) -> float:
        return self.data.source.run_epoch(jax.random.fold_in(self.k_order, epoch), whole_epoch=self._whole_epoch,
                                          one_batch=self._one_batch, order=self._order)

    def _whole_epoch(self, y, mask, key):
        self.model, self.nets_state, self.cores, self.cores_state, loss = _run_epoch(
            self.model, self.nets_state, self.cores, self.cores_state, y, mask, self.grids_j, key, self.beta_tv,
            opt_nets=self.opt_nets, opt_cores=self.opt_cores, batch=self.batch, mesh=self.mesh,
        )
        return loss

    def _order(self, key) -> np.ndarray:
        return np.asarray(_epoch_order(key, self.data.source.shape[0], self.batch))

    def _one_batch(self, idx, yb, mb):
        self.model, self.nets_state, self.cores, self.cores_state, loss = _stream_step(
            self.model, self.nets_state, self.cores, self.cores_state, jnp.asarray(idx), yb, mb, self.grids_j,
            self.beta_tv, opt_nets=self.opt_nets, opt_cores=self.opt_cores, mesh=self.mesh,
        )
        return loss

    def nonfinite_message(self, epoch: int, loss: float) -> str:
        return (f"fit_ftm: the training loss became {loss} at epoch {epoch} (optimiser steps "
                f"{(epoch - 1) * self.steps_per_epoch + 1}..{epoch * self.steps_per_epoch}); lower config.lr / "
                "config.lr_cores, or check the fields for extreme values")

    def record(self, epoch: int, loss: float) -> tuple[dict[str, str], bool]:
        """Every `eval_every` epochs and at the last: score on the held-out entries (the training
        loss when there are none), keep the best parameters, stop after `patience` bad scores."""
        postfix = {"loss": f"{loss:.4g}"}
        if epoch % self.config.eval_every == 0 or epoch == self.epochs:
            if self.use_holdout:
                score = float(self.data.sse(self.model, self.cores)[:, 1].sum() / self.data.n_holdout)
            else:
                score = loss
            if self.early.update(epoch, score):
                self.best = (self.model, self.cores)
            postfix["heldout"] = f"{score:.4g}"
        return postfix, self.early.stopped

    def checkpoint_contents(self) -> tuple[dict[str, Any], Any]:
        e = self.early
        state = {
            "epoch": self.loop.unit, "loss_curve": self.loop.losses, "holdout_curve": e.scores,
            "eval_epochs": e.units, "best_epoch": e.best_unit,
            "best_score": e.best_score if math.isfinite(e.best_score) else None, "bad_evals": e.bad_evals,
            "stopped_early": e.stopped,
        }
        return {**self.header, "state": state, "step": int(self.loop.unit) * self.steps_per_epoch}, self._tree()

    def restore(self, checkpoint: CheckpointFile) -> int:
        """Continue from `checkpoint` (which must belong to this fit: data, settings, key); return
        the epoch it was saved after."""
        path = checkpoint.path
        saved = checkpoint.read_header()
        check_settings(saved.get("config"), self.header["config"], path)
        check_matches(saved, {k: self.header[k] for k in ("data_fingerprint", "shape")}, path,
                      "the checkpoint was fitted to other fields; use resume=False to start afresh")
        check_matches(saved, {"key_data": self.header["key_data"]}, path,
                      "the checkpoint was fitted with another key/seed; pass the same one or resume=False")
        st = saved.get("state")
        if not isinstance(st, dict) or any(k not in st for k in _STATE_KEYS):
            raise FormatError(f"{path}: the checkpoint header has no complete fit state")
        _, tree = checkpoint.load(self._tree())
        self.model, self.nets_state, self.cores, self.cores_state, *best = tree
        self.best = tuple(best)
        self.loop = LoopState(st["epoch"], st["loss_curve"])
        best_score = math.inf if st["best_score"] is None else float(st["best_score"])
        self.early = EarlyStopping(self.config.patience, self.use_holdout, st["holdout_curve"], st["eval_epochs"],
                                   st["best_epoch"], best_score, st["bad_evals"], st["stopped_early"])
        return int(st["epoch"])


def _errors(data: _FitData, model: FunctionalTucker, cores) -> dict[str, Any]:
    """Errors of the fitted parameters: RMSE (normalised units) and VRMSE per trajectory on the
    training, held-out and all entries."""
    sse = np.asarray(data.sse(model, cores), dtype=np.float64)
    variance = data.variance()
    n_train_per, n_holdout_per = data.stats.n_train, data.stats.n_holdout
    n_holdout = data.n_holdout
    n_all = int(np.prod(data.source.shape[1:]))
    return {
        "train_rmse": float(np.sqrt(sse[:, 0].sum() / max(int(n_train_per.sum()), 1))),
        "holdout_rmse": float(np.sqrt(sse[:, 1].sum() / max(n_holdout, 1))) if n_holdout > 0 else None,
        "train_v": _vrmse_from_sse(sse[:, 0], n_train_per, variance),
        "hold_v": _vrmse_from_sse(sse[:, 1], n_holdout_per, variance),
        "full_v": _vrmse_from_sse(sse[:, 2], np.full(data.source.shape[0], n_all), variance),
    }


def _finish(fields: xr.Dataset, data: _FitData, trainer: _FTMTrainer, times: LoopTimes, resumed_from: int | None,
            start: float) -> tuple[FTMFit, dict[str, Any]]:
    """The `FTMFit` of the best parameters and the report of `fit_ftm`."""
    model, cores = trainer.best
    if not bool(jnp.all(jnp.isfinite(cores))):
        raise NumericalError("fit_ftm: the fitted cores are not finite; lower config.lr / config.lr_cores")
    err = _errors(data, model, cores)
    use_holdout = trainer.use_holdout
    # The representation error the samplers add to a known observation noise (normalised field
    # units; inference.reconstruct): carried by the fit so that every saved run records it.
    rep_error = {"std": err["holdout_rmse"] if use_holdout else err["train_rmse"],
                 "source": "RMSE on held-out entries at fit time" if use_holdout
                 else "RMSE on the training entries at fit time (no held-out entries)"}
    fit = FTMFit(
        model=model, cores=cores, times=data.times, normalizer=data.normalizer,
        time_domain=(float(data.times[0]), float(data.times[-1])), trajectory_ids=data.ids, config=trainer.config,
        grids=data.grids, metadata={**field_metadata(fields), "representation_error": rep_error},
    )
    epoch, early, n_traj = trainer.loop.unit, trainer.early, data.source.shape[0]
    run_epochs = epoch - (resumed_from or 0)
    compile_time = times.first_unit_s or 0.0
    steady = max(times.wall_s - compile_time, 1e-9)
    report = {
        "loss_curve": list(trainer.loop.losses),
        "holdout_curve": list(early.scores),
        "eval_epochs": list(early.units),
        "best_epoch": early.best_unit,
        "epochs": epoch,
        "steps": epoch * trainer.steps_per_epoch,
        "steps_per_epoch": trainer.steps_per_epoch,
        "batch_trajectories": trainer.batch,
        "warmup_steps": trainer.warmup,
        "stopped_early": early.stopped,
        "train_vrmse": float(np.nanmean(err["train_v"])),
        "holdout_vrmse": float(np.nanmean(err["hold_v"])) if use_holdout else None,
        "full_vrmse": float(np.mean(err["full_v"])),
        # RMSE in normalised field units over all entries of the set: the FTM's representation
        # error, which the samplers add to the observation noise (inference.reconstruct).
        "train_rmse": err["train_rmse"],
        "holdout_rmse": err["holdout_rmse"],
        "train_vrmse_per_trajectory": err["train_v"].tolist(),
        "holdout_vrmse_per_trajectory": err["hold_v"].tolist() if use_holdout else None,
        "full_vrmse_per_trajectory": err["full_v"].tolist(),
        "n_trajectories": n_traj,
        "n_train_entries": int(data.stats.n_train.sum()),
        "n_holdout_entries": data.n_holdout,
        "n_entries": int(np.prod(data.source.shape)),
        "wall_time_s": _time.perf_counter() - start,
        "compile_time_s": compile_time,
        "trajectory_epochs_per_s": (n_traj * max(run_epochs - 1, 1) / steady if run_epochs > 1
                                    else n_traj / max(times.wall_s, 1e-9)),
        "resumed_from": resumed_from,
        "devices": trainer.n_dev,
        "streamed": data.source.streamed,
    }
    return fit, report
