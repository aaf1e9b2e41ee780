"""Training the GPSD prior on FTM core sequences: EDM loss with GP noise, Adam, EMA, checkpoints.

Each step draws a minibatch of sub-sequences of one fixed length `seq_len` (one compiled
shape per run): with probability `p_irregular` a sub-sequence is a random sorted subset of
`seq_len` frames out of a random window of up to `max_window` frames (an irregular grid with
gaps), otherwise `seq_len` consecutive frames. All randomness of step `s` comes from
`fold_in(key, s)`, so a run resumed from a checkpoint continues exactly as an uninterrupted one.
The training loop (checkpoints, SIGINT/SIGTERM, progress, data-parallel sharding) is
`sdift_prob.training`'s, shared with the FTM fit.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ..errors import TrainingInterrupted as TrainingInterrupted  # re-exported by sdift_prob.gpsd
from ..errors import bad_input
from ..gp import KERNEL_NAMES, TemporalKernel, fit_lengthscale, time_cholesky, validate_times
from ..training import (CheckpointFile, LoopSettings, LoopState, LoopTimes, check_matches, check_settings,
                        constrain, data_parallel, run_loop)
from ..validation import check_count
from .edm import EDMConfig, edm_loss
from .prior import GPSDPrior
from .unet import TemporalUNet, count_parameters

CHECKPOINT_KIND = "gpsd_training_checkpoint"
CHECKPOINT_NAME = "prior-checkpoint.eqx"

# fields that may differ between a checkpoint and the run that resumes it
_RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every"})


@dataclasses.dataclass(frozen=True)
class PriorConfig:
    """Settings of the GPSD prior and its training (defaults: CPU-sized, ~1.1M parameters).

    Network: `channels`, `channel_mult`, `num_blocks`, `temporal_mult`, `attention`,
    `attention_heads`, `time_features` (see `TemporalUNet`).
    Diffusion: `edm` (`EDMConfig`); noise kernel `kernel`, `lengthscale`, `kernel_variance` on
    normalised time (RBF 0.1 = the reference `exp(-50 Δt²)`); `fit_lengthscale` replaces the
    lengthscale and variance by a marginal-likelihood fit to the normalised training cores.
    Optimisation: Adam with learning rate `lr` reached linearly over `warmup_steps`, then
    constant; gradients clipped to global norm `grad_clip`; `batch_size` sequences per step;
    `steps` in total. EMA of the parameters with half-life `ema_halflife` steps, ramped up as
    `min(ema_halflife, ema_rampup · step)` as in EDM.
    Data: sub-sequences of `seq_len` frames (None: all T), irregular with probability
    `p_irregular`, drawn from windows of at most `max_window` frames (None: min(T, 2·seq_len)).
    Checkpoint every `checkpoint_every` steps. `seed` is used when no key is passed.
    """

    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_blocks: int = 1
    temporal_mult: int = 2
    attention: bool = True
    attention_heads: int = 1
    time_features: int = 16
    edm: EDMConfig = EDMConfig()
    kernel: str = "rbf"
    lengthscale: float = 0.1
    kernel_variance: float = 1.0
    fit_lengthscale: bool = False
    lr: float = 2e-4
    warmup_steps: int = 500
    batch_size: int = 16
    steps: int = 5000
    grad_clip: float = 1.0
    ema_halflife: float = 500.0
    ema_rampup: float = 0.1
    seq_len: int | None = 16
    max_window: int | None = None
    p_irregular: float = 0.5
    checkpoint_every: int = 500
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        if isinstance(self.edm, dict):
            object.__setattr__(self, "edm", EDMConfig.from_dict(self.edm))
        if not isinstance(self.edm, EDMConfig):
            raise bad_input("edm", "an EDMConfig", self.edm)
        ints = {"channels": 1, "num_blocks": 1, "temporal_mult": 1, "attention_heads": 1, "time_features": 1,
                "warmup_steps": 0, "batch_size": 1, "steps": 0, "checkpoint_every": 1, "seed": 0}
        for name, low in ints.items():
            check_count(getattr(self, name), name, minimum=low)
        for name in ("seq_len", "max_window"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, np.integer)) or v < 1):
                raise bad_input(name, "None or a positive integer", v)
        if self.kernel not in KERNEL_NAMES:
            raise bad_input("kernel", f"one of {KERNEL_NAMES}", self.kernel)
        for name in ("lengthscale", "kernel_variance", "lr", "grad_clip", "ema_halflife"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise bad_input(name, "a finite positive number", v)
        if not (isinstance(self.ema_rampup, (int, float)) and 0 <= self.ema_rampup):
            raise bad_input("ema_rampup", "a number >= 0", self.ema_rampup)
        if not (isinstance(self.p_irregular, (int, float)) and 0 <= self.p_irregular <= 1):
            raise bad_input("p_irregular", "a probability in [0, 1]", self.p_irregular)

    def net_kwargs(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("channels", "channel_mult", "num_blocks", "temporal_mult",
                                              "attention", "attention_heads", "time_features")}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["edm"] = self.edm.to_dict()
        d["channel_mult"] = list(self.channel_mult)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PriorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise bad_input("config", f"only PriorConfig fields {sorted(known)}", sorted(unknown))
        return cls(**d)


# ---- the jitted step ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _optimizer(lr: float, warmup_steps: int, grad_clip: float) -> optax.GradientTransformation:
    # cached so that repeated runs with the same settings reuse one compiled step
    schedule = optax.warmup_constant_schedule(0.0, lr, max(warmup_steps, 1))
    return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adam(schedule))


def _window_indices(key: PRNGKeyArray, T: int, L: int, W_max: int, p_irregular: float) -> Array:
    """Frame indices (L,) of one sub-sequence: L consecutive frames, or (with probability
    p_irregular) a sorted random L-subset of a random window of L..W_max frames."""
    k_irr, k_w, k_start, k_pick = jax.random.split(key, 4)
    irregular = jax.random.bernoulli(k_irr, p_irregular)
    width = jnp.where(irregular, jax.random.randint(k_w, (), L, W_max + 1), L)
    start = jax.random.randint(k_start, (), 0, T - width + 1)
    # the L smallest of W_max uniform scores, restricted to positions < width: a uniform L-subset
    scores = jnp.where(jnp.arange(W_max) < width, jax.random.uniform(k_pick, (W_max,)), 2.0)
    picked = jnp.sort(jnp.argsort(scores)[:L])
    return start + picked


@dataclasses.dataclass(frozen=True)
class _StepSpec:
    """The settings the compiled step depends on (a static jit argument): a run that only
    changes `steps` or `checkpoint_every` reuses the compiled step."""

    lr: float
    warmup_steps: int
    grad_clip: float
    ema_halflife: float
    ema_rampup: float
    batch_size: int
    p_irregular: float
    edm: EDMConfig
    seq_len: int
    max_window: int

    @classmethod
    def of(cls, config: PriorConfig, seq_len: int, max_window: int) -> _StepSpec:
        return cls(config.lr, config.warmup_steps, config.grad_clip, config.ema_halflife, config.ema_rampup,
                   config.batch_size, config.p_irregular, config.edm, seq_len, max_window)


def _batch(key, cores, times, spec: _StepSpec):
    k_traj, k_win = jax.random.split(key)
    traj = jax.random.randint(k_traj, (spec.batch_size,), 0, cores.shape[0])
    idx = jax.vmap(lambda k: _window_indices(k, cores.shape[1], spec.seq_len, spec.max_window, spec.p_irregular))(
        jax.random.split(k_win, spec.batch_size)
    )
    return cores[traj[:, None], idx], times[idx]



@eqx.filter_jit
def _train_step(model, ema, opt_state, cores, times, step, step_key, kernel, spec: _StepSpec, mesh=None):
    optim = _optimizer(spec.lr, spec.warmup_steps, spec.grad_clip)
    k_batch, k_loss = jax.random.split(jax.random.fold_in(step_key, step))
    x0, t = _batch(k_batch, cores, times, spec)
    # data parallel: the minibatch is split over the devices, the networks are replicated and
    # XLA all-reduces the gradients (threefry random bits do not depend on the sharding)
    x0, t = constrain((x0, t), mesh, batch=True)
    chol = jax.vmap(lambda tt: time_cholesky(kernel, tt, spec.edm.jitter))(t)

    def loss_fn(m):
        return edm_loss(m, k_loss, x0, t, chol, spec.edm)

    loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
    params = eqx.filter(model, eqx.is_inexact_array)
    updates, opt_state = optim.update(grads, opt_state, params)
    model = constrain(eqx.apply_updates(model, updates), mesh, batch=False)

    # EDM's EMA: half-life in steps, ramped up early so the EMA is useful in short runs
    halflife = jnp.minimum(spec.ema_halflife, spec.ema_rampup * (step + 1).astype(jnp.float32))
    beta = jnp.where(halflife > 0, 0.5 ** (1.0 / jnp.maximum(halflife, 1e-8)), 0.0)
    ema_params, static = eqx.partition(ema, eqx.is_inexact_array)
    ema_params = optax.incremental_update(eqx.filter(model, eqx.is_inexact_array), ema_params, 1.0 - beta)
    return model, eqx.combine(ema_params, static), opt_state, loss


# ---- checkpoints --------------------------------------------------------------------------------


def _fingerprint(cores: np.ndarray, times: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(cores, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(times, dtype=np.float64).tobytes())
    h.update(repr(cores.shape).encode())
    return h.hexdigest()


def _init_state(config: PriorConfig, core_shape: tuple[int, ...], key: PRNGKeyArray):
    model = TemporalUNet(core_shape, key=key, **config.net_kwargs())
    optim = _optimizer(config.lr, config.warmup_steps, config.grad_clip)
    opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))
    return model, model, opt_state


class _PriorTrainer:
    """The state of one prior training run (network, EMA, optimiser), and what
    `sdift_prob.training.run_loop` asks of it (a unit is one optimiser step)."""

    def __init__(self, config: PriorConfig, spec: _StepSpec, x_all, times, kernel: TemporalKernel, key,
                 header: dict[str, Any]):
        self.config, self.spec, self.kernel, self.key, self.header = config, spec, kernel, key, header
        self.x_all, self.times_j = x_all, jnp.asarray(times, jnp.float32)
        self.init_key, self.step_key = jax.random.split(key)
        self.core_shape = tuple(x_all.shape[2:])
        self.loop = LoopState()
        self.mesh = None

    def start_fresh(self) -> None:
        self.model, self.ema, self.opt_state = _init_state(self.config, self.core_shape, self.init_key)

    def restore(self, checkpoint: CheckpointFile) -> int:
        """Continue from `checkpoint` (same settings but `steps` / `checkpoint_every`, same data and
        key); return the step it was saved after."""
        path, header = checkpoint.path, self.header
        saved = checkpoint.read_header()
        check_settings(saved.get("config", {}), header["config"], path, may_change=_RESUMABLE_CHANGES)
        check_matches(saved, {"data_fingerprint": header["data_fingerprint"]}, path,
                      "the checkpoint was trained on other cores or times; use resume=False to start afresh")
        check_matches(saved, {"key_data": header["key_data"]}, path,
                      "the checkpoint was trained with another key/seed; pass the same one or resume=False")
        like = eqx.filter_eval_shape(
            lambda k: (*_init_state(self.config, self.core_shape, k), jnp.zeros((), jnp.int32),
                       jax.random.key_data(k)), self.key
        )
        _, (self.model, self.ema, self.opt_state, step, _) = checkpoint.load(like)
        start = int(step)
        self.loop = LoopState(start, list(saved.get("loss_history", []))[:start])
        return start

    def run_unit(self, unit: int) -> float:
        self.model, self.ema, self.opt_state, loss = _train_step(
            self.model, self.ema, self.opt_state, self.x_all, self.times_j, jnp.asarray(unit - 1, jnp.int32),
            self.step_key, self.kernel, self.spec, self.mesh,
        )
        return float(loss)

    def nonfinite_message(self, unit: int, loss: float) -> str:
        return f"train_prior: the loss became {loss} at step {unit - 1}; lower lr or grad_clip, or check the cores"

    def record(self, unit: int, loss: float) -> tuple[dict[str, str] | None, bool]:
        if unit % 10 == 0 or unit == self.config.steps:
            return {"loss": f"{np.mean(self.loop.losses[-10:]):.4f}"}, False
        return None, False

    def checkpoint_contents(self) -> tuple[dict[str, Any], Any]:
        step = self.loop.unit
        tree = (self.model, self.ema, self.opt_state, jnp.asarray(step, jnp.int32), jax.random.key_data(self.key))
        return {**self.header, "loss_history": self.loop.losses[:step], "step": int(step)}, tree


# ---- the public entry point --------------------------------------------------------------------


# ---- the public entry point --------------------------------------------------------------------


def _validate_inputs(cores, times_norm) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(cores)
    if c.ndim not in (4, 5) or not np.issubdtype(c.dtype, np.number):
        raise bad_input("cores", "core sequences of shape (B, T, R1, R2) or (B, T, R1, R2, R3)", getattr(c, "shape", cores))
    if not np.isfinite(c).all():
        raise bad_input("cores", "finite values", "NaN or infinite entries")
    t = validate_times(times_norm, "times_norm")
    if t.shape[0] != c.shape[1]:
        raise bad_input("times_norm", f"one time stamp per frame ({c.shape[1]})", t.shape)
    if c.shape[1] < 2:
        raise bad_input("cores", "sequences of at least 2 frames", c.shape)
    if float(c.std()) == 0.0:
        raise bad_input("cores", "cores that are not all equal", "constant cores")
    return c.astype(np.float32), t



def train_prior(
    cores: Float[ArrayLike, "B T *core"],
    times_norm: Float[ArrayLike, " T"],
    config: PriorConfig | None = None,
    *,
    key: PRNGKeyArray | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
    devices: int | None = None,
) -> tuple[GPSDPrior, dict[str, Any]]:
    """Train a GPSD prior on core sequences.

    **Arguments:**

    - `cores`: FTM cores of the training trajectories, `(B, T, R1, R2)` or `(B, T, R1, R2, R3)`.
    - `times_norm`: their normalised time stamps `(T,)`, strictly increasing.
    - `config`: `PriorConfig` (default `PriorConfig()`).
    - `key`: typed PRNG key (default `jax.random.key(config.seed)`).
    - `checkpoint_dir`: folder for `prior-checkpoint.eqx`, written every
      `config.checkpoint_every` steps, at the end and on SIGINT/SIGTERM (created if missing).
    - `resume`: continue from the checkpoint in `checkpoint_dir` if there is one (it must come
      from the same settings, data and key; `steps` may be raised).
    - `progress`: show a tqdm bar with the loss.
    - `callback`: called as `callback(step, loss)` after every step (host side).
    - `devices`: data-parallel training (each step's minibatch split over a mesh axis
      `"batch"`, networks and optimiser state replicated, gradients all-reduced): None =
      automatic (all devices when there are several; `batch_size` must divide, else the largest
      divisor is used), or an int (1 = off). Matches 1 device to float32 rounding (the batch
      sums are added in another order), not bitwise.

    **Returns:** `(prior, report)`: the `GPSDPrior` with the EMA network, and a JSON-ready dict
    (`steps`, `steps_run`, `resumed_from`, `loss_history`, `final_loss`, `wall_time_s`,
    `steps_per_s`, `num_parameters`, `config`, `kernel`, `core_mean`, `core_std`).

    **Raises:** `TrainingInterrupted` after saving a checkpoint when SIGINT/SIGTERM arrives.
    """
    config = PriorConfig() if config is None else config
    if not isinstance(config, PriorConfig):
        raise bad_input("config", "a PriorConfig", type(config).__name__)
    c, t, L, W_max = _check_inputs(cores, times_norm, config)
    key = jax.random.key(config.seed) if key is None else key
    core_mean, core_std, x_all, kernel = _normalise(c, t, config)
    header = {
        "sdift_kind": CHECKPOINT_KIND,
        "config": config.to_dict(),
        "core_shape": list(c.shape[2:]),
        "core_mean": core_mean,
        "core_std": core_std,
        "kernel": kernel.to_dict(),
        "data_fingerprint": _fingerprint(c, t),
        "key_data": np.asarray(jax.random.key_data(key)).tolist(),
        "key_impl": str(jax.random.key_impl(key)),
    }
    checkpoint = CheckpointFile(checkpoint_dir, CHECKPOINT_NAME, CHECKPOINT_KIND)
    trainer = _PriorTrainer(config, _StepSpec.of(config, L, W_max), x_all, t, kernel, key, header)
    resumed_from = trainer.restore(checkpoint) if resume and checkpoint.exists() else None
    if resumed_from is None:
        trainer.start_fresh()
    n_dev, trainer.mesh = data_parallel(devices, config.batch_size, what="batch_size")
    settings = LoopSettings("training", "step", config.steps, "train prior", progress, config.checkpoint_every,
                            callback)
    times = run_loop(trainer, trainer.loop, settings, checkpoint)
    prior = GPSDPrior(trainer.ema, config.edm, kernel, core_mean, core_std)
    return prior, _report(trainer, times, resumed_from, n_dev, c.shape, L, W_max)


def _check_inputs(cores, times_norm, config: PriorConfig) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The cores (float32) and times, checked, and the sub-sequence length and largest window."""
    c, t = _validate_inputs(cores, times_norm)
    T = c.shape[1]
    L = T if config.seq_len is None else config.seq_len
    if L > T:
        raise bad_input("config.seq_len", f"at most the number of frames T = {T}", L)
    W_max = min(T, 2 * L) if config.max_window is None else config.max_window
    if not L <= W_max <= T:
        raise bad_input("config.max_window", f"between seq_len = {L} and T = {T}", W_max)
    return c, t, L, W_max


def _normalise(c: np.ndarray, t: np.ndarray, config: PriorConfig):
    """`(core_mean, core_std, normalised cores, noise kernel)`: the normalised training cores
    have std sigma_data (EDM's data scale), W = core_mean + core_std x."""
    core_mean, core_std = float(c.mean()), float(c.std()) / config.edm.sigma_data
    x_all = jnp.asarray((c - core_mean) / core_std, jnp.float32)
    kernel = TemporalKernel(config.kernel, float(config.lengthscale), float(config.kernel_variance))
    if config.fit_lengthscale:
        # only the lengthscale: the noise keeps its configured variance (σ is the noise std)
        kernel = fit_lengthscale(np.asarray(x_all), t, kernel, fit_variance=False)
        kernel = TemporalKernel(kernel.name, float(kernel.lengthscale), float(kernel.variance))
    # factor the full grid once on the host: a clear error now rather than NaNs in the loop
    time_cholesky(kernel, t, config.edm.jitter)
    return core_mean, core_std, x_all, kernel


def _report(trainer: _PriorTrainer, times: LoopTimes, resumed_from: int | None, n_dev: int, shape, L: int,
            W_max: int) -> dict[str, Any]:
    """The JSON-ready report of `train_prior`."""
    config, losses, step = trainer.config, trainer.loop.losses, trainer.loop.unit
    start = resumed_from or 0
    wall, first_step = times.wall_s, times.first_unit_s
    run = step - start
    report = {
        "steps": step,
        "steps_run": run,
        "resumed_from": resumed_from,
        "loss_history": losses,
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "wall_time_s": wall,
        "steps_per_s": run / wall if run and wall > 0 else None,
        "first_step_s": first_step,
        "steps_per_s_after_first": (run - 1) / (wall - first_step) if run > 1 and wall > first_step else None,
        "num_parameters": count_parameters(trainer.ema),
        "num_sequences": shape[0],
        "num_frames": shape[1],
        "seq_len": L,
        "max_window": W_max,
        "config": config.to_dict(),
        "kernel": trainer.kernel.to_dict(),
        "core_mean": trainer.header["core_mean"],
        "core_std": trainer.header["core_std"],
        "devices": n_dev,
    }
    json.dumps(report)  # fail here, not later, if something is not JSON-ready
    return report
