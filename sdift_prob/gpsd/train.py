"""Training the GPSD prior on FTM core sequences: EDM loss with GP noise, Adam, EMA, checkpoints.

Each step draws a minibatch of sub-sequences of one fixed length `seq_len` (one compiled
shape per run): with probability `p_irregular` a sub-sequence is a random sorted subset of
`seq_len` frames out of a random window of up to `max_window` frames (an irregular grid with
gaps), otherwise `seq_len` consecutive frames. All randomness of step `s` comes from
`fold_in(key, s)`, so a run resumed from a checkpoint continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray
from tqdm.auto import tqdm

from ..errors import InputError, NumericalError, TrainingInterrupted, bad_input
from ..gp import KERNEL_NAMES, TemporalKernel, fit_lengthscale, time_cholesky, validate_times
from ..parallel import BATCH_AXIS, batch_sharding, replicated, resolve_devices
from ..parallel import mesh as device_mesh
from ..validation import check_count
from .checkpoint import load_checkpoint, read_header, save_checkpoint
from .edm import EDMConfig, edm_loss
from .prior import GPSDPrior
from .unet import TemporalUNet, count_parameters

CHECKPOINT_KIND = "gpsd_training_checkpoint"
CHECKPOINT_NAME = "prior-checkpoint.eqx"

# fields that may differ between a checkpoint and the run that resumes it
_RESUMABLE_CHANGES = {"steps", "checkpoint_every"}


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


def _shard(tree, mesh, batch: bool):
    """Inside jit: split axis 0 over the mesh (`batch`) or replicate; identity without a mesh."""
    if mesh is None:
        return tree

    def one(x):
        if not eqx.is_array(x):
            return x
        return jax.lax.with_sharding_constraint(x, batch_sharding(mesh, x.ndim) if batch else replicated(mesh))

    return jax.tree_util.tree_map(one, tree)


@eqx.filter_jit
def _train_step(model, ema, opt_state, cores, times, step, step_key, kernel, spec: _StepSpec, mesh=None):
    optim = _optimizer(spec.lr, spec.warmup_steps, spec.grad_clip)
    k_batch, k_loss = jax.random.split(jax.random.fold_in(step_key, step))
    x0, t = _batch(k_batch, cores, times, spec)
    # data parallel: the minibatch is split over the devices, the networks are replicated and
    # XLA all-reduces the gradients (threefry random bits do not depend on the sharding)
    x0, t = _shard((x0, t), mesh, batch=True)
    chol = jax.vmap(lambda tt: time_cholesky(kernel, tt, spec.edm.jitter))(t)

    def loss_fn(m):
        return edm_loss(m, k_loss, x0, t, chol, spec.edm)

    loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
    params = eqx.filter(model, eqx.is_inexact_array)
    updates, opt_state = optim.update(grads, opt_state, params)
    model = _shard(eqx.apply_updates(model, updates), mesh, batch=False)

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


def _save(path: Path, header: dict, model, ema, opt_state, step: int, key) -> None:
    tree = (model, ema, opt_state, jnp.asarray(step, jnp.int32), jax.random.key_data(key))
    save_checkpoint(path, {**header, "step": int(step)}, tree, overwrite=True, argument="checkpoint_dir")


def _load(path: Path, config: PriorConfig, core_shape, key):
    like = eqx.filter_eval_shape(
        lambda k: (*_init_state(config, core_shape, k), jnp.zeros((), jnp.int32), jax.random.key_data(k)), key
    )
    header, (model, ema, opt_state, step, key_data) = load_checkpoint(path, like, kind=CHECKPOINT_KIND)
    return header, model, ema, opt_state, int(step), key_data


def _check_resumable(header: dict, config: PriorConfig, fingerprint: str, key_data: np.ndarray, path: Path) -> None:
    saved = header.get("config", {})
    now = config.to_dict()
    differ = sorted(k for k in set(saved) | set(now) if k not in _RESUMABLE_CHANGES and saved.get(k) != now.get(k))
    if differ:
        raise InputError(
            f"{path}: the checkpoint was made with other settings ({', '.join(f'{k}={saved.get(k)!r}' for k in differ)}); "
            "use the same settings, or resume=False (--no-resume) to start afresh"
        )
    if header.get("data_fingerprint") != fingerprint:
        raise InputError(f"{path}: the checkpoint was trained on other cores or times; use resume=False to start afresh")
    if header.get("key_data") != np.asarray(key_data).tolist():
        raise InputError(f"{path}: the checkpoint was trained with another key/seed; pass the same one or resume=False")


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
    c, t = _validate_inputs(cores, times_norm)
    B, T = c.shape[:2]
    core_shape = tuple(c.shape[2:])
    L = T if config.seq_len is None else config.seq_len
    if L > T:
        raise bad_input("config.seq_len", f"at most the number of frames T = {T}", L)
    W_max = min(T, 2 * L) if config.max_window is None else config.max_window
    if not L <= W_max <= T:
        raise bad_input("config.max_window", f"between seq_len = {L} and T = {T}", W_max)
    key = jax.random.key(config.seed) if key is None else key
    key_data = np.asarray(jax.random.key_data(key))
    init_key, step_key = jax.random.split(key)

    # normalised training cores get std sigma_data (EDM's data scale): W = core_mean + core_std x
    core_mean, core_std = float(c.mean()), float(c.std()) / config.edm.sigma_data
    x_all = jnp.asarray((c - core_mean) / core_std, jnp.float32)
    kernel = TemporalKernel(config.kernel, float(config.lengthscale), float(config.kernel_variance))
    if config.fit_lengthscale:
        # only the lengthscale: the noise keeps its configured variance (σ is the noise std)
        kernel = fit_lengthscale(np.asarray(x_all), t, kernel, fit_variance=False)
        kernel = TemporalKernel(kernel.name, float(kernel.lengthscale), float(kernel.variance))
    # factor the full grid once on the host: a clear error now rather than NaNs in the loop
    time_cholesky(kernel, t, config.edm.jitter)

    fingerprint = _fingerprint(c, t)
    header = {
        "sdift_kind": CHECKPOINT_KIND,
        "config": config.to_dict(),
        "core_shape": list(core_shape),
        "core_mean": core_mean,
        "core_std": core_std,
        "kernel": kernel.to_dict(),
        "data_fingerprint": fingerprint,
        "key_data": key_data.tolist(),
        "key_impl": str(jax.random.key_impl(key)),
    }

    path = None
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = checkpoint_dir / CHECKPOINT_NAME

    losses: list[float] = []
    resumed_from = None
    if path is not None and resume and path.exists():
        saved = read_header(path, kind=CHECKPOINT_KIND)
        _check_resumable(saved, config, fingerprint, key_data, path)
        _, model, ema, opt_state, start, _ = _load(path, config, core_shape, key)
        losses = list(saved.get("loss_history", []))[:start]
        resumed_from = start
    else:
        model, ema, opt_state = _init_state(config, core_shape, init_key)
        start = 0

    times_j = jnp.asarray(t, jnp.float32)
    spec = _StepSpec.of(config, L, W_max)
    n_dev = resolve_devices(devices, config.batch_size, what="batch_size")
    mesh = device_mesh(n_dev, BATCH_AXIS) if n_dev > 1 else None
    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, on_signal)

    def save(step):
        if path is not None:
            _save(path, {**header, "loss_history": losses[:step]}, model, ema, opt_state, step, key)

    t_start = time.perf_counter()
    step = start
    first_step = None
    bar = tqdm(total=config.steps, initial=start, disable=not progress, desc="train prior", unit="step")
    try:
        while step < config.steps:
            model, ema, opt_state, loss = _train_step(
                model, ema, opt_state, x_all, times_j, jnp.asarray(step, jnp.int32), step_key, kernel, spec, mesh
            )
            loss = float(loss)
            if not math.isfinite(loss):
                raise NumericalError(
                    f"train_prior: the loss became {loss} at step {step}; lower lr or grad_clip, or check the cores"
                )
            losses.append(loss)
            step += 1
            if step == start + 1:
                first_step = time.perf_counter() - t_start  # includes compilation
            bar.update(1)
            if step % 10 == 0 or step == config.steps:
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
            if callback is not None:
                callback(step, loss)
            if stop["signal"] is not None:
                save(step)
                where = f"checkpoint saved to {path}; rerun to resume" if path else "no checkpoint_dir, nothing saved"
                raise TrainingInterrupted(
                    f"training interrupted by signal {signal.Signals(stop['signal']).name} after step {step}; {where}",
                    step, path,
                )
            if step % config.checkpoint_every == 0 and step < config.steps:
                save(step)
        if step > start or (path is not None and not path.exists()):
            save(step)
    finally:
        bar.close()
        for sig, old in handlers.items():
            signal.signal(sig, old)
    wall = time.perf_counter() - t_start

    prior = GPSDPrior(ema, config.edm, kernel, core_mean, core_std)
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
        "num_parameters": count_parameters(ema),
        "num_sequences": B,
        "num_frames": T,
        "seq_len": L,
        "max_window": W_max,
        "config": config.to_dict(),
        "kernel": kernel.to_dict(),
        "core_mean": core_mean,
        "core_std": core_std,
        "devices": n_dev,
    }
    json.dumps(report)  # fail here, not later, if something is not JSON-ready
    return prior, report
