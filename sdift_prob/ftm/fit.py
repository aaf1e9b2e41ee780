"""Fitting the Functional Tucker Model: shared coordinate networks + free per-trajectory cores.

The objective (in normalised field units) is

    L = mean over observed training entries of (y - decode(W))^2 + beta_tv * mean_b TV(W_b),
    TV(W_b) = sum_t ||W_{b,t+1} - W_{b,t}||_2            (Frobenius norm over the core),

minimised with optax over minibatches of trajectories (an auto-decoder: the cores are free
parameters, the networks are shared). Early stopping watches a held-out fraction of entries
of the same trajectories, which catches the cores memorising the training mask.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import signal
import threading
import time as _time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray
from tqdm.auto import tqdm

from ..data.fields import Normalizer, field_metadata, space_dims, validate_field_dataset
from ..errors import FormatError, InputError, NumericalError, TrainingInterrupted, bad_input
from ..parallel import BATCH_AXIS, batch_sharding, replicated, resolve_devices
from ..parallel import mesh as device_mesh
from ..streaming import TrajectoryReader, is_lazy
from ..validation import check_count, check_key
from .tucker import FunctionalTucker, _decode_grid, check_ranks, decode_grid


@dataclasses.dataclass(frozen=True)
class FTMConfig:
    """Settings of `fit_ftm` (defaults tuned on the default ocean and fluid2d datasets).

    - `ranks`: optional; when given it must equal the `ranks` argument of `fit_ftm` (the
      stored config always carries the ranks used).
    - `width`, `depth`, `omega`: coordinate network size and sine frequency.
    - `lr`: peak learning rate of the networks (AdamW with `weight_decay`).
    - `lr_cores`: peak learning rate of the cores (Adam per trajectory; the cores need a
      larger step than the networks).
    - `warmup`: linear warm-up in optimiser steps, then cosine decay to 1% of the peak.
    - `epochs`: passes over the trajectories; `steps`, when set, replaces it (rounded up to
      whole epochs).
    - `batch_trajectories`: trajectories per minibatch (capped at the number available).
    - `beta_tv`: weight of the TV term. The data term is a mean squared error in normalised
      units (order 1 at the start) and TV is averaged over the trajectories of a batch, so
      `beta_tv` is the weight of one trajectory's total core variation relative to the
      per-entry squared error; the reference's 1e-7 multiplies a sum over a batch of raw
      cores and is not comparable. On the default datasets 1e-4 and 0 fit equally well
      (within noise) while 1e-2 already costs accuracy on the fast-changing fluid2d field.
    - `core_init_scale`: std of the normal initial cores (small: the fit starts from the mean).
    - `train_fraction`: fraction of the entries that are not held out used for training
      (1.0: all; 0.1 reproduces the reference's 10% mask).
    - `holdout_fraction`: fraction of all entries held out for early stopping (0 disables it).
    - `eval_every`: epochs between held-out evaluations; `patience`: evaluations without
      improvement before stopping (the best parameters are kept).
    - `margin`: allowed extrapolation of coordinates, as a fraction of the domain width.
    """

    ranks: tuple[int, ...] | None = None
    width: int = 64
    depth: int = 2
    omega: float = 20.0
    lr: float = 2e-3
    lr_cores: float = 0.2
    weight_decay: float = 1e-4
    warmup: int = 100
    epochs: int = 400
    steps: int | None = None
    batch_trajectories: int = 16
    beta_tv: float = 1e-4
    core_init_scale: float = 1e-2
    train_fraction: float = 1.0
    holdout_fraction: float = 0.05
    eval_every: int = 5
    patience: int = 10
    margin: float = 0.05

    def __post_init__(self) -> None:
        if self.ranks is not None:
            if isinstance(self.ranks, (str, bytes)) or not isinstance(self.ranks, Sequence):
                raise bad_input("ranks", "None or a sequence of positive integers", self.ranks)
            object.__setattr__(self, "ranks", check_ranks(self.ranks, len(self.ranks)))
        for name in ("width", "depth", "epochs", "batch_trajectories", "eval_every", "patience"):
            check_count(getattr(self, name), name)
        check_count(self.warmup, "warmup", minimum=0)
        if self.steps is not None:
            check_count(self.steps, "steps")
        for name in ("omega", "lr", "lr_cores"):
            _check_float(name, getattr(self, name), lo=0.0, lo_open=True)
        for name in ("weight_decay", "beta_tv", "core_init_scale", "margin"):
            _check_float(name, getattr(self, name), lo=0.0)
        _check_float("train_fraction", self.train_fraction, lo=0.0, lo_open=True, hi=1.0)
        _check_float("holdout_fraction", self.holdout_fraction, lo=0.0, hi=1.0, hi_open=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (ranks as a list)."""
        d = dataclasses.asdict(self)
        if d["ranks"] is not None:
            d["ranks"] = list(d["ranks"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FTMConfig:
        """Inverse of `to_dict`; unknown keys are an `InputError`."""
        if not isinstance(d, dict):
            raise bad_input("d", "a dict of FTMConfig fields", d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise bad_input("d", f"only FTMConfig fields {sorted(known)}", f"unknown keys {unknown}")
        kw = dict(d)
        if kw.get("ranks") is not None:
            kw["ranks"] = tuple(kw["ranks"])
        return cls(**kw)


def _check_float(
    name: str, value: object, *, lo: float, lo_open: bool = False, hi: float = math.inf, hi_open: bool = False
) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        lb = "(" if lo_open else "["
        ub = ")" if hi_open else "]"
        raise bad_input(name, f"a number in {lb}{lo:g}, {hi:g}{ub}", value)


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


def _numpy_rng(key: PRNGKeyArray) -> np.random.Generator:
    """A NumPy generator seeded by a typed key's data: deterministic in the key, and it avoids
    compiling a random kernel for every array shape."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).reshape(-1).tolist())


def _masks(key: PRNGKeyArray, shape: tuple[int, ...], train_fraction: float, holdout_fraction: float):
    u = _numpy_rng(key).random(shape)
    holdout = u < holdout_fraction
    # the training entries are a fraction of those not held out, so the two never overlap
    train = (u >= holdout_fraction) & (u < holdout_fraction + train_fraction * (1.0 - holdout_fraction))
    return train, holdout


@functools.lru_cache(maxsize=16)
def _optimizers(
    lr: float, lr_cores: float, weight_decay: float, warmup: int, total_steps: int, steps_per_epoch: int, epochs: int
) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """AdamW for the networks (schedule in steps), Adam per trajectory for the cores.

    Cached so that fits with equal settings hand `_run_epoch` the same (hashable, static)
    optimiser objects and reuse its compiled code.
    """
    sched_nets = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1), lr * 1e-2)
    # each core counts its own visits (one per epoch), so its schedule runs in epochs
    warmup_visits = min(-(-warmup // steps_per_epoch), epochs // 2)
    sched_cores = optax.warmup_cosine_decay_schedule(
        0.0, lr_cores, warmup_visits, max(epochs, warmup_visits + 1), lr_cores * 1e-2
    )
    return optax.adamw(sched_nets, weight_decay=weight_decay), optax.adam(sched_cores)


def _tv(cores: Float[Array, "b T *r"]) -> Float[Array, " b"]:
    diff = (cores[:, 1:] - cores[:, :-1]).reshape(cores.shape[0], cores.shape[1] - 1, -1)
    # the small constant keeps the gradient of the norm finite where a step is exactly zero
    return jnp.sum(jnp.sqrt(jnp.sum(diff**2, axis=-1) + 1e-12), axis=-1)


def _loss(params, grids, y, mask, beta_tv):
    model, cores = params
    pred = _decode_grid(model, cores, grids)
    m = mask.astype(pred.dtype)
    sse = jnp.sum(m * (pred - y) ** 2)
    mse = sse / jnp.maximum(jnp.sum(m), 1.0)
    if cores.shape[1] > 1:
        mse = mse + beta_tv * jnp.mean(_tv(cores))
    return mse


def _constrain(a, mesh, spec: str):
    """Sharding constraint inside jit: `"batch"` splits axis 0 over the mesh, `"rep"` replicates."""
    if mesh is None:
        return a

    def one(x):
        if not eqx.is_array(x):
            return x
        sh = batch_sharding(mesh, x.ndim) if spec == "batch" else replicated(mesh)
        return lax.with_sharding_constraint(x, sh)

    return jax.tree_util.tree_map(one, a)


def _batch_update(dyn, params_static, n_state, all_cores, c_state, idx, yb, mb, grids, beta_tv, opt_nets, opt_cores,
                  mesh):
    """One optimiser step on the trajectories `idx`: shared networks (replicated) and their cores.

    With a mesh the minibatch (cores, values, mask) is split over the devices and the network
    gradient is all-reduced by XLA (data parallel)."""
    net = eqx.combine(dyn, params_static)
    cb = _constrain(all_cores[idx], mesh, "batch")
    yb = _constrain(yb, mesh, "batch")
    mb = _constrain(mb, mesh, "batch")
    sb = jax.tree_util.tree_map(lambda s: s[idx], c_state)
    loss, (g_net, g_cores) = eqx.filter_value_and_grad(_loss)((net, cb), grids, yb, mb, beta_tv)
    g_dyn = _constrain(eqx.filter(g_net, eqx.is_inexact_array), mesh, "rep")
    upd, n_state = opt_nets.update(g_dyn, n_state, dyn)
    dyn = _constrain(eqx.apply_updates(dyn, upd), mesh, "rep")
    # one Adam state per trajectory, so a core's moments only move when it is in a batch
    upd_c, sb = jax.vmap(opt_cores.update)(g_cores, sb, cb)
    all_cores = all_cores.at[idx].set(cb + upd_c)
    c_state = jax.tree_util.tree_map(lambda s, v: s.at[idx].set(v), c_state, sb)
    return dyn, n_state, all_cores, c_state, loss


def _epoch_order(key, n_traj: int, batch: int):
    n_steps = -(-n_traj // batch)
    perm = jax.random.permutation(key, n_traj)
    # fill the last batch from the start of the permutation so every batch has one shape
    pad = n_steps * batch - n_traj
    return jnp.concatenate([perm, perm[:pad]]).reshape(n_steps, batch)


@eqx.filter_jit
def _run_epoch(model, nets_state, cores, cores_state, y, mask, grids, key, beta_tv, *, opt_nets, opt_cores, batch,
               mesh=None):
    order = _epoch_order(key, cores.shape[0], batch)
    params_dyn, params_static = eqx.partition(model, eqx.is_inexact_array)

    def step(carry, idx):
        dyn, n_state, all_cores, c_state = carry
        dyn, n_state, all_cores, c_state, loss = _batch_update(
            dyn, params_static, n_state, all_cores, c_state, idx, y[idx], mask[idx], grids, beta_tv,
            opt_nets, opt_cores, mesh,
        )
        return (dyn, n_state, all_cores, c_state), loss

    (params_dyn, nets_state, cores, cores_state), losses = lax.scan(
        step, (params_dyn, nets_state, cores, cores_state), order
    )
    return eqx.combine(params_dyn, params_static), nets_state, cores, cores_state, jnp.mean(losses)


@eqx.filter_jit
def _stream_step(model, nets_state, cores, cores_state, idx, yb, mb, grids, beta_tv, *, opt_nets, opt_cores,
                 mesh=None):
    """`_run_epoch`'s step for one minibatch handed in from the host (streamed training)."""
    params_dyn, params_static = eqx.partition(model, eqx.is_inexact_array)
    dyn, nets_state, cores, cores_state, loss = _batch_update(
        params_dyn, params_static, nets_state, cores, cores_state, idx, yb, mb, grids, beta_tv, opt_nets, opt_cores,
        mesh,
    )
    return eqx.combine(dyn, params_static), nets_state, cores, cores_state, loss


@eqx.filter_jit
def _sse_per_trajectory(model, cores, y, train, holdout, grids):
    """Per trajectory: sums of squared errors over (training, held-out, all) entries."""

    def one(args):
        c, yb, tr, ho = args
        err2 = (_decode_grid(model, c, grids) - yb) ** 2
        return jnp.stack([jnp.sum(jnp.where(tr, err2, 0.0)), jnp.sum(jnp.where(ho, err2, 0.0)), jnp.sum(err2)])

    return lax.map(one, (cores, y, train, holdout))


def _vrmse_from_sse(sse: np.ndarray, counts: np.ndarray, variance: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(np.where(counts > 0, sse / np.maximum(counts, 1), np.nan) / (variance + 1e-7))


FIT_CHECKPOINT_KIND = "ftm_fit_checkpoint"
FIT_CHECKPOINT_NAME = "ftm-checkpoint.eqx"


def _trajectory_masks(key: PRNGKeyArray, lo: int, hi: int, traj_shape: tuple[int, ...], train_fraction: float,
                      holdout_fraction: float):
    """The rows `lo:hi` of `_masks(key, (B, *traj_shape), ...)` without drawing the others: the
    uniforms of trajectory b start at draw `b * prod(traj_shape)` of the same PCG64 stream."""
    rng = _numpy_rng(key)
    rng.bit_generator.advance(lo * int(np.prod(traj_shape)))
    u = rng.random((hi - lo, *traj_shape))
    holdout = u < holdout_fraction
    train = (u >= holdout_fraction) & (u < holdout_fraction + train_fraction * (1.0 - holdout_fraction))
    return train, holdout


def _combine_moments(acc: tuple[float, float, float], x: np.ndarray) -> tuple[float, float, float]:
    """Chan et al.'s parallel update of (count, mean, sum of squared deviations) with a block."""
    n_a, mean_a, m2_a = acc
    n_b = float(x.size)
    if n_b == 0:
        return acc
    mean_b = float(x.mean())
    m2_b = float(((x - mean_b) ** 2).sum())
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + delta**2 * n_a * n_b / n


class _Source:
    """The training values: all in memory (`values`) or read in blocks by a `TrajectoryReader`."""

    def __init__(self, fields: xr.Dataset, streamed: bool, chunk: int):
        self.streamed = streamed
        self.chunk = chunk
        if streamed:
            self.reader = TrajectoryReader(fields["field"], "fields")
            self.values = None
            self.shape = self.reader.shape
        else:
            self.values = np.asarray(fields["field"].values, dtype=np.float64)
            self.shape = self.values.shape

    def read(self, idx) -> np.ndarray:
        return self.values[np.asarray(idx)] if self.values is not None else self.reader.read(idx)

    def blocks(self):
        if self.values is not None:
            yield 0, self.shape[0], self.values
        else:
            yield from self.reader.chunks(self.chunk)


def _check_callback(callback: object) -> None:
    if callback is not None and not callable(callback):
        raise bad_input("callback", "None or a callable callback(epoch, loss)", callback)


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
    config = dataclasses.replace(config, ranks=ranks_t)
    check_key(key)
    if not isinstance(progress, bool):
        raise bad_input("progress", "True or False", progress)
    if not isinstance(resume, bool):
        raise bad_input("resume", "True or False", resume)
    check_count(checkpoint_every, "checkpoint_every")
    check_count(chunk_trajectories, "chunk_trajectories")
    _check_callback(callback)

    source = _Source(fields, stream, int(chunk_trajectories))
    n_traj, n_time = source.shape[:2]
    traj_shape = tuple(source.shape[1:])
    grids = tuple(np.asarray(fields[d].values, dtype=np.float64) for d in dims)
    for d, g in zip(dims, grids):
        if g.size < 2:
            raise bad_input("fields", "at least two coordinates along every space dim to define a domain", f"{d!r} has {g.size}")
    times = np.asarray(fields["time"].values, dtype=np.float64)
    ids = np.asarray(fields["trajectory"].values) if "trajectory" in fields.coords else np.arange(n_traj)

    k_mask, k_model, k_cores, k_order = jax.random.split(key, 4)
    fractions = (config.train_fraction, config.holdout_fraction)
    digest = hashlib.sha256(repr(source.shape).encode())
    if stream:
        # one pass over the file: normalisation statistics, mask counts, fingerprint
        moments = (0.0, 0.0, 0.0)
        n_train_per = np.zeros(n_traj, np.int64)
        n_holdout_per = np.zeros(n_traj, np.int64)
        for lo, hi, block in source.blocks():
            tr, ho = _trajectory_masks(k_mask, lo, hi, traj_shape, *fractions)
            moments = _combine_moments(moments, block[tr])
            n_train_per[lo:hi] = tr.reshape(hi - lo, -1).sum(axis=1)
            n_holdout_per[lo:hi] = ho.reshape(hi - lo, -1).sum(axis=1)
            digest.update(np.ascontiguousarray(block).tobytes())
        count, mean_v, m2 = moments
        std = math.sqrt(m2 / count) if count > 0 else 0.0
        train = holdout = None
    else:
        values = source.values
        train, holdout = _masks(k_mask, values.shape, *fractions)
        n_train_per = train.reshape(n_traj, -1).sum(axis=1)
        n_holdout_per = holdout.reshape(n_traj, -1).sum(axis=1)
        digest.update(np.ascontiguousarray(values).tobytes())
        if n_train_per.min() > 0:
            train_vals = values[train]
            mean_v, std = float(train_vals.mean()), float(train_vals.std())
    if (n_train_per == 0).any():
        raise bad_input(
            "config.train_fraction",
            "a fraction large enough that every trajectory keeps training entries",
            config.train_fraction,
        )
    if not std > 0:
        raise bad_input("fields", "training entries that are not all equal", f"std {std}")
    normalizer = Normalizer(mean=float(mean_v), std=float(std))
    fingerprint = digest.hexdigest()

    model = FunctionalTucker(
        ranks_t,
        domain_lo=[float(g[0]) for g in grids],
        domain_hi=[float(g[-1]) for g in grids],
        space_dims=dims,
        width=config.width,
        depth=config.depth,
        omega=config.omega,
        margin=config.margin,
        key=k_model,
    )
    cores = jnp.asarray(
        config.core_init_scale * _numpy_rng(k_cores).standard_normal((n_traj, n_time, *ranks_t)), dtype=jnp.float32
    )

    batch = min(config.batch_trajectories, n_traj)
    steps_per_epoch = -(-n_traj // batch)
    epochs = config.epochs if config.steps is None else -(-config.steps // steps_per_epoch)
    total_steps = epochs * steps_per_epoch
    warmup = min(config.warmup, total_steps // 2)
    opt_nets, opt_cores = _optimizers(
        config.lr, config.lr_cores, config.weight_decay, warmup, total_steps, steps_per_epoch, epochs
    )
    nets_state = opt_nets.init(eqx.filter(model, eqx.is_inexact_array))
    cores_state = jax.vmap(opt_cores.init)(cores)
    n_dev = resolve_devices(devices, batch, what="batch_trajectories")
    mesh = device_mesh(n_dev, BATCH_AXIS) if n_dev > 1 else None

    grids_j = tuple(jnp.asarray(g, dtype=jnp.float32) for g in grids)
    beta_tv = jnp.asarray(config.beta_tv, dtype=jnp.float32)  # traced: changing it does not recompile
    if not stream:
        y = jnp.asarray(normalizer.forward(values), dtype=jnp.float32)
        train_j = jnp.asarray(train)
        holdout_j = jnp.asarray(holdout)
    n_holdout = int(n_holdout_per.sum())
    use_holdout = n_holdout > 0

    def batch_arrays(idx: np.ndarray):
        """Normalised values and training mask of the trajectories `idx` (streamed mode)."""
        vals = source.read(idx)
        masks = [_trajectory_masks(k_mask, int(b), int(b) + 1, traj_shape, *fractions)[0] for b in idx]
        yb = np.asarray(normalizer.forward(vals), dtype=np.float32)
        return yb, np.concatenate(masks)

    def sse_all(model, cores) -> np.ndarray:
        """`(B, 3)` sums of squared errors per trajectory (training, held-out, all entries)."""
        if not stream:
            return np.asarray(_sse_per_trajectory(model, cores, y, train_j, holdout_j, grids_j))
        parts = []
        for lo, hi, block in source.blocks():
            tr, ho = _trajectory_masks(k_mask, lo, hi, traj_shape, *fractions)
            yb = jnp.asarray(normalizer.forward(block), dtype=jnp.float32)
            parts.append(np.asarray(_sse_per_trajectory(model, cores[lo:hi], yb, jnp.asarray(tr), jnp.asarray(ho),
                                                        grids_j)))
        return np.concatenate(parts)

    state = {
        "epoch": 0, "loss_curve": [], "holdout_curve": [], "eval_epochs": [], "best_epoch": 0,
        "best_score": math.inf, "bad_evals": 0, "stopped_early": False,
    }
    best = (model, cores)
    key_data = np.asarray(jax.random.key_data(key)).tolist()
    header = {
        "sdift_kind": FIT_CHECKPOINT_KIND, "config": config.to_dict(), "data_fingerprint": fingerprint,
        "key_data": key_data, "shape": list(source.shape),
    }
    path = None
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        try:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise bad_input("checkpoint_dir", "a folder that can be created", str(checkpoint_dir)) from exc
        path = checkpoint_dir / FIT_CHECKPOINT_NAME
    resumed_from = None
    if path is not None and resume and path.exists():
        like = (model, nets_state, cores, cores_state, model, cores)
        saved, tree = _load_fit_checkpoint(path, like, header)
        model, nets_state, cores, cores_state, best_model, best_cores = tree
        best = (best_model, best_cores)
        state = {k: saved["state"][k] for k in state}
        state["best_score"] = math.inf if state["best_score"] is None else float(state["best_score"])
        resumed_from = int(state["epoch"])

    def save() -> None:
        if path is None:
            return
        from ..gpsd.checkpoint import save_checkpoint

        st = dict(state)
        st["best_score"] = None if not math.isfinite(st["best_score"]) else st["best_score"]
        tree = (model, nets_state, cores, cores_state, best[0], best[1])
        save_checkpoint(path, {**header, "state": st, "step": int(state["epoch"]) * steps_per_epoch}, tree,
                        overwrite=True, argument="checkpoint_dir")

    stop = {"signal": None}
    handlers = {}
    if path is not None and threading.current_thread() is threading.main_thread():
        def on_signal(signum, frame):
            stop["signal"] = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, on_signal)

    compile_time = 0.0
    first_epoch = state["epoch"] + 1
    loop_start = _time.perf_counter()
    bar = tqdm(total=epochs, initial=state["epoch"], desc="fit-ftm", unit="epoch", disable=not progress)
    try:
        done = state["stopped_early"] or state["epoch"] >= epochs
        for epoch in range(first_epoch, epochs + 1):
            if done:
                break
            t_epoch = _time.perf_counter()
            k_epoch = jax.random.fold_in(k_order, epoch)
            if not stream:
                model, nets_state, cores, cores_state, loss = _run_epoch(
                    model, nets_state, cores, cores_state, y, train_j, grids_j, k_epoch, beta_tv,
                    opt_nets=opt_nets, opt_cores=opt_cores, batch=batch, mesh=mesh,
                )
                loss_v = float(loss)
            else:
                order = np.asarray(_epoch_order(k_epoch, n_traj, batch))
                losses = []
                for idx in order:
                    yb, mb = batch_arrays(idx)
                    model, nets_state, cores, cores_state, loss = _stream_step(
                        model, nets_state, cores, cores_state, jnp.asarray(idx), yb, mb, grids_j, beta_tv,
                        opt_nets=opt_nets, opt_cores=opt_cores, mesh=mesh,
                    )
                    losses.append(loss)
                loss_v = float(jnp.mean(jnp.stack(losses)))
            if epoch == first_epoch:
                compile_time = _time.perf_counter() - t_epoch
            if not math.isfinite(loss_v):
                raise NumericalError(
                    f"fit_ftm: the training loss became {loss_v} at epoch {epoch} (optimiser steps "
                    f"{(epoch - 1) * steps_per_epoch + 1}..{epoch * steps_per_epoch}); lower config.lr / "
                    "config.lr_cores, or check the fields for extreme values"
                )
            state["epoch"] = epoch
            state["loss_curve"].append(loss_v)
            postfix = {"loss": f"{loss_v:.4g}"}
            if epoch % config.eval_every == 0 or epoch == epochs:
                if use_holdout:
                    sse = sse_all(model, cores)
                    score = float(sse[:, 1].sum() / n_holdout)
                else:
                    score = loss_v
                state["holdout_curve"].append(score)
                state["eval_epochs"].append(epoch)
                if score < state["best_score"] or not use_holdout:
                    best = (model, cores)
                    state.update(best_score=score, best_epoch=epoch, bad_evals=0)
                else:
                    state["bad_evals"] += 1
                postfix["heldout"] = f"{score:.4g}"
                if use_holdout and state["bad_evals"] >= config.patience:
                    state["stopped_early"] = True
                    done = True
            bar.set_postfix(postfix)
            bar.update(1)
            if callback is not None:
                callback(epoch, loss_v)
            if stop["signal"] is not None:
                save()
                where = f"checkpoint saved to {path}; rerun to resume" if path else "nothing saved"
                raise TrainingInterrupted(
                    f"fit_ftm interrupted by signal {signal.Signals(stop['signal']).name} after epoch {epoch}; {where}",
                    epoch, path,
                )
            if epoch % checkpoint_every == 0 and not done and epoch < epochs:
                save()
        if path is not None and (state["epoch"] >= first_epoch or not path.exists()):
            save()
    finally:
        bar.close()
        for sig, old in handlers.items():
            signal.signal(sig, old)
    loop_time = _time.perf_counter() - loop_start
    epoch = state["epoch"]
    model, cores = best
    if not bool(jnp.all(jnp.isfinite(cores))):
        raise NumericalError("fit_ftm: the fitted cores are not finite; lower config.lr / config.lr_cores")

    sse = np.asarray(sse_all(model, cores), dtype=np.float64)
    if stream:
        variance = np.concatenate([normalizer.forward(block).reshape(hi - lo, -1).var(axis=1)
                                   for lo, hi, block in source.blocks()])
    else:
        variance = normalizer.forward(values).reshape(n_traj, -1).var(axis=1)
    n_all = int(np.prod(traj_shape))
    train_rmse = float(np.sqrt(sse[:, 0].sum() / max(int(n_train_per.sum()), 1)))
    holdout_rmse = float(np.sqrt(sse[:, 1].sum() / max(n_holdout, 1))) if use_holdout else None
    # The representation error the samplers add to a known observation noise (normalised field
    # units; inference.reconstruct): carried by the fit so that every saved run records it.
    rep_error = {"std": holdout_rmse if use_holdout else train_rmse,
                 "source": "RMSE on held-out entries at fit time" if use_holdout
                 else "RMSE on the training entries at fit time (no held-out entries)"}
    train_v = _vrmse_from_sse(sse[:, 0], n_train_per, variance)
    hold_v = _vrmse_from_sse(sse[:, 1], n_holdout_per, variance)
    full_v = _vrmse_from_sse(sse[:, 2], np.full(n_traj, n_all), variance)
    fit = FTMFit(
        model=model,
        cores=cores,
        times=times,
        normalizer=normalizer,
        time_domain=(float(times[0]), float(times[-1])),
        trajectory_ids=ids,
        config=config,
        grids=grids,
        metadata={**field_metadata(fields), "representation_error": rep_error},
    )
    run_epochs = epoch - first_epoch + 1
    steady = max(loop_time - compile_time, 1e-9)
    report = {
        "loss_curve": list(state["loss_curve"]),
        "holdout_curve": list(state["holdout_curve"]),
        "eval_epochs": list(state["eval_epochs"]),
        "best_epoch": state["best_epoch"],
        "epochs": epoch,
        "steps": epoch * steps_per_epoch,
        "steps_per_epoch": steps_per_epoch,
        "batch_trajectories": batch,
        "warmup_steps": warmup,
        "stopped_early": state["stopped_early"],
        "train_vrmse": float(np.nanmean(train_v)),
        "holdout_vrmse": float(np.nanmean(hold_v)) if use_holdout else None,
        "full_vrmse": float(np.mean(full_v)),
        # RMSE in normalised field units over all entries of the set: the FTM's representation
        # error, which the samplers add to the observation noise (inference.reconstruct).
        "train_rmse": train_rmse,
        "holdout_rmse": holdout_rmse,
        "train_vrmse_per_trajectory": train_v.tolist(),
        "holdout_vrmse_per_trajectory": hold_v.tolist() if use_holdout else None,
        "full_vrmse_per_trajectory": full_v.tolist(),
        "n_trajectories": n_traj,
        "n_train_entries": int(n_train_per.sum()),
        "n_holdout_entries": n_holdout,
        "n_entries": int(np.prod(source.shape)),
        "wall_time_s": _time.perf_counter() - start,
        "compile_time_s": compile_time,
        "trajectory_epochs_per_s": (n_traj * max(run_epochs - 1, 1) / steady if run_epochs > 1
                                    else n_traj / max(loop_time, 1e-9)),
        "resumed_from": resumed_from,
        "devices": n_dev,
        "streamed": stream,
    }
    return fit, report


def _load_fit_checkpoint(path: Path, like: Any, header: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Read an FTM fit checkpoint and check it belongs to this fit (data, settings, key)."""
    from ..gpsd.checkpoint import load_checkpoint, read_header

    saved = read_header(path, kind=FIT_CHECKPOINT_KIND)
    if saved.get("config") != header["config"]:
        now = header["config"]
        old = saved.get("config") if isinstance(saved.get("config"), dict) else {}
        differ = sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k))
        raise InputError(
            f"{path}: the checkpoint was made with other settings ({', '.join(f'{k}={old.get(k)!r}' for k in differ)}); "
            "use the same settings, or resume=False (--no-resume) to start afresh"
        )
    if saved.get("data_fingerprint") != header["data_fingerprint"] or saved.get("shape") != header["shape"]:
        raise InputError(f"{path}: the checkpoint was fitted to other fields; use resume=False to start afresh")
    if saved.get("key_data") != header["key_data"]:
        raise InputError(f"{path}: the checkpoint was fitted with another key/seed; pass the same one or resume=False")
    st = saved.get("state")
    keys = ("epoch", "loss_curve", "holdout_curve", "eval_epochs", "best_epoch", "best_score", "bad_evals",
            "stopped_early")
    if not isinstance(st, dict) or any(k not in st for k in keys):
        raise FormatError(f"{path}: the checkpoint header has no complete fit state")
    _, tree = load_checkpoint(path, like, kind=FIT_CHECKPOINT_KIND)
    return saved, tree
