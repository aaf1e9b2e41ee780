"""The pieces of the Functional Tucker Model fit that `fit_ftm` hands to the shared training loop:
the training / held-out masks, the optimisers, the objective and the compiled steps.

The objective (in normalised field units) is

    L = mean over observed training entries of (y - decode(W))^2 + beta_tv * mean_b TV(W_b),
    TV(W_b) = sum_t ||W_{b,t+1} - W_{b,t}||_2            (Frobenius norm over the core),

minimised with optax over minibatches of trajectories: AdamW for the shared networks, one Adam
state per trajectory for the free cores (an auto-decoder).
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray

from ..training.sharding import constrain
from .tucker import _decode_grid


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


def _batch_update(dyn, params_static, n_state, all_cores, c_state, idx, yb, mb, grids, beta_tv, opt_nets, opt_cores,
                  mesh):
    """One optimiser step on the trajectories `idx`: shared networks (replicated) and their cores.

    With a mesh the minibatch (cores, values, mask) is split over the devices and the network
    gradient is all-reduced by XLA (data parallel)."""
    net = eqx.combine(dyn, params_static)
    cb = constrain(all_cores[idx], mesh, batch=True)
    yb = constrain(yb, mesh, batch=True)
    mb = constrain(mb, mesh, batch=True)
    sb = jax.tree_util.tree_map(lambda s: s[idx], c_state)
    loss, (g_net, g_cores) = eqx.filter_value_and_grad(_loss)((net, cb), grids, yb, mb, beta_tv)
    g_dyn = constrain(eqx.filter(g_net, eqx.is_inexact_array), mesh, batch=False)
    upd, n_state = opt_nets.update(g_dyn, n_state, dyn)
    dyn = constrain(eqx.apply_updates(dyn, upd), mesh, batch=False)
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

